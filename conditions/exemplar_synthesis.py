"""Exemplar synthesis: change content made of real pixels, with labels exact by construction.

The diffusion backend (``gen.tasks.change_pairs.inpaint_change``) regenerates the changed pixels with a model;
this backend fills them from real imagery instead, on a CPU and without a model:

* **add** — :class:`ExemplarFootprints` is the change simulator's footprint source: at the centre and
  orientation the simulator planned (``conditions.building_placement``), it places a real building of an
  object bank (``conditions.object_bank``) of about the planned size, turned to the planned orientation and
  resampled to the layout's GSD. The footprint *is* that object's pixels, so the simulator's placement checks,
  events and labels apply to exactly the pixels that will show the object. Each such event records its bank
  id and the affine matrix from the bank crop to the layout (``ChangeEvent.exemplar``);
* **remove / shrink / transitions** — the changed pixels take real texture of their new class: a patch of
  the same shape from nearby unchanged pixels of that class (the offset whose surrounding ring matches
  best), else a texture patch of the bank, else OpenCV's inpainting (each fill records which);
* **blend** — the object is colour-matched in Lab (its bank surroundings → the target's surroundings) and
  Poisson-blended (``cv2.seamlessClone``) over its pixels plus a band around them, so the band carries the
  source's own edge into the target; only the changed pixels are then copied into t2. Every pixel outside
  the change mask stays bit-identical to t1.

``COPY_PASTE`` is the naive baseline (objects pasted as they are, no colour matching, no blending, every
other fill by plain inpainting) that the usefulness benchmark compares against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from conditions.change_events import rasterize_events
from conditions.palettes import CANONICAL, IGNORE
from conditions.pixel_geometry import Window, bounding_slices

SYNTHESIS_METHODS = ("diffusion", "exemplar", "exemplar+harmonise", "copy-paste")
BUILDING = CANONICAL.class_by_name("building").id
# where a fill of a class may take its texture from in the same image (besides the class itself)
GROUND = tuple(CANONICAL.class_by_name(n).id for n in ("bare", "background", "low_vegetation", "agriculture"))
TEXTURE_SOURCES = {CANONICAL.class_by_name("bare").id: GROUND}
OFFSET_TRIES = 48  # candidate offsets of a nearby-texture fill
RING_PX = 3  # width of the ring compared between a region and a candidate source
MIN_TEXTURE_PX = 12  # smallest square of the image worth tiling as a texture
MAX_TEXTURE_PX = 64  # texture squares are at most this large (larger ones are no more useful)


@dataclass(frozen=True)
class ExemplarConfig:
    """How exemplar fills are made (``COPY_PASTE``: the naive baseline)."""

    colour_match: bool = True  # Lab statistics of a bank object's surroundings matched to the target's
    blend: bool = True  # objects cross-faded over their outer band_px; texture fills Poisson-blended
    texture_fill: bool = True  # removals and transitions from real texture (False: cv2.inpaint)
    band_px: int = 2  # objects: the cross-fade inside their edge; texture fills: the Poisson band around them
    candidates: int = 8  # a new building is drawn among this many bank objects nearest the planned area
    max_gsd_ratio: float = 4.0  # bank objects are resampled by at most this factor (else: refused)


COPY_PASTE = ExemplarConfig(colour_match=False, blend=False, texture_fill=False)


@dataclass(frozen=True)
class PlacedObject:
    """A bank object warped onto a window of the layout."""

    window: Window  # its pixels (mask >= 0.5 after resampling)
    pixels: np.ndarray  # (h, w, 3) uint8: the warped crop over the window's box
    context: np.ndarray  # (h, w) bool: its warped surroundings (ground around it in the bank crop)


def warp_object(obj: Any, matrix: np.ndarray, shape: tuple[int, int]) -> PlacedObject | None:
    """``obj`` (a ``BankObject``) moved by the (2, 3) affine ``matrix`` (crop x, y → layout x, y), clipped to a
    layout of ``shape``; None when nothing of it lands inside."""
    height, width = shape
    ch, cw = obj.mask.shape
    corners = np.array([(0, 0, 1), (cw, 0, 1), (cw, ch, 1), (0, ch, 1)], dtype=float) @ matrix.T  # (4, 2)
    x0, y0 = max(0, math.floor(corners[:, 0].min())), max(0, math.floor(corners[:, 1].min()))
    x1, y1 = min(width, math.ceil(corners[:, 0].max())), min(height, math.ceil(corners[:, 1].max()))
    if x0 >= x1 or y0 >= y1:
        return None
    local = matrix.copy()
    local[:, 2] -= (x0, y0)  # pixel (x0, y0) of the layout is (0, 0) of the window
    size = (x1 - x0, y1 - y0)
    # pixel centres: cv2 maps integer coordinates, the bank crop's pixel (i, j) has its centre at (j + .5, i + .5)
    centred = local.copy()
    centred[:, 2] += local[:, :2].sum(axis=1) * 0.5 - 0.5
    warp = dict(dsize=size, flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(obj.mask.astype(np.float32), centred, borderMode=cv2.BORDER_CONSTANT, **warp) >= 0.5
    if not mask.any():
        return None
    pixels = cv2.warpAffine(obj.pixels, centred, borderMode=cv2.BORDER_REFLECT, **{**warp, "flags": cv2.INTER_CUBIC})
    context = cv2.warpAffine(obj.context.astype(np.float32), centred, borderMode=cv2.BORDER_CONSTANT, **warp) >= 0.5
    return PlacedObject(Window(y0, x0, mask), pixels, context & ~mask)


def long_axis_angle(mask: np.ndarray) -> float:
    """Angle (rad, image x axis, y down) of the long side of the minimum-area rectangle of ``mask``'s pixels."""
    ys, xs = np.nonzero(mask)
    box = cv2.boxPoints(cv2.minAreaRect(np.column_stack([xs, ys]).astype(np.float32)))  # (4, 2)
    sides = [box[1] - box[0], box[2] - box[1]]
    dx, dy = max(sides, key=lambda v: float(v @ v))
    return math.atan2(float(dy), float(dx))


