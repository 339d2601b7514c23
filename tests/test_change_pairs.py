"""Change pairs: hybrid pairs keep t1 outside the change, labels/captions follow the events, exports read back."""

import shutil

import numpy as np
import pytest
import rasterio

from conditions.change_events import ChangeConfig, ChangeError, rasterize_events
from conditions.distractors import apply_distractors
from gen.change_job import ChangePairJob, run_change_pairs
from gen.cli import main
from synth_datasets.change_writer import read_change_pair
from tests.conftest import shared_file

LEVIR = "change/levir_like"


@pytest.fixture(scope="module")
def levir_pairs(tmp_path_factory):
    """Two real LEVIR t1 images with their (building) masks, in separate folders."""
    root = tmp_path_factory.mktemp("levir")
    for folder in ("A", "label"):
        (root / folder).mkdir()
        for name in ("test_2_0000_0000.png", "test_7_0256_0512.png"):
            shutil.copy(shared_file(f"{LEVIR}/{folder}/{name}"), root / folder / name)
    return root


def test_hybrid_pairs_keep_t1_outside_the_change(ctrl, levir_pairs, tmp_path):
    model, pipe = ctrl
    job = ChangePairJob(model=str(model), out=tmp_path / "out", mode="hybrid", images=levir_pairs / "A",
                        masks=levir_pairs / "label", palette="levir", change=ChangeConfig(change_fraction=0.05),
                        num_samples=2, steps=2, gsd=0.5)  # fmt: skip
    run_change_pairs(job, pipe)
    for index, name in enumerate(["test_2_0000_0000.png", "test_7_0256_0512.png"]):
        pair = read_change_pair(tmp_path / "out", f"{index:06d}")
        with rasterio.open(levir_pairs / "A" / name) as src:
            t1 = np.moveaxis(src.read(), 0, -1)
        assert np.array_equal(pair["A"], t1)
        outside = ~pair["change"]
        assert np.array_equal(pair["B"][outside], t1[outside])  # bit-identical outside the change mask
        assert pair["change"].mean() >= 0.05 and (pair["B"][pair["change"]] != t1[pair["change"]]).any()
        from shapely.geometry import shape

        events = pair["events"]
        geometry_mask = np.zeros(outside.shape, bool)
        for e in events:
            from rasterio import features

            geometry_mask |= features.rasterize([(shape(e["geometry"]), 1)], out_shape=outside.shape).astype(bool)
        assert np.array_equal(geometry_mask, pair["change"])  # labels exactly the event geometry
        built = len({e["instance_id"] for e in events if e["type"] == "add_building"})
        qa = {q["question"]: q["answer"] for q in pair["qa"]}
        assert qa["how many buildings were built?"] == str(built)


def test_full_pairs_second_layout_and_captions(ctrl, tmp_path):
    model, pipe = ctrl
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        crop = src.read(1, window=((0, 128), (0, 128)))
    layouts = tmp_path / "layouts"
    layouts.mkdir()
    with rasterio.open(layouts / "m.png", "w", driver="PNG", width=128, height=128, count=1, dtype="uint8") as dst:
        dst.write(crop[None])
    config = ChangeConfig(change_fraction=0.1, events={"add_building": 0.5, "transition": 0.5},
                          transitions={"agriculture": "building", "low_vegetation": "bare"})  # fmt: skip
    job = ChangePairJob(model=str(model), out=tmp_path / "second", mode="full", layouts=layouts, palette="loveda",
                        change=config, gsd=0.3, steps=2, layout="second")  # fmt: skip
    run_change_pairs(job, pipe)
    pair = read_change_pair(tmp_path / "second", "000000")
    assert pair["A"].shape == pair["B"].shape == (128, 128, 3)
    assert (pair["label1"][~pair["change"]] == 0).all() and (pair["label2"][pair["change"]] > 0).all()
    n_events = len(pair["events"])
    assert n_events > 0 and len(pair["captions"]) == 3
    built = len({e["instance_id"] for e in pair["events"] if e["type"] == "add_building"})
    transitions = sum(e["type"] == "transition" for e in pair["events"])
    from conditions.change_captions import number_word

    assert built + transitions > 0
    if built:  # every phrasing states the exact count of new buildings
        noun = "building was" if built == 1 else "buildings were"
        assert all(f"{number_word(built)} {noun} built" in c for c in pair["captions"])


