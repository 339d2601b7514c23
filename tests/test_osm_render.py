"""OSM-style rendering of vector layouts (the GeoSynth-OSM hint), on the real West Oakland OSM layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyproj import CRS
from rasterio import features
from shapely.geometry import box, mapping

from conditions.osm_render import (
    BUILDING,
    LAND,
    ROAD_STYLES,
    WATER,
    osm_control,
    render_osm,
    render_semantic,
    road_style,
)
from conditions.palettes import CANONICAL
from conditions.vector_layouts import layers_centre, load_layer_rules, rasterize_on, utm_grid_at
from conditions.vectors import LayerRule, VectorLayer
from tests.conftest import shared_file

SIZE = 96


def _id(name: str) -> int:
    return CANONICAL.class_by_name(name).id


def _mask_of(image: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return (image == np.asarray(color, dtype=np.uint8)).all(axis=-1)


@pytest.fixture(scope="module")
def oakland():
    rules = load_layer_rules([
        f"buildings:{shared_file('vector/osm_west_oakland/buildings.geojson')}",
        f"roads:{shared_file('vector/osm_west_oakland/roads.geojson')}",
    ])  # fmt: skip
    lat, lon = layers_centre(rules)
    grid = utm_grid_at(lat, lon, 3.0, SIZE)
    return rules, grid, rasterize_on(rules, grid), render_osm(rules, grid)


def test_building_pixels_are_exactly_the_footprints(oakland):
    _, _, labels, image = oakland
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    building = _mask_of(image, BUILDING)
    assert building.sum() > 100
    np.testing.assert_array_equal(building, labels.semantic == _id("building"))


def test_roads_are_drawn_where_the_road_lines_are(oakland):
    rules, grid, labels, image = oakland
    colors = {s.fill for s in ROAD_STYLES.values()} | {s.casing for s in ROAD_STYLES.values() if s.casing}
    road = np.zeros(image.shape[:2], dtype=bool)
    for color in colors:
        road |= _mask_of(image, color)
    np.testing.assert_array_equal(road, labels.semantic == _id("road"))  # casing + fill = the road label
    assert np.array_equal(_mask_of(image, LAND), labels.semantic == _id("background"))
    # Each class in its own colours, along its own lines: secondary roads are carto's yellow with olive casing.
    layer = rules[1].layer.to_crs(grid.crs)
    secondary = [g.buffer(4.0, cap_style="flat") for g, p in zip(layer.geometries, layer.properties)
                 if p.get("highway") == "secondary"]  # fmt: skip
    under = features.rasterize([mapping(g) for g in secondary], out_shape=image.shape[:2], transform=grid.transform)
    fill, casing = _mask_of(image, ROAD_STYLES["secondary"].fill), _mask_of(image, ROAD_STYLES["secondary"].casing)
    assert fill.sum() > 20 and casing.sum() > 20
    assert not (fill & (under == 0)).any() and not (casing & (under == 0)).any()


def test_road_widths_are_metres_at_the_grid_gsd(oakland):
    rules, grid, _, image = oakland
    lat, lon = layers_centre(rules)
    fine = render_osm(rules, utm_grid_at(lat, lon, 1.5, 2 * SIZE))  # same extent, half the pixel size
    road_colors = {s.fill for s in ROAD_STYLES.values()} | {s.casing for s in ROAD_STYLES.values() if s.casing}

    def road_pixels(img: np.ndarray) -> int:
        return int(sum(_mask_of(img, c).sum() for c in road_colors))

    assert 3.4 < road_pixels(fine) / road_pixels(image) < 4.6  # the same metres cover 4x the pixels
    wide = render_osm(rules, utm_grid_at(lat, lon, 1.0, 512))  # the whole extract: its footways and cycleway
    assert _mask_of(wide, ROAD_STYLES["footway"].fill).sum() > 50  # 2 m paths: salmon and blue, no casing
    assert _mask_of(wide, ROAD_STYLES["cycleway"].fill).sum() > 50


def test_polygons_by_tag_and_class_and_determinism(oakland):
    _, grid, _, _ = oakland
    left, bottom, right, top = grid.bounds
    water = box(left, bottom, left + 60, bottom + 60)
    wood = box(right - 90, top - 90, right, top)
    odd = box(left + 100, top - 50, left + 140, top - 10)  # a polygon with no carto tag: its class's fill
    layer = VectorLayer([water, wood, odd], [{"natural": "water"}, {"landuse": "forest"}, {"kind": "x"}],
                        CRS.from_user_input(grid.crs))  # fmt: skip
    classes = {"water": "water", "forest": "tree"}
    rule = LayerRule(layer, "polygons", lambda p: classes.get(p.get("natural") or p.get("landuse"), "low_vegetation"))
    labels = rasterize_on([rule], grid)
    image = render_osm([rule], grid)
    np.testing.assert_array_equal(_mask_of(image, WATER), labels.semantic == _id("water"))
    np.testing.assert_array_equal(_mask_of(image, (0xAD, 0xD1, 0x9E)), labels.semantic == _id("tree"))
    np.testing.assert_array_equal(_mask_of(image, (0xCD, 0xEB, 0xB0)), labels.semantic == _id("low_vegetation"))
    assert np.array_equal(render_osm([rule], grid), image)  # deterministic


def test_semantic_masks_and_control_tensor():
    semantic = np.array([[0, 1], [2, 4]], dtype=np.uint8)
    image = render_semantic(semantic)
    assert tuple(image[0, 0]) == LAND and tuple(image[0, 1]) == BUILDING and tuple(image[1, 1]) == WATER
    control = osm_control(image)
    assert control.shape == (1, 3, 2, 2) and control.dtype == torch.float32
    assert torch.equal(control[0, :, 0, 1] * 255, torch.tensor(BUILDING, dtype=torch.float32))
    assert road_style("primary_link") == ROAD_STYLES["primary"] and road_style(None) == ROAD_STYLES["road"]
