"""Change pairs from real inputs: vector layouts (OSM West Oakland, Alexandria footprints), WHU-CD tiles and
ISPRS Potsdam, in full and hybrid mode: labels exact, t1 kept outside the change, outputs on the input grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import CRS, Transformer
from rasterio import features
from rasterio.transform import from_origin
from shapely.geometry import shape

from conditions.palettes import CANONICAL, get_palette
from conditions.vectors import read_vector
from gen.cli import main
from gen.runner import run_job
from gen.spec import SpecError, build_spec
from gen.tasks import spec_from_mapping
from gen.tasks.change_pairs import ChangePairsSpec
from synth_datasets.change_writer import read_change_pair, to_second_ids
from tests.conftest import shared_file

OAKLAND = "vector/osm_west_oakland"
ALEXANDRIA = "vector/buildings_alexandria/buildings.geojson"


def run_pairs(pipe, out, **keys):
    """Build a change_pairs spec through the checked builder and run it with the loaded pipeline."""
    return run_job(build_spec(ChangePairsSpec, keys), out, pipe=pipe)


def _second_id(name: str) -> int:
    return int(to_second_ids(np.array([[CANONICAL.class_by_name(name).id]], np.uint8), np.ones((1, 1), bool))[0, 0])


def _event_pixels(event: dict, shape_hw: tuple[int, int]) -> np.ndarray:
    return features.rasterize([(shape(event["geometry"]), 1)], out_shape=shape_hw).astype(bool)


def check_pair(out: Path, name: str, t1: np.ndarray | None = None) -> dict:
    """The invariants of every pair: labels exactly the events, label1/label2 = the events' from/to classes,
    and (hybrid, ``t1`` given) every pixel outside the change mask bit-identical to t1."""
    pair = read_change_pair(out, name)
    change = pair["change"]
    assert change.any() and pair["events"]
    union = np.zeros(change.shape, bool)
    for event in pair["events"]:
        pixels = _event_pixels(event, change.shape)
        assert not (union & pixels).any()  # events never overlap
        union |= pixels
        if "label1" in pair:
            assert (pair["label1"][pixels] == _second_id(event["from"])).all()
            assert (pair["label2"][pixels] == _second_id(event["to"])).all()
    assert np.array_equal(union, change)  # the binary mask is exactly the union of the events
    if "label1" in pair:
        assert not pair["label1"][~change].any() and not pair["label2"][~change].any()
    if t1 is not None:
        assert np.array_equal(pair["A"], t1)
        assert np.array_equal(pair["B"][~change], t1[~change])  # bit-identical outside the change
        assert (pair["B"][change] != t1[change]).any()
    return pair


def _footprint_pixels(path: Path, feature_index: int, crs: CRS, transform, shape_hw: tuple[int, int]) -> np.ndarray:
    """Pixels of one source footprint, reprojected and burnt on the output grid independently of rsgen's layout."""
    layer = read_vector(path)
    geometry = layer.to_crs(crs).geometries[layer.feature_ids.index(feature_index)]
    return features.rasterize([(geometry, 1)], out_shape=shape_hw, transform=transform).astype(bool)


def test_full_pairs_from_osm_vectors_are_georeferenced_and_exact(ctrl, tmp_path):
    model, pipe = ctrl
    lat, lon, gsd, size = 37.8076, -122.3004, 2.0, 128
    buildings, roads = shared_file(f"{OAKLAND}/buildings.geojson"), shared_file(f"{OAKLAND}/roads.geojson")
    layers = [f"buildings:{buildings}", f"roads:{roads}"]
    run_pairs(pipe, tmp_path / "out", model=str(model), vectors=layers, gsd=gsd, size=size, steps=1, lat=lat, lon=lon,
              change_fraction=0.06, events={"remove_building": 0.5, "add_building": 0.5}, num_samples=2)  # fmt: skip
    crs = CRS.from_epsg(32610)  # UTM 10N, the zone of West Oakland
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    transform = from_origin(x - size * gsd / 2, y + size * gsd / 2, gsd, gsd)
    for folder in ("A", "B", "label"):
        with rasterio.open(tmp_path / "out" / folder / "00000001.tif") as src:
            assert src.crs == crs and src.transform.almost_equals(transform) and src.shape == (size, size)
    removed = 0
    for name in ("00000000", "00000001"):
        pair = check_pair(tmp_path / "out", name)
        assert pair["A"].shape == (size, size, 3) and pair["crs"] == "EPSG:32610"
        objects = {o["instance_id"]: o for o in pair["provenance"]["objects_t1"]}
        assert len(objects) > 10 and all("osm_id" in o["properties"] for o in objects.values())
        for event in pair["events"]:
            if event["type"] != "remove_building":
                continue
            removed += 1
            source = objects[event["instance_id"]]  # a removed building is one real OSM footprint
            osm = _footprint_pixels(Path(source["source"]), source["feature_index"], crs, transform, (size, size))
            pixels = _event_pixels(event, (size, size))
            assert (pixels <= osm).all() and pixels.sum() == source["pixels"]  # all of its pixels, nothing else
    assert removed >= 1
    adds = [e for e in pair["events"] if e["type"] == "add_building"]
    assert adds and {e["aligned_with"] for e in adds} <= {"road", "building"}
    assert pair["provenance"]["grid"]["crs"] == "EPSG:32610" and pair["provenance"]["layers"][0]["kind"] == "buildings"


