"""Training data: dataset folders → a fixed, seeded pool of crops (image, canonical mask, caption, metadata).

Four source kinds, each a mapping in the training config's ``data:`` list:

* ``images``   — a folder of RGB images; optional sidecars ``<stem>.txt`` (caption) or ``<stem>.json``
  (``{"caption": ..., "metadata": {...}}``);
* ``masks``    — ``images`` and ``masks`` folders (same file stems) with a ``palette``;
* ``change_pairs`` — a LEVIR-CD folder (``A/``, ``B/``, ``label/``); both dates are used as images, and with
  ``label_class`` (e.g. ``building``) the changed pixels of ``B`` are that class and every other pixel
  is *ignore* (a partial mask: LEVIR-CD and WHU-CD mark newly built buildings);
* ``geotiff``  — GeoTIFF files cut into tiles; the GSD comes from the transform (metres), the date from
  a ``YYYYMMDD`` in the file name, the centre lat/lon from the CRS.

Crops are drawn once, at ``resolution`` pixels, after resampling by each of the source's ``scales``
(scale 2 = a 2×-larger window averaged down, i.e. twice the GSD), with a random flip/rotation. The
pool is a pure function of the config and the seed, so every process and every resumed run sees the
same data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.warp import transform as warp_transform

from conditions.masks import IGNORE
from conditions.metadata import Metadata
from conditions.palettes import CANONICAL, get_palette
from conditions.raster_input import max_pixels, read_whole
from core.errors import InputError
from core.progress import progress

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SOURCE_KINDS = ("images", "masks", "change_pairs", "geotiff")
DATE_IN_NAME = re.compile(r"(?<!\d)(19\d{2}|20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?!\d)")


class TrainDataError(InputError):
    """A training data source is missing, empty or inconsistent; the message names the source."""


@dataclass
class DataSource:
    """One entry of the config's ``data:`` list (paths already resolved against ``data_root``)."""

    kind: str
    path: Path | None = None  # images / change_pairs folder
    images: Path | None = None  # masks kind
    masks: Path | None = None  # masks kind
    files: list[Path] = field(default_factory=list)  # geotiff kind
    palette: str | None = None
    label_class: str | None = None  # change_pairs: class of the changed pixels in B
    gsd: float | None = None  # metres per pixel at scale 1 (geotiff: from the transform)
    sensor: str | None = None
    date: str | None = None
    caption: str = "remote sensing image"
    caption_classes: bool = True  # append the mask's main classes to the caption
    scales: list[int] = field(default_factory=lambda: [1])
    weight: float = 1.0
    bands: list[int] = field(default_factory=lambda: [1, 2, 3])  # geotiff: 1-based RGB bands
    reflectance_max: float = 3000.0  # geotiff uint16: value mapped to 255
    name: str = ""


@dataclass
class Scene:
    """A whole source image held in memory, from which crops are cut."""

    rgb: np.ndarray  # (H, W, 3) uint8
    mask: np.ndarray | None  # (H, W) uint8 canonical ids, IGNORE where unknown
    valid: np.ndarray | None  # (H, W) bool, False on nodata
    caption: str
    metadata: Metadata
    gsd: float | None
    source: str


@dataclass
class TrainingPool:
    """Fixed crops: ``images`` (N, S, S, 3) uint8, ``masks`` (N, S, S) uint8 canonical ids (IGNORE =
    unknown) with ``has_mask`` (N,), plus a caption and metadata per crop."""

    images: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    captions: list[str]
    metadata: list[Metadata]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.images)


