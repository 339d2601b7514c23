"""Where a new building goes and how it is turned: footprints aligned with the nearest building or road.

``add_building`` events (``conditions.change_events``) draw a candidate centre and size, then ask
:func:`align_footprint` for the footprint's orientation:

* the **nearest reference** wins: the nearest road pixel (distance to the road's edge) against the
  nearest building (distance from its centroid minus its equivalent radius, i.e. roughly to its edge);
* aligned with a **road**, the footprint's long axis runs parallel to the local road direction — the
  principal axis of the road pixels within ``radius`` pixels of the nearest road pixel — and a candidate
  closer to the road than half its depth plus the set-back is pushed away from the road along the
  road's normal, so the building fronts the street instead of standing on it;
* aligned with a **building**, it takes that building's orientation (its minimum-area rectangle).

Everything is a deterministic function of the candidate (no random draws), so results stay reproducible
from the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from conditions.palettes import CANONICAL
from conditions.pixel_geometry import Window

ROAD = CANONICAL.class_by_name("road").id
ROAD_DIRECTION_RADIUS_M = 20.0  # road pixels within this distance of the nearest one give its direction
PCA_SAMPLES = 64  # at most this many pixels per side of the direction window (subsampled beyond)


def footprint(rng: np.random.Generator, cx: float, cy: float, w: float, h: float, angle: float) -> np.ndarray:
    """(n, 2) x, y vertices of a rectangle, or (one time in three) an L shape, centred on (cx, cy), rotated by
    ``angle`` (rad). The side of length ``w`` runs along ``angle``; ``h`` is the depth across it."""
    if rng.random() < 1 / 3:
        cut_w, cut_h = w * rng.uniform(0.3, 0.6), h * rng.uniform(0.3, 0.6)
        points = [(0, 0), (w, 0), (w, h - cut_h), (w - cut_w, h - cut_h), (w - cut_w, h), (0, h)]
    else:
        points = [(0, 0), (w, 0), (w, h), (0, h)]
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array(
        [((x - w / 2) * cos - (y - h / 2) * sin + cx, (x - w / 2) * sin + (y - h / 2) * cos + cy) for x, y in points]
    )


def row_extremes(body: np.ndarray, r0: int = 0, c0: int = 0) -> np.ndarray:
    """(2n, 2) float32 x, y of the first and the last True pixel of each of the n rows of ``body`` that have one
    (offset by r0, c0). Their convex hull is that of all the True pixels, and so is ``cv2.minAreaRect`` of them."""
    rows = np.flatnonzero(body.any(axis=1))
    body = body[rows]
    first, last = body.argmax(axis=1), body.shape[1] - 1 - body[:, ::-1].argmax(axis=1)
    ys = rows + r0
    return np.concatenate([np.column_stack([first + c0, ys]), np.column_stack([last + c0, ys])]).astype(np.float32)


class Orientations:
    """Centroids, sizes and orientations of the buildings, for aligning new footprints.

    Centroids, sizes and windows of all buildings come from one pass over the building pixels; a building's
    orientation (its minimum-area rectangle) is computed when it is first the nearest one, from the first and
    last pixel of each of its rows (:func:`row_extremes`)."""

    def __init__(self, instances: np.ndarray) -> None:
        self._instances = instances.copy()  # the layout's buildings at creation (new ones come through add())
        flat = np.flatnonzero(instances != 0)  # row-major (a bool scan: much faster than nonzero on ints)
        ys, xs = np.divmod(flat, instances.shape[1])
        values = instances.ravel()[flat]
        if len(values) and 0 <= values.min() and values.max() < 4 * instances.size:  # small ids: index by id
            index = values
        else:
            ids, index = np.unique(values, return_inverse=True)
        counts = np.bincount(index)  # (K,) pixels per index
        bounds = np.empty((4, len(counts)), np.int64)  # (4, K) first/last row, first/last column
        bounds[0], bounds[1], bounds[2], bounds[3] = instances.shape[0], -1, instances.shape[1], -1
        np.minimum.at(bounds[0], index, ys)
        np.maximum.at(bounds[1], index, ys)
        np.minimum.at(bounds[2], index, xs)
        np.maximum.at(bounds[3], index, xs)
        sum_x = np.bincount(index, weights=xs, minlength=len(counts))
        sums = np.stack([sum_x, np.bincount(index, weights=ys, minlength=len(counts))])  # (2, K) x, y sums
        if index is values:  # keep the ids that occur
            ids = np.flatnonzero(counts)
            counts, bounds, sums = counts[ids], bounds[:, ids], sums[:, ids]
        self.ids: list[int] = ids.tolist()  # ascending
        self.counts: list[int] = counts.tolist()  # pixels of each building
        self.bounds: list[list[int]] = bounds.T.tolist()  # (N, 4) each building's first/last row, first/last column
        self._angles: list[float | None] = [None] * len(self.ids)
        # (3, capacity) centroid x, y and equivalent radius of every building, the first ``size`` columns in use:
        # grown by doubling, so that add() and nearest() do not rebuild arrays from lists
        self._size = len(self.ids)
        self._points = np.empty((3, max(16, 2 * self._size)))
        self._points[:2, : self._size] = sums / np.maximum(counts, 1)
        self._points[2, : self._size] = np.sqrt(counts / math.pi)

    def add(self, cx: float, cy: float, angle: float, pixels: float) -> None:
        if self._size == self._points.shape[1]:
            self._points = np.concatenate([self._points, np.empty_like(self._points)], axis=1)
        self._points[:, self._size] = cx, cy, math.sqrt(pixels / math.pi)
        self._size += 1
        self._angles.append(angle)

    def angle(self, k: int) -> float:
        """Orientation (rad) of building ``k``: the layout's buildings by ascending id, then the added ones."""
        if self._angles[k] is None:
            r0, r1, c0, c1 = self.bounds[k]
            self._angles[k] = math.radians(cv2.minAreaRect(row_extremes(self._instances[r0 : r1 + 1, c0 : c1 + 1]
                                                                        == self.ids[k], r0, c0))[2])  # fmt: skip
        return self._angles[k]

    def nearest(self, cx: float, cy: float) -> tuple[float, float] | None:
        """(angle, distance in px to roughly its edge) of the building nearest to (cx, cy); None if none."""
        if not self._size:
            return None
        x, y, radius = self._points[:, : self._size]  # (N,) each
        distances = np.hypot(x - cx, y - cy) - radius
        k = int(np.argmin(distances))
        return self.angle(k), max(0.0, float(distances[k]))


