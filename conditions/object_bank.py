"""The object bank: real object instances and class textures harvested from image/mask pairs.

``build_bank`` cuts every instance of the harvested classes (4-connected components of a class in the canonical
layout; instances cut by the image border or smaller than ``min_area_m2`` are skipped) out of its image: the
bounding box grown by a context margin (shadow side included), the object's exact mask in that crop, the ground
pixels around it (``context``: pixels of no harvested class), GSD, footprint area, orientation and size
(``cv2.minAreaRect``) and Lab colour statistics. Per image and canonical class it also takes a few square texture
patches lying fully inside the class, for class transitions and removals.

A bank is one safetensors file: the arrays are tensors (``objects.{k}.pixels``, ``objects.{k}.mask``,
``objects.{k}.context``, ``textures.{k}.pixels``), everything else is a JSON index in the file's metadata (key
``rsgen_bank``, with ``format_version``); loading needs no pickle. Provenance: every source image and mask with its
sha256, the palette, the licence text the user gave, and the build parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_tensors
from safetensors.numpy import save_file

from conditions.masks import read_mask
from conditions.palettes import CANONICAL, IGNORE, PALETTES, Palette, get_palette
from conditions.raster_input import RGBImage, read_uint8_rgb
from core.atomic import atomic_path
from core.errors import InputError
from core.hashing import sha256_file
from core.progress import progress

logger = logging.getLogger(__name__)

BANK_FORMAT_VERSION = 1
BANK_SUFFIX = ".safetensors"
METADATA_KEY = "rsgen_bank"
RASTER_SUFFIXES = (".png", ".tif", ".tiff")
MIN_CONTEXT_PIXELS = 16  # fewer context pixels than this: no context colour statistics
# The four corners of a pixel (x, y offsets): minAreaRect of the corners of the mask's pixels measures a block of
# w x h pixels as w x h (of the pixel centres it would measure (w - 1) x (h - 1)).
_PIXEL_CORNERS = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.int32)


class BankError(InputError):
    """Bad input to the object bank (a folder, a flag, a bank file); the message names it and says the fix."""


Stats = tuple[float, float, float]


@dataclass(frozen=True, eq=False)
class BankObject:
    """One real object: its crop (bounding box grown by the context margin, clipped at the image edge)."""

    id: str  # unique in the bank: "{source stem}/{class}/{component label}"
    class_name: str  # canonical class name
    source: str  # the image file name it came from
    gsd: float  # metres per pixel of the crop
    pixels: np.ndarray  # (h, w, 3) uint8 RGB
    mask: np.ndarray  # (h, w) bool: exactly the object's own pixels
    context: np.ndarray  # (h, w) bool: crop pixels of no harvested class (and not ignore): the ground around it
    area_m2: float  # mask pixel count * gsd^2
    orientation_deg: float  # angle of the long side of the minAreaRect, in [0, 180), from the image x axis, y down
    length_m: float  # minAreaRect sides in metres, length_m >= width_m
    width_m: float
    lab_mean: Stats  # cv2 8-bit Lab (COLOR_RGB2LAB) mean / std of the mask pixels
    lab_std: Stats
    context_lab_mean: Stats | None  # of the context pixels (None when there are < MIN_CONTEXT_PIXELS)
    context_lab_std: Stats | None
    origin: tuple[int, int] = (0, 0)  # (row, col) of the crop's top-left pixel in the source image


@dataclass(frozen=True, eq=False)
class TexturePatch:
    """A square patch lying fully inside one class region of its source image."""

    id: str  # "{source stem}/{class}/texture-{j}"
    class_name: str
    source: str
    gsd: float
    pixels: np.ndarray  # (s, s, 3) uint8
    origin: tuple[int, int] = (0, 0)  # (row, col) of the patch's top-left pixel in the source image


@dataclass(frozen=True)
class BankSource:
    """An image/mask pair the bank was harvested from (file names and their sha256)."""

    file: str
    sha256: str
    mask_file: str
    mask_sha256: str
    gsd: float = 0.0
    height: int = 0
    width: int = 0


_ARRAY_FIELDS = {"pixels", "mask", "context"}


@dataclass(frozen=True, eq=False)
class ObjectBank:
    """Real objects and class textures with their provenance; one ``.safetensors`` file on disk."""

    objects: tuple[BankObject, ...]
    textures: tuple[TexturePatch, ...]
    sources: tuple[BankSource, ...]
    licence: str  # what the user said about the source imagery's terms; "" = not stated
    palette: str  # the palette of the source masks
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the build_bank arguments
    _file_sha256: str | None = field(default=None, repr=False)

    def of_class(self, name: str) -> list[BankObject]:
        """The objects of canonical class ``name`` (in bank order)."""
        _check_class_name(name)
        return [o for o in self.objects if o.class_name == name]

    def textures_of(self, name: str) -> list[TexturePatch]:
        """The texture patches of canonical class ``name`` (in bank order)."""
        _check_class_name(name)
        return [t for t in self.textures if t.class_name == name]

    def index(self) -> dict[str, Any]:
        """The JSON index stored in the file's metadata: everything but the arrays."""
        return {
            "format_version": BANK_FORMAT_VERSION,
            "palette": self.palette,
            "licence": self.licence,
            "parameters": dict(self.parameters),
            "sources": [asdict(s) for s in self.sources],
            "objects": [_record(o) for o in self.objects],
            "textures": [_record(t) for t in self.textures],
        }

    def tensors(self) -> dict[str, np.ndarray]:
        """The arrays, by the tensor names of the file."""
        out: dict[str, np.ndarray] = {}
        for k, o in enumerate(self.objects):
            out[f"objects.{k}.pixels"] = np.ascontiguousarray(o.pixels)
            out[f"objects.{k}.mask"] = np.ascontiguousarray(o.mask)
            out[f"objects.{k}.context"] = np.ascontiguousarray(o.context)
        for k, t in enumerate(self.textures):
            out[f"textures.{k}.pixels"] = np.ascontiguousarray(t.pixels)
        return out

    def to_bytes(self) -> bytes:
        """The bank file's bytes (what :meth:`save` writes)."""
        return save_tensors(self.tensors(), metadata=self._metadata())

    def _metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(self.index(), separators=(",", ":"))}

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank to ``path`` (``.safetensors``) atomically: the file is complete or absent."""
        path = Path(path)
        check_bank_path(path, "out")
        with atomic_path(path) as tmp:
            save_file(self.tensors(), tmp, metadata=self._metadata())
        object.__setattr__(self, "_file_sha256", sha256_file(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ObjectBank:
        """Read a bank written by :meth:`save`; a missing, corrupt or other-version file raises :class:`BankError`."""
        path = Path(path)
        check_bank_path(path, "bank")
        if not path.is_file():
            raise BankError(f"bank {str(path)!r}: no such file; build one with `rsgen bank build ... --out {path}`")
        where = f"bank {str(path)!r}"
        try:
            with safe_open(path, framework="numpy") as handle:
                raw = (handle.metadata() or {}).get(METADATA_KEY)
                if raw is None:
                    raise BankError(f"{where}: a safetensors file without an rsgen bank index (metadata key "
                                    f"{METADATA_KEY!r}); pass a file written by `rsgen bank build`")  # fmt: skip
                index = json.loads(raw)
                version = index.get("format_version") if isinstance(index, dict) else None
                if version != BANK_FORMAT_VERSION:
                    raise BankError(f"{where}: bank format version {version!r}, this rsgen reads version "
                                    f"{BANK_FORMAT_VERSION}; rebuild it with `rsgen bank build`")  # fmt: skip
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except BankError:
            raise
        except (OSError, SafetensorError, ValueError) as err:
            raise BankError(f"{where}: not a readable bank file ({err}); rebuild it with `rsgen bank build`") from None
        try:
            bank = _from_index(index, tensors)
        except (KeyError, TypeError, ValueError) as err:
            raise BankError(f"{where}: corrupt bank index ({type(err).__name__}: {err}); rebuild it with "
                            "`rsgen bank build`") from None  # fmt: skip
        object.__setattr__(bank, "_file_sha256", sha256_file(path))
        return bank

    @property
    def sha256(self) -> str:
        """sha256 of the file the bank was loaded from / saved to, else of the bytes :meth:`save` would write."""
        if self._file_sha256 is None:
            object.__setattr__(self, "_file_sha256", hashlib.sha256(self.to_bytes()).hexdigest())
        return self._file_sha256  # type: ignore[return-value]


def check_bank_path(path: Path, argument: str) -> None:
    if path.suffix.lower() != BANK_SUFFIX:
        raise BankError(f"{argument} {str(path)!r}: a bank is one {BANK_SUFFIX} file; name it e.g. "
                        f"{path.with_suffix(BANK_SUFFIX).name!r}")  # fmt: skip


def _check_class_name(name: str) -> None:
    if name not in CANONICAL.names:
        raise BankError(f"class {name!r}: not a canonical class; the classes are {CANONICAL.names}")


def _record(item: BankObject | TexturePatch) -> dict[str, Any]:
    return {f.name: getattr(item, f.name) for f in fields(item) if f.name not in _ARRAY_FIELDS}


def _stats(value: Any) -> Stats | None:
    return None if value is None else (float(value[0]), float(value[1]), float(value[2]))


def _check_array(name: str, array: np.ndarray, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
    if array.dtype != dtype or array.shape != shape:
        raise ValueError(f"tensor {name}: {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}")
    return array


def _from_index(index: dict[str, Any], tensors: dict[str, np.ndarray]) -> ObjectBank:
    objects = []
    for k, rec in enumerate(index["objects"]):
        pixels = tensors[f"objects.{k}.pixels"]
        hw = pixels.shape[:2]
        _check_array(f"objects.{k}.pixels", pixels, np.uint8, (*hw, 3))
        mask = _check_array(f"objects.{k}.mask", tensors[f"objects.{k}.mask"], np.bool_, hw)
        context = _check_array(f"objects.{k}.context", tensors[f"objects.{k}.context"], np.bool_, hw)
        objects.append(BankObject(
            id=str(rec["id"]), class_name=str(rec["class_name"]), source=str(rec["source"]), gsd=float(rec["gsd"]),
            pixels=pixels, mask=mask, context=context, area_m2=float(rec["area_m2"]),
            orientation_deg=float(rec["orientation_deg"]), length_m=float(rec["length_m"]),
            width_m=float(rec["width_m"]), lab_mean=_stats(rec["lab_mean"]), lab_std=_stats(rec["lab_std"]),
            context_lab_mean=_stats(rec["context_lab_mean"]), context_lab_std=_stats(rec["context_lab_std"]),
            origin=(int(rec["origin"][0]), int(rec["origin"][1])),
        ))  # fmt: skip
    textures = []
    for k, rec in enumerate(index["textures"]):
        pixels = tensors[f"textures.{k}.pixels"]
        side = pixels.shape[0]
        _check_array(f"textures.{k}.pixels", pixels, np.uint8, (side, side, 3))
        textures.append(TexturePatch(
            id=str(rec["id"]), class_name=str(rec["class_name"]), source=str(rec["source"]), gsd=float(rec["gsd"]),
            pixels=pixels, origin=(int(rec["origin"][0]), int(rec["origin"][1])),
        ))  # fmt: skip
    sources = tuple(BankSource(**rec) for rec in index["sources"])
    return ObjectBank(tuple(objects), tuple(textures), sources, str(index["licence"]), str(index["palette"]),
                      dict(index.get("parameters", {})))  # fmt: skip


# --- building a bank ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    class_ids: tuple[int, ...]  # canonical ids of the harvested classes, in the order asked
    margin_m: float
    min_area_m2: float
    max_objects_per_image: int | None
    texture_size_m: float
    textures_per_class: int
    seed: int


@dataclass
class _Layout:
    """One source image with its canonical layout, ready to harvest."""

    path: Path
    rgb: RGBImage
    semantic: np.ndarray  # (H, W) canonical ids
    instances: np.ndarray | None  # (H, W) int32 building instance ids (vectors: one per footprint), else None
    pixel_size: float
    mask_file: str
    mask_sha256: str


def build_bank(
    images: Path,
    masks: Path | None,
    palette: str | None,
    *,
    gsd: float | None = None,
    classes: Sequence[str] = ("building",),
    margin_m: float = 3.0,
    min_area_m2: float = 20.0,
    max_objects_per_image: int | None = None,
    texture_size_m: float = 16.0,
    textures_per_class: int = 4,
    licence: str = "",
    seed: int = 0,
    vectors: Sequence[str] = (),
    vectors_crs: str | None = None,
) -> ObjectBank:
    """Harvest the instances of ``classes`` and per-class textures from the image/mask pairs of ``images`` and
    ``masks`` (folders whose files pair by name, or two files) in ``palette``'s scheme. ``gsd`` (metres per pixel)
    overrides the images' georeference; without one the images must be georeferenced on a projected CRS with
    square pixels. Instead of masks, ``vectors`` (layer specs as in ``rsgen generate --vectors``, e.g.
    ``buildings:footprints.geojson``) are rasterised on each georeferenced image's grid: building instances are
    then the footprints (touching footprints stay apart), not connected regions."""
    if vectors:
        if masks is not None or palette not in (None, "canonical"):
            raise BankError(f"vectors {list(vectors)}: the layout comes from the vectors; leave masks and palette "
                            "out (or pass masks and palette without vectors)")  # fmt: skip
        scheme = CANONICAL
    elif masks is None:
        raise BankError("masks: none given; pass masks (with their palette), or vectors on georeferenced images")
    elif palette is None:
        raise BankError(f"palette: masks {str(masks)!r} need their label scheme; pass one of {sorted(PALETTES)}")
    else:
        scheme = _palette(palette)
    settings = _settings(scheme, classes, gsd, margin_m, min_area_m2, max_objects_per_image, texture_size_m,
                         textures_per_class, seed)  # fmt: skip
    objects: list[BankObject] = []
    textures: list[TexturePatch] = []
    sources: list[BankSource] = []
    if vectors:
        layouts = _vector_layouts(Path(images), vectors, vectors_crs, gsd)
    else:
        layouts = _mask_layouts(Path(images), Path(masks), scheme, gsd)  # type: ignore[arg-type]
    for layout in layouts:
        name = layout.path.name
        generator = np.random.default_rng(_image_seed(seed, name))
        pixels, semantic, size = layout.rgb.pixels, layout.semantic, layout.pixel_size
        objects += _harvest_objects(pixels, semantic, layout.instances, size, name, settings, generator)
        textures += _harvest_textures(pixels, semantic, size, name, settings, generator)
        height, width = semantic.shape
        sources.append(BankSource(name, layout.rgb.sha256, layout.mask_file, layout.mask_sha256, size, height, width))
    if not objects:
        names = [CANONICAL.by_id()[i].name for i in settings.class_ids]
        where = f"vectors {list(vectors)}" if vectors else f"masks {str(masks)!r}"
        raise BankError(
            f"{where}: no instance of {names} of at least {min_area_m2} m2 that the image border does not cut, in "
            f"{len(sources)} image(s); pass layouts that have such objects, other classes or a lower min_area_m2 "
            "(--classes, --min-area-m2)"
        )
    parameters = {"classes": [CANONICAL.by_id()[i].name for i in settings.class_ids],
                  "gsd": None if gsd is None else float(gsd), "margin_m": settings.margin_m,
                  "min_area_m2": settings.min_area_m2, "max_objects_per_image": settings.max_objects_per_image,
                  "texture_size_m": settings.texture_size_m, "textures_per_class": settings.textures_per_class,
                  "seed": settings.seed, "vectors": [str(v) for v in vectors], "vectors_crs": vectors_crs}  # fmt: skip
    return ObjectBank(tuple(objects), tuple(textures), tuple(sources), licence, scheme.name, parameters)


def _mask_layouts(images: Path, masks: Path, scheme: Palette, gsd: float | None) -> Iterator[_Layout]:
    pairs = _pairs(images, masks)
    for image_path, mask_path in progress(pairs, desc="bank", unit="image"):
        rgb, semantic, mask_sha = _read_pair(image_path, mask_path, scheme)
        yield _Layout(image_path, rgb, semantic, None, _pixel_size(rgb, gsd, image_path), mask_path.name, mask_sha)


def _vector_layouts(images: Path, vectors: Sequence[str], crs: str | None, gsd: float | None) -> Iterator[_Layout]:
    """The vector layers rasterised on the grid of every image of ``images`` (a folder or one GeoTIFF)."""
    from conditions import vector_layouts
    from conditions.vectors import TargetGrid, VectorError

    if not images.exists():
        raise BankError(f"images {str(images)!r}: no such file or folder")
    files = [images] if images.is_file() else _raster_files(images)
    if not files:
        raise BankError(f"images {str(images)!r}: no .png/.tif files found")
    _check_stems(images, files)
    try:
        rules = vector_layouts.load_layer_rules(list(vectors), crs=crs)
    except VectorError as err:
        raise BankError(f"vectors {str(err).removeprefix('vectors ')}") from None
    layers = vector_layouts.layer_sources(rules)
    layer_names = ",".join(Path(str(layer["source"])).name for layer in layers)
    layer_sha = ",".join(str(layer["sha256"]) for layer in layers)
    for path in progress(files, desc="bank", unit="image"):
        rgb = read_uint8_rgb(path, argument="images")
        if rgb.crs is None:
            raise BankError(f"images {str(path)!r}: not georeferenced; vectors are rasterised on the image's grid, "
                            "so pass GeoTIFFs with a CRS (or masks instead of vectors)")  # fmt: skip
        pixel_size = _pixel_size(rgb, None, path)
        if gsd is not None and abs(gsd - pixel_size) > 1e-9 * pixel_size:
            raise BankError(f"gsd={gsd!r}: images {str(path)!r} have {pixel_size} m pixels, on which the vectors are "
                            "rasterised; leave gsd out")  # fmt: skip
        height, width = rgb.pixels.shape[:2]
        labels = vector_layouts.rasterize_on(rules, TargetGrid(rgb.crs, rgb.transform, width, height),
                                             allow_empty=True)  # fmt: skip
        if not labels.semantic.any():
            logger.warning("images %s: no feature of the vectors intersects it; skipped", path)
            continue
        instances = np.where(labels.semantic == CANONICAL.class_by_name("building").id, labels.instances, 0)
        yield _Layout(path, rgb, labels.semantic, instances.astype(np.int32), pixel_size, layer_names, layer_sha)


def _palette(palette: str) -> Palette:
    if not isinstance(palette, str) or palette.lower() not in PALETTES:
        raise BankError(f"palette {palette!r}: unknown scheme; choose one of {sorted(PALETTES)}")
    return get_palette(palette)


def _settings(
    scheme: Palette,
    classes: Sequence[str],
    gsd: float | None,
    margin_m: float,
    min_area_m2: float,
    max_objects: int | None,
    texture_size_m: float,
    textures_per_class: int,
    seed: int,
) -> _Settings:
    if isinstance(classes, str) or not classes:
        raise BankError(f"classes {classes!r}: give a list of canonical class names, e.g. building,tree")
    expressible = {c.canonical for c in scheme.classes}
    for name in classes:
        if name not in CANONICAL.names:
            raise BankError(f"classes {name!r}: not a canonical class; choose from {CANONICAL.names}")
        if name not in expressible:
            raise BankError(f"classes {name!r}: the {scheme.name!r} palette has no class that maps to it (its "
                            f"classes map to {sorted(expressible)}); choose one of those")  # fmt: skip
    if len(set(classes)) != len(classes):
        raise BankError(f"classes {list(classes)}: a class is listed twice; list each once")
    if gsd is not None and not (math.isfinite(gsd) and gsd > 0):
        raise BankError(f"gsd={gsd!r}: the pixel size must be a positive number of metres, e.g. 0.5")
    checks = {"margin_m": (margin_m, margin_m >= 0, "metres >= 0 (0: no context)"),
              "min_area_m2": (min_area_m2, min_area_m2 >= 0, "square metres >= 0 (0: keep every object)"),
              "texture_size_m": (texture_size_m, texture_size_m > 0, "metres > 0")}  # fmt: skip
    for name, (value, ok, expected) in checks.items():
        if not (math.isfinite(value) and ok):
            raise BankError(f"{name}={value!r}: must be a finite number of {expected}")
    if max_objects is not None and max_objects < 1:
        raise BankError(f"max_objects_per_image={max_objects!r}: must be at least 1, or unset for all objects")
    if textures_per_class < 0:
        raise BankError(f"textures_per_class={textures_per_class!r}: must be >= 0 (0: no textures)")
    class_ids = tuple(CANONICAL.class_by_name(name).id for name in classes)
    return _Settings(class_ids, float(margin_m), float(min_area_m2), max_objects, float(texture_size_m),
                     int(textures_per_class), int(seed))  # fmt: skip


def _raster_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES)


def _pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) file pairs: the same file name in both folders, or the two files given."""
    for name, path in (("images", images), ("masks", masks)):
        if not path.exists():
            raise BankError(f"{name} {str(path)!r}: no such file or folder")
    if images.is_file() or masks.is_file():
        if not (images.is_file() and masks.is_file()):
            raise BankError(f"images {str(images)!r} / masks {str(masks)!r}: pass two folders (files pair by name) "
                            "or two files")  # fmt: skip
        return [(images, masks)]
    image_files, mask_files = _raster_files(images), _raster_files(masks)
    if not image_files:
        raise BankError(f"images {str(images)!r}: no .png/.tif files found")
    image_names, mask_names = {p.name for p in image_files}, {p.name for p in mask_files}
    if image_names - mask_names:
        missing = sorted(image_names - mask_names)
        raise BankError(f"masks {str(masks)!r}: no mask for image(s) {missing[:5]}{' ...' * (len(missing) > 5)}; "
                        "images and masks pair by file name: add the masks or remove those images")  # fmt: skip
    if mask_names - image_names:
        missing = sorted(mask_names - image_names)
        raise BankError(f"images {str(images)!r}: no image for mask(s) {missing[:5]}{' ...' * (len(missing) > 5)}; "
                        "images and masks pair by file name: add the images or remove those masks")  # fmt: skip
    _check_stems(images, image_files)
    return [(p, masks / p.name) for p in image_files]


