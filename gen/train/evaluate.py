"""How well generated images follow their mask: nearest-class-mean colour accuracy against a rotated-mask chance.

Each pixel is classified by the nearest class-mean colour, with the means taken from the same image under
the labels; the balanced accuracy is high when the colours separate the labelled regions. Comparing with
the same measure under the mask rotated by 90° and 180° (same class areas, wrong places) gives chance.
Used by ``tests/test_default_model.py`` and ``bench/eval_mask_following.py``.
"""

from __future__ import annotations

import numpy as np

from conditions.palettes import CANONICAL

_ID = {c.name: c.id for c in CANONICAL.classes}
# Classes compared; vegetation merges the green classes (models and LoveDA both mix them at 256 px).
GROUPS: dict[str, list[int]] = {
    "building": [_ID["building"]], "road": [_ID["road"]], "water": [_ID["water"]],
    "vegetation": [_ID["tree"], _ID["low_vegetation"]], "agriculture": [_ID["agriculture"]],
}  # fmt: skip


def grouped(mask: np.ndarray) -> np.ndarray:
    """(H, W) canonical ids → (H, W) group index into :data:`GROUPS`, -1 elsewhere."""
    out = np.full(mask.shape, -1, np.int64)
    for k, ids in enumerate(GROUPS.values()):
        out[np.isin(mask, ids)] = k
    return out


def nearest_mean_accuracy(image: np.ndarray, labels: np.ndarray, min_pixels: int = 50) -> float:
    """Balanced accuracy of nearest-class-mean colour classification of ``image`` (H, W, 3) under ``labels``."""
    pixels, y = image.reshape(-1, 3).astype(np.float64), labels.ravel()
    classes = [k for k in np.unique(y) if k >= 0 and (y == k).sum() > min_pixels]
    means = np.stack([pixels[y == k].mean(0) for k in classes])  # (K, 3)
    pred = np.asarray(classes)[np.argmin(((pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    return float(np.mean([(pred[y == k] == k).mean() for k in classes]))


def mask_following(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(accuracy under the mask, chance = the best of the mask rotated by 90° and 180°)."""
    labels = grouped(mask)
    chance = max(nearest_mean_accuracy(image, np.rot90(labels, k)) for k in (1, 2))
    return nearest_mean_accuracy(image, labels), chance


__all__ = ["GROUPS", "grouped", "mask_following", "nearest_mean_accuracy"]