class ExemplarFootprints:
    """The change simulator's footprint source for new buildings: real bank buildings (see module doc)."""

    def __init__(self, bank: Any, gsd: float, config: ExemplarConfig = ExemplarConfig()) -> None:
        self.objects = bank.of_class("building")
        if not self.objects:
            raise ValueError("bank: it has no 'building' objects; build one from masks with buildings")
        for obj in self.objects:
            if not 1 / config.max_gsd_ratio <= obj.gsd / gsd <= config.max_gsd_ratio:
                raise ValueError(
                    f"bank: object {obj.id} is at {obj.gsd} m/px and the layout at {gsd} m/px (more than "
                    f"{config.max_gsd_ratio:g}x apart); build a bank from imagery of a closer pixel size"
                )
        self.gsd = gsd
        self.config = config
        self.log_areas = np.log([obj.area_m2 for obj in self.objects])  # (N,)
        self.angles = [long_axis_angle(obj.mask) for obj in self.objects]
        self.centroids = [tuple(np.argwhere(obj.mask).mean(axis=0)[::-1] + 0.5) for obj in self.objects]  # (x, y)

    def place(
        self, rng: np.random.Generator, cx: float, cy: float, w: float, h: float, angle: float, shape: tuple[int, int]
    ) -> tuple[Window, dict[str, Any]] | None:
        """A bank building of about ``w`` × ``h`` px centred on (cx, cy), its long side along ``angle`` (rad) when
        ``w >= h`` (else across it); its pixels in the layout and the record of the placement."""
        planned = math.log(w * h * self.gsd * self.gsd)
        nearest = np.argsort(np.abs(self.log_areas - planned), kind="stable")[: self.config.candidates]
        k = int(nearest[int(rng.integers(len(nearest)))])
        obj = self.objects[k]
        target = angle if w >= h else angle + math.pi / 2
        turn = (target - self.angles[k] + math.pi / 2) % math.pi - math.pi / 2  # the long axis, turned the least
        scale = obj.gsd / self.gsd * float(np.clip(math.sqrt(math.exp(planned) / obj.area_m2), 0.8, 1.25))
        cos, sin = math.cos(turn) * scale, math.sin(turn) * scale
        mx, my = self.centroids[k]
        matrix = np.array([[cos, -sin, cx - cos * mx + sin * my], [sin, cos, cy - sin * mx - cos * my]])  # (2, 3)
        placed = warp_object(obj, matrix, shape)
        if placed is None:
            return None
        return placed.window, {"bank_id": obj.id, "matrix": [[round(v, 6) for v in row] for row in matrix.tolist()]}