def test_hybrid_pairs_from_footprints_on_a_georeferenced_image(ctrl, alexandria_image, tmp_path):
    model, pipe = ctrl
    buildings = shared_file(ALEXANDRIA)
    run_pairs(pipe, tmp_path / "out", model=str(model), mode="hybrid", images=str(alexandria_image),
              vectors=[f"buildings:{buildings}"], change_fraction=0.04,
              events={"remove_building": 0.4, "add_building": 0.6}, steps=1, dataset_format="second")  # fmt: skip
    with rasterio.open(alexandria_image) as src:
        crs, transform, t1 = src.crs, src.transform, np.moveaxis(src.read(), 0, -1)
    for folder in ("im1", "im2", "label1", "label2"):
        with rasterio.open(tmp_path / "out" / folder / "00000000.tif") as src:
            assert src.crs == crs and src.transform == transform and src.shape == t1.shape[:2]
    pair = check_pair(tmp_path / "out", "00000000", t1)
    assert pair["provenance"]["gsd"] == 2.0 and pair["provenance"]["image"] == str(alexandria_image)
    objects = {o["instance_id"]: o for o in pair["provenance"]["objects_t1"]}
    removals = [e for e in pair["events"] if e["type"] == "remove_building"]
    assert removals
    for event in removals:
        source = objects[event["instance_id"]]
        footprint = _footprint_pixels(buildings, source["feature_index"], crs, transform, t1.shape[:2])
        assert (_event_pixels(event, t1.shape[:2]) <= footprint).all()


def test_vector_inputs_through_the_cli_and_job_spec(ctrl, alexandria_image, tmp_path, caplog):
    from core.config_file import load_yaml_mapping

    model, pipe = ctrl
    buildings, roads = shared_file(f"{OAKLAND}/buildings.geojson"), shared_file(f"{OAKLAND}/roads.geojson")
    base = ["change-pairs", "--model", str(model), "--steps", "1", "--change-fraction", "0.05"]
    vectors = ["--vectors", f"buildings:{buildings}", "--vectors", f"roads:{roads}"]
    assert main([*base, *vectors, "--gsd", "4", "--size", "64", "--out", str(tmp_path / "cli")]) == 0
    with rasterio.open(tmp_path / "cli" / "label" / "00000000.tif") as src:
        assert src.crs.to_epsg() == 32610 and src.transform.a == 4.0
    check_pair(tmp_path / "cli", "00000000")

    def out(name):  # one folder per failing command
        return ["--out", str(tmp_path / "bad" / name)]

    assert main([*base, *vectors, "--masks", str(tmp_path), *out("both")]) == 2
    assert "--vectors: vectors and masks both define layout t1; give one of them" in caplog.text
    assert main([*base, "--vectors", f"houses:{buildings}", *out("kind")]) == 2
    assert "--vectors: 'houses:" in caplog.text and "unknown layer kind 'houses'" in caplog.text
    png = tmp_path / "plain.png"
    with rasterio.open(png, "w", driver="PNG", width=16, height=16, count=3, dtype="uint8") as dst:
        dst.write(np.zeros((3, 16, 16), np.uint8))
    assert main([*base, "--mode", "hybrid", "--images", str(png), *vectors, *out("plain")]) == 2
    assert "--images: " in caplog.text
    assert "not georeferenced; vectors are rasterised on the image's grid" in caplog.text
    assert main([*base, "--mode", "hybrid", "--images", str(alexandria_image), *vectors, *out("elsewhere")]) == 2
    assert "--vectors: no feature intersects images" in caplog.text  # Oakland layers on an Alexandria image
    spec = {"task": "change_pairs", "model": str(model), "num_samples": 1, "steps": 1, "mode": "full",
            "vectors": [f"buildings:{buildings}", f"roads:{roads}"], "gsd": 4.0, "size": 64,
            "change_fraction": 0.05, "dataset_format": "second"}  # fmt: skip
    run_job(spec_from_mapping(spec), tmp_path / "job", pipe=pipe)
    entry = json.loads((tmp_path / "job" / "manifest.jsonl").read_text().splitlines()[0])
    assert entry["files"]["im1"].endswith(".tif")
    check_pair(tmp_path / "job", "00000000")
    example = Path(__file__).resolve().parents[1] / "examples" / "jobs" / "change_pairs_vectors.yaml"
    assert spec_from_mapping(load_yaml_mapping(example, "job spec")).vectors[0].startswith("buildings:")
    with pytest.raises(SpecError, match=r"^vectors: vectors and masks both define layout t1; give one of them"):
        spec_from_mapping({**spec, "masks": str(tmp_path)})
    with pytest.raises(SpecError, match=r"^size: expected an integer >= 8, got 4"):
        spec_from_mapping({**spec, "size": 4})


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    bands = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    with rasterio.open(path, "w", driver="PNG", width=bands.shape[2], height=bands.shape[1], count=bands.shape[0],
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(bands)


def _crop(relative: str, rows: slice, cols: slice) -> np.ndarray:
    with rasterio.open(shared_file(relative)) as src:
        data = src.read(window=((rows.start, rows.stop), (cols.start, cols.stop)))
    return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)


