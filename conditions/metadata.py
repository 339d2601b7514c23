"""The canonical, validated metadata record of a remote-sensing image.

Every field has a unit and a physical range. ``None`` means *unknown*: an unknown field is encoded
as the model's null embedding, the same one classifier-free guidance uses for its unconditional
branch. Out-of-range values raise :class:`MetadataError` naming the field, the value and the fix.

| field  | unit                       | valid range                  |
|--------|----------------------------|------------------------------|
| gsd    | metres per pixel           | 0 < gsd <= 100000            |
| lat    | degrees north (WGS84)      | -90 .. 90                    |
| lon    | degrees east (WGS84)       | -180 .. 180                  |
| date   | acquisition date (UTC)     | 1900-01-01 .. 2100-12-31     |
| cloud  | cloud-cover fraction       | 0 .. 1                       |
| sensor | platform / sensor name     | free text, normalised to lower case |
| extra  | further numeric fields     | finite floats, named by the model card |
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import InputError

# Numeric fields the record exposes to encoders, in canonical order; date is split in three.
NUMERIC_FIELDS: tuple[str, ...] = ("gsd", "lat", "lon", "year", "month", "day", "cloud")

MIN_DATE = _dt.date(1900, 1, 1)
MAX_DATE = _dt.date(2100, 12, 31)
MAX_GSD_M = 100_000.0


class MetadataError(InputError):
    """A metadata value is missing, malformed or out of range."""


def _check_number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MetadataError(f"metadata.{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise MetadataError(f"metadata.{name}: expected a finite number, got {value!r}")
    below = number <= low if low_open else number < low
    if below or number > high:
        bracket = "(" if low_open else "["
        raise MetadataError(
            f"metadata.{name}={value!r} is outside its valid range {bracket}{low}, {high}]; "
            f"pass a value inside the range, or leave it unset for 'unknown'"
        )
    return number


def parse_date(value: str | _dt.date | _dt.datetime) -> _dt.date:
    """Parse ``YYYY-MM-DD`` (or a date/datetime) into a :class:`datetime.date`."""
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    if isinstance(value, str):
        try:
            return _dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise MetadataError(f"metadata.date: expected an ISO date such as 2021-06-01, got {value!r}")


@dataclass(frozen=True)
class Metadata:
    """Acquisition metadata of one image. Unset fields (``None``) are *unknown*."""

    gsd: float | None = None
    lat: float | None = None
    lon: float | None = None
    date: _dt.date | None = None
    cloud: float | None = None
    sensor: str | None = None
    extra: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen dataclass: normalise values in place once
        if self.gsd is not None:
            set_(self, "gsd", _check_number("gsd", self.gsd, 0.0, MAX_GSD_M, low_open=True))
        if self.lat is not None:
            set_(self, "lat", _check_number("lat", self.lat, -90.0, 90.0))
        if self.lon is not None:
            set_(self, "lon", _check_number("lon", self.lon, -180.0, 180.0))
        if (self.lat is None) != (self.lon is None):
            raise MetadataError(
                f"metadata: lat={self.lat!r} and lon={self.lon!r}: a location needs both lat and lon; "
                "give both or neither"
            )
        if self.date is not None:
            date = parse_date(self.date)
            if not MIN_DATE <= date <= MAX_DATE:
                raise MetadataError(
                    f"metadata.date={date.isoformat()} is outside {MIN_DATE} .. {MAX_DATE}; "
                    "pass a real acquisition date or leave it unset for 'unknown'"
                )
            set_(self, "date", date)
        if self.cloud is not None:
            set_(self, "cloud", _check_number("cloud", self.cloud, 0.0, 1.0))
        if self.sensor is not None:
            if not isinstance(self.sensor, str) or not self.sensor.strip():
                raise MetadataError(f"metadata.sensor: expected a non-empty name, got {self.sensor!r}")
            set_(self, "sensor", self.sensor.strip().lower())
        extra = {}
        for key, value in dict(self.extra).items():
            if key in NUMERIC_FIELDS or key in ("date", "sensor"):
                raise MetadataError(f"metadata.extra[{key!r}] shadows a built-in field; set it directly")
            if value is not None:
                extra[str(key)] = _check_number(f"extra[{key!r}]", value, -math.inf, math.inf)
        set_(self, "extra", extra)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def unknown(cls) -> Metadata:
        """A record with every field unknown (the classifier-free-guidance null condition)."""
        return cls()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metadata:
        """Build from a plain mapping (JSON/YAML); unknown keys are an error, not silently dropped."""
        known = {"gsd", "lat", "lon", "date", "cloud", "sensor", "extra"}
        unknown_keys = sorted(set(data) - known)
        if unknown_keys:
            raise MetadataError(
                f"metadata: unknown key(s) {unknown_keys}; known keys are {sorted(known)} "
                "(put model-specific numeric fields under 'extra')"
            )
        return cls(**{k: v for k, v in data.items()})

    # ------------------------------------------------------------------ views
    @property
    def is_unknown(self) -> bool:
        return all(v is None for v in self.numeric_fields().values()) and self.sensor is None

    def numeric_fields(self) -> dict[str, float | None]:
        """The numeric fields in canonical order (date split into year, month, day), then extras."""
        date = self.date
        out: dict[str, float | None] = {
            "gsd": self.gsd,
            "lat": self.lat,
            "lon": self.lon,
            "year": float(date.year) if date else None,
            "month": float(date.month) if date else None,
            "day": float(date.day) if date else None,
            "cloud": self.cloud,
        }
        out.update(self.extra)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with units spelled out in the key names' documentation (see module doc)."""
        data = asdict(self)
        data["date"] = self.date.isoformat() if self.date else None
        data["extra"] = dict(self.extra)
        return data
