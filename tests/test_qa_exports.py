"""QA exports: ChangeChat-105k and RSVQA files read back with readers that follow the public loaders, and
every answer checked against values recomputed here from the events and the t2 layout."""

import ast
import json
import os
import re
import shutil

import numpy as np
import PIL.Image
import pytest
from rasterio import features
from shapely.geometry import shape

from conditions.change_captions import change_captions
from conditions.palettes import CANONICAL
from gen.runner import run_job
from gen.spec import build_spec
from gen.tasks.change_pairs import ChangePairsSpec
from synth_datasets.change_views import iter_change_pairs, pair_rng
from synth_datasets.qa_exports import QA_EXPORTERS, RSVQA_NOUNS
from synth_datasets.reader import DatasetError, load_dataset
from tests.conftest import shared_file

NAMES = ("test_2_0000_0000.png", "test_7_0256_0512.png")
GSD = 0.5


@pytest.fixture(scope="module")
def dataset(ctrl, tmp_path_factory):
    """A real change_pairs job (hybrid, two 128² LEVIR crops): pairs 0 and 2 change, pair 1 does not."""
    model, pipe = ctrl
    root = tmp_path_factory.mktemp("qa")
    for folder in ("A", "label"):
        (root / folder).mkdir()
        for name in NAMES:
            array = np.array(PIL.Image.open(shared_file(f"change/levir_like/{folder}/{name}")))
            PIL.Image.fromarray(array[:128, 128:256]).save(root / folder / name)
    keys = dict(model=str(model), mode="hybrid", images=str(root / "A"), masks=str(root / "label"), palette="levir",
                change_fraction=0.05, num_samples=3, steps=2, gsd=GSD, no_change_fraction=0.45,
                events={"add_building": 0.5, "remove_building": 0.2, "transition": 0.3},
                transitions={"background": "road"})  # fmt: skip
    run_job(build_spec(ChangePairsSpec, keys), root / "out", pipe=pipe)
    ds = load_dataset(root / "out")
    views = {v.id: v for v in iter_change_pairs(ds)}
    assert [bool(v.events) for v in views.values()] == [True, False, True]  # one pair without change
    return ds, views


def expected_counts(events):
    """Recomputed here: added buildings by distinct instance id (+ transitions to building), new roads."""
    ids = {e["instance_id"] for e in events if e["type"] == "add_building"}
    to = [e["to"] for e in events if e["type"] == "transition"]
    removed = {e["instance_id"] for e in events if e["type"] == "remove_building"}
    return {"road": to.count("road"), "building": len(ids) + to.count("building"), "demolished": len(removed)}


