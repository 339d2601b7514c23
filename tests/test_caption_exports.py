"""Caption exports (LEVIR-CC, LEVIR-MCI, SECOND-CC) of real change_pairs jobs, read back with readers that
follow the public loaders' logic: counts, file references and pixels, tokens, changeflag and MCI masks."""

import hashlib
import json
import os

import numpy as np
import PIL.Image
import pytest
from rasterio import features
from shapely.geometry import shape

from conditions.change_captions import change_captions
from core.errors import InputError
from gen.runner import run_job
from gen.spec import build_spec
from gen.tasks.change_pairs import ChangePairsSpec
from synth_datasets.caption_exports import (
    CAPTION_EXPORTERS,
    export_levir_cc,
    export_levir_mci,
    export_second_cc,
    raw_sentence,
    split_of,
)
from synth_datasets.change_views import iter_change_pairs, pair_rng
from synth_datasets.change_writer import read_change_pair
from synth_datasets.geotiff import read_raster
from synth_datasets.reader import DatasetError, load_dataset
from synth_datasets.sample_writer import write_png
from tests.conftest import shared_file

LEVIR = "change/levir_like"
NAMES = ("test_2_0000_0000.png", "test_7_0256_0512.png")


def imread(path):
    return np.asarray(PIL.Image.open(path))


def public_tokenize(s, delim=" "):
    """Change-Agent Multi_change/preprocess_data.py ``tokenize`` (punct_to_keep=[';', ','],
    punct_to_remove=['?', '.'], start and end tokens), re-written from its logic."""
    for p in (";", ","):
        s = s.replace(p, f"{delim}{p}")
    for p in ("?", "."):
        s = s.replace(p, "")
    tokens = [t for t in s.split(delim) if t != ""]
    return ["<START>", *tokens, "<END>"]


def read_levir_cc(root, max_len=50):
    """Chen-Yang-Liu/RSICC utils.py ``create_input_files`` (dataset='LEVIR_CC'): captions are the
    ``tokens`` of sentences of at most ``max_len`` tokens, images ``images/{split}/A|B/{filename}``
    (read, made 3-channel; the 256x256 resize is left out to compare pixels); ``changeflag`` as
    Chen-Yang-Liu/PromptCC create_input_files.py reads it."""
    data = json.loads((root / "LevirCCcaptions.json").read_text())
    out = []
    for img in data["images"]:
        captions = [c["tokens"] for c in img["sentences"] if len(c["tokens"]) <= max_len]
        if not captions:
            continue
        split = {"restval": "train"}.get(img["split"], img["split"])
        paths = [os.path.join(root / "images", img["split"], d, img["filename"]) for d in ("A", "B")]
        a, b = (imread(p) for p in paths)
        assert a.ndim == b.ndim == 3 and a.shape[2] == b.shape[2] == 3
        out.append({"split": split, "images": (a, b), "captions": captions, "img": img, "flag": img["changeflag"]})
    return out


def read_levir_mci(root):
    """Chen-Yang-Liu/Change-Agent Multi_change/preprocess_data.py (tokens of ``raw``, split from the file
    name's prefix) and Multi_change/data/LEVIR_MCI.py (A, then B and label by replacing 'A' in the path;
    label channel 0, 255 -> 2 building, 128 -> 1 road). The replace is applied below the data folder only,
    so a temporary path holding an 'A' cannot break the test."""
    data = json.loads((root / "LevirCCcaptions.json").read_text())
    out = []
    for img in data["images"]:
        tokens = [public_tokenize(c["raw"]) for c in img["sentences"]]
        split = img["filename"].split(".")[0].split("_")[0]
        tail = split + "/A/" + img["filename"]
        a, b = imread(root / "images" / tail), imread(root / "images" / tail.replace("A", "B"))
        seg = imread(root / "images" / tail.replace("A", "label")).transpose(2, 0, 1)[0].copy()
        seg[seg == 255] = 2
        seg[seg == 128] = 1
        out.append({"split": split, "images": (a, b), "seg": seg, "tokens": tokens, "img": img})
    return out


def read_second_cc(root, max_len=50):
    """ChangeCapsInRS/SecondCC createHD5files.py: ``SECOND-CC-AUG.json``, ``{split}/rgb/A|B`` and
    ``{split}/sem/A|B`` per ``filename``; white (255, 255, 255) in the semantic maps becomes black."""
    data = json.loads((root / "SECOND-CC-AUG.json").read_text())
    out = []
    for img in data["images"]:
        captions = [c["tokens"] for c in img["sentences"] if len(c["tokens"]) <= max_len]
        rgb = [imread(root / img["split"] / "rgb" / d / img["filename"]) for d in ("A", "B")]
        sem = [imread(root / img["split"] / "sem" / d / img["filename"]).copy() for d in ("A", "B")]
        for s in sem:
            s[np.all(s == [255, 255, 255], axis=-1)] = [0, 0, 0]
        out.append({"images": rgb, "sem": sem, "captions": captions, "img": img})
    return out