# ------------------------------------------------------------------ reading
def _read_image(path: Path, mode: str | None = None) -> np.ndarray:
    """Pixels of a training image (converted to ``mode``); an oversized, truncated or unreadable file is a
    :class:`TrainDataError` naming it (PIL refuses decompression bombs above its own pixel limit)."""
    limit = max_pixels()
    try:
        with Image.open(path) as image:
            if image.width * image.height > limit:
                raise TrainDataError(
                    f"{str(path)!r}: declares {image.width}x{image.height} pixels, more than the {limit} read whole; "
                    "tile it, or raise the limit with rsgen --max-pixels N"
                )
            return np.asarray(image.convert(mode) if mode else image)
    except (OSError, Image.DecompressionBombError, SyntaxError) as err:
        raise TrainDataError(
            f"{str(path)!r}: not an image that can be read ({str(err)[:200]}); export it again"
        ) from None


def _read_rgb(path: Path) -> np.ndarray:
    return _read_image(path, "RGB")  # (H, W, 3) uint8


def _sidecar(path: Path) -> tuple[str | None, Metadata | None]:
    txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
    if js.is_file():
        data = json.loads(js.read_text(encoding="utf-8"))
        meta = data.get("metadata")
        return data.get("caption"), Metadata.from_dict(meta) if isinstance(meta, dict) else None
    if txt.is_file():
        return txt.read_text(encoding="utf-8").strip(), None
    return None, None


