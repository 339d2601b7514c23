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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np
import shapely
from rasterio import features
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from conditions.building_placement import ROAD, Orientations, Roads, align_footprint, footprint, keeps_setback
from conditions.palettes import CANONICAL, IGNORE
from conditions.pixel_geometry import Window, bounding_slices, box_slices, rasterize_polygon, trace_pixels
from core.errors import InputError

logger = logging.getLogger(__name__)

EVENT_TYPES = ("add_building", "remove_building", "expand_building", "shrink_building", "transition")
BUILDING = CANONICAL.class_by_name("building").id
BARE = CANONICAL.class_by_name("bare").id
NOT_BUILDABLE = {BUILDING, CANONICAL.class_by_name("road").id, CANONICAL.class_by_name("water").id, IGNORE}
_NOT_BUILDABLE = np.isin(np.arange(256), list(NOT_BUILDABLE))  # (256,) lookup by class id
DEFAULT_TRANSITIONS = {"agriculture": "building", "low_vegetation": "bare", "tree": "bare", "water": "bare",
                       "bare": "road"}  # fmt: skip


class FootprintSource(Protocol):
    """Shapes of new buildings: the pixels of one planned at (cx, cy), ``w`` x ``h`` px, turned by ``angle`` (rad),
    and a record of what was placed (kept on its events), or None (the try fails)."""

    def place(
        self, rng: np.random.Generator, cx: float, cy: float, w: float, h: float, angle: float, shape: tuple[int, int]
    ) -> tuple[Window, dict[str, Any]] | None: ...


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
    exemplar: dict[str, Any] | None = None  # exemplar synthesis: the bank object it shows ({"bank_id", "matrix"})

    def to_dict(self) -> dict[str, Any]:
        out = {"type": self.type, "from": self.class_from, "to": self.class_to,
               "geometry": shapely.geometry.mapping(self.geometry), "area_m2": self.area_m2,
               "centroid": list(self.centroid), "instance_id": self.instance_id}  # fmt: skip
        if self.type == "add_building":
            out["aligned_with"] = self.aligned_with
        if self.date is not None:
            out["date"] = self.date
        if self.exemplar is not None:
            out["exemplar"] = self.exemplar
        return out

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ChangeEvent:
        """The event of a record written by :meth:`to_dict` (a pair's or a sequence's JSON)."""
        return cls(record["type"], record["from"], record["to"], shape(record["geometry"]), float(record["area_m2"]),
                   (float(record["centroid"][0]), float(record["centroid"][1])), record.get("instance_id"),
                   record.get("aligned_with"), record.get("date"), record.get("exemplar"))  # fmt: skip


@dataclass
class ChangeResult:
    semantic: np.ndarray  # (H, W) canonical ids at t2
    instances: np.ndarray  # (H, W) building instance ids at t2
    events: list[ChangeEvent]
    change_mask: np.ndarray  # (H, W) bool, exactly the union of the events' pixels


def _event(kind: str, src: int, dst: int, changed: Window, gsd: float, instance: int | None) -> ChangeEvent:
    geometry = trace_pixels(changed)
    centroid = geometry.centroid
    return ChangeEvent(
        kind, CANONICAL.by_id()[src].name, CANONICAL.by_id()[dst].name, geometry,
        float(changed.count()) * gsd * gsd, (float(centroid.x), float(centroid.y)), instance,
    )  # fmt: skip


def building_instances(semantic: np.ndarray) -> np.ndarray:
    """(H, W) int32 building instance ids of a layout without instances: its 4-connected building regions."""
    count, labels = cv2.connectedComponents((semantic == BUILDING).astype(np.uint8), connectivity=4)
    return labels.astype(np.int32)


