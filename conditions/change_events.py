"""Change-event simulation on semantic layouts (Changen2-style): the single source of truth of every
change label.

``simulate_change`` takes a canonical semantic mask (and its building instances), a GSD and a
seeded ``numpy.random.Generator`` and applies events until the target change fraction is reached:

* ``add_building`` — a rectangular or L-shaped footprint, sized like the existing buildings (or by
  ``min_size_m``/``max_size_m``, scaled down to fit small layouts), aligned with the nearest
  building or road (parallel to the road, ``road_setback_m`` off it: see
  ``conditions.building_placement``), placed on buildable land (never over buildings, roads or water
  unless ``allow_overlap``);
* ``remove_building`` — an existing building becomes bare ground (demolition);
* ``expand_building`` / ``shrink_building`` — a building grows by 1–3 m onto buildable land, or
  loses a 1–3 m rim to bare ground (extensions, partial demolition);
* ``transition`` — part of a connected region of class A becomes class B (``transitions`` table,
  e.g. agriculture→building, low_vegetation→bare, tree→bare, water→bare).

Layouts smaller than 2.5 × ``max_size_m`` (small crops, fine GSDs such as Potsdam's 5 cm) scale new
footprint and transition sizes down so that they fit: at most 0.4 of the layout's shorter side.

Each event records its type, classes from→to, its geometry (pixel coordinates, the polygons of
exactly the pixels it changed), area in m², centroid, the building instance it concerns and, for
``add_building``, what the footprint was aligned with. The binary change mask is exactly the
union of the events' rasterised geometries; label1/label2 agree with the events' from→to classes.
Applying ``simulate_change`` to its own output chains dates into a time series.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import shapely
from rasterio import features
from rasterio.transform import Affine
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry

from conditions.building_placement import ROAD, Orientations, Roads, align_footprint, footprint, keeps_setback
from conditions.palettes import CANONICAL, IGNORE
from core.errors import InputError

logger = logging.getLogger(__name__)

EVENT_TYPES = ("add_building", "remove_building", "expand_building", "shrink_building", "transition")
BUILDING = CANONICAL.class_by_name("building").id
BARE = CANONICAL.class_by_name("bare").id
NOT_BUILDABLE = {BUILDING, CANONICAL.class_by_name("road").id, CANONICAL.class_by_name("water").id, IGNORE}
DEFAULT_TRANSITIONS = {"agriculture": "building", "low_vegetation": "bare", "tree": "bare", "water": "bare",
                       "bare": "road"}  # fmt: skip


class ChangeError(InputError):
    """Invalid change parameters or a layout the events cannot act on."""


@dataclass(frozen=True)
class ChangeConfig:
    events: Mapping[str, float] = field(
        default_factory=lambda: {"add_building": 0.6, "remove_building": 0.2, "transition": 0.2}
    )
    change_fraction: float = 0.1  # target fraction of changed (valid) pixels
    min_size_m: float = 8.0  # footprint side lengths for new buildings
    max_size_m: float = 40.0
    transitions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TRANSITIONS))
    allow_overlap: bool = False
    road_setback_m: float = 2.0  # new buildings keep this gap to road pixels (unless allow_overlap)
    max_tries: int = 500

    def __post_init__(self) -> None:
        if not 0 < self.change_fraction <= 1:
            raise ChangeError(f"change_fraction={self.change_fraction}: expected a fraction in (0, 1]")
        unknown = sorted(set(self.events) - set(EVENT_TYPES))
        if unknown:
            raise ChangeError(f"events: unknown event type(s) {unknown}; use {EVENT_TYPES}")
        if any(p < 0 for p in self.events.values()) or sum(self.events.values()) <= 0:
            raise ChangeError(f"events={dict(self.events)}: expected probabilities >= 0 with a positive sum")
        if not 0 < self.min_size_m <= self.max_size_m:
            raise ChangeError(f"min_size_m={self.min_size_m}, max_size_m={self.max_size_m}: expected 0 < min <= max")
        if not self.road_setback_m >= 0:
            raise ChangeError(f"road_setback_m={self.road_setback_m}: expected a distance >= 0 metres (0 = none)")
        for src, dst in self.transitions.items():
            if src == dst:
                raise ChangeError(f"transitions: {src!r} -> {dst!r} changes nothing; map to another class")
            for name in (src, dst):
                try:
                    CANONICAL.class_by_name(name)
                except ValueError:
                    raise ChangeError(f"transitions: unknown class {name!r}; use {CANONICAL.names}") from None


@dataclass
class ChangeEvent:
    type: str
    class_from: str
    class_to: str
    geometry: BaseGeometry  # pixel coordinates: the pixels this event changed
    area_m2: float
    centroid: tuple[float, float]  # pixel (x, y)
    instance_id: int | None = None
    aligned_with: str | None = None  # add_building: 'road', 'building' or None (nothing near)
    date: int | None = None  # time series: index of the date at which it happened (between date - 1 and date)

    def to_dict(self) -> dict[str, Any]:
        out = {"type": self.type, "from": self.class_from, "to": self.class_to,
               "geometry": shapely.geometry.mapping(self.geometry), "area_m2": self.area_m2,
               "centroid": list(self.centroid), "instance_id": self.instance_id}  # fmt: skip
        if self.type == "add_building":
            out["aligned_with"] = self.aligned_with
        if self.date is not None:
            out["date"] = self.date
        return out

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ChangeEvent:
        """The event of a record written by :meth:`to_dict` (a pair's or a sequence's JSON)."""
        return cls(record["type"], record["from"], record["to"], shape(record["geometry"]), float(record["area_m2"]),
                   (float(record["centroid"][0]), float(record["centroid"][1])), record.get("instance_id"),
                   record.get("aligned_with"), record.get("date"))  # fmt: skip


@dataclass
class ChangeResult:
    semantic: np.ndarray  # (H, W) canonical ids at t2
    instances: np.ndarray  # (H, W) building instance ids at t2
    events: list[ChangeEvent]
    change_mask: np.ndarray  # (H, W) bool, exactly the union of the events' pixels


def _pixels_to_geometry(mask: np.ndarray) -> BaseGeometry:
    """Polygons (pixel coordinates) of exactly the True pixels, traced in their bounding box only."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return Polygon()
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = mask[r0:r1, c0:c1]
    offset = Affine.translation(float(c0), float(r0))
    polygons = [shape(g) for g, v in features.shapes(crop.astype(np.uint8), mask=crop, transform=offset) if v == 1]
    return shapely.normalize(shapely.union_all(polygons))


