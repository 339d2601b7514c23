"""Export rsgen change pairs to public change-captioning formats: LEVIR-CC, LEVIR-MCI and SECOND-CC.

Each exporter reads the pairs through :func:`synth_datasets.change_views.iter_change_pairs`, writes
five captions per pair (``conditions.change_captions.change_captions`` in the dataset's ``style``,
seeded per pair id), the two images as RGB PNGs and the labels, then the captions JSON last: a
folder whose JSON exists is complete. Every file appears atomically. ``split`` puts every pair in
``train`` (default), ``val`` or ``test``; ``split="auto"`` assigns each pair by the sha256 of its id
(70 % train, 10 % val, 20 % test: stable whatever the order or number of pairs). Exporting again
into the same folder replaces the files; files of pairs no longer exported stay, unreferenced.

The captions JSON is Karpathy-style: ``{"images": [{"filepath": split, "filename", "imgid",
"sentences": [{"tokens", "raw", "imgid", "sentid"}], "split", "sentids", "changeflag",
"rsgen_id"}]}``. ``raw`` is the caption as one lower-case sentence ending in `` .`` (the sentences of
a multi-sentence caption are joined by "and": LEVIR-CC's references are single sentences; other
punctuation than ``,`` becomes a space); ``tokens`` is :func:`tokenize` of ``raw`` (``,`` and ``;``
become tokens, ``.`` and ``?`` are dropped, split on spaces), exactly LEVIR-MCI's tokenisation of
``raw``. ``changeflag`` is 1 when the pair has change events (distractors alone are no change).
``rsgen_id`` (the pair's id in the job) is ours; no public loader reads it.

Facts checked against the authors' public code:

* **LEVIR-CC** (``levir-cc``): ``LevirCCcaptions.json`` beside ``images/{split}/A|B/{filename}``
  (Chen-Yang-Liu/LEVIR-CC-Dataset: README.md, folder tree; 10,077 pairs and 50,385 sentences, i.e. 5
  each). The loader reads ``images``, ``sentences[].tokens``, ``split`` (train/restval, val, test) and
  ``filename``, joins ``images/{split}/A|B/{filename}``, keeps sentences of at most 50 tokens and
  resizes the images to 256 x 256 (Chen-Yang-Liu/RSICC: utils.py ``create_input_files`` and
  create_input_files.py: ``captions_per_image=5``, ``max_len=50``). ``changeflag`` and ``raw`` (with
  its `` .``) are read by Chen-Yang-Liu/PromptCC: create_input_files.py. File names follow LEVIR-CC's
  ``{split}_{000000}.png`` (RSICC: Example/A/train_000016.png).
* **LEVIR-MCI** (``levir-mci``): the same JSON and images plus ``images/{split}/label/{filename}``
  (Chen-Yang-Liu/Change-Agent: README.md). Multi_change/preprocess_data.py reads ``sentences[].raw``
  and ``filename``, tokenises as above and takes the split from the file name's prefix
  (``train_``/``val_``/``test_``). Multi_change/data/LEVIR_MCI.py reads the label as a 3-channel
  image, keeps channel 0 and maps 128 -> 1, 255 -> 2; Multi_change/predict.py
  (``compute_object_num``) names class 1 road and class 2 building. So labels are grey RGB PNGs:
  0 background (or no change), 128 changed road, 255 changed building (building wins where a pixel
  changed between building and road). LEVIR_MCI.py finds B and label by ``path.replace('A', ...)``
  on the whole path, so the export folder's path must not contain a capital ``A`` (warned).
  Pairs whose changes involve other classes cannot be labelled in this scheme and are left out.
* **SECOND-CC** (``second-cc``): ``SECOND-CC-AUG.json`` beside ``{split}/rgb/A|B/{filename}`` and
  ``{split}/sem/A|B/{filename}`` (ChangeCapsInRS/SecondCC: README.md, folder tree; 6,041 pairs and
  30,205 sentences, i.e. 5 each; createHD5files.py: the same JSON keys as RSICC, ``max_len=50``,
  semantic maps read as RGB with white (255, 255, 255) = void). The semantic maps are SECOND's
  colour-coded label1/label2 (white = no change, the class at t1/t2 where the scene changed), from
  :func:`synth_datasets.change_writer.to_second_ids` and ``get_palette("second")``, exactly what a
  ``dataset_format="second"`` job writes.

Not verifiable from the public code: the LEVIR-CC JSON itself (stored in RSICC as
Levir_CC_dataset/LevirCCcaptions.json, but too large for the snapshot), hence the exact spacing of
``raw`` and the values of ``filepath``/``imgid``/``sentid``/``sentids``, which no loader reads; SECOND-CC's
file names, whether its JSON has ``changeflag``, and its palette (SecondCC's code only relies on
white = void).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conditions.change_captions import change_captions
from conditions.palettes import CANONICAL, get_palette
from core.atomic import atomic_write_text
from core.errors import InputError
from synth_datasets.change_views import ChangePairView, iter_change_pairs, pair_rng
from synth_datasets.change_writer import to_second_ids
from synth_datasets.reader import DatasetError, RsgenDataset
from synth_datasets.sample_writer import write_png

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_CHOICES = (*SPLITS, "auto")
AUTO_SPLIT = (("train", 70), ("val", 80), ("test", 100))  # cumulative percentages of split="auto"
CAPTIONS_PER_PAIR = 5  # LEVIR-CC and SECOND-CC both have five sentences per pair
MAX_TOKENS = 50  # RSICC's and SecondCC's max_len: longer sentences are dropped by their loaders
LEVIR_CC_JSON = "LevirCCcaptions.json"
SECOND_CC_JSON = "SECOND-CC-AUG.json"
MCI_VALUES = {"background": 0, "road": 128, "building": 255}  # label pixel values (LEVIR_MCI.py: 128->1, 255->2)
BUILDING = CANONICAL.class_by_name("building").id
ROAD = CANONICAL.class_by_name("road").id
_NOT_KEPT = re.compile(r"[^a-z0-9,;' \-]+")
_SENTENCE_END = re.compile(r"\s*[.?!;]\s+(?=\S)")  # "a. b" -> "a and b"


def tokenize(raw: str) -> list[str]:
    """LEVIR-MCI's tokenisation of a ``raw`` sentence, without <START>/<END>: ``,`` and ``;`` become
    tokens, ``.`` and ``?`` are removed, the rest is split on spaces."""
    for mark in ",;":
        raw = raw.replace(mark, f" {mark}")
    for mark in ".?":
        raw = raw.replace(mark, "")
    return [token for token in raw.split(" ") if token]


def raw_sentence(caption: str) -> str:
    """A caption as LEVIR-CC writes ``raw``: one lower-case sentence (several are joined by "and"),
    single spaces, ending in `` .``."""
    text = _SENTENCE_END.sub(" and ", caption.lower().strip()).replace(":", ",")
    text = _NOT_KEPT.sub(" ", text.replace(".", " ").replace("?", " "))
    words = " ".join(re.sub(r"\s*([,;])\s*", r"\1 ", text).split()).strip(",; ")
    if not words:
        raise DatasetError(f"caption {caption!r}: no words left to export")
    return f"{words} ."


def split_of(pair_id: str, split: str) -> str:
    """``split`` itself, or for ``"auto"`` the split the sha256 of ``pair_id`` falls in."""
    if split not in SPLIT_CHOICES:
        raise InputError(f"split={split!r}: expected one of {SPLIT_CHOICES}")
    if split != "auto":
        return split
    bucket = int(hashlib.sha256(f"split:{pair_id}".encode()).hexdigest()[:8], 16) % 100
    return next(name for name, upper in AUTO_SPLIT if bucket < upper)


def _pairs(ds: RsgenDataset, fmt: str, split: str) -> list[ChangePairView]:
    """The change pairs of ``ds`` (``split`` checked first, before anything is written)."""
    split_of("", split)
    try:
        pairs = list(iter_change_pairs(ds))
    except DatasetError as err:
        raise DatasetError(
            f"--format {fmt}: {err}; export a change_pairs (or time_series) job's output folder"
        ) from None
    return pairs


def _sentences(view: ChangePairView, style: str, imgid: int, first_sentid: int) -> list[dict[str, Any]]:
    height, width = view.size
    events, rng = view.change_events(), pair_rng(view.id)
    distractors = bool(view.distractors)  # no-change wording that admits the images differ
    captions = change_captions(
        events, width, height, rng, style=style, distractors=distractors, count=CAPTIONS_PER_PAIR
    )
    if len(captions) != CAPTIONS_PER_PAIR:
        raise DatasetError(f"pair {view.id}: got {len(captions)} captions, expected {CAPTIONS_PER_PAIR}")
    out = []
    for k, caption in enumerate(captions):
        raw = raw_sentence(caption)
        tokens = tokenize(raw)
        if len(tokens) > MAX_TOKENS:
            logger.warning("pair %s: caption of %d tokens; the public loaders drop over %d", view.id, len(tokens),
                           MAX_TOKENS)  # fmt: skip
        out.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": first_sentid + k})
    return out


def _entry(view: ChangePairView, split: str, filename: str, imgid: int, sentid: int, style: str) -> dict[str, Any]:
    sentences = _sentences(view, style, imgid, sentid)
    return {"filepath": split, "filename": filename, "imgid": imgid, "sentences": sentences, "split": split,
            "sentids": [s["sentid"] for s in sentences], "changeflag": int(bool(view.events)),
            "rsgen_id": view.id}  # fmt: skip


def _rgb(array: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 (one band repeated; extra bands dropped)."""
    array = np.asarray(array, dtype=np.uint8)
    return np.repeat(array[..., None], 3, axis=-1) if array.ndim == 2 else np.ascontiguousarray(array[..., :3])


