"""Task ``change_pairs``: simulate change events on a layout, then synthesise the pair.

* ``full`` (Changen2): image t1 from layout t1 and image t2 from layout t2, same seed and metadata;
* ``hybrid`` (HySCDG): a real image t1 with its layout; t2 = t1 with only the changed regions
  inpainted under the t2 layout — every pixel outside the change mask is bit-identical to t1.

Layout t1 comes from semantic ``masks`` in ``palette`` (full: the layouts; hybrid: the masks of
``images``, same file names) or from ``vectors`` (full: one ``size``² UTM grid at ``gsd`` centred on
lat/lon or the layers; hybrid: the grid of each georeferenced image). Distractors are pseudo-changes
applied to t2 and recorded; they never change the label. Sample i draws everything from
``sample_seed(seed, i)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conditions import vector_layouts as layers
from conditions.change_captions import change_captions, change_qa
from conditions.change_events import EVENT_TYPES, ChangeConfig, ChangeResult, simulate_change
from conditions.distractors import DISTRACTORS, apply_distractors
from conditions.exemplar_synthesis import (
    COPY_PASTE,
    SYNTHESIS_METHODS,
    ExemplarConfig,
    ExemplarFootprints,
    ExemplarSynthesis,
)
from conditions.masks import SemanticMask, encode_color, read_mask
from conditions.metadata import Metadata
from conditions.object_bank import ObjectBank
from conditions.palettes import CANONICAL, IGNORE, PALETTES
from conditions.raster_input import RGBImage, read_uint8_rgb
from conditions.vectors import LayoutLabels, TargetGrid, VectorError
from core.hashing import sha256_file
from core.seeding import sample_seed
from gen import spec as checks
from gen.spec import FieldError, option
from gen.tasks.common import (
    JobOptions,
    TaskBase,
    TextConditions,
    check_metadata_fields,
    fixed_metadata,
    guidance_option,
    layout_strength_option,
    metadata_option,
    pad_to_multiple,
    read_layers,
    record,
    steps_option,
    vectors_crs_option,
)
from synth_datasets.change_writer import DATASET_FORMATS
from synth_datasets.geotiff import GeoReference
from synth_datasets.output_layouts import ChangePairFolder
from synth_datasets.samples import ChangePairSample

RASTER_SUFFIXES = (".png", ".tif", ".tiff")
DEFAULT_GSD = 0.5


@dataclass(frozen=True, kw_only=True)
class ChangeOptions(JobOptions):
    """The fields of every change task (pairs and time series): layout t1, events, distractors, synthesis."""

    mode: str = option("full", "full (both dates generated) or hybrid (real t1, t2 inpainted where it changed)",
                       checks.choice("full", "hybrid"))  # fmt: skip
    images: str | None = option(None, "hybrid: folder of real t1 images (8-bit RGB); with vectors also one file",
                                checks.optional(checks.path()))  # fmt: skip
    masks: str | None = option(None, "semantic masks: full mode, the layouts; hybrid, the masks of the images "
                               "(same file names)", checks.optional(checks.path("dir")))  # fmt: skip
    vectors: tuple[str, ...] = option(
        [], "layout t1 from vector layers instead of masks, repeatable: buildings:PATH, roads:PATH, "
        "polygons=CLASS:PATH or a bare PATH", checks.string_list(), repeat="list",
    )  # fmt: skip
    polygon_class: tuple[str, ...] = option([], "vectors: attribute rule for polygons, KEY[=VALUE]:CLASS",
                                            checks.string_list(), repeat="list")  # fmt: skip
    vectors_crs: str | None = vectors_crs_option()
    size: int | None = option(None, "full mode with vectors: grid size in pixels (default: the model's native size)",
                              checks.optional(checks.integer(8)), cli=int)  # fmt: skip
    palette: str = option(
        "levir", f"scheme of the masks: {', '.join(sorted(PALETTES))}", checks.choice(*sorted(PALETTES))
    )
    events: dict[str, float] = option(
        {}, f"event probabilities ({', '.join(EVENT_TYPES)}; default add_building=0.6,remove_building=0.2,"
        "transition=0.2)", checks.mapping(checks.number(0, 1), keys=EVENT_TYPES),
        cli=checks.cli_pairs(float, "add_building=0.6"), repeat="dict",
    )  # fmt: skip
    change_fraction: float = option(0.1, "target changed fraction of the pixels", checks.number(0, 1, low_open=True),
                                    cli=float)  # fmt: skip
    no_change_fraction: float = option(
        0.0, "share of pairs with no event (distractors only)", checks.number(0, 1), cli=float
    )
    transitions: dict[str, str] = option(
        {}, "class transitions of 'transition' events, repeatable: FROM=TO, e.g. agriculture=bare (default: "
        "rsgen's table)", checks.mapping(checks.string), cli=checks.cli_pairs(str, "agriculture=bare"), repeat="dict",
    )  # fmt: skip
    min_size_m: float = option(
        8.0, "smallest side of a new building, metres", checks.number(0, low_open=True), cli=float
    )
    max_size_m: float = option(
        40.0, "largest side of a new building, metres", checks.number(0, low_open=True), cli=float
    )
    road_setback_m: float = option(
        2.0, "gap new buildings keep to roads, metres (0 = none)", checks.number(0), cli=float
    )
    allow_overlap: bool = option(
        False, "let new buildings overlap roads and other buildings", checks.boolean, boolean=True
    )
    distractors: tuple[str, ...] = option(
        [], f"pseudo-changes on t2, comma-separated: {', '.join(DISTRACTORS)}",
        checks.string_list(allowed=tuple(DISTRACTORS)), cli=checks.cli_comma_list,
    )  # fmt: skip
    gsd: float | None = option(None, f"metres per pixel of the masks, or of the vector grid in full mode "
                               f"(default {DEFAULT_GSD}); hybrid vectors use the images' pixel size",
                               checks.optional(checks.number(0, low_open=True)), cli=float)  # fmt: skip
    lat: Any = metadata_option("lat", drawn=False)
    lon: Any = metadata_option("lon", drawn=False)
    date: Any = metadata_option("date", drawn=False)
    cloud: Any = metadata_option("cloud", drawn=False)
    sensor: Any = metadata_option("sensor", drawn=False)
    synthesis: str = option(
        "diffusion", "hybrid: what fills the changed pixels: diffusion (the model inpaints them), exemplar (real "
        "buildings of a bank, texture from nearby real pixels, colour-matched and Poisson-blended), "
        "exemplar+harmonise (exemplar, then a low-strength diffusion pass over the changed pixels) or copy-paste "
        "(the naive baseline: bank objects pasted as they are, plain inpainting)", checks.choice(*SYNTHESIS_METHODS),
    )  # fmt: skip
    bank: str | None = option(None, "object bank (rsgen bank build) of synthesis exemplar, exemplar+harmonise and "
                              "copy-paste", checks.optional(checks.path("file")))  # fmt: skip
    harmonise_strength: float = option(
        0.3, "exemplar+harmonise: share of the schedule the diffusion pass re-noises, in (0, 1]",
        checks.number(0, 1, low_open=True), cli=float,
    )  # fmt: skip
    prompt: str = option("", "text prompt of every date", checks.string)
    layout_strength: float | None = layout_strength_option()
    steps: int = steps_option()
    guidance: float = guidance_option()

    def validate(self) -> None:
        check_metadata_fields(self)
        if self.vectors and self.masks:
            raise FieldError("vectors", "vectors and masks both define layout t1; give one of them")
        if self.mode == "full" and not (self.masks or self.vectors):
            raise FieldError("masks", "mode full needs masks (a folder of layouts in palette) or vectors")
        if self.mode == "full" and self.images:
            raise FieldError("images", "only used in mode hybrid (the real t1 images)")
        if self.mode == "hybrid" and not (self.images and (self.masks or self.vectors)):
            raise FieldError("images", "mode hybrid needs images and masks (same file names), or images (georeferenced)"
                             " with vectors")  # fmt: skip
        if self.mode == "hybrid" and not self.vectors and not Path(self.images).is_dir():
            raise FieldError("images", f"{self.images!r}: with masks, images is a folder (same file names)")
        if self.size is not None and not (self.vectors and self.mode == "full"):
            raise FieldError("size", "only sizes the grid of vectors in mode full")
        if self.lat is not None and not (self.vectors and self.mode == "full"):
            raise FieldError("lat", "lat/lon centre the vector grid in mode full; other layouts carry their place")
        if self.gsd is not None and self.vectors and self.mode == "hybrid":
            raise FieldError("gsd", "hybrid vectors are rasterised on each image's grid, at its pixel size")
        if self.synthesis != "diffusion" and self.mode != "hybrid":
            raise FieldError("synthesis", f"{self.synthesis} fills the changes of a real t1 image; use --mode hybrid")
        if self.synthesis != "diffusion" and not self.bank:
            raise FieldError("bank", f"synthesis {self.synthesis} takes its buildings from an object bank; pass "
                             "--bank BANK.safetensors (make one with rsgen bank build)")  # fmt: skip
        if self.bank and self.synthesis == "diffusion":
            raise FieldError("bank", "only used with synthesis exemplar, exemplar+harmonise or copy-paste")
        for key in ("polygon_class", "vectors_crs"):
            if getattr(self, key) and not self.vectors:
                raise FieldError(key, "only used with vectors")
        try:
            change_config(self)
        except ValueError as err:
            raise FieldError("events", str(err)) from None


@dataclass(frozen=True, kw_only=True)
class ChangePairsSpec(ChangeOptions):
    task = "change_pairs"
    dataset_format: str = option("levir", "output layout: levir (A/ B/ label/) or second (im1/ im2/ label1/ label2/)",
                                 checks.choice(*DATASET_FORMATS))  # fmt: skip


def change_config(spec: ChangeOptions) -> ChangeConfig:
    """The event simulator's settings of ``spec`` (its defaults where the spec leaves them out)."""
    optional_ = {"events": spec.events, "transitions": spec.transitions}
    return ChangeConfig(change_fraction=spec.change_fraction, min_size_m=spec.min_size_m, max_size_m=spec.max_size_m,
                        road_setback_m=spec.road_setback_m, allow_overlap=spec.allow_overlap,
                        **{k: v for k, v in optional_.items() if v})  # fmt: skip


