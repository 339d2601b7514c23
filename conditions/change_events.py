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
    return shapely.union_all(polygons)


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


def simulate_change(
    semantic: np.ndarray,
    gsd: float,
    config: ChangeConfig,
    rng: np.random.Generator,
    instances: np.ndarray | None = None,
) -> ChangeResult:
    """Apply seeded change events to a canonical semantic mask until ``config.change_fraction`` of its
    valid pixels changed (or ``max_tries`` is spent)."""
    if semantic.ndim != 2:
        raise ChangeError(f"semantic: expected an (H, W) mask, got shape {semantic.shape}")
    if not gsd > 0:
        raise ChangeError(f"gsd={gsd!r}: expected a positive pixel size in metres")
    if instances is not None and instances.shape != semantic.shape:
        raise ChangeError(f"instances: shape {instances.shape} does not match the semantic mask {semantic.shape}")
    valid = semantic != IGNORE
    if not valid.any():
        raise ChangeError("semantic: the layout is empty (every pixel is ignore); nothing can change")
    before = semantic.copy()
    sem = semantic.copy()
    inst = building_instances(sem) if instances is None else instances.astype(np.int32).copy()
    changed = np.zeros(sem.shape, dtype=bool)
    events: list[ChangeEvent] = []
    names = list(config.events)
    probs = np.array([config.events[n] for n in names], dtype=float)
    probs /= probs.sum()
    target = config.change_fraction * valid.sum()
    height, width = sem.shape
    sizes = _building_sizes(inst, gsd)
    orientations = Orientations(inst)
    roads = Roads(sem, gsd)
    setback_px = 0.0 if config.allow_overlap else config.road_setback_m / gsd
    # Footprints at most 0.4 of the layout's shorter side: small or fine-GSD layouts scale building and transition
    # sizes down.
    size_scale = min(1.0, 0.4 * min(height, width) * gsd / config.max_size_m)
    if size_scale < 1:
        logger.debug("layout %dx%d at %s m: footprint/transition sizes scaled by %.3f", height, width, gsd, size_scale)
    for _ in range(config.max_tries):
        if changed.sum() >= target:
            break
        kind = names[int(rng.choice(len(names), p=probs))]
        if kind == "add_building":
            side = (lambda: float(rng.choice(sizes)) * rng.uniform(0.8, 1.25)) if len(sizes) >= 3 else (
                lambda: rng.uniform(config.min_size_m, config.max_size_m))  # fmt: skip
            w = float(np.clip(side(), config.min_size_m, config.max_size_m)) / gsd
            h = float(np.clip(side(), config.min_size_m, config.max_size_m)) / gsd
            if size_scale < 1:
                w, h = w * size_scale, h * size_scale
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            place = align_footprint(cx, cy, h, orientations, roads, setback_px)
            poly = footprint(rng, place.cx, place.cy, w, h, place.angle)
            pixels = features.rasterize([(poly, 1)], out_shape=sem.shape, dtype=np.uint8).astype(bool)
            if not pixels.any() or changed[pixels].any():
                continue
            if not config.allow_overlap and (
                np.isin(sem[pixels], list(NOT_BUILDABLE)).any() or not keeps_setback(pixels, roads, setback_px)
            ):
                continue
            pixels &= (sem != BUILDING) & (sem != IGNORE)  # never over ignore pixels, even with allow_overlap
            if not pixels.any():
                continue
            new_id = int(inst.max()) + 1
            for src in np.unique(sem[pixels]):  # one event per class replaced, so from->to is exact
                part = pixels & (sem == src)
                events.append(_event(kind, int(src), BUILDING, part, gsd, new_id))
                events[-1].aligned_with = place.reference
            sem[pixels], inst[pixels] = BUILDING, new_id
            orientations.add(place.cx, place.cy, place.angle, float(pixels.sum()))
        elif kind == "remove_building":
            ids = [i for i in np.unique(inst[(inst > 0) & ~changed]) if i]
            if not ids:
                continue
            victim = int(rng.choice(ids))
            pixels = (inst == victim) & ~changed & (sem == BUILDING)
            if not pixels.any():
                continue
            sem[pixels], inst[pixels] = BARE, 0
            events.append(_event(kind, BUILDING, BARE, pixels, gsd, victim))
        elif kind in ("expand_building", "shrink_building"):
            ids = [i for i in np.unique(inst[(inst > 0) & ~changed]) if i]
            if not ids:
                continue
            target_id = int(rng.choice(ids))
            body = inst == target_id
            radius = max(1, round(rng.uniform(1.0, 3.0) / gsd))
            kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
            if kind == "expand_building":
                grown = cv2.dilate(body.astype(np.uint8), kernel).astype(bool)
                pixels = grown & ~body & ~changed & ~np.isin(sem, list(NOT_BUILDABLE))
                if not pixels.any():
                    continue
                for src in np.unique(sem[pixels]):
                    events.append(_event(kind, int(src), BUILDING, pixels & (sem == src), gsd, target_id))
                sem[pixels], inst[pixels] = BUILDING, target_id
            else:
                core = cv2.erode(body.astype(np.uint8), kernel).astype(bool)
                pixels = body & ~core & ~changed
                if not core.any() or not pixels.any():  # too small to shrink: it would vanish
                    continue
                sem[pixels], inst[pixels] = BARE, 0
                events.append(_event(kind, BUILDING, BARE, pixels, gsd, target_id))
        else:
            options = [
                (CANONICAL.class_by_name(a).id, CANONICAL.class_by_name(b).id) for a, b in config.transitions.items()
            ]
            options = [(a, b) for a, b in options if ((sem == a) & ~changed).any()]
            if not options:
                continue
            src, dst = options[int(rng.integers(len(options)))]
            count, regions = cv2.connectedComponents(((sem == src) & ~changed).astype(np.uint8), connectivity=4)
            region = regions == int(rng.integers(1, count))
            ys, xs = np.nonzero(region)
            side = rng.uniform(config.min_size_m, config.max_size_m * 2) / gsd * size_scale
            cx, cy = float(xs[int(rng.integers(len(xs)))]), float(ys[int(rng.integers(len(ys)))])
            box = shapely.box(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            pixels = features.rasterize([(box, 1)], out_shape=sem.shape, dtype=np.uint8).astype(bool) & region
            if not pixels.any():
                continue
            sem[pixels] = dst
            if dst == BUILDING:
                inst[pixels] = int(inst.max()) + 1
            elif src == BUILDING:
                inst[pixels] = 0
            events.append(_event(kind, src, dst, pixels, gsd, None))
        changed |= pixels
        if (roads.present and (before[pixels] == ROAD).any()) or (sem[pixels] == ROAD).any():
            roads.update(sem)  # a road appeared or was built over: distances and directions change
    change_mask = sem != before
    return ChangeResult(sem, inst, events, change_mask)


def rasterize_events(events: list[ChangeEvent], shape_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool union of the events' geometries (pixel coordinates)."""
    geoms = [(e.geometry, 1) for e in events if not e.geometry.is_empty]
    if not geoms:
        return np.zeros(shape_hw, dtype=bool)
    return features.rasterize(geoms, out_shape=shape_hw, dtype=np.uint8).astype(bool)
