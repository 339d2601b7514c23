"""Change-pair jobs: simulate change events on a layout, then synthesise the pair.

* ``full``: image t1 from layout t1 and image t2 from layout t2, same seed and metadata (the model
  keeps unchanged areas as similar as it can);
* ``hybrid`` (HySCDG): a real image t1 with its mask; t2 = t1 with only the changed regions
  inpainted under the t2 layout — every pixel outside the change mask is bit-identical to t1.

Layout t1 comes from a semantic mask (``layouts``/``masks`` in a palette) or from vector layers
(``vectors``: building footprints with one instance id each, road lines, class polygons), rasterised
with ``conditions.vectors`` on a UTM grid (full mode: ``size``² pixels at ``gsd``, centred on
``metadata`` lat/lon or the layers) or on the grid of each georeferenced t1 image (hybrid mode).
Optional pseudo-change distractors are applied to t2 and recorded; they never change the label.
Sample ``i`` draws everything from ``sample_seed(seed, i)``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conditions.change_captions import change_captions, change_qa
from conditions.change_events import ChangeConfig, ChangeError, ChangeResult, simulate_change
from conditions.distractors import apply_distractors, check_distractors
from conditions.masks import SemanticMask, encode_color, read_mask
from conditions.metadata import Metadata
from conditions.palettes import CANONICAL, IGNORE
from conditions.vectors import LayerRule, LayoutLabels, TargetGrid, VectorError, rasterize_layout
from core.device import resolve_device
from core.hashing import sha256_file
from core.progress import progress
from core.seeding import sample_seed
from gen.controlled_job import (
    layout_centre,
    layout_labels_at,
    layout_sources,
    load_layout_rules,
    read_uint8_rgb,
    with_centre,
)
from gen.provenance import sample_record
from pipelines.controlled import RSControlledPipeline
from synth_datasets.change_writer import LAYOUTS, write_change_pair
from synth_datasets.geotiff import GeoReference

logger = logging.getLogger(__name__)

MODES = ("full", "hybrid")
RASTER_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass
class ChangePairJob:
    model: str
    out: Path
    mode: str = "full"
    layouts: Path | None = None  # full: folder of semantic masks
    images: Path | None = None  # hybrid: folder (or, with vectors, one file) of t1 images ...
    masks: Path | None = None  # ... and their masks (same file names)
    vectors: list[str] = field(default_factory=list)  # instead of masks: buildings:PATH, roads:PATH, ...
    polygon_classes: dict[str, str] = field(default_factory=dict)  # vectors: "natural=water" -> "water"
    size: int | None = None  # full mode with vectors: grid size in pixels (default: the model's native size)
    palette: str = "levir"
    change: ChangeConfig = field(default_factory=ChangeConfig)
    no_change_fraction: float = 0.0  # pairs with no event (distractors only)
    distractors: list[str] = field(default_factory=list)
    gsd: float = 0.5  # of the masks, or of the vector grid in full mode (hybrid vectors: the image's)
    prompt: str = ""
    metadata: Metadata = field(default_factory=Metadata)  # vectors in full mode: lat/lon centre the grid
    num_samples: int = 1
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    layout_strength: float | None = None  # None: the model card's
    layout: str = "levir"
    device: str = "auto"
    overwrite: bool = False
    _rules: list[LayerRule] | None = field(default=None, init=False, repr=False)
    _full_layout: LayoutLabels | None = field(default=None, init=False, repr=False)

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: expected one of {MODES}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"--layout {self.layout!r}: expected one of {LAYOUTS}")
        if self.vectors and (self.layouts is not None or self.masks is not None):
            given = "--layouts" if self.layouts is not None else "--masks"
            raise ValueError(f"--vectors and {given} both define layout t1; give one of them")
        if self.mode == "full" and self.layouts is None and not self.vectors:
            raise ValueError("--mode full needs --layouts DIR (semantic masks in --palette) or --vectors LAYERS")
        if self.mode == "hybrid" and (self.images is None or (self.masks is None and not self.vectors)):
            raise ValueError(
                "--mode hybrid needs --images DIR and --masks DIR (same file names), or --images with --vectors "
                "(georeferenced images; the layers are rasterised on each image's grid)"
            )
        if not self.gsd > 0:
            raise ValueError(f"--gsd {self.gsd}: expected a positive pixel size in metres")
        if self.size is not None and not (self.vectors and self.mode == "full"):
            raise ValueError(f"--size {self.size}: only sizes the grid of --vectors in full mode; leave it out here")
        if self.size is not None and self.size < 8:
            raise ValueError(f"--size {self.size}: expected a grid of at least 8 pixels")
        if not 0 <= self.no_change_fraction <= 1:
            raise ValueError(f"--no-change-fraction {self.no_change_fraction}: expected a fraction in [0, 1]")
        if self.num_samples < 1:
            raise ValueError(f"-n {self.num_samples}: expected >= 1")
        check_distractors(self.distractors)

    def sources(self) -> list[Path | None]:
        """What sample ``i`` is made from (``sources[i % n]``): mask files; with vectors, the t1 images
        (hybrid) or ``None``, the one vector layout (full)."""
        if self.vectors and self.mode == "full":
            return [None]
        folder = Path(self.images if self.vectors else self.layouts if self.mode == "full" else self.masks)
        argument = "--images" if self.vectors else "--layouts" if self.mode == "full" else "--masks"
        if self.vectors and folder.is_file():
            return [folder]
        if not folder.is_dir():
            raise ValueError(f"{argument} {str(folder)!r}: no such folder")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
        if not files:
            raise ValueError(f"{argument} {str(folder)!r}: no .png/.tif files found")
        return files

    def layer_rules(self) -> list[LayerRule]:
        """The ``vectors`` layers, read once."""
        if self._rules is None:
            self._rules = load_layout_rules(self.vectors, self.polygon_classes, argument="--vectors")
        return self._rules


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


def _read_image(path: Path, shape: tuple[int, int] | None) -> tuple[np.ndarray, GeoReference | None]:
    image, georef = read_uint8_rgb(path, argument="--images")
    if shape is not None and image.shape[:2] != shape:
        raise ValueError(
            f"--images {str(path)!r}: size {image.shape[0]}x{image.shape[1]} does not match its mask "
            f"{shape[0]}x{shape[1]}; pass the mask made for this image"
        )
    return image, georef


def image_grid(path: Path, georef: GeoReference | None, shape: tuple[int, int]) -> TargetGrid:
    """The north-up, metric pixel grid of a t1 image, for rasterising vector layers on it."""
    if georef is None or georef.crs is None:
        raise ValueError(
            f"--images {str(path)!r}: not georeferenced; --vectors are rasterised on the image's grid, so the "
            "image must be a GeoTIFF with a CRS (or pass --masks with a mask of the image)"
        )
    t = georef.transform
    if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0 or abs(abs(t.a) - abs(t.e)) > 1e-9 * abs(t.a):
        raise ValueError(
            f"--images {str(path)!r}: transform {tuple(t)[:6]} is not north-up with square pixels; warp it first "
            "(gdalwarp -t_srs EPSG:326zz -tr GSD GSD)"
        )
    if not georef.crs.is_projected:
        raise ValueError(
            f"--images {str(path)!r}: CRS {georef.crs.to_string()} is not in metres; road widths and set-backs need "
            "a projected CRS: reproject it (gdalwarp -t_srs EPSG:326zz, the UTM zone)"
        )
    return TargetGrid(georef.crs, t, shape[1], shape[0])


def _objects_record(labels: LayoutLabels) -> list[dict[str, Any]]:
    """t1 objects of a vector layout: instance id -> source file, feature index, attributes (e.g. osm_id)."""
    return [{k: v for k, v in asdict(o).items() if k not in ("bbox", "obb")} for o in labels.objects]


def layout_t1(job: ChangePairJob, pipe: RSControlledPipeline, source: Path | None) -> LayoutT1:
    """Layout t1 (and, in hybrid mode, image t1) of a pair made from ``source`` (see ``job.sources()``)."""
    if not job.vectors:
        mask = read_mask(source, job.palette)
        semantic = mask.palette.to_canonical(mask.ids)
        georef = GeoReference(mask.crs, mask.transform) if mask.crs is not None else None
        provenance = {"source": str(source), "source_sha256": sha256_file(source)}
        image = None
        if job.mode == "hybrid":
            path = Path(job.images) / source.name
            image, image_georef = _read_image(path, semantic.shape)
            georef = image_georef or georef
            provenance.update(image=str(path), image_sha256=sha256_file(path))
        metadata = job.metadata if job.metadata.gsd is not None else replace(job.metadata, gsd=job.gsd)
        return LayoutT1(semantic, None, job.gsd, georef, metadata, image, provenance)
    rules = job.layer_rules()
    provenance: dict[str, Any] = {"layers": layout_sources(rules)}
    if source is None:  # full mode: one grid for every sample, rasterised once
        if job._full_layout is None:
            lat, lon = layout_centre(rules, job.metadata)
            size = job.size or pipe.model_card.native_size[0]
            job._full_layout = layout_labels_at(rules, lat, lon, job.gsd, size)
        labels, image = job._full_layout, None
    else:
        image, georef = _read_image(source, None)
        grid = image_grid(source, georef, image.shape[:2])
        labels = rasterize_layout(rules, grid)
        if not labels.semantic.any():
            raise VectorError(
                f"--vectors: no feature intersects --images {str(source)!r} (grid {grid.crs.to_string()}, bounds "
                f"{tuple(round(b, 1) for b in grid.bounds)}); pass images of the layers' area or layers of the image's"
            )
        provenance.update(image=str(source), image_sha256=sha256_file(source))
    grid = labels.grid
    metadata = job.metadata if job.metadata.lat is not None else with_centre(job.metadata, grid)
    metadata = metadata if metadata.gsd is not None else replace(metadata, gsd=grid.gsd)
    provenance["grid"] = {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6],
                          "width": grid.width, "height": grid.height}  # fmt: skip
    provenance["objects_t1"] = _objects_record(labels)
    georef = GeoReference(grid.crs, grid.transform)
    return LayoutT1(labels.semantic, labels.instances, grid.gsd, georef, metadata, image, provenance)


def _control(semantic: np.ndarray) -> torch.Tensor:
    return encode_color(SemanticMask(semantic, CANONICAL))[None]  # (1, 3, H, W)


def _pad(array: np.ndarray, multiple: int, **kwargs: Any) -> np.ndarray:
    """Pad the first two axes at the bottom/right up to a multiple of ``multiple`` (np.pad ``kwargs``)."""
    pad_h, pad_w = -array.shape[0] % multiple, -array.shape[1] % multiple
    if not (pad_h or pad_w):
        return array
    return np.pad(array, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (array.ndim - 2), **kwargs)


def _synthesise(
    pipe: RSControlledPipeline, semantic: np.ndarray, seed: int, common: dict[str, Any],
    image: np.ndarray | None = None, region: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(H, W, 3) uint8 image of ``semantic`` (inpainting ``region`` of ``image`` when given). Layouts whose
    size is not a multiple of the model's are padded (edge pixels, 'keep' region) and cropped back."""
    height, width = semantic.shape
    m = pipe.size_multiple
    kwargs: dict[str, Any] = {}
    if image is not None:
        t1 = _pad(image, m, mode="edge")
        kwargs["image"] = torch.from_numpy(t1).permute(2, 0, 1)[None] / 255.0  # (1, 3, H', W')
        kwargs["mask_image"] = torch.from_numpy(_pad(region, m)).float()[None, None]  # (1, 1, H', W')
        kwargs["feather_px"] = 0
        control = _pad(semantic, m, mode="edge")
    else:
        control = _pad(semantic, m, constant_values=IGNORE)
    out = pipe(controls={"mask": _control(control)}, generator=[torch.Generator().manual_seed(seed)], **kwargs,
               **common)  # fmt: skip
    generated = (out.images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return generated[:height, :width]


def make_pair(job: ChangePairJob, pipe: RSControlledPipeline, index: int, source: Path | None) -> dict[str, Any]:
    """Simulate and synthesise pair ``index`` from ``source``; returns arrays and the record."""
    rng = np.random.default_rng(sample_seed(job.seed, index))
    t1 = layout_t1(job, pipe, source)
    sem_a = t1.semantic
    if rng.random() < job.no_change_fraction:
        instances = t1.instances if t1.instances is not None else np.zeros(sem_a.shape, np.int32)
        result = ChangeResult(sem_a.copy(), instances.copy(), [], np.zeros(sem_a.shape, bool))
    else:
        result = simulate_change(sem_a, t1.gsd, job.change, rng, instances=t1.instances)
    seed = sample_seed(job.seed, index)
    common = {"prompt": job.prompt, "num_inference_steps": job.steps, "guidance_scale": job.guidance,
              "metadata": t1.metadata if pipe.has_metadata else None, "output_type": "pt"}  # fmt: skip
    if job.mode == "full":
        image_a = _synthesise(pipe, sem_a, seed, common)  # same seed for both dates
        image_b = _synthesise(pipe, result.semantic, seed, common)
    else:
        image_a = t1.image
        image_b = image_a.copy()
        if result.change_mask.any():
            generated = _synthesise(pipe, result.semantic, seed, common, image_a, result.change_mask)
            image_b[result.change_mask] = generated[result.change_mask]  # outside: t1 bit for bit
    distractors = []
    if job.distractors:
        image_b, distractors = apply_distractors(image_b, job.distractors, rng)
    height, width = sem_a.shape
    record = {
        "events": [e.to_dict() for e in result.events],
        "captions": change_captions(result.events, width, height, rng),
        "qa": change_qa(result.events, width, height, t1.gsd),
        "distractors": distractors,
        "changed_fraction": float(result.change_mask.mean()),
        "provenance": {
            **sample_record(
                "change_pair",
                pipe,
                job.model,
                job_seed=job.seed,
                index=index,
                steps=job.steps,
                guidance=job.guidance,
                prompt=job.prompt,
                negative_prompt=None,
                metadata=t1.metadata,
            ),
            "mode": job.mode,
            **t1.provenance,
            "gsd": t1.gsd,
        },  # fmt: skip
    }
    return {"A": image_a, "B": image_b, "sem_a": sem_a, "sem_b": result.semantic, "change": result.change_mask,
            "inst_a": t1.instances, "inst_b": result.instances, "record": record, "georef": t1.georef}  # fmt: skip


def run_change_pairs(job: ChangePairJob, pipe: RSControlledPipeline | None = None) -> list[Path]:
    job.validate()
    out = Path(job.out)
    if out.exists() and any((out / "changes").glob("*.json")) and not job.overwrite:
        raise FileExistsError(f"out={str(out)!r} already holds change pairs; pick an empty folder or pass --overwrite")
    sources = job.sources()
    if job.vectors:
        job.layer_rules()  # unreadable layers fail before the model loads
    if pipe is None:
        pipe = RSControlledPipeline.from_bundle(job.model)
        pipe.to(resolve_device(job.device))
    pipe.set_progress_bar_config(disable=True)
    if job.layout_strength is not None:
        pipe.set_layout_strength(job.layout_strength, "--layout-strength")
    if "mask" not in pipe.control_names:
        raise ValueError(f"--model {job.model}: change pairs need a bundle with a 'mask' control")
    written = []
    with progress(total=job.num_samples, desc="change pairs", unit="pair") as bar:
        for index in range(job.num_samples):
            pair = make_pair(job, pipe, index, sources[index % len(sources)])
            written.append(write_change_pair(out, f"{index:06d}", pair["A"], pair["B"], pair["sem_a"], pair["sem_b"],
                                             pair["change"], pair["record"], layout=job.layout,
                                             georef=pair["georef"]))  # fmt: skip
            bar.update(1)
    return written


__all__ = ["ChangeError", "ChangePairJob", "make_pair", "run_change_pairs"]