def _class_counts(sem: np.ndarray) -> np.ndarray:
    """(256,) int64 pixel count of every class id of a uint8 layout."""
    # OpenCV's histogram counts in float32: exact below 2^24 pixels, and several times faster than bincount
    if sem.dtype == np.uint8 and sem.size < 2**24:
        return cv2.calcHist([sem], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    return np.bincount(sem.ravel(), minlength=256).astype(np.int64)


@dataclass
class _Simulation:
    """The layout being changed and what every event draws on: one object, passed to the event functions.

    Besides the layout it keeps what the events ask for at every try, updated with each event's pixels
    (a window of the layout) instead of being recomputed over the whole layout: the number of changed
    pixels, the unchanged pixels of every class and of every building, the rows and columns every building
    of the layout may cover (a superset: shrinking and removal do not narrow it) and the largest instance id."""

    sem: np.ndarray  # (H, W) canonical ids, updated in place
    inst: np.ndarray  # (H, W) int32 building instance ids, updated in place
    changed: np.ndarray  # (H, W) bool: pixels some event already changed (never changed twice)
    gsd: float
    config: ChangeConfig
    rng: np.random.Generator
    sizes: np.ndarray  # (N,) side lengths (m) of the existing buildings, by ascending id
    orientations: Orientations
    roads: Roads
    setback_px: float
    size_scale: float  # <= 1: footprints at most 0.4 of the layout's shorter side
    footprints: FootprintSource | None = None  # new buildings' shapes (None: rectangles and L shapes)
    events: list[ChangeEvent] = field(default_factory=list)
    changed_count: int = 0
    unchanged_per_class: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))  # (256,) pixel counts
    unchanged_per_building: dict[int, int] = field(default_factory=dict)  # instance id -> unchanged pixels
    extents: dict[int, list[int]] = field(default_factory=dict)  # layout building id -> first/last row, last column
    max_id: int = 0

    def __post_init__(self) -> None:
        self.unchanged_per_class = _class_counts(self.sem)
        o = self.orientations
        self.unchanged_per_building = {i: n for i, n in zip(o.ids, o.counts) if i > 0}
        self.extents = {i: list(b) for i, b in zip(o.ids, o.bounds) if i > 0}
        self.max_id = int(self.inst.max())

    def building_window(self, instance_id: int, margin: int = 0) -> tuple[slice, slice]:
        """Rows and columns that hold every pixel of a layout building, grown by ``margin`` within the layout."""
        return box_slices(self.extents[instance_id], self.sem.shape, margin)

    def unchanged_buildings(self) -> list[int]:
        return sorted(i for i, n in self.unchanged_per_building.items() if n)

    def apply(self, pixels: Window, semantic_id: int, instance_id: int | None) -> None:
        """Set the (unchanged) ``pixels`` to a class and, unless None, an instance id; mark them changed."""
        sem, inst = pixels.of(self.sem), pixels.of(self.inst)
        self.unchanged_per_class -= np.bincount(sem[pixels.mask], minlength=256)
        before = inst[pixels.mask]
        ids, counts = np.unique(before[before > 0], return_counts=True)
        for i, n in zip(ids.tolist(), counts.tolist()):
            self.unchanged_per_building[i] -= n
        sem[pixels.mask] = semantic_id
        if instance_id is not None:
            inst[pixels.mask] = instance_id
            if instance_id in self.extents:  # a layout building grew (new buildings are never removed or resized)
                self._extend(instance_id, pixels)
            if instance_id > self.max_id:
                self.max_id = instance_id
            elif self.max_id in ids and not (self.inst == self.max_id).any():  # the largest id is gone
                self.max_id = int(self.inst.max())
        pixels.of(self.changed)[pixels.mask] = True
        self.changed_count += pixels.count()

    def _extend(self, instance_id: int, pixels: Window) -> None:
        rows, cols = bounding_slices(pixels.mask)
        r0, r1, c0, c1 = self.extents[instance_id]
        self.extents[instance_id] = [min(r0, pixels.r0 + rows.start), max(r1, pixels.r0 + rows.stop - 1),
                                     min(c0, pixels.c0 + cols.start), max(c1, pixels.c0 + cols.stop - 1)]  # fmt: skip


