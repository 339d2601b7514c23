"""Write one generated image with its JSON provenance sidecar.

The image is written first, then the sidecar (which records the image's sha256). Both writes are
atomic, so a sample whose sidecar exists is complete; a killed run leaves at most an image without
a sidecar, never a truncated file.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from core.atomic import atomic_write_bytes, atomic_write_text
from core.hashing import sha256_file
from synth_datasets.geotiff import RGB_DESCRIPTIONS, GeoReference, write_geotiff

FORMATS = ("png", "geotiff")
SUFFIX = {"png": ".png", "geotiff": ".tif"}


@dataclass(frozen=True)
class WrittenSample:
    image: Path
    sidecar: Path


def _as_uint8(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("image: contains NaN or infinite values; the pipeline output is broken")
        return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    raise ValueError(f"image: expected uint8 or float in [0, 1], got dtype {array.dtype}")


def write_image_sample(
    out_dir: str | os.PathLike,
    stem: str,
    image: np.ndarray,
    provenance: dict[str, Any],
    *,
    fmt: str = "png",
    georef: GeoReference | None = None,
    cog: bool = False,
) -> WrittenSample:
    """Write ``{stem}.png|.tif`` and ``{stem}.json`` into ``out_dir``.

    ``image`` is (H, W, 3) uint8 or float in [0, 1]. ``fmt='geotiff'`` needs ``georef``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt={fmt!r}: expected one of {FORMATS}")
    if fmt == "geotiff" and georef is None:
        raise ValueError("fmt='geotiff' needs a georef (CRS and transform) to place the image")
    array = _as_uint8(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"image: expected (H, W, 3), got shape {array.shape}")
    out_dir = Path(out_dir)
    image_path = out_dir / f"{stem}{SUFFIX[fmt]}"
    if fmt == "png":
        buffer = io.BytesIO()
        PIL.Image.fromarray(array).save(buffer, format="PNG")
        atomic_write_bytes(image_path, buffer.getvalue())
    else:
        # No timestamp inside the image: the same sample always has the same bytes (it is in the sidecar).
        stable = {k: v for k, v in provenance.items() if k != "created"}
        write_geotiff(
            image_path, array, georef, descriptions=RGB_DESCRIPTIONS, tags={"rsgen_provenance": stable}, cog=cog
        )
    return write_sidecar(out_dir, stem, image_path, provenance, array.shape, georef)


def write_sidecar(
    out_dir: str | os.PathLike,
    stem: str,
    image_path: Path,
    provenance: dict[str, Any],
    shape: tuple[int, ...],
    georef: GeoReference | None = None,
) -> WrittenSample:
    """Write ``{stem}.json`` for an image already written: provenance + file name, sha256, shape, georef."""
    sidecar = dict(provenance)
    sidecar["file"] = image_path.name
    sidecar["sha256"] = sha256_file(image_path)
    sidecar["shape"] = list(shape)
    if georef is not None:
        sidecar["crs"] = georef.crs.to_string() if georef.crs is not None else None
        sidecar["transform"] = list(georef.transform)[:6]
        sidecar["bounds"] = list(georef.bounds(shape[0], shape[1]))
    sidecar_path = Path(out_dir) / f"{stem}.json"
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return WrittenSample(image=image_path, sidecar=sidecar_path)