def _dilate(mask: np.ndarray, px: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


def poisson_paste(dst: np.ndarray, src: np.ndarray, region: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: ``dst`` with the ``region`` pixels solved from ``src``'s gradients and ``dst``'s values on
    the region's boundary (``cv2.seamlessClone``, normal clone); every other pixel is ``dst``'s."""
    rows, cols = bounding_slices(region)
    pad = 2  # seamlessClone needs the region off the border of what it is given

    def padded(a: np.ndarray) -> np.ndarray:
        return cv2.copyMakeBorder(np.ascontiguousarray(a[rows, cols]), pad, pad, pad, pad, cv2.BORDER_REFLECT)

    d, s = padded(dst), padded(src)
    m = padded(region.astype(np.uint8) * 255)
    h, w = rows.stop - rows.start, cols.stop - cols.start
    center = (pad + w // 2, pad + h // 2)  # seamlessClone places the mask's bounding box at center - size // 2
    if min(h, w) < 3:  # too thin for a Poisson solve: paste as it is
        cloned = np.where(m[..., None] > 0, s, d)
    else:
        cloned = cv2.seamlessClone(s, d, m, center, cv2.NORMAL_CLONE)
    out = dst.copy()
    inner = cloned[pad : pad + h, pad : pad + w]
    keep = region[rows, cols]
    out[rows, cols][keep] = inner[keep]
    return out


def colour_matched(pixels: np.ndarray, source: tuple[Sequence[float], Sequence[float]] | None,
                   target: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:  # fmt: skip
    """``pixels`` shifted in Lab so that statistics ``source`` (mean, std) become ``target``'s (std ratios kept
    within [0.8, 1.25]); unchanged when either is unknown."""
    if source is None or target is None:
        return pixels
    lab = cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB).astype(np.float32)  # (h, w, 3)
    mean_s, std_s = np.asarray(source[0], np.float32), np.asarray(source[1], np.float32)
    ratio = np.clip(target[1] / np.maximum(std_s, 1.0), 0.8, 1.25)
    lab = (lab - mean_s) * ratio + target[0]
    return cv2.cvtColor(np.clip(lab, 0, 255).round().astype(np.uint8), cv2.COLOR_LAB2RGB)


def lab_stats(image: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std) in 8-bit Lab of ``image``'s ``where`` pixels, or None when there are fewer than 16."""
    if np.count_nonzero(where) < 16:
        return None
    lab = cv2.cvtColor(image[where][None], cv2.COLOR_RGB2LAB)[0].astype(np.float32)  # (n, 3)
    return lab.mean(axis=0), lab.std(axis=0)


def nearby_offset(image: np.ndarray, region: np.ndarray, allowed: np.ndarray,
                  rng: np.random.Generator) -> tuple[int, int] | None:  # fmt: skip
    """(dy, dx) such that ``region`` moved by it lies on ``allowed`` pixels only, the one of ``OFFSET_TRIES``
    random offsets (1 to 4 region sizes away) whose surrounding ring looks most like the region's; None if none fits."""
    height, width = region.shape
    rows, cols = bounding_slices(region)
    ys, xs = np.nonzero(region[rows, cols])
    ys, xs = ys + rows.start, xs + cols.start
    ring = _dilate(region, RING_PX) & ~region
    ry, rx = np.nonzero(ring)
    target = image[ry, rx].astype(np.float32)  # (n, 3)
    size = max(rows.stop - rows.start, cols.stop - cols.start)
    best, best_cost = None, math.inf
    for _ in range(OFFSET_TRIES):
        distance, theta = rng.uniform(size, 4 * size + 8), rng.uniform(0, 2 * math.pi)
        dy, dx = round(distance * math.sin(theta)), round(distance * math.cos(theta))
        sy, sx = ys + dy, xs + dx
        if sy.min() < 0 or sx.min() < 0 or sy.max() >= height or sx.max() >= width or not allowed[sy, sx].all():
            continue
        qy, qx = np.clip(ry + dy, 0, height - 1), np.clip(rx + dx, 0, width - 1)
        cost = float(np.mean((image[qy, qx].astype(np.float32) - target) ** 2)) if len(ry) else 0.0
        if cost < best_cost:
            best, best_cost = (dy, dx), cost
    return best


def image_patch(image: np.ndarray, allowed: np.ndarray, rng: np.random.Generator,
                min_side: int = MIN_TEXTURE_PX) -> np.ndarray | None:  # fmt: skip
    """(s, s, 3): a square of ``image`` lying on ``allowed`` pixels only, as large as the largest such square
    allows (up to ``MAX_TEXTURE_PX``), at a random place among those that fit; None when none of ``min_side`` fits."""
    # Chebyshev distance to the nearest pixel not allowed (or outside): a square of half-side d - 1 fits around a
    # pixel at distance d
    padded = np.pad(allowed, 1).astype(np.uint8)
    distance = cv2.distanceTransform(padded, cv2.DIST_C, 3)[1:-1, 1:-1]  # (H, W)
    half = min(int(distance.max()) - 1, MAX_TEXTURE_PX // 2)
    if 2 * half + 1 < min_side:
        return None
    ys, xs = np.nonzero(distance >= half + 1)
    k = int(rng.integers(len(ys)))
    y, x = int(ys[k]), int(xs[k])
    return image[y - half : y + half + 1, x - half : x + half + 1]


def tiled(patch: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3): ``patch`` mirror-tiled over a layout of ``shape`` from a random phase."""
    ph, pw = patch.shape[:2]
    reps = (shape[0] // (2 * ph) + 2, shape[1] // (2 * pw) + 2)
    cell = np.concatenate([patch, patch[::-1]], axis=0)
    cell = np.concatenate([cell, cell[:, ::-1]], axis=1)  # (2ph, 2pw, 3): seamless under mirroring
    big = np.tile(cell, (*reps, 1))
    oy, ox = int(rng.integers(2 * ph)), int(rng.integers(2 * pw))
    return big[oy : oy + shape[0], ox : ox + shape[1]]


@dataclass
class ExemplarSynthesis:
    """Fills the changed pixels of one date (see module doc): t2 = :meth:`__call__` (t1 image, layouts, events)."""

    bank: Any
    config: ExemplarConfig = ExemplarConfig()

    def __post_init__(self) -> None:
        self._objects = {obj.id: obj for obj in self.bank.objects} if self.bank is not None else {}

    def __call__(self, image: np.ndarray, semantic_t1: np.ndarray, change: np.ndarray, events: Sequence[Any],
                 rng: np.random.Generator) -> tuple[np.ndarray, list[dict[str, Any]]]:  # fmt: skip
        """(t2 image, one fill record per event): ``image`` with exactly the ``change`` pixels filled."""
        out = image.copy()
        ground = ~change & (semantic_t1 != IGNORE)  # unchanged pixels: where real texture can come from
        fills = []
        regions = [rasterize_events([event], change.shape) & change for event in events]  # (H, W) bool each
        pasted: dict[int | None, dict[str, Any]] = {}  # one new building may span several events (one per class)
        for k, (event, region) in enumerate(zip(events, regions, strict=True)):
            if not region.any():
                continue
            if getattr(event, "exemplar", None):
                if event.instance_id not in pasted:  # the whole building at once: one colour match, one blend
                    whole = np.logical_or.reduce([m for e, m in zip(events, regions, strict=True)
                                                  if e.exemplar and e.instance_id == event.instance_id])  # fmt: skip
                    pasted[event.instance_id] = self._paste_object(out, image, semantic_t1, change, whole,
                                                                   event.exemplar)  # fmt: skip
                record = pasted[event.instance_id]
            else:
                to = CANONICAL.class_by_name(event.class_to).id
                record = self._fill_texture(out, image, semantic_t1, ground, region, to, rng)
            fills.append({"event": k, **record})
        return out, fills

    def _paste_object(self, out: np.ndarray, image: np.ndarray, semantic_t1: np.ndarray, change: np.ndarray,
                      region: np.ndarray, exemplar: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        obj = self._objects[exemplar["bank_id"]]
        placed = warp_object(obj, np.asarray(exemplar["matrix"], dtype=float), region.shape)
        crop = placed.pixels  # (h, w, 3) over the placed window, which holds every pixel of the building
        if self.config.colour_match:
            around = _dilate(region, max(2, round(3 / obj.gsd))) & ~change & (semantic_t1 != BUILDING)
            source = (obj.context_lab_mean, obj.context_lab_std) if obj.context_lab_mean is not None else None
            crop = colour_matched(crop, source, lab_stats(image, around))
        # the object's box grown by the cross-fade's reach: distances to the building's edge are those on the layout
        r, c = placed.window.slices
        grow = self.config.band_px + 1
        rows = slice(max(0, r.start - grow), min(region.shape[0], r.stop + grow))
        cols = slice(max(0, c.start - grow), min(region.shape[1], c.stop + grow))
        src = out[rows, cols].copy()
        src[r.start - rows.start : r.stop - rows.start, c.start - cols.start : c.stop - cols.start] = crop
        inside = region[rows, cols]
        if self.config.blend:  # cross-fade into the old pixels over the object's outer band_px pixels
            depth = cv2.distanceTransform(np.pad(inside, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
            alpha = np.clip(depth / (self.config.band_px + 1), 0, 1)[..., None]  # (h, w, 1): 1 beyond the band
            src = (alpha * src + (1 - alpha) * out[rows, cols]).round().astype(np.uint8)
        out[rows, cols][inside] = src[inside]
        return {"fill": "exemplar", "bank_id": obj.id}

    def _fill_texture(self, out: np.ndarray, image: np.ndarray, semantic_t1: np.ndarray, ground: np.ndarray,
                      region: np.ndarray, class_id: int, rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
        name = CANONICAL.by_id()[class_id].name
        if not self.config.texture_fill:
            return self._inpaint(out, region, name)
        allowed = ground & np.isin(semantic_t1, (class_id, *TEXTURE_SOURCES.get(class_id, ())))
        offset = nearby_offset(image, region, allowed, rng)
        record: dict[str, Any]
        if offset is not None:
            dy, dx = offset
            src = np.roll(image, (-dy, -dx), axis=(0, 1))  # src[p] = image[p + offset]
            record = {"fill": "nearby", "class": name, "offset": [dy, dx]}
        elif (patch := image_patch(image, allowed, rng)) is not None:
            src = tiled(patch, region.shape, rng)
            record = {"fill": "image_texture", "class": name, "side_px": patch.shape[0]}
        else:
            sources = (class_id, *TEXTURE_SOURCES.get(class_id, ()))
            patches = [p for c in sources for p in self.bank.textures_of(CANONICAL.by_id()[c].name)]
            if not patches:
                return self._inpaint(out, region, name)
            patch = patches[int(rng.integers(len(patches)))]
            src = tiled(patch.pixels, region.shape, rng)
            record = {"fill": "bank_texture", "class": name, "bank_id": patch.id}
        if self.config.blend:
            src = poisson_paste(out, src, _dilate(region, self.config.band_px))
        out[region] = src[region]
        return record

    def _inpaint(self, out: np.ndarray, region: np.ndarray, name: str) -> dict[str, Any]:
        """Plain OpenCV inpainting (Telea) of a region grown by the band, so that its fill comes from clean
        surroundings rather than the old object's edge pixels; only the region is written."""
        grown = _dilate(region, self.config.band_px) if self.config.texture_fill else region
        filled = cv2.inpaint(out, grown.astype(np.uint8), 3, cv2.INPAINT_TELEA)
        out[region] = filled[region]
        return {"fill": "inpaint", "class": name}
