"""Exact pixel geometry in small windows: polygons → pixels and pixels → polygons, without full-image passes.

The change simulator (``conditions.change_events``) rasterises every candidate footprint and traces every
event's pixels. Doing that on the whole layout costs a full-image pass per candidate; here both work in the
window the geometry covers, and give exactly what the GDAL routines give on the full image:

* :func:`rasterize_polygon` burns the pixels whose centre lies inside a polygon (even-odd over its rings,
  centre on a left edge in, on a right edge out: GDAL's ``rasterize`` rule with ``all_touched=False``);
* :func:`trace_pixels` returns the polygons of exactly the True pixels (pixel-edge boundaries, holes,
  4-connected parts as separate polygons: what ``rasterio.features.shapes`` + ``union_all`` give), in
  ``shapely.normalize`` form.

Both are checked against rasterio on thousands of random shapes in ``tests/test_change_events.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry


def box_slices(box: tuple[int, int, int, int], shape_hw: tuple[int, int], margin: int = 0) -> tuple[slice, slice]:
    """Rows and columns of a box (first/last row, first/last column), grown by ``margin`` within ``shape_hw``."""
    (r0, r1, c0, c1), (height, width) = box, shape_hw
    return (slice(max(0, r0 - margin), min(height, r1 + 1 + margin)),
            slice(max(0, c0 - margin), min(width, c1 + 1 + margin)))  # fmt: skip


def bounding_slices(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice]:
    """Rows and columns of the True pixels of ``mask`` (not empty), grown by ``margin`` within its bounds."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return box_slices((rows[0], rows[-1], cols[0], cols[-1]), mask.shape, margin)


@dataclass(frozen=True)
class Window:
    """A boolean mask over the rows ``r0:r0+h`` and columns ``c0:c0+w`` of a layout."""

    r0: int
    c0: int
    mask: np.ndarray  # (h, w) bool

    @property
    def slices(self) -> tuple[slice, slice]:
        h, w = self.mask.shape
        return slice(self.r0, self.r0 + h), slice(self.c0, self.c0 + w)

    def of(self, array: np.ndarray) -> np.ndarray:
        """The window's part of a full-layout ``array`` (a view)."""
        return array[self.slices]

    def values(self, array: np.ndarray) -> np.ndarray:
        """``array``'s values at the window's True pixels."""
        return array[self.slices][self.mask]

    def restrict(self, keep: np.ndarray) -> Window:
        """The same window with only the pixels where ``keep`` (window-shaped) is True."""
        return Window(self.r0, self.c0, self.mask & keep)

    def count(self) -> int:
        return int(np.count_nonzero(self.mask))

    def any(self) -> bool:
        return bool(self.mask.any())

    def intersect(self, other: Window) -> Window | None:
        """The pixels in both windows (over their overlap), or None when there are none."""
        r0, c0 = max(self.r0, other.r0), max(self.c0, other.c0)
        r1 = min(self.r0 + self.mask.shape[0], other.r0 + other.mask.shape[0])
        c1 = min(self.c0 + self.mask.shape[1], other.c0 + other.mask.shape[1])
        if r0 >= r1 or c0 >= c1:
            return None
        mask = (self.mask[r0 - self.r0 : r1 - self.r0, c0 - self.c0 : c1 - self.c0]
                & other.mask[r0 - other.r0 : r1 - other.r0, c0 - other.c0 : c1 - other.c0])  # fmt: skip
        return Window(r0, c0, mask) if mask.any() else None


def rasterize_polygon(vertices: np.ndarray, shape_hw: tuple[int, int]) -> Window:
    """The pixels of an (H, W) layout whose centre lies inside the polygon of (n, 2) x, y ``vertices`` (pixel
    coordinates, one ring, not closed), in its bounding box."""
    height, width = shape_hw
    (minx, miny), (maxx, maxy) = vertices.min(axis=0), vertices.max(axis=0)
    r0, r1 = max(0, math.floor(miny)), min(height, math.ceil(maxy) + 1)
    c0, c1 = max(0, math.floor(minx)), min(width, math.ceil(maxx) + 1)
    if r0 >= r1 or c0 >= c1:
        return Window(min(r0, height), min(c0, width), np.zeros((0, 0), bool))
    start, end = vertices, np.concatenate([vertices[1:], vertices[:1]])  # (E, 2) edges
    dy = end[:, 1] - start[:, 1]
    slope = np.divide(end[:, 0] - start[:, 0], dy, out=np.zeros_like(dy), where=dy != 0)  # dx/dy; 0: horizontal
    y_centre = np.arange(r0 + 0.5, r1, 1.0)[:, None]  # (R, 1) row centres
    crosses = (y_centre >= np.minimum(start[:, 1], end[:, 1])) & (y_centre < np.maximum(start[:, 1], end[:, 1]))
    x = start[:, 0] + (y_centre - start[:, 1]) * slope  # (R, E) where each edge crosses each row centre
    x[~crosses] = np.inf
    x_centre = np.arange(c0 + 0.5, c1, 1.0)  # (C,) column centres
    inside = np.zeros((r1 - r0, c1 - c0), bool)  # (R, C): an odd number of crossings left of the centre
    for edge in x.T:  # (R,) a few edges: one (R, C) comparison each
        inside ^= edge[:, None] < x_centre
    return Window(r0, c0, inside)


def _ring(points: np.ndarray) -> np.ndarray:
    """(n, 2) vertices of a closed path → its corners only (no repeated, no collinear vertices)."""
    step = np.diff(points, axis=0, append=points[:1])  # (n, 2) to the next vertex
    moves = step.any(axis=1)
    points, step = points[moves], step[moves]  # without repeats: the steps still lead to the next kept vertex
    before = np.concatenate([step[-1:], step[:-1]])  # (n, 2) from the previous vertex
    return points[before[:, 0] * step[:, 1] != before[:, 1] * step[:, 0]]


def trace_pixels(window: Window) -> BaseGeometry:
    """Polygons (pixel coordinates of the layout) of exactly the window's True pixels, normalized.

    The mask is upsampled 2× so that OpenCV's border following (which runs through pixel centres) meets
    the pixel edges: a boundary pixel of the upsampled mask at index u lies on the left/top half of an
    original pixel when u is even, so its edge is at ``(u + 1) // 2``. OpenCV joins diagonal neighbours
    into one ring, which then touches itself; ``make_valid`` splits those rings at the touching corner into
    the 4-connected parts (the rare case: a few per cent of real events)."""
    mask = window.mask
    if not mask.any():
        return Polygon()
    h, w = mask.shape
    up = np.zeros((2 * h + 2, 2 * w + 2), np.uint8)  # (2h+2, 2w+2): 2× upsampled with a 1-pixel zero border
    up[1:-1, 1:-1] = cv2.resize(mask.view(np.uint8), (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(-1, -1))
    origin = np.array([window.c0, window.r0])
    rings = [_ring(((c.reshape(-1, 2) + 1) >> 1) + origin) for c in contours]  # (n, 2) x, y corners
    parents = hierarchy[0, :, 3]  # RETR_CCOMP: outer boundaries have no parent, holes have their outer one
    outer = np.flatnonzero(parents < 0)
    polygons = [Polygon(rings[k], [rings[j] for j in np.flatnonzero(parents == k)]) for k in outer]
    geometry = polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
    if not geometry.is_valid:
        geometry = shapely.make_valid(geometry)
    return shapely.normalize(geometry)


__all__ = ["Window", "rasterize_polygon", "trace_pixels"]
