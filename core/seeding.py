"""Deterministic per-sample seeds: sample i's seed depends only on (job seed, i)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch


def sample_seed(job_seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a job seeded ``job_seed`` (sha256 of both; stable everywhere)."""
    if index < 0:
        raise ValueError(f"index={index}: sample indices start at 0")
    digest = hashlib.sha256(f"rsgen:{int(job_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def sample_generators(
    job_seed: int, indices: Iterable[int], device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One seeded ``torch.Generator`` per sample index, for a pipeline's ``generator=`` argument."""
    return [torch.Generator(device=device).manual_seed(sample_seed(job_seed, i)) for i in indices]
