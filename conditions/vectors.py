"""Vector layouts: GeoJSON (and GeoPackage/Shapefile through pyogrio) → shapely → target grid labels.

``read_vector`` is tolerant but never silent: it repairs invalid geometries with
``shapely.make_valid`` and malformed GeoJSON polygon nesting (a ring given where a list of rings is
required, as in the LEVIR-CD tile footprints), and reports how many it repaired and dropped.
``rasterize_layout`` reprojects layers to the target grid (pyproj), clips them to its bounds and
burns them with ``rasterio.features`` at the grid's GSD: polygons by attribute rules, roads as
lines buffered by a width per road class, buildings last with one instance id each. It returns the
semantic mask (canonical ids), the instance mask and per-object records with axis-aligned and
oriented boxes — labels exact by construction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from rasterio import features
from rasterio.transform import Affine, from_origin
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from conditions.palettes import CANONICAL
from core.errors import InputError

logger = logging.getLogger(__name__)

CRS84 = ("urn:ogc:def:crs:OGC:1.3:CRS84", "urn:ogc:def:crs:OGC::CRS84", "CRS84")

# Carriageway widths in metres by OSM highway class (typical lane counts × ~3.5 m; paths narrower).
ROAD_WIDTHS_M: dict[str, float] = {
    "motorway": 14.0, "trunk": 12.0, "primary": 10.0, "secondary": 8.0, "tertiary": 7.0,
    "unclassified": 6.0, "residential": 6.0, "living_street": 5.0, "service": 4.0,
    "track": 3.0, "cycleway": 2.0, "footway": 2.0, "path": 1.5, "pedestrian": 4.0, "steps": 1.5,
}  # fmt: skip
DEFAULT_ROAD_WIDTH_M = 5.0


class VectorError(InputError):
    """A vector file is unreadable or malformed, or a layer does not fit the target grid."""


@dataclass
class VectorLayer:
    geometries: list[BaseGeometry]
    properties: list[dict[str, Any]]
    crs: CRS
    source: str | None = None
    sha256: str | None = None
    repaired: int = 0
    dropped: int = 0
    feature_ids: list[int] | None = None  # index of each geometry in the source file (after drops)

    def __len__(self) -> int:
        return len(self.geometries)

    def to_crs(self, crs: CRS) -> VectorLayer:
        """Reproject every geometry with pyproj (x = easting/longitude first)."""
        if CRS.from_user_input(crs) == self.crs:
            return self
        transformer = Transformer.from_crs(self.crs, crs, always_xy=True)
        geoms = [shapely.transform(g, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
                 for g in self.geometries]  # fmt: skip
        return VectorLayer(geoms, self.properties, CRS.from_user_input(crs), self.source, self.sha256,
                           self.repaired, self.dropped, self.feature_ids)  # fmt: skip


def _fix_nesting(geometry: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Polygon coordinates given as one ring (a list of positions) instead of a list of rings."""
    coords = geometry.get("coordinates")
    if geometry.get("type") == "Polygon" and coords and isinstance(coords[0], list) and coords[0]:
        if isinstance(coords[0][0], int | float):
            return {**geometry, "coordinates": [coords]}, True
    return geometry, False


def _fix_ring(ring: Any) -> tuple[list | None, bool]:
    """RFC 7946 §3.1.6: a ring is closed and has >= 4 positions. An open ring is closed (repaired); a ring that
    still has fewer than 4 positions is None (the polygon or hole it bounds is dropped)."""
    if not isinstance(ring, list) or not ring:
        return None, True
    fixed = False
    if ring[0] != ring[-1]:
        ring, fixed = [*ring, ring[0]], True
    return (ring, fixed) if len(ring) >= 4 else (None, True)


def _fix_polygon(rings: Any) -> tuple[list | None, bool]:
    """A polygon's rings fixed one by one; a polygon whose exterior is unusable is None."""
    if not isinstance(rings, list) or not rings:
        return None, True
    exterior, fixed = _fix_ring(rings[0])
    if exterior is None:
        return None, True
    holes = []
    for ring in rings[1:]:
        hole, hole_fixed = _fix_ring(ring)
        fixed |= hole_fixed
        if hole is not None:
            holes.append(hole)
    return [exterior, *holes], fixed


