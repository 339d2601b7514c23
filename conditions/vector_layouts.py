"""Vector layouts as a task sees them: ``buildings:PATH``-style layer specs, read once, rasterised on a
UTM grid around a point (or on a given grid), with their provenance.

A layer spec is ``buildings:PATH`` (one instance per footprint), ``roads:PATH`` (lines buffered by OSM
highway class), ``polygons=CLASS:PATH`` (polygons of a canonical class), ``polygons:PATH`` with
attribute rules (``natural=water:water``), or a bare ``PATH`` (lines -> roads, polygons -> buildings).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from pyproj import CRS, Transformer
from shapely.ops import unary_union

from conditions.metadata import Metadata
from conditions.palettes import CANONICAL
from conditions.vectors import (
    LayerRule,
    LayoutLabels,
    TargetGrid,
    VectorError,
    attribute_classifier,
    rasterize_layout,
    read_vector,
)
from core.geo import utm_crs_for

logger = logging.getLogger(__name__)

LAYER_KINDS = ("buildings", "roads", "polygons")


def parse_layer_spec(spec: str, argument: str = "vectors") -> tuple[str, str | None, Path]:
    """``buildings:a.geojson`` -> ("buildings", None, path); ``polygons=water:c.geojson`` -> ("polygons",
    "water", path); a bare path -> ("", None, path). Errors name ``argument``."""
    kind, cls, path = None, None, spec
    head, sep, tail = spec.partition(":")
    if sep and not Path(spec).exists():
        kind, _, cls = head.partition("=")
        path = tail
        if kind not in LAYER_KINDS:
            raise VectorError(f"{argument} {spec!r}: unknown layer kind {kind!r}; use one of {LAYER_KINDS}")
        if kind == "polygons" and cls:
            CANONICAL.class_by_name(cls)
    return kind or "", cls or None, Path(path)


def parse_polygon_classes(rules: tuple[str, ...] | list[str], argument: str = "polygon_class") -> dict[str, str]:
    """``KEY[=VALUE]:CLASS`` rules -> {"KEY[=VALUE]": CLASS}."""
    out = {}
    for rule in rules:
        key, sep, cls = rule.rpartition(":")
        if not sep or not key or not cls:
            raise VectorError(f"{argument} {rule!r}: expected KEY[=VALUE]:CLASS, e.g. natural=water:water")
        CANONICAL.class_by_name(cls)
        out[key] = cls
    return out


def _layer_rule(spec: str, polygon_classes: dict[str, str], argument: str, crs: str | None) -> LayerRule:
    kind, cls, path = parse_layer_spec(spec, argument)
    if kind == "polygons" and not cls and not polygon_classes:
        raise VectorError(
            f"{argument} {spec!r}: polygons need a class (polygons=water:PATH) or attribute rules "
            "(polygon_class natural=water:water)"
        )
    layer = read_vector(path, declared_crs=crs)
    if all(g.geom_type in ("Point", "MultiPoint") for g in layer.geometries):
        raise VectorError(
            f"{argument} {spec!r}: holds only Point features; rsgen draws polygons (buildings, classes) and lines "
            "(roads): pass footprints or road lines"
        )
    keys = {"roads": ["highway"], "polygons": [k.split("=", 1)[0] for k in polygon_classes]}.get(kind, [])
    _warn_non_strings(layer, keys, f"{argument} {spec!r}")
    if not kind:
        lines = sum(g.geom_type in ("LineString", "MultiLineString") for g in layer.geometries)
        kind = "roads" if lines > len(layer) / 2 else "buildings"
        logger.info("%s %s: read as %s", argument, path, kind)
    classify = None
    if kind == "polygons":
        classify = (lambda _props, c=cls: c) if cls else attribute_classifier(polygon_classes)
    return LayerRule(layer, kind, classify)


def load_layer_rules(
    specs: tuple[str, ...] | list[str],
    polygon_classes: dict[str, str] | None = None,
    argument: str = "vectors",
    crs: str | None = None,
) -> list[LayerRule]:
    """Read the layers of ``specs`` once (every sample reuses them); ``crs`` is that of layers declaring none.
    Errors name ``argument``."""
    return [_layer_rule(spec, polygon_classes or {}, argument, crs) for spec in specs]


def _warn_non_strings(layer: Any, keys: list[str], where: str) -> None:
    """Class attributes (``highway``, polygon rules' keys) that are not strings: lists, objects and booleans
    match no rule, numbers match by their text; say how many features have them instead of going on silently."""
    for key in keys:
        odd = [p[key] for p in layer.properties if p.get(key) is not None and not isinstance(p[key], str)]
        if not odd:
            continue
        how = "get the default road width" if key == "highway" else "match no rule (numbers: by their text)"
        logger.warning("%s: %d feature(s) have a non-string %r (e.g. %s); they %s", where, len(odd), key,
                       repr(odd[0])[:60], how)  # fmt: skip


def layer_sources(rules: list[LayerRule]) -> list[dict[str, Any]]:
    """Provenance of each layer: kind, file, sha256, feature count, repaired and dropped geometries."""
    return [{"kind": r.kind, "source": r.layer.source, "sha256": r.layer.sha256, "features": len(r.layer),
             "repaired": r.layer.repaired, "dropped": r.layer.dropped} for r in rules]  # fmt: skip


def _lonlat_geometries(rules: list[LayerRule]) -> list[Any]:
    return [g for r in rules for g in r.layer.to_crs(CRS.from_epsg(4326)).geometries]


def layers_bounds_lonlat(rules: list[LayerRule]) -> tuple[float, float, float, float]:
    """(lon_min, lat_min, lon_max, lat_max) of all layers."""
    return unary_union(_lonlat_geometries(rules)).bounds


def layers_centre(rules: list[LayerRule]) -> tuple[float, float]:
    """(lat, lon) of the layers' centroid (weighted by area, so buildings rather than long roads)."""
    lon, lat = unary_union(_lonlat_geometries(rules)).centroid.coords[0]
    return lat, lon


def utm_grid_at(lat: float, lon: float, gsd: float, size: int) -> TargetGrid:
    """A ``size``² north-up grid of ``gsd`` metres centred on (lat, lon), in its UTM zone."""
    crs = utm_crs_for(lat, lon)
    x, y = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(lon, lat)
    half = size * gsd / 2
    return TargetGrid.from_bounds((x - half, y - half, x + half, y + half), crs, gsd)


def rasterize_on(rules: list[LayerRule], grid: TargetGrid, *, allow_empty: bool = False) -> LayoutLabels:
    """Labels of ``rules`` on ``grid``; an empty layout is an error unless ``allow_empty``."""
    labels = rasterize_layout(rules, grid)
    if not allow_empty and not labels.semantic.any():
        raise VectorError(
            f"the layout is empty on the target grid ({grid.crs.to_string()}, bounds "
            f"{tuple(round(b, 1) for b in grid.bounds)}): no feature intersects it; check lat/lon and gsd "
            "or the layers' location"
        )
    return labels


def with_centre(metadata: Metadata, grid: TargetGrid) -> Metadata:
    """``metadata`` with lat/lon set to the centre of ``grid``."""
    left, bottom, right, top = grid.bounds
    lon, lat = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True).transform(
        (left + right) / 2, (bottom + top) / 2
    )
    return replace(metadata, lat=lat, lon=lon)