def _add_building(s: _Simulation) -> Window | None:
    config, rng, gsd = s.config, s.rng, s.gsd
    height, width = s.sem.shape
    side = (lambda: float(s.sizes[rng.integers(0, len(s.sizes))]) * rng.uniform(0.8, 1.25)) if len(s.sizes) >= 3 else (
        lambda: rng.uniform(config.min_size_m, config.max_size_m))  # fmt: skip
    w = float(np.clip(side(), config.min_size_m, config.max_size_m)) / gsd
    h = float(np.clip(side(), config.min_size_m, config.max_size_m)) / gsd
    if s.size_scale < 1:
        w, h = w * s.size_scale, h * s.size_scale
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    place = align_footprint(cx, cy, h, s.orientations, s.roads, s.setback_px)
    exemplar = None
    if s.footprints is None:
        pixels = rasterize_polygon(footprint(rng, place.cx, place.cy, w, h, place.angle), s.sem.shape)
    else:
        placed = s.footprints.place(rng, place.cx, place.cy, w, h, place.angle, s.sem.shape)
        if placed is None:
            return None
        pixels, exemplar = placed
    if not pixels.any() or pixels.values(s.changed).any():
        return None
    if not config.allow_overlap and (
        _NOT_BUILDABLE[pixels.values(s.sem)].any() or not keeps_setback(pixels, s.roads, s.setback_px)
    ):
        return None
    sem = pixels.of(s.sem)
    pixels = pixels.restrict((sem != BUILDING) & (sem != IGNORE))  # never over ignore pixels, even with allow_overlap
    if not pixels.any():
        return None
    new_id = s.max_id + 1
    for src in np.unique(pixels.values(s.sem)):  # one event per class replaced, so from->to is exact
        s.events.append(_event("add_building", int(src), BUILDING, pixels.restrict(sem == src), gsd, new_id))
        s.events[-1].aligned_with = place.reference
        s.events[-1].exemplar = exemplar
    s.apply(pixels, BUILDING, new_id)
    s.orientations.add(place.cx, place.cy, place.angle, float(pixels.count()))
    return pixels


def _remove_building(s: _Simulation) -> Window | None:
    ids = s.unchanged_buildings()
    if not ids:
        return None
    victim = ids[s.rng.integers(0, len(ids))]  # = rng.choice(ids), without the list → array
    rows, cols = s.building_window(victim)
    pixels = Window(rows.start, cols.start, (s.inst[rows, cols] == victim) & ~s.changed[rows, cols]
                    & (s.sem[rows, cols] == BUILDING))  # fmt: skip
    if not pixels.any():
        return None
    s.events.append(_event("remove_building", BUILDING, BARE, pixels, s.gsd, victim))
    s.apply(pixels, BARE, 0)
    return pixels


def _resize_building(s: _Simulation, kind: str) -> Window | None:
    """``expand_building`` (grow by 1-3 m onto buildable land) or ``shrink_building`` (lose a 1-3 m rim)."""
    ids = s.unchanged_buildings()
    if not ids:
        return None
    target_id = ids[s.rng.integers(0, len(ids))]
    radius = max(1, round(s.rng.uniform(1.0, 3.0) / s.gsd))
    rows, cols = s.building_window(target_id, margin=radius + 1)  # morphology stays inside
    body = s.inst[rows, cols] == target_id
    sem, changed = s.sem[rows, cols], s.changed[rows, cols]
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * radius + 1, 2 * radius + 1))
    if kind == "expand_building":
        grown = cv2.dilate(body.astype(np.uint8), kernel).astype(bool)
        pixels = Window(rows.start, cols.start, grown & ~body & ~changed & ~_NOT_BUILDABLE[sem])
        if not pixels.any():
            return None
        for src in np.unique(pixels.values(s.sem)):
            s.events.append(_event(kind, int(src), BUILDING, pixels.restrict(sem == src), s.gsd, target_id))
        s.apply(pixels, BUILDING, target_id)
        return pixels
    core = cv2.erode(body.astype(np.uint8), kernel).astype(bool)
    pixels = Window(rows.start, cols.start, body & ~core & ~changed)
    if not core.any() or not pixels.any():  # too small to shrink: it would vanish
        return None
    s.events.append(_event(kind, BUILDING, BARE, pixels, s.gsd, target_id))
    s.apply(pixels, BARE, 0)
    return pixels