# WHU-CD ships only change labels (building change 2012 -> 2016); in these crops the labelled pixels are
# buildings of the chosen date: 000121 A holds a building demolished later, 000213 B new buildings.
WHU_CROPS = [("000121", "A", slice(512, 768), slice(128, 384)), ("000213", "B", slice(0, 256), slice(256, 512))]


@pytest.mark.parametrize(("tile", "date", "rows", "cols"), WHU_CROPS)
def test_hybrid_pairs_on_real_whu_cd_tiles(ctrl, tmp_path, tile, date, rows, cols):
    model, pipe = ctrl
    image = _crop(f"change/whu_cd/{date}/{tile}.png", rows, cols)
    label = _crop(f"change/whu_cd/label/{tile}.png", rows, cols)
    assert image.shape == (256, 256, 3) and set(np.unique(label)) == {0, 255}
    _write_png(tmp_path / "A" / f"{tile}.png", image)
    _write_png(tmp_path / "label" / f"{tile}.png", label)
    events = {"add_building": 0.5, "remove_building": 0.2, "expand_building": 0.15, "shrink_building": 0.15}
    run_pairs(pipe, tmp_path / "out", model=str(model), mode="hybrid", images=str(tmp_path / "A"),
              masks=str(tmp_path / "label"), palette="levir", gsd=0.3, change_fraction=0.08, events=events, steps=1,
              dataset_format="second")  # fmt: skip
    pair = check_pair(tmp_path / "out", "00000000", image)
    building = CANONICAL.class_by_name("building").id
    t1_buildings = (label == 255).sum()
    t2_buildings = t1_buildings + sum(
        (1 if e["to"] == "building" else -1 if e["from"] == "building" else 0) * _event_pixels(e, label.shape).sum()
        for e in pair["events"]
    )
    assert pair["change"].mean() >= 0.08 and t2_buildings != t1_buildings
    assert (get_palette("levir").to_canonical(label) == building).sum() == t1_buildings


def test_hybrid_pairs_on_real_potsdam(ctrl, tmp_path):
    """ISPRS Potsdam (mmseg ids: 0 boundary/ignore, 1 impervious, 2 building, 3 low vegetation, 4 tree, 5 car,
    6 clutter) at 5 cm: events stay off the boundary lines, new footprints are scaled to fit the 256² crop."""
    model, pipe = ctrl
    rows, cols = slice(256, 512), slice(256, 512)
    image = _crop("seg/potsdam/images/2_10_0_0_512_512.png", rows, cols)
    mask = _crop("seg/potsdam/masks/2_10_0_0_512_512.png", rows, cols)
    canonical = get_palette("potsdam").to_canonical(mask)
    expected = {0: 255, 1: "impervious", 2: "building", 3: "low_vegetation", 4: "tree", 5: "vehicle"}
    for raw, name in expected.items():
        target = name if isinstance(name, int) else CANONICAL.class_by_name(name).id
        assert (canonical[mask == raw] == target).all()
    _write_png(tmp_path / "images" / "p.png", image)
    _write_png(tmp_path / "masks" / "p.png", mask)
    run_pairs(pipe, tmp_path / "out", model=str(model), mode="hybrid", images=str(tmp_path / "images"),
              masks=str(tmp_path / "masks"), palette="potsdam", gsd=0.05, change_fraction=0.06,
              events={"add_building": 0.9, "transition": 0.1}, steps=1, dataset_format="second",
              num_samples=2)  # fmt: skip
    added = []
    for name in ("00000000", "00000001"):
        pair = check_pair(tmp_path / "out", name, image)
        assert not (pair["change"] & (mask == 0)).any()  # boundary (ignore) pixels never change
        added += [e for e in pair["events"] if e["type"] == "add_building"]
    assert added  # new footprints are scaled to fit a 12.8 m crop at 5 cm: at most 0.4 of its side
    assert all(e["area_m2"] <= 1.05 * (0.4 * 256 * 0.05) ** 2 for e in added)
