"""Task ``sr``: reference-guided super-resolution of an LR raster into a georeferenced HR GeoTIFF.

The output grid is the LR grid refined by ``scale`` (same CRS and bounds), cut into overlapping tiles
of ``tile`` pixels. For each tile the LR (and the reference, warped to the output grid) is read through
rasterio windows, super-resolved, and blended into a strip buffer with weights that ramp over the
overlap on sides that have a neighbour (weight 1 at the raster border, so a raster that fits one tile
is exactly the untiled result). Finished rows stream to the writer: peak memory is one tile's model
work plus a strip of ``tile × width`` pixels. Sample i super-resolves ``lr[i mod n]``; tile k of sample i
is seeded by ``sample_seed(sample_seed(seed, i), k)``.

Upscaler bundles (``rsgen model import sd-upscaler``) run at their one factor (``scale`` 4) and also see
each tile's LR at its own resolution (nearest, so its pixels exactly), noised to ``noise_level``.
"""

from __future__ import annotations

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
from core.hashing import sha256_file
from core.seeding import sample_generators, sample_seed
from gen.provenance import base_record
from gen.spec import (
    MISSING,
    FieldError,
    boolean,
    choice,
    integer,
    number,
    option,
    optional,
    path,
    spec_digest,
    string,
    string_list,
)
from gen.tasks.common import JobOptions, TaskBase, guidance_option, steps_option
from pipelines.tiling import StripBlender, ramp, tile_starts
from synth_datasets.geotiff import GeoReference
from synth_datasets.output_layouts import ImageFolder
from synth_datasets.samples import ImageSample, RowSink, StreamedImage

logger = logging.getLogger(__name__)


def _files(value: Any) -> tuple[str, ...]:
    files = string_list(non_empty=True)(value)
    for f in files:
        path("file")(f)
    return files


@dataclass(frozen=True, kw_only=True)
class SRSpec(JobOptions):
    task = "sr"
    lr: tuple[str, ...] = option(MISSING, "low-resolution raster(s), repeatable; sample i is lr[i mod n]", _files,
                                 repeat="list")  # fmt: skip
    scale: float = option(MISSING, "scale factor >= 1 (2, 4, 6, 8, 10, ...)", number(1), cli=float)
    bands: str | None = option(None, "1-based LR bands feeding the model, e.g. 4,3,2 (default: the first N)",
                               optional(string))  # fmt: skip
    ref: str | None = option(None, "high-resolution reference raster of the same place", optional(path("file")))
    ref_bands: str | None = option(None, "1-based reference bands (default: the first N)", optional(string))
    ref_strength: float = option(0.5, "trust in the reference, 0 = ignore", number(0), cli=float)
    ref_strength_map: str | None = option(None, "per-pixel strength raster covering the LR footprint",
                                          optional(path("file")))  # fmt: skip
    strength: float | None = option(
        None, "in (0, 1]: 1 samples from pure noise, lower starts from the noised LR (default: the model card's)",
        optional(number(0, 1, low_open=True)), cli=float,
    )  # fmt: skip
    lr_consistency: bool = option(
        True, "keep the LR below its resolution and add only finer detail (--no-lr-consistency: let the model "
        "change it)", boolean, boolean=True,
    )  # fmt: skip
    tile: int | None = option(None, "tile size in output pixels (default: the model's native size)",
                              optional(integer(8)), cli=int)  # fmt: skip
    overlap: int = option(32, "tile overlap in output pixels", integer(0), cli=int)
    radiometry: str = option(
        "auto", "value scaling: auto (by dtype), uint8 (/255), reflectance (/10000), float (already 0..1)",
        choice("auto", "uint8", "reflectance", "float"),
    )  # fmt: skip
    noise_level: int | None = option(
        None, "upscaler models (sd-upscaler) only: noise added to the LR before the model sees it, "
        "0..max_noise_level (default 20; more = more invented detail)", optional(integer(0)), cli=int,
    )  # fmt: skip
    prompt: str = option("", "optional text prompt", string)
    steps: int = steps_option()
    guidance: float = guidance_option(1.0)

    def validate(self) -> None:
        if self.ref_strength_map is not None and self.ref is None:
            raise FieldError("ref_strength_map", "needs a reference (ref)")
        if self.ref_bands is not None and self.ref is None:
            raise FieldError("ref_bands", "needs a reference (ref)")


