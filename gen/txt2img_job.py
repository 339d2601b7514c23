"""The text(+metadata)-to-image job: batches of samples through the pipeline, then to the writer.

Sample ``i`` is generated with its own generator seeded by ``sample_seed(seed, i)``, so its image is
the same whatever the batch size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conditions.metadata import Metadata
from core.device import resolve_device
from core.progress import progress
from core.seeding import sample_generators
from gen.provenance import sample_record
from pipelines.text2img import RSText2ImagePipeline
from synth_datasets.geotiff import georeference_from_point
from synth_datasets.sample_writer import FORMATS, WrittenSample, write_image_sample

logger = logging.getLogger(__name__)


@dataclass
class Txt2ImgJob:
    """Everything one ``rsgen txt2img`` run needs."""

    model: str
    prompt: str
    out: Path
    negative_prompt: str | None = None
    metadata: Metadata = field(default_factory=Metadata)
    num_samples: int = 1
    batch_size: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    fmt: str = "png"
    allow_pickle: bool = False
    device: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples={self.num_samples}: expected at least 1 (-n)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size}: expected at least 1 (--batch-size)")
        if self.fmt not in FORMATS:
            raise ValueError(f"format={self.fmt!r}: expected one of {FORMATS}")
        md = self.metadata
        if self.fmt == "geotiff" and (md.lat is None or md.lon is None or md.gsd is None):
            raise ValueError(
                "format='geotiff' needs --lat, --lon and --gsd to place the image on the map; give all three "
                "or use --format png"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device={self.device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")


def load_pipeline(model: str, *, allow_pickle: bool = False, device: str = "auto") -> RSText2ImagePipeline:
    """Load a bundle onto ``device``; on CUDA use xformers attention when it is installed (else SDPA)."""
    pipe = RSText2ImagePipeline.from_bundle(model, allow_pickle=allow_pickle)
    target = resolve_device(device)
    pipe.to(target)
    if target.type == "cuda":
        try:
            pipe.enable_xformers_memory_efficient_attention()
            logger.info("using xformers attention")
        except Exception as err:  # xformers missing or incompatible: SDPA is the default and is fine
            logger.info("xformers not used (%s); using PyTorch SDPA attention", err)
    if pipe.model_card.smoke_test:
        logger.warning("model %s has random weights: its images are noise (smoke test only)", model)
    return pipe


def provenance(job: Txt2ImgJob, pipe: RSText2ImagePipeline, index: int, height: int, width: int) -> dict[str, Any]:
    """The sidecar record of sample ``index``: enough to regenerate it exactly."""
    return {
        **sample_record(
            "txt2img",
            pipe,
            job.model,
            job_seed=job.seed,
            index=index,
            steps=job.steps,
            guidance=job.guidance,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            metadata=job.metadata,
        ),  # fmt: skip
        "metadata_conditioned": pipe.has_metadata,
        "height": height,
        "width": width,
    }


def run_txt2img(job: Txt2ImgJob, pipe: RSText2ImagePipeline | None = None) -> list[WrittenSample]:
    """Generate ``job.num_samples`` images in batches and write each with its sidecar."""
    job.validate()
    out = Path(job.out)
    existing = sorted(out.glob("*.json")) if out.exists() else []
    if existing and not job.overwrite:
        raise FileExistsError(
            f"out={str(out)!r} already holds {len(existing)} sample sidecar(s); "
            "pick an empty folder or pass --overwrite"
        )
    if pipe is None:
        pipe = load_pipeline(job.model, allow_pickle=job.allow_pickle, device=job.device)
    pipe.set_progress_bar_config(disable=True)
    height, width = pipe.default_size
    height = job.height or height
    width = job.width or width
    md = job.metadata
    georef = None
    if job.fmt == "geotiff":
        georef = georeference_from_point(md.lat, md.lon, md.gsd, height, width)
    out.mkdir(parents=True, exist_ok=True)
    digits = max(6, len(str(job.num_samples - 1)))
    written: list[WrittenSample] = []
    bar = progress(total=job.num_samples, desc="txt2img", unit="img")
    try:
        for start in range(0, job.num_samples, job.batch_size):
            indices = list(range(start, min(start + job.batch_size, job.num_samples)))
            result = pipe(
                prompt=[job.prompt] * len(indices),
                negative_prompt=job.negative_prompt,
                metadata=[md] * len(indices) if pipe.has_metadata else None,
                height=height,
                width=width,
                num_inference_steps=job.steps,
                guidance_scale=job.guidance,
                generator=sample_generators(job.seed, indices),
                output_type="np",
            )
            for index, image in zip(indices, result.images):
                record = provenance(job, pipe, index, height, width)
                stem = f"{index:0{digits}d}"
                written.append(write_image_sample(out, stem, image, record, fmt=job.fmt, georef=georef))
            bar.update(len(indices))
    finally:
        bar.close()
    logger.info("wrote %d samples to %s", len(written), out)
    return written