def _transition(s: _Simulation) -> Window | None:
    """Part of a connected region of class A becomes class B (the ``transitions`` table)."""
    config, rng = s.config, s.rng
    options = [(CANONICAL.class_by_name(a).id, CANONICAL.class_by_name(b).id) for a, b in config.transitions.items()]
    options = [(a, b) for a, b in options if s.unchanged_per_class[a] > 0]
    if not options:
        return None
    src, dst = options[int(rng.integers(len(options)))]
    count, regions = cv2.connectedComponents(((s.sem == src) & ~s.changed).astype(np.uint8), connectivity=4)
    label = int(rng.integers(1, count))
    rows, cols = bounding_slices(regions == label)
    region = regions[rows, cols] == label
    ys, xs = np.nonzero(region)
    side = rng.uniform(config.min_size_m, config.max_size_m * 2) / s.gsd * s.size_scale
    cx, cy = float(xs[int(rng.integers(len(xs)))] + cols.start), float(ys[int(rng.integers(len(ys)))] + rows.start)
    corners = np.array([(cx + side / 2, cy - side / 2), (cx + side / 2, cy + side / 2), (cx - side / 2, cy + side / 2),
                        (cx - side / 2, cy - side / 2)])  # fmt: skip
    box = rasterize_polygon(corners, s.sem.shape)
    pixels = box.intersect(Window(rows.start, cols.start, region))
    if pixels is None:
        return None
    instance = s.max_id + 1 if dst == BUILDING else (0 if src == BUILDING else None)
    s.events.append(_event("transition", src, dst, pixels, s.gsd, None))
    s.apply(pixels, dst, instance)
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
    footprints: FootprintSource | None = None,
) -> ChangeResult:
    """Apply seeded change events to a canonical semantic mask until ``config.change_fraction`` of its
    valid pixels changed (or ``max_tries`` is spent). ``footprints``: where new buildings' shapes come from
    (``conditions.exemplar_synthesis.ExemplarFootprints``: real bank objects; default: rectangles, L shapes)."""
    valid = _check_layout(semantic, gsd, instances)
    sem = semantic.copy()
    inst = building_instances(sem) if instances is None else instances.astype(np.int32).copy()
    height, width = sem.shape
    # Footprints at most 0.4 of the layout's shorter side: small or fine-GSD layouts scale building and transition
    # sizes down.
    size_scale = min(1.0, 0.4 * min(height, width) * gsd / config.max_size_m)
    if size_scale < 1:
        logger.debug("layout %dx%d at %s m: footprint/transition sizes scaled by %.3f", height, width, gsd, size_scale)
    orientations = Orientations(inst)
    sizes = np.sqrt([n for i, n in zip(orientations.ids, orientations.counts) if i > 0]) * gsd  # square-equivalent
    s = _Simulation(
        sem, inst, np.zeros(sem.shape, dtype=bool), gsd, config, rng, sizes, orientations, Roads(sem, gsd),
        0.0 if config.allow_overlap else config.road_setback_m / gsd, size_scale, footprints,
    )  # fmt: skip
    names = list(config.events)
    probs = np.array([config.events[n] for n in names], dtype=float)
    probs /= probs.sum()
    cdf = probs.cumsum()
    cdf /= cdf[-1]  # what Generator.choice(p=probs) draws from, without its checks on every try
    target = config.change_fraction * valid.sum()
    for _ in range(config.max_tries):
        if s.changed_count >= target:
            break
        kind = names[int(np.searchsorted(cdf, rng.random(), side="right"))]  # = rng.choice(len(names), p=probs)
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
        if (s.roads.present and (pixels.values(semantic) == ROAD).any()) or (pixels.values(sem) == ROAD).any():
            s.roads.update(sem)  # a road appeared or was built over: distances and directions change
    return ChangeResult(sem, inst, s.events, sem != semantic)


def rasterize_events(events: list[ChangeEvent], shape_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool union of the events' geometries (pixel coordinates)."""
    geoms = [(e.geometry, 1) for e in events if not e.geometry.is_empty]
    if not geoms:
        return np.zeros(shape_hw, dtype=bool)
    return features.rasterize(geoms, out_shape=shape_hw, dtype=np.uint8).astype(bool)