def _event(kind: str, src: int, dst: int, changed: np.ndarray, gsd: float, instance: int | None) -> ChangeEvent:
    geometry = _pixels_to_geometry(changed)
    centroid = geometry.centroid
    return ChangeEvent(
        kind, CANONICAL.by_id()[src].name, CANONICAL.by_id()[dst].name, geometry,
        float(changed.sum()) * gsd * gsd, (float(centroid.x), float(centroid.y)), instance,
    )  # fmt: skip


def _building_sizes(instances: np.ndarray, gsd: float) -> list[float]:
    """Side lengths (m) of existing buildings, from their pixel areas (square-equivalent)."""
    ids, counts = np.unique(instances[instances > 0], return_counts=True)
    return [math.sqrt(c) * gsd for c in counts]


def building_instances(semantic: np.ndarray) -> np.ndarray:
    """(H, W) int32 building instance ids of a layout without instances: its 4-connected building regions."""
    count, labels = cv2.connectedComponents((semantic == BUILDING).astype(np.uint8), connectivity=4)
    return labels.astype(np.int32)


@dataclass
class _Simulation:
    """The layout being changed and what every event draws on: one object, passed to the event functions."""

    sem: np.ndarray  # (H, W) canonical ids, updated in place
    inst: np.ndarray  # (H, W) int32 building instance ids, updated in place
    changed: np.ndarray  # (H, W) bool: pixels some event already changed (never changed twice)
    gsd: float
    config: ChangeConfig
    rng: np.random.Generator
    sizes: list[float]  # side lengths (m) of the existing buildings
    orientations: Orientations
    roads: Roads
    setback_px: float
    size_scale: float  # <= 1: footprints at most 0.4 of the layout's shorter side
    events: list[ChangeEvent] = field(default_factory=list)

    def unchanged_buildings(self) -> list[int]:
        return [i for i in np.unique(self.inst[(self.inst > 0) & ~self.changed]) if i]