def _fix_rings(geometry: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """Close open rings, drop rings with < 4 positions and empty parts of a MultiPolygon (its other parts are
    kept); returns the geometry (None when nothing is left) and whether anything changed."""
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    if kind == "Polygon":
        polygon, fixed = _fix_polygon(coords)
        return ({**geometry, "coordinates": polygon} if polygon else None), fixed
    if kind == "MultiPolygon" and isinstance(coords, list):
        parts, fixed = [], False
        for part in coords:
            polygon, part_fixed = _fix_polygon(part)
            fixed |= part_fixed
            if polygon is not None:
                parts.append(polygon)
        return ({**geometry, "coordinates": parts} if parts else None), fixed
    return geometry, False


MAX_NESTING = 64  # GeoJSON coordinates nest at most 4 deep (MultiPolygon); collections a few more


def _too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists/dicts nest deeper than ``limit`` (checked without recursion)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, list | dict))
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, list | dict))
    return False


def _geometry(geometry: Any, path: Path, index: int) -> tuple[BaseGeometry | None, bool]:
    """A shapely geometry of one feature, repaired where GeoJSON allows it (None: unusable, logged)."""
    fixed = False
    if isinstance(geometry, dict):
        if _too_deep(geometry):
            logger.warning("%s: feature %d nests its coordinates deeper than GeoJSON allows; dropped", path, index)
            return None, False
        geometry, fixed = _fix_nesting(geometry)
        geometry, rings_fixed = _fix_rings(geometry)
        fixed |= rings_fixed
        if geometry is None:
            logger.warning("%s: feature %d has no ring of >= 4 positions; dropped", path, index)
            return None, False
    try:
        geom = shape(geometry) if isinstance(geometry, dict) else geometry
        coords = shapely.get_coordinates(geom)
        if not np.isfinite(coords).all():
            logger.warning("%s: feature %d has NaN or infinite coordinates; dropped", path, index)
            return None, False
        if not geom.is_valid:
            geom, fixed = shapely.make_valid(geom), True
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.ShapelyError) as err:
        logger.warning("%s: feature %d has an unreadable geometry (%s); dropped", path, index, str(err)[:200])
        return None, False
    return (None if geom.is_empty else geom), fixed


def read_vector(path: str | os.PathLike, *, layer: str | None = None, declared_crs: str | None = None) -> VectorLayer:
    """Read a vector file into shapely geometries with their properties and CRS (``declared_crs`` overrides the
    file's). Broken geometries are repaired or dropped, counted and logged; never silently."""
    path = Path(path)
    if not path.is_file():
        raise VectorError(f"vector {str(path)!r}: no such file")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if path.suffix.lower() in (".geojson", ".json"):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as err:
            raise VectorError(
                f"vector {str(path)!r}: broken GeoJSON at line {err.lineno}, column {err.colno}: {err.msg}"
            ) from None
        except (RecursionError, UnicodeDecodeError, ValueError) as err:
            raise VectorError(f"vector {str(path)!r}: not GeoJSON that can be read ({str(err)[:120]})") from None
        records, crs = _geojson_records(data, path)
    else:
        records, crs = _ogr_records(path, layer)
    if declared_crs is not None:
        crs = CRS.from_user_input(declared_crs)
    geoms, props, ids, repaired, dropped = [], [], [], 0, 0
    for index, (geometry, properties) in enumerate(records):
        geom, fixed = (None, False) if geometry is None else _geometry(geometry, path, index)
        if geom is None:
            dropped += 1
            continue
        repaired += int(fixed)
        geoms.append(geom)
        props.append(dict(properties or {}))
        ids.append(index)
    if repaired or dropped:
        logger.warning("%s: repaired %d and dropped %d of %d features", path, repaired, dropped, len(records))
    if not geoms:
        raise VectorError(f"vector {str(path)!r}: no usable geometries ({dropped} dropped)")
    if crs.is_geographic:
        _check_lonlat(geoms, path, declared_crs is not None)
    return VectorLayer(geoms, props, crs, str(path), digest, repaired, dropped, ids)


