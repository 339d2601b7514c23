"""Semantic masks: read (PNG/GeoTIFF, id- or colour-coded), validate, and encode for a ControlNet.

Validation errors name the file and the offending values: unknown class ids or colours, a
non-integer dtype, a size that does not match the target, or a mask that is all no-data.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine

from conditions.palettes import CANONICAL, IGNORE, Palette, PaletteError, check_ids, get_palette
from conditions.raster_input import read_whole
from core.errors import InputError
from core.hashing import sha256_file


class MaskError(InputError):
    """A mask file is unreadable, of the wrong type or size, or holds unknown classes."""


@dataclass
class SemanticMask:
    """Class ids (H, W) uint8 in ``palette``'s scheme, with georeference when the file had one."""

    ids: np.ndarray
    palette: Palette
    crs: CRS | None = None
    transform: Affine | None = None
    source: str | None = None
    sha256: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.ids.shape  # type: ignore[return-value]

    def canonical(self) -> SemanticMask:
        ids = self.palette.to_canonical(self.ids)
        return SemanticMask(ids, CANONICAL, self.crs, self.transform, self.source, self.sha256)

    def class_fractions(self) -> dict[str, float]:
        """Fraction of valid (non-ignore) pixels per class name."""
        valid = ~np.isin(self.ids, self.palette.ignore_ids)
        total = max(int(valid.sum()), 1)
        return {c.name: float((self.ids[valid] == c.id).sum()) / total for c in self.palette.classes}


def read_mask(
    path: str | os.PathLike, palette: str | Palette, *, target_shape: tuple[int, int] | None = None
) -> SemanticMask:
    """Read a single-band id mask or a 3-band colour-coded mask in ``palette``'s scheme."""
    path = Path(path)
    scheme = get_palette(palette) if isinstance(palette, str) else palette
    if not path.is_file():
        raise MaskError(f"mask {str(path)!r}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data = read_whole(src, "mask", error=MaskError)  # (bands, H, W)
                crs, transform = src.crs, (src.transform if src.crs is not None else None)
    except RasterioIOError as err:
        raise MaskError(f"mask {str(path)!r}: not an image GDAL can read ({err})") from None
    if not np.issubdtype(data.dtype, np.integer):
        raise MaskError(
            f"mask {str(path)!r}: dtype {data.dtype} - masks hold integer class ids (uint8); "
            "convert the file or pass an id-coded PNG"
        )
    if data.shape[0] in (3, 4):
        rgb = np.moveaxis(data[:3], 0, -1).astype(np.uint8)  # (H, W, 3)
        try:
            ids = scheme.decode_colors(rgb, source=f"mask {str(path)!r}")
        except PaletteError as err:
            raise MaskError(str(err)) from None
    elif data.shape[0] == 1:
        ids = data[0]
        try:
            check_ids(ids, scheme, source=f"mask {str(path)!r}")
        except PaletteError as err:
            raise MaskError(str(err)) from None
        ids = scheme.lookup()[ids.astype(np.int64)].astype(np.uint8)  # apply aliases (e.g. 255 -> 1)
    else:
        raise MaskError(f"mask {str(path)!r}: {data.shape[0]} bands; expected 1 (class ids) or 3 (palette colours)")
    if target_shape is not None and tuple(ids.shape) != tuple(target_shape):
        raise MaskError(
            f"mask {str(path)!r}: size {ids.shape[0]}x{ids.shape[1]} does not match the target "
            f"{target_shape[0]}x{target_shape[1]}; resize or crop the mask (nearest) to the image"
        )
    if scheme.ignore_ids and np.isin(ids, scheme.ignore_ids).all():
        raise MaskError(
            f"mask {str(path)!r}: every pixel is no-data/ignore ({scheme.ignore_ids}); nothing to condition on"
        )
    return SemanticMask(ids.astype(np.uint8), scheme, crs, transform, str(path), sha256_file(path))


def encode_onehot(mask: SemanticMask) -> torch.Tensor:
    """(C, H, W) float one-hot over the palette's classes in listed order; ignore pixels are all zero."""
    ids = torch.from_numpy(mask.ids.astype(np.int64))  # (H, W)
    planes = [(ids == c.id) for c in mask.palette.classes]
    return torch.stack(planes).float()  # (C, H, W)


def encode_color(mask: SemanticMask) -> torch.Tensor:
    """(3, H, W) float in [0, 1]: the palette colours, the usual input of colour-map ControlNets."""
    rgb = mask.palette.colorize(mask.ids)  # (H, W, 3)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0  # (3, H, W)


__all__ = ["IGNORE", "MaskError", "SemanticMask", "encode_color", "encode_onehot", "read_mask"]
