"""Write the example semantic layouts shipped with rsgen (``gen/assets/layouts/*.png``).

Each layout is a 256×256 single-band PNG of canonical class ids (see ``conditions.palettes.CANONICAL``):
low vegetation as the base, agricultural fields, a road network, buildings set back along the roads,
a water body and tree clumps. They are drawn here from shapely geometry with a fixed seed, so they
are our own and reproducible: ``python -m gen.assets.make_example_layouts``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from rasterio.features import rasterize
from shapely import affinity
from shapely.geometry import LineString, Point, box

from conditions.palettes import CANONICAL

logger = logging.getLogger(__name__)

SIZE = 256
OUT_DIR = Path(__file__).parent / "layouts"
ID = {c.name: c.id for c in CANONICAL.classes}


def _layout(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shapes: list[tuple[object, int]] = []  # painted in order: later shapes win
    for _ in range(int(rng.integers(2, 5))):  # fields
        x, y = rng.uniform(0, SIZE, 2)
        w, h = rng.uniform(50, 120, 2)
        field = affinity.rotate(box(x, y, x + w, y + h), float(rng.uniform(-20, 20)))
        shapes.append((field, ID["agriculture"]))
    if rng.random() < 0.7:  # a lake or a river
        if rng.random() < 0.5:
            cx, cy = rng.uniform(40, SIZE - 40, 2)
            lake = Point(cx, cy).buffer(float(rng.uniform(25, 45)))
            shapes.append((affinity.scale(lake, 1.0, float(rng.uniform(0.6, 1.3))), ID["water"]))
        else:
            ys = np.linspace(-10, SIZE + 10, 6)
            xs = float(rng.uniform(40, SIZE - 40)) + np.cumsum(rng.normal(0, 12, 6))
            shapes.append((LineString(np.column_stack([xs, ys])).buffer(float(rng.uniform(8, 14))), ID["water"]))
    for _ in range(int(rng.integers(3, 7))):  # tree clumps
        cx, cy = rng.uniform(0, SIZE, 2)
        shapes.append((Point(cx, cy).buffer(float(rng.uniform(8, 22))), ID["tree"]))
    angle = float(rng.uniform(-30, 30))
    roads = []
    for offset in rng.uniform(30, SIZE - 30, int(rng.integers(1, 3))):  # main roads and one cross street
        roads.append(affinity.rotate(LineString([(-50, offset), (SIZE + 50, offset)]), angle, origin=(128, 128)))
    cross = float(rng.uniform(40, SIZE - 40))
    roads.append(affinity.rotate(LineString([(cross, -50), (cross, SIZE + 50)]), angle, origin=(128, 128)))
    for road in roads:
        shapes.append((road.buffer(5.0, cap_style="flat"), ID["road"]))
    road_union = roads[0].buffer(5.0)
    for road in roads[1:]:
        road_union = road_union.union(road.buffer(5.0))
    water = [g for g, c in shapes if c == ID["water"]]
    taken = road_union.buffer(3.0)
    for w in water:
        taken = taken.union(w)
    for road in roads:  # houses set back along both sides of every road
        for t in np.arange(10, road.length - 10, float(rng.uniform(22, 30))):
            for side in (-1, 1):
                if rng.random() < 0.35:
                    continue
                p = road.interpolate(t)
                q = road.interpolate(t + 1)
                dx, dy = q.x - p.x, q.y - p.y
                nx, ny = -dy * side, dx * side
                w, d = rng.uniform(10, 18), rng.uniform(9, 14)
                cx, cy = p.x + nx * (5 + 4 + d / 2), p.y + ny * (5 + 4 + d / 2)
                house = affinity.rotate(box(cx - w / 2, cy - d / 2, cx + w / 2, cy + d / 2), angle, origin=(cx, cy))
                if house.intersects(taken) or not box(0, 0, SIZE, SIZE).contains(house.centroid):
                    continue
                taken = taken.union(house.buffer(2.0))
                shapes.append((house, ID["building"]))
    base = np.full((SIZE, SIZE), ID["low_vegetation"], np.uint8)
    return rasterize(shapes, out=base, out_shape=(SIZE, SIZE), dtype="uint8")  # later shapes overwrite earlier


def write_layouts(out_dir: Path = OUT_DIR, count: int = 4) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        path = out_dir / f"town_{seed}.png"
        Image.fromarray(_layout(seed)).save(path, optimize=True)
        paths.append(path)
    return paths


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for written in write_layouts():
        logger.info("wrote %s", written)
