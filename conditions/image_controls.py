"""Image controls for ControlNet: turn user rasters into (3, H, W) float32 conditioning images in [0, 1].

Every control is a :class:`ControlImage` carrying its tensor (ControlNet convention: 3 channels,
values in [0, 1]) and its provenance: the source path, the sha256 of the input file and the
parameters used. Controls made here:

* ``canny``: OpenCV Canny edges of an RGB image (:func:`canny_control`);
* ``depth``: normalised surface height from a DSM (and optional DTM) (:func:`elevation_control`);
* ``image``: an already-made control image used as-is (:func:`control_from_spec`).

Learned annotators (HED, MLSD, MiDaS, lineart...) come from the optional ``controlnet-aux`` package
through :func:`load_aux_detector`.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine

from conditions.raster_input import read_whole
from core.errors import InputError
from core.hashing import sha256_file

logger = logging.getLogger(__name__)

CONTROL_KINDS = ("canny", "depth", "image")
STRETCH_PERCENTILES = (2.0, 98.0)
GROUND_PERCENTILE = 2.0
# controlnet-aux annotators loaded by :func:`load_aux_detector`: short name -> class name.
AUX_DETECTORS = {
    "hed": "HEDdetector",
    "leres": "LeresDetector",
    "lineart": "LineartDetector",
    "lineart_anime": "LineartAnimeDetector",
    "midas": "MidasDetector",
    "mlsd": "MLSDdetector",
    "normalbae": "NormalBaeDetector",
    "openpose": "OpenposeDetector",
    "pidinet": "PidiNetDetector",
    "zoe": "ZoeDetector",
}
AUX_INSTALL_HINT = "pip install controlnet-aux torch==2.14.1 torchvision==0.29.1"


class ControlImageError(InputError):
    """A control input is unreadable, of the wrong size or grid, or a parameter is out of range."""


class ControlDependencyError(ImportError):
    """An optional dependency needed for a control (controlnet-aux) is missing or does not import."""


@dataclass
class ControlImage:
    """A ControlNet conditioning image: ``tensor`` is (3, H, W) float32 in [0, 1], plus provenance."""

    name: str
    tensor: torch.Tensor  # (3, H, W) float32 in [0, 1]
    source: str | None = None
    sha256: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = self.tensor
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 3 or t.dtype != torch.float32:
            described = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ControlImageError(f"control {self.name!r}: tensor is {described}; expected (3, H, W) float32")
        if t.numel() and (float(t.min()) < 0.0 or float(t.max()) > 1.0):
            raise ControlImageError(
                f"control {self.name!r}: values span [{float(t.min()):.3g}, {float(t.max()):.3g}]; "
                "expected [0, 1] - divide 8-bit images by 255"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the control image."""
        return int(self.tensor.shape[1]), int(self.tensor.shape[2])


