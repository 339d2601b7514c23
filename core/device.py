"""Resolve a ``--device`` / ``device:`` value to a ``torch.device``."""

from __future__ import annotations

import os

import torch

DEVICE_HELP = "auto (cuda if available), cpu or cuda[:N]"


def check_device(device: str, argument: str = "device") -> None:
    """Reject a device string that is neither 'auto', 'cpu' nor 'cuda[:N]'."""
    if device in ("auto", "cpu") or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        return
    raise ValueError(f"{argument}={device!r}: expected 'auto', 'cpu' or 'cuda[:N]'")


def resolve_device(device: str = "auto", argument: str = "device") -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without it is an error."""
    check_device(device, argument)
    if device == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{argument}={device!r}: CUDA is not available on this machine; use cpu")
    if device in ("auto", "cuda"):
        return torch.device("cuda", local_cuda_index(int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()))
    return torch.device(device)


def local_cuda_index(local_rank: int, device_count: int) -> int:
    """The GPU of local process ``local_rank`` when a job names no index: the processes of a multi-process run
    take the GPUs in turn (more processes than GPUs share them)."""
    return local_rank % max(1, device_count)


def default_threads() -> int:
    """torch threads when a job does not fix them: every core of this machine, the same number in every
    process of a multi-process run, so a sample's bytes do not depend on how many processes ran."""
    return os.cpu_count() or 1