def _check_stems(images: Path, files: list[Path]) -> None:
    """Object ids start with the image's file stem: two images may not share one."""
    stems: dict[str, str] = {}
    for path in files:
        if path.stem in stems:
            raise BankError(f"images {str(images)!r}: {stems[path.stem]!r} and {path.name!r} share the name "
                            f"{path.stem!r}, which names their objects; rename one")  # fmt: skip
        stems[path.stem] = path.name


def _read_pair(image_path: Path, mask_path: Path, scheme: Palette) -> tuple[RGBImage, np.ndarray, str]:
    """The image, its mask's canonical layout (H, W) uint8 and the mask's sha256."""
    rgb = read_uint8_rgb(image_path, argument="images")
    try:
        mask = read_mask(mask_path, scheme)
    except InputError as err:
        raise BankError(f"masks {str(err).removeprefix('mask ')}") from None
    if mask.shape != rgb.pixels.shape[:2]:
        raise BankError(
            f"masks {str(mask_path)!r}: size {mask.shape[0]}x{mask.shape[1]} does not match its image "
            f"{image_path.name!r} ({rgb.pixels.shape[0]}x{rgb.pixels.shape[1]}); pass the mask made for this image"
        )
    return rgb, scheme.to_canonical(mask.ids), mask.sha256 or sha256_file(mask_path)


