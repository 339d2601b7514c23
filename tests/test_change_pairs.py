"""Change pairs: hybrid pairs keep t1 outside the change, labels/captions follow the events, exports read back."""

import re

import numpy as np
import pytest
import rasterio

from conditions.change_events import ChangeError, rasterize_events
from conditions.distractors import apply_distractors
from gen.cli import main
from gen.runner import run_job
from gen.spec import build_spec
from gen.tasks.change_pairs import ChangePairsSpec
from synth_datasets.change_writer import read_change_pair
from tests.conftest import shared_file


def run_pairs(pipe, out, **keys):
    """Build a change_pairs spec through the checked builder and run it with the loaded pipeline."""
    return run_job(build_spec(ChangePairsSpec, keys), out, pipe=pipe)


def test_hybrid_pairs_keep_t1_outside_the_change(ctrl, levir_t1, tmp_path):
    model, pipe = ctrl
    run_pairs(pipe, tmp_path / "out", model=str(model), mode="hybrid", images=str(levir_t1 / "A"),
              masks=str(levir_t1 / "label"), palette="levir", change_fraction=0.05, num_samples=2, steps=2,
              gsd=0.5)  # fmt: skip
    for index, name in enumerate(["test_2_0000_0000.png", "test_7_0256_0512.png"]):
        pair = read_change_pair(tmp_path / "out", f"{index:08d}")
        with rasterio.open(levir_t1 / "A" / name) as src:
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
    table = {"agriculture": "building", "low_vegetation": "bare"}
    run_pairs(pipe, tmp_path / "second", model=str(model), mode="full", masks=str(layouts), palette="loveda",
              change_fraction=0.1, events={"add_building": 0.5, "transition": 0.5}, transitions=table, gsd=0.3,
              steps=2, dataset_format="second")  # fmt: skip
    pair = read_change_pair(tmp_path / "second", "00000000")
    assert pair["dataset_format"] == "second"
    assert pair["A"].shape == pair["B"].shape == (128, 128, 3)
    assert (pair["label1"][~pair["change"]] == 0).all() and (pair["label2"][pair["change"]] > 0).all()
    n_events = len(pair["events"])
    assert n_events > 0 and len(pair["captions"]) == 5
    built = len({e["instance_id"] for e in pair["events"] if e["type"] == "add_building"})
    transitions = [e for e in pair["events"] if e["type"] == "transition"]
    assert all(table.get(e["from"]) == e["to"] for e in transitions)
    from conditions.change_captions import number_word

    assert built + len(transitions) > 0
    if built:  # every phrasing states the exact count of new buildings (at most 3 groups: all described)
        count = "(a|one)" if built == 1 else number_word(built)
        for caption in pair["captions"]:
            sentences = caption.split(". ")
            stated = [t for t in sentences if re.search(rf"\b{count} (new )?(building|house)s?\b", t)]
            assert any(re.search(r"built|constructed|new", t) for t in stated), caption


def test_distractor_only_pairs_have_an_empty_change_mask(ctrl, levir_t1, tmp_path):
    model, pipe = ctrl
    run_pairs(pipe, tmp_path / "d", model=str(model), mode="hybrid", images=str(levir_t1 / "A"),
              masks=str(levir_t1 / "label"), no_change_fraction=1.0,
              distractors=["illumination", "misregistration"], steps=1)  # fmt: skip
    pair = read_change_pair(tmp_path / "d", "00000000")
    assert not pair["change"].any() and pair["events"] == []
    assert not np.array_equal(pair["A"], pair["B"])  # the distractors did change pixels
    assert [d["name"] for d in pair["distractors"]] == ["illumination", "misregistration"]
    assert pair["captions"][0] and {q["answer"] for q in pair["qa"] if q["type"] == "presence"} == {"no"}


