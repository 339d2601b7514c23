"""Broken and unusual inputs: every class gets exit code 2 and a message naming the argument, the file and
the fix, or (where the input is valid) correct output. The bad files are built here, tiny."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from conditions.vectors import VectorError, read_vector
from gen.cli import main
from tests.conftest import shared_file


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid PNG header declaring ``width`` x ``height`` (8-bit grey) with one tiny IDAT: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def _write(path: Path, array: np.ndarray, **profile) -> Path:
    count, height, width = array.shape
    driver = "PNG" if path.suffix == ".png" else "GTiff"
    with rasterio.open(path, "w", driver=driver, width=width, height=height, count=count, dtype=array.dtype,
                       **profile) as dst:  # fmt: skip
        dst.write(array)
    return path


def _geojson(path: Path, features: list[dict], crs: str | None = None) -> Path:
    data = {"type": "FeatureCollection", "features": features}
    if crs:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(data))
    return path


def _feature(geometry: dict, **properties) -> dict:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


SQUARE = [[-122.3, 37.8], [-122.2999, 37.8], [-122.2999, 37.8001], [-122.3, 37.8001], [-122.3, 37.8]]


def _cli(args: list[str], caplog) -> tuple[int, str]:
    caplog.clear()
    code = main(args)
    return code, caplog.text


@pytest.fixture(scope="module")
def ctrl_model(ctrl):
    return str(ctrl[0])


def test_decompression_bomb_is_refused_before_reading(tmp_path, caplog, ctrl_model):
    bomb = _png_declaring(tmp_path / "bomb.png", 100_000, 100_000)
    assert bomb.stat().st_size < 200
    code, log = _cli(["generate", "--model", ctrl_model, "--masks", str(bomb), "--palette", "loveda",
                      "--out", str(tmp_path / "o")], caplog)  # fmt: skip
    assert code == 2
    assert "mask" in log and "bomb.png" in log and "declares 100000x100000 pixels (10000.0 Mpx)" in log
    assert "raise the limit with rsgen --max-pixels 10000000000" in log
    assert not (tmp_path / "o").exists()


def test_truncated_jpeg_is_a_clear_error(tmp_path, caplog, ctrl_model):
    import PIL.Image

    full = tmp_path / "full.jpg"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(full, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    region = _write(tmp_path / "r.png", np.ones((1, 64, 64), np.uint8))
    code, log = _cli(["inpaint", "--model", ctrl_model, "--image", str(cut), "--region", str(region),
                      "--out", str(tmp_path / "o")], caplog)  # fmt: skip
    assert code == 2 and "rsgen:" in log and " --image '" in log and "cut.jpg': could not be read" in log
    assert "the file is truncated or corrupt: download or export it again" in log


def test_geojson_geometries_that_crash_geos_are_dropped_and_counted(tmp_path, caplog):
    nan = [[float("nan"), 37.8], [-122.2999, 37.8], [-122.2999, 37.8001], [float("nan"), 37.8]]
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature({"type": "Polygon", "coordinates": [SQUARE]}),
        _feature({"type": "Polygon", "coordinates": [nan]}),
        _feature({"type": "LineString", "coordinates": [[-122.3, 37.8]]}),
        _feature({"type": "Point", "coordinates": [float("inf"), 0]}),
    ]}, allow_nan=True))  # fmt: skip
    caplog.clear()
    layer = read_vector(path)
    assert len(layer) == 1 and layer.dropped == 3
    assert "NaN or infinite coordinates" in caplog.text and "unreadable geometry" in caplog.text
    deep = tmp_path / "deep.geojson"
    deep.write_text('{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ' + "[" * 5000 + "]" * 5000
                    + "}, \"properties\": {}}")  # fmt: skip
    with pytest.raises(VectorError, match=r"deep\.geojson'.*(not GeoJSON that can be read|no usable geometries)"):
        read_vector(deep)


def test_rings_are_closed_or_dropped_with_a_count_never_silently(tmp_path, caplog):
    open_ring = SQUARE[:-1]  # not closed
    triangle = SQUARE[:3]  # 3 positions: closing it gives 4
    two = SQUARE[:2]  # 2 positions: no ring
    path = _geojson(tmp_path / "rings.geojson", [
        _feature({"type": "Polygon", "coordinates": [open_ring]}),
        _feature({"type": "Polygon", "coordinates": [triangle]}),
        _feature({"type": "Polygon", "coordinates": [two]}),
    ])  # fmt: skip
    caplog.clear()
    layer = read_vector(path)
    assert len(layer) == 2 and layer.repaired == 2 and layer.dropped == 1
    assert layer.geometries[0].equals(read_vector(_geojson(tmp_path / "ok.geojson", [
        _feature({"type": "Polygon", "coordinates": [SQUARE]})])).geometries[0])  # fmt: skip
    assert "repaired 2 and dropped 1 of 3 features" in caplog.text and "no ring of >= 4 positions" in caplog.text


def test_multipolygon_with_an_empty_part_keeps_its_other_parts(tmp_path):
    path = _geojson(tmp_path / "multi.geojson", [_feature({"type": "MultiPolygon", "coordinates": [[SQUARE], []]})])
    layer = read_vector(path)
    assert len(layer) == 1 and layer.repaired == 1 and layer.geometries[0].area > 0


def test_a_layer_of_points_only_and_non_string_classes(tmp_path, caplog, ctrl_model):
    points = _geojson(tmp_path / "points.geojson", [_feature({"type": "Point", "coordinates": [-122.3, 37.8]})])
    code, log = _cli(["generate", "--model", ctrl_model, "--vectors", f"buildings:{points}", "--gsd", "1",
                      "--out", str(tmp_path / "o")], caplog)  # fmt: skip
    assert code == 2 and "--vectors: 'buildings:" in log and "holds only Point features" in log
    road = {"type": "LineString", "coordinates": [[-122.3, 37.8], [-122.2995, 37.8]]}
    roads = _geojson(tmp_path / "roads.geojson", [_feature(road, highway=["primary", "secondary"]),
                                                  _feature(road, highway="primary")])  # fmt: skip
    code, log = _cli(["generate", "--model", ctrl_model, "--vectors", f"roads:{roads}", "--gsd", "1", "--size", "64",
                      "--steps", "1", "--out", str(tmp_path / "r")], caplog)  # fmt: skip
    assert code == 0
    assert "1 feature(s) have a non-string 'highway' (e.g. ['primary', 'secondary']); they get the default" in log


def test_projected_coordinates_without_a_crs(tmp_path, caplog, ctrl_model):
    x, y = 563_000.0, 4_184_000.0  # UTM 10N, Oakland
    square = [[x, y], [x + 20, y], [x + 20, y + 20], [x, y + 20], [x, y]]
    path = _geojson(tmp_path / "utm.geojson", [_feature({"type": "Polygon", "coordinates": [square]})])
    base = ["generate", "--model", ctrl_model, "--vectors", f"buildings:{path}", "--gsd", "1", "--size", "64",
            "--steps", "1"]  # fmt: skip
    code, log = _cli([*base, "--out", str(tmp_path / "o")], caplog)
    assert code == 2 and "utm.geojson" in log and "which is not longitude/latitude" in log
    assert "pass it with --vectors-crs, e.g. --vectors-crs EPSG:32632" in log
    code, _ = _cli([*base, "--vectors-crs", "EPSG:32610", "--out", str(tmp_path / "ok")], caplog)
    assert code == 0
    with rasterio.open(tmp_path / "ok" / "00000000_semantic.tif") as src:
        assert src.crs.to_epsg() == 32610 and (src.read(1) > 0).any()


def _levir(tmp_path: Path) -> tuple[Path, Path]:
    for folder in ("A", "label"):
        (tmp_path / folder).mkdir()
        shutil.copy(shared_file(f"change/levir_like/{folder}/test_2_0000_0000.png"), tmp_path / folder / "p.png")
    return tmp_path / "A", tmp_path / "label"


def test_rotated_and_misaligned_georeferencing_is_refused(tmp_path, caplog, ctrl_model):
    images, masks = _levir(tmp_path)
    with rasterio.open(images / "p.png") as src:
        rgb = src.read()
    with rasterio.open(masks / "p.png") as src:
        ids = src.read()
    rotated = Affine(0.5, 0.1, 500000, 0.1, -0.5, 4000000)
    (tmp_path / "Ar").mkdir()
    (tmp_path / "Mr").mkdir()
    _write(tmp_path / "Ar" / "p.tif", rgb, crs="EPSG:32610", transform=rotated)
    _write(tmp_path / "Mr" / "p.tif", ids, crs="EPSG:32610", transform=from_origin(500000, 4000000, 0.5, 0.5))
    base = ["change-pairs", "--model", ctrl_model, "--mode", "hybrid", "--palette", "levir", "--steps", "1"]
    code, log = _cli([*base, "--images", str(tmp_path / "Ar"), "--masks", str(tmp_path / "Mr"),
                      "--out", str(tmp_path / "o1")], caplog)  # fmt: skip
    assert code == 2 and "images" in log and "geotransform is rotated or sheared" in log and "gdalwarp" in log
    (tmp_path / "Ag").mkdir()
    _write(tmp_path / "Ag" / "p.tif", rgb, crs="EPSG:32633", transform=from_origin(500000, 4000000, 0.5, 0.5))
    code, log = _cli([*base, "--images", str(tmp_path / "Ag"), "--masks", str(tmp_path / "Mr"),
                      "--out", str(tmp_path / "o2")], caplog)  # fmt: skip
    assert code == 2 and "--masks: " in log and "CRS EPSG:32610 vs EPSG:32633" in log
    assert "warp the mask onto the image's grid first (gdalwarp" in log


def test_all_nodata_image_is_not_inpainted(tmp_path, caplog, ctrl_model):
    image = _write(tmp_path / "nd.tif", np.zeros((3, 64, 64), np.uint8), nodata=0)
    region = _write(tmp_path / "r.png", np.ones((1, 64, 64), np.uint8))
    code, log = _cli(["inpaint", "--model", ctrl_model, "--image", str(image), "--region", str(region),
                      "--out", str(tmp_path / "o")], caplog)  # fmt: skip
    assert code == 2 and "nd.tif" in log and "every pixel is nodata (0.0)" in log


def test_inpainting_any_size_keeps_the_size_and_the_outside(tmp_path, ctrl_model):
    rgb = np.random.default_rng(1).integers(0, 255, (3, 75, 100), dtype=np.uint8)
    image = _write(tmp_path / "odd.png", rgb)
    region = np.zeros((1, 75, 100), np.uint8)
    region[:, 20:50, 30:70] = 1
    _write(tmp_path / "r.png", region)
    assert main(["inpaint", "--model", ctrl_model, "--image", str(image), "--region", str(tmp_path / "r.png"),
                 "--steps", "1", "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "o" / "00000000.png") as src:
        out = src.read()
    assert out.shape == (3, 75, 100)
    keep = region[0] == 0
    assert np.array_equal(out[:, keep], rgb[:, keep]) and (out[:, ~keep] != rgb[:, ~keep]).any()


def test_float_lr_with_nan_nodata(tmp_path):
    from pipelines.tiny_bundle import TinySRBundleConfig, build_tiny_bundle

    model = build_tiny_bundle(tmp_path / "sr", TinySRBundleConfig(tile_size=64))
    data = np.random.default_rng(0).uniform(0, 0.5, (3, 16, 16)).astype(np.float32)
    data[:, :4, :4] = np.nan
    lr = _write(tmp_path / "lr.tif", data, crs="EPSG:32632", transform=from_origin(500000, 5000000, 10, 10),
                nodata=float("nan"))  # fmt: skip
    assert main(["sr", "--model", str(model), "--lr", str(lr), "--scale", "2", "--tile", "64", "--steps", "1",
                 "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "o" / "00000000.tif") as src:
        out = src.read()
        assert np.isnan(src.nodata)
    nodata = np.isnan(out).any(axis=0)
    expected = np.zeros((32, 32), bool)
    expected[:8, :8] = True  # exactly the LR's nodata pixels, refined by the scale: NaN does not spread
    assert np.array_equal(nodata, expected) and np.isfinite(out[:, ~expected]).all()


def test_generate_with_an_inpainting_bundle(tmp_path):
    from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle

    model = build_tiny_bundle(tmp_path / "inp", TinyControlledBundleConfig(64, ("mask",), inpainting=True))
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        mask = _write(tmp_path / "m.png", src.read(window=((0, 64), (0, 64))))
    assert main(["generate", "--model", str(model), "--masks", str(mask), "--palette", "loveda", "--steps", "1",
                 "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    with rasterio.open(tmp_path / "o" / "00000000.png") as src:
        assert src.read().shape == (3, 64, 64) and src.read().std() > 0


def test_job_spec_out_aliases_and_duplicate_keys(tmp_path, caplog, tiny_bundle):
    folder = tmp_path / "specs"
    folder.mkdir()
    spec = folder / "job.yaml"
    spec.write_text(f"task: txt2img\nmodel: {tiny_bundle}\nsteps: 1\nout: ../../somewhere\n")
    code, log = _cli(["run", str(spec)], caplog)
    assert code == 2 and "out '../../somewhere': leaves the folder of the spec" in log and "pass --out DIR" in log
    assert not (tmp_path.parent / "somewhere").exists()
    assert main(["run", str(spec), "--out", str(tmp_path / "given")]) == 0  # --out may point anywhere
    spec.write_text(f"task: txt2img\nmodel: {tiny_bundle}\nsteps: 1\nout: data\n")
    assert main(["run", str(spec)]) == 0 and (folder / "data" / "00000000.png").is_file()
    spec.write_text("task: txt2img\nnum_samples: 4\nseed: 1\nnum_samples: 400000\n")
    code, log = _cli(["run", str(spec), "--out", str(tmp_path / "d")], caplog)
    assert code == 2 and "key 'num_samples' is given twice (lines 2 and 4); keep one of them" in log
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + k)}: &{chr(98 + k)} [{', '.join([f'*{chr(97 + k)}'] * 10)}]\n" for k in range(8)
    )
    spec.write_text("task: txt2img\n" + laughs)
    code, log = _cli(["run", str(spec), "--out", str(tmp_path / "l")], caplog)
    assert code == 2 and "expands to more than 100000 values (YAML aliases?)" in log and len(log) < 2000
