"""The super-resolution job: LR raster (+ reference) → georeferenced HR GeoTIFF, tile by tile.

The output grid is the LR grid refined by ``scale`` (same CRS and bounds). It is cut into
overlapping tiles of ``tile`` pixels. For each tile the LR (and the reference, warped to the output
grid) is read through rasterio windows, resampled on the fly, super-resolved by the pipeline, and
blended into a strip buffer with weights that ramp over the overlap on sides that have a
neighbour (weight 1 at the raster border, so a raster that fits one tile is exactly the untiled
result). Finished rows are written through rasterio windows. Peak memory is one tile's model work
plus a strip of ``tile × width`` pixels: it grows with the raster's width, never with its area.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from conditions.raster_input import (
    OutputGrid,
    Radiometry,
    RasterInputError,
    RasterSource,
    check_reference_overlap,
    open_raster,
    parse_bands,
)
from core.atomic import atomic_write_text
from core.device import resolve_device
from core.hashing import sha256_file
from core.progress import progress
from core.seeding import sample_generators
from gen.provenance import base_record
from pipelines.super_resolution import RSSuperResolutionPipeline
from pipelines.tiling import StripBlender, ramp, tile_starts
from synth_datasets.geotiff import geotiff_window_writer

logger = logging.getLogger(__name__)


@dataclass
class SRJob:
    """Everything one ``rsgen sr`` run needs."""

    model: str
    lr: Path
    out: Path
    scale: float
    bands: str | None = None  # e.g. "4,3,2"; default: the first bands the model takes
    ref: Path | None = None
    ref_bands: str | None = None
    ref_strength: float = 0.5
    ref_strength_map: Path | None = None  # raster on the LR footprint, values >= 0
    prompt: str = ""
    tile: int | None = None  # default: the model's native size
    overlap: int = 32
    steps: int = 20
    guidance: float = 1.0
    strength: float | None = None  # None: the model card's sr_strength
    lr_consistency: bool = True  # keep the LR below its resolution; the model adds only finer detail
    seed: int = 0
    radiometry: str = "auto"
    allow_pickle: bool = False
    device: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        if not isinstance(self.scale, int | float) or not math.isfinite(self.scale) or self.scale < 1:
            raise ValueError(f"scale={self.scale!r}: expected a factor >= 1 (e.g. 2, 4, 6, 10)")
        if self.ref_strength < 0 or not math.isfinite(self.ref_strength):
            raise ValueError(f"ref_strength={self.ref_strength!r}: expected a number >= 0 (0 ignores the reference)")
        if self.strength is not None and not 0 < self.strength <= 1:
            raise ValueError(f"strength={self.strength!r}: expected a number in (0, 1] (1 = start from pure noise)")
        if self.overlap < 0:
            raise ValueError(f"overlap={self.overlap}: expected >= 0 pixels")
        if Path(self.out).suffix.lower() not in (".tif", ".tiff"):
            raise ValueError(f"out={str(self.out)!r}: the SR output is a GeoTIFF; name it *.tif")
        if Path(self.out).exists() and not self.overwrite:
            raise FileExistsError(f"out={str(self.out)!r} exists; pass --overwrite to replace it")
        if self.ref_strength_map is not None and self.ref is None:
            raise ValueError("ref_strength_map needs a reference (--ref)")

    def strength_for(self, pipe: RSSuperResolutionPipeline) -> float:
        """The sampling strength this job runs with: ``strength``, or the model card's ``sr_strength``."""
        return self.strength if self.strength is not None else pipe.model_card.sr_strength


def _next_to(nodata: float, dtype: np.dtype) -> float:
    """The value closest to ``nodata`` that is not ``nodata`` (for valid pixels that hit it)."""
    if np.issubdtype(dtype, np.integer):
        return nodata + 1 if nodata < np.iinfo(dtype).max else nodata - 1
    return float(np.nextafter(np.array(nodata, dtype=dtype), np.array(np.inf, dtype=dtype)))