def mci_label(view: ChangePairView) -> np.ndarray | None:
    """The LEVIR-MCI label of a pair, (H, W, 3) uint8 grey (0 / 128 road / 255 building), or ``None``
    when a changed pixel is neither building nor road at either date (not expressible)."""
    change = view.change_mask()
    t1, t2 = view.layouts()
    building = change & ((t1 == BUILDING) | (t2 == BUILDING))
    road = change & ~building & ((t1 == ROAD) | (t2 == ROAD))
    if (change & ~building & ~road).any():
        return None
    label = np.zeros(change.shape, dtype=np.uint8)
    label[road] = MCI_VALUES["road"]
    label[building] = MCI_VALUES["building"]
    return np.repeat(label[..., None], 3, axis=-1)


def _write_levir(ds: RsgenDataset, out: str | os.PathLike, split: str, *, with_labels: bool) -> Path:
    fmt = "levir-mci" if with_labels else "levir-cc"
    pairs, out = _pairs(ds, fmt, split), Path(out)
    images, counters, skipped = [], dict.fromkeys(SPLITS, 0), []
    for view in pairs:
        label = mci_label(view) if with_labels else None
        if with_labels and label is None:
            skipped.append(view.id)
            continue
        name = split_of(view.id, split)
        filename = f"{name}_{counters[name]:06d}.png"
        counters[name] += 1
        folder = out / "images" / name
        for sub, array in zip(("A", "B"), view.images()):
            write_png(folder / sub / filename, _rgb(array))
        if label is not None:
            write_png(folder / "label" / filename, label)
        images.append(_entry(view, name, filename, len(images), CAPTIONS_PER_PAIR * len(images), "levir-cc"))
    if skipped:
        logger.warning(
            "levir-mci: left out %d of %d pairs (e.g. %s) whose changes involve classes other than building and "
            "road, which LEVIR-MCI masks cannot label; to keep them, restrict the job's events/transitions to "
            "building and road changes (e.g. transitions to building or road only)", len(skipped), len(pairs),
            skipped[0],
        )  # fmt: skip
    if not images:
        raise DatasetError(f"{fmt}: none of the {len(pairs)} pairs of {str(ds.root)!r} can be exported; rerun the job "
                           "with events/transitions that change only buildings and roads")  # fmt: skip
    if with_labels and "A" in str(out.resolve()):
        logger.warning("levir-mci: %s contains a capital 'A'; Change-Agent's LEVIR_MCI.py finds B/ and label/ "
                       "by replacing every 'A' of the path, so move the export to a path without one", out)  # fmt: skip
    path = atomic_write_text(out / LEVIR_CC_JSON, json.dumps({"images": images}, indent=1) + "\n")
    logger.info("%s: %d pairs (%s) -> %s", fmt, len(images), counters, out)
    return path


