import json

import numpy as np
import pytest
import rasterio
from pyproj import CRS, Transformer

from conditions import Metadata
from core.atomic import TMP_PREFIX, atomic_path, remove_stale_temporaries
from core.geo import utm_crs_for
from core.hashing import sha256_file
from synth_datasets import georeference_from_point, write_geotiff, write_image_sample
from synth_datasets.samples import ImageSample, Labels
from tests.conftest import shared_file


@pytest.mark.parametrize(
    ("lat", "lon", "epsg"),
    [(52.37, 4.90, 32631), (-33.87, 151.21, 32756), (0.0, -180.0, 32601), (10.0, 180.0, 32660), (37.8, -122.3, 32610)],
)
def test_utm_zone(lat, lon, epsg):
    assert utm_crs_for(lat, lon) == CRS.from_epsg(epsg)


def test_utm_zone_rejects_polar():
    with pytest.raises(ValueError, match=r"lat=85\.0: UTM is defined between 80°S and 84°N"):
        utm_crs_for(85.0, 0.0)


@pytest.mark.parametrize(
    ("relative", "epsg"),
    [
        ("geotiff/naip_timeseries_nd/m_4709963_se_14_1_20090818.tif", 32614),  # NAD83 / UTM 14N
        ("geotiff/landsat7_rasterio/RGB.byte.tif", 32618),
        ("geotiff/elevation_alexandria/dsm.tif", 32618),  # NAD83 / UTM 18N
    ],
)
def test_utm_zone_agrees_with_real_rasters(relative, epsg):
    with rasterio.open(shared_file(relative)) as src:
        assert src.crs.to_dict().get("proj") == "utm"
        left, bottom, right, top = src.bounds
        to_lonlat = Transformer.from_crs(src.crs, "EPSG:4326", always_xy=True)
        lon, lat = to_lonlat.transform((left + right) / 2, (bottom + top) / 2)
    assert utm_crs_for(lat, lon) == CRS.from_epsg(epsg)


def test_georeference_is_centred_north_up_with_gsd_pixels():
    georef = georeference_from_point(52.37, 4.90, 0.5, height=64, width=128)
    t = georef.transform
    assert (t.a, t.b, t.d, t.e) == (0.5, 0.0, 0.0, -0.5)
    cx, cy = t @ (64, 32)  # centre of a 128-wide, 64-high image
    lon, lat = Transformer.from_crs(georef.crs, "EPSG:4326", always_xy=True).transform(cx, cy)
    assert lon == pytest.approx(4.90, abs=1e-9) and lat == pytest.approx(52.37, abs=1e-9)
    left, bottom, right, top = georef.bounds(64, 128)
    assert right - left == pytest.approx(64.0) and top - bottom == pytest.approx(32.0)


def test_geotiff_round_trip_with_rasterio(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(300, 260, 3), dtype=np.uint8)
    georef = georeference_from_point(-33.87, 151.21, 2.0, 300, 260)
    path = write_geotiff(tmp_path / "x.tif", image, georef, descriptions=("red", "green", "blue"), tags={"k": {"a": 1}})
    with rasterio.open(path) as src:
        assert src.crs == CRS.from_epsg(32756)
        assert src.transform.almost_equals(georef.transform)
        assert src.bounds == pytest.approx(georef.bounds(300, 260))
        assert src.res == (2.0, 2.0)
        assert src.descriptions == ("red", "green", "blue")
        assert json.loads(src.tags()["k"]) == {"a": 1}
        assert np.array_equal(np.moveaxis(src.read(), 0, -1), image)
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    final = tmp_path / "good.bin"
    final.write_bytes(b"complete")
    with pytest.raises(RuntimeError, match="killed"), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert final.read_bytes() == b"complete"
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))
    (tmp_path / f"{TMP_PREFIX}stale.png").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1


def test_sample_writer_png_and_geotiff(tmp_path):
    image = np.linspace(0, 1, 32 * 32 * 3, dtype=np.float32).reshape(32, 32, 3)
    written = write_image_sample(tmp_path, "00000000", ImageSample(image, {"prompt": "p"}))
    sidecar = json.loads(written.sidecar.read_text())
    assert sidecar["file"] == "00000000.png" and sidecar["sha256"] == sha256_file(written.image)
    assert sidecar["shape"] == [32, 32, 3] and sidecar["prompt"] == "p"
    md = Metadata(gsd=1.0, lat=40.0, lon=-105.0)
    georef = georeference_from_point(md.lat, md.lon, md.gsd, 32, 32)
    written = write_image_sample(tmp_path, "00000001", ImageSample(image, {"prompt": "p"}, georef=georef))
    assert written.image.name == "00000001.tif"  # a georef makes it a GeoTIFF (there is no fmt= any more)
    sidecar = json.loads(written.sidecar.read_text())
    assert sidecar["crs"] == "EPSG:32613" and sidecar["bounds"] == pytest.approx(list(georef.bounds(32, 32)))
    with rasterio.open(written.image) as src:
        assert json.loads(src.tags()["rsgen_provenance"]) == {"prompt": "p"}
    labels = Labels(np.zeros((16, 32), np.uint8))
    with pytest.raises(ValueError, match=r"semantic: shape \(16, 32\) must equal the image's \(32, 32\)"):
        write_image_sample(tmp_path, "x", ImageSample(image, {}, labels=labels))
    with pytest.raises(ValueError, match="contains NaN"):
        write_image_sample(tmp_path, "x", ImageSample(np.full((4, 4, 3), np.nan, np.float32), {}))
    with pytest.raises(ValueError, match=r"image: expected \(H, W, 3\), got shape \(4, 4\)"):
        write_image_sample(tmp_path, "x", ImageSample(np.zeros((4, 4), np.uint8), {}))
    assert not list(tmp_path.glob("x*"))


def test_atomic_files_get_normal_permissions(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    path = write_geotiff(tmp_path / "p.tif", np.zeros((4, 4, 3), np.uint8), georeference_from_point(0, 0, 1, 4, 4))
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
