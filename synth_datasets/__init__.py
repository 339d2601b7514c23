"""Writers and readers of what rsgen generates."""

from synth_datasets.geotiff import GeoReference, georeference_from_point, write_geotiff
from synth_datasets.sample_writer import write_image_sample

__all__ = [
    "GeoReference",
    "georeference_from_point",
    "write_geotiff",
    "write_image_sample",
]