def export_levir_cc(ds: RsgenDataset, out: str | os.PathLike, *, split: str = "train") -> Path:
    """LEVIR-CC: ``LevirCCcaptions.json`` and ``images/{split}/A|B/{split}_NNNNNN.png``; returns the JSON."""
    return _write_levir(ds, out, split, with_labels=False)


def export_levir_mci(ds: RsgenDataset, out: str | os.PathLike, *, split: str = "train") -> Path:
    """LEVIR-MCI: LEVIR-CC plus ``images/{split}/label/`` road/building change masks; returns the JSON.
    Pairs with other changes are left out (one warning with the count)."""
    return _write_levir(ds, out, split, with_labels=True)


def export_second_cc(ds: RsgenDataset, out: str | os.PathLike, *, split: str = "train") -> Path:
    """SECOND-CC: ``SECOND-CC-AUG.json``, ``{split}/rgb/A|B/`` and ``{split}/sem/A|B/`` (SECOND colours,
    white = no change); returns the JSON."""
    pairs, out = _pairs(ds, "second-cc", split), Path(out)
    palette, images = get_palette("second"), []
    for view in pairs:
        name, filename = split_of(view.id, split), f"{view.id}.png"
        change = view.change_mask()
        for date, array, layout in zip(("A", "B"), view.images(), view.layouts()):
            write_png(out / name / "rgb" / date / filename, _rgb(array))
            write_png(out / name / "sem" / date / filename, palette.colorize(to_second_ids(layout, change)))
        images.append(_entry(view, name, filename, len(images), CAPTIONS_PER_PAIR * len(images), "second-cc"))
    path = atomic_write_text(out / SECOND_CC_JSON, json.dumps({"images": images}, indent=1) + "\n")
    logger.info("second-cc: %d pairs -> %s", len(images), out)
    return path


CAPTION_EXPORTERS: dict[str, Callable[..., Path]] = {
    "levir-cc": export_levir_cc,
    "levir-mci": export_levir_mci,
    "second-cc": export_second_cc,
}
