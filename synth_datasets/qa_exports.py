"""Export rsgen change pairs to two public question-answering formats: ChangeChat-105k (bi-temporal
instructions, LLaVA-style conversations) and RSVQA (single-image VQA, three cross-referenced JSON files).
Every answer is computed from the pair's event list or its t2 layout, never guessed; every file appears
atomically. ``export_changechat(ds, out)`` and ``export_rsvqa(ds, out)`` return ``out``.

ChangeChat-105k, checked against repo hanlinwu/DeltaVLM:

* ``docs/DATA.md``: an annotation file is one JSON list of ``{"id", "image": [t1, t2], "conversations":
  [{"from": "human"|"gpt", "value"}, ...]}``, human/gpt turns alternating; image paths relative to the
  image folder (``build_info.images.storage``); layout ``images/<split>/...`` + ``annotations/<split>.json``
  (also ``configs/train_stage2.yaml``, ``data/download_changechat.py``). Its 3x3 grid section uses TL/TC
  codes, but the evaluation code (below) reads ``top-left`` ... ``bottom-right``; we follow the code.
* ``deltavlm/datasets/change_caption.py`` and ``dataset.py`` (``CaptionDataset``): the loader joins
  ``vis_root`` with ``image[0]``/``image[1]``, pairs turns (i, i+1) into q/a with the previous turns as
  context, and strips every ``<image>`` from the question.
* ``scripts/data_processing.ipynb``: a real record: integer id, ``"image": ["train/A/train_000001.png",
  "train/B/train_000001.png"]``, first human turn ``"<image> <image> Please judge whether these two images
  have changed. Please answer yes or no."`` (two tokens, at the start), answers ``"Yes"``/``"No"``; the
  dialogue asks that, then ``"If changes have occurred, count the number of road and building changes
  separately."``, then ``"Based on the above analysis, please describe the changes of these two images in
  detail."``.
* ``dataset.py`` (comments in ``COCOCapEvalDataset``): the single-task prompts: captioning ``"Please briefly
  describe the changes in these two images."`` (also ``configs/evaluate.yaml``), binary, count ``"Please
  determine how many roads and buildings have changed?"``, and the 3x3-grid localisation prompt.
* ``scripts/test-count.ipynb``: count answers are parsed by splitting at ``new`` (road part, building
  part; ``no`` = 0, else the first integer); ``"there are no changes in roads or buildings"`` and ``"no
  new roads or buildings"`` mean zero. ``scripts/test-loc.ipynb``: localisation answers hold ``roads
  [...] buildings [...]``, Python lists of ``top-left, top-center, top-right, center-left,
  center-center, center-right, bottom-left, bottom-center, bottom-right``.
* ``infer_subtasks.py``: the release splits the test set per sub-task (caption, binary, count, loc,
  open, dialog files); we write one such file per type besides ``train.json`` (all records).

Decisions: where DATA.md's examples (one ``<image>``, ``"Yes."``) differ from the notebook's real
record, the record wins. Records get string ids ``<type>_<pair>`` (DATA.md's field table says string); the
GPT-written open-ended QA type is not generated (not derivable exactly). Roads and buildings: a new
building is an ``add_building`` instance (distinct ``instance_id``) or a transition to ``building``; a
new road is a transition to ``road``; demolished/extended/partly demolished buildings and removed roads
are appended to the count answer after the parsable part. Localisation: the grid cell of each road or
building event's centroid (an event from or to that class; ``conditions.change_captions.region_name``'s
grid rule).

RSVQA, checked against repo syvlo/RSVQA (the authors' code):

* ``AutomaticDB/DatabaseIO.py``: ``{"images": [...]}``, ``{"questions": [...]}``, ``{"answers": [...]}``;
  image keys ``id, date_added, original_name, sensor, upperleft_map_x, upperleft_map_y, res_x, res_y,
  people_id, type, questions_ids, active`` (``AutomaticDB/DataSpecification.md`` writes ``-x``; the code
  writes ``_x`` and wins); question keys ``id, date_added, img_id, people_id, type, question,
  answers_ids, active``; answer keys ``id, date_added, question_id, people_id, answer, active``; ids are
  list positions.
* ``AutomaticDB/ConstructQuestions.py``: phrasings ``Is there a building?`` (we write "an" before a
  vowel), ``How many buildings are there?``, ``Are there more/less X than Y?``, ``Is the number of X
  equal to the number of Y?``, ``What is the area covered by buildings?`` (no area question on roads);
  answers ``yes``/``no``, counts as ``str(int)``, areas ``str(int(area)) + "m2"`` (raw; binned into 0m2
  / ... / more than 1000m2 only by ``VQA_model/VocabEncoder.py`` when encoding); type = ``presence``,
  ``count``, ``comp``, ``area``.
* ``AutomaticDB/Splits.py``: files ``<prefix>_split_<split>_{images,questions,answers}.json``.
* ``VQA_model/VQALoader.py``: reads image ``<imgFolder>/<id>.tif``, follows ``questions_ids`` and
  ``answers_ids[0]``; ``VQA_model/train.py``: HR types presence/count/comp/area, LR ``rural_urban``.
* Also google-research/big_vision ``big_vision/datasets/rsvqa_hr/rsvqa_hr.py``: zips questions with
  answers (answer i belongs to question i), asserts ``answers_ids[0] == id`` of that answer.

Decisions: HR-style types (rsgen's GSDs are sub-metre; no ``rural_urban``). Files
``rsgen_split_all_*.json`` ask about the t2 layout; ``rsgen_change_split_all_*.json`` (same image ids)
ask about the change events and need t1: each image entry carries the extra keys ``rsgen_pair`` and
``rsgen_t1`` (``Images/<id>_t1.tif``; RSVQA is single-image). Classes asked: building, road, water and
every other canonical class present in t2 (not background). A count is the number of 8-connected
components of the class's pixels in the t2 layout; an area is pixels x gsd², truncated to whole m².
Change questions count built/demolished buildings and new roads by the ChangeChat rule above; the changed
area is the change mask's pixels x gsd².
``date_added`` is the sample's creation time (Unix seconds), ``res_x``/``res_y`` the GSD as ``"0.5m"``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import PIL.Image

from conditions.change_captions import change_captions
from conditions.palettes import CANONICAL
from core.atomic import atomic_path, atomic_write_text
from synth_datasets.change_views import ChangePairView, iter_change_pairs, pair_rng
from synth_datasets.reader import DatasetError, RsgenDataset
from synth_datasets.sample_writer import write_png

logger = logging.getLogger(__name__)

CAPTION_PROMPT = "Please briefly describe the changes in these two images."
BINARY_PROMPT = "Please judge whether these two images have changed. Please answer yes or no."
COUNT_PROMPT = "Please determine how many roads and buildings have changed?"
LOC_PROMPT = (
    "Please indicate the locations where changes have occurred in the buildings and roads, using a 3x3 grid "
    "(namely, 'top', 'center', and 'bottom' vertically and 'left', 'center', 'right' horizontally)."
)
DIALOG_PROMPTS = (
    BINARY_PROMPT,
    "If changes have occurred, count the number of road and building changes separately.",
    "Based on the above analysis, please describe the changes of these two images in detail.",
)
IMAGE_TOKENS = "<image> <image> "
GRID = [["top-left", "top-center", "top-right"], ["center-left", "center-center", "center-right"],
        ["bottom-left", "bottom-center", "bottom-right"]]  # fmt: skip
GRID_ORDER = [cell for row in GRID for cell in row]
RSVQA_NOUNS = {"building": "building", "road": "road", "impervious": "impervious surface", "water": "water area",
               "bare": "bare soil area", "tree": "tree area", "low_vegetation": "low vegetation area",
               "agriculture": "farmland", "vehicle": "vehicle", "sports": "sports field"}  # fmt: skip
RSVQA_CORE = ("building", "road", "water")


# ---------------------------------------------------------------------- shared: pairs, exact counts
def _pairs(ds: RsgenDataset) -> list[ChangePairView]:
    """The dataset's change pairs, checked to be usable (a positive GSD, both images and the t2 layout on disk)."""
    pairs = list(iter_change_pairs(ds))
    for view in pairs:
        if not view.gsd > 0:
            raise DatasetError(f"pair {view.id}: gsd={view.gsd} m/pixel; areas need a positive GSD: rewrite its "
                               "change record's provenance.gsd or regenerate the pair with --gsd")  # fmt: skip
        missing = [str(p) for p in (view.image_a, view.image_b, view.semantic_b) if not p.is_file()]
        if missing:
            raise DatasetError(f"pair {view.id}: missing {missing}; regenerate the pair or restore the files")
    return pairs