def _listed(folder: Path, argument: str) -> list[Path]:
    if not folder.is_dir():
        raise TrainDataError(f"{argument}={str(folder)!r}: no such folder; fix the path (relative to data_root)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise TrainDataError(f"{argument}={str(folder)!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return files


def _metadata(source: DataSource, gsd: float | None, **extra: Any) -> Metadata:
    data: dict[str, Any] = {"gsd": gsd, "sensor": source.sensor, "date": source.date, **extra}
    return Metadata.from_dict({k: v for k, v in data.items() if v is not None})


def _scenes_from_masks(source: DataSource) -> list[Scene]:
    if source.images is None or source.masks is None or source.palette is None:
        raise TrainDataError(f"data source {source.name!r}: kind 'masks' needs 'images', 'masks' and 'palette'")
    palette = get_palette(source.palette)
    masks = {p.stem: p for p in _listed(source.masks, f"{source.name}.masks")}
    scenes = []
    for path in _listed(source.images, f"{source.name}.images"):
        if path.stem not in masks:
            raise TrainDataError(
                f"{source.name}: image {path.name!r} has no mask of the same name in {str(source.masks)!r}; "
                "every image needs its mask"
            )
        rgb = _read_rgb(path)
        raw = _read_image(masks[path.stem])
        if raw.shape != rgb.shape[:2]:
            raise TrainDataError(
                f"{source.name}: mask {masks[path.stem].name!r} is {raw.shape} but its image is {rgb.shape[:2]}; "
                "masks must match their images pixel for pixel"
            )
        mask = palette.to_canonical(raw) if raw.ndim == 2 else palette.to_canonical(palette.decode_colors(raw))
        caption, meta = _sidecar(path)
        scenes.append(
            Scene(rgb, mask.astype(np.uint8), None, caption or source.caption, meta or _metadata(source, source.gsd),
                  source.gsd, f"{source.name}/{path.name}")
        )  # fmt: skip
    return scenes


def _scenes_from_images(source: DataSource) -> list[Scene]:
    if source.path is None:
        raise TrainDataError(f"data source {source.name!r}: kind 'images' needs 'path'")
    folders = sorted(p for p in source.path.iterdir() if p.is_dir()) if source.path.is_dir() else []
    files = [(f, p.name) for p in folders for f in _listed(p, f"{source.name}.path/{p.name}")] if folders else [
        (f, None) for f in _listed(source.path, f"{source.name}.path")]  # fmt: skip
    scenes = []
    for path, folder in files:  # a folder per class: the class name joins the caption
        caption, meta = _sidecar(path)
        default = f"{source.caption} of {folder.replace('_', ' ')}" if folder else source.caption
        scenes.append(
            Scene(_read_rgb(path), None, None, caption or default, meta or _metadata(source, source.gsd),
                  source.gsd, f"{source.name}/{path.name}")
        )  # fmt: skip
    return scenes


def _scenes_from_change_pairs(source: DataSource) -> list[Scene]:
    if source.path is None:
        raise TrainDataError(f"data source {source.name!r}: kind 'change_pairs' needs 'path' (a LEVIR-CD folder)")
    label_id = CANONICAL.class_by_name(source.label_class).id if source.label_class else None
    scenes = []
    b_files = {p.name: p for p in _listed(source.path / "B", f"{source.name}.path/B")}
    for a in _listed(source.path / "A", f"{source.name}.path/A"):
        if a.name not in b_files:
            raise TrainDataError(f"{source.name}: {a.name!r} is in A/ but not in B/; a LEVIR-CD pair needs both dates")
        for date_dir, path in (("A", a), ("B", b_files[a.name])):
            rgb = _read_rgb(path)
            mask = None
            label = source.path / "label" / a.name
            if label_id is not None and date_dir == "B" and label.is_file():
                changed = _read_image(label, "L") > 127  # (H, W)
                mask = np.where(changed, label_id, IGNORE).astype(np.uint8)
            meta = _metadata(source, source.gsd)
            scenes.append(
                Scene(rgb, mask, None, source.caption, meta, source.gsd, f"{source.name}/{date_dir}/{a.name}")
            )
    return scenes


def _scenes_from_geotiff(source: DataSource) -> list[Scene]:
    if not source.files:
        raise TrainDataError(f"data source {source.name!r}: kind 'geotiff' needs 'files' (a list of GeoTIFF paths)")
    scenes = []
    for path in source.files:
        if not path.is_file():
            raise TrainDataError(f"{source.name}.files: {str(path)!r}: no such file; fix the path")
        with rasterio.open(path) as src:
            if max(source.bands) > src.count:
                raise TrainDataError(
                    f"{source.name}.bands={source.bands}: {path.name} has only {src.count} bands; "
                    f"pick bands in 1..{src.count}"
                )
            data = read_whole(src, f"{source.name}.files", list(source.bands), error=TrainDataError)  # (3, H, W)
            valid = np.ones(data.shape[1:], bool) if src.nodata is None else (data != src.nodata).any(axis=0)
            gsd, extra = source.gsd, {}
            if src.crs is not None:
                if src.crs.is_projected:
                    gsd = gsd or float(abs(src.transform.a)) * src.crs.linear_units_factor[1]
                else:  # degrees: metres from the latitude
                    lat0 = (src.bounds.top + src.bounds.bottom) / 2
                    gsd = gsd or float(abs(src.transform.a)) * 111_320 * np.cos(np.radians(lat0))
                cx, cy = (src.bounds.left + src.bounds.right) / 2, (src.bounds.bottom + src.bounds.top) / 2
                lon, lat = warp_transform(src.crs, "EPSG:4326", [cx], [cy])
                extra = {"lat": float(lat[0]), "lon": float(lon[0])}
        if data.dtype == np.uint8:
            rgb = data
        else:  # reflectance-like: scale to 8 bits
            rgb = np.clip(data.astype(np.float32) / source.reflectance_max * 255, 0, 255).astype(np.uint8)
        match = DATE_IN_NAME.search(path.name)
        date = source.date or (f"{match[1]}-{match[2]}-{match[3]}" if match else None)
        meta = _metadata(source, gsd, **extra) if date is None else _metadata(
            DataSource(**{**source.__dict__, "date": date}), gsd, **extra)  # fmt: skip
        scenes.append(Scene(np.ascontiguousarray(rgb.transpose(1, 2, 0)), None, valid, source.caption, meta, gsd,
                            f"{source.name}/{path.name}"))  # fmt: skip
    return scenes


def read_scenes(source: DataSource) -> list[Scene]:
    readers = {
        "images": _scenes_from_images,
        "masks": _scenes_from_masks,
        "change_pairs": _scenes_from_change_pairs,
        "geotiff": _scenes_from_geotiff,
    }
    if source.kind not in readers:
        raise TrainDataError(f"data source {source.name!r}: kind={source.kind!r}; expected one of {list(readers)}")
    scenes = readers[source.kind](source)
    logger.info("data %s: %d scenes", source.name, len(scenes))
    return scenes


# ------------------------------------------------------------------ cropping
def caption_with_classes(caption: str, mask: np.ndarray | None, *, top: int = 3, min_fraction: float = 0.03) -> str:
    """``caption`` plus the mask's main canonical classes by area, e.g. '..., with agriculture, road'."""
    if mask is None:
        return caption
    counts = np.bincount(mask.ravel(), minlength=256)[: len(CANONICAL.classes)]
    total = counts.sum()
    if total == 0:
        return caption
    names = [CANONICAL.by_id()[int(i)].name.replace("_", " ") for i in np.argsort(-counts)[:top]
             if counts[i] / total >= min_fraction and int(i) != 0]  # fmt: skip
    return f"{caption} with {', '.join(names)}" if names else caption


def _dihedral(array: np.ndarray, k: int) -> np.ndarray:
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _crop(scene: Scene, size: int, scale: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None] | None:
    window = size * scale
    height, width = scene.rgb.shape[:2]
    if height < window or width < window:
        return None
    for _ in range(10):  # avoid crops with nodata
        y, x = int(rng.integers(0, height - window + 1)), int(rng.integers(0, width - window + 1))
        if scene.valid is None or scene.valid[y : y + window, x : x + window].all():
            break
    else:
        return None
    rgb = scene.rgb[y : y + window, x : x + window]  # (w, w, 3)
    mask = None if scene.mask is None else scene.mask[y : y + window, x : x + window]
    if scale > 1:
        rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BOX))
        if mask is not None:
            mask = mask[scale // 2 :: scale, scale // 2 :: scale]  # nearest: labels stay exact class ids
    return rgb, mask


def build_pool(sources: list[DataSource], size: int, count: int, seed: int) -> TrainingPool:
    """Draw ``count`` crops of ``size`` px, sources chosen in proportion to ``weight`` (seeded)."""
    rng = np.random.default_rng(seed)
    options: list[tuple[Scene, int, float]] = []  # (scene, scale, weight)
    for source in sources:
        scenes = read_scenes(source)
        usable = [(s, k) for s in scenes for k in source.scales if min(s.rgb.shape[:2]) >= size * k]
        if not usable:
            raise TrainDataError(
                f"data source {source.name!r}: no image is at least {size}×scale px for scales {source.scales}; "
                "lower the resolution or the scales"
            )
        options += [(s, k, source.weight / len(usable)) for s, k in usable]
    weights = np.array([w for _, _, w in options], dtype=np.float64)
    weights /= weights.sum()
    images = np.zeros((count, size, size, 3), np.uint8)
    masks = np.full((count, size, size), IGNORE, np.uint8)
    has_mask = np.zeros(count, bool)
    captions, metadata, names = [], [], []
    filled = 0
    with progress(total=count, desc="training crops", unit="crop") as bar:
        while filled < count:
            scene, scale, _ = options[int(rng.choice(len(options), p=weights))]
            cut = _crop(scene, size, scale, rng)
            if cut is None:
                continue
            k = int(rng.integers(0, 8))
            images[filled] = _dihedral(cut[0], k)
            if cut[1] is not None:
                masks[filled] = _dihedral(cut[1], k)
                has_mask[filled] = bool((masks[filled] != IGNORE).any())
            meta = scene.metadata
            if scene.gsd is not None:
                meta = dataclasses.replace(meta, gsd=scene.gsd * scale)
            captions.append(caption_with_classes(scene.caption, masks[filled] if has_mask[filled] else None))
            metadata.append(meta)
            names.append(scene.source)
            filled += 1
            bar.update()
    return TrainingPool(images, masks, has_mask, captions, metadata, names)


__all__ = ["DataSource", "TrainDataError", "TrainingPool", "build_pool", "caption_with_classes", "read_scenes"]
