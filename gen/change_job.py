"""Change-pair jobs: simulate change events on a layout, then synthesise the pair.

* ``full``: image t1 from layout t1 and image t2 from layout t2, same seed and metadata (the model
  keeps unchanged areas as similar as it can);
* ``hybrid`` (HySCDG): a real image t1 with its mask; t2 = t1 with only the changed regions
  inpainted under the t2 layout — every pixel outside the change mask is bit-identical to t1.

Optional pseudo-change distractors are applied to t2 and recorded; they never change the label.
Sample ``i`` draws everything from ``sample_seed(seed, i)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conditions.change_captions import change_captions, change_qa
from conditions.change_events import ChangeConfig, ChangeError, ChangeResult, simulate_change
from conditions.distractors import apply_distractors, check_distractors
from conditions.hashing import sha256_file
from conditions.masks import SemanticMask, encode_color, read_mask
from conditions.metadata import Metadata
from conditions.palettes import CANONICAL
from gen.controlled_job import read_uint8_rgb
from gen.progress import progress
from gen.provenance import sample_record
from gen.seeding import sample_seed
from gen.txt2img_job import resolve_device
from pipelines.controlled import RSControlledPipeline
from synth_datasets.change_writer import LAYOUTS, write_change_pair
from synth_datasets.geotiff import GeoReference

logger = logging.getLogger(__name__)

MODES = ("full", "hybrid")


@dataclass
class ChangePairJob:
    model: str
    out: Path
    mode: str = "full"
    layouts: Path | None = None  # full: folder of semantic masks
    images: Path | None = None  # hybrid: folder of t1 images ...
    masks: Path | None = None  # ... and their masks (same file names)
    palette: str = "levir"
    change: ChangeConfig = field(default_factory=ChangeConfig)
    no_change_fraction: float = 0.0  # pairs with no event (distractors only)
    distractors: list[str] = field(default_factory=list)
    gsd: float = 0.5
    prompt: str = ""
    metadata: Metadata = field(default_factory=Metadata)
    num_samples: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    layout: str = "levir"
    device: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: expected one of {MODES}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout {self.layout!r}: expected one of {LAYOUTS}")
        if self.mode == "full" and self.layouts is None:
            raise ValueError("--mode full needs --layouts DIR (semantic masks in --palette)")
        if self.mode == "hybrid" and (self.images is None or self.masks is None):
            raise ValueError("--mode hybrid needs --images DIR and --masks DIR (same file names)")
        if not 0 <= self.no_change_fraction <= 1:
            raise ValueError(f"--no-change-fraction {self.no_change_fraction}: expected a fraction in [0, 1]")
        if self.num_samples < 1:
            raise ValueError(f"-n {self.num_samples}: expected >= 1")
        check_distractors(self.distractors)

    def sources(self) -> list[Path]:
        folder = self.layouts if self.mode == "full" else self.masks
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
        if not files:
            raise ValueError(f"{folder}: no .png/.tif masks found")
        return files


def _read_image(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray, GeoReference | None]:
    image, georef = read_uint8_rgb(path, argument="--images")
    if image.shape[:2] != shape:
        raise ValueError(
            f"--images {str(path)!r}: size {image.shape[0]}x{image.shape[1]} does not match its mask "
            f"{shape[0]}x{shape[1]}; pass the mask made for this image"
        )
    return image, georef


def _control(semantic: np.ndarray) -> torch.Tensor:
    return encode_color(SemanticMask(semantic, CANONICAL))[None]  # (1, 3, H, W)


def make_pair(job: ChangePairJob, pipe: RSControlledPipeline, index: int, source: Path) -> dict[str, Any]:
    """Simulate and synthesise pair ``index`` from ``source``; returns arrays and the record."""
    rng = np.random.default_rng(sample_seed(job.seed, index))
    mask = read_mask(source, job.palette)
    sem_a = mask.palette.to_canonical(mask.ids)
    georef = GeoReference(mask.crs, mask.transform) if mask.crs is not None else None
    if rng.random() < job.no_change_fraction:
        result = ChangeResult(sem_a.copy(), np.zeros(sem_a.shape, np.int32), [], np.zeros(sem_a.shape, bool))
    else:
        result = simulate_change(sem_a, job.gsd, job.change, rng)
    seed = sample_seed(job.seed, index)
    common = {"prompt": job.prompt, "num_inference_steps": job.steps, "guidance_scale": job.guidance,
              "metadata": job.metadata if pipe.has_metadata else None, "output_type": "pt"}  # fmt: skip
    if job.mode == "full":
        images = []
        for semantic in (sem_a, result.semantic):  # same seed for both dates
            out = pipe(controls={"mask": _control(semantic)}, generator=[torch.Generator().manual_seed(seed)], **common)
            images.append((out.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        image_a, image_b = images
    else:
        image_a, image_georef = _read_image(job.images / source.name, sem_a.shape)
        georef = image_georef or georef
        image_b = image_a.copy()
        if result.change_mask.any():
            region = torch.from_numpy(result.change_mask)[None, None].float()  # (1, 1, H, W)
            t1 = torch.from_numpy(image_a).permute(2, 0, 1)[None] / 255.0  # (1, 3, H, W)
            out = pipe(
                controls={"mask": _control(result.semantic)}, image=t1, mask_image=region, feather_px=0,
                generator=[torch.Generator().manual_seed(seed)], **common,
            )  # fmt: skip
            generated = (out.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            image_b[result.change_mask] = generated[result.change_mask]  # outside: t1 bit for bit
    distractors = []
    if job.distractors:
        image_b, distractors = apply_distractors(image_b, job.distractors, rng)
    height, width = sem_a.shape
    record = {
        "events": [e.to_dict() for e in result.events],
        "captions": change_captions(result.events, width, height, rng),
        "qa": change_qa(result.events, width, height, job.gsd),
        "distractors": distractors,
        "changed_fraction": float(result.change_mask.mean()),
        "provenance": {
            **sample_record(
                "change_pair",
                pipe,
                job.model,
                job_seed=job.seed,
                index=index,
                steps=job.steps,
                guidance=job.guidance,
                prompt=job.prompt,
                negative_prompt=None,
                metadata=job.metadata,
            ),
            "mode": job.mode,
            "source": str(source),
            "source_sha256": sha256_file(source),
            "gsd": job.gsd,
        },  # fmt: skip
    }
    return {"A": image_a, "B": image_b, "sem_a": sem_a, "sem_b": result.semantic, "change": result.change_mask,
            "record": record, "georef": georef}  # fmt: skip


def run_change_pairs(job: ChangePairJob, pipe: RSControlledPipeline | None = None) -> list[Path]:
    job.validate()
    out = Path(job.out)
    if out.exists() and any((out / "changes").glob("*.json")) and not job.overwrite:
        raise FileExistsError(f"out={str(out)!r} already holds change pairs; pick an empty folder or pass --overwrite")
    sources = job.sources()
    if pipe is None:
        pipe = RSControlledPipeline.from_bundle(job.model)
        pipe.to(resolve_device(job.device))
    pipe.set_progress_bar_config(disable=True)
    if "mask" not in pipe.control_names:
        raise ValueError(f"--model {job.model}: change pairs need a bundle with a 'mask' control")
    written = []
    with progress(total=job.num_samples, desc="change pairs", unit="pair") as bar:
        for index in range(job.num_samples):
            pair = make_pair(job, pipe, index, sources[index % len(sources)])
            written.append(write_change_pair(out, f"{index:06d}", pair["A"], pair["B"], pair["sem_a"], pair["sem_b"],
                                             pair["change"], pair["record"], layout=job.layout,
                                             georef=pair["georef"]))  # fmt: skip
            bar.update(1)
    return written


__all__ = ["ChangeError", "ChangePairJob", "make_pair", "run_change_pairs"]