def _pixel_size(rgb: RGBImage, gsd: float | None, path: Path) -> float:
    """``gsd`` if given, else the pixel size of a north-up, square-pixel image on a projected CRS."""
    if gsd is not None:
        return float(gsd)
    if rgb.crs is None or rgb.transform is None:
        raise BankError(f"gsd: the images are not georeferenced ({str(path)!r}); pass their pixel size in metres")
    t = rgb.transform
    if not rgb.crs.is_projected or t.b != 0 or t.d != 0 or abs(abs(t.a) - abs(t.e)) > 1e-9 * abs(t.a):
        raise BankError(
            f"gsd: images {str(path)!r} are not on a projected CRS with square, north-up pixels (CRS "
            f"{rgb.crs.to_string()}, transform {tuple(t)[:6]}); pass their pixel size in metres or warp them "
            "(gdalwarp -t_srs EPSG:326zz -tr GSD GSD)"
        )
    return float(abs(t.a))


def _image_seed(seed: int, name: str) -> int:
    """A 63-bit seed of one source image: its draws depend only on ``seed`` and its file name."""
    digest = hashlib.sha256(f"rsgen-bank:{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def footprint_geometry(mask: np.ndarray) -> tuple[float, float, float]:
    """(orientation_deg, length_px, width_px) of ``cv2.minAreaRect`` of the corners of a mask's pixels:
    the angle of the rectangle's long side in [0, 180) from the image x axis (y down), its sides long >= short."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    points = np.concatenate([c.reshape(-1, 2) for c in contours])  # (N, 2) x, y of the boundary pixels
    corners = (points[:, None, :] + _PIXEL_CORNERS[None]).reshape(-1, 2)  # (4N, 2): the hull is the mask's hull
    box = cv2.boxPoints(cv2.minAreaRect(corners.astype(np.float32)))  # (4, 2) corners in order
    edges = np.roll(box, -1, axis=0) - box  # (4, 2): edges 0 and 1 are adjacent sides
    lengths = np.hypot(edges[:, 0], edges[:, 1])
    long_side = int(np.argmax(lengths[:2]))
    dx, dy = float(edges[long_side, 0]), float(edges[long_side, 1])
    angle = math.degrees(math.atan2(dy, dx)) % 180.0
    angle = 0.0 if angle >= 180.0 else angle
    return angle, float(lengths[long_side]), float(lengths[1 - long_side])


def _lab_stats(lab: np.ndarray, where: np.ndarray) -> tuple[Stats, Stats]:
    values = lab[where].astype(np.float64)  # (N, 3)
    mean, std = values.mean(axis=0), values.std(axis=0)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


@dataclass(frozen=True)
class _Candidate:
    class_id: int
    label: int  # the instance's connected-component label
    box: tuple[int, int, int, int]  # x, y, w, h of its pixels
    labels: np.ndarray  # (H, W) int32 component labels of its class


def _instance_boxes(labels: np.ndarray) -> np.ndarray:
    """(N + 1, 5) int64 x, y, w, h, area of every label 0..N of a label map (as cv2's component stats)."""
    count = int(labels.max()) + 1
    ys, xs = np.nonzero(labels)
    ids = labels[ys, xs]
    height, width = labels.shape
    x0, y0 = np.full(count, width, np.int64), np.full(count, height, np.int64)
    x1, y1 = np.full(count, -1, np.int64), np.full(count, -1, np.int64)
    np.minimum.at(x0, ids, xs)
    np.minimum.at(y0, ids, ys)
    np.maximum.at(x1, ids, xs)
    np.maximum.at(y1, ids, ys)
    area = np.bincount(ids, minlength=count)
    return np.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1, area], axis=1)  # (N + 1, 5)