class Roads:
    """The road pixels (canonical class ``road``) of a layout: distance from every pixel to the nearest
    road pixel, which pixel that is, and the local road direction. Call :meth:`update` when roads change.
    The distance transform runs when a distance is first asked for, once per state of the roads."""

    def __init__(self, semantic: np.ndarray, gsd: float) -> None:
        self.radius = max(ROAD_DIRECTION_RADIUS_M / gsd, 8.0)
        self.update(semantic)

    def update(self, semantic: np.ndarray) -> None:
        self.mask = semantic == ROAD  # a snapshot: the caller may go on changing ``semantic``
        self.present = bool(self.mask.any())
        self._distance: np.ndarray | None = None

    def _transform(self) -> None:
        self._distance, self._labels = cv2.distanceTransformWithLabels(
            (~self.mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE, labelType=cv2.DIST_LABEL_PIXEL
        )  # distance (px) to the nearest road pixel; label k = the k-th road pixel in row-major order
        self._ys, self._xs = np.nonzero(self.mask)

    @property
    def distance(self) -> np.ndarray:
        """(H, W) float32 distance (px) from every pixel to the nearest road pixel."""
        if self._distance is None:
            self._transform()
        return self._distance

    def nearest(self, x: float, y: float) -> tuple[float, int, int]:
        """Distance (px) from the pixel holding (x, y) to the nearest road pixel, and that pixel's column, row."""
        col = min(int(x), self.mask.shape[1] - 1)
        row = min(int(y), self.mask.shape[0] - 1)
        distance = float(self.distance[row, col])
        k = int(self._labels[row, col]) - 1
        return distance, int(self._xs[k]), int(self._ys[k])

    def direction(self, col: int, row: int) -> float | None:
        """Angle (rad, in [0, pi)) of the principal axis of the road pixels within ``radius`` of (col, row);
        None when fewer than three road pixels are there."""
        r = int(math.ceil(self.radius))
        step = max(1, (2 * r + 1) // PCA_SAMPLES)  # subsample large windows (fine GSDs): constant cost
        r0, c0 = max(0, row - r), max(0, col - r)
        ys, xs = np.nonzero(self.mask[r0 : row + r + 1 : step, c0 : col + r + 1 : step])
        dx, dy = xs * step + c0 - col, ys * step + r0 - row
        inside = dx * dx + dy * dy <= r * r
        if inside.sum() < 3:
            return None
        points = np.column_stack([dx[inside], dy[inside]]).astype(float)
        points -= points.mean(axis=0)
        _, vectors = np.linalg.eigh(points.T @ points)
        vx, vy = vectors[:, 1]  # eigenvector of the largest eigenvalue: along the road
        return math.atan2(vy, vx) % math.pi


@dataclass(frozen=True)
class Alignment:
    cx: float  # the footprint's centre, pixels (moved off the road when needed)
    cy: float
    angle: float  # radians
    reference: str | None  # 'road', 'building' or None (nothing to align with)


def align_footprint(
    cx: float, cy: float, depth: float, orientations: Orientations, roads: Roads, setback_px: float
) -> Alignment:
    """Orientation (and, next to a road, position) of a new footprint of depth ``depth`` px at (cx, cy)."""
    building = orientations.nearest(cx, cy)
    if roads.present:
        distance, col, row = roads.nearest(cx, cy)
        theta = roads.direction(col, row)
        if theta is not None and (building is None or distance <= building[1]):
            need = depth / 2 + setback_px + 1.5  # centre to road-pixel centre that keeps the set-back
            if distance < need:
                nx, ny = -math.sin(theta), math.cos(theta)  # the road's normal
                qx, qy = col + 0.5, row + 0.5
                side = 1.0 if nx * (cx - qx) + ny * (cy - qy) >= 0 else -1.0  # stay on the candidate's side
                cx, cy = qx + side * nx * need, qy + side * ny * need
            return Alignment(cx, cy, theta, "road")
    if building is not None:
        return Alignment(cx, cy, building[0], "building")
    return Alignment(cx, cy, 0.0, None)


def keeps_setback(pixels: Window, roads: Roads, setback_px: float) -> bool:
    """True when no pixel of ``pixels`` lies on a road or within ``setback_px`` of one."""
    if not roads.present:
        return True
    return bool(pixels.values(roads.distance).min() > setback_px)
