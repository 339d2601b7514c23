"""Controlled generation and inpainting jobs: layouts/masks/controls → images + exact labels.

``run_generate``: the layout (vector layers rasterised on a UTM grid at the requested GSD, or a
semantic mask in a known palette) becomes the ``mask`` control (canonical palette colours) and the
labels (semantic mask, instance mask, per-object boxes); further controls come from images
(``canny:ref.tif``, ``depth:dsm.tif[,dtm.tif]``, ``image:ctrl.png``). Sample ``i`` is generated with
``sample_seed(seed, i)``, so it does not depend on the batch size.

``run_inpaint``: an input image and a region mask (non-zero = regenerate); pixels outside the region
(and its feathering margin) are written back bit-identical.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from pyproj import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from shapely.ops import unary_union

from conditions.masks import SemanticMask, encode_color, read_mask
from conditions.metadata import Metadata
from conditions.palettes import CANONICAL
from conditions.vectors import LayerRule, LayoutLabels, TargetGrid, VectorError, attribute_classifier, read_vector
from core.device import resolve_device
from core.hashing import sha256_file
from core.progress import progress
from core.seeding import sample_generators
from gen.provenance import sample_record
from pipelines.controlled import RSControlledPipeline
from pipelines.controlled.scene import check_scene, decode_scene, scene_latents
from synth_datasets.geotiff import GeoReference, geotiff_window_writer, utm_crs_for
from synth_datasets.layout_writer import write_layout_labels, write_layout_sample
from synth_datasets.sample_writer import write_image_sample, write_sidecar

logger = logging.getLogger(__name__)

LAYER_KINDS = ("buildings", "roads", "polygons")


def parse_layout_spec(spec: str, argument: str = "--layout") -> tuple[str, str | None, Path]:
    """``buildings:a.geojson``, ``roads:b.geojson``, ``polygons=water:c.geojson`` or a bare path
    (lines → roads, polygons → buildings); errors name ``argument``."""
    kind, cls, path = None, None, spec
    head, sep, tail = spec.partition(":")
    if sep and not Path(spec).exists():
        kind, _, cls = head.partition("=")
        path = tail
        if kind not in LAYER_KINDS:
            raise VectorError(f"{argument} {spec!r}: unknown layer kind {kind!r}; use one of {LAYER_KINDS}")
        if kind == "polygons" and cls:
            CANONICAL.class_by_name(cls)
    return kind or "", cls or None, Path(path)


def _layer_rule(spec: str, polygon_classes: dict[str, str] | None = None, argument: str = "--layout") -> LayerRule:
    kind, cls, path = parse_layout_spec(spec, argument)
    if kind == "polygons" and not cls and not polygon_classes:
        raise VectorError(
            f"{argument} {spec!r}: polygons need a class (polygons=water:PATH) or attribute rules "
            "(--polygon-class natural=water:water)"
        )
    layer = read_vector(path)
    if not kind:
        lines = sum(g.geom_type in ("LineString", "MultiLineString") for g in layer.geometries)
        kind = "roads" if lines > len(layer) / 2 else "buildings"
        logger.info("%s %s: read as %s", argument, path, kind)
    classify = None
    if kind == "polygons":
        classify = (lambda _props, c=cls: c) if cls else attribute_classifier(polygon_classes or {})
    return LayerRule(layer, kind, classify)


@dataclass
class GenerateJob:
    model: str
    out: Path
    prompt: str = ""
    negative_prompt: str | None = None
    layouts: list[str] = field(default_factory=list)
    polygon_classes: dict[str, str] = field(default_factory=dict)  # "natural=water" -> "water"
    mask: Path | None = None
    palette: str | None = None
    controls: list[str] = field(default_factory=list)
    control_scales: dict[str, float] = field(default_factory=dict)
    control_guidance: dict[str, tuple[float, float]] = field(default_factory=dict)
    metadata: Metadata = field(default_factory=Metadata)
    size: int | None = None
    tile: int | None = None  # scenes larger than this are generated in overlapping tiles
    overlap: int | None = None  # default: a quarter of the tile (at most 64 px)
    num_samples: int = 1
    batch_size: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    layout_strength: float | None = None  # None: the model card's
    allow_pickle: bool = False
    device: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        if not (self.layouts or self.mask or self.controls):
            raise ValueError("give a layout (--layout), a semantic mask (--mask) or an image control (--control)")
        if self.layouts and self.mask:
            raise ValueError("--layout and --mask both define the semantic layout; give one of them")
        if self.mask and not self.palette:
            raise ValueError("--mask needs --palette (e.g. loveda, potsdam, openearthmap, second, levir)")
        if self.layouts and self.metadata.gsd is None:
            raise ValueError("--layout needs --gsd: vector layouts are rasterised at the ground sample distance")
        if self.num_samples < 1 or self.batch_size < 1:
            raise ValueError(f"-n {self.num_samples} / --batch-size {self.batch_size}: expected >= 1")
        if self.size is not None and self.size < 1:
            raise ValueError(f"--size {self.size}: expected a positive number of pixels")
        names = {spec.partition(":")[0] for spec in self.controls} | ({"mask"} if self.layouts or self.mask else set())
        for option, given in (("--control-scale", self.control_scales), ("--control-guidance", self.control_guidance)):
            for name in given:
                if name not in names:
                    raise ValueError(f"{option} {name}=...: no such control in this run (controls: {sorted(names)})")
        for name, (start, end) in self.control_guidance.items():
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(f"--control-guidance {name}={start}:{end}: expected 0 <= START < END <= 1")


def _check_out(out: Path, overwrite: bool) -> None:
    existing = sorted(out.glob("*.json")) if out.exists() else []
    if existing and not overwrite:
        raise FileExistsError(
            f"out={str(out)!r} already holds {len(existing)} JSON file(s); pick an empty folder or pass --overwrite"
        )


def with_centre(metadata: Metadata, grid: TargetGrid) -> Metadata:
    """``metadata`` with lat/lon set to the centre of ``grid``."""
    from pyproj import Transformer

    left, bottom, right, top = grid.bounds
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(
        (left + right) / 2, (bottom + top) / 2
    )
    return replace(metadata, lat=lat, lon=lon)


def load_layout_rules(
    specs: list[str], polygon_classes: dict[str, str] | None = None, argument: str = "--layout"
) -> list[LayerRule]:
    """Read the layers of ``--layout`` specs once (jobs reuse them for every sample); errors name ``argument``."""
    return [_layer_rule(spec, polygon_classes, argument) for spec in specs]


def layout_sources(rules: list[LayerRule]) -> list[dict[str, Any]]:
    return [{"kind": r.kind, "source": r.layer.source, "sha256": r.layer.sha256, "features": len(r.layer),
             "repaired": r.layer.repaired, "dropped": r.layer.dropped} for r in rules]  # fmt: skip


def layout_bounds_lonlat(rules: list[LayerRule]) -> tuple[float, float, float, float]:
    """(lon_min, lat_min, lon_max, lat_max) of all layers."""
    return unary_union([g for r in rules for g in r.layer.to_crs(CRS.from_epsg(4326)).geometries]).bounds


def layout_labels_at(
    rules: list[LayerRule], lat: float, lon: float, gsd: float, size: int, *, allow_empty: bool = False
) -> LayoutLabels:
    """Rasterise ``rules`` on a ``size``² north-up grid of ``gsd`` metres centred on (lat, lon), in its UTM zone."""
    from pyproj import Transformer

    crs = utm_crs_for(lat, lon)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    half = size * gsd / 2
    grid = TargetGrid.from_bounds((x - half, y - half, x + half, y + half), crs, gsd)
    if allow_empty:
        from conditions.vectors import rasterize_layout

        return rasterize_layout(rules, grid)
    return rasterize_checked(rules, grid)


def layout_centre(rules: list[LayerRule], metadata: Metadata) -> tuple[float, float]:
    """(lat, lon) of a layout grid: ``metadata``'s location, else the centroid of the layers (weighted by
    area, so buildings rather than long roads)."""
    if metadata.lat is not None:
        return metadata.lat, metadata.lon
    geoms = [g for r in rules for g in r.layer.to_crs(CRS.from_epsg(4326)).geometries]
    lon, lat = unary_union(geoms).centroid.coords[0]
    return lat, lon


def _layout_from_vectors(job: GenerateJob, size: int) -> tuple[LayoutLabels, list[dict[str, Any]]]:
    rules = load_layout_rules(job.layouts, job.polygon_classes)
    lat, lon = layout_centre(rules, job.metadata)
    return layout_labels_at(rules, lat, lon, job.metadata.gsd, size), layout_sources(rules)


def rasterize_checked(rules: list[LayerRule], grid: TargetGrid) -> LayoutLabels:
    from conditions.vectors import rasterize_layout

    labels = rasterize_layout(rules, grid)
    if not labels.semantic.any():
        raise VectorError(
            "the layout is empty on the target grid: no feature intersects it; check --lat/--lon and --gsd "
            "or the layers' location"
        )
    return labels


def run_generate(job: GenerateJob, pipe: RSControlledPipeline | None = None) -> list[Path]:
    from conditions.image_controls import control_from_spec

    job.validate()
    out = Path(job.out)
    _check_out(out, job.overwrite)
    if pipe is None:
        pipe = RSControlledPipeline.from_bundle(job.model, allow_pickle=job.allow_pickle)
        pipe.to(resolve_device(job.device))
    pipe.set_progress_bar_config(disable=True)
    if job.layout_strength is not None:
        pipe.set_layout_strength(job.layout_strength, "--layout-strength")
    size = job.size if job.size is not None else pipe.model_card.native_size[0]
    if size % pipe.size_multiple:
        raise ValueError(f"--size {size}: must be a multiple of {pipe.size_multiple} for this model")
    conditions: list[dict[str, Any]] = []
    instances = objects = None
    georef = None
    if job.layouts:
        labels, conditions = _layout_from_vectors(job, size)
        semantic, instances, objects = labels.semantic, labels.instances, labels.objects
        georef = GeoReference(crs=labels.grid.crs, transform=labels.grid.transform)
        if job.metadata.lat is None:  # the layout places the image: tell the model where
            job.metadata = with_centre(job.metadata, labels.grid)
    elif job.mask:
        mask = read_mask(job.mask, job.palette)
        semantic = mask.palette.to_canonical(mask.ids)
        conditions.append({"kind": "mask", "source": mask.source, "sha256": mask.sha256, "palette": job.palette})
        if mask.crs is not None:
            georef = GeoReference(crs=mask.crs, transform=mask.transform)
    else:
        semantic = None
    controls: dict[str, torch.Tensor] = {}
    if semantic is not None:
        controls["mask"] = encode_color(SemanticMask(semantic, CANONICAL))[None]  # (1, 3, H, W)
    target = semantic.shape if semantic is not None else None
    for spec in job.controls:
        try:
            control = control_from_spec(spec, target_shape=target)
        except ValueError as err:
            hint = (
                " (georeferenced controls are not resampled to a layout's grid yet: crop/resample the raster to "
                f"{target[0]}x{target[1]} pixels on that grid first)"
                if job.layouts and "does not match" in str(err)
                else ""
            )
            raise ValueError(f"--control {spec!r}: {err}{hint}") from None
        controls[control.name] = control.tensor[None]  # (1, 3, H, W)
        target = tuple(control.tensor.shape[-2:])
        conditions.append({"kind": control.name, "source": control.source, "sha256": control.sha256,
                           "params": control.params})  # fmt: skip
    height, width = next(iter(controls.values())).shape[-2:]
    if semantic is None:
        semantic = np.full((height, width), 255, dtype=np.uint8)  # no semantic layout: all 'ignore'
    tile = job.tile or pipe.model_card.native_size[0]
    if height % pipe.size_multiple or width % pipe.size_multiple:
        raise ValueError(
            f"the layout/control is {height}x{width} pixels; it must be a multiple of {pipe.size_multiple} "
            "(crop it, or pass --size for vector layouts)"
        )
    layout = PreparedLayout(controls, semantic, instances, objects, georef, conditions)
    if height > tile or width > tile:
        return _run_scene(job, pipe, layout, tile)
    written = []
    with progress(total=job.num_samples, desc="generate", unit="img") as bar:
        for start in range(0, job.num_samples, job.batch_size):
            written += _generate_batch(job, pipe, layout, start)
            bar.update(min(job.batch_size, job.num_samples - start))
    return written


@dataclass
class PreparedLayout:
    """Everything a generate run conditions on and labels with, prepared once for all samples."""

    controls: dict[str, torch.Tensor]  # name -> (1, 3, H, W) in [0, 1]
    semantic: np.ndarray  # (H, W) canonical ids
    instances: np.ndarray | None  # (H, W) instance ids
    objects: list | None
    georef: GeoReference | None
    conditions: list[dict[str, Any]]  # provenance of every condition


def _generate_batch(job: GenerateJob, pipe: RSControlledPipeline, layout: PreparedLayout, start: int) -> list[Path]:
    written = []
    out = Path(job.out)
    indices = list(range(start, min(start + job.batch_size, job.num_samples)))
    n = len(indices)
    result = pipe(
        prompt=[job.prompt] * n, negative_prompt=job.negative_prompt,
        controls={k: v.expand(n, -1, -1, -1) for k, v in layout.controls.items()},
        control_scales=job.control_scales, control_guidance=job.control_guidance,
        metadata=[job.metadata] * n if pipe.has_metadata else None,
        num_inference_steps=job.steps, guidance_scale=job.guidance,
        generator=sample_generators(job.seed, indices), output_type="np",
    )  # fmt: skip
    for index, image in zip(indices, result.images):
        record = _provenance(job, pipe, "generate", index, layout.conditions)
        sample = write_layout_sample(out, f"{index:06d}", image, layout.semantic, record, instances=layout.instances,
                                     objects=layout.objects, georef=layout.georef)  # fmt: skip
        written.append(sample.image)
    return written


def _run_scene(job: GenerateJob, pipe: RSControlledPipeline, layout: PreparedLayout, tile: int) -> list[Path]:
    """Generate each sample as a tiled scene and stream its image to disk row by row."""
    height, width = layout.semantic.shape
    controls_u8 = {k: (v * 255).round().to(torch.uint8) for k, v in layout.controls.items()}  # compact canvas
    overlap = job.overlap if job.overlap is not None else min(64, tile // 4 // 8 * 8)
    try:
        check_scene(pipe, height, width, tile, overlap)
    except ValueError as err:
        raise ValueError(f"--tile {tile} / --overlap {overlap}: {err}") from None
    written = []
    with progress(total=job.num_samples * job.steps, desc=f"scene {height}x{width}", unit="step") as bar:
        for index in range(job.num_samples):
            written.append(_scene_sample(job, pipe, layout, controls_u8, tile, overlap, index, bar.update))
    return written


def _scene_sample(
    job: GenerateJob,
    pipe: RSControlledPipeline,
    layout: PreparedLayout,
    controls_u8: dict[str, torch.Tensor],
    tile: int,
    overlap: int,
    index: int,
    on_step: Any,
) -> Path:
    """Generate sample ``index`` as a tiled scene and stream its image to disk row by row."""
    semantic, georef = layout.semantic, layout.georef
    height, width = semantic.shape
    stem = f"{index:06d}"
    latents = scene_latents(
        pipe, job.prompt, controls_u8, tile=tile, overlap=overlap, control_scales=job.control_scales,
        control_guidance=job.control_guidance, negative_prompt=job.negative_prompt,
        metadata=job.metadata if pipe.has_metadata else None, num_inference_steps=job.steps,
        guidance_scale=job.guidance, generator=sample_generators(job.seed, [index])[0], progress=on_step,
    )  # fmt: skip
    labels = write_layout_labels(
        job.out, stem, semantic, instances=layout.instances, objects=layout.objects, georef=georef
    )
    record = _provenance(job, pipe, "generate", index, layout.conditions)
    record.update(labels=labels, scene={"tile": tile, "overlap": overlap, "height": height, "width": width})
    if georef is None:  # PNG cannot be written by rows: assemble the (uint8) image, then write it
        canvas = np.zeros((3, height, width), dtype=np.uint8)

        def fill(rows: np.ndarray, valid: np.ndarray, row_off: int) -> None:
            canvas[:, row_off : row_off + rows.shape[1]] = (rows * 255).round().astype(np.uint8)

        decode_scene(pipe, latents, tile=tile, overlap=overlap, write=fill)
        return write_image_sample(job.out, stem, np.moveaxis(canvas, 0, -1), record).image  # image + sidecar
    path = Path(job.out) / f"{stem}.tif"
    with geotiff_window_writer(
        path, width=width, height=height, count=3, dtype="uint8", crs=georef.crs, transform=georef.transform,
        descriptions=["red", "green", "blue"],
        tags={"rsgen_provenance": {k: v for k, v in record.items() if k != "created"}},
    ) as dst:  # fmt: skip

        def write(rows: np.ndarray, valid: np.ndarray, row_off: int) -> None:
            values = (rows * 255).round().astype(np.uint8)  # (3, n, W)
            dst.write(values, window=Window(0, row_off, width, values.shape[1]))

        decode_scene(pipe, latents, tile=tile, overlap=overlap, write=write)
    write_sidecar(job.out, stem, path, record, (height, width, 3), georef)
    return path


def _provenance(job: Any, pipe: RSControlledPipeline, task: str, index: int, conditions: list) -> dict[str, Any]:
    record = {
        **sample_record(
            task,
            pipe,
            job.model,
            job_seed=job.seed,
            index=index,
            steps=job.steps,
            guidance=job.guidance,
            prompt=job.prompt,
            negative_prompt=job.negative_prompt,
            metadata=job.metadata,
        ),  # fmt: skip
        "conditions": conditions,
        "control_scales": dict(getattr(job, "control_scales", {})),
        "control_guidance": {k: list(v) for k, v in getattr(job, "control_guidance", {}).items()},
    }
    if not (getattr(job, "layouts", None) or getattr(job, "mask", None)):  # no mask control: no layout prior ran
        record["sampling"]["layout_strength"] = 1.0
    return record


@dataclass
class InpaintJob:
    model: str
    image: Path
    region: Path  # non-zero pixels are regenerated
    out: Path
    prompt: str = ""
    negative_prompt: str | None = None
    controls: list[str] = field(default_factory=list)
    feather: int = 0
    metadata: Metadata = field(default_factory=Metadata)
    num_samples: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    allow_pickle: bool = False
    device: str = "auto"
    overwrite: bool = False


def read_uint8_rgb(path: Path, *, argument: str = "--image") -> tuple[np.ndarray, GeoReference | None]:
    """(H, W, 3) uint8 pixels, unscaled (inpainting must return them bit for bit), and the georeference."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if src.count < 3 or src.dtypes[0] != "uint8":
                raise ValueError(
                    f"{argument} {str(path)!r}: expected an 8-bit RGB image, got {src.count} band(s) {src.dtypes[0]}"
                )
            data = np.moveaxis(src.read([1, 2, 3]), 0, -1)  # (H, W, 3)
            georef = GeoReference(src.crs, src.transform) if src.crs is not None else None
    return data, georef


