"""Time series on disk: a folder per sequence.

``{name}/dates/000.png`` … (the images of dates 0 … T-1), ``{name}/semantic/000.png`` … (canonical layouts:
class ids, uint8, 255 = ignore), ``{name}/labels/AAA_BBB.png`` (0/255 change masks of the date pairs: every
consecutive pair and (0, t)), optionally ``{name}/stack.tif`` (every date in one GeoTIFF, 3 bands per date,
band descriptions naming the date), and ``{name}/events.json`` (dates, events with the date index at which
each happened, captions and QA per pair, distractors, provenance), written last: a sequence whose
``events.json`` exists is complete. A georeferenced sequence is written as GeoTIFFs on its grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import Affine

from core.atomic import atomic_write_text
from synth_datasets.geotiff import RGB_DESCRIPTIONS, GeoReference, read_raster, write_geotiff
from synth_datasets.sample_writer import write_png
from synth_datasets.samples import TimeSeriesSample

EVENTS_FILE = "events.json"


def date_pairs(num_dates: int) -> list[tuple[int, int]]:
    """The labelled date pairs of a sequence: (t - 1, t) for every t, then (0, t) for t >= 2."""
    return [(t - 1, t) for t in range(1, num_dates)] + [(0, t) for t in range(2, num_dates)]


def pair_name(a: int, b: int) -> str:
    return f"{a:03d}_{b:03d}"


def sequence_files(record: dict[str, Any], name: str) -> dict[str, str]:
    """Role -> path (relative to the dataset root) of every file of sequence ``name`` (``record``: its events.json).
    Roles: ``date000`` …, ``semantic000`` …, ``label000_001`` …, ``stack`` (if written), ``events``."""
    suffix, num_dates = record["suffix"], record["num_dates"]
    files = {f"date{t:03d}": f"{name}/dates/{t:03d}{suffix}" for t in range(num_dates)}
    files.update({f"semantic{t:03d}": f"{name}/semantic/{t:03d}{suffix}" for t in range(num_dates)})
    files.update({f"label{pair_name(a, b)}": f"{name}/labels/{pair_name(a, b)}{suffix}"
                  for a, b in date_pairs(num_dates)})  # fmt: skip
    if record.get("stack"):
        files["stack"] = f"{name}/stack.tif"
    files["events"] = f"{name}/{EVENTS_FILE}"
    return files


def stack_descriptions(dates: list[str | None]) -> tuple[str, ...]:
    """Band descriptions of the stack: 'date 0 2020-06-01 red', … (three bands per date)."""
    return tuple(f"date {t} {date or 'unknown'} {band}" for t, date in enumerate(dates) for band in RGB_DESCRIPTIONS)


def write_sequence(out: str | os.PathLike, name: str, sample: TimeSeriesSample, *, stack: bool = False) -> Path:
    """Write one sequence under ``out/name``; returns the path of its ``events.json`` (written last)."""
    num_dates = len(sample.images)
    shape = sample.semantics[0].shape
    if len(sample.semantics) != num_dates or any(i.shape[:2] != shape for i in sample.images):
        raise ValueError(f"sequence {name}: {num_dates} images and {len(sample.semantics)} layouts of differing sizes")
    if sorted(sample.changes) != sorted(date_pairs(num_dates)):
        raise ValueError(f"sequence {name}: change masks for {sorted(sample.changes)}, expected the date pairs")
    root = Path(out) / name
    suffix = ".tif" if sample.georef is not None else ".png"

    def put(path: Path, array: np.ndarray) -> None:
        write_geotiff(path, array, sample.georef) if sample.georef is not None else write_png(path, array)

    for t in range(num_dates):
        put(root / "dates" / f"{t:03d}{suffix}", sample.images[t])
        put(root / "semantic" / f"{t:03d}{suffix}", sample.semantics[t].astype(np.uint8))
    for (a, b), change in sample.changes.items():
        put(root / "labels" / f"{pair_name(a, b)}{suffix}", change.astype(np.uint8) * 255)
    if stack:
        georef = sample.georef or GeoReference(None, Affine.identity())
        stacked = np.concatenate(sample.images, axis=-1)  # T × (H, W, 3) -> (H, W, 3T)
        write_geotiff(root / "stack.tif", stacked, georef, descriptions=stack_descriptions(sample.record["dates"]))
    info = {"name": name, "num_dates": num_dates, "suffix": suffix, "stack": stack, **sample.record}
    if sample.georef is not None:
        info["crs"] = sample.georef.crs.to_string() if sample.georef.crs else None
        info["transform"] = list(sample.georef.transform)[:6]
    path = root / EVENTS_FILE
    atomic_write_text(path, json.dumps(info, indent=1, default=str) + "\n")
    return path


def read_sequence(root: str | os.PathLike, name: str) -> dict[str, Any]:
    """A sequence read back: ``images`` and ``semantics`` (lists by date), ``changes`` ((a, b) -> bool mask) and
    every key of its ``events.json``."""
    root = Path(root)
    info = json.loads((root / name / EVENTS_FILE).read_text())
    files = sequence_files(info, name)
    num_dates = info["num_dates"]
    return {
        **info,
        "images": [read_raster(root / files[f"date{t:03d}"]) for t in range(num_dates)],
        "semantics": [read_raster(root / files[f"semantic{t:03d}"]) for t in range(num_dates)],
        "changes": {(a, b): read_raster(root / files[f"label{pair_name(a, b)}"]) > 0 for a, b in date_pairs(num_dates)},
    }
