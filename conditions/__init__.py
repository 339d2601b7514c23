"""Everything that turns user input into conditioning: prompts, metadata, (later) masks and vectors."""

from conditions.metadata import Metadata, MetadataError, parse_date
from conditions.metadata_adapters import (
    gsd_to_text2earth_level,
    text2earth_level_to_gsd,
    to_crsdiff,
    to_diffusionsat,
    to_text2earth_prompt,
    web_mercator_gsd,
)
from conditions.metadata_encoder import DEFAULT_FIELD_SPECS, FieldSpec, MetadataEncoder, PreparedMetadata

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