def _open(path: str | os.PathLike, argument: str) -> rasterio.io.DatasetReader:
    path = Path(path)
    if not path.is_file():
        raise ControlImageError(f"{argument}={str(path)!r}: no such file; check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as err:
        raise ControlImageError(
            f"{argument}={str(path)!r}: not an image GDAL can read ({err}); pass a PNG, JPEG or GeoTIFF"
        ) from None


def _check_shape(path: str | os.PathLike, shape: tuple[int, int], target_shape: tuple[int, int] | None) -> None:
    if target_shape is not None and tuple(shape) != tuple(target_shape):
        raise ControlImageError(
            f"{str(path)!r}: size {shape[0]}x{shape[1]} (HxW) does not match target_shape "
            f"{target_shape[0]}x{target_shape[1]}; resize or crop the raster to the target grid"
        )


def _nodata_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where ``data`` is nodata or not finite."""
    invalid = ~np.isfinite(data) if np.issubdtype(data.dtype, np.floating) else np.zeros(data.shape, bool)
    if nodata is not None:
        invalid |= np.isnan(data) if math.isnan(nodata) else data == nodata
    return invalid


def _stretch_to_uint8(band: np.ndarray, invalid: np.ndarray) -> np.ndarray:
    """Robust 2nd-98th percentile stretch of one band to uint8; invalid pixels -> 0."""
    valid = band[~invalid].astype(np.float64)
    if valid.size == 0:
        return np.zeros(band.shape, np.uint8)
    lo, hi = np.percentile(valid, STRETCH_PERCENTILES)
    scaled = (band.astype(np.float64) - lo) / max(hi - lo, 1e-12)
    out = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    out[invalid] = 0
    return out


def read_rgb(
    path: str | os.PathLike,
    *,
    bands: list[int] | tuple[int, ...] | None = None,
    target_shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, CRS | None, Affine | None]:
    """Read a PNG/JPEG/GeoTIFF as (H, W, 3) uint8, with its CRS and transform (None if not georeferenced).

    ``bands``: 1-based band indices, one (replicated to grey RGB) or three; default the first three
    bands, or band 1 when the raster has fewer than three. uint8 values are kept; any other dtype
    (uint16 reflectance, float...) gets a per-band robust 2nd-98th percentile stretch, nodata -> 0.
    """
    with _open(path, "path") as src:
        count = src.count
        if bands is None:
            chosen = [1, 2, 3] if count >= 3 else [1]
        else:
            chosen = [int(b) for b in bands]
            bad = [b for b in chosen if not 1 <= b <= count]
            if bad:
                raise ControlImageError(
                    f"bands={list(bands)!r} for {str(path)!r}: band(s) {bad} out of range; "
                    f"the raster has {count} band(s), numbered 1..{count}"
                )
            if len(chosen) not in (1, 3):
                raise ControlImageError(
                    f"bands={list(bands)!r} for {str(path)!r}: got {len(chosen)} band(s); "
                    "pass one (grey) or three (R,G,B) indices"
                )
        data = read_whole(src, "path", chosen, error=ControlImageError)  # (b, H, W)
        nodata = src.nodata
        crs = src.crs
        transform = src.transform if crs is not None else None
    _check_shape(path, data.shape[1:], target_shape)
    if data.dtype == np.uint8:
        planes = list(data)
    else:
        logger.info("%s: %s raster, applying a 2-98%% percentile stretch per band", path, data.dtype)
        planes = [_stretch_to_uint8(band, _nodata_mask(band, nodata)) for band in data]
    if len(planes) == 1:
        planes = planes * 3
    return np.ascontiguousarray(np.stack(planes, axis=-1)), crs, transform


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float() / 255.0


def _source_and_hash(source: str | os.PathLike | None) -> tuple[str | None, str | None]:
    if source is None:
        return None, None
    path = Path(source)
    return str(source), (sha256_file(path) if path.is_file() else None)


def canny_control(
    image: np.ndarray, low: int = 100, high: int = 200, *, source: str | os.PathLike | None = None
) -> ControlImage:
    """Canny edges (OpenCV) of an (H, W, 3) uint8 image, replicated to 3 channels: edges 1, rest 0.

    ``source``: the image's file, recorded with its sha256 (when it is an existing file).
    """
    import cv2  # deferred: OpenCV is only needed for this control

    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        described = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ControlImageError(f"image: got {described}; expected an (H, W, 3) uint8 array (see read_rgb)")
    for arg, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise ControlImageError(f"{arg}={value!r}: expected an integer threshold in 0..255")
    if not 0 <= low < high <= 255:
        raise ControlImageError(
            f"low={low}, high={high}: Canny thresholds need 0 <= low < high <= 255; e.g. low=100, high=200"
        )
    edges = cv2.Canny(np.ascontiguousarray(image), int(low), int(high))  # (H, W) uint8, 0 or 255
    edge_fraction = float((edges > 0).mean()) if edges.size else 0.0
    tensor = (torch.from_numpy(edges > 0).float()).unsqueeze(0).expand(3, -1, -1).contiguous()
    src, digest = _source_and_hash(source)
    params = {"low": int(low), "high": int(high), "edge_fraction": edge_fraction}
    return ControlImage("canny", tensor, src, digest, params)


def _read_elevation(path: str | os.PathLike, argument: str) -> tuple[np.ndarray, np.ndarray, CRS | None, Affine]:
    """Band 1 of a single-band elevation raster as float64, its invalid mask, CRS and transform."""
    with _open(path, argument) as src:
        if src.count != 1:
            raise ControlImageError(
                f"{argument}={str(path)!r}: {src.count} bands; an elevation model has one band of heights in metres"
            )
        data = read_whole(src, argument, 1, error=ControlImageError)
        nodata, crs, transform = src.nodata, src.crs, src.transform
    if not np.issubdtype(data.dtype, np.number) or data.dtype == np.uint8:
        raise ControlImageError(
            f"{argument}={str(path)!r}: dtype {data.dtype}; expected heights in metres (float32), not an 8-bit image"
        )
    return data.astype(np.float64), _nodata_mask(data, nodata), crs, transform


def elevation_control(
    dsm_path: str | os.PathLike,
    dtm_path: str | os.PathLike | None = None,
    *,
    max_height_m: float = 50.0,
    target_shape: tuple[int, int] | None = None,
) -> ControlImage:
    """Normalised surface height as a depth-style control: 0 = ground, 1 = ``max_height_m`` or higher.

    Height is DSM - DTM, or DSM minus the DSM's 2nd percentile (a flat ground estimate) when no DTM
    is given. Nodata pixels of either file become 0 and are counted in ``params["nodata_pixels"]``.
    ``source``/``sha256`` describe the DSM; the DTM's are in ``params["dtm_source"/"dtm_sha256"]``.
    """
    if not (isinstance(max_height_m, int | float) and math.isfinite(max_height_m) and max_height_m > 0):
        raise ControlImageError(f"max_height_m={max_height_m!r}: expected a positive number of metres, e.g. 50")
    dsm, invalid, crs, transform = _read_elevation(dsm_path, "dsm_path")
    _check_shape(dsm_path, dsm.shape, target_shape)
    params: dict[str, Any] = {"max_height_m": float(max_height_m)}
    if dtm_path is not None:
        dtm, dtm_invalid, dtm_crs, dtm_transform = _read_elevation(dtm_path, "dtm_path")
        problems = []
        if dtm.shape != dsm.shape:
            problems.append(f"size {dsm.shape[0]}x{dsm.shape[1]} vs {dtm.shape[0]}x{dtm.shape[1]}")
        if crs != dtm_crs:
            problems.append(f"CRS {crs} vs {dtm_crs}")
        if not transform.almost_equals(dtm_transform):
            problems.append(f"transform {tuple(transform)[:6]} vs {tuple(dtm_transform)[:6]}")
        if problems:
            raise ControlImageError(
                f"dsm_path={str(dsm_path)!r} and dtm_path={str(dtm_path)!r} are not on the same grid: "
                + "; ".join(problems)
                + ". Resample the DTM onto the DSM grid (e.g. gdalwarp -tr/-te) first"
            )
        invalid |= dtm_invalid
        ground: np.ndarray | float = dtm
        params["ground"] = "dtm"
        params["dtm_source"], params["dtm_sha256"] = str(dtm_path), sha256_file(dtm_path)
    else:
        if invalid.all():
            raise ControlImageError(f"dsm_path={str(dsm_path)!r}: every pixel is nodata; nothing to condition on")
        ground = float(np.percentile(dsm[~invalid], GROUND_PERCENTILE))
        params["ground"] = f"dsm_p{GROUND_PERCENTILE:g}"
        params["ground_level_m"] = ground
    height = np.where(invalid, 0.0, dsm - ground)
    nodata_pixels = int(invalid.sum())
    if nodata_pixels == height.size:
        raise ControlImageError(
            f"dsm_path={str(dsm_path)!r}, dtm_path={str(dtm_path)!r}: every pixel is nodata in one of the files"
        )
    params["nodata_pixels"] = nodata_pixels
    params["clipped_pixels"] = int((height[~invalid] > max_height_m).sum())
    params["max_observed_height_m"] = float(height[~invalid].max())
    if nodata_pixels:
        logger.info("%s: %d nodata pixel(s) set to 0", dsm_path, nodata_pixels)
    unit = (np.clip(height, 0.0, max_height_m) / max_height_m).astype(np.float32)
    tensor = torch.from_numpy(unit).unsqueeze(0).expand(3, -1, -1).contiguous()
    return ControlImage("depth", tensor, str(dsm_path), sha256_file(dsm_path), params)


def load_aux_detector(name: str, source: str) -> Any:
    """A controlnet-aux annotator (``hed``, ``mlsd``, ``midas``, ``lineart``...) from a local folder or hub id.

    Calls ``controlnet_aux.<Class>.from_pretrained(source)``; controlnet-aux is optional and imported
    here, on first use.
    """
    key = name.strip().lower()
    class_name = AUX_DETECTORS.get(key) or next((c for c in AUX_DETECTORS.values() if c.lower() == key), None)
    if class_name is None:
        raise ControlImageError(f"name={name!r}: unknown annotator; known: {', '.join(sorted(AUX_DETECTORS))}")
    if not isinstance(source, str | os.PathLike) or not str(source).strip():
        raise ControlImageError(
            f"source={source!r}: expected a local folder or a hub id such as 'lllyasviel/Annotators'"
        )
    try:
        import controlnet_aux
    except Exception as err:  # ImportError, or RuntimeError from a torch/torchvision mismatch
        raise ControlDependencyError(
            f"load_aux_detector({name!r}): the optional package controlnet-aux is not usable ({err}). "
            f"Install it with a matching torch/torchvision pair: {AUX_INSTALL_HINT}"
        ) from err
    detector_class = getattr(controlnet_aux, class_name, None)
    if detector_class is None:
        version = getattr(controlnet_aux, "__version__", "?")
        raise ControlDependencyError(
            f"load_aux_detector({name!r}): controlnet-aux {version} has no {class_name}; "
            "upgrade it: pip install -U controlnet-aux"
        )
    logger.info("loading controlnet-aux %s from %s", class_name, source)
    return detector_class.from_pretrained(str(source))


def control_from_spec(spec: str, *, target_shape: tuple[int, int] | None = None) -> ControlImage:
    """A control from a CLI string: ``canny:PATH``, ``depth:DSM_PATH[,DTM_PATH]`` or ``image:PATH``.

    ``image:PATH`` uses an already-made control image as-is (1-band images are replicated to RGB).
    """
    kind, sep, rest = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in CONTROL_KINDS:
        raise ControlImageError(
            f"control spec {spec!r}: unknown kind {kind!r}; expected KIND:PATH with KIND one of "
            f"{', '.join(CONTROL_KINDS)} (e.g. canny:scene.png, depth:dsm.tif,dtm.tif)"
        )
    rest = rest.strip()
    if not rest:
        raise ControlImageError(f"control spec {spec!r}: no path after '{kind}:'; e.g. {kind}:input.tif")
    if kind == "canny":
        rgb, _, _ = read_rgb(rest, target_shape=target_shape)
        return canny_control(rgb, source=rest)
    if kind == "depth":
        paths = [p.strip() for p in rest.split(",")]
        if len(paths) > 2 or not all(paths):
            raise ControlImageError(f"control spec {spec!r}: expected depth:DSM_PATH or depth:DSM_PATH,DTM_PATH")
        return elevation_control(paths[0], paths[1] if len(paths) == 2 else None, target_shape=target_shape)
    rgb, _, _ = read_rgb(rest, target_shape=target_shape)
    return ControlImage("image", _to_tensor(rgb), rest, sha256_file(rest), {})


__all__ = [
    "AUX_DETECTORS",
    "CONTROL_KINDS",
    "ControlDependencyError",
    "ControlImage",
    "ControlImageError",
    "canny_control",
    "control_from_spec",
    "elevation_control",
    "sha256_file",
    "load_aux_detector",
    "read_rgb",
]
