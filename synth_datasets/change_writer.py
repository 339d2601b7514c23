"""Change-pair datasets in the layouts change-detection code already loads.

``dataset_format``:

* ``levir``: ``A/{name}.png`` (t1), ``B/{name}.png`` (t2), ``label/{name}.png`` (0/255 change mask);
* ``second``: ``im1/``, ``im2/``, ``label1/``, ``label2/`` — SECOND's colour-coded semantic-change
  labels (white = no change; classes at t1 and t2 where the scene changed).

Both also get ``semantic1/{name}`` and ``semantic2/{name}`` (the canonical layouts of both dates:
class ids, uint8, 255 = ignore) and ``changes/{name}.json`` with the event list, captions,
question–answer pairs and provenance; the JSON is written last, so a pair whose JSON exists is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from conditions.palettes import CANONICAL, get_palette
from core.atomic import atomic_write_text
from synth_datasets.geotiff import read_raster, write_geotiff
from synth_datasets.sample_writer import write_png
from synth_datasets.samples import ChangePairSample

DATASET_FORMATS = ("levir", "second")
# The folders of each format: t1 image, t2 image, then the label folder(s).
PAIR_FOLDERS = {"levir": ("A", "B", "label"), "second": ("im1", "im2", "label1", "label2")}
# The canonical layouts of t1 and t2, written in every format.
LAYOUT_FOLDERS = ("semantic1", "semantic2")
# Canonical classes SECOND has no class for, mapped to its nearest one inside changed areas.
SECOND_FALLBACK = {"background": "ground", "road": "ground", "impervious": "ground", "agriculture": "low_vegetation",
                   "vehicle": "ground", "bare": "ground", "sports": "playground"}  # fmt: skip


def to_second_ids(semantic: np.ndarray, change_mask: np.ndarray) -> np.ndarray:
    """Canonical ids -> SECOND ids: 0 (no change) outside ``change_mask``, the class inside."""
    second = get_palette("second")
    table = np.zeros(256, dtype=np.uint8)
    for c in CANONICAL.classes:
        name = (
            c.name if c.name in second.names and c.name not in SECOND_FALLBACK else SECOND_FALLBACK.get(c.name, c.name)
        )
        table[c.id] = second.class_by_name(name).id
    ids = table[semantic]
    ids[~change_mask] = 0
    return ids


def write_change_pair(
    out: str | os.PathLike, name: str, sample: ChangePairSample, *, dataset_format: str = "levir"
) -> Path:
    """Write one pair in ``dataset_format``; its record (events, captions, qa, provenance) goes to
    ``changes/{name}.json``, written last. A georeferenced pair is written as GeoTIFFs on its grid."""
    if dataset_format not in DATASET_FORMATS:
        raise ValueError(f"dataset_format={dataset_format!r}: expected one of {DATASET_FORMATS}")
    a, b, change = sample.image_a, sample.image_b, sample.change_mask
    if not (a.shape == b.shape and a.shape[:2] == change.shape == sample.semantic_a.shape):
        raise ValueError(f"pair {name}: images {a.shape}/{b.shape} and labels {change.shape} differ")
    out = Path(out)
    suffix = ".tif" if sample.georef is not None else ".png"
    if dataset_format == "levir":
        labels = [change.astype(np.uint8) * 255]
    else:
        second = get_palette("second")
        labels = [second.colorize(to_second_ids(s, change)) for s in (sample.semantic_a, sample.semantic_b)]
    layouts = [sample.semantic_a.astype(np.uint8), sample.semantic_b.astype(np.uint8)]
    for folder, array in zip(PAIR_FOLDERS[dataset_format] + LAYOUT_FOLDERS, [a, b, *labels, *layouts]):
        path = out / folder / f"{name}{suffix}"
        if sample.georef is not None:
            write_geotiff(path, array, sample.georef)
        else:
            write_png(path, array)
    info = {"name": name, "dataset_format": dataset_format, "suffix": suffix, **sample.record}
    if sample.georef is not None:
        info["crs"] = sample.georef.crs.to_string() if sample.georef.crs else None
        info["transform"] = list(sample.georef.transform)[:6]
    path = out / "changes" / f"{name}.json"
    atomic_write_text(path, json.dumps(info, indent=1, default=str) + "\n")
    return path


def pair_files(info: dict[str, Any], name: str) -> dict[str, str]:
    """Role -> path (relative to the dataset root) of every file of pair ``name`` (``info``: its record)."""
    suffix = info.get("suffix", ".png")
    folders = PAIR_FOLDERS[info["dataset_format"]] + LAYOUT_FOLDERS
    files = {folder: f"{folder}/{name}{suffix}" for folder in folders}
    files["changes"] = f"changes/{name}.json"
    return files


def read_change_pair(root: str | os.PathLike, name: str) -> dict[str, Any]:
    """Read a pair back from either format: images, change mask and (SECOND) label ids, plus the JSON."""
    root = Path(root)
    info = json.loads((root / "changes" / f"{name}.json").read_text())
    files = pair_files(info, name)
    t1, t2, *label_folders = PAIR_FOLDERS[info["dataset_format"]]
    images = {"A": read_raster(root / files[t1]), "B": read_raster(root / files[t2])}
    images.update({folder: read_raster(root / files[folder]) for folder in LAYOUT_FOLDERS})
    if info["dataset_format"] == "levir":
        return {**images, "change": read_raster(root / files["label"]) > 0, **info}
    second = get_palette("second")
    label1, label2 = (second.decode_colors(read_raster(root / files[f])) for f in label_folders)
    return {**images, "label1": label1, "label2": label2, "change": label1 > 0, **info}
