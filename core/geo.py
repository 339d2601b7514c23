"""Coordinate reference systems rsgen picks for the user."""

from __future__ import annotations

from pyproj import CRS


def utm_crs_for(lat: float, lon: float) -> CRS:
    """The WGS84 / UTM zone CRS containing (lat, lon): EPSG 326zz north of the equator, 327zz south."""
    if not -80.0 <= lat <= 84.0:
        raise ValueError(
            f"lat={lat}: UTM is defined between 80°S and 84°N; polar images need a polar stereographic CRS, "
            "which rsgen does not pick automatically yet"
        )
    zone = min(int((lon + 180.0) // 6.0) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)
