"""Everything that turns user input into conditioning: metadata (``metadata``, ``metadata_encoder``,
``metadata_adapters``), palettes and semantic masks (``palettes``, ``masks``), vector layers and layouts
(``vectors``, ``vector_layouts``), image controls (``image_controls``), rasters (``raster_input``), change
events, captions and distractors (``change_events``, ``building_placement``, ``change_captions``,
``distractors``).

Light modules are imported eagerly; the torch-backed encoder is imported on first use so that
``rsgen --help`` and metadata validation stay fast.
"""

from typing import Any

from conditions.metadata import Metadata, MetadataError, parse_date
from conditions.metadata_adapters import (
    gsd_to_text2earth_level,
    text2earth_level_to_gsd,
    to_crsdiff,
    to_diffusionsat,
    to_text2earth_prompt,
    web_mercator_gsd,
)

_LAZY = {"DEFAULT_FIELD_SPECS", "FieldSpec", "MetadataEncoder", "PreparedMetadata"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from conditions import metadata_encoder

        return getattr(metadata_encoder, name)
    raise AttributeError(f"module 'conditions' has no attribute {name!r}")


__all__ = [
    "DEFAULT_FIELD_SPECS",
    "FieldSpec",
    "Metadata",
    "MetadataEncoder",
    "MetadataError",
    "PreparedMetadata",
    "gsd_to_text2earth_level",
    "parse_date",
    "text2earth_level_to_gsd",
    "to_crsdiff",
    "to_diffusionsat",
    "to_text2earth_prompt",
    "web_mercator_gsd",
]
