"""Raster inputs for super-resolution: band mapping, radiometric scaling, windowed resampled reads.

A :class:`RasterSource` wraps an open rasterio dataset with the bands that feed the model and its
radiometry. :meth:`RasterSource.read_on_grid` reads any window of an *output grid* (the LR grid
scaled by a factor, or another raster's grid) resampled on the fly, so a tile of a huge raster is
read without loading the whole raster.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from core.errors import InputError

logger = logging.getLogger(__name__)

RADIOMETRY_KINDS = ("auto", "uint8", "reflectance", "float")


class RasterInputError(InputError):
    """A raster input is unreadable, has the wrong bands, or does not fit the other inputs."""


MAX_PIXELS_ENV = "RSGEN_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 25_000_000


def max_pixels() -> int:
    """The largest raster (width × height) read whole: ``RSGEN_MAX_PIXELS`` (``rsgen --max-pixels``), or 25 Mpx."""
    value = os.environ.get(MAX_PIXELS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_PIXELS


def read_whole(
    src: rasterio.io.DatasetReader,
    argument: str,
    bands: int | list[int] | None = None,
    error: type[ValueError] = RasterInputError,
) -> np.ndarray:
    """Read ``bands`` of an open raster whole, after checking what it declares: its size against
    :func:`max_pixels` (a decompression bomb declares 10^10 pixels in a few bytes), a north-up transform
    when it is georeferenced; a truncated or corrupt file is an ``error`` naming ``argument``, not a traceback."""
    path = src.name
    pixels = src.width * src.height
    limit = max_pixels()
    if pixels > limit:
        raise error(
            f"{argument} {path!r}: declares {src.width}x{src.height} pixels ({pixels / 1e6:.1f} Mpx), more than the "
            f"{limit / 1e6:g} Mpx rsgen reads whole; crop or tile it (gdal_translate -srcwin), or raise the limit "
            f"with rsgen --max-pixels {pixels}"
        )
    t = src.transform
    if src.crs is not None and (t.b != 0 or t.d != 0):
        raise error(
            f"{argument} {path!r}: its geotransform is rotated or sheared {tuple(round(v, 6) for v in tuple(t)[:6])}; "
            "rsgen needs north-up rasters: warp it first (gdalwarp -t_srs EPSG:326zz in.tif out.tif)"
        )
    try:
        return src.read(bands) if bands is not None else src.read()
    except rasterio.errors.RasterioError as err:
        reason = str(err).splitlines()[0][:200]
        raise error(
            f"{argument} {path!r}: could not be read ({reason}); the file is truncated or corrupt: download or "
            "export it again"
        ) from None


@dataclass(frozen=True)
class Radiometry:
    """How raw values map to the model's [0, 1] range, and back.

    ``uint8``: value / 255. ``reflectance``: value / 10000 (Sentinel-2/Landsat ×10000 reflectance,
    clipped to [0, 1]). ``float``: values are already in [0, 1].
    """

    kind: str
    dtype: str  # the raster's dtype, restored on output

    @property
    def divisor(self) -> float:
        return {"uint8": 255.0, "reflectance": 10000.0, "float": 1.0}[self.kind]

    @classmethod
    def infer(cls, dtype: str, kind: str = "auto") -> Radiometry:
        if kind not in RADIOMETRY_KINDS:
            raise RasterInputError(f"radiometry={kind!r}: expected one of {RADIOMETRY_KINDS}")
        if kind == "auto":
            if dtype == "uint8":
                kind = "uint8"
            elif dtype in ("uint16", "int16", "uint32", "int32"):
                kind = "reflectance"
            elif dtype.startswith("float"):
                kind = "float"
            else:
                raise RasterInputError(f"radiometry: cannot infer a scaling for dtype {dtype}; pass --radiometry")
        return cls(kind=kind, dtype=dtype)

    def to_unit(self, values: np.ndarray) -> np.ndarray:
        return np.clip(values.astype(np.float32) / self.divisor, 0.0, 1.0)

    def from_unit(self, values: np.ndarray) -> np.ndarray:
        scaled = np.clip(values, 0.0, 1.0) * self.divisor
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(scaled), info.min, info.max).astype(self.dtype)
        return scaled.astype(self.dtype)


def parse_bands(text: str | Sequence[int] | None, count: int, *, argument: str = "--bands") -> list[int]:
    """1-based band indices; ``None`` = the first three bands (or all if fewer)."""
    if text is None:
        return list(range(1, min(count, 3) + 1))
    if isinstance(text, str):
        try:
            bands = [int(part) for part in text.split(",") if part.strip()]
        except ValueError:
            message = f"{argument}={text!r}: expected comma-separated band numbers such as 4,3,2"
            raise RasterInputError(message) from None
    else:
        bands = [int(b) for b in text]
    bad = [b for b in bands if not 1 <= b <= count]
    if not bands or bad:
        raise RasterInputError(
            f"{argument}={text!r}: band(s) {bad or bands} out of range; the raster has {count} band(s), "
            f"numbered 1..{count}"
        )
    return bands


def is_georeferenced(dataset: rasterio.io.DatasetReader) -> bool:
    return dataset.crs is not None


def open_raster(path: str | os.PathLike, *, argument: str) -> rasterio.io.DatasetReader:
    path = Path(path)
    if not path.is_file():
        raise RasterInputError(f"{argument}={str(path)!r}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as err:
        raise RasterInputError(f"{argument}={str(path)!r}: not a raster GDAL can read ({err})") from None


@dataclass
class OutputGrid:
    """The grid an output is computed on: size, transform and CRS (None when not georeferenced)."""

    width: int
    height: int
    transform: Affine
    crs: CRS | None

    @classmethod
    def scaled(cls, dataset: rasterio.io.DatasetReader, scale: float) -> OutputGrid:
        """``dataset``'s grid refined by ``scale``: same bounds, pixels ``scale`` times smaller."""
        width, height = round(dataset.width * scale), round(dataset.height * scale)
        if width < 1 or height < 1:
            raise RasterInputError(f"scale={scale}: the output would be {height}x{width} pixels")
        transform = dataset.transform * Affine.scale(dataset.width / width, dataset.height / height)
        return cls(width=width, height=height, transform=transform, crs=dataset.crs)