def provenance(job: SRJob, pipe: RSSuperResolutionPipeline, grid: OutputGrid, **extra: Any) -> dict[str, Any]:
    return {
        **base_record("super_resolution", pipe, job.model),
        "lr": {"path": str(job.lr), "sha256": sha256_file(job.lr)},
        "reference": {"path": str(job.ref), "sha256": sha256_file(job.ref)} if job.ref else None,
        "reference_strength": job.ref_strength,
        "reference_strength_map": str(job.ref_strength_map) if job.ref_strength_map else None,
        "scale": job.scale,
        "prompt": job.prompt,
        "steps": job.steps,
        "guidance_scale": job.guidance,
        "strength": job.strength_for(pipe),
        "lr_consistency": job.lr_consistency,
        "job_seed": job.seed,
        "tile_seed": "sample_seed(job_seed, tile_index), tiles in row-major order",
        "output": {
            "width": grid.width,
            "height": grid.height,
            "crs": grid.crs.to_string() if grid.crs else None,
            "transform": list(grid.transform)[:6],
        },
        **extra,
    }


def run_sr(job: SRJob, pipe: RSSuperResolutionPipeline | None = None) -> Path:
    """Super-resolve ``job.lr`` into ``job.out`` (GeoTIFF) and ``job.out``'s ``.json`` sidecar."""
    job.validate()
    lr_ds = open_raster(job.lr, argument="--lr")
    datasets = [lr_ds]
    sources: list[RasterSource] = []
    try:
        if pipe is None:
            pipe = RSSuperResolutionPipeline.from_bundle(job.model, allow_pickle=job.allow_pickle)
            pipe.to(resolve_device(job.device))
        pipe.set_progress_bar_config(disable=True)
        tile = job.tile or pipe.model_card.native_size[0]
        multiple = pipe.size_multiple
        if tile % multiple or tile <= 0:
            raise ValueError(f"tile={tile}: expected a positive multiple of {multiple} for this model")
        if job.overlap >= tile // 2 + 1:
            raise ValueError(f"overlap={job.overlap}: must be at most half the tile ({tile // 2})")
        bands = parse_bands(job.bands, lr_ds.count)
        if len(bands) != pipe.num_bands:
            raise RasterInputError(
                f"--bands={job.bands or ','.join(map(str, bands))!r}: this model takes {pipe.num_bands} band(s) "
                f"({', '.join(pipe.model_card.bands)}); pass exactly that many band numbers"
            )
        if lr_ds.crs is None:
            logger.warning("%s has no CRS: the output will have no CRS either", job.lr)
        grid = OutputGrid.scaled(lr_ds, job.scale)
        radiometry = Radiometry.infer(lr_ds.dtypes[bands[0] - 1], job.radiometry)
        lr = RasterSource(lr_ds, bands, grid, radiometry=radiometry, resampling=Resampling.cubic)
        sources.append(lr)
        ref = strength_map = None
        if job.ref is not None:
            ref_ds = open_raster(job.ref, argument="--ref")
            datasets.append(ref_ds)
            warp = check_reference_overlap(lr_ds, ref_ds)
            ref_bands = parse_bands(job.ref_bands, ref_ds.count, argument="--ref-bands")
            if len(ref_bands) != pipe.num_bands:
                raise RasterInputError(f"--ref-bands: need {pipe.num_bands} band(s), got {ref_bands}")
            ref_radiometry = Radiometry.infer(ref_ds.dtypes[ref_bands[0] - 1])
            ref = RasterSource(ref_ds, ref_bands, grid, radiometry=ref_radiometry, aligned=not warp)
            sources.append(ref)
            if job.ref_strength_map is not None:
                map_ds = open_raster(job.ref_strength_map, argument="--ref-strength-map")
                datasets.append(map_ds)
                strength_map = RasterSource(
                    map_ds, [1], grid, radiometry=Radiometry("float", map_ds.dtypes[0]), resampling=Resampling.bilinear
                )
                sources.append(strength_map)

        rows = tile_starts(grid.height, tile, job.overlap)
        cols = tile_starts(grid.width, tile, job.overlap)
        tile_h, tile_w = (min(tile, math.ceil(n / multiple) * multiple) for n in (grid.height, grid.width))
        nodata = lr_ds.nodata
        descriptions = lr.descriptions
        record = provenance(
            job, pipe, grid, bands=bands, radiometry=radiometry.kind, tile=tile, overlap=job.overlap,
            tiles=len(rows) * len(cols),
        )  # fmt: skip
        with geotiff_window_writer(
            job.out, width=grid.width, height=grid.height, count=len(bands), dtype=radiometry.dtype,
            crs=grid.crs, transform=grid.transform, nodata=nodata, descriptions=descriptions,
            tags={"rsgen_provenance": record},
        ) as dst:  # fmt: skip

            def write(rows_unit: np.ndarray, valid: np.ndarray, row_off: int) -> None:
                values = radiometry.from_unit(rows_unit)  # (bands, n, W) in the LR dtype
                if nodata is not None:
                    # A valid pixel must not read as nodata: move it to the nearest other value.
                    collide = (values == nodata) & valid[None]
                    if collide.any():
                        values[collide] = _next_to(nodata, values.dtype)
                    values[:, ~valid] = nodata
                dst.write(values, window=Window(0, row_off, grid.width, values.shape[1]))

            blender = StripBlender(len(bands), grid.height, grid.width, tile_h, write)
            bar = progress(total=len(rows) * len(cols), desc="sr tiles", unit="tile")
            index = 0
            for row in rows:
                blender.flush_until(row)
                for col in cols:
                    window = Window(col, row, tile_w, tile_h)
                    lr_tile, lr_valid = lr.read_on_grid(window)  # (bands, th, tw), (th, tw)
                    image = torch.from_numpy(lr_tile)[None]  # (1, bands, th, tw)
                    reference, strength = None, job.ref_strength
                    if ref is not None:
                        ref_tile, ref_valid = ref.read_on_grid(window)
                        reference = torch.from_numpy(ref_tile)[None]
                        base = np.full(ref_valid.shape, job.ref_strength, dtype=np.float32)
                        if strength_map is not None:
                            base = strength_map.read_raw(window)[0].astype(np.float32)
                        strength = torch.from_numpy(np.where(ref_valid, base, 0.0).astype(np.float32))[None, None]
                    result = pipe(
                        image,
                        reference=reference,
                        reference_strength=strength,
                        prompt=job.prompt,
                        num_inference_steps=job.steps,
                        guidance_scale=job.guidance,
                        strength=job.strength_for(pipe),
                        lr_scale=job.scale if job.lr_consistency else None,
                        generator=sample_generators(job.seed, [index]),
                        output_type="pt",
                    ).images[0]  # fmt: skip  (bands, th, tw)
                    h = min(tile_h, grid.height - row)
                    w = min(tile_w, grid.width - col)
                    weight = np.outer(
                        ramp(h, job.overlap, row > 0, row + h < grid.height),
                        ramp(w, job.overlap, col > 0, col + w < grid.width),
                    )  # (h, w)
                    blender.add(result.numpy()[:, :h, :w], weight, lr_valid[:h, :w], row, col)
                    index += 1
                    bar.update()
            blender.flush_until(grid.height)
            bar.close()
        record.update(file=Path(job.out).name, sha256=sha256_file(job.out))
        sidecar = Path(job.out).with_suffix(".json")
        atomic_write_text(sidecar, json.dumps(record, indent=2, sort_keys=True) + "\n")
        logger.info("wrote %s (%dx%d, %d tiles) and %s", job.out, grid.width, grid.height, index, sidecar.name)
        return Path(job.out)
    finally:
        for source in sources:
            source.close()
        for dataset in datasets:
            dataset.close()
