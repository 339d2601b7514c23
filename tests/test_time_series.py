"""Time series: exact labels between every pair of dates, events tagged with their date, the real image kept
where nothing changed, the stack GeoTIFF, the preview, the sequence exports and the pair views."""

import datetime as dt
import json
import tarfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import rasterio
from rasterio import features
from shapely.geometry import shape

from gen.cli import main
from gen.runner import run_job
from gen.spec import SpecError, build_spec
from gen.tasks import spec_from_mapping
from gen.tasks.time_series import TimeSeriesSpec, sequence_dates
from synth_datasets.change_views import iter_change_pairs
from synth_datasets.exporters import export
from synth_datasets.preview import sample_panels, write_preview
from synth_datasets.reader import load_dataset
from synth_datasets.sequence_writer import date_pairs, read_sequence
from tests.conftest import LEVIR_T1_NAMES, shared_file

NAMES = LEVIR_T1_NAMES


@pytest.fixture(scope="module")
def hybrid(ctrl, levir_t1, tmp_path_factory):
    """Two hybrid sequences of 4 dates on real LEVIR-CD images, no distractors."""
    model, pipe = ctrl
    out = tmp_path_factory.mktemp("ts") / "hybrid"
    events = {"add_building": 0.5, "remove_building": 0.3, "transition": 0.2}
    spec = build_spec(TimeSeriesSpec, {"model": str(model), "mode": "hybrid", "images": str(levir_t1 / "A"),
                                       "masks": str(levir_t1 / "label"), "num_dates": 4, "date": "2016-06-01",
                                       "interval_days": 200, "change_fraction": 0.04, "steps": 2, "num_samples": 2,
                                       "events": events, "writers": ["levir-mci"]})  # fmt: skip
    run_job(spec, out, pipe=pipe)
    return out


def _rasterised(events, shape_hw):
    mask = np.zeros(shape_hw, bool)
    for e in events:
        mask |= features.rasterize([(shape(e["geometry"]), 1)], out_shape=shape_hw).astype(bool)
    return mask


def test_labels_are_exact_between_every_pair_of_dates(hybrid, levir_t1):
    for index, name in enumerate(NAMES):
        seq = read_sequence(hybrid, f"{index:08d}")
        with rasterio.open(levir_t1 / "A" / name) as src:
            real = np.moveaxis(src.read(), 0, -1)
        assert seq["num_dates"] == 4 and np.array_equal(seq["images"][0], real)
        assert seq["dates"] == ["2016-06-01", "2016-12-18", "2017-07-06", "2018-01-22"]
        assert sorted(seq["changes"]) == sorted(date_pairs(4)) == [(0, 1), (0, 2), (0, 3), (1, 2), (2, 3)]
        events = seq["events"]
        assert events and {e["date"] for e in events} <= {1, 2, 3} and len({e["date"] for e in events}) >= 2
        hw = real.shape[:2]
        for (a, b), change in seq["changes"].items():
            between = [e for e in events if a < e["date"] <= b]
            assert np.array_equal(change, _rasterised(between, hw)), (a, b)  # the union of the events between
            if b == a + 1:  # one step: exactly the pixels whose class changed
                assert np.array_equal(change, seq["semantics"][a] != seq["semantics"][b]), (a, b)
        for t in range(1, 4):
            outside = ~seq["changes"][(0, t)]  # never changed up to date t: the real pixels, bit for bit
            assert np.array_equal(seq["images"][t][outside], real[outside])
            step = seq["changes"][(t - 1, t)]
            assert np.array_equal(seq["images"][t][~step], seq["images"][t - 1][~step])
        for pair in seq["pairs"]:  # captions and QA describe exactly the events between the pair's dates
            between = [e for e in events if pair["from"] < e["date"] <= pair["to"]]
            qa = {q["question"]: q["answer"] for q in pair["qa"]}
            built = {e["instance_id"] for e in between if e["type"] == "add_building"}
            assert qa["how many buildings were built?"] == str(len(built))
            assert qa["has anything changed?"] == ("yes" if between else "no")


def test_job_writers_export_the_consecutive_date_pairs(hybrid):
    entries = json.loads((hybrid / "export" / "levir-mci" / "LevirCCcaptions.json").read_text())["images"]
    ids = [e["rsgen_id"] for e in entries]  # LEVIR's masks hold only building and road changes: pairs with others
    assert ids and set(ids) <= {f"0000000{i}_00{t}_00{t + 1}" for i in (0, 1) for t in (0, 1, 2)}  # are left out
    for entry in entries:
        label = np.asarray(PIL.Image.open(hybrid / "export" / "levir-mci" / "images" / "train" / "label" /
                                          entry["filename"]))  # fmt: skip
        assert set(np.unique(label)) <= {0, 128, 255}


def test_events_chain_from_date_to_date(hybrid):
    """Each date is simulated from the previous one: an event's from-class is the class its pixels had at the
    date before it happened, its to-class the one they have at its date."""
    seq = read_sequence(hybrid, "00000000")
    from conditions.palettes import CANONICAL

    ids = {c.name: c.id for c in CANONICAL.classes}
    for e in seq["events"]:
        pixels = _rasterised([e], seq["semantics"][0].shape)
        before, after = seq["semantics"][e["date"] - 1][pixels], seq["semantics"][e["date"]][pixels]
        assert (before == ids[e["from"]]).all() and (after == ids[e["to"]]).all(), e["type"]