def _add_building(s: _Simulation) -> np.ndarray | None:
    config, rng, gsd = s.config, s.rng, s.gsd
    height, width = s.sem.shape
    side = (lambda: float(rng.choice(s.sizes)) * rng.uniform(0.8, 1.25)) if len(s.sizes) >= 3 else (
        lambda: rng.uniform(config.min_size_m, config.max_size_m))  # fmt: skip
    w = float(np.clip(side(), config.min_size_m, config.max_size_m)) / gsd
    h = float(np.clip(side(), config.min_size_m, config.max_size_m)) / gsd
    if s.size_scale < 1:
        w, h = w * s.size_scale, h * s.size_scale
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    place = align_footprint(cx, cy, h, s.orientations, s.roads, s.setback_px)
    poly = footprint(rng, place.cx, place.cy, w, h, place.angle)
    pixels = features.rasterize([(poly, 1)], out_shape=s.sem.shape, dtype=np.uint8).astype(bool)
    if not pixels.any() or s.changed[pixels].any():
        return None
    if not config.allow_overlap and (
        np.isin(s.sem[pixels], list(NOT_BUILDABLE)).any() or not keeps_setback(pixels, s.roads, s.setback_px)
    ):
        return None
    pixels &= (s.sem != BUILDING) & (s.sem != IGNORE)  # never over ignore pixels, even with allow_overlap
    if not pixels.any():
        return None
    new_id = int(s.inst.max()) + 1
    for src in np.unique(s.sem[pixels]):  # one event per class replaced, so from->to is exact
        s.events.append(_event("add_building", int(src), BUILDING, pixels & (s.sem == src), gsd, new_id))
        s.events[-1].aligned_with = place.reference
    s.sem[pixels], s.inst[pixels] = BUILDING, new_id
    s.orientations.add(place.cx, place.cy, place.angle, float(pixels.sum()))
    return pixels


def _remove_building(s: _Simulation) -> np.ndarray | None:
    ids = s.unchanged_buildings()
    if not ids:
        return None
    victim = int(s.rng.choice(ids))
    pixels = (s.inst == victim) & ~s.changed & (s.sem == BUILDING)
    if not pixels.any():
        return None
    s.sem[pixels], s.inst[pixels] = BARE, 0
    s.events.append(_event("remove_building", BUILDING, BARE, pixels, s.gsd, victim))
    return pixels


def _resize_building(s: _Simulation, kind: str) -> np.ndarray | None:
    """``expand_building`` (grow by 1-3 m onto buildable land) or ``shrink_building`` (lose a 1-3 m rim)."""
    ids = s.unchanged_buildings()
    if not ids:
        return None
    target_id = int(s.rng.choice(ids))
    body = s.inst == target_id
    radius = max(1, round(s.rng.uniform(1.0, 3.0) / s.gsd))
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    if kind == "expand_building":
        grown = cv2.dilate(body.astype(np.uint8), kernel).astype(bool)
        pixels = grown & ~body & ~s.changed & ~np.isin(s.sem, list(NOT_BUILDABLE))
        if not pixels.any():
            return None
        for src in np.unique(s.sem[pixels]):
            s.events.append(_event(kind, int(src), BUILDING, pixels & (s.sem == src), s.gsd, target_id))
        s.sem[pixels], s.inst[pixels] = BUILDING, target_id
        return pixels
    core = cv2.erode(body.astype(np.uint8), kernel).astype(bool)
    pixels = body & ~core & ~s.changed
    if not core.any() or not pixels.any():  # too small to shrink: it would vanish
        return None
    s.sem[pixels], s.inst[pixels] = BARE, 0
    s.events.append(_event(kind, BUILDING, BARE, pixels, s.gsd, target_id))
    return pixels