def expected_cells(events, width, height, kind):
    names = ["top-left", "top-center", "top-right", "center-left", "center-center", "center-right", "bottom-left",
             "bottom-center", "bottom-right"]  # fmt: skip
    cells = set()
    for e in events:
        if kind in (e["from"], e["to"]):
            x, y = e["centroid"]
            cells.add(names[3 * min(int(y * 3 // height), 2) + min(int(x * 3 // width), 2)])
    return [n for n in names if n in cells]


# ---------------------------------------------------------------------- ChangeChat
def read_changechat(ann_path, vis_root):
    """Follows hanlinwu/DeltaVLM deltavlm/datasets/change_caption.py (ChangeCaptionDataset): one JSON list;
    turns (i, i+1) become q/a with the earlier turns as 'q: .. a: ..' context; images are
    os.path.join(vis_root, image[0|1]) opened as RGB; '<image>' is stripped from the question."""
    samples = []
    for item in json.loads(ann_path.read_text()):
        turns = item["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        pairs = [(turns[i]["value"], turns[i + 1]["value"]) for i in range(0, len(turns), 2)]
        for k, (question, answer) in enumerate(pairs):
            context = " ".join(f"q: {q} a: {a}" for q, a in pairs[:k]).strip()
            images = [np.array(PIL.Image.open(os.path.join(vis_root, p)).convert("RGB")) for p in item["image"]]
            text = f"{context} q: {question}" if context else f"q: {question}"
            samples.append({"id": item["id"], "images": images, "question": text.replace("<image>", "").strip(),
                            "raw_question": question, "answer": answer, "turn": k})  # fmt: skip
    return samples


def parse_count(answer):
    """scripts/test-count.ipynb's parser: split at 'new'; 'no' in a part means 0, else its first integer."""
    if "there are no changes in roads or buildings" in answer or "no new roads or buildings" in answer:
        return {"road": 0, "building": 0}
    parts = answer.split("new")
    return {
        k: 0 if "no" in p else int(re.findall(r"\d+", p)[0]) for k, p in (("road", parts[0]), ("building", parts[1]))
    }


def parse_loc(answer):
    """scripts/test-loc.ipynb's parser: the lists after 'roads' and 'buildings'."""
    return {k: ast.literal_eval(re.findall(rf"{k}s\s*(\[[^\]]*\])", answer)[0]) for k in ("road", "building")}


def test_changechat_reads_back(dataset, tmp_path):
    ds, views = dataset
    out = QA_EXPORTERS["changechat"](ds, tmp_path / "cc")
    ann = out / "annotations"
    everything = json.loads((ann / "train.json").read_text())
    kinds = ("caption", "binary", "count", "loc", "dialog")
    per_type = {k: json.loads((ann / f"changechat_rsgen_{k}.json").read_text()) for k in kinds}
    assert everything == [r for k in kinds for r in per_type[k]] and all(per_type.values())
    assert len({r["id"] for r in everything}) == len(everything)
    for record in everything:  # two <image> tokens, both at the start of the first human turn
        values = [t["value"] for t in record["conversations"]]
        assert values[0].startswith("<image> <image> ") and sum(v.count("<image>") for v in values) == 2
    samples = read_changechat(ann / "train.json", out / "images")
    assert len(samples) == sum(len(r["conversations"]) // 2 for r in everything)
    for s in samples:
        view = views[s["id"].split("_")[1]]
        assert all(np.array_equal(a, b) for a, b in zip(s["images"], view.images()))
        assert "<image>" not in s["question"]
        height, width = view.size
        counts = expected_counts(view.events)
        if "yes or no" in s["raw_question"]:
            assert s["answer"] == ("Yes" if view.events else "No")
        elif "road and building" in s["raw_question"] or "how many roads" in s["raw_question"]:
            assert parse_count(s["answer"]) == {"road": counts["road"], "building": counts["building"]}
            n = counts["demolished"]
            assert (f"{n} building{' was' if n == 1 else 's were'} demolished" in s["answer"]) == bool(n)
        elif "3x3 grid" in s["raw_question"]:
            assert parse_loc(s["answer"]) == {
                k: expected_cells(view.events, width, height, k) for k in ("road", "building")
            }
        else:  # captioning: the pair's own captions, deterministic per pair
            captions = change_captions(
                view.change_events(), width, height, pair_rng(view.id), style="levir-cc", count=5
            )
            assert s["answer"] in captions
            if s["id"].startswith("dialog"):
                assert s["answer"] == captions[0] and s["question"].count("q: ") == 3
    assert any(s["answer"] == "No" for s in samples) and any(s["answer"] == "Yes" for s in samples)


# ---------------------------------------------------------------------- RSVQA
def read_rsvqa(folder, prefix):
    """Follows syvlo/RSVQA VQA_model/VQALoader.py: active images, image <id>.tif, its questions_ids, the
    answer answers_ids[0]; plus the pairing checks of google-research/big_vision
    big_vision/datasets/rsvqa_hr/rsvqa_hr.py (question i <-> answer i)."""
    tables = {
        k: json.loads((folder / f"{prefix}_split_all_{k}.json").read_text())[k]
        for k in ("images", "questions", "answers")
    }
    for kind, items in tables.items():
        assert [x["id"] for x in items] == list(range(len(items))) and all(x["active"] for x in items), kind
    for q, a in zip(tables["questions"], tables["answers"]):
        assert q["answers_ids"] == [a["id"]] and q["id"] == a["question_id"]
    rows = []
    for image in tables["images"]:
        assert image.keys() >= {"id", "date_added", "original_name", "sensor", "upperleft_map_x", "upperleft_map_y",
                                "res_x", "res_y", "people_id", "type", "questions_ids", "active"}  # fmt: skip
        t2 = np.array(PIL.Image.open(folder / "Images" / f"{image['id']}.tif"))
        t1 = np.array(PIL.Image.open(folder / "Images" / image["rsgen_t1"]))
        for qid in image["questions_ids"]:
            q = tables["questions"][qid]
            assert q["img_id"] == image["id"]
            answer = tables["answers"][q["answers_ids"][0]]["answer"]
            rows.append((image["rsgen_pair"], t1, t2, q["type"], q["question"], answer))
    return rows


def components(mask):
    """8-connected regions, counted here through rasterio's polygon tracing (not the exporter's cv2)."""
    return sum(1 for _, v in features.shapes(mask.astype(np.uint8), mask=mask, connectivity=8) if v == 1)


def test_rsvqa_reads_back(dataset, tmp_path):
    ds, views = dataset
    out = QA_EXPORTERS["rsvqa"](ds, tmp_path / "rsvqa")
    class_of = {noun: CANONICAL.class_by_name(name).id for name, noun in RSVQA_NOUNS.items()}
    rows = read_rsvqa(out, "rsgen")
    assert {r[3] for r in rows} == {"presence", "count", "area", "comp"}
    for pair_id, t1, t2, kind, question, answer in rows:
        view = views[pair_id]
        assert np.array_equal(t2, view.images()[1]) and np.array_equal(t1, view.images()[0])
        layout = view.layouts()[1]
        ids = [class_of[n] for _, n in sorted((question.find(n), n) for n in class_of if n in question)]
        if kind == "presence":
            assert answer == ("yes" if (layout == ids[0]).any() else "no")
        elif kind == "count":
            assert answer == str(components(layout == ids[0]))
        elif kind == "area":
            assert answer == f"{int((layout == ids[0]).sum() * GSD * GSD)}m2" and answer[:-2].isdigit()
        else:
            a, b = (components(layout == i) for i in ids)
            truth = a > b if "more" in question else a < b if "less" in question else a == b
            assert answer == ("yes" if truth else "no")
    change_rows = read_rsvqa(out, "rsgen_change")
    assert {r[0] for r in change_rows} == set(views)
    for pair_id, *_, question, answer in change_rows:
        view = views[pair_id]
        counts = expected_counts(view.events)
        mask = np.zeros(view.size, bool)
        for e in view.events:
            mask |= features.rasterize([(shape(e["geometry"]), 1)], out_shape=view.size).astype(bool)
        expected = {"Has anything changed?": "yes" if view.events else "no",
                    "Were any buildings built?": "yes" if counts["building"] else "no",
                    "How many buildings were built?": str(counts["building"]),
                    "How many buildings were demolished?": str(counts["demolished"]),
                    "How many roads were built?": str(counts["road"]),
                    "What is the area that changed?": f"{int(mask.sum() * GSD * GSD)}m2"}  # fmt: skip
        assert answer == expected[question]


def test_qa_export_errors(dataset, tmp_path):
    ds, _ = dataset
    flat = tmp_path / "flat"
    flat.mkdir()
    PIL.Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(flat / "x.png")
    (flat / "manifest.jsonl").write_text(json.dumps({"id": "x", "files": {"image": "x.png"}, "provenance": {}}))
    with pytest.raises(DatasetError, match="no change pairs"):
        QA_EXPORTERS["rsvqa"](load_dataset(flat), tmp_path / "e1")
    broken = shutil.copytree(ds.root, tmp_path / "broken")
    record = json.loads((broken / "changes" / "00000000.json").read_text())
    record["provenance"]["gsd"] = 0
    (broken / "changes" / "00000000.json").write_text(json.dumps(record))
    with pytest.raises(DatasetError, match=r"pair 00000000: gsd=0.0 m/pixel; areas need a positive GSD"):
        QA_EXPORTERS["changechat"](load_dataset(broken), tmp_path / "e2")
    assert not (tmp_path / "e2").exists()  # nothing written for an unusable dataset