@dataclass
class SRPlan:
    """What one SR sample writes: its output grid, bands, radiometry and record."""

    lr: Path
    grid: OutputGrid
    bands: list[int]
    radiometry: Radiometry
    nodata: float | None
    descriptions: list[str | None]
    tile: int
    record: dict[str, Any]


def _next_to(nodata: float, dtype: np.dtype) -> float:
    """The value closest to ``nodata`` that is not ``nodata`` (for valid pixels that hit it)."""
    if np.issubdtype(dtype, np.integer):
        return nodata + 1 if nodata < np.iinfo(dtype).max else nodata - 1
    return float(np.nextafter(np.array(nodata, dtype=dtype), np.array(np.inf, dtype=dtype)))


class SRTask(TaskBase):
    def __init__(self, spec: SRSpec) -> None:
        super().__init__(spec, ImageFolder(), 1)

    def load_model(self, pipe: Any = None) -> None:
        from pipelines.super_resolution import RSSuperResolutionPipeline

        self.attach(RSSuperResolutionPipeline, pipe)
        self._check_upscaler()
        self.tile = self.spec.tile or self.pipe.model_card.native_size[0]
        if self.tile % self.pipe.size_multiple:
            raise FieldError("tile", f"{self.tile}: expected a multiple of {self.pipe.size_multiple} for this model")
        if self.spec.overlap >= self.tile // 2 + 1:
            raise FieldError("overlap", f"{self.spec.overlap}: must be at most half the tile ({self.tile // 2})")

    def _check_upscaler(self) -> None:
        """An upscaler bundle runs at its one factor, on tiles that start on LR pixels; others take no noise level."""
        spec, pipe = self.spec, self.pipe
        factor = getattr(pipe, "fixed_scale", None)
        if factor is None:
            if spec.noise_level is not None:
                raise FieldError("noise_level", f"{spec.noise_level}: only upscaler models (sd-upscaler) take it")
            return
        if spec.scale != factor:
            raise FieldError(
                "scale", f"{spec.scale:g}: {pipe.model_card.name} is an upscaler that enlarges by exactly {factor} "
                f"(its VAE decodes {factor}x the LR-sized latent); pass scale {factor}",
            )  # fmt: skip
        if spec.overlap % factor:
            raise FieldError("overlap", f"{spec.overlap}: an ×{factor} upscaler needs a multiple of {factor}")
        high = pipe.config.max_noise_level
        if spec.noise_level is not None and spec.noise_level > high:
            raise FieldError("noise_level", f"{spec.noise_level}: expected 0..{high} (the model's max_noise_level)")

    def strength(self) -> float:
        """The sampling strength: ``strength``, or the model card's ``sr_strength``."""
        return self.spec.strength if self.spec.strength is not None else self.pipe.model_card.sr_strength

    def noise_level(self) -> int | None:
        """The noise level an upscaler bundle runs at (the spec's, else the pipeline's default); None for others."""
        if getattr(self.pipe, "fixed_scale", None) is None:
            return None
        from pipelines.super_resolution.pipeline_rs_sr import DEFAULT_NOISE_LEVEL

        return self.spec.noise_level if self.spec.noise_level is not None else DEFAULT_NOISE_LEVEL

    def describe(self, index: int) -> dict[str, Any]:
        return {"lr": self.spec.lr[index % len(self.spec.lr)], "prompt": self.spec.prompt}

    def samples(self, indices: list[int]) -> list[ImageSample]:
        return [self.sample(index) for index in indices]

    def sample(self, index: int) -> ImageSample:
        plan = self.plan(index)
        grid = plan.grid
        image = StreamedImage(grid.height, grid.width, len(plan.bands), plan.radiometry.dtype,
                              lambda sink: self.produce(index, plan, sink), plan.descriptions, plan.nodata)  # fmt: skip
        return ImageSample(image, plan.record, GeoReference(grid.crs, grid.transform))

    def plan(self, index: int) -> SRPlan:
        spec, pipe = self.spec, self.pipe
        lr_path = Path(spec.lr[index % len(spec.lr)])
        with open_raster(lr_path, argument="lr") as lr_ds:
            bands = parse_bands(spec.bands, lr_ds.count, argument="bands")
            if len(bands) != pipe.num_bands:
                raise RasterInputError(
                    f"bands={spec.bands or ','.join(map(str, bands))!r}: this model takes {pipe.num_bands} band(s) "
                    f"({', '.join(pipe.model_card.bands)}); pass exactly that many band numbers"
                )
            grid = OutputGrid.scaled(lr_ds, spec.scale)
            radiometry = Radiometry.infer(lr_ds.dtypes[bands[0] - 1], spec.radiometry)
            descriptions = [lr_ds.descriptions[b - 1] for b in bands]
            nodata = lr_ds.nodata
            if lr_ds.crs is None:
                logger.warning("%s has no CRS: the output will have no CRS either", lr_path)
        rows, cols = (len(tile_starts(n, self.tile, spec.overlap)) for n in (grid.height, grid.width))
        record = self._record(index, lr_path, grid, bands=bands, radiometry=radiometry.kind, tile=self.tile,
                              overlap=spec.overlap, tiles=rows * cols)  # fmt: skip
        return SRPlan(lr_path, grid, bands, radiometry, nodata, descriptions, self.tile, record)

    def _record(self, index: int, lr: Path, grid: OutputGrid, **extra: Any) -> dict[str, Any]:
        spec = self.spec
        return {
            **base_record(spec.task, self.pipe, spec.model),
            "sample_index": index,
            "sample_seed": sample_seed(spec.seed, index),
            "job_seed": spec.seed,
            "spec_sha256": spec_digest(spec),
            "tile_seed": "sample_seed(sample_seed, tile_index), tiles in row-major order",
            "lr": {"path": str(lr), "sha256": sha256_file(lr)},
            "reference": {"path": spec.ref, "sha256": sha256_file(spec.ref)} if spec.ref else None,
            "reference_strength": spec.ref_strength,
            "reference_strength_map": spec.ref_strength_map,
            "scale": spec.scale,
            "prompt": spec.prompt,
            "steps": spec.steps,
            "guidance_scale": spec.guidance,
            "strength": self.strength(),
            "lr_consistency": spec.lr_consistency,
            "noise_level": self.noise_level(),
            "output": {
                "width": grid.width,
                "height": grid.height,
                "crs": grid.crs.to_string() if grid.crs else None,
                "transform": list(grid.transform)[:6],
            },  # fmt: skip
            **extra,
        }

    def _sources(
        self, plan: SRPlan
    ) -> tuple[RasterSource, RasterSource | None, RasterSource | None, RasterSource | None, list]:
        spec, grid = self.spec, plan.grid
        lr_ds = open_raster(plan.lr, argument="lr")
        datasets = [lr_ds]
        lr = RasterSource(lr_ds, plan.bands, grid, radiometry=plan.radiometry, resampling=Resampling.cubic)
        low_res = None
        if getattr(self.pipe, "fixed_scale", None) is not None:  # an upscaler also reads the LR on its own grid
            low_res = RasterSource(lr_ds, plan.bands, OutputGrid.scaled(lr_ds, 1), radiometry=plan.radiometry,
                                   resampling=Resampling.nearest)  # fmt: skip
        ref = strength_map = None
        if spec.ref is not None:
            ref_ds = open_raster(spec.ref, argument="ref")
            datasets.append(ref_ds)
            warp = check_reference_overlap(lr_ds, ref_ds)
            ref_bands = parse_bands(spec.ref_bands, ref_ds.count, argument="ref_bands")
            if len(ref_bands) != self.pipe.num_bands:
                raise RasterInputError(f"ref_bands: need {self.pipe.num_bands} band(s), got {ref_bands}")
            ref_radiometry = Radiometry.infer(ref_ds.dtypes[ref_bands[0] - 1])
            ref = RasterSource(ref_ds, ref_bands, grid, radiometry=ref_radiometry, aligned=not warp)
            if spec.ref_strength_map is not None:
                map_ds = open_raster(spec.ref_strength_map, argument="ref_strength_map")
                datasets.append(map_ds)
                strength_map = RasterSource(map_ds, [1], grid, radiometry=Radiometry("float", map_ds.dtypes[0]),
                                            resampling=Resampling.bilinear)  # fmt: skip
        return lr, ref, strength_map, low_res, datasets

    def produce(self, index: int, plan: SRPlan, sink: RowSink) -> None:
        """Super-resolve sample ``index`` tile by tile; finished rows go to ``sink`` in the LR dtype."""
        lr, ref, strength_map, low_res, datasets = self._sources(plan)
        sources = [s for s in (lr, ref, strength_map, low_res) if s is not None]
        try:
            grid, tile, overlap = plan.grid, plan.tile, self.spec.overlap
            rows, cols = tile_starts(grid.height, tile, overlap), tile_starts(grid.width, tile, overlap)
            m = self.pipe.size_multiple
            tile_h, tile_w = (min(tile, math.ceil(n / m) * m) for n in (grid.height, grid.width))

            def write(rows_unit: np.ndarray, valid: np.ndarray, row_off: int) -> None:
                values = plan.radiometry.from_unit(rows_unit)  # (bands, n, W) in the LR dtype
                if plan.nodata is not None:  # a valid pixel must not read as nodata: move it to the nearest value
                    collide = (values == plan.nodata) & valid[None]
                    if collide.any():
                        values[collide] = _next_to(plan.nodata, values.dtype)
                    values[:, ~valid] = plan.nodata
                sink(values, row_off)

            blender = StripBlender(len(plan.bands), grid.height, grid.width, tile_h, write)
            seed = sample_seed(self.spec.seed, index)
            k = 0
            for row in rows:
                blender.flush_until(row)
                for col in cols:
                    self._tile(Window(col, row, tile_w, tile_h), seed, k, lr, ref, strength_map, blender, low_res)
                    k += 1
            blender.flush_until(grid.height)
        finally:
            for source in sources:
                source.close()
            for dataset in datasets:
                dataset.close()

    def _tile(self, window: Window, seed: int, k: int, lr: RasterSource, ref: RasterSource | None,
              strength_map: RasterSource | None, blender: Any,
              low_res: RasterSource | None = None) -> None:  # fmt: skip
        spec, grid = self.spec, lr.grid
        lr_tile, lr_valid = lr.read_on_grid(window)  # (bands, th, tw), (th, tw)
        reference, strength = None, spec.ref_strength
        if ref is not None:
            ref_tile, ref_valid = ref.read_on_grid(window)
            reference = torch.from_numpy(ref_tile)[None]
            base = np.full(ref_valid.shape, spec.ref_strength, dtype=np.float32)
            if strength_map is not None:
                base = strength_map.read_raw(window)[0].astype(np.float32)
            strength = torch.from_numpy(np.where(ref_valid, base, 0.0).astype(np.float32))[None, None]
        extra: dict[str, Any] = {}
        if low_res is not None:  # the tile's LR pixels: the window divided by the factor (starts are multiples of it)
            f = self.pipe.fixed_scale
            low_window = Window(window.col_off // f, window.row_off // f, window.width // f, window.height // f)
            extra = {"low_res": torch.from_numpy(low_res.read_on_grid(low_window)[0])[None],
                     "noise_level": self.noise_level()}  # fmt: skip
        result = self.pipe(
            torch.from_numpy(lr_tile)[None],
            reference=reference,
            reference_strength=strength,
            prompt=spec.prompt,
            num_inference_steps=spec.steps,
            guidance_scale=spec.guidance,
            strength=self.strength(),
            lr_scale=spec.scale if spec.lr_consistency else None,
            generator=sample_generators(seed, [k]),
            output_type="pt",
            **extra,
        ).images[0]  # fmt: skip  (bands, th, tw)
        row, col = window.row_off, window.col_off
        h, w = min(window.height, grid.height - row), min(window.width, grid.width - col)
        weight = np.outer(
            ramp(h, spec.overlap, row > 0, row + h < grid.height), ramp(w, spec.overlap, col > 0, col + w < grid.width)
        )  # fmt: skip  (h, w)
        blender.add(result.numpy()[:, :h, :w], weight, lr_valid[:h, :w], row, col)
