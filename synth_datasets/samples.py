"""What a task hands to a writer: typed samples (images, labels, georeference, record).

A pipeline run produces a sample; a writer turns it into files. Writers never call a model: an
image too large to hold (a tiled scene, a super-resolved raster) arrives as a :class:`StreamedImage`
whose ``produce`` fills rows into the writer's sink.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from conditions.vectors import LayoutObject
from synth_datasets.geotiff import GeoReference

# sink(values (bands, n, W) in the image dtype, row_off): the writer stores rows [row_off, row_off + n)
RowSink = Callable[[np.ndarray, int], None]


@dataclass
class Labels:
    """The labels a layout generated, exact by construction."""

    semantic: np.ndarray  # (H, W) uint8 canonical ids, 255 = ignore
    instances: np.ndarray | None = None  # (H, W) instance ids, 0 = none
    objects: list[LayoutObject] | None = None


@dataclass
class StreamedImage:
    """An image written row by row: ``produce(sink)`` calls ``sink`` for consecutive row strips."""

    height: int
    width: int
    count: int
    dtype: str
    produce: Callable[[RowSink], None]
    descriptions: list[str | None] | None = None
    nodata: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.count)


@dataclass
class ImageSample:
    """One generated image with its provenance record; GeoTIFF when ``georef`` is set, else PNG."""

    image: np.ndarray | StreamedImage  # (H, W, 3) uint8 or float in [0, 1]
    record: dict[str, Any]
    georef: GeoReference | None = None
    labels: Labels | None = None
    cog: bool = False


@dataclass
class ChangePairSample:
    """A bi-temporal pair: both images, both semantic layouts, the change mask and the event record."""

    image_a: np.ndarray  # (H, W, 3) uint8
    image_b: np.ndarray  # (H, W, 3) uint8
    semantic_a: np.ndarray  # (H, W) canonical ids
    semantic_b: np.ndarray  # (H, W) canonical ids
    change_mask: np.ndarray  # (H, W) bool
    record: dict[str, Any]  # events, captions, qa, distractors, changed_fraction, provenance
    georef: GeoReference | None = None


@dataclass
class TimeSeriesSample:
    """T dates of one scene: the images, the layouts, the change masks of date pairs and the event record."""

    images: list[np.ndarray]  # T × (H, W, 3) uint8
    semantics: list[np.ndarray]  # T × (H, W) canonical ids
    changes: dict[tuple[int, int], np.ndarray]  # (a, b) -> (H, W) bool: the pixels changed between dates a and b
    record: dict[str, Any]  # dates, events (with their date index), pairs (captions, qa), distractors, provenance
    georef: GeoReference | None = None