def _transition(s: _Simulation) -> np.ndarray | None:
    """Part of a connected region of class A becomes class B (the ``transitions`` table)."""
    config, rng = s.config, s.rng
    options = [(CANONICAL.class_by_name(a).id, CANONICAL.class_by_name(b).id) for a, b in config.transitions.items()]
    options = [(a, b) for a, b in options if ((s.sem == a) & ~s.changed).any()]
    if not options:
        return None
    src, dst = options[int(rng.integers(len(options)))]
    count, regions = cv2.connectedComponents(((s.sem == src) & ~s.changed).astype(np.uint8), connectivity=4)
    region = regions == int(rng.integers(1, count))
    ys, xs = np.nonzero(region)
    side = rng.uniform(config.min_size_m, config.max_size_m * 2) / s.gsd * s.size_scale
    cx, cy = float(xs[int(rng.integers(len(xs)))]), float(ys[int(rng.integers(len(ys)))])
    box = shapely.box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    pixels = features.rasterize([(box, 1)], out_shape=s.sem.shape, dtype=np.uint8).astype(bool) & region
    if not pixels.any():
        return None
    s.sem[pixels] = dst
    if dst == BUILDING:
        s.inst[pixels] = int(s.inst.max()) + 1
    elif src == BUILDING:
        s.inst[pixels] = 0
    s.events.append(_event("transition", src, dst, pixels, s.gsd, None))
    return pixels


def _check_layout(semantic: np.ndarray, gsd: float, instances: np.ndarray | None) -> np.ndarray:
    """The valid (non-ignore) pixels of a layout the events can act on."""
    if semantic.ndim != 2:
        raise ChangeError(f"semantic: expected an (H, W) mask, got shape {semantic.shape}")
    if not gsd > 0:
        raise ChangeError(f"gsd={gsd!r}: expected a positive pixel size in metres")
    if instances is not None and instances.shape != semantic.shape:
        raise ChangeError(f"instances: shape {instances.shape} does not match the semantic mask {semantic.shape}")
    valid = semantic != IGNORE
    if not valid.any():
        raise ChangeError("semantic: the layout is empty (every pixel is ignore); nothing can change")
    return valid


def simulate_change(
    semantic: np.ndarray,
    gsd: float,
    config: ChangeConfig,
    rng: np.random.Generator,
    instances: np.ndarray | None = None,
) -> ChangeResult:
    """Apply seeded change events to a canonical semantic mask until ``config.change_fraction`` of its
    valid pixels changed (or ``max_tries`` is spent)."""
    valid = _check_layout(semantic, gsd, instances)
    sem = semantic.copy()
    inst = building_instances(sem) if instances is None else instances.astype(np.int32).copy()
    height, width = sem.shape
    # Footprints at most 0.4 of the layout's shorter side: small or fine-GSD layouts scale building and transition
    # sizes down.
    size_scale = min(1.0, 0.4 * min(height, width) * gsd / config.max_size_m)
    if size_scale < 1:
        logger.debug("layout %dx%d at %s m: footprint/transition sizes scaled by %.3f", height, width, gsd, size_scale)
    s = _Simulation(
        sem, inst, np.zeros(sem.shape, dtype=bool), gsd, config, rng, _building_sizes(inst, gsd), Orientations(inst),
        Roads(sem, gsd), 0.0 if config.allow_overlap else config.road_setback_m / gsd, size_scale,
    )  # fmt: skip
    names = list(config.events)
    probs = np.array([config.events[n] for n in names], dtype=float)
    probs /= probs.sum()
    target = config.change_fraction * valid.sum()
    for _ in range(config.max_tries):
        if s.changed.sum() >= target:
            break
        kind = names[int(rng.choice(len(names), p=probs))]
        if kind == "add_building":
            pixels = _add_building(s)
        elif kind == "remove_building":
            pixels = _remove_building(s)
        elif kind in ("expand_building", "shrink_building"):
            pixels = _resize_building(s, kind)
        else:
            pixels = _transition(s)
        if pixels is None:
            continue
        s.changed |= pixels
        if (s.roads.present and (semantic[pixels] == ROAD).any()) or (sem[pixels] == ROAD).any():
            s.roads.update(sem)  # a road appeared or was built over: distances and directions change
    return ChangeResult(sem, inst, s.events, sem != semantic)


def rasterize_events(events: list[ChangeEvent], shape_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool union of the events' geometries (pixel coordinates)."""
    geoms = [(e.geometry, 1) for e in events if not e.geometry.is_empty]
    if not geoms:
        return np.zeros(shape_hw, dtype=bool)
    return features.rasterize(geoms, out_shape=shape_hw, dtype=np.uint8).astype(bool)