def run_inpaint(job: InpaintJob, pipe: RSControlledPipeline | None = None) -> list[Path]:
    from conditions.image_controls import control_from_spec

    out = Path(job.out)
    _check_out(out, job.overwrite)
    image, georef = read_uint8_rgb(Path(job.image))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(job.region) as src:
            region = src.read(1) > 0  # (H, W)
    if region.shape != image.shape[:2]:
        raise ValueError(
            f"--region {str(job.region)!r}: size {region.shape} does not match the image {image.shape[:2]}"
        )
    if not region.any():
        raise ValueError(f"--region {str(job.region)!r}: no pixel is marked for regeneration (all zero)")
    if pipe is None:
        pipe = RSControlledPipeline.from_bundle(job.model, allow_pickle=job.allow_pickle)
        pipe.to(resolve_device(job.device))
    pipe.set_progress_bar_config(disable=True)
    controls = {}
    conditions = [{"kind": "image", "source": str(job.image), "sha256": sha256_file(job.image)},
                  {"kind": "region", "source": str(job.region), "sha256": sha256_file(job.region)}]  # fmt: skip
    for spec in job.controls:
        control = control_from_spec(spec, target_shape=image.shape[:2])
        controls[control.name] = control.tensor[None]
        conditions.append({"kind": control.name, "source": control.source, "sha256": control.sha256})
    image_t = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H, W)
    region_t = torch.from_numpy(region)[None, None].float()  # (1, 1, H, W)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index in progress(range(job.num_samples), desc="inpaint", unit="img"):
        result = pipe(
            prompt=job.prompt, negative_prompt=job.negative_prompt, controls=controls, image=image_t,
            mask_image=region_t, feather_px=job.feather, metadata=job.metadata if pipe.has_metadata else None,
            num_inference_steps=job.steps, guidance_scale=job.guidance,
            generator=sample_generators(job.seed, [index]), output_type="pt",
        )  # fmt: skip
        pixels = (result.images[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)  # (H, W, 3)
        keep = (result.blend_weights[0, 0] == 0).numpy()
        pixels[keep] = image[keep]  # bit-identical outside the blended region, by construction
        record = _provenance(job, pipe, "inpaint", index, conditions)
        record["feather_px"] = job.feather
        record["changed_pixels"] = int((~keep).sum())
        sample = write_image_sample(out, f"{index:06d}", pixels, record, fmt="geotiff" if georef else "png",
                                    georef=georef)  # fmt: skip
        written.append(sample.image)
    return written