def test_distractor_only_pairs_have_an_empty_change_mask(ctrl, levir_pairs, tmp_path):
    model, pipe = ctrl
    job = ChangePairJob(model=str(model), out=tmp_path / "d", mode="hybrid", images=levir_pairs / "A",
                        masks=levir_pairs / "label", no_change_fraction=1.0,
                        distractors=["illumination", "misregistration"], steps=1)  # fmt: skip
    run_change_pairs(job, pipe)
    pair = read_change_pair(tmp_path / "d", "000000")
    assert not pair["change"].any() and pair["events"] == []
    assert not np.array_equal(pair["A"], pair["B"])  # the distractors did change pixels
    assert [d["name"] for d in pair["distractors"]] == ["illumination", "misregistration"]
    assert pair["captions"][0] and {q["answer"] for q in pair["qa"] if q["type"] == "presence"} == {"no"}


def test_distractors_are_seeded():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a = apply_distractors(image, ["haze", "blur", "seasonal"], np.random.default_rng(3))
    b = apply_distractors(image, ["haze", "blur", "seasonal"], np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ChangeError, match=r"--distractors: unknown \['rain'\]"):
        apply_distractors(image, ["rain"], np.random.default_rng(0))


def test_change_pair_errors(ctrl, levir_pairs, tmp_path, caplog):
    model, _ = ctrl
    small = tmp_path / "small"
    small.mkdir()
    with rasterio.open(small / "test_2_0000_0000.png", "w", driver="PNG", width=32, height=32, count=1,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(np.zeros((1, 32, 32), np.uint8))
    base = ["change-pairs", "--model", str(model), "--out", str(tmp_path / "o"), "--steps", "1"]
    assert main([*base, "--mode", "hybrid", "--images", str(levir_pairs / "A"), "--masks", str(small)]) == 2
    assert "does not match its mask 32x32" in caplog.text
    assert main([*base, "--layouts", str(levir_pairs / "label"), "--palette", "loveda"]) == 2
    assert "unknown class id(s) [255] for the 'loveda' scheme" in caplog.text
    assert main([*base, "--layouts", str(levir_pairs / "label"), "--change-fraction", "1.5"]) == 2
    assert "change_fraction=1.5: expected a fraction in (0, 1]" in caplog.text
    empty = tmp_path / "empty"
    empty.mkdir()
    with rasterio.open(empty / "e.png", "w", driver="PNG", width=32, height=32, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 32, 32), np.uint8))
    assert main([*base, "--layouts", str(empty), "--palette", "loveda"]) == 2
    assert "every pixel is no-data/ignore" in caplog.text
    assert not rasterize_events([], (4, 4)).any()


def test_georeferenced_inputs_give_geotiff_pairs(ctrl, tmp_path):
    from rasterio.windows import Window

    from tests.test_sr import crop

    model, pipe = ctrl
    (tmp_path / "A").mkdir()
    (tmp_path / "M").mkdir()
    image = crop(shared_file("geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif"), tmp_path / "A" / "t.tif",
                 Window(300, 300, 64, 64), nodata=None)  # fmt: skip
    with rasterio.open(image) as src:
        profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "crs": src.crs,
                   "transform": src.transform}  # fmt: skip
        crs, transform = src.crs, src.transform
    buildings = np.zeros((1, 64, 64), np.uint8)
    buildings[0, 8:20, 8:24] = 255
    buildings[0, 40:56, 30:44] = 255
    with rasterio.open(tmp_path / "M" / "t.tif", "w", **profile) as dst:
        dst.write(buildings)
    job = ChangePairJob(model=str(model), out=tmp_path / "out", mode="hybrid", images=tmp_path / "A",
                        masks=tmp_path / "M", change=ChangeConfig(change_fraction=0.05), steps=1, gsd=5.0)  # fmt: skip
    run_change_pairs(job, pipe)
    for folder in ("A", "B", "label"):
        with rasterio.open(tmp_path / "out" / folder / "000000.tif") as src:
            assert src.crs == crs and src.transform == transform
    pair = read_change_pair(tmp_path / "out", "000000")
    assert pair["crs"] == crs.to_string() and np.array_equal(pair["A"][~pair["change"]], pair["B"][~pair["change"]])