def _candidates(
    semantic: np.ndarray, instances: np.ndarray | None, pixel_size: float, settings: _Settings
) -> list[_Candidate]:
    """Every instance to harvest, in class then label order: 4-connected components of the class, or for
    buildings the given ``instances`` (vector footprints)."""
    height, width = semantic.shape
    out = []
    for class_id in settings.class_ids:
        if instances is not None and class_id == CANONICAL.class_by_name("building").id:
            labels, stats = instances, _instance_boxes(instances)
        else:
            _, labels, stats, _ = cv2.connectedComponentsWithStats((semantic == class_id).astype(np.uint8),
                                                                   connectivity=4)  # fmt: skip
        for label in range(1, len(stats)):
            x, y, w, h, area = (int(v) for v in stats[label])
            if area == 0 or x == 0 or y == 0 or x + w == width or y + h == height:  # absent, or cut by the border
                continue
            if area * pixel_size * pixel_size < settings.min_area_m2:
                continue
            out.append(_Candidate(class_id, label, (x, y, w, h), labels))
    return out


def _harvest_objects(
    pixels: np.ndarray,
    semantic: np.ndarray,
    instances: np.ndarray | None,
    pixel_size: float,
    source: str,
    settings: _Settings,
    generator: np.random.Generator,
) -> list[BankObject]:
    """The bank objects of one image (H, W, 3) uint8 and its canonical layout (H, W)."""
    candidates = _candidates(semantic, instances, pixel_size, settings)
    if settings.max_objects_per_image is not None and len(candidates) > settings.max_objects_per_image:
        keep = np.sort(generator.choice(len(candidates), settings.max_objects_per_image, replace=False))
        candidates = [candidates[i] for i in keep]
    ground = ~np.isin(semantic, settings.class_ids) & (semantic != IGNORE)  # (H, W)
    lab = cv2.cvtColor(pixels, cv2.COLOR_RGB2LAB)  # (H, W, 3) uint8
    margin = int(round(settings.margin_m / pixel_size))
    height, width = semantic.shape
    stem, names = Path(source).stem, CANONICAL.by_id()
    objects = []
    for cand in candidates:
        x, y, w, h = cand.box
        r0, r1 = max(0, y - margin), min(height, y + h + margin)
        c0, c1 = max(0, x - margin), min(width, x + w + margin)
        mask = cand.labels[r0:r1, c0:c1] == cand.label  # (h, w)
        context = ground[r0:r1, c0:c1]
        lab_crop = lab[r0:r1, c0:c1]
        orientation, length_px, width_px = footprint_geometry(mask)
        lab_mean, lab_std = _lab_stats(lab_crop, mask)
        context_mean, context_std = None, None
        if context.sum() >= MIN_CONTEXT_PIXELS:
            context_mean, context_std = _lab_stats(lab_crop, context)
        name = names[cand.class_id].name
        objects.append(BankObject(
            id=f"{stem}/{name}/{cand.label}", class_name=name, source=source, gsd=pixel_size,
            pixels=np.ascontiguousarray(pixels[r0:r1, c0:c1]), mask=mask, context=np.ascontiguousarray(context),
            area_m2=float(mask.sum()) * pixel_size * pixel_size, orientation_deg=orientation,
            length_m=length_px * pixel_size, width_m=width_px * pixel_size, lab_mean=lab_mean, lab_std=lab_std,
            context_lab_mean=context_mean, context_lab_std=context_std, origin=(r0, c0),
        ))  # fmt: skip
    return objects


