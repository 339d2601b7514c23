"""Palettes, semantic masks and vector layouts on the real shared data."""

import json

import numpy as np
import pytest
import rasterio
import torch
from pyproj import CRS, Transformer
from shapely.ops import unary_union

from conditions.masks import MaskError, encode_color, encode_onehot, read_mask
from conditions.palettes import CANONICAL, PALETTES, PaletteError, convert, get_palette
from conditions.vectors import (
    LayerRule,
    TargetGrid,
    VectorError,
    attribute_classifier,
    rasterize_layout,
    read_vector,
)
from core.geo import utm_crs_for
from tests.conftest import shared_file

LOVEDA_MASK = "seg/loveda/masks/0.png"
POTSDAM_MASK = "seg/potsdam/masks/2_10_0_0_512_512.png"
LEVIR_LABEL = "change/levir_like/label/test_2_0000_0000.png"
ALEXANDRIA = "vector/buildings_alexandria/buildings.geojson"
OAKLAND_BUILDINGS = "vector/osm_west_oakland/buildings.geojson"
OAKLAND_ROADS = "vector/osm_west_oakland/roads.geojson"
LEVIR_TILES = "vector/levir_cd_tiles/LEVIR_CD_name_coords.geojson"


# ---------------------------------------------------------------- palettes
@pytest.mark.parametrize("name", ["loveda", "potsdam", "openearthmap", "second", "levir", "vaihingen"])
def test_palette_round_trips_through_canonical(name):
    palette = get_palette(name)
    ids = np.array([c.id for c in palette.classes] + list(palette.ignore_ids), dtype=np.uint8)
    assert np.array_equal(convert(ids, palette, palette), ids)
    canonical = palette.to_canonical(ids)
    assert set(canonical.tolist()) <= set(CANONICAL.ids) | {255}


def test_palette_conversions_and_errors():
    loveda = np.array([[1, 2, 3], [4, 6, 0]], dtype=np.uint8)  # background building road / water forest no-data
    with pytest.raises(
        PaletteError, match=r"canonical class\(es\) \['background'\] have no equivalent in the 'openearthmap'"
    ):
        convert(loveda, "loveda", "openearthmap")
    assert convert(np.array([[2, 6]], np.uint8), "loveda", "second").tolist() == [[5, 4]]
    with pytest.raises(PaletteError, match=r"unknown class id\(s\) \[9\] for the 'loveda' scheme"):
        get_palette("loveda").to_canonical(np.array([[1, 9]], np.uint8))
    with pytest.raises(PaletteError, match=r"--palette='isaid': unknown scheme; choose one of"):
        get_palette("isaid")
    assert set(PALETTES) >= {"loveda", "potsdam", "vaihingen", "openearthmap", "second", "levir", "canonical"}


# ---------------------------------------------------------------- masks
def test_read_real_masks():
    loveda = read_mask(shared_file(LOVEDA_MASK), "loveda")
    assert loveda.shape == (1024, 1024) and loveda.ids.dtype == np.uint8
    fractions = loveda.class_fractions()
    assert fractions["agriculture"] > 0.5 and sum(fractions.values()) == pytest.approx(1.0)
    potsdam = read_mask(shared_file(POTSDAM_MASK), "potsdam", target_shape=(512, 512))
    assert potsdam.class_fractions()["building"] > 0.1
    levir = read_mask(shared_file(LEVIR_LABEL), "levir")  # stored 0/255 on disk
    assert set(np.unique(levir.ids)) == {0, 1}
    with rasterio.open(shared_file(LEVIR_LABEL)) as src:
        assert (levir.ids == 1).sum() == (src.read(1) == 255).sum()
    onehot = encode_onehot(potsdam)
    assert onehot.shape == (6, 512, 512) and torch.equal(onehot.sum(0) <= 1, torch.ones(512, 512, dtype=torch.bool))
    color = encode_color(loveda)
    assert color.shape == (3, 1024, 1024) and 0 <= color.min() and color.max() <= 1
    assert len(loveda.sha256) == 64


