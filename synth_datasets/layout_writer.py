"""Write a controlled-generation sample: image + the labels its layout generated + sidecar.

Files for sample ``stem`` (``.tif`` instead of ``.png`` when georeferenced):

* ``{stem}.png`` — the generated image;
* ``{stem}_semantic.png`` — canonical class ids (uint8, 255 = ignore);
* ``{stem}_instances.png`` — instance ids (uint16, 0 = none), when the layout has objects;
* ``{stem}_objects.json`` — one record per object: instance id, class, pixel bbox (xmin, ymin,
  xmax, ymax), oriented box corners, area in m², pixel count, source feature;
* ``{stem}.json`` — the sidecar, written last, with provenance and every file's sha256.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from conditions.vectors import LayoutObject
from core.atomic import atomic_write_bytes, atomic_write_text
from core.hashing import sha256_file
from synth_datasets.geotiff import GeoReference, write_geotiff
from synth_datasets.sample_writer import WrittenSample, write_image_sample


def _write_label(path: Path, array: np.ndarray, georef: GeoReference | None) -> Path:
    if georef is not None:
        return write_geotiff(path.with_suffix(".tif"), array, georef)
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return atomic_write_bytes(path.with_suffix(".png"), buffer.getvalue())


def write_layout_labels(
    out_dir: str | os.PathLike,
    stem: str,
    semantic: np.ndarray,
    *,
    instances: np.ndarray | None = None,
    objects: list[LayoutObject] | None = None,
    georef: GeoReference | None = None,
) -> dict[str, dict[str, Any]]:
    """Write the label files of sample ``stem``; returns their names and sha256 for the sidecar."""
    out_dir = Path(out_dir)
    labels: dict[str, dict[str, Any]] = {}
    path = _write_label(out_dir / f"{stem}_semantic", semantic.astype(np.uint8), georef)
    labels["semantic"] = {"file": path.name, "sha256": sha256_file(path), "scheme": "canonical"}
    if instances is not None:
        if int(instances.max(initial=0)) > 65535:
            raise ValueError("instances: more than 65535 objects do not fit a uint16 instance mask")
        path = _write_label(out_dir / f"{stem}_instances", instances.astype(np.uint16), georef)
        labels["instances"] = {"file": path.name, "sha256": sha256_file(path)}
    if objects is not None:
        text = json.dumps([asdict(o) for o in objects], indent=1, default=str) + "\n"
        path = atomic_write_text(out_dir / f"{stem}_objects.json", text)
        labels["objects"] = {"file": path.name, "sha256": sha256_file(path), "count": len(objects)}
    return labels


def write_layout_sample(
    out_dir: str | os.PathLike,
    stem: str,
    image: np.ndarray,
    semantic: np.ndarray,
    provenance: dict[str, Any],
    *,
    instances: np.ndarray | None = None,
    objects: list[LayoutObject] | None = None,
    georef: GeoReference | None = None,
    cog: bool = False,
) -> WrittenSample:
    """Write image, labels and sidecar; ``image`` (H, W, 3), ``semantic``/``instances`` (H, W)."""
    if semantic.shape != image.shape[:2]:
        raise ValueError(f"semantic: shape {semantic.shape} must equal the image's {image.shape[:2]}")
    labels = write_layout_labels(out_dir, stem, semantic, instances=instances, objects=objects, georef=georef)
    fmt = "geotiff" if georef is not None else "png"
    return write_image_sample(out_dir, stem, image, {**provenance, "labels": labels}, fmt=fmt, georef=georef, cog=cog)
