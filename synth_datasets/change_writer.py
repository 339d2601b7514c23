"""Change-pair datasets in the layouts change-detection code already loads.

* ``levir``: ``A/{name}.png`` (t1), ``B/{name}.png`` (t2), ``label/{name}.png`` (0/255 change mask);
* ``second``: ``im1/``, ``im2/``, ``label1/``, ``label2/`` — SECOND's colour-coded semantic-change
  labels (white = no change; classes at t1 and t2 where the scene changed).

Both also get ``changes/{name}.json`` with the event list, captions, question–answer pairs and
provenance; it is written last, so a pair whose JSON exists is complete.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from conditions.palettes import CANONICAL, get_palette
from core.atomic import atomic_write_bytes, atomic_write_text
from synth_datasets.geotiff import GeoReference, write_geotiff
from synth_datasets.reader import read_raster

LAYOUTS = ("levir", "second")
# Canonical classes SECOND has no class for, mapped to its nearest one inside changed areas.
SECOND_FALLBACK = {"background": "ground", "road": "ground", "impervious": "ground", "agriculture": "low_vegetation",
                   "vehicle": "ground", "bare": "ground", "sports": "playground"}  # fmt: skip


def _png(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


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
    out: str | os.PathLike,
    name: str,
    image_a: np.ndarray,
    image_b: np.ndarray,
    semantic_a: np.ndarray,
    semantic_b: np.ndarray,
    change_mask: np.ndarray,
    record: dict[str, Any],
    *,
    layout: str = "levir",
    georef: GeoReference | None = None,
) -> Path:
    """Write one pair; ``record`` (events, captions, qa, provenance) goes to ``changes/{name}.json``.
    With ``georef`` (a georeferenced input) every image and label is a GeoTIFF on that grid."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout {layout!r}: expected one of {LAYOUTS}")
    if not (image_a.shape == image_b.shape and image_a.shape[:2] == change_mask.shape == semantic_a.shape):
        raise ValueError(f"pair {name}: images {image_a.shape}/{image_b.shape} and labels {change_mask.shape} differ")
    out = Path(out)
    suffix = ".tif" if georef is not None else ".png"

    def save(folder: str, array: np.ndarray) -> None:
        if georef is not None:
            write_geotiff(out / folder / f"{name}{suffix}", array, georef)
        else:
            _png(out / folder / f"{name}{suffix}", array)

    if layout == "levir":
        save("A", image_a)
        save("B", image_b)
        save("label", change_mask.astype(np.uint8) * 255)
    else:
        second = get_palette("second")
        save("im1", image_a)
        save("im2", image_b)
        save("label1", second.colorize(to_second_ids(semantic_a, change_mask)))
        save("label2", second.colorize(to_second_ids(semantic_b, change_mask)))
    path = out / "changes" / f"{name}.json"
    info = {"name": name, "layout": layout, "suffix": suffix, **record}
    if georef is not None:
        info["crs"] = georef.crs.to_string() if georef.crs else None
        info["transform"] = list(georef.transform)[:6]
    atomic_write_text(path, json.dumps(info, indent=1, default=str) + "\n")
    return path


def read_change_pair(root: str | os.PathLike, name: str) -> dict[str, Any]:
    """Read a pair back from either layout: images, change mask and (SECOND) label ids, plus the JSON."""
    root = Path(root)
    info = json.loads((root / "changes" / f"{name}.json").read_text())

    suffix = info.get("suffix", ".png")

    def load(folder: str) -> np.ndarray:
        return read_raster(root / folder / f"{name}{suffix}")

    if info["layout"] == "levir":
        return {"A": load("A"), "B": load("B"), "change": load("label") > 0, **info}
    second = get_palette("second")
    label1, label2 = second.decode_colors(load("label1")), second.decode_colors(load("label2"))
    return {"A": load("im1"), "B": load("im2"), "label1": label1, "label2": label2, "change": label1 > 0, **info}