def test_colour_coded_mask_round_trip(tmp_path):
    potsdam = read_mask(shared_file(POTSDAM_MASK), "potsdam")
    rgb = potsdam.palette.colorize(potsdam.ids)
    path = tmp_path / "rgb.png"
    with rasterio.open(path, "w", driver="PNG", width=512, height=512, count=3, dtype="uint8") as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    decoded = read_mask(path, "potsdam")
    valid = potsdam.ids != 0
    assert np.array_equal(decoded.ids[valid], potsdam.ids[valid])


def test_mask_errors(tmp_path):
    with pytest.raises(MaskError, match=r"size 1024x1024 does not match the target 512x512"):
        read_mask(shared_file(LOVEDA_MASK), "loveda", target_shape=(512, 512))
    with pytest.raises(MaskError, match=r"unknown class id\(s\) \[255\] for the 'loveda' scheme"):
        read_mask(shared_file(LEVIR_LABEL), "loveda")
    with pytest.raises(MaskError, match=r"colour\(s\) \[\(\d+, \d+, \d+\).*are not in the 'loveda' palette"):
        read_mask(shared_file("seg/potsdam/images/2_10_0_0_512_512.png"), "loveda")
    float_mask = tmp_path / "f.tif"
    with rasterio.open(float_mask, "w", driver="GTiff", width=4, height=4, count=1, dtype="float32") as dst:
        dst.write(np.ones((1, 4, 4), np.float32))
    with pytest.raises(MaskError, match=r"dtype float32 - masks hold integer class ids"):
        read_mask(float_mask, "loveda")
    nodata = tmp_path / "n.png"
    with rasterio.open(nodata, "w", driver="PNG", width=4, height=4, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(MaskError, match=r"every pixel is no-data/ignore"):
        read_mask(nodata, "loveda")
    with pytest.raises(MaskError, match=r"no such file"):
        read_mask(tmp_path / "missing.png", "loveda")


# ---------------------------------------------------------------- vectors
def _grid_around(layer, gsd=0.5, margin=10.0):
    lon, lat = unary_union(layer.geometries).centroid.coords[0]
    crs = utm_crs_for(lat, lon)
    left, bottom, right, top = unary_union(layer.to_crs(crs).geometries).bounds
    return TargetGrid.from_bounds((left - margin, bottom - margin, right + margin, top + margin), crs, gsd)


def test_buildings_count_and_area_match_the_geojson():
    layer = read_vector(shared_file(ALEXANDRIA))
    assert len(layer) == 84 and layer.crs == CRS.from_epsg(4326) and layer.repaired == 0
    grid = _grid_around(layer)
    assert grid.crs == CRS.from_epsg(32618)
    labels = rasterize_layout([LayerRule(layer, "buildings")], grid)
    assert len(labels.objects) == 84
    assert len(np.unique(labels.instances)) == 85  # 84 instances + background
    pixel_area = grid.gsd**2
    vector_area = sum(g.area for g in layer.to_crs(grid.crs).geometries)
    raster_area = (labels.semantic == CANONICAL.class_by_name("building").id).sum() * pixel_area
    assert abs(raster_area - vector_area) <= len(labels.objects) * pixel_area
    for obj in labels.objects:
        xmin, ymin, xmax, ymax = obj.bbox
        rows, cols = np.nonzero(labels.instances == obj.instance_id)
        assert xmin - 1 <= cols.min() and cols.max() <= xmax and ymin - 1 <= rows.min() and rows.max() <= ymax
        assert len(obj.obb) == 4
    # Feature attributes travel with each object (for height-aware or attribute-filtered datasets).
    assert all("HEIGHT" in o.properties for o in labels.objects)


def test_reprojection_matches_pyproj():
    layer = read_vector(shared_file(OAKLAND_BUILDINGS))
    crs = utm_crs_for(37.8076, -122.30)
    projected = layer.to_crs(crs)
    lon, lat = layer.geometries[0].exterior.coords[0]
    expected = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    assert projected.geometries[0].exterior.coords[0] == pytest.approx(expected, abs=1e-6)


def test_roads_buildings_and_polygons_layout(tmp_path):
    roads = read_vector(shared_file(OAKLAND_ROADS))
    buildings = read_vector(shared_file(OAKLAND_BUILDINGS))
    grid = _grid_around(buildings, gsd=1.0, margin=20.0)
    labels = rasterize_layout([LayerRule(roads, "roads"), LayerRule(buildings, "buildings")], grid)
    counts = np.bincount(labels.semantic.ravel(), minlength=11)
    assert counts[CANONICAL.class_by_name("road").id] > 1000 and counts[1] > 1000
    assert labels.instances.max() == len(labels.objects) <= 23
    # A residential street buffered to 6 m covers about length * 6 m.
    street = next(
        g for g, p in zip(roads.to_crs(grid.crs).geometries, roads.properties) if p["highway"] == "residential"
    )
    only = rasterize_layout([LayerRule(type(roads)([street], [{"highway": "residential"}], grid.crs), "roads")], grid)
    inside = street.intersection(__import__("shapely").geometry.box(*grid.bounds))
    assert (only.semantic == 2).sum() == pytest.approx(inside.length * 6.0, rel=0.1)
    # Attribute-classified polygons.
    water = tmp_path / "water.geojson"
    lon, lat = buildings.geometries[0].exterior.coords[0]
    square = [[lon, lat], [lon + 0.0003, lat], [lon + 0.0003, lat + 0.0003], [lon, lat + 0.0003], [lon, lat]]
    polygon = {"type": "Polygon", "coordinates": [square]}
    features = [
        {"type": "Feature", "properties": {"natural": "water"}, "geometry": polygon},
        {"type": "Feature", "properties": {"amenity": "x"}, "geometry": polygon},
    ]
    water.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    classify = attribute_classifier({"natural=water": "water"})
    labels = rasterize_layout([LayerRule(read_vector(water), "polygons", classify)], grid)
    assert (labels.semantic == CANONICAL.class_by_name("water").id).sum() > 100


def test_tolerant_reader_repairs_and_reports(tmp_path, caplog):
    tiles = read_vector(shared_file(LEVIR_TILES))  # polygons given as a bare ring
    assert len(tiles) == 637 and tiles.repaired == 637 and tiles.dropped == 0
    assert "repaired 637" in caplog.text
    names = [p["name"] for p in tiles.properties]
    assert "test_7.png" in names
    bowtie = tmp_path / "bowtie.geojson"
    ring = [[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]  # self-intersecting
    features = [
        {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}},
        {"type": "Feature", "properties": {}, "geometry": None},
    ]
    bowtie.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    layer = read_vector(bowtie)
    assert layer.repaired == 1 and layer.dropped == 1 and layer.geometries[0].is_valid


def test_vector_errors(tmp_path):
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(VectorError, match=r"broken GeoJSON at line 1, column"):
        read_vector(broken)
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(VectorError, match=r"no usable geometries"):
        read_vector(empty)
    with pytest.raises(VectorError, match=r"no such file"):
        read_vector(tmp_path / "nope.geojson")
    with pytest.raises(VectorError, match=r"gsd=0: expected a positive pixel size"):
        TargetGrid.from_bounds((0, 0, 10, 10), "EPSG:32631", 0)


def test_geopackage_through_pyogrio(tmp_path):
    pyogrio = pytest.importorskip("pyogrio")
    import shapely

    layer = read_vector(shared_file(OAKLAND_BUILDINGS))
    path = tmp_path / "b.gpkg"
    kinds = np.array([str(p.get("building")) for p in layer.properties], dtype=object)
    pyogrio.raw.write(
        path, shapely.to_wkb(layer.geometries), field_data=[kinds], fields=["building"], crs="EPSG:4326",
        geometry_type="Polygon", driver="GPKG",
    )  # fmt: skip
    back = read_vector(path)
    assert len(back) == len(layer) and back.crs == CRS.from_epsg(4326)
    assert back.geometries[0].equals_exact(layer.geometries[0], 1e-9)
