"""Image controls: RGB reading, Canny edges, DSM/DTM height controls, CLI specs, optional controlnet-aux."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine

from conditions.image_controls import (
    CONTROL_KINDS,
    ControlImage,
    ControlImageError,
    canny_control,
    control_from_spec,
    elevation_control,
    load_aux_detector,
    read_rgb,
)
from tests.conftest import shared_file

DSM = "geotiff/elevation_alexandria/dsm.tif"
DTM = "geotiff/elevation_alexandria/dtm.tif"
S2_10M = "geotiff/s2_multires_dsen2/S2A_MSIL1C_20170527_T33UUB_10m.tif"
POTSDAM = "seg/potsdam/images/2_10_0_0_512_512.png"
POTSDAM_MASK = "seg/potsdam/masks/2_10_0_0_512_512.png"
LANDSAT = "geotiff/landsat7_rasterio/RGB.byte.tif"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_control(control: ControlImage, shape: tuple[int, int]) -> None:
    assert control.tensor.shape == (3, *shape)
    assert control.tensor.dtype == torch.float32
    assert float(control.tensor.min()) >= 0.0 and float(control.tensor.max()) <= 1.0
    assert torch.equal(control.tensor[0], control.tensor[1]) or control.name == "image"


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    nodata: float | None = None,
    transform: Affine | None = None,
    crs: str | None = "EPSG:26918",
) -> Path:
    profile = {
        "driver": "GTiff",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": str(data.dtype),
        "nodata": nodata,
        "crs": crs,
        "transform": transform or Affine(2.0, 0.0, 321498.0, 0.0, -2.0, 4298018.0),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return path


# ---------------------------------------------------------------- read_rgb


def test_read_rgb_png_is_uint8_without_georeference() -> None:
    rgb, crs, transform = read_rgb(shared_file(POTSDAM), target_shape=(512, 512))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert crs is None and transform is None
    assert rgb.std() > 10  # a real image, not a blank


def test_read_rgb_keeps_georeference() -> None:
    rgb, crs, transform = read_rgb(shared_file(LANDSAT))
    assert rgb.shape == (718, 791, 3)
    assert crs.to_epsg() == 32618
    assert transform.a == pytest.approx(300.0, rel=0.01)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_read_rgb_stretches_uint16_reflectance() -> None:
    path = shared_file(S2_10M)
    with rasterio.open(path) as src:
        assert src.dtypes[0] == "uint16"
    rgb, _, _ = read_rgb(path, bands=[1, 2, 3])
    assert rgb.shape == (600, 600, 3) and rgb.dtype == np.uint8
    for c in range(3):  # 2-98 % stretch: about 2 % of pixels saturate at each end of every band
        assert 0.005 < (rgb[..., c] == 0).mean() < 0.05
        assert 0.005 < (rgb[..., c] == 255).mean() < 0.05


def test_read_rgb_single_band_is_replicated() -> None:
    rgb, _, _ = read_rgb(shared_file(S2_10M), bands=[4])  # NIR
    assert rgb.shape == (600, 600, 3)
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])


def test_read_rgb_errors(tmp_path: Path) -> None:
    with pytest.raises(ControlImageError, match="no such file"):
        read_rgb(tmp_path / "missing.png")
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(ControlImageError, match="junk.tif.*not an image GDAL can read"):
        read_rgb(junk)
    s2 = shared_file(S2_10M)
    with pytest.raises(ControlImageError, match=r"band\(s\) \[5\] out of range.*4 band\(s\)"):
        read_rgb(s2, bands=[1, 2, 5])
    with pytest.raises(ControlImageError, match="got 2 band"):
        read_rgb(s2, bands=[1, 2])
    with pytest.raises(ControlImageError, match=r"10m\.tif.*600x600.*target_shape 512x512"):
        read_rgb(s2, target_shape=(512, 512))


# ---------------------------------------------------------------- canny


def test_canny_square_edges_on_all_channels() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:48, 16:48] = 255
    control = canny_control(image)
    assert control.name == "canny" and control.source is None and control.sha256 is None
    assert_control(control, (64, 64))
    assert set(torch.unique(control.tensor).tolist()) == {0.0, 1.0}
    edges = control.tensor[0]
    assert edges[:10].sum() == 0 and edges[32, 32] == 0  # flat areas have no edges
    assert edges[14:18, 16:48].sum() > 0  # the square's top border does
    assert control.params["low"] == 100 and control.params["high"] == 200


def test_canny_real_image_records_provenance() -> None:
    path = shared_file(POTSDAM)
    rgb, _, _ = read_rgb(path)
    loose = canny_control(rgb, 50, 100, source=str(path))
    strict = canny_control(rgb, 200, 250, source=str(path))
    assert_control(loose, (512, 512))
    assert loose.source == str(path) and loose.sha256 == sha256(path)
    assert 0.0 < strict.params["edge_fraction"] < loose.params["edge_fraction"] < 0.5


@pytest.mark.parametrize("low, high", [(200, 100), (100, 100), (-1, 100), (100, 256)])
def test_canny_rejects_bad_thresholds(low: int, high: int) -> None:
    with pytest.raises(ControlImageError, match=rf"low={low}, high={high}.*0 <= low < high <= 255"):
        canny_control(np.zeros((8, 8, 3), np.uint8), low, high)


def test_canny_rejects_non_rgb_uint8() -> None:
    with pytest.raises(ControlImageError, match=r"image: got \(8, 8\) uint8.*\(H, W, 3\) uint8"):
        canny_control(np.zeros((8, 8), np.uint8))
    with pytest.raises(ControlImageError, match="float32"):
        canny_control(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ControlImageError, match="high=150.5"):
        canny_control(np.zeros((8, 8, 3), np.uint8), 100, 150.5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- elevation


@pytest.fixture(scope="module")
def heights() -> np.ndarray:
    with rasterio.open(shared_file(DSM)) as dsm, rasterio.open(shared_file(DTM)) as dtm:
        a, b = dsm.read(1).astype(np.float64), dtm.read(1).astype(np.float64)
        valid = (a != dsm.nodata) & (b != dtm.nodata)
    return np.where(valid, a - b, np.nan)


def test_elevation_with_dtm_buildings_brighter_than_ground(heights: np.ndarray) -> None:
    dsm, dtm = shared_file(DSM), shared_file(DTM)
    control = elevation_control(dsm, dtm, max_height_m=30.0, target_shape=(259, 283))
    assert control.name == "depth"
    assert_control(control, (259, 283))
    values = control.tensor[0].numpy()
    buildings, ground = heights > 3.0, heights < 0.5
    assert buildings.sum() > 1000 and ground.sum() > 1000
    assert values[buildings].mean() > values[ground].mean() + 0.2
    assert values[buildings].min() > values[ground].max()
    np.testing.assert_allclose(values[buildings], np.clip(heights[buildings], 0, 30) / 30, atol=1e-5)
    assert control.source == str(dsm) and control.sha256 == sha256(dsm)
    assert control.params["dtm_source"] == str(dtm) and control.params["dtm_sha256"] == sha256(dtm)
    # the DTM holds 276 nodata pixels: they are counted and set to 0
    nodata = np.isnan(heights)
    assert control.params["nodata_pixels"] == int(nodata.sum()) == 276
    assert (values[nodata] == 0).all()


def test_elevation_without_dtm_uses_low_percentile_ground(heights: np.ndarray) -> None:
    control = elevation_control(shared_file(DSM))
    assert_control(control, (259, 283))
    assert control.params["ground"] == "dsm_p2" and control.params["nodata_pixels"] == 0
    values = control.tensor[0].numpy()
    assert values[heights > 3.0].mean() > values[heights < 0.5].mean() + 0.1
    assert (values == 0).mean() == pytest.approx(0.02, abs=0.01)  # below the 2nd percentile -> 0


def test_elevation_nodata_and_clipping(tmp_path: Path) -> None:
    dsm = np.full((4, 5), 10.0, np.float32)
    dtm = np.full((4, 5), 10.0, np.float32)
    dsm[0, 0] = -9999.0  # DSM nodata
    dsm[0, 1] = np.nan  # not finite
    dtm[1, 1] = -9999.0  # DTM nodata
    dsm[2, 2] = 35.0  # 25 m building
    dsm[3, 3] = 200.0  # clipped at max_height_m
    dsm_path = write_raster(tmp_path / "dsm.tif", dsm, nodata=-9999.0)
    dtm_path = write_raster(tmp_path / "dtm.tif", dtm, nodata=-9999.0)
    control = elevation_control(dsm_path, dtm_path, max_height_m=50.0)
    values = control.tensor[0].numpy()
    assert control.params["nodata_pixels"] == 3 and control.params["clipped_pixels"] == 1
    assert values[0, 0] == values[0, 1] == values[1, 1] == 0.0
    assert values[2, 2] == pytest.approx(0.5) and values[3, 3] == 1.0
    assert np.count_nonzero(values) == 2


def test_elevation_errors(tmp_path: Path) -> None:
    dsm = shared_file(DSM)
    with pytest.raises(ControlImageError, match="dsm_path=.*missing.tif.*no such file"):
        elevation_control(tmp_path / "missing.tif")
    with pytest.raises(ControlImageError, match="max_height_m=0"):
        elevation_control(dsm, max_height_m=0)
    with pytest.raises(ControlImageError, match=r"dsm\.tif.*259x283.*target_shape 256x256"):
        elevation_control(dsm, target_shape=(256, 256))
    flat = np.zeros((259, 283), np.float32)
    shifted = write_raster(tmp_path / "shifted.tif", flat, transform=Affine(2.0, 0, 321500.0, 0, -2.0, 4298018.0))
    with pytest.raises(ControlImageError, match=r"dsm_path=.*dsm\.tif.*dtm_path=.*shifted\.tif.*transform"):
        elevation_control(dsm, shifted)
    small = write_raster(tmp_path / "small.tif", flat[:100])
    with pytest.raises(ControlImageError, match=r"small\.tif.*size 259x283 vs 100x283"):
        elevation_control(dsm, small)
    other_crs = write_raster(tmp_path / "utm17.tif", flat, crs="EPSG:26917")
    with pytest.raises(ControlImageError, match=r"utm17\.tif.*CRS"):
        elevation_control(dsm, other_crs)
    empty = write_raster(tmp_path / "empty.tif", np.full((3, 3), -1.0, np.float32), nodata=-1.0)
    with pytest.raises(ControlImageError, match="every pixel is nodata"):
        elevation_control(empty)
    with pytest.raises(ControlImageError, match=r"dtype uint8.*metres"):
        elevation_control(shared_file(POTSDAM_MASK))


# ---------------------------------------------------------------- controlnet-aux (optional, not installed)


def test_aux_detector_missing_dependency_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # import fails even where it is installed
    with pytest.raises(ImportError) as info:
        load_aux_detector("hed", "lllyasviel/Annotators")
    message = str(info.value)
    assert "pip install controlnet-aux" in message
    assert "torch==2.14.1 torchvision==0.29.1" in message


def test_aux_detector_unknown_name_lists_known() -> None:
    with pytest.raises(ControlImageError, match="name='sobel'.*hed.*midas.*mlsd"):
        load_aux_detector("sobel", "lllyasviel/Annotators")
    with pytest.raises(ControlImageError, match="source=''"):
        load_aux_detector("hed", "")


# ---------------------------------------------------------------- specs and ControlImage


def test_control_from_spec_kinds() -> None:
    png, dsm, dtm = shared_file(POTSDAM), shared_file(DSM), shared_file(DTM)
    canny = control_from_spec(f"canny:{png}", target_shape=(512, 512))
    assert canny.name == "canny" and canny.source == str(png) and canny.sha256 == sha256(png)
    assert_control(canny, (512, 512))
    depth = control_from_spec(f"depth:{dsm},{dtm}")
    assert depth.params["ground"] == "dtm" and depth.sha256 == sha256(dsm)
    assert torch.equal(depth.tensor, elevation_control(dsm, dtm).tensor)
    assert control_from_spec(f"depth:{dsm}").params["ground"] == "dsm_p2"
    image = control_from_spec(f"image:{png}")
    rgb, _, _ = read_rgb(png)
    assert image.name == "image" and image.sha256 == sha256(png)
    assert_control(image, (512, 512))
    assert torch.equal(image.tensor, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)


def test_control_from_spec_errors() -> None:
    png = shared_file(POTSDAM)
    with pytest.raises(ControlImageError, match="unknown kind 'hed'.*canny, depth, image"):
        control_from_spec(f"hed:{png}")
    with pytest.raises(ControlImageError, match="unknown kind"):
        control_from_spec(str(png))  # no kind at all
    with pytest.raises(ControlImageError, match="no path after 'canny:'"):
        control_from_spec("canny:")
    with pytest.raises(ControlImageError, match="depth:DSM_PATH,DTM_PATH"):
        control_from_spec("depth:a.tif,b.tif,c.tif")
    with pytest.raises(ControlImageError, match=r"512x512.*target_shape 64x64"):
        control_from_spec(f"image:{png}", target_shape=(64, 64))
    assert CONTROL_KINDS == ("canny", "depth", "image")


def test_control_image_validates_tensor() -> None:
    ControlImage("ok", torch.zeros(3, 4, 4))
    with pytest.raises(ControlImageError, match=r"\(1, 4, 4\).*expected \(3, H, W\) float32"):
        ControlImage("bad", torch.zeros(1, 4, 4))
    with pytest.raises(ControlImageError, match=r"values span \[0, 255\].*divide"):
        ControlImage("bad", torch.full((3, 2, 2), 255.0).index_fill_(1, torch.tensor([0]), 0.0))
