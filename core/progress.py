"""The one progress-bar helper of rsgen: tqdm on the main process, silent on the others."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def is_main_process() -> bool:
    """True unless launched as a non-zero rank (torchrun / accelerate set RANK)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    unit: str = "it",
    disable: bool | None = None,
) -> tqdm:
    """A tqdm bar; disabled off the main process or when ``RSGEN_NO_PROGRESS`` is set."""
    if disable is None:
        disable = not is_main_process() or bool(os.environ.get("RSGEN_NO_PROGRESS"))
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