def _check_lonlat(geoms: list[BaseGeometry], path: Path, declared: bool) -> None:
    """Coordinates outside ±180/±90 in a longitude/latitude CRS are projected coordinates with no CRS."""
    left, bottom, right, top = shapely.total_bounds(geoms)
    if left < -180 or right > 180 or bottom < -90 or top > 90:
        where = "a longitude/latitude CRS" if declared else "no CRS, so they are read as longitude/latitude (EPSG:4326)"
        raise VectorError(
            f"vector {str(path)!r}: coordinates span x {left:.6g}..{right:.6g}, y {bottom:.6g}..{top:.6g}, which is "
            f"not longitude/latitude, but the file declares {where}; they look projected (metres): declare the CRS "
            "(a GeoJSON 'crs' member, a Shapefile .prj) or pass it with --vectors-crs, e.g. --vectors-crs EPSG:32632"
        )


def _geojson_records(data: Any, path: Path) -> tuple[list[tuple[Any, Any]], CRS]:
    if not isinstance(data, dict) or "type" not in data:
        raise VectorError(f"vector {str(path)!r}: not a GeoJSON object (no 'type')")
    crs = CRS.from_epsg(4326)
    name = ((data.get("crs") or {}).get("properties") or {}).get("name")
    if name and name not in CRS84:
        try:
            crs = CRS.from_user_input(name)
        except Exception:
            raise VectorError(f"vector {str(path)!r}: unknown 'crs' {name!r}") from None
    kind = data["type"]
    if kind == "FeatureCollection":
        feats = data.get("features")
        if not isinstance(feats, list):
            raise VectorError(f"vector {str(path)!r}: FeatureCollection without a 'features' list")
        return [(f.get("geometry"), f.get("properties")) for f in feats if isinstance(f, dict)], crs
    if kind == "Feature":
        return [(data.get("geometry"), data.get("properties"))], crs
    return [(data, {})], crs


def _ogr_records(path: Path, layer: str | None) -> tuple[list[tuple[Any, Any]], CRS]:
    try:
        import pyogrio
    except ImportError:
        raise VectorError(
            f"vector {str(path)!r}: reading {path.suffix} files needs pyogrio (pip install pyogrio); "
            "or convert the file to GeoJSON"
        ) from None
    try:
        meta, _, geometry, field_data = pyogrio.raw.read(path, layer=layer)
    except Exception as err:
        raise VectorError(f"vector {str(path)!r}: GDAL/OGR could not read it ({err})") from None
    geoms = shapely.from_wkb(geometry)
    names = list(meta["fields"])
    records = [(g, {n: field_data[j][i] for j, n in enumerate(names)}) for i, g in enumerate(geoms)]
    return records, CRS.from_user_input(meta["crs"] or "EPSG:4326")