@dataclass
class LayoutT1:
    """Layout t1 of one pair and what it came from."""

    semantic: np.ndarray  # (H, W) canonical ids
    instances: np.ndarray | None  # (H, W) building instance ids (vectors: one per footprint)
    gsd: float
    georef: GeoReference | None
    metadata: Metadata
    image: np.ndarray | None  # hybrid: the real t1 pixels (H, W, 3) uint8
    provenance: dict[str, Any]


class ChangePairsTask(TaskBase):
    def __init__(self, spec: ChangeOptions, layout: Any = None) -> None:
        super().__init__(spec, layout or ChangePairFolder(spec.dataset_format), 1)
        self.change = change_config(spec)
        self.rules = read_layers(spec)
        self.sources = self._sources()
        self._full_grid: LayoutLabels | None = None
        self.bank = self.exemplar = None
        self._footprints: dict[float, ExemplarFootprints] = {}
        if spec.synthesis != "diffusion":
            try:
                self.bank = ObjectBank.load(spec.bank)
            except ValueError as err:
                raise FieldError("bank", str(err)) from None
            self.exemplar = ExemplarSynthesis(self.bank, COPY_PASTE if spec.synthesis == "copy-paste" else
                                              ExemplarConfig())  # fmt: skip

    def footprints(self, gsd: float) -> ExemplarFootprints | None:
        """The simulator's source of new buildings' shapes at ``gsd``: bank objects (exemplar synthesis) or None."""
        if self.exemplar is None:
            return None
        if gsd not in self._footprints:
            try:
                self._footprints[gsd] = ExemplarFootprints(self.bank, gsd, self.exemplar.config)
            except ValueError as err:
                raise FieldError("bank", str(err).removeprefix("bank: ")) from None
        return self._footprints[gsd]

    def fill_change(
        self, image: np.ndarray, semantic: np.ndarray, step: ChangeResult, seed: int, common: dict[str, Any],
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:  # fmt: skip
        """Hybrid: the next date's image — ``image`` (layout ``semantic``) with exactly ``step``'s changed pixels
        filled by the job's ``synthesis`` — and the exemplar fill records (empty for diffusion)."""
        if self.exemplar is None:
            return inpaint_change(self.pipe, image, step.semantic, step.change_mask, seed, common), []
        out, fills = self.exemplar(image, semantic, step.change_mask, step.events, rng)
        if self.spec.synthesis == "exemplar+harmonise" and step.change_mask.any():
            harmonise = {**common, "layout_strength": None, "strength": self.spec.harmonise_strength}
            harmonised = synthesise(self.pipe, step.semantic, seed, harmonise, out, step.change_mask)
            out[step.change_mask] = harmonised[step.change_mask]
        return out, fills

    def synthesis_record(self, fills: list[dict[str, Any]]) -> dict[str, Any]:
        """The sidecar's ``synthesis``: the method and, for exemplar synthesis, the bank and every fill."""
        if self.bank is None:
            return {"method": self.spec.synthesis}
        return {"method": self.spec.synthesis, "bank": self.spec.bank, "bank_sha256": self.bank.sha256,
                "bank_licence": self.bank.licence, "fills": fills}  # fmt: skip

    def load_model(self, pipe: Any = None) -> None:
        from pipelines.controlled import RSControlledPipeline

        self.attach(RSControlledPipeline, pipe)
        if self.spec.mode == "full" and getattr(self.pipe, "is_inpainting_model", False):
            raise FieldError("mode", f"full: {self.spec.model} is an inpainting model (9-channel UNet), which needs a "
                             "real t1 image; use --mode hybrid")  # fmt: skip
        if "mask" not in self.pipe.control_names:
            if self.spec.mode != "hybrid":
                raise FieldError("model", f"{self.spec.model}: change pairs need a bundle with a 'mask' control")
            self.layout_strength({})  # no mask to paint a layout prior with: only 1 (or the default) is valid
            import logging

            logging.getLogger(__name__).warning(
                "%s has no 'mask' control: hybrid pairs inpaint the changed regions from the prompt alone, so the "
                "t2 layout decides only where t2 changes, not what is drawn there (its label still says what)",
                self.spec.model,
            )
            return
        self.layout_strength({"mask": None})  # checked against the model card now, before any work

    def _sources(self) -> list[Path | None]:
        """What sample i is made from (``sources[i % n]``): mask files; with vectors, the t1 images
        (hybrid) or ``None``, the one vector layout (full)."""
        spec = self.spec
        if self.rules and spec.mode == "full":
            return [None]
        key = "images" if self.rules else "masks"
        folder = Path(getattr(spec, key))
        if self.rules and folder.is_file():
            return [folder]
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
        if not files:
            raise FieldError(key, f"{str(folder)!r}: no .png/.tif files found")
        return files

    def describe(self, index: int) -> dict[str, Any]:
        source = self.sources[index % len(self.sources)]
        return {"prompt": self.spec.prompt, "source": str(source) if source else "vectors"}

    def samples(self, indices: list[int]) -> list[ChangePairSample]:
        return [self.pair(index) for index in indices]

    def pair(self, index: int) -> ChangePairSample:
        """Simulate and synthesise pair ``index``."""
        spec = self.spec
        seed = sample_seed(spec.seed, index)
        rng = np.random.default_rng(seed)
        t1 = self.layout_t1(self.sources[index % len(self.sources)])
        sem_a = t1.semantic
        if rng.random() < spec.no_change_fraction:
            instances = t1.instances if t1.instances is not None else np.zeros(sem_a.shape, np.int32)
            result = ChangeResult(sem_a.copy(), instances.copy(), [], np.zeros(sem_a.shape, bool))
        else:
            result = simulate_change(sem_a, t1.gsd, self.change, rng, instances=t1.instances,
                                     footprints=self.footprints(t1.gsd))  # fmt: skip
        image_a, image_b, fills = self._synthesise_pair(t1, result, seed, rng)
        distractors = []
        if spec.distractors:
            image_b, distractors = apply_distractors(image_b, list(spec.distractors), rng)
        height, width = sem_a.shape
        text = TextConditions(spec.prompt, t1.metadata)
        provenance = record(spec, self.pipe, index, text, mode=spec.mode, **t1.provenance, gsd=t1.gsd)
        provenance["sampling"]["layout_strength"] = self.layout_strength({"mask": None})
        rec = {
            "events": [e.to_dict() for e in result.events],
            "captions": change_captions(result.events, width, height, rng),
            "qa": change_qa(result.events, width, height, t1.gsd),
            "distractors": distractors,
            "synthesis": self.synthesis_record(fills),
            "changed_fraction": float(result.change_mask.mean()),
            "provenance": provenance,
        }
        return ChangePairSample(image_a, image_b, sem_a, result.semantic, result.change_mask, rec, t1.georef)

    def _synthesise_pair(
        self, t1: LayoutT1, result: ChangeResult, seed: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        spec, pipe = self.spec, self.pipe
        common = self.sampling_kwargs(t1.metadata)
        if spec.mode == "full":  # same seed for both dates
            return synthesise(pipe, t1.semantic, seed, common), synthesise(pipe, result.semantic, seed, common), []
        image_b, fills = self.fill_change(t1.image, t1.semantic, result, seed, common, rng)
        return t1.image, image_b, fills

    def sampling_kwargs(self, metadata: Metadata) -> dict[str, Any]:
        """The pipeline arguments every date of a sample shares (``metadata``: that date's)."""
        spec = self.spec
        return {"prompt": spec.prompt, "num_inference_steps": spec.steps, "guidance_scale": spec.guidance,
                "metadata": metadata if self.pipe.has_metadata else None, "output_type": "pt",
                "layout_strength": self.layout_strength({"mask": None})}  # fmt: skip

    def layout_t1(self, source: Path | None) -> LayoutT1:
        """Layout t1 (and, in hybrid mode, image t1) of a pair made from ``source``."""
        spec = self.spec
        if not self.rules:
            mask = read_mask(source, spec.palette)
            semantic = mask.palette.to_canonical(mask.ids)
            georef = GeoReference(mask.crs, mask.transform) if mask.crs is not None else None
            provenance = {"source": str(source), "source_sha256": sha256_file(source)}
            image = None
            if spec.mode == "hybrid":
                rgb = _read_image(Path(spec.images) / source.name, semantic.shape)
                image = rgb.pixels
                _check_aligned(source, georef, rgb)
                georef = GeoReference(rgb.crs, rgb.transform) if rgb.crs is not None else georef
                provenance.update(image=rgb.source, image_sha256=rgb.sha256)
            gsd = spec.gsd or DEFAULT_GSD
            metadata = fixed_metadata(spec, gsd=gsd)
            return LayoutT1(semantic, None, gsd, georef, metadata, image, provenance)
        provenance: dict[str, Any] = {"layers": layers.layer_sources(self.rules)}
        image = None
        if source is None:  # full mode: one grid for every sample, rasterised once
            if self._full_grid is None:
                lat, lon = (spec.lat, spec.lon) if spec.lat is not None else layers.layers_centre(self.rules)
                size = spec.size or self.pipe.model_card.native_size[0]
                grid = layers.utm_grid_at(lat, lon, spec.gsd or DEFAULT_GSD, size)
                self._full_grid = layers.rasterize_on(self.rules, grid)
            labels = self._full_grid
        else:
            rgb = _read_image(source, None)
            image = rgb.pixels
            grid = image_grid(source, rgb, image.shape[:2])
            try:
                labels = layers.rasterize_on(self.rules, grid)
            except VectorError:
                raise FieldError(
                    "vectors",
                    f"no feature intersects images {str(source)!r} (grid {grid.crs.to_string()}, bounds "
                    f"{tuple(round(b, 1) for b in grid.bounds)}); pass images of the layers' area or layers of the "
                    "image's",
                ) from None
            provenance.update(image=rgb.source, image_sha256=rgb.sha256)
        grid = labels.grid
        metadata = fixed_metadata(spec, gsd=grid.gsd)
        metadata = metadata if metadata.lat is not None else layers.with_centre(metadata, grid)
        provenance["grid"] = {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6],
                              "width": grid.width, "height": grid.height}  # fmt: skip
        provenance["objects_t1"] = [{k: v for k, v in asdict(o).items() if k not in ("bbox", "obb")}
                                    for o in labels.objects]  # fmt: skip
        georef = GeoReference(grid.crs, grid.transform)
        return LayoutT1(labels.semantic, labels.instances, grid.gsd, georef, metadata, image, provenance)


def _read_image(path: Path, shape: tuple[int, int] | None) -> RGBImage:
    rgb = read_uint8_rgb(path, argument="images")
    if shape is not None and rgb.pixels.shape[:2] != shape:
        raise FieldError(
            "images",
            f"{str(path)!r}: size {rgb.pixels.shape[0]}x{rgb.pixels.shape[1]} does not match its mask "
            f"{shape[0]}x{shape[1]}; pass the mask made for this image",
        )
    return rgb


def _check_aligned(mask_path: Path, mask: GeoReference | None, rgb: RGBImage) -> None:
    """A georeferenced mask and image pair pixel by pixel only when they share the CRS and the transform."""
    if mask is None or rgb.crs is None:
        return
    same_crs = mask.crs == rgb.crs
    if same_crs and mask.transform.almost_equals(rgb.transform, precision=1e-9 * max(1.0, abs(rgb.transform.a))):
        return
    what = f"CRS {mask.crs.to_string()} vs {rgb.crs.to_string()}" if not same_crs else (
        f"transform {tuple(mask.transform)[:6]} vs {tuple(rgb.transform)[:6]}")  # fmt: skip
    raise FieldError(
        "masks",
        f"{str(mask_path)!r} and images {rgb.source!r} are both georeferenced but not on one pixel grid "
        f"({what}); warp the mask onto the image's grid first (gdalwarp -t_srs <image CRS> -te <image bounds> -ts "
        "<width> <height> -r near mask.tif aligned.tif)",
    )


def image_grid(path: Path, rgb: RGBImage, shape: tuple[int, int]) -> TargetGrid:
    """The north-up, metric pixel grid of a t1 image, for rasterising vector layers on it."""
    if rgb.crs is None:
        raise FieldError(
            "images",
            f"{str(path)!r}: not georeferenced; vectors are rasterised on the image's grid, so the "
            "image must be a GeoTIFF with a CRS (or pass masks with a mask of the image)",
        )
    t = rgb.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0 or abs(abs(t.a) - abs(t.e)) > 1e-9 * abs(t.a):
        raise FieldError(
            "images",
            f"{str(path)!r}: transform {tuple(t)[:6]} is not north-up with square pixels; warp it first "
            "(gdalwarp -t_srs EPSG:326zz -tr GSD GSD)",
        )
    if not rgb.crs.is_projected:
        raise FieldError(
            "images",
            f"{str(path)!r}: CRS {rgb.crs.to_string()} is not in metres; road widths and set-backs need "
            "a projected CRS: reproject it (gdalwarp -t_srs EPSG:326zz, the UTM zone)",
        )
    return TargetGrid(rgb.crs, t, shape[1], shape[0])


def inpaint_change(
    pipe: Any, image: np.ndarray, semantic: np.ndarray, change: np.ndarray, seed: int, common: dict[str, Any]
) -> np.ndarray:
    """``image`` with exactly the ``change`` pixels regenerated under layout ``semantic``: every other pixel is
    returned bit for bit."""
    out = image.copy()
    if change.any():
        generated = synthesise(pipe, semantic, seed, common, image, change)
        out[change] = generated[change]
    return out


def synthesise(
    pipe: Any, semantic: np.ndarray, seed: int, common: dict[str, Any],
    image: np.ndarray | None = None, region: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(H, W, 3) uint8 image of ``semantic`` (inpainting ``region`` of ``image`` when given). Layouts whose
    size is not a multiple of the model's are padded (edge pixels, 'keep' region) and cropped back. The 'mask'
    control is coloured in the model card's palette (canonical colours without one); a model without a 'mask'
    control inpaints from the prompt alone."""
    height, width = semantic.shape
    m = pipe.size_multiple
    kwargs: dict[str, Any] = {}
    if image is not None:
        t1 = pad_to_multiple(image, m, mode="edge")
        kwargs["image"] = torch.from_numpy(t1).permute(2, 0, 1)[None] / 255.0  # (1, 3, H', W')
        kwargs["mask_image"] = torch.from_numpy(pad_to_multiple(region, m)).float()[None, None]  # (1, 1, H', W')
        kwargs["feather_px"] = 0
        control = pad_to_multiple(semantic, m, mode="edge")
    else:
        control = pad_to_multiple(semantic, m, constant_values=IGNORE)
    card_palette = getattr(getattr(pipe, "model_card", None), "palette", None) or {}
    name = card_palette.get("name", "canonical")
    if name not in PALETTES or card_palette.get("encoding", "color") != "color":
        raise FieldError("model", f"rsgen_model.json palette={card_palette}: change pairs colour the 'mask' control "
                         f"in a known palette ({', '.join(sorted(PALETTES))}) with encoding 'color'")  # fmt: skip
    scheme = PALETTES[name]
    ids = control if scheme is CANONICAL else scheme.from_canonical(control)  # (H', W') ids in the model's scheme
    controls = {"mask": encode_color(SemanticMask(ids, scheme))[None]} if "mask" in pipe.control_names else {}
    out = pipe(controls=controls, generator=[torch.Generator().manual_seed(seed)], **kwargs, **common)
    generated = (out.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return generated[:height, :width]
