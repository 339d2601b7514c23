"""Read any rsgen dataset back: an output folder (``manifest.jsonl``) or a folder of samples with sidecars.

``load_dataset(path)`` returns a :class:`RsgenDataset`; iterating it yields :class:`DatasetSample`
records whose images and labels are loaded lazily from the files the manifest names, after
checking their sha256. Exporters and ``rsgen preview`` read datasets only through this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from core.hashing import sha256_file
from synth_datasets.change_writer import PAIR_FOLDERS, read_change_pair
from synth_datasets.geotiff import read_raster


class DatasetError(InputError):
    """Not an rsgen dataset, or a file is missing or does not match its recorded sha256."""


@dataclass
class DatasetSample:
    id: str
    root: Path
    files: dict[str, str]  # role -> path relative to root ("image", "sidecar", "semantic", ...)
    sha256: str | None
    provenance: dict[str, Any] = field(default_factory=dict)

    def path(self, role: str) -> Path:
        return self.root / self.files[role]

    @property
    def is_change_pair(self) -> bool:
        return "changes" in self.files

    @property
    def is_sequence(self) -> bool:
        """A time series (``time_series`` task): ``dates/``, ``semantic/``, ``labels/`` and ``events.json``."""
        return "events" in self.files

    def record(self) -> dict[str, Any]:
        """The change record: a pair's ``changes/{id}.json`` or a sequence's ``events.json``."""
        role = "changes" if self.is_change_pair else "events"
        if role not in self.files:
            raise DatasetError(f"sample {self.id}: not a change pair or time series (no change record)")
        return json.loads(self.path(role).read_text())

    def image(self, *, verify: bool = True) -> np.ndarray:
        """The sample's image (for change pairs: the t2 image, whose sha256 the manifest records)."""
        role = "image" if "image" in self.files else self._last_image_role()
        path = self.path(role)
        if verify and self.sha256 and sha256_file(path) != self.sha256:
            raise DatasetError(f"{path}: sha256 does not match the manifest; the file changed or is corrupt")
        return read_raster(path)

    def _last_image_role(self) -> str:
        if self.is_sequence:
            return max(role for role in self.files if role.startswith("date"))
        return next(f[1] for f in PAIR_FOLDERS.values() if f[1] in self.files)

    def label(self, role: str) -> np.ndarray | None:
        return read_raster(self.path(role)) if role in self.files else None

    def objects(self) -> list[dict[str, Any]]:
        if "objects" not in self.files:
            return []
        return json.loads(self.path("objects").read_text())

    def pair(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(t1, t2, change mask) of a change pair; of a time series, its first and last dates."""
        if self.is_sequence:
            last = int(self._last_image_role()[4:])
            change = read_raster(self.path(f"label000_{last:03d}")) > 0
            return read_raster(self.path("date000")), read_raster(self.path(f"date{last:03d}")), change
        pair = read_change_pair(self.root, self.id)
        return pair["A"], pair["B"], pair["change"]

    def dates(self) -> list[np.ndarray]:
        """The images of a time series, date by date."""
        roles = sorted(role for role in self.files if role.startswith("date"))
        return [read_raster(self.path(role)) for role in roles]

    @property
    def caption(self) -> str:
        """The first caption of a change pair (a time series: of its first and last dates), else the prompt."""
        if self.is_change_pair:
            captions = self.record().get("captions") or [""]
            return captions[0]
        if self.is_sequence:
            return (self.record()["pairs"][-1]["captions"] or [""])[0]
        return str(self.provenance.get("prompt") or "")


@dataclass
class RsgenDataset:
    root: Path
    samples: list[DatasetSample]
    index: dict[str, Any]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[DatasetSample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> DatasetSample:
        return self.samples[i]


def load_dataset(path: str | os.PathLike) -> RsgenDataset:
    """Open a job folder (manifest.jsonl) or a flat folder of ``*.json`` sidecars."""
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"dataset {str(root)!r}: no such folder")
    manifest = root / "manifest.jsonl"
    samples: list[DatasetSample] = []
    if manifest.is_file():
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{manifest}: line {number} is not JSON ({err.msg})") from None
            samples.append(DatasetSample(entry["id"], root, entry["files"], entry.get("sha256"), entry["provenance"]))
        index = json.loads((root / "index.json").read_text()) if (root / "index.json").is_file() else {}
    else:
        for sidecar in sorted(root.glob("*.json")):
            record = json.loads(sidecar.read_text())
            if "file" not in record or "sha256" not in record:
                continue  # e.g. *_objects.json
            files = {"image": record["file"], "sidecar": sidecar.name}
            for role, label in (record.get("labels") or {}).items():
                files[role] = label["file"]
            samples.append(DatasetSample(sidecar.stem, root, files, record["sha256"], record))
        index = {"num_samples": len(samples)}
    if not samples:
        raise DatasetError(f"dataset {str(root)!r}: no manifest.jsonl or sample sidecars; is it an rsgen output?")
    for sample in samples:
        missing = [role for role, rel in sample.files.items() if not (root / rel).is_file()]
        if missing:
            raise DatasetError(f"dataset {str(root)!r}: sample {sample.id} lacks its {missing} file(s)")
    return RsgenDataset(root, samples, index)
