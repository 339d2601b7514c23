"""The provenance every job records: rsgen and library versions, the model and its weights' hash,
the pipeline and its scheduler configuration, and when."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from core.seeding import sample_seed
from gen import __version__


def sample_record(
    task: str,
    pipe: Any,
    model_source: str,
    *,
    job_seed: int,
    index: int,
    steps: int,
    guidance: float,
    prompt: str,
    negative_prompt: str | None,
    metadata: Any,
) -> dict[str, Any]:
    """``base_record`` plus what regenerates one sample: its index and seed, steps, guidance, text, metadata."""
    return {
        **base_record(task, pipe, model_source),
        "sample_index": index,
        "sample_seed": sample_seed(job_seed, index),
        "job_seed": job_seed,
        "steps": steps,
        "guidance_scale": guidance,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "metadata": metadata.to_dict(),
    }


def base_record(task: str, pipe: Any, model_source: str) -> dict[str, Any]:
    """Fields shared by the sidecars of every task; jobs add their own inputs and seeds."""
    import diffusers
    import torch
    import transformers

    card = pipe.model_card
    return {
        "rsgen_version": __version__,
        "task": task,
        "model": {
            "source": str(model_source),
            "name": card.name,
            "weights_sha256": pipe.weights_sha256,
            "smoke_test": card.smoke_test,
        },
        "pipeline": type(pipe).__name__,
        "sampling": {  # the pipeline's defaults from the model card (or set by the job)
            name: getattr(pipe, name) for name in ("guide_controls", "layout_strength") if hasattr(pipe, name)
        },
        "scheduler": json.loads(pipe.scheduler.to_json_string()),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
        "device": str(pipe.device),
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
