"""Task ``generate``: images that follow a layout, with exact labels.

The layout comes from semantic ``masks`` (a file, or a folder cycled through: sample i uses mask
i mod n) in a known ``palette``, or from ``vectors`` (layers rasterised on a ``size``² UTM grid at
``gsd`` around the sample's location: lat/lon, a drawn ``location``, ``location: layers`` (anywhere in
the layers' extent) or, by default, the layers' centre); image ``control``s add or replace it. The
layout is the ``mask`` control (canonical palette colours) and the labels (semantic, instances,
objects). Layouts larger than ``tile`` are generated as tiled scenes and written row by row.

Models whose controls include ``osm`` (GeoSynth-OSM) get the layout as an OpenStreetMap-style map instead of
(or besides) the ``mask`` control: vectors rendered by :func:`conditions.osm_render.render_osm` on the same grid,
masks coloured by class; the labels written are the same exact masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conditions import vector_layouts as layers
from conditions.masks import SemanticMask, encode_color, read_mask
from conditions.metadata import Metadata
from conditions.osm_render import osm_control, render_osm, render_semantic
from conditions.palettes import CANONICAL, PALETTES
from core.seeding import sample_generators
from gen.spec import (
    FieldError,
    boolean,
    choice,
    cli_pairs,
    integer,
    mapping,
    number,
    option,
    optional,
    path,
    string_list,
)
from gen.tasks.common import (
    GenerationOptions,
    TaskBase,
    TextConditions,
    draw_text_conditions,
    layout_strength_option,
    read_layers,
    record,
    vectors_crs_option,
)
from gen.tasks.controls import PreparedControls, load_controls, scene_sample
from synth_datasets.geotiff import GeoReference, georeference_from_point
from synth_datasets.output_layouts import ImageFolder
from synth_datasets.samples import ImageSample, Labels

RASTER_SUFFIXES = (".png", ".tif", ".tiff")
OSM_SOURCE = {"kind": "osm", "source": "conditions.osm_render", "params": {"style": "openstreetmap-carto colours"}}


def _guidance_window(value: Any) -> tuple[float, float]:
    ok = isinstance(value, list | tuple) and len(value) == 2
    start, end = (float(v) for v in value) if ok else (0.0, 0.0)
    if not ok or not 0.0 <= start < end <= 1.0:
        raise ValueError(f"expected [START, END] with 0 <= START < END <= 1, got {value!r}")
    return start, end


def _cli_window(text: str) -> list[float]:
    start, sep, end = text.partition(":")
    if not sep:
        raise ValueError(text)
    return [float(start), float(end)]


@dataclass(frozen=True, kw_only=True)
class GenerateSpec(GenerationOptions):
    task = "generate"
    masks: str | None = option(None, "semantic mask file, or a folder of masks (sample i uses mask i mod n)",
                               optional(path()))  # fmt: skip
    palette: str | None = option(None, f"scheme of the masks: {', '.join(sorted(PALETTES))}",
                                 optional(choice(*sorted(PALETTES))))  # fmt: skip
    vectors: tuple[str, ...] = option(
        [], "vector layer, repeatable: buildings:PATH, roads:PATH, polygons=CLASS:PATH or a bare PATH",
        string_list(), repeat="list",
    )  # fmt: skip
    polygon_class: tuple[str, ...] = option(
        [], "attribute rule for polygons, repeatable: KEY[=VALUE]:CLASS, e.g. natural=water:water",
        string_list(), repeat="list",
    )  # fmt: skip
    vectors_crs: str | None = vectors_crs_option()
    control: tuple[str, ...] = option([], "image control, repeatable: canny:PATH, depth:DSM[,DTM], image:PATH",
                                      string_list(), repeat="list")  # fmt: skip
    control_scale: dict[str, float] = option(
        {}, "a control's scale, repeatable: NAME=SCALE, e.g. canny=0.5 (default 1)", mapping(number(0)),
        cli=cli_pairs(float, "canny=0.5"), repeat="dict",
    )  # fmt: skip
    control_guidance: dict[str, tuple[float, float]] = option(
        {}, "the share of the steps a control acts in, repeatable: NAME=START:END, e.g. canny=0:0.6",
        mapping(_guidance_window), cli=cli_pairs(_cli_window, "canny=0:0.6"), repeat="dict",
    )  # fmt: skip
    size: int | None = option(None, "grid size of vector layouts in pixels (default: the model's native size)",
                              optional(integer(8)), cli=int)  # fmt: skip
    tile: int | None = option(None, "layouts larger than this (px) are generated in tiles (default: native size)",
                              optional(integer(8)), cli=int)  # fmt: skip
    overlap: int | None = option(None, "tile overlap in pixels (default: a quarter of the tile, at most 64)",
                                 optional(integer(0)), cli=int)  # fmt: skip
    layout_strength: float | None = layout_strength_option()
    format: str = option("auto", "auto (GeoTIFF when the layout is georeferenced, else PNG) or geotiff "
                         "(placed by gsd and lat/lon)", choice("auto", "geotiff"))  # fmt: skip
    cog: bool = option(False, "write Cloud-Optimized GeoTIFFs", boolean, boolean=True)

    def validate(self) -> None:
        super().validate()
        if not (self.masks or self.vectors or self.control):
            raise FieldError("masks", "give a layout: masks (a file or folder), vectors (layers) or a control")
        if self.masks and self.vectors:
            raise FieldError("vectors", "masks and vectors both define the layout; give one of them")
        if self.masks and not self.palette:
            raise FieldError("palette", "masks need their scheme (e.g. loveda, potsdam, openearthmap, second, levir)")
        if self.palette and not self.masks:
            raise FieldError("palette", "only used with masks")
        if self.vectors and self.gsd is None:
            raise FieldError("gsd", "vector layouts are rasterised at the ground sample distance: give gsd")
        for key in ("polygon_class", "vectors_crs"):
            if getattr(self, key) and not self.vectors:
                raise FieldError(key, "only used with vectors")
        if self.size is not None and not self.vectors:
            raise FieldError("size", "only sizes the grid of vectors; masks and controls have their own size")
        if self.layout_strength is not None and self.layout_strength < 1 and not (self.masks or self.vectors):
            raise FieldError("layout_strength", "< 1 paints the layout of masks or vectors; this job has none: use 1")
        if self.location == "layers" and not self.vectors:
            raise FieldError("location", "'layers' draws inside the vector layers: give vectors")
        names = {c.partition(":")[0] for c in self.control} | ({"mask"} if self.masks or self.vectors else set())
        layout_names = {"osm"} if self.masks or self.vectors else set()  # the layout as a map, for OSM models
        for key in ("control_scale", "control_guidance"):
            for name in getattr(self, key):
                if name not in names | layout_names:
                    raise FieldError(key, f"{name}=...: no such control in this job (controls: {sorted(names)})")
        if "stac" in self.writers and self.format != "geotiff" and not (self.vectors or self.masks):
            raise FieldError("writers", "stac needs georeferenced samples: give vectors, georeferenced masks or "
                             "format geotiff")  # fmt: skip
        if self.cog and self.format != "geotiff" and not self.vectors:
            raise FieldError("cog", "Cloud-Optimized GeoTIFFs need georeferenced output (vectors or format geotiff)")


@dataclass
class LayoutConditions:
    """Everything sample i is generated from: text, metadata and its layout."""

    text: TextConditions
    labels: Labels | None  # None: controls only (the semantic label is all 'ignore')
    georef: GeoReference | None
    sources: list[dict[str, Any]]  # provenance of the layout
    osm: np.ndarray | None = None  # (H, W, 3) uint8 OSM-style map of the layout, for models with an 'osm' control


class GenerateTask(TaskBase):
    def __init__(self, spec: GenerateSpec) -> None:
        super().__init__(spec, ImageFolder(), spec.batch_size)
        self.rules = read_layers(spec)
        # Read once, not per sample: the box drawn from for `location: layers`, and the layers' centre.
        self.box = {"box": list(layers.layers_bounds_lonlat(self.rules))} if spec.location == "layers" else None
        self.centre = layers.layers_centre(self.rules) if self.rules and spec.location is None else None
        self.mask_files = _mask_files(Path(spec.masks)) if spec.masks else []
        self.controls: PreparedControls | None = None

    def load_model(self, pipe: Any = None) -> None:
        from pipelines.controlled import RSControlledPipeline

        self.attach(RSControlledPipeline, pipe)
        if self.spec.layout_strength is not None:
            self.layout_strength({"mask": None})  # checked against the model card now, before any work
        multiple = self.pipe.size_multiple
        if self.spec.size is not None and self.spec.size % multiple:
            raise FieldError("size", f"{self.spec.size}: must be a multiple of {multiple} for this model")

    def _text(self, index: int) -> TextConditions:
        return draw_text_conditions(self.spec, index, location=self.box)[0]

    def describe(self, index: int) -> dict[str, Any]:
        text = self._text(index)
        out = {"prompt": text.prompt, "metadata": text.metadata.to_dict()}
        if self.mask_files:
            out["mask"] = str(self.mask_files[index % len(self.mask_files)])
        return out

    def conditions(self, index: int) -> LayoutConditions:
        spec, text = self.spec, self._text(index)
        if self.mask_files:
            mask = read_mask(self.mask_files[index % len(self.mask_files)], spec.palette)
            semantic = mask.palette.to_canonical(mask.ids)
            georef = GeoReference(mask.crs, mask.transform) if mask.crs is not None else None
            source = {"kind": "mask", "source": mask.source, "sha256": mask.sha256, "palette": spec.palette}
            osm = render_semantic(semantic) if self.wants_osm else None
            sources = [source] + ([OSM_SOURCE] if osm is not None else [])
            return LayoutConditions(text, Labels(semantic), georef, sources, osm)
        if self.rules:
            md = text.metadata
            drawn = spec.location is not None
            lat, lon = (md.lat, md.lon) if md.lat is not None else self.centre
            size = spec.size or self.pipe.model_card.native_size[0]
            labels = layers.rasterize_on(self.rules, layers.utm_grid_at(lat, lon, md.gsd, size), allow_empty=drawn)
            if md.lat is None:  # the layout places the image: tell the model where
                text = TextConditions(text.prompt, layers.with_centre(md, labels.grid))
            georef = GeoReference(crs=labels.grid.crs, transform=labels.grid.transform)
            osm = render_osm(self.rules, labels.grid) if self.wants_osm else None
            sources = layers.layer_sources(self.rules) + ([OSM_SOURCE] if osm is not None else [])
            return LayoutConditions(text, Labels(labels.semantic, labels.instances, labels.objects), georef,
                                    sources, osm)  # fmt: skip
        return LayoutConditions(text, None, None, [])

    def samples(self, indices: list[int]) -> list[ImageSample]:
        conditions = [self.conditions(i) for i in indices]
        shapes = {c.labels.semantic.shape for c in conditions if c.labels is not None}
        if len(shapes) > 1:
            raise FieldError("masks", f"the masks of one batch differ in size {sorted(shapes)}; use equal-size masks "
                             "or batch_size 1")  # fmt: skip
        if self.controls is None:
            self.controls = load_controls(self.spec.control, next(iter(shapes), None), vectors=bool(self.rules))
        prepared = [self._prepare(c) for c in conditions]
        height, width = prepared[0][1].shape
        tile = self.spec.tile or self.pipe.model_card.native_size[0]
        multiple = self.pipe.size_multiple
        if height % multiple or width % multiple:
            raise ValueError(f"the layout/control is {height}x{width} pixels; it must be a multiple of {multiple} "
                             "(crop it, or give size for vector layouts)")  # fmt: skip
        if height > tile or width > tile:
            return [self._scene(i, c, p, tile) for i, c, p in zip(indices, conditions, prepared)]
        return self._batch(indices, conditions, prepared)

    @property
    def wants_osm(self) -> bool:
        """The model takes its layout as an OSM-style map (an ``osm`` control, e.g. GeoSynth-OSM)."""
        return "osm" in getattr(self.pipe, "control_names", ())

    def _prepare(self, c: LayoutConditions) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        controls = dict(self.controls.tensors)
        if c.osm is not None:
            controls = {"osm": osm_control(c.osm), **controls}  # (1, 3, H, W) in [0, 1]
        # The mask control: for every model but an OSM-map one without it (whose controls would refuse it).
        if c.labels is not None and ("mask" in self.pipe.control_names or not self.wants_osm):
            controls = {"mask": encode_color(SemanticMask(c.labels.semantic, CANONICAL))[None], **controls}
        semantic = c.labels.semantic if c.labels is not None else None
        if semantic is None:
            h, w = next(iter(controls.values())).shape[-2:]
            semantic = np.full((h, w), 255, dtype=np.uint8)  # no semantic layout: all 'ignore'
        return controls, semantic

    def _record(self, index: int, c: LayoutConditions, controls: dict[str, torch.Tensor]) -> dict[str, Any]:
        spec, pipe = self.spec, self.pipe
        rec = record(spec, pipe, index, c.text, conditions=c.sources + self.controls.sources,
                     control_scales=dict(spec.control_scale),
                     control_guidance={k: list(v) for k, v in spec.control_guidance.items()})  # fmt: skip
        rec["sampling"]["layout_strength"] = self.layout_strength(controls)
        return rec

    def _georef(self, c: LayoutConditions, height: int, width: int) -> GeoReference | None:
        if c.georef is None and self.spec.format == "geotiff":
            md = c.text.metadata
            return georeference_from_point(md.lat, md.lon, md.gsd, height, width)
        return c.georef

    def _labels(self, c: LayoutConditions, semantic: np.ndarray) -> Labels:
        return c.labels if c.labels is not None else Labels(semantic)

    def _batch(self, indices: list[int], conditions: list[LayoutConditions], prepared: list) -> list[ImageSample]:
        spec, pipe = self.spec, self.pipe
        controls = {k: torch.cat([p[0][k] for p in prepared]) for k in prepared[0][0]}  # name -> (B, 3, H, W)
        inpainting = {}
        if pipe.is_inpainting_model:  # an inpainting UNet generates a layout as an image that is all masked
            batch, _, height, width = next(iter(controls.values())).shape
            inpainting = {
                "image": torch.zeros(batch, 3, height, width),
                "mask_image": torch.ones(batch, 1, height, width),
            }
        result = pipe(
            prompt=[c.text.prompt for c in conditions], negative_prompt=spec.negative_prompt, controls=controls,
            control_scales=spec.control_scale, control_guidance=spec.control_guidance,
            metadata=[c.text.metadata for c in conditions] if pipe.has_metadata else None,
            num_inference_steps=spec.steps, guidance_scale=spec.guidance,
            layout_strength=self.layout_strength(controls),
            generator=sample_generators(spec.seed, indices), output_type="np", **inpainting,
        )  # fmt: skip
        samples = []
        for index, image, c, (ctrl, semantic) in zip(indices, result.images, conditions, prepared):
            georef = self._georef(c, *semantic.shape)
            samples.append(ImageSample(image, self._record(index, c, ctrl), georef, self._labels(c, semantic),
                                       cog=spec.cog))  # fmt: skip
        return samples

    def _scene(self, index: int, c: LayoutConditions, prepared: tuple, tile: int) -> ImageSample:
        controls, semantic = prepared
        overlap = self.spec.overlap if self.spec.overlap is not None else min(64, tile // 4 // 8 * 8)
        metadata = c.text.metadata if self.pipe.has_metadata else None
        image, scene = scene_sample(self.pipe, self.spec, index, c.text.prompt, metadata, controls, tile, overlap,
                                    self.layout_strength(controls))  # fmt: skip
        rec = self._record(index, c, controls)
        rec["scene"] = scene
        georef = self._georef(c, *semantic.shape)
        return ImageSample(image, rec, georef, self._labels(c, semantic), cog=self.spec.cog)


def _mask_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
    if not files:
        raise ValueError(f"masks {str(folder)!r}: the folder holds no .png/.tif masks")
    return files


__all__ = ["GenerateSpec", "GenerateTask", "Metadata"]