def run_pairs(pipe, out, **keys):
    run_job(build_spec(ChangePairsSpec, keys), out, pipe=pipe)
    return load_dataset(out)


@pytest.fixture(scope="module")
def levir_ds(ctrl, tmp_path_factory):
    """Hybrid pairs on 64x64 crops of two real LEVIR images: seed 6 gives a road transition, building
    changes and one no-change pair."""
    model, pipe = ctrl
    root = tmp_path_factory.mktemp("levir_cc")
    for folder in ("A", "label"):
        for name in NAMES:
            write_png(root / folder / name, read_raster(shared_file(f"{LEVIR}/{folder}/{name}"))[:64, :64])
    return run_pairs(pipe, root / "out", model=str(model), mode="hybrid", images=str(root / "A"),
                     masks=str(root / "label"), palette="levir", change_fraction=0.05, num_samples=3, steps=2,
                     gsd=0.5, seed=6, no_change_fraction=0.3, transitions={"background": "road"},
                     events={"add_building": 0.5, "remove_building": 0.2, "transition": 0.3})  # fmt: skip


@pytest.fixture(scope="module")
def second_ds(ctrl, tmp_path_factory):
    """Full-mode SECOND-format pairs on a LoveDA layout: one no-change pair, one with water -> bare."""
    model, pipe = ctrl
    root = tmp_path_factory.mktemp("second_cc")
    write_png(root / "layouts" / "m.png", read_raster(shared_file("seg/loveda/masks/1.png"))[:64, :64])
    return run_pairs(pipe, root / "out", model=str(model), mode="full", masks=str(root / "layouts"),
                     palette="loveda", change_fraction=0.1, num_samples=2, steps=2, gsd=0.3, seed=2,
                     no_change_fraction=0.5, events={"add_building": 0.3, "transition": 0.7},
                     transitions={"water": "bare", "agriculture": "building"}, dataset_format="second")  # fmt: skip


def views(ds):
    return {v.id: v for v in iter_change_pairs(ds)}


def check_sentences(img, view, style):
    """Five sentences, lower-case tokens == the public tokenisation of raw, raw from the pair's events."""
    sentences = img["sentences"]
    assert len(sentences) == 5 and img["sentids"] == [s["sentid"] for s in sentences]
    assert all(s["imgid"] == img["imgid"] for s in sentences)
    for s in sentences:
        assert s["tokens"] == public_tokenize(s["raw"])[1:-1] and s["tokens"]
        assert all(t == t.lower() for t in s["tokens"]) and s["raw"].endswith(" .")
    height, width = view.size
    rng = pair_rng(view.id)
    captions = change_captions(view.change_events(), width, height, rng, style=style,
                               distractors=bool(view.distractors), count=5)  # fmt: skip
    assert [s["raw"] for s in sentences] == [raw_sentence(c) for c in captions]
    assert img["changeflag"] == int(bool(view.events))


def test_levir_cc_round_trip(levir_ds, tmp_path):
    pairs = views(levir_ds)
    path = export_levir_cc(levir_ds, tmp_path / "cc")
    assert path == tmp_path / "cc" / "LevirCCcaptions.json"
    entries = read_levir_cc(tmp_path / "cc")
    assert len(entries) == len(pairs) == 3 and {e["split"] for e in entries} == {"train"}
    assert sorted(e["flag"] for e in entries) == [0, 1, 1]  # both kinds are present
    assert [e["img"]["filename"] for e in entries] == [f"train_{i:06d}.png" for i in range(3)]
    sentids = [s["sentid"] for e in entries for s in e["img"]["sentences"]]
    assert sentids == list(range(15)) and [e["img"]["imgid"] for e in entries] == [0, 1, 2]
    for entry in entries:
        view = pairs[entry["img"]["rsgen_id"]]
        assert all(np.array_equal(got, want) for got, want in zip(entry["images"], view.images()))
        assert len(entry["captions"]) == 5
        check_sentences(entry["img"], view, "levir-cc")
    assert not list((tmp_path / "cc").rglob(".rsgen-tmp-*"))