class RasterSource:
    """Selected bands of a raster, read in [0, 1] on an output grid window by window.

    ``aligned=True``: the raster lies on the output grid's footprint (it *is* the LR, or a raster
    assumed to cover the same ground when neither is georeferenced) and is resampled by pixel
    ratio. Otherwise it is warped to the output grid's CRS and transform (rasterio WarpedVRT).
    """

    def __init__(
        self,
        dataset: rasterio.io.DatasetReader,
        bands: list[int],
        grid: OutputGrid,
        *,
        radiometry: Radiometry,
        resampling: Resampling = Resampling.cubic,
        aligned: bool = True,
    ) -> None:
        self.dataset = dataset
        self.bands = bands
        self.grid = grid
        self.radiometry = radiometry
        self.resampling = resampling
        self.aligned = aligned
        self.nodata = dataset.nodata
        self._vrt: WarpedVRT | None = None
        if not aligned:
            self._vrt = WarpedVRT(
                dataset,
                crs=grid.crs,
                transform=grid.transform,
                width=grid.width,
                height=grid.height,
                resampling=resampling,
                src_nodata=dataset.nodata,
                nodata=dataset.nodata if dataset.nodata is not None else 0,
            )

    @property
    def descriptions(self) -> list[str | None]:
        return [self.dataset.descriptions[b - 1] for b in self.bands]

    def _source_window(self, window: Window) -> Window:
        sx = self.dataset.width / self.grid.width
        sy = self.dataset.height / self.grid.height
        return Window(window.col_off * sx, window.row_off * sy, window.width * sx, window.height * sy)

    def read_raw(self, window: Window, resampling: Resampling | None = None) -> np.ndarray:
        """(bands, h, w) raw values of the output-grid ``window``; outside the raster: nodata or 0."""
        shape = (len(self.bands), int(window.height), int(window.width))
        fill = self.nodata if self.nodata is not None else 0
        method = resampling or self.resampling
        if self._vrt is not None:  # WarpedVRT cannot read boundless: read the part inside the grid, pad the rest
            out = np.full(shape, fill, dtype=self.dataset.dtypes[self.bands[0] - 1])
            row0, col0 = max(int(window.row_off), 0), max(int(window.col_off), 0)
            row1 = min(int(window.row_off + window.height), self.grid.height)
            col1 = min(int(window.col_off + window.width), self.grid.width)
            if row1 > row0 and col1 > col0:
                inner = Window(col0, row0, col1 - col0, row1 - row0)
                r, c = row0 - int(window.row_off), col0 - int(window.col_off)
                out[:, r : r + row1 - row0, c : c + col1 - col0] = self._vrt.read(self.bands, window=inner)
            return out
        return self.dataset.read(
            self.bands,
            window=self._source_window(window),
            out_shape=shape,
            resampling=method,
            boundless=True,
            fill_value=fill,
        )

    def read_on_grid(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(bands, h, w) float32 in [0, 1] and a (h, w) bool validity mask (False = nodata/outside)."""
        raw = self.read_raw(window)
        if self._vrt is not None:  # the warp's mask: False outside the source footprint and on nodata
            valid = self._warped_valid_mask(window)
        else:
            valid = self._aligned_valid_mask(window)
        if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(raw).all():
            # NaN nodata reached valid pixels through the resampling kernel: take those from the source pixel
            # under their centre, so NaN never spreads; what stays non-finite is nodata (invalid), read as 0.
            if self._vrt is None:
                nearest, _ = self._nearest_native(window)
            else:
                nearest = self.read_raw(window, Resampling.nearest)
            raw = np.where(np.isfinite(raw), raw, nearest)
            valid &= np.isfinite(raw).all(axis=0)
            raw = np.where(np.isfinite(raw), raw, 0).astype(raw.dtype)
        return self.radiometry.to_unit(raw), valid

    def _warped_valid_mask(self, window: Window) -> np.ndarray:
        valid = np.zeros((int(window.height), int(window.width)), dtype=bool)
        row0, col0 = max(int(window.row_off), 0), max(int(window.col_off), 0)
        row1 = min(int(window.row_off + window.height), self.grid.height)
        col1 = min(int(window.col_off + window.width), self.grid.width)
        if row1 > row0 and col1 > col0:
            inner = Window(col0, row0, col1 - col0, row1 - row0)
            masks = self._vrt.read_masks(self.bands, window=inner)  # (bands, h, w) 0 = invalid
            r, c = row0 - int(window.row_off), col0 - int(window.col_off)
            valid[r : r + row1 - row0, c : c + col1 - col0] = (masks > 0).all(axis=0)
        return valid

    def _inside_mask(self, window: Window) -> np.ndarray:
        rows = np.arange(int(window.row_off), int(window.row_off) + int(window.height))
        cols = np.arange(int(window.col_off), int(window.col_off) + int(window.width))
        return ((rows >= 0) & (rows < self.grid.height))[:, None] & ((cols >= 0) & (cols < self.grid.width))[None, :]

    def _source_index(self, window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Row and column of the source pixel under each output pixel's centre, and whether each is inside."""
        sy = self.dataset.height / self.grid.height
        sx = self.dataset.width / self.grid.width
        rows = np.floor((int(window.row_off) + np.arange(int(window.height)) + 0.5) * sy).astype(int)  # (h,)
        cols = np.floor((int(window.col_off) + np.arange(int(window.width)) + 0.5) * sx).astype(int)  # (w,)
        return rows, cols, (rows >= 0) & (rows < self.dataset.height), (cols >= 0) & (cols < self.dataset.width)

    def _nearest_native(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """(bands, h, w) native values of the source pixel under each output pixel's centre, and (h, w) whether
        that pixel is inside the raster."""
        rows, cols, row_in, col_in = self._source_index(window)
        inside = row_in[:, None] & col_in[None, :]  # (h, w)
        dtype = self.dataset.dtypes[self.bands[0] - 1]
        values = np.zeros((len(self.bands), int(window.height), int(window.width)), dtype=dtype)
        if not inside.any():
            return values, inside
        r0, r1 = rows[row_in].min(), rows[row_in].max() + 1
        c0, c1 = cols[col_in].min(), cols[col_in].max() + 1
        block = self.dataset.read(self.bands, window=Window(c0, r0, c1 - c0, r1 - r0))  # (bands, rh, rw) native
        rr = np.clip(rows - r0, 0, r1 - r0 - 1)
        cc = np.clip(cols - c0, 0, c1 - c0 - 1)
        return block[:, rr][:, :, cc], inside

    def _aligned_valid_mask(self, window: Window) -> np.ndarray:
        """Nearest-neighbour validity: an output pixel is valid when the source pixel under its centre is
        inside the raster and not nodata in every band (computed here, not by GDAL's resampler); NaN and
        infinities of float rasters are never values."""
        floating = np.issubdtype(np.dtype(self.dataset.dtypes[self.bands[0] - 1]), np.floating)
        if self.nodata is None and not floating:
            _, _, row_in, col_in = self._source_index(window)
            return row_in[:, None] & col_in[None, :]  # (h, w)
        values, inside = self._nearest_native(window)  # (bands, h, w), (h, w)
        nodata = np.zeros(inside.shape, dtype=bool)
        if self.nodata is not None and not np.isnan(self.nodata):
            nodata |= (values == self.nodata).all(axis=0)
        if floating:
            nodata |= ~np.isfinite(values).all(axis=0)
        return inside & ~nodata

    def close(self) -> None:
        if self._vrt is not None:
            self._vrt.close()
        self.dataset.close()


def check_reference_overlap(lr: rasterio.io.DatasetReader, ref: rasterio.io.DatasetReader) -> bool:
    """Validate that the reference can be aligned to the LR; returns True when it must be warped.

    Both georeferenced: their footprints must overlap (after reprojection). Neither: the reference
    is assumed to cover the LR's ground (with a warning). Only one: an error.
    """
    if lr.crs is None and ref.crs is None:
        logger.warning(
            "neither the LR nor the reference raster has a CRS: assuming they cover the same ground and "
            "resampling the reference by pixel ratio"
        )
        return False
    if lr.crs is None or ref.crs is None:
        which = "the LR raster" if lr.crs is None else "the reference raster"
        raise RasterInputError(
            f"--ref: {which} has no CRS, so the reference cannot be aligned to the LR; georeference both "
            "or neither (then they are assumed to cover the same ground)"
        )
    left, bottom, right, top = transform_bounds(ref.crs, lr.crs, *ref.bounds)
    lr_left, lr_bottom, lr_right, lr_top = lr.bounds
    if left >= lr_right or right <= lr_left or bottom >= lr_top or top <= lr_bottom:
        raise RasterInputError(
            f"--ref: the reference footprint {tuple(round(v, 2) for v in (left, bottom, right, top))} does not "
            f"overlap the LR footprint {tuple(round(v, 2) for v in lr.bounds)} (in {lr.crs}); pass a reference "
            "of the same place"
        )
    return True


@dataclass
class RGBImage:
    """An 8-bit RGB image read unscaled (inpainting must return its pixels bit for bit)."""

    pixels: np.ndarray  # (H, W, 3) uint8
    crs: CRS | None
    transform: Affine | None
    source: str
    sha256: str


def read_uint8_rgb(path: str | os.PathLike, *, argument: str = "image") -> RGBImage:
    """The first three bands of an 8-bit raster and its georeference; errors name ``argument``."""
    from core.hashing import sha256_file

    dataset = open_raster(path, argument=argument)
    with warnings.catch_warnings(), dataset as src:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if src.count < 3 or src.dtypes[0] != "uint8":
            raise RasterInputError(
                f"{argument} {str(path)!r}: expected an 8-bit RGB image, got {src.count} band(s) {src.dtypes[0]}"
            )
        pixels = np.moveaxis(read_whole(src, argument, [1, 2, 3]), 0, -1)  # (H, W, 3)
        if src.nodata is not None and (pixels == src.nodata).all():
            raise RasterInputError(
                f"{argument} {str(path)!r}: every pixel is nodata ({src.nodata}); there is no image to work on: pass "
                "the right file or window"
            )
        crs, transform = (src.crs, src.transform) if src.crs is not None else (None, None)
    return RGBImage(pixels, crs, transform, str(path), sha256_file(path))