def _distinct(events: Iterable[dict[str, Any]], kind: str) -> int:
    """Objects of one event type: an added building replacing several classes is several events, one id."""
    ids = [e.get("instance_id") for e in events if e["type"] == kind]
    return len({i for i in ids if i is not None}) + sum(i is None for i in ids)


def change_counts(events: list[dict[str, Any]]) -> dict[str, int]:
    """Buildings and roads that changed, by kind (the rule of the module docstring)."""
    to = [e["to"] for e in events if e["type"] == "transition"]
    src = [e["from"] for e in events if e["type"] == "transition"]
    return {"new_buildings": _distinct(events, "add_building") + to.count("building"),
            "demolished": _distinct(events, "remove_building") + src.count("building"),
            "extended": _distinct(events, "expand_building"), "partly_demolished": _distinct(events, "shrink_building"),
            "new_roads": to.count("road"), "removed_roads": src.count("road")}  # fmt: skip


def grid_cell(x: float, y: float, width: int, height: int) -> str:
    """ChangeChat's name of the 3x3 cell holding pixel (x, y) (rows top→bottom, columns left→right)."""
    return GRID[min(int(3 * y / height), 2)][min(int(3 * x / width), 2)]


# ---------------------------------------------------------------------- ChangeChat-105k
def count_answer(events: list[dict[str, Any]]) -> str:
    """'2 new roads and no new buildings, and 1 building was demolished': parsable as test-count.ipynb."""
    c = change_counts(events)
    extras = [(c["demolished"], "demolished"), (c["extended"], "extended"),
              (c["partly_demolished"], "partly demolished")]  # fmt: skip
    tail = [f"{n} {'building was' if n == 1 else 'buildings were'} {verb}" for n, verb in extras if n]
    if c["removed_roads"]:
        tail.append(f"{c['removed_roads']} {'road was' if c['removed_roads'] == 1 else 'roads were'} removed")
    if not c["new_roads"] and not c["new_buildings"]:
        head = "no new roads or buildings" if tail else "there are no changes in roads or buildings"
    else:
        roads = f"{c['new_roads'] or 'no'} new road{'' if c['new_roads'] == 1 else 's'}"
        head = f"{roads} and {c['new_buildings'] or 'no'} new building{'' if c['new_buildings'] == 1 else 's'}"
    return ", and ".join([head, ", ".join(tail)]) if tail else head