def expected_mci(events, shape_hw):
    """LEVIR-MCI classes from the events: 2 where an event involves buildings, else 1 where one involves roads."""
    seg = np.zeros(shape_hw, np.uint8)
    for value, cls in ((1, "road"), (2, "building")):
        geoms = [(shape(e["geometry"]), 1) for e in events if cls in (e["from"], e["to"])]
        if geoms:
            seg[features.rasterize(geoms, out_shape=shape_hw).astype(bool)] = value
    return seg


def test_levir_mci_masks_equal_the_events(levir_ds, tmp_path):
    pairs = views(levir_ds)
    export_levir_mci(levir_ds, tmp_path / "mci")
    entries = read_levir_mci(tmp_path / "mci")
    assert len(entries) == 3 and {e["split"] for e in entries} == {"train"}
    seen = set()
    for entry in entries:
        view = pairs[entry["img"]["rsgen_id"]]
        assert all(np.array_equal(got, want) for got, want in zip(entry["images"], view.images()))
        assert np.array_equal(entry["seg"], expected_mci(view.events, view.size))
        assert np.array_equal(entry["seg"] > 0, view.change_mask())
        assert [t[1:-1] for t in entry["tokens"]] == [s["tokens"] for s in entry["img"]["sentences"]]
        check_sentences(entry["img"], view, "levir-cc")
        seen |= set(np.unique(entry["seg"]).tolist())
    assert seen == {0, 1, 2}  # background, road and building changes all occur


def test_levir_mci_leaves_out_pairs_it_cannot_label(second_ds, tmp_path, caplog):
    pairs = views(second_ds)
    other = [v.id for v in pairs.values() if any("building" not in (e["from"], e["to"]) for e in v.events)]
    assert len(other) == 1  # the water -> bare pair
    export_levir_mci(second_ds, tmp_path / "mci")
    entries = read_levir_mci(tmp_path / "mci")
    assert [e["img"]["rsgen_id"] for e in entries] == [i for i in pairs if i not in other]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "left out" in r.getMessage()]
    assert len(warnings) == 1 and "left out 1 of 2 pairs" in warnings[0] and "transitions" in warnings[0]


def test_second_cc_round_trip(second_ds, tmp_path):
    pairs = views(second_ds)
    export_second_cc(second_ds, tmp_path / "scc")
    entries = read_second_cc(tmp_path / "scc")
    assert len(entries) == len(pairs) == 2
    for entry in entries:
        view = pairs[entry["img"]["rsgen_id"]]
        job = read_change_pair(second_ds.root, view.id)
        assert all(np.array_equal(got, want) for got, want in zip(entry["images"], view.images()))
        for date, folder in zip(("A", "B"), ("label1", "label2")):  # the SECOND colours the job wrote
            sem = imread(tmp_path / "scc" / "train" / "sem" / date / entry["img"]["filename"])
            assert np.array_equal(sem, read_raster(second_ds.root / folder / f"{view.id}.png"))
        change = job["change"]
        assert all((s[~change] == 0).all() and (s[change].max(axis=-1) > 0).all() for s in entry["sem"])
        assert len(entry["captions"]) == 5
        check_sentences(entry["img"], view, "second-cc")


def test_auto_split_and_exporter_table(levir_ds, tmp_path):
    assert CAPTION_EXPORTERS == {"levir-cc": export_levir_cc, "levir-mci": export_levir_mci,
                                 "second-cc": export_second_cc}  # fmt: skip
    export_levir_cc(levir_ds, tmp_path / "auto", split="auto")
    for entry in read_levir_cc(tmp_path / "auto"):
        assert entry["split"] == split_of(entry["img"]["rsgen_id"], "auto")
        assert entry["img"]["filename"].startswith(entry["split"] + "_")
    ids = [f"{i:08d}" for i in range(400)]
    counts = {s: sum(split_of(i, "auto") == s for i in ids) for s in ("train", "val", "test")}
    assert 250 < counts["train"] < 310 and 20 < counts["val"] < 65 and 55 < counts["test"] < 110
    assert split_of("x", "val") == "val"


def test_caption_export_errors(levir_ds, tmp_path):
    with pytest.raises(InputError, match=r"split='dev': expected one of \('train', 'val', 'test', 'auto'\)"):
        export_second_cc(levir_ds, tmp_path / "bad", split="dev")
    flat = tmp_path / "flat"
    write_png(flat / "x.png", np.zeros((8, 8, 3), np.uint8))
    digest = hashlib.sha256((flat / "x.png").read_bytes()).hexdigest()
    (flat / "x.json").write_text(json.dumps({"file": "x.png", "sha256": digest}))
    with pytest.raises(DatasetError, match=r"--format levir-mci: .*no change pairs.*export a change_pairs"):
        export_levir_mci(load_dataset(flat), tmp_path / "out")
    assert not (tmp_path / "out").exists()