def texture_side(texture_size_m: float, pixel_size: float) -> int:
    """Side in pixels of a texture patch of ``texture_size_m`` metres (at least 1)."""
    return max(1, int(round(texture_size_m / pixel_size)))


def _harvest_textures(
    pixels: np.ndarray,
    semantic: np.ndarray,
    pixel_size: float,
    source: str,
    settings: _Settings,
    generator: np.random.Generator,
) -> list[TexturePatch]:
    """Up to ``textures_per_class`` non-overlapping square patches per canonical class present in the layout,
    each lying fully inside its class; positions drawn from ``generator``."""
    side = texture_side(settings.texture_size_m, pixel_size)
    height, width = semantic.shape
    if settings.textures_per_class == 0 or side > min(height, width):
        return []
    stem, names = Path(source).stem, CANONICAL.by_id()
    patches = []
    for class_id in np.unique(semantic).tolist():
        if class_id == IGNORE:
            continue
        sums = cv2.integral((semantic == class_id).astype(np.uint8))  # (H + 1, W + 1) int32
        # pixels of the class in the side x side window whose top-left pixel is (r, c): (H - s + 1, W - s + 1)
        counts = sums[side:, side:] - sums[:-side, side:] - sums[side:, :-side] + sums[:-side, :-side]
        free = counts == side * side
        for j in range(settings.textures_per_class):
            positions = np.flatnonzero(free)
            if positions.size == 0:
                break
            r, c = divmod(int(positions[generator.integers(positions.size)]), free.shape[1])
            free[max(0, r - side + 1) : r + side, max(0, c - side + 1) : c + side] = False  # no overlaps
            name = names[class_id].name
            patches.append(TexturePatch(
                id=f"{stem}/{name}/texture-{j}", class_name=name, source=source, gsd=pixel_size,
                pixels=np.ascontiguousarray(pixels[r : r + side, c : c + side]), origin=(r, c),
            ))  # fmt: skip
    return patches


