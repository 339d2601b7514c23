"""Write one generated image with its labels and its JSON provenance sidecar.

Files for sample ``stem`` (``.tif`` instead of ``.png`` when georeferenced):

* ``{stem}.png`` — the image;
* ``{stem}_semantic.png`` — canonical class ids (uint8, 255 = ignore), when the sample has labels;
* ``{stem}_instances.png`` — instance ids (uint16, 0 = none), when the layout has objects;
* ``{stem}_objects.json`` — one record per object: instance id, class, pixel bbox (xmin, ymin,
  xmax, ymax), oriented box corners, area in m², pixel count, source feature;
* ``{stem}.json`` — the sidecar, written last, with the provenance and every file's sha256.

Every write is atomic, so a sample whose sidecar exists is complete; a killed run leaves at most some
files without a sidecar, never a truncated file.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from rasterio.windows import Window

from core.atomic import atomic_write_bytes, atomic_write_text
from core.hashing import sha256_file
from synth_datasets.geotiff import RGB_DESCRIPTIONS, GeoReference, geotiff_window_writer, write_geotiff
from synth_datasets.samples import ImageSample, Labels, StreamedImage


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


def write_png(path: Path, array: np.ndarray) -> Path:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def write_image_sample(out_dir: str | os.PathLike, stem: str, sample: ImageSample) -> WrittenSample:
    """Write the labels, then the image, then ``{stem}.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    record = dict(sample.record)
    shape = sample.image.shape
    if sample.labels is not None:
        if sample.labels.semantic.shape != tuple(shape[:2]):
            raise ValueError(f"semantic: shape {sample.labels.semantic.shape} must equal the image's {shape[:2]}")
        record["labels"] = write_labels(out_dir, stem, sample.labels, sample.georef)
    suffix = ".tif" if sample.georef is not None else ".png"
    image_path = out_dir / f"{stem}{suffix}"
    stable = {k: v for k, v in record.items() if k != "created"}  # no timestamp inside the image
    if isinstance(sample.image, StreamedImage):
        shape = _write_streamed(image_path, sample.image, sample.georef, stable)
    else:
        array = _as_uint8(sample.image)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"image: expected (H, W, 3), got shape {array.shape}")
        shape = array.shape
        if sample.georef is None:
            write_png(image_path, array)
        else:
            tags = {"rsgen_provenance": stable}
            write_geotiff(image_path, array, sample.georef, descriptions=RGB_DESCRIPTIONS, tags=tags, cog=sample.cog)
    return write_sidecar(out_dir, stem, image_path, record, tuple(shape), sample.georef)


def _write_streamed(
    path: Path, image: StreamedImage, georef: GeoReference | None, record: dict[str, Any]
) -> tuple[int, ...]:
    """A GeoTIFF written strip by strip (peak memory: one strip), or a PNG assembled in uint8."""
    if georef is None:
        if image.dtype != "uint8":
            raise ValueError(f"image: a PNG needs uint8 pixels, got {image.dtype}; georeference it to get a GeoTIFF")
        canvas = np.zeros((image.count, image.height, image.width), dtype=np.uint8)  # (C, H, W)

        def fill(values: np.ndarray, row_off: int) -> None:
            canvas[:, row_off : row_off + values.shape[1]] = values

        image.produce(fill)
        write_png(path, np.moveaxis(canvas, 0, -1))
        return image.shape
    with geotiff_window_writer(
        path, width=image.width, height=image.height, count=image.count, dtype=image.dtype, crs=georef.crs,
        transform=georef.transform, nodata=image.nodata, descriptions=image.descriptions,
        tags={"rsgen_provenance": record},
    ) as dst:  # fmt: skip

        def write(values: np.ndarray, row_off: int) -> None:
            dst.write(values, window=Window(0, row_off, image.width, values.shape[1]))

        image.produce(write)
    return image.shape


def _write_label(path: Path, array: np.ndarray, georef: GeoReference | None) -> Path:
    if georef is not None:
        return write_geotiff(path.with_suffix(".tif"), array, georef)
    return write_png(path.with_suffix(".png"), array)


def write_labels(out_dir: Path, stem: str, labels: Labels, georef: GeoReference | None) -> dict[str, dict[str, Any]]:
    """Write the label files of sample ``stem``; returns their names and sha256 for the sidecar."""
    written: dict[str, dict[str, Any]] = {}
    path = _write_label(out_dir / f"{stem}_semantic", labels.semantic.astype(np.uint8), georef)
    written["semantic"] = {"file": path.name, "sha256": sha256_file(path), "scheme": "canonical"}
    if labels.instances is not None:
        if int(labels.instances.max(initial=0)) > 65535:
            raise ValueError("instances: more than 65535 objects do not fit a uint16 instance mask")
        path = _write_label(out_dir / f"{stem}_instances", labels.instances.astype(np.uint16), georef)
        written["instances"] = {"file": path.name, "sha256": sha256_file(path)}
    if labels.objects is not None:
        text = json.dumps([asdict(o) for o in labels.objects], indent=1, default=str) + "\n"
        path = atomic_write_text(out_dir / f"{stem}_objects.json", text)
        written["objects"] = {"file": path.name, "sha256": sha256_file(path), "count": len(labels.objects)}
    return written


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