def test_full_mode_stack_preview_and_exports(ctrl, tmp_path, caplog):
    model, pipe = ctrl
    masks = tmp_path / "masks"
    masks.mkdir()
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        ids = src.read(1, window=rasterio.windows.Window(0, 0, 64, 64))
    with rasterio.open(masks / "m.png", "w", driver="PNG", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(ids[None])
    spec = build_spec(TimeSeriesSpec, {"model": str(model), "masks": str(masks), "palette": "loveda", "num_dates": 3,
                                       "stack": True, "steps": 1, "distractors": ["illumination"],
                                       "change_fraction": 0.1, "num_samples": 2})  # fmt: skip
    run_job(spec, tmp_path / "out", pipe=pipe)
    seq = read_sequence(tmp_path / "out", "00000001")
    assert seq["dates"] == [None, None, None]
    assert [len(d) for d in seq["distractors"]] == [0, 1, 1]  # never on date 0
    with rasterio.open(tmp_path / "out" / "00000001" / "stack.tif") as src:
        assert src.count == 9 and src.descriptions[:4] == ("date 0 unknown red", "date 0 unknown green",
                                                           "date 0 unknown blue", "date 1 unknown red")  # fmt: skip
        stack = np.moveaxis(src.read(), 0, -1)
    assert np.array_equal(stack, np.concatenate(seq["images"], axis=-1))

    ds = load_dataset(tmp_path / "out")
    assert len(ds) == 2 and all(s.is_sequence for s in ds)
    titles = [title for title, _ in sample_panels(ds[0])]
    assert titles == ["date 0", "date 1", "date 2", "change 0-2"]
    html, sheet = write_preview(ds, tmp_path / "preview.html")
    assert html.read_text().count("<figure>") == 8 and sheet.stat().st_size > 0

    pairs = list(iter_change_pairs(ds))  # consecutive date pairs only
    assert [p.id for p in pairs] == ["00000000_000_001", "00000000_001_002", "00000001_000_001", "00000001_001_002"]
    for view in pairs:
        assert np.array_equal(view.change_mask(), _rasterised(view.events, (64, 64)))
        a, b = view.layouts()
        assert np.array_equal(view.change_mask(), a != b)

    export(ds, "hf", tmp_path / "hf")
    import datasets

    rows = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf" / "data" / "*.parquet"))["train"]
    assert rows[1]["id"] == "00000001" and len(rows[1]["images"]) == 3 and len(rows[1]["changes"]) == 3
    assert np.array_equal(np.asarray(rows[1]["images"][2]), seq["images"][2])
    assert [(p["from"], p["to"]) for p in json.loads(rows[1]["pairs"])] == [(0, 1), (1, 2), (0, 2)]
    assert main(["export", str(tmp_path / "out"), "--format", "levir-cc", "--out", str(tmp_path / "cc")]) == 0
    entries = json.loads((tmp_path / "cc" / "LevirCCcaptions.json").read_text())["images"]
    assert [e["rsgen_id"] for e in entries] == [p.id for p in pairs]  # the consecutive date pairs, in order
    assert all(len(e["sentences"]) == 5 for e in entries)
    assert (
        main(["export", str(tmp_path / "out"), "--format", "rsvqa", "--split", "val", "--out", str(tmp_path / "q")])
        == 2
    )
    assert "--split 'val': only the formats levir-cc, levir-mci, second-cc have splits" in caplog.text
    export(ds, "webdataset", tmp_path / "wds")
    with tarfile.open(tmp_path / "wds" / "shard-00000.tar") as tar:
        names = tar.getnames()
    assert {"00000001.date002.png", "00000001.label000_002.png", "00000001.events.json",
            "00000001.stack.tif"} <= set(names)  # fmt: skip


def test_time_series_errors(caplog, tmp_path):
    with pytest.raises(SpecError, match=r"num_dates: expected an integer >= 2 and <= 100, got 1"):
        spec_from_mapping({"task": "time_series", "masks": str(tmp_path), "num_dates": 1})
    with pytest.raises(SpecError, match=r"interval_days: dates are counted from date; give date"):
        spec_from_mapping({"task": "time_series", "masks": str(tmp_path), "interval_days": 30})
    with pytest.raises(SpecError, match=r"^dataset_format: not used by task 'time_series'"):
        spec_from_mapping({"task": "time_series", "masks": str(tmp_path), "dataset_format": "second"})
    assert main(["time-series", "--masks", str(tmp_path), "--num-dates", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--num-dates: expected an integer >= 2 and <= 100, got 0" in caplog.text
    assert not (tmp_path / "o").exists()


def test_dates_step_by_the_interval():
    assert sequence_dates("2020-02-28", 3, 1) == [dt.date(2020, 2, 28), dt.date(2020, 2, 29), dt.date(2020, 3, 1)]
    assert sequence_dates(None, 2, 365) == [None, None]


def test_example_job_spec_plans(levir_t1, tmp_path, capsys):
    example = Path(__file__).resolve().parents[1] / "examples" / "jobs" / "time_series.yaml"
    argv = ["run", str(example), "--set", f"images={levir_t1 / 'A'}", "--set", f"masks={levir_t1 / 'label'}", "--out",
            str(tmp_path / "o"), "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    assert "time_series" in capsys.readouterr().out and not (tmp_path / "o").exists()
