"""Pseudo-change distractors: the nuisances that make change detectors fail, with no label change.

Each distractor takes an (H, W, 3) uint8 image and a seeded generator, draws its parameters from
documented ranges, and returns the new image and a record of what it did (for provenance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from conditions.change_events import ChangeError


def _to_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) / 255.0


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


def illumination(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Global gain 0.75–1.25 and gamma 0.8–1.25 (sun elevation, exposure)."""
    gain, gamma = float(rng.uniform(0.75, 1.25)), float(rng.uniform(0.8, 1.25))
    return _to_uint8(gain * _to_float(image) ** gamma), {"gain": gain, "gamma": gamma}


def colour_shift(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-channel gains 0.9–1.1 (sensor calibration, atmosphere)."""
    gains = rng.uniform(0.9, 1.1, size=3).astype(np.float32)
    return _to_uint8(_to_float(image) * gains), {"channel_gains": gains.tolist()}


def seasonal_tint(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Blend towards a season's tint (spring green, autumn brown, winter grey) by 5–25 %."""
    tints = {"spring": (0.35, 0.55, 0.25), "autumn": (0.55, 0.40, 0.20), "winter": (0.75, 0.75, 0.78)}
    season = str(rng.choice(list(tints)))
    amount = float(rng.uniform(0.05, 0.25))
    out = (1 - amount) * _to_float(image) + amount * np.array(tints[season], dtype=np.float32)
    return _to_uint8(out), {"season": season, "amount": amount}


def haze(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Thin haze: blend with airlight 0.7–0.9 by 10–35 %."""
    airlight, amount = float(rng.uniform(0.7, 0.9)), float(rng.uniform(0.1, 0.35))
    return _to_uint8((1 - amount) * _to_float(image) + amount * airlight), {"airlight": airlight, "amount": amount}


def blur(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Gaussian blur, sigma 0.5–1.5 px (defocus, different MTF)."""
    sigma = float(rng.uniform(0.5, 1.5))
    return cv2.GaussianBlur(image, (0, 0), sigma), {"sigma_px": sigma}


def misregistration(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Sub-pixel to 2-pixel shift and ±0.5° rotation about the centre (co-registration error)."""
    dx, dy, angle = float(rng.uniform(-2, 2)), float(rng.uniform(-2, 2)), float(rng.uniform(-0.5, 0.5))
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    matrix[:, 2] += (dx, dy)
    out = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out, {"dx_px": dx, "dy_px": dy, "angle_deg": angle}


def resampling(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """Down-sample by 1.3–2× and back (a different GSD / processing chain)."""
    factor = float(rng.uniform(1.3, 2.0))
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w / factor)), max(1, round(h / factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), {"factor": factor}


DISTRACTORS: dict[str, Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]] = {
    "illumination": illumination,
    "colour": colour_shift,
    "seasonal": seasonal_tint,
    "haze": haze,
    "blur": blur,
    "misregistration": misregistration,
    "resampling": resampling,
}


def check_distractors(names: Sequence[str]) -> list[str]:
    unknown = sorted(set(names) - set(DISTRACTORS))
    if unknown:
        raise ChangeError(f"distractors: unknown {unknown}; choose from {sorted(DISTRACTORS)}")
    return list(names)


def apply_distractors(
    image: np.ndarray, names: Sequence[str], rng: np.random.Generator
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Apply the named distractors in order; returns the image and one record per distractor."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ChangeError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    records = []
    for name in check_distractors(names):
        image, params = DISTRACTORS[name](image, rng)
        records.append({"name": name, **params})
    return image, records