def loc_answer(events: list[dict[str, Any]], width: int, height: int) -> str:
    """'roads [...] buildings [...]': the grid cells of the centroids of the events from or to road / building."""
    cells: dict[str, set[str]] = {"road": set(), "building": set()}
    for e in events:
        for kind in {e["from"], e["to"]} & set(cells):
            cells[kind].add(grid_cell(*e["centroid"], width, height))
    road, building = ([c for c in GRID_ORDER if c in cells[k]] for k in ("road", "building"))
    return f"roads {road!r} buildings {building!r}"


def _chat(record_id: str, images: list[str], turns: list[tuple[str, str]]) -> dict[str, Any]:
    conversations = []
    for k, (question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": (IMAGE_TOKENS if k == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    return {"id": record_id, "image": images, "conversations": conversations}


def changechat_records(view: ChangePairView, images: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The records of one pair, by instruction type."""
    height, width = view.size
    captions = list(dict.fromkeys(change_captions(view.change_events(), width, height, pair_rng(view.id),
                                                  style="levir-cc", count=5)))  # fmt: skip
    changed = "Yes" if view.events else "No"
    count = count_answer(view.events)
    return {
        "caption": [_chat(f"caption_{view.id}_{k}", images, [(CAPTION_PROMPT, c)]) for k, c in enumerate(captions)],
        "binary": [_chat(f"binary_{view.id}", images, [(BINARY_PROMPT, changed)])],
        "count": [_chat(f"count_{view.id}", images, [(COUNT_PROMPT, count)])],
        "loc": [_chat(f"loc_{view.id}", images, [(LOC_PROMPT, loc_answer(view.events, width, height))])],
        "dialog": [_chat(f"dialog_{view.id}", images, list(zip(DIALOG_PROMPTS, [changed, count, captions[0]])))],
    }


def export_changechat(ds: RsgenDataset, out: str | os.PathLike) -> Path:
    """``out/images/train/{A,B}/<pair>.png``, ``out/annotations/train.json`` (every record) and one
    ``out/annotations/changechat_rsgen_<type>.json`` per instruction type."""
    out = Path(out)
    pairs = _pairs(ds)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for view in pairs:
        names = [f"train/A/{view.id}.png", f"train/B/{view.id}.png"]
        for name, array in zip(names, view.images()):
            write_png(out / "images" / name, array)
        for kind, records in changechat_records(view, names).items():
            by_type.setdefault(kind, []).extend(records)
    for kind, records in by_type.items():
        atomic_write_text(out / "annotations" / f"changechat_rsgen_{kind}.json", json.dumps(records, indent=1))
    everything = [r for records in by_type.values() for r in records]
    atomic_write_text(out / "annotations" / "train.json", json.dumps(everything, indent=1))
    logger.info("changechat: %d pairs, %d records -> %s", len(pairs), len(everything), out)
    return out


# ---------------------------------------------------------------------- RSVQA
def class_stats(layout: np.ndarray, gsd: float) -> dict[str, tuple[int, int, int]]:
    """Canonical class name -> (pixels, 8-connected components, whole m²) in a layout (255 = no class)."""
    stats = {}
    for c in CANONICAL.classes:
        mask = (layout == c.id).astype(np.uint8)
        pixels = int(mask.sum())
        components = cv2.connectedComponents(mask, connectivity=8)[0] - 1 if pixels else 0
        stats[c.name] = (pixels, int(components), int(pixels * gsd * gsd + 1e-6))
    return stats


def layout_questions(layout: np.ndarray, gsd: float) -> list[tuple[str, str, str]]:
    """(type, question, answer) about the t2 layout, phrased as ConstructQuestions.py phrases them."""
    stats = class_stats(layout, gsd)
    names = [n for n in RSVQA_NOUNS if n in RSVQA_CORE or stats[n][0]]
    qa = []
    for name in names:
        noun, pixels, count, area = RSVQA_NOUNS[name], *stats[name]
        article = "an" if noun[0] in "aeiou" else "a"
        qa.append(("presence", f"Is there {article} {noun}?", "yes" if pixels else "no"))
        qa.append(("count", f"How many {noun}s are there?", str(count)))
        if name != "road":
            qa.append(("area", f"What is the area covered by {noun}s?", f"{area}m2"))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    for k, (a, b) in enumerate(pairs):
        x, y, na, nb = RSVQA_NOUNS[a] + "s", RSVQA_NOUNS[b] + "s", stats[a][1], stats[b][1]
        form = [(f"Are there more {x} than {y}?", na > nb), (f"Are there less {x} than {y}?", na < nb),
                (f"Is the number of {x} equal to the number of {y}?", na == nb)][k % 3]  # fmt: skip
        qa.append(("comp", form[0], "yes" if form[1] else "no"))
    return qa


def change_questions(view: ChangePairView) -> list[tuple[str, str, str]]:
    """(type, question, answer) about what changed between t1 and t2 (needs both images)."""
    c = change_counts(view.events)
    changed = int(view.change_mask().sum())
    return [
        ("presence", "Has anything changed?", "yes" if view.events else "no"),
        ("presence", "Were any buildings built?", "yes" if c["new_buildings"] else "no"),
        ("count", "How many buildings were built?", str(c["new_buildings"])),
        ("count", "How many buildings were demolished?", str(c["demolished"])),
        ("count", "How many roads were built?", str(c["new_roads"])),
        ("area", "What is the area that changed?", f"{int(changed * view.gsd * view.gsd + 1e-6)}m2"),
    ]


def _rsvqa_tables(entries: list[dict[str, Any]], asked: list[list[tuple[str, str, str]]]) -> dict[str, list]:
    """The three cross-referenced lists; a question and its one answer share id and list position."""
    images, questions, answers = [], [], []
    for img_id, (entry, qa) in enumerate(zip(entries, asked)):
        ids = list(range(len(questions), len(questions) + len(qa)))
        images.append({"id": img_id, **entry, "questions_ids": ids, "active": True})
        for qid, (kind, question, answer) in zip(ids, qa):
            common = {"id": qid, "date_added": entry["date_added"], "people_id": 0, "active": True}
            questions.append({**common, "img_id": img_id, "type": kind, "question": question, "answers_ids": [qid]})
            answers.append({**common, "question_id": qid, "answer": answer})
    return {"images": images, "questions": questions, "answers": answers}


def _write_tif(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        PIL.Image.fromarray(array).save(tmp, format="TIFF")


def _created(ds: RsgenDataset) -> dict[str, int]:
    """Sample id -> creation time (Unix seconds; 0 when the provenance has none)."""
    out = {}
    for sample in ds:
        stamp = sample.provenance.get("created")
        out[sample.id] = int(dt.datetime.fromisoformat(stamp).timestamp()) if isinstance(stamp, str) else 0
    return out


def export_rsvqa(ds: RsgenDataset, out: str | os.PathLike) -> Path:
    """``out/Images/<id>.tif`` (t2) and ``<id>_t1.tif``, ``out/rsgen_split_all_*.json`` (t2 layout
    questions) and ``out/rsgen_change_split_all_*.json`` (change questions), same image ids."""
    out = Path(out)
    pairs, created = _pairs(ds), _created(ds)
    entries, on_t2, on_change = [], [], []
    for img_id, view in enumerate(pairs):
        t1, t2 = view.images()
        _write_tif(out / "Images" / f"{img_id}.tif", t2)
        _write_tif(out / "Images" / f"{img_id}_t1.tif", t1)
        entries.append({"date_added": created.get(view.source, 0), "original_name": view.image_b.name,
                        "sensor": "rsgen", "upperleft_map_x": None, "upperleft_map_y": None,
                        "res_x": f"{view.gsd:g}m", "res_y": f"{view.gsd:g}m", "people_id": 0, "type": "RGB",
                        "rsgen_pair": view.id, "rsgen_t1": f"{img_id}_t1.tif"})  # fmt: skip
        on_t2.append(layout_questions(view.layouts()[1], view.gsd))
        on_change.append(change_questions(view))
    for prefix, asked in (("rsgen", on_t2), ("rsgen_change", on_change)):
        for kind, items in _rsvqa_tables(entries, asked).items():
            atomic_write_text(out / f"{prefix}_split_all_{kind}.json", json.dumps({kind: items}))
    logger.info("rsvqa: %d images, %d + %d questions -> %s", len(pairs), sum(map(len, on_t2)),
                sum(map(len, on_change)), out)  # fmt: skip
    return out


QA_EXPORTERS: dict[str, Callable[[RsgenDataset, str | os.PathLike], Path]] = {
    "changechat": export_changechat,
    "rsvqa": export_rsvqa,
}
