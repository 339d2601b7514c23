"""Overlapping tiles and their seam-free blending, shared by tiled SR and large-scene generation.

``tile_starts`` places fixed-size tiles over a length with at least ``overlap`` overlap (the last
tile is shifted back to end at the border). ``ramp`` gives 1-D cross-fade weights. ``StripBlender``
accumulates weighted tiles of one tile row plus the overlap carried from the row above, and hands
finished rows to a callback, so a raster of any height is blended with memory for one strip.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` overlap."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def ramp(size: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D blend weights: rising over ``overlap`` pixels on a side with a neighbour, 1 elsewhere."""
    weight = np.ones(size, dtype=np.float32)
    if overlap > 0:
        rising = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        if ramp_start:
            weight[:overlap] = np.minimum(weight[:overlap], rising)
        if ramp_end:
            weight[size - overlap :] = np.minimum(weight[size - overlap :], rising[::-1])
    return weight


class StripBlender:
    """Accumulates weighted tiles of one tile row (plus the overlap carried from the row above) and
    hands finished rows to ``write(rows, row_off)``."""

    def __init__(
        self, bands: int, height: int, width: int, strip_height: int,
        write: Callable[[np.ndarray, np.ndarray, int], None],
    ) -> None:  # fmt: skip
        self.height, self.width = height, width
        self.acc = np.zeros((bands, strip_height, width), dtype=np.float32)  # (bands, strip, W)
        self.weight = np.zeros((strip_height, width), dtype=np.float32)  # (strip, W)
        self.valid = np.ones((strip_height, width), dtype=bool)  # (strip, W)
        self.row0 = 0  # output row of the strip's first row
        self.write = write

    def add(self, tile: np.ndarray, weight: np.ndarray, valid: np.ndarray, row: int, col: int) -> None:
        h, w = weight.shape
        r = row - self.row0
        self.acc[:, r : r + h, col : col + w] += tile * weight  # (bands, h, w)
        self.weight[r : r + h, col : col + w] += weight
        self.valid[r : r + h, col : col + w] &= valid

    def flush_until(self, row: int) -> None:
        n = min(row, self.height) - self.row0
        if n <= 0:
            return
        rows = self.acc[:, :n] / self.weight[:n]  # (bands, n, W)
        self.write(rows, self.valid[:n], self.row0)
        for buffer, fill in ((self.acc, 0.0), (self.weight, 0.0), (self.valid, True)):
            buffer[..., :-n, :] = buffer[..., n:, :].copy()
            buffer[..., -n:, :] = fill
        self.row0 += n