def test_distractors_are_seeded():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a = apply_distractors(image, ["haze", "blur", "seasonal"], np.random.default_rng(3))
    b = apply_distractors(image, ["haze", "blur", "seasonal"], np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    with pytest.raises(ChangeError, match=r"distractors: unknown \['rain'\]"):
        apply_distractors(image, ["rain"], np.random.default_rng(0))


def test_change_pair_errors(ctrl, levir_t1, tmp_path, caplog):
    model, _ = ctrl
    small = tmp_path / "small"
    small.mkdir()
    with rasterio.open(small / "test_2_0000_0000.png", "w", driver="PNG", width=32, height=32, count=1,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(np.zeros((1, 32, 32), np.uint8))
    base = ["change-pairs", "--model", str(model), "--steps", "1"]

    def out(name):  # one folder per failing command: a job that failed on its inputs keeps its folder's lock
        return ["--out", str(tmp_path / "out" / name)]

    hybrid = ["--mode", "hybrid", "--images", str(levir_t1 / "A")]
    assert main([*base, *hybrid, "--masks", str(small), *out("size")]) == 2
    assert "does not match its mask 32x32" in caplog.text
    assert main([*base, "--masks", str(levir_t1 / "label"), "--palette", "loveda", *out("palette")]) == 2
    assert "unknown class id(s) [255] for the 'loveda' scheme" in caplog.text
    assert main([*base, "--masks", str(levir_t1 / "label"), "--change-fraction", "1.5", *out("fraction")]) == 2
    assert "--change-fraction: expected a number in (0, 1], got 1.5" in caplog.text
    assert not (tmp_path / "out" / "fraction").exists()  # spec errors are raised before the folder is claimed
    empty = tmp_path / "empty"
    empty.mkdir()
    with rasterio.open(empty / "e.png", "w", driver="PNG", width=32, height=32, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 32, 32), np.uint8))
    assert main([*base, "--masks", str(empty), "--palette", "loveda", *out("empty")]) == 2
    assert "every pixel is no-data/ignore" in caplog.text
    assert not rasterize_events([], (4, 4)).any()


def _crop_geotiff(src_path, out, window):
    """A crop of a real GeoTIFF keeping its CRS and the window's transform (no nodata)."""
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        profile = {**src.profile, "width": data.shape[2], "height": data.shape[1],
                   "transform": src.window_transform(window), "blockxsize": None, "blockysize": None,
                   "tiled": False, "nodata": None}  # fmt: skip
    with rasterio.open(out, "w", **{k: v for k, v in profile.items() if v is not None}) as dst:
        dst.write(data)
    return out


def test_georeferenced_inputs_give_geotiff_pairs(ctrl, tmp_path):
    from rasterio.windows import Window

    model, pipe = ctrl
    (tmp_path / "A").mkdir()
    (tmp_path / "M").mkdir()
    image = _crop_geotiff(shared_file("geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif"),
                          tmp_path / "A" / "t.tif", Window(300, 300, 64, 64))  # fmt: skip
    with rasterio.open(image) as src:
        profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "crs": src.crs,
                   "transform": src.transform}  # fmt: skip
        crs, transform = src.crs, src.transform
    buildings = np.zeros((1, 64, 64), np.uint8)
    buildings[0, 8:20, 8:24] = 255
    buildings[0, 40:56, 30:44] = 255
    with rasterio.open(tmp_path / "M" / "t.tif", "w", **profile) as dst:
        dst.write(buildings)
    run_pairs(pipe, tmp_path / "out", model=str(model), mode="hybrid", images=str(tmp_path / "A"),
              masks=str(tmp_path / "M"), change_fraction=0.05, steps=1, gsd=5.0)  # fmt: skip
    for folder in ("A", "B", "label"):
        with rasterio.open(tmp_path / "out" / folder / "00000000.tif") as src:
            assert src.crs == crs and src.transform == transform
    pair = read_change_pair(tmp_path / "out", "00000000")
    assert pair["crs"] == crs.to_string() and np.array_equal(pair["A"][~pair["change"]], pair["B"][~pair["change"]])
