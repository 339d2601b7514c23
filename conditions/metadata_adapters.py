"""Adapters from :class:`Metadata` to the metadata inputs of public RS diffusion checkpoints.

These reproduce the published field orders and scalings so that a later pipeline can drive the
public weights:

* **DiffusionSat** (Khanna et al. 2024, ``diffusionsat/data_util.py: metadata_normalize``):
  ``[lon, lat, gsd, cloud, year, month, day]`` on a 0–1000 scale —
  ``(lon+180)/360``, ``(lat+90)/180``, ``gsd/1 m``, ``cloud fraction``, ``(year-1980)/120``,
  ``month/12``, ``day/31``, each times 1000. GSD is not clipped (values above 1000 for GSD > 1 m,
  as in the original). Missing fields are 0, the placeholder DiffusionSat itself uses.
* **CRS-Diff** (Tang et al. 2024, ``src/test/test.py: normalize_values``):
  ``[year, month, day, gsd, cloud, lat, lon]`` min–max scaled with ranges year 1980–2024,
  month 0–12, day 0–31, gsd 0–5 m, cloud 0–100 %, lat −90–90, lon −180–180, not clipped.
  Missing fields are 0, as in CRS-Diff's own inference script.
* **Text2Earth** (Liu et al. 2025): a Google-Maps level 10–18 with the nominal resolution
  ``gsd = 2 ** (17 - level)`` m/px (level 10 → 128 m, 18 → 0.5 m), given to the model as a
  ``"{level}_GOOGLE_LEVEL_"`` prompt prefix.
"""

from __future__ import annotations

import math

from conditions.metadata import Metadata, MetadataError

DIFFUSIONSAT_FIELDS = ("lon", "lat", "gsd", "cloud", "year", "month", "day")
CRSDIFF_FIELDS = ("year", "month", "day", "gsd", "cloud", "lat", "lon")
TEXT2EARTH_LEVELS = range(10, 19)
WEB_MERCATOR_EQUATOR_M_PER_PX_AT_ZOOM0 = 156543.03392804097  # 2*pi*6378137 / 256


def to_diffusionsat(metadata: Metadata) -> list[float]:
    """DiffusionSat's 7-vector ``[lon, lat, gsd, cloud, year, month, day]`` scaled to 0–1000."""
    f = metadata.numeric_fields()
    scaled = {
        "lon": None if f["lon"] is None else (f["lon"] + 180.0) / 360.0,
        "lat": None if f["lat"] is None else (f["lat"] + 90.0) / 180.0,
        "gsd": None if f["gsd"] is None else f["gsd"] / 1.0,
        "cloud": f["cloud"],
        "year": None if f["year"] is None else (f["year"] - 1980.0) / (2100.0 - 1980.0),
        "month": None if f["month"] is None else f["month"] / 12.0,
        "day": None if f["day"] is None else f["day"] / 31.0,
    }
    return [0.0 if scaled[k] is None else scaled[k] * 1000.0 for k in DIFFUSIONSAT_FIELDS]


_CRSDIFF_RANGES = {
    "year": (1980.0, 2024.0),
    "month": (0.0, 12.0),
    "day": (0.0, 31.0),
    "gsd": (0.0, 5.0),
    "cloud": (0.0, 100.0),
    "lat": (-90.0, 90.0),
    "lon": (-180.0, 180.0),
}


def to_crsdiff(metadata: Metadata) -> list[float]:
    """CRS-Diff's 7-vector ``[year, month, day, gsd, cloud, lat, lon]`` min–max scaled to 0–1."""
    f = dict(metadata.numeric_fields())
    if f["cloud"] is not None:
        f["cloud"] = f["cloud"] * 100.0  # CRS-Diff takes cloud cover in percent
    out = []
    for name in CRSDIFF_FIELDS:
        low, high = _CRSDIFF_RANGES[name]
        out.append(0.0 if f[name] is None else (f[name] - low) / (high - low))
    return out


def text2earth_level_to_gsd(level: int) -> float:
    """Nominal GSD (m/px) of a Text2Earth Google-Maps level: ``2 ** (17 - level)``."""
    if int(level) != level or level not in TEXT2EARTH_LEVELS:
        raise MetadataError(f"text2earth level={level!r}: expected an integer in 10..18")
    return 2.0 ** (17 - int(level))


def gsd_to_text2earth_level(gsd: float) -> int:
    """The Text2Earth level whose nominal GSD is closest (in log scale) to ``gsd``."""
    if not gsd > 0:
        raise MetadataError(f"gsd={gsd!r}: expected a positive GSD in metres per pixel")
    level = round(17 - math.log2(gsd))
    if level not in TEXT2EARTH_LEVELS:
        raise MetadataError(
            f"gsd={gsd:g} m/px maps to Google level {level}, outside Text2Earth's 10..18 "
            "(0.5–128 m/px); pass a GSD between 0.35 and 181 m/px"
        )
    return level


def to_text2earth_prompt(prompt: str, metadata: Metadata) -> str:
    """Prefix ``prompt`` with Text2Earth's ``"{level}_GOOGLE_LEVEL_"`` resolution tag."""
    if metadata.gsd is None:
        raise MetadataError("metadata.gsd is unknown; Text2Earth needs a GSD to choose a resolution level")
    return f"{gsd_to_text2earth_level(metadata.gsd)}_GOOGLE_LEVEL_{prompt}"


def web_mercator_gsd(zoom: int, lat: float = 0.0) -> float:
    """True ground resolution (m/px) of a 256-px Web-Mercator tile at ``zoom`` and latitude ``lat``.

    Differs from Text2Earth's nominal levels (zoom 18 is ~0.60 m/px at the equator, not 0.5).
    """
    return WEB_MERCATOR_EQUATOR_M_PER_PX_AT_ZOOM0 * math.cos(math.radians(lat)) / 2.0**zoom
