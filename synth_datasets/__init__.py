"""Writers and readers of what rsgen generates."""

from synth_datasets.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from synth_datasets.geotiff import GeoReference, georeference_from_point, utm_crs_for, write_geotiff
from synth_datasets.sample_writer import write_image_sample

__all__ = [
    "GeoReference",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "georeference_from_point",
    "utm_crs_for",
    "write_geotiff",
    "write_image_sample",
]
