"""Fuzz the input readers with corrupted copies of real rasters and GeoJSONs (truncations, byte flips,
header edits): every variant is read or refused with a domain error (a ValueError naming the file), never
another exception, a hang or a memory blow-up."""

import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from conditions.masks import read_mask
from conditions.raster_input import open_raster, read_uint8_rgb, read_whole
from conditions.vectors import read_vector
from tests.conftest import crop, shared_file

VARIANTS_PER_FILE = 60  # 4 files: 240 variants


def _crops(tmp_path: Path) -> dict[str, Path]:
    """Small crops of real data, written as the formats users bring: PNG mask, RGB PNG, GeoTIFF, GeoJSON."""
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        ids = src.read(window=Window(0, 0, 48, 48))
    mask = tmp_path / "mask.png"
    with rasterio.open(mask, "w", driver="PNG", width=48, height=48, count=1, dtype="uint8") as dst:
        dst.write(ids)
    with rasterio.open(shared_file("change/levir_like/A/test_2_0000_0000.png")) as src:
        rgb = src.read(window=Window(0, 0, 48, 48))
    image = tmp_path / "image.png"
    with rasterio.open(image, "w", driver="PNG", width=48, height=48, count=3, dtype="uint8") as dst:
        dst.write(rgb)
    geotiff = crop(shared_file("geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif"), tmp_path / "naip.tif",
                   Window(0, 0, 32, 32))  # fmt: skip
    source = json.loads(shared_file("vector/osm_west_oakland/buildings.geojson").read_text())
    small = {**source, "features": source["features"][:12]}
    vector = tmp_path / "buildings.geojson"
    vector.write_text(json.dumps(small))
    return {"mask": mask, "image": image, "geotiff": geotiff, "vector": vector}


def _corrupt(data: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(4)
    raw = bytearray(data)
    if kind == 0:  # truncation
        return bytes(raw[: int(rng.integers(1, len(raw)))])
    if kind == 1:  # random byte flips
        for position in rng.integers(0, len(raw), int(rng.integers(1, 16))):
            raw[position] = int(rng.integers(256))
        return bytes(raw)
    if kind == 2:  # header edits: bytes of the first 64 (sizes, counts, offsets live there)
        for position in rng.integers(0, min(64, len(raw)), int(rng.integers(1, 6))):
            raw[position] = int(rng.choice([0, 0xFF, 0x7F, int(rng.integers(256))]))
        return bytes(raw)
    start = int(rng.integers(len(raw)))  # a block overwritten with junk
    raw[start : start + 256] = rng.integers(0, 256, min(256, len(raw) - start), dtype=np.uint8).tobytes()
    return bytes(raw)


def _read_raster_whole(path: Path) -> object:
    with open_raster(path, argument="raster") as src:
        return read_whole(src, "raster")


READERS = {
    "mask": lambda p: read_mask(p, "loveda"),
    "image": lambda p: read_uint8_rgb(p, argument="image"),
    "geotiff": _read_raster_whole,
    "vector": read_vector,
}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_corrupted_real_inputs_give_domain_errors_only(kind, tmp_path):
    path = _crops(tmp_path)[kind]
    original = path.read_bytes()
    rng = np.random.default_rng(sorted(READERS).index(kind))
    outcomes = {"read": 0, "refused": 0}
    tracemalloc.start()
    try:
        for k in range(VARIANTS_PER_FILE):
            variant = tmp_path / f"v{k}{path.suffix}"
            variant.write_bytes(_corrupt(original, rng))
            start = time.perf_counter()
            try:
                READERS[kind](variant)
                outcomes["read"] += 1
            except ValueError as err:  # every rsgen domain error is a ValueError naming the file
                assert variant.name in str(err), str(err)
                outcomes["refused"] += 1
            assert time.perf_counter() - start < 10, f"variant {k} took too long"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, f"peak Python allocation {peak / 2**20:.0f} MiB"
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == VARIANTS_PER_FILE
