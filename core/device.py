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
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{argument}={device!r}: CUDA is not available on this machine; use cpu")
    return torch.device(device)


def default_threads() -> int:
    """torch threads when a job does not fix them: every core of this machine, the same number in every
    process of a multi-process run, so a sample's bytes do not depend on how many processes ran."""
    return os.cpu_count() or 1