# --- reporting ---------------------------------------------------------------------------------------------------


def _range(values: list[float], unit: str) -> str:
    return f"{min(values):.4g}-{max(values):.4g} {unit}" if values else "-"


def describe_bank(bank: ObjectBank) -> str:
    """A human-readable summary: counts per class, GSD and area ranges, licence, sources."""
    lines = [f"format {BANK_FORMAT_VERSION}, palette {bank.palette}, sha256 {bank.sha256}",
             f"licence: {bank.licence or 'not stated'}",
             f"objects: {len(bank.objects)} (gsd {_range([o.gsd for o in bank.objects], 'm')}, "
             f"area {_range([o.area_m2 for o in bank.objects], 'm2')})"]  # fmt: skip
    for name in CANONICAL.names:
        members = bank.of_class(name)
        if members:
            lines.append(f"  {name}: {len(members)} (area {_range([o.area_m2 for o in members], 'm2')}, "
                         f"length {_range([o.length_m for o in members], 'm')})")  # fmt: skip
    lines.append(f"textures: {len(bank.textures)}")
    for name in CANONICAL.names:
        members = bank.textures_of(name)
        if members:
            lines.append(f"  {name}: {len(members)} ({members[0].pixels.shape[0]} px)")
    lines.append(f"sources: {len(bank.sources)}")
    for s in bank.sources:
        lines.append(f"  {s.file} (sha256 {s.sha256[:12]}) + mask {s.mask_file} (sha256 {s.mask_sha256[:12]}), "
                     f"{s.width}x{s.height} px at {s.gsd:g} m")  # fmt: skip
    return "\n".join(lines) + "\n"


__all__ = [
    "BANK_FORMAT_VERSION",
    "BankError",
    "BankObject",
    "BankSource",
    "ObjectBank",
    "TexturePatch",
    "build_bank",
    "describe_bank",
    "footprint_geometry",
]
