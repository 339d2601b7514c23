"""Every change pair of an rsgen dataset, whatever wrote it: the pairs of a ``change_pairs`` job, and the
consecutive date pairs of a ``time_series`` job. The exporters to public change-captioning and change-QA
formats read change data only through :func:`iter_change_pairs`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from conditions.change_events import ChangeEvent
from conditions.palettes import get_palette
from synth_datasets.geotiff import read_raster
from synth_datasets.reader import DatasetError, DatasetSample, RsgenDataset
from synth_datasets.sequence_writer import pair_name


@dataclass
class ChangePairView:
    """One change pair: the files of both dates and the exact record of what changed between them."""

    id: str  # "00000003" (a pair) or "00000003_002_003" (dates 2 -> 3 of sequence 00000003)
    image_a: Path  # t1 image file (.png or .tif)
    image_b: Path  # t2 image file
    semantic_a: Path  # canonical layout of t1 (uint8 class ids, 255 = ignore)
    semantic_b: Path
    change: Path  # the change mask: 0/255 (LEVIR layout) or SECOND's colour-coded label1 (white = no change)
    events: list[dict[str, Any]]  # ChangeEvent.to_dict records (pixel coordinates)
    distractors: list[dict[str, Any]]  # pseudo-changes applied to either image (they change no label)
    captions: list[str]
    gsd: float  # metres per pixel
    source: str  # the dataset sample this pair belongs to

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """(t1, t2) as (H, W, 3) uint8."""
        return read_raster(self.image_a), read_raster(self.image_b)

    def layouts(self) -> tuple[np.ndarray, np.ndarray]:
        """(t1, t2) canonical class ids, (H, W) uint8."""
        return read_raster(self.semantic_a), read_raster(self.semantic_b)

    def change_mask(self) -> np.ndarray:
        """(H, W) bool: exactly the union of the events' pixels."""
        label = read_raster(self.change)
        if label.ndim == 3:  # SECOND: label1 colours, white (class 0) = no change
            return get_palette("second").decode_colors(label) > 0
        return label > 0

    def change_events(self) -> list[ChangeEvent]:
        return [ChangeEvent.from_dict(e) for e in self.events]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels (from the layout's header: no pixels are read)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(self.semantic_a) as src:
                return src.height, src.width


def pair_rng(pair_id: str) -> np.random.Generator:
    """The generator an exporter draws one pair's caption phrasings from: seeded by the pair's id alone, so
    every export of the same pair words it the same way."""
    return np.random.default_rng(int(hashlib.sha256(pair_id.encode()).hexdigest()[:8], 16))


def _pair_of_sample(sample: DatasetSample) -> ChangePairView:
    record = sample.record()
    roles = ("A", "B", "label") if "A" in sample.files else ("im1", "im2", "label1")
    t1, t2, label = (sample.path(role) for role in roles)
    return ChangePairView(
        sample.id, t1, t2, sample.path("semantic1"), sample.path("semantic2"), label, record["events"],
        record.get("distractors", []), record.get("captions", []), float(record["provenance"]["gsd"]), sample.id,
    )  # fmt: skip


def iter_change_pairs(ds: RsgenDataset) -> Iterator[ChangePairView]:
    """Each change pair of ``ds``, in manifest order (a sequence yields its consecutive date pairs)."""
    found = False
    for sample in ds:
        if sample.is_sequence:
            yield from sequence_pairs(sample)
            found = True
        elif sample.is_change_pair:
            yield _pair_of_sample(sample)
            found = True
    if not found:
        raise DatasetError(f"dataset {str(ds.root)!r}: no change pairs or time series (task change_pairs/time_series)")


def sequence_pairs(sample: DatasetSample) -> Iterator[ChangePairView]:
    """The consecutive date pairs (t - 1, t) of one time series, named ``{sequence}_{t-1:03d}_{t:03d}``."""
    record = sample.record()
    gsd = float(record["provenance"]["gsd"])
    for pair in record["pairs"]:
        a, b = pair["from"], pair["to"]
        if b != a + 1:
            continue
        name = pair_name(a, b)
        events = [e for e in record["events"] if e["date"] == b]
        distractors = record["distractors"][a] + record["distractors"][b]
        yield ChangePairView(
            f"{sample.id}_{name}", sample.path(f"date{a:03d}"), sample.path(f"date{b:03d}"),
            sample.path(f"semantic{a:03d}"), sample.path(f"semantic{b:03d}"), sample.path(f"label{name}"),
            events, distractors, pair["captions"], gsd, sample.id,
        )  # fmt: skip
