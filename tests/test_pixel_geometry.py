"""Window rasterising and pixel tracing (conditions.pixel_geometry) give exactly what GDAL gives on the full image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import shapely
from rasterio import features
from shapely.geometry import Polygon, shape

from conditions.building_placement import footprint
from conditions.pixel_geometry import Window, rasterize_polygon, trace_pixels


def _gdal_trace(mask: np.ndarray) -> shapely.Geometry:
    polygons = [shape(g) for g, v in features.shapes(mask.astype(np.uint8), mask=mask) if v == 1]
    return shapely.normalize(shapely.union_all(polygons))


def _random_polygons(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        cx, cy = rng.uniform(-20, 140, 2)
        if i % 5 == 0:  # transition boxes: integer centres, any side
            side = rng.uniform(1, 50)
            cx, cy = float(int(cx)), float(int(cy))
            out.append(np.array([(cx + side / 2, cy - side / 2), (cx + side / 2, cy + side / 2),
                                 (cx - side / 2, cy + side / 2), (cx - side / 2, cy - side / 2)]))  # fmt: skip
        else:  # footprints: rectangles and L shapes, axis-aligned or turned
            w, h = rng.uniform(1, 60, 2)
            out.append(footprint(rng, cx, cy, w, h, rng.uniform(0, np.pi) if i % 4 else 0.0))
    return out


def test_rasterize_polygon_equals_gdal_rasterize_on_the_full_image():
    shape_hw = (120, 130)
    for vertices in _random_polygons(np.random.default_rng(1), 1500):
        expected = features.rasterize([(Polygon(vertices), 1)], out_shape=shape_hw, dtype=np.uint8).astype(bool)
        window = rasterize_polygon(vertices, shape_hw)
        got = np.zeros(shape_hw, bool)
        got[window.slices] = window.mask
        assert np.array_equal(got, expected), vertices


def _random_masks(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    out = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        if i % 3 == 0:  # salt and pepper: diagonal touches, holes, single pixels
            mask = rng.random((h, w)) < 0.5
        elif i % 3 == 1:  # overlapping boxes toggled: rings, L shapes, holes
            mask = np.zeros((h, w), bool)
            for _ in range(3):
                (a, b), (c, d) = np.sort(rng.integers(0, h, 2)), np.sort(rng.integers(0, w, 2))
                mask[a : b + 1, c : d + 1] ^= True
        else:  # blobs
            mask = cv2.GaussianBlur(rng.random((h, w)), (0, 0), 1.5) > 0.5
        out.append(mask)
    return out


def test_trace_pixels_equals_gdal_polygonize_and_union():
    """Holes, islands in holes, diagonal touches (split into 4-connected parts): the same normalized polygons."""
    for mask in _random_masks(np.random.default_rng(0), 900):
        if not mask.any():
            continue
        layout = np.zeros((mask.shape[0] + 10, mask.shape[1] + 12), bool)
        layout[3 : 3 + mask.shape[0], 5 : 5 + mask.shape[1]] = mask
        got = trace_pixels(Window(3, 5, mask))
        expected = _gdal_trace(layout)
        assert got.wkb == expected.wkb, (mask.astype(int), got.wkt, expected.wkt)


@pytest.mark.parametrize("vertices", [np.array([(300.0, 5.0), (310.0, 5.0), (310.0, 9.0)]), np.zeros((4, 2)) - 9])
def test_a_polygon_off_the_layout_has_no_pixels(vertices):
    window = rasterize_polygon(vertices, (64, 64))
    assert not window.any() and window.count() == 0
    assert trace_pixels(window).is_empty
