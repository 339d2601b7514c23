"""OpenStreetMap-style rendering of rsgen's vector layouts: the hint image of OSM-tile ControlNets (GeoSynth-OSM).

GeoSynth-OSM was trained on rendered OSM map tiles paired with satellite images (hints read as RGB and divided
by 255). :func:`render_osm` draws rsgen's layers (buildings, roads by OSM ``highway`` class, classified polygons)
on a :class:`~conditions.vectors.TargetGrid` in the colours of the standard OpenStreetMap style
(openstreetmap-carto: land ``#f2efe9``, water ``#aad3df``, buildings ``#d9d0c9``, roads filled by class with a
casing). Road widths are metres (the layer rule's ``road_widths``, the same as the labels) drawn at the grid's GSD.

It draws exactly what the labels hold: the same geometries, clipped and burnt the same way, in the same order
(polygons, then roads, then buildings on top), so a pixel is building-coloured iff the semantic label is
``building``, and road-coloured (fill or casing) iff it is ``road``. Labels, text and dashes of the real style
are left out (a label mask has no text). Deterministic: no randomness, no anti-aliasing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rasterio import features
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from conditions.palettes import CANONICAL
from conditions.vectors import DEFAULT_ROAD_WIDTH_M, LayerRule, TargetGrid, VectorError

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]


def _hex(code: str) -> RGB:
    code = code.lstrip("#")
    if len(code) == 3:
        code = "".join(c * 2 for c in code)
    return int(code[0:2], 16), int(code[2:4], 16), int(code[4:6], 16)


# openstreetmap-carto colours (style/landcover.mss, style/water.mss, style/buildings.mss, style/roads.mss and
# road-colors-generated.mss).
LAND = _hex("#f2efe9")
WATER = _hex("#aad3df")
BUILDING = _hex("#d9d0c9")

# Area fills by OSM tag (key=value), looked up in this order of keys.
AREA_TAGS: dict[str, RGB] = {
    "natural=water": WATER, "waterway=riverbank": WATER, "landuse=reservoir": WATER, "landuse=basin": WATER,
    "natural=wood": _hex("#add19e"), "landuse=forest": _hex("#add19e"), "natural=scrub": _hex("#c8d7ab"),
    "natural=heath": _hex("#d6d99f"), "natural=grassland": _hex("#cdebb0"), "landuse=grass": _hex("#cdebb0"),
    "landuse=meadow": _hex("#cdebb0"), "landuse=village_green": _hex("#cdebb0"), "leisure=garden": _hex("#cdebb0"),
    "leisure=park": _hex("#c8facc"), "landuse=recreation_ground": _hex("#c8facc"),
    "landuse=allotments": _hex("#c9e1bf"), "landuse=orchard": _hex("#aedfa3"), "landuse=vineyard": _hex("#aedfa3"),
    "landuse=farmland": _hex("#eef0d5"), "landuse=farmyard": _hex("#f5dcba"), "landuse=cemetery": _hex("#aacbaf"),
    "landuse=residential": _hex("#e0dfdf"), "landuse=retail": _hex("#ffd6d1"), "landuse=commercial": _hex("#f2dad9"),
    "landuse=industrial": _hex("#ebdbe8"), "landuse=railway": _hex("#ebdbe8"), "landuse=construction": _hex("#c7c7b4"),
    "landuse=brownfield": _hex("#c7c7b4"), "amenity=parking": _hex("#eeeeee"), "leisure=pitch": _hex("#aae0cb"),
    "leisure=track": _hex("#aae0cb"), "leisure=sports_centre": _hex("#dffce2"), "leisure=stadium": _hex("#dffce2"),
    "leisure=playground": _hex("#dffce2"), "leisure=golf_course": _hex("#def6c0"), "natural=beach": _hex("#fff1ba"),
    "natural=sand": _hex("#f5e9c6"), "natural=bare_rock": _hex("#eee5dc"), "natural=scree": _hex("#eee5dc"),
    "natural=glacier": _hex("#ddecec"),
}  # fmt: skip
AREA_KEYS = ("natural", "waterway", "leisure", "amenity", "landuse")
# A polygon with no known tag gets the fill of its canonical class (the class the layer's rule gave it).
CLASS_FILLS: dict[str, RGB] = {
    "background": LAND, "building": BUILDING, "road": _hex("#ffffff"), "impervious": _hex("#eeeeee"),
    "water": WATER, "bare": _hex("#eee5dc"), "tree": _hex("#add19e"), "low_vegetation": _hex("#cdebb0"),
    "agriculture": _hex("#eef0d5"), "vehicle": _hex("#eeeeee"), "sports": _hex("#aae0cb"),
}  # fmt: skip


@dataclass(frozen=True)
class RoadStyle:
    fill: RGB
    casing: RGB | None  # None: drawn as a plain line (paths)
    z: int  # drawing order: higher is drawn on top


ROAD_STYLES: dict[str, RoadStyle] = {
    "motorway": RoadStyle(_hex("#e892a2"), _hex("#dc2a67"), 9),
    "trunk": RoadStyle(_hex("#f9b29c"), _hex("#c84e2f"), 8),
    "primary": RoadStyle(_hex("#fcd6a4"), _hex("#a06b00"), 7),
    "secondary": RoadStyle(_hex("#f7fabf"), _hex("#707d05"), 6),
    "tertiary": RoadStyle(_hex("#ffffff"), _hex("#8f8f8f"), 5),
    "unclassified": RoadStyle(_hex("#ffffff"), _hex("#bbbbbb"), 4),
    "residential": RoadStyle(_hex("#ffffff"), _hex("#bbbbbb"), 4),
    "living_street": RoadStyle(_hex("#ededed"), _hex("#bbbbbb"), 3),
    "pedestrian": RoadStyle(_hex("#dddde8"), _hex("#808080"), 3),
    "service": RoadStyle(_hex("#ffffff"), _hex("#bbbbbb"), 2),
    "road": RoadStyle(_hex("#dddddd"), _hex("#bbbbbb"), 2),
    "track": RoadStyle(_hex("#996600"), None, 1),
    "footway": RoadStyle(_hex("#fa8072"), None, 1),
    "steps": RoadStyle(_hex("#fa8072"), None, 1),
    "path": RoadStyle(_hex("#fa8072"), None, 1),
    "cycleway": RoadStyle(_hex("#0000ff"), None, 1),
    "bridleway": RoadStyle(_hex("#008000"), None, 1),
}
DEFAULT_ROAD_STYLE = ROAD_STYLES["road"]  # highway values carto has no colour for ("road" is carto's own)
CASING_M = 1.0  # casing width on each side of a road, metres (at most a quarter of the road's width)


def road_style(highway: Any) -> RoadStyle:
    """The style of an OSM ``highway`` value; ``*_link`` roads look like their road."""
    if not isinstance(highway, str):
        return DEFAULT_ROAD_STYLE
    return ROAD_STYLES.get(highway.removesuffix("_link"), DEFAULT_ROAD_STYLE)


def area_fill(properties: Mapping[str, Any], class_name: str) -> RGB:
    """The fill of a classified polygon: its OSM tag's colour when it has a known one, else its class's."""
    for key in AREA_KEYS:
        value = properties.get(key)
        if isinstance(value, str) and f"{key}={value}" in AREA_TAGS:
            return AREA_TAGS[f"{key}={value}"]
    return CLASS_FILLS.get(class_name, LAND)


@dataclass
class _Canvas:
    """An index raster plus its colour table: later burns win, colours are looked up once at the end."""

    grid: TargetGrid
    colors: list[RGB] = field(default_factory=lambda: [LAND])
    codes: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.codes = np.zeros((self.grid.height, self.grid.width), dtype=np.uint16)

    def code(self, color: RGB) -> int:
        if color not in self.colors:
            self.colors.append(color)
        return self.colors.index(color)

    def burn(self, shapes: list[tuple[BaseGeometry, RGB]]) -> None:
        pairs = [(mapping(g), self.code(c)) for g, c in shapes if not g.is_empty]
        if pairs:
            features.rasterize(pairs, out=self.codes, transform=self.grid.transform)

    def image(self) -> np.ndarray:
        return np.asarray(self.colors, dtype=np.uint8)[self.codes]  # (H, W, 3)


def render_osm(rules: Sequence[LayerRule], grid: TargetGrid) -> np.ndarray:
    """(H, W, 3) uint8 OSM-style map of ``rules`` on ``grid`` (see the module doc)."""
    order = {"polygons": 0, "roads": 1, "buildings": 2}
    for rule in rules:
        if rule.kind not in order:
            raise VectorError(f"layer kind {rule.kind!r}: expected one of {sorted(order)}")
    canvas = _Canvas(grid)
    frame = box(*grid.bounds)
    casings: list[tuple[int, BaseGeometry, RGB]] = []
    fills: list[tuple[int, BaseGeometry, RGB]] = []
    buildings: list[BaseGeometry] = []
    for rule in sorted(rules, key=lambda r: order[r.kind]):
        layer = rule.layer.to_crs(grid.crs)
        if rule.kind == "polygons":
            shapes = []
            for geom, props in zip(layer.geometries, layer.properties):
                cls = rule.classify(props) if rule.classify else None
                if cls is not None:
                    shapes.append((geom.intersection(frame), area_fill(props, cls)))
            canvas.burn(shapes)
        elif rule.kind == "roads":
            for geom, props in zip(layer.geometries, layer.properties):
                highway = props.get("highway")
                width = rule.road_widths.get(highway, DEFAULT_ROAD_WIDTH_M) if isinstance(highway, str) else (
                    DEFAULT_ROAD_WIDTH_M)  # fmt: skip
                style = road_style(highway)
                outer = geom.buffer(width / 2, cap_style="flat").intersection(frame)  # the road label's shape
                if style.casing is None:
                    fills.append((style.z, outer, style.fill))
                    continue
                casings.append((style.z, outer, style.casing))
                inner = geom.buffer(width / 2 - min(CASING_M, width / 4), cap_style="flat").intersection(frame)
                fills.append((style.z, inner, style.fill))
        else:
            buildings.extend(g.intersection(frame) for g in layer.geometries)
    # All casings under all fills (so crossing roads join), each pass from minor to major roads (stable order).
    for group in (casings, fills):
        canvas.burn([(g, c) for _, g, c in sorted(group, key=lambda item: item[0])])
    canvas.burn([(g, BUILDING) for g in buildings])
    return canvas.image()


def render_semantic(semantic: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 OSM-style colours of a canonical semantic mask (raster layouts: no road classes or
    casings; roads are residential white, ignore pixels land)."""
    out = np.empty((*semantic.shape, 3), dtype=np.uint8)
    out[:] = LAND
    for cls in CANONICAL.classes:
        out[semantic == cls.id] = CLASS_FILLS.get(cls.name, LAND)
    return out


def osm_control(image: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W) float control in [0, 1] of an (H, W, 3) uint8 rendering: GeoSynth reads its hints as RGB / 255."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0


__all__ = ["AREA_TAGS", "BUILDING", "LAND", "ROAD_STYLES", "WATER", "area_fill", "osm_control", "render_osm",
           "render_semantic", "road_style"]  # fmt: skip
