"""The output layouts a job writes: how a sample becomes files, which file marks it complete, and its
manifest entry. The job runner picks one by name from the task; it never looks at the task itself.

* ``images``: ``{stem}.png|.tif`` + labels + ``{stem}.json`` sidecar (written last);
* ``change_pairs``: the LEVIR-CD or SECOND folders + ``changes/{stem}.json`` (written last);
* ``time_series``: a folder ``{stem}/`` per sequence, ``{stem}/events.json`` written last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.hashing import sha256_file
from synth_datasets.change_writer import PAIR_FOLDERS, pair_files, write_change_pair
from synth_datasets.sample_writer import write_image_sample
from synth_datasets.samples import ChangePairSample, ImageSample, TimeSeriesSample
from synth_datasets.sequence_writer import EVENTS_FILE, sequence_files, write_sequence


@dataclass(frozen=True)
class ImageFolder:
    """Images (with labels when the layout has them) and their sidecars."""

    def done_file(self, root: Path, stem: str) -> Path:
        return root / f"{stem}.json"

    def write(self, root: Path, stem: str, sample: ImageSample) -> None:
        if not isinstance(sample, ImageSample):
            raise TypeError(f"the images layout writes ImageSample, got {type(sample).__name__}")
        write_image_sample(root, stem, sample)

    def manifest_entry(self, root: Path, stem: str, index: int) -> dict[str, Any]:
        sidecar = json.loads(self.done_file(root, stem).read_text())
        files = {"image": sidecar["file"], "sidecar": f"{stem}.json"}
        for role, label in sidecar.get("labels", {}).items():
            files[role] = label["file"]
        return {"id": stem, "index": index, "files": files, "sha256": sidecar["sha256"], "provenance": sidecar}


@dataclass(frozen=True)
class ChangePairFolder:
    """Change pairs in a change-detection dataset format (``levir`` or ``second``)."""

    dataset_format: str

    def done_file(self, root: Path, stem: str) -> Path:
        return root / "changes" / f"{stem}.json"

    def write(self, root: Path, stem: str, sample: ChangePairSample) -> None:
        if not isinstance(sample, ChangePairSample):
            raise TypeError(f"the change_pairs layout writes ChangePairSample, got {type(sample).__name__}")
        write_change_pair(root, stem, sample, dataset_format=self.dataset_format)

    def manifest_entry(self, root: Path, stem: str, index: int) -> dict[str, Any]:
        record = json.loads(self.done_file(root, stem).read_text())
        files = pair_files(record, stem)
        t2 = PAIR_FOLDERS[record["dataset_format"]][1]
        return {"id": stem, "index": index, "files": files, "sha256": sha256_file(root / files[t2]),
                "provenance": record["provenance"], "captions": record["captions"]}  # fmt: skip


@dataclass(frozen=True)
class SequenceFolder:
    """Time series: a folder per sequence (dates, layouts, change masks of the date pairs, events)."""

    stack: bool = False

    def done_file(self, root: Path, stem: str) -> Path:
        return root / stem / EVENTS_FILE

    def write(self, root: Path, stem: str, sample: TimeSeriesSample) -> None:
        if not isinstance(sample, TimeSeriesSample):
            raise TypeError(f"the time_series layout writes TimeSeriesSample, got {type(sample).__name__}")
        write_sequence(root, stem, sample, stack=self.stack)

    def manifest_entry(self, root: Path, stem: str, index: int) -> dict[str, Any]:
        record = json.loads(self.done_file(root, stem).read_text())
        files = sequence_files(record, stem)
        last = files[f"date{record['num_dates'] - 1:03d}"]
        return {"id": stem, "index": index, "files": files, "sha256": sha256_file(root / last),
                "provenance": record["provenance"], "captions": record["pairs"][-1]["captions"]}  # fmt: skip


OutputLayout = ImageFolder | ChangePairFolder | SequenceFolder
