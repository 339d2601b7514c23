"""GeoTIFF output: place a generated image on the map and write it with CRS and transform.

A generated image described by (lat, lon, gsd) is placed in the local UTM zone of (lat, lon), north
up, pixel size = gsd metres, centred on the point.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from pyproj import CRS, Transformer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine, from_origin

from core.atomic import atomic_path
from core.geo import utm_crs_for

RGB_DESCRIPTIONS = ("red", "green", "blue")


@dataclass(frozen=True)
class GeoReference:
    """Where a raster lies: its CRS (None for an ungeoreferenced raster) and affine transform."""

    crs: CRS | None
    transform: Affine

    def bounds(self, height: int, width: int) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (width, height)
        return min(left, right), min(bottom, top), max(left, right), max(bottom, top)


def georeference_from_point(lat: float, lon: float, gsd: float, height: int, width: int) -> GeoReference:
    """North-up UTM georeference of a ``height``×``width`` image of pixel size ``gsd`` centred on (lat, lon)."""
    if not gsd > 0:
        raise ValueError(f"gsd={gsd!r}: expected a positive pixel size in metres")
    crs = utm_crs_for(lat, lon)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = to_utm.transform(lon, lat)
    west = x - width * gsd / 2.0
    north = y + height * gsd / 2.0
    return GeoReference(crs=crs, transform=from_origin(west, north, gsd, gsd))


def write_geotiff(
    path: str | os.PathLike,
    image: np.ndarray,
    georef: GeoReference,
    *,
    descriptions: tuple[str, ...] | None = None,
    nodata: float | None = None,
    tags: dict[str, Any] | None = None,
    cog: bool = False,
) -> Path:
    """Write ``image`` (H, W) or (H, W, bands) atomically as a deflate-compressed, tiled GeoTIFF
    (a Cloud-Optimized GeoTIFF with ``cog=True``).

    ``tags`` values are stored as TIFF metadata (non-strings as JSON).
    """
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]  # (H, W) -> (H, W, 1)
    if array.ndim != 3:
        raise ValueError(f"image: expected (H, W) or (H, W, bands), got shape {array.shape}")
    height, width, bands = array.shape
    if descriptions is not None and len(descriptions) != bands:
        raise ValueError(f"descriptions: got {len(descriptions)} for {bands} bands")
    profile = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": bands,
        "dtype": array.dtype.name,
        "crs": georef.crs,
        "transform": georef.transform,
        "compress": "deflate",
        "nodata": nodata,
    }
    if georef.crs is None and georef.transform == Affine.identity():  # not georeferenced: store no transform
        del profile["crs"], profile["transform"]
    if height >= 256 and width >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if bands == 3 and array.dtype == np.uint8:
        profile["photometric"] = "RGB"
    with atomic_path(path) as tmp:
        plain = tmp.with_name(tmp.name + ".gtiff") if cog else tmp
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)  # e.g. a stack of ungeoreferenced dates
                dst = rasterio.open(plain, "w", **profile)
            with dst:
                dst.write(np.moveaxis(array, -1, 0))  # (H, W, bands) -> (bands, H, W)
                for index, text in enumerate(descriptions or (), start=1):
                    dst.set_band_description(index, text)
                if tags:
                    dst.update_tags(**{k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()})
            if cog:  # COG layout: tiled, overviews, header first
                rasterio.shutil.copy(plain, tmp, driver="COG", compress="deflate")
        finally:
            if cog:
                plain.unlink(missing_ok=True)
    return Path(path)


@contextlib.contextmanager
def geotiff_window_writer(
    path: str | os.PathLike,
    *,
    width: int,
    height: int,
    count: int,
    dtype: str,
    crs: CRS | None,
    transform: Affine,
    nodata: float | None = None,
    descriptions: list[str | None] | None = None,
    tags: dict[str, Any] | None = None,
) -> Iterator[rasterio.io.DatasetWriter]:
    """Open a tiled GeoTIFF to be written window by window; it appears under ``path`` only when the
    body finishes (atomic), so a killed run never leaves a partial raster there."""
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                for index, text in enumerate(descriptions or (), start=1):
                    if text:
                        dst.set_band_description(index, text)
                if tags:
                    dst.update_tags(**{k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()})
                yield dst


def read_raster(path: Path) -> np.ndarray:
    """(H, W, bands) for multi-band rasters, (H, W) for one band."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            data = src.read()  # (bands, H, W)
    return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)