@dataclass
class TargetGrid:
    """Pixel grid of an output raster: CRS, north-up transform and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_bounds(cls, bounds: tuple[float, float, float, float], crs: CRS | str, gsd: float) -> TargetGrid:
        left, bottom, right, top = bounds
        if not gsd > 0:
            raise VectorError(f"gsd={gsd!r}: expected a positive pixel size in metres")
        width, height = math.ceil((right - left) / gsd - 1e-9), math.ceil((top - bottom) / gsd - 1e-9)
        if width < 1 or height < 1:
            raise VectorError(f"bounds {bounds}: empty at gsd {gsd}")
        return cls(CRS.from_user_input(crs), from_origin(left, top, gsd, gsd), width, height)

    @property
    def gsd(self) -> float:
        return abs(self.transform.a)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        return left, top - self.height * self.gsd, left + self.width * self.gsd, top


@dataclass
class LayoutObject:
    """One labelled object: canonical class, instance id, area and boxes (pixel coordinates)."""

    instance_id: int
    class_name: str
    area_m2: float
    bbox: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in pixels
    obb: list[tuple[float, float]]  # 4 corners of the minimum rotated rectangle, pixels
    pixels: int
    source: str | None
    feature_index: int
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass
class LayoutLabels:
    semantic: np.ndarray  # (H, W) uint8 canonical ids
    instances: np.ndarray  # (H, W) int32, 0 = none
    objects: list[LayoutObject]
    grid: TargetGrid


@dataclass
class LayerRule:
    """How a layer is burnt: ``kind`` 'buildings' (instances), 'roads' (buffered lines) or 'polygons'
    (class from ``classify(properties)``; None skips the feature)."""

    layer: VectorLayer
    kind: str
    classify: Callable[[Mapping[str, Any]], str | None] | None = None
    road_widths: Mapping[str, float] = field(default_factory=lambda: ROAD_WIDTHS_M)


def attribute_classifier(rules: Mapping[str, str]) -> Callable[[Mapping[str, Any]], str | None]:
    """``{"natural=water": "water", "landuse=forest": "tree", "leisure": "sports"}`` → a classifier."""
    parsed = [(key.split("=", 1) + [None])[:2] + [cls] for key, cls in rules.items()]
    for _, _, cls in parsed:
        CANONICAL.class_by_name(cls)

    def classify(props: Mapping[str, Any]) -> str | None:
        for key, value, cls in parsed:
            found = props.get(key)
            if found is None or isinstance(found, list | dict | bool):  # lists/objects name no class (warned)
                continue
            if value is None or str(found) == value:  # numbers match by their text, e.g. class=3
                return cls
        return None

    return classify


def _pixel_geometry(geom: BaseGeometry, grid: TargetGrid) -> BaseGeometry:
    inverse = ~grid.transform
    return shapely.transform(geom, lambda xy: np.column_stack(inverse * (xy[:, 0], xy[:, 1])))


def rasterize_layout(rules: Sequence[LayerRule], grid: TargetGrid, *, min_pixels: int = 1) -> LayoutLabels:
    """Burn layers onto ``grid`` in order polygons → roads → buildings (later wins)."""
    order = {"polygons": 0, "roads": 1, "buildings": 2}
    for rule in rules:
        if rule.kind not in order:
            raise VectorError(f"layer kind {rule.kind!r}: expected one of {sorted(order)}")
    semantic = np.zeros((grid.height, grid.width), dtype=np.uint8)
    instances = np.zeros((grid.height, grid.width), dtype=np.int32)
    objects: list[LayoutObject] = []
    frame = box(*grid.bounds)
    shape_hw = (grid.height, grid.width)
    for rule in sorted(rules, key=lambda r: order[r.kind]):
        layer = rule.layer.to_crs(grid.crs)
        pairs = []
        for index, (geom, props) in enumerate(zip(layer.geometries, layer.properties)):
            if rule.kind == "roads":
                highway = props.get("highway")
                width = rule.road_widths.get(highway, DEFAULT_ROAD_WIDTH_M) if isinstance(highway, str) else (
                    DEFAULT_ROAD_WIDTH_M)  # fmt: skip
                geom, cls = geom.buffer(width / 2, cap_style="flat"), "road"
            elif rule.kind == "buildings":
                cls = "building"
            else:
                cls = rule.classify(props) if rule.classify else None
                if cls is None:
                    continue
            clipped = geom.intersection(frame)
            if clipped.is_empty:
                continue
            pairs.append((index, clipped, cls, props))
        if rule.kind != "buildings":
            shapes = [(mapping(g), CANONICAL.class_by_name(c).id) for _, g, c, _ in pairs]
            if shapes:
                features.rasterize(shapes, out=semantic, transform=grid.transform)
            continue
        for index, geom, cls, props in pairs:
            burnt = features.rasterize([(mapping(geom), 1)], out_shape=shape_hw, transform=grid.transform,
                                       dtype=np.uint8).astype(bool)  # fmt: skip
            if burnt.sum() < min_pixels:
                continue
            instance_id = len(objects) + 1
            instances[burnt] = instance_id
            semantic[burnt] = CANONICAL.class_by_name(cls).id
            pixel_geom = _pixel_geometry(geom, grid)
            rect = shapely.minimum_rotated_rectangle(pixel_geom)
            corners = list(rect.exterior.coords)[:4] if rect.geom_type == "Polygon" else []
            objects.append(
                LayoutObject(
                    instance_id=instance_id,
                    class_name=cls,
                    area_m2=float(geom.area),
                    bbox=tuple(pixel_geom.bounds),
                    obb=[(float(x), float(y)) for x, y in corners],
                    pixels=int(burnt.sum()),
                    source=layer.source,
                    feature_index=layer.feature_ids[index] if layer.feature_ids else index,
                    properties={k: v for k, v in props.items() if _jsonable(v)},
                )
            )
    # Pixels later overwritten by another building belong to that building only.
    for obj in objects:
        obj.pixels = int((instances == obj.instance_id).sum())
    return LayoutLabels(semantic, instances, objects, grid)


def _jsonable(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
