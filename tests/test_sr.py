"""Reference-guided super-resolution: pipeline on tensors, tiled GeoTIFF job on real rasters."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from conditions.raster_input import OutputGrid, Radiometry, RasterInputError, RasterSource
from core.seeding import sample_generators, sample_seed
from gen.cli import main
from gen.runner import JobLockError, run_job
from gen.spec import FieldError, SpecError, build_spec
from gen.tasks.sr import SRSpec, _next_to
from pipelines import BundleError
from pipelines.super_resolution import RSSuperResolutionPipeline
from pipelines.tiling import StripBlender, ramp, tile_starts
from pipelines.tiny_bundle import TinySRBundleConfig, build_tiny_bundle
from tests.conftest import crop, shared_file

NAIP_2020 = "geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif"
NAIP_2014 = "geotiff/naip_timeseries_nd/m_4709963_se_14_1_20140720.tif"
NAIP_2009 = "geotiff/naip_timeseries_nd/m_4709963_se_14_1_20090818.tif"
S2_20M = "geotiff/s2_multires_dsen2/S2A_MSIL1C_20170527_T33UUB_20m.tif"
S2_10M = "geotiff/s2_multires_dsen2/S2A_MSIL1C_20170527_T33UUB_10m.tif"
STEPS = 3
STEM = "00000000"  # sample 0 of a job: OUT/00000000.tif + OUT/00000000.json


@pytest.fixture(scope="module")
def sr_bundle(tmp_path_factory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("sr") / "sr", TinySRBundleConfig(tile_size=64))


@pytest.fixture(scope="module")
def sr_pipe(sr_bundle) -> RSSuperResolutionPipeline:
    pipe = RSSuperResolutionPipeline.from_bundle(sr_bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def job(sr_bundle, lr, **kwargs) -> SRSpec:
    """An SR spec built through the checked builder (YAML keys; paths as strings)."""
    kwargs.setdefault("scale", 2)
    kwargs.setdefault("steps", STEPS)
    kwargs.setdefault("tile", 64)
    kwargs.setdefault("overlap", 16)
    # the job's bytes depend on torch's thread count: run at the session's, like the untiled reference calls
    kwargs.setdefault("threads", torch.get_num_threads())
    data = {"model": str(sr_bundle), "lr": [str(p) for p in lr] if isinstance(lr, list) else str(lr), **kwargs}
    return build_spec(SRSpec, {k: str(v) if isinstance(v, Path) else v for k, v in data.items()})


def run_sr(spec: SRSpec, out: Path, pipe: RSSuperResolutionPipeline, index: int = 0) -> Path:
    """Run ``spec`` into the folder ``out`` with the loaded ``pipe``; the GeoTIFF of sample ``index``."""
    summary = run_job(spec, out, pipe=pipe)
    assert summary.written_by_this_process == spec.num_samples
    return out / f"{index:08d}.tif"


def sidecar_of(tif: Path) -> dict:
    return json.loads(tif.with_suffix(".json").read_text())


# ---------------------------------------------------------------- pipeline on tensors
def test_pipeline_shapes_and_reference_strength(sr_pipe):
    g = torch.Generator().manual_seed(0)
    image, ref_a, ref_b = torch.rand(3, 2, 3, 64, 64, generator=g)
    gens = lambda: sample_generators(0, range(2))  # noqa: E731
    base = sr_pipe(image, ref_a, 0.0, num_inference_steps=STEPS, generator=gens()).images
    assert base.shape == (2, 64, 64, 3) and base.dtype == np.float32 and np.isfinite(base).all()
    assert np.array_equal(base, sr_pipe(image, ref_b, 0.0, num_inference_steps=STEPS, generator=gens()).images)
    assert np.array_equal(base, sr_pipe(image, None, num_inference_steps=STEPS, generator=gens()).images)
    zero_map = torch.zeros(2, 1, 64, 64)
    assert np.array_equal(base, sr_pipe(image, ref_a, zero_map, num_inference_steps=STEPS, generator=gens()).images)
    strong = sr_pipe(image, ref_a, 0.8, num_inference_steps=STEPS, generator=gens()).images
    assert np.abs(strong - base).max() > 1e-3
    # Per-pixel map: the left half at 0.8 and right half at 0 changes the left more than the right.
    half = torch.zeros(2, 1, 64, 64)
    half[..., :32] = 0.8
    mixed = sr_pipe(image, ref_a, half, num_inference_steps=STEPS, generator=gens()).images
    assert np.abs(mixed - base)[:, :, :24].mean() > 1.2 * np.abs(mixed - base)[:, :, 40:].mean()
    # The map reaches every ControlNet residual at that residual's resolution: zero where the map is zero.
    residual = torch.ones(2, 8, 16, 16)
    scaled = sr_pipe._scaled_residual(residual, half)  # (2, 8, 16, 16)
    assert torch.allclose(scaled[..., :8], torch.tensor(0.8)) and (scaled[..., 8:] == 0).all()
    single = sr_pipe(image[1:], ref_a[1:], 0.8, num_inference_steps=STEPS, generator=sample_generators(0, [1])).images
    assert np.abs(single[0] - strong[1]).max() < 1e-3  # batch-vs-single identity


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": torch.rand(1, 4, 64, 64)}, r"image: has 4 band\(s\) but this model takes 3"),
        ({"image": torch.rand(1, 3, 60, 64)}, r"size 60x64 must be a multiple of 16"),
        ({"reference": torch.rand(1, 3, 32, 32)}, r"reference: shape \(1, 3, 32, 32\) must equal"),
        ({"reference_strength": -0.1}, r"reference_strength=-0\.1: expected a number >= 0"),
        ({"reference_strength": torch.ones(1, 1, 8, 8)}, r"a map must have shape \(1, 1, 64, 64\)"),
        ({"output_type": "tif"}, r"output_type='tif'"),
    ],
)
def test_pipeline_check_inputs(sr_pipe, kwargs, match):
    call = {"image": torch.rand(1, 3, 64, 64), "reference": torch.rand(1, 3, 64, 64), "num_inference_steps": 1}
    with pytest.raises(ValueError, match=match):
        sr_pipe(**{**call, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strength": 0.0}, r"strength=0\.0: expected a number in \(0, 1\]"),
        ({"strength": 1.5}, r"strength=1\.5: expected a number in \(0, 1\]"),
        ({"strength": 0.2, "num_inference_steps": 4}, r"strength=0\.2 × num_inference_steps=4 runs no denoising step"),
        ({"lr_scale": 0.5}, r"lr_scale=0\.5: expected the LR → output factor, >= 1"),
    ],
)
def test_pipeline_strength_and_lr_scale_errors(sr_pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sr_pipe(torch.rand(1, 3, 64, 64), **{"num_inference_steps": 2, **kwargs})


def test_strength_starts_from_the_lr_latent(sr_pipe):
    """strength < 1 runs only the tail of the schedule from the noised LR latent: deterministic,
    different from sampling from pure noise, and closer to the LR image the lower it is."""
    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    run = lambda s: sr_pipe(image, num_inference_steps=10, strength=s, generator=sample_generators(0, range(2)),  # noqa: E731
                            output_type="latent").images  # fmt: skip
    lr_latent = sr_pipe.vae.encode(image * 2 - 1).latent_dist.mode() * sr_pipe.vae.config.scaling_factor
    full, mid, low = run(1.0), run(0.5), run(0.1)
    assert torch.equal(mid, run(0.5)) and not torch.allclose(full, mid)
    distance = [float((x - lr_latent).abs().mean()) for x in (full, mid, low)]
    assert distance[2] < distance[1] < distance[0]


def test_lr_consistency_keeps_the_lr_and_adds_only_detail(sr_pipe):
    """With lr_scale, area-averaging the output by the scale gives back (close to) the LR, whatever the
    model makes; without it the model's own low frequencies come through."""
    from pipelines.super_resolution.pipeline_rs_sr import lr_consistent

    g = torch.Generator().manual_seed(4)
    lr = torch.rand(2, 3, 16, 16, generator=g) * 0.4 + 0.3  # (2, 3, 16, 16), bicubic overshoot stays in [0, 1]
    image = torch.nn.functional.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)  # (2, 3, 64, 64)
    x = torch.rand(2, 3, 64, 64, generator=g) * 0.2 + 0.4  # an unrelated "model output"
    out = lr_consistent(x, image, 4)
    down = lambda t: torch.nn.functional.avg_pool2d(t, 4)  # noqa: E731
    assert float((down(out) - down(image)).abs().max()) < 0.1 * float((down(x) - down(image)).abs().max())
    detail = (out - image) - (x - torch.nn.functional.interpolate(down(x), scale_factor=4, mode="bicubic"))
    assert float(detail.abs().max()) < 1e-5  # out = image + (x − its own low-pass), nothing else
    made = sr_pipe(image, num_inference_steps=2, generator=sample_generators(0, range(2)), output_type="pt")
    kept = sr_pipe(image, num_inference_steps=2, generator=sample_generators(0, range(2)), output_type="pt", lr_scale=4)
    err = lambda o: float((down(o.images) - down(image)).abs().mean())  # noqa: E731
    assert err(kept) < 0.25 * err(made)


def test_sr_bundle_is_not_a_text2img_bundle(sr_bundle, tiny_bundle):
    from pipelines import RSText2ImagePipeline

    with pytest.raises(BundleError, match=r"this bundle is a RSSuperResolutionPipeline"):
        RSText2ImagePipeline.from_bundle(sr_bundle)
    with pytest.raises(BundleError, match=r"this bundle is a RSText2ImagePipeline"):
        RSSuperResolutionPipeline.from_bundle(tiny_bundle)


def test_tiling_helpers():
    assert tile_starts(50, 64, 16) == [0]
    assert tile_starts(96, 64, 16) == [0, 32]
    assert tile_starts(200, 64, 16) == [0, 48, 96, 136]
    w = ramp(64, 16, True, False)
    assert w[0] == pytest.approx(1 / 17) and w[15] == pytest.approx(16 / 17) and (w[16:] == 1).all()
    # Two ramps over the same overlap sum to a constant: a smooth, seam-free cross-fade.
    assert np.allclose(ramp(64, 16, False, True)[-16:] + ramp(64, 16, True, False)[:16], 1.0)


def test_radiometry_round_trip():
    reflectance = Radiometry.infer("uint16")
    values = np.array([0, 1234, 10000, 12000], dtype=np.uint16)
    assert reflectance.kind == "reflectance"
    assert reflectance.from_unit(reflectance.to_unit(values)).tolist() == [0, 1234, 10000, 10000]
    assert Radiometry.infer("uint8").from_unit(np.array([0.5])).dtype == np.uint8
    with pytest.raises(RasterInputError, match="radiometry='dn'"):
        Radiometry.infer("uint8", "dn")


# ---------------------------------------------------------------- the job on real rasters
def test_output_grid_crs_nodata_and_dtype_on_real_naip(sr_bundle, sr_pipe, tmp_path):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(300, 200, 40, 40))
    with rasterio.open(lr, "r+") as dst:  # mark a 3x3 block as nodata (NAIP nodata is 0)
        data = dst.read()
        data[:, 5:8, 10:13] = 0
        dst.write(data)
    spec = job(sr_bundle, lr, ref=shared_file(NAIP_2014), ref_strength=0.6)
    out = run_sr(spec, tmp_path / "hr", sr_pipe)
    assert out == tmp_path / "hr" / f"{STEM}.tif"
    with rasterio.open(lr) as src, rasterio.open(out) as hr:
        assert (hr.width, hr.height, hr.count) == (80, 80, 3)
        assert hr.crs == src.crs and hr.crs.to_epsg() == 26914
        assert hr.transform == src.transform * Affine.scale(0.5)
        assert hr.bounds == src.bounds
        assert hr.dtypes == ("uint8",) * 3 and hr.nodata == 0
        hr_data = hr.read()
    assert (hr_data[:, 10:16, 20:26] == 0).all()  # the nodata block, at twice the resolution
    valid = np.ones((80, 80), bool)
    valid[10:16, 20:26] = False
    assert (hr_data[:, valid].max(axis=0) > 0).mean() > 0.99
    sidecar = sidecar_of(out)
    assert sidecar["scale"] == 2 and sidecar["tiles"] == 4 and sidecar["reference_strength"] == 0.6
    assert sidecar["output"]["crs"] == "EPSG:26914" and sidecar["reference"]["sha256"]
    assert sidecar["file"] == f"{STEM}.tif"


def test_strength_zero_ignores_the_reference(sr_bundle, sr_pipe, tmp_path):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(500, 400, 24, 24))
    outs = {}
    for name, ref, strength in (("a", NAIP_2014, 0.0), ("b", NAIP_2009, 0.0), ("c", NAIP_2014, 0.9)):
        path = run_sr(job(sr_bundle, lr, ref=shared_file(ref), ref_strength=strength), tmp_path / name, sr_pipe)
        with rasterio.open(path) as src:
            outs[name] = src.read().astype(int)
    assert np.array_equal(outs["a"], outs["b"])
    assert np.abs(outs["a"] - outs["c"]).max() > 0


def untiled(sr_pipe, src, seed: int, index: int = 0) -> np.ndarray:
    """The whole (one-tile) S2 crop super-resolved in one pipeline call, seeded as tile 0 of sample ``index``."""
    grid = OutputGrid.scaled(src, 2)
    source = RasterSource(src, [1, 2, 3], grid, radiometry=Radiometry.infer("uint16"))
    image, _ = source.read_on_grid(Window(0, 0, 64, 64))
    result = sr_pipe(
        torch.from_numpy(image)[None], num_inference_steps=STEPS, output_type="pt", lr_scale=2,
        generator=sample_generators(sample_seed(seed, index), [0]),  # tile k of sample i: sample_seed(seed_i, k)
    ).images[0]  # fmt: skip
    return Radiometry.infer("uint16").from_unit(result.numpy())


def test_uint16_without_crs_and_one_tile_equals_untiled(sr_bundle, sr_pipe, tmp_path):
    lr = crop(shared_file(S2_20M), tmp_path / "s2.tif", Window(100, 100, 32, 32))
    out = run_sr(job(sr_bundle, lr, bands="1,2,3", tile=64, seed=5), tmp_path / "hr", sr_pipe)
    with rasterio.open(lr) as src, rasterio.open(out) as hr:
        assert hr.crs is None and hr.dtypes == ("uint16",) * 3
        assert hr.descriptions == ("B5", "B6", "B7")
        assert hr.bounds == src.bounds and (hr.width, hr.height) == (64, 64)
        tiled = hr.read()
        expected = untiled(sr_pipe, src, seed=5)
    assert np.array_equal(tiled, expected)


def test_lr_without_crs_warns(sr_bundle, sr_pipe, tmp_path, caplog):
    lr = crop(shared_file(S2_20M), tmp_path / "s2.tif", Window(100, 100, 32, 32))
    run_sr(job(sr_bundle, lr, bands="1,2,3", tile=64, seed=5), tmp_path / "hr", sr_pipe)
    assert "has no CRS" in caplog.text


def test_sidecar_job_seed_sample_seed_and_tile_seeds(sr_bundle, sr_pipe, tmp_path):
    """Sample i records job_seed = the spec seed and sample_seed = sample_seed(seed, i); its tile k is drawn
    from sample_seed(sample_seed(seed, i), k): bit for bit the untiled call seeded that way."""
    lr = crop(shared_file(S2_20M), tmp_path / "s2.tif", Window(100, 100, 32, 32))
    spec = job(sr_bundle, lr, bands="1,2,3", tile=64, seed=11, num_samples=3)
    summary = run_job(spec, tmp_path / "hr", pipe=sr_pipe)
    assert (summary.num_samples, summary.written_by_this_process) == (3, 3)
    images = []
    with rasterio.open(lr) as src:
        for i in range(3):
            tif = tmp_path / "hr" / f"{i:08d}.tif"
            sidecar = sidecar_of(tif)
            assert sidecar["sample_index"] == i and sidecar["job_seed"] == spec.seed == 11
            assert sidecar["sample_seed"] == sample_seed(spec.seed, i)
            assert sidecar["spec_sha256"] == summary.spec_sha256 and sidecar["tiles"] == 1
            with rasterio.open(tif) as hr:
                images.append(hr.read())
            assert np.array_equal(images[-1], untiled(sr_pipe, src, seed=11, index=i))
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])


def test_strip_blender_cross_fades_tiles_without_seams():
    """Four constant tiles (values 0, 1, 2, 3) on a 2x2 layout: the output cross-fades over the overlaps
    with steps of at most 1/(overlap+1) of the tile difference - never a hard seam - and every row is
    written exactly once, in order."""
    height, width, tile, overlap = 100, 112, 64, 16
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    assert rows == [0, 36] and cols == [0, 48]
    out = np.full((1, height, width), np.nan, dtype=np.float32)
    written: list[tuple[int, int]] = []

    def write(values, valid, row_off):
        written.append((row_off, values.shape[1]))
        out[:, row_off : row_off + values.shape[1]] = values

    blender = StripBlender(1, height, width, tile, write)
    for r, row in enumerate(rows):
        blender.flush_until(row)
        for c, col in enumerate(cols):
            weight = np.outer(
                ramp(tile, overlap, row > 0, row + tile < height), ramp(tile, overlap, col > 0, col + tile < width)
            )
            value = np.full((1, tile, tile), 2 * r + c, dtype=np.float32)
            blender.add(value, weight, np.ones((tile, tile), bool), row, col)
    blender.flush_until(height)
    assert [w[0] for w in written] == [0, 36] and sum(w[1] for w in written) == height
    assert np.isfinite(out).all()
    assert (out[0, :36, :48] == 0).all() and (out[0, 64:, 64:] == 3).all()
    assert np.abs(np.diff(out[0], axis=1)).max() <= 1 / (overlap + 1) + 1e-6  # left-right fade
    assert np.abs(np.diff(out[0], axis=0)).max() <= 2 / (overlap + 1) + 1e-6  # top-bottom fade (rows differ by 2)
    assert np.allclose(out[0, 0, 48:64], (np.arange(16) + 1) / 17)


def test_multi_tile_run_on_real_naip(sr_bundle, sr_pipe, tmp_path):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(100, 100, 56, 56))
    out = run_sr(job(sr_bundle, lr, tile=64, overlap=24), tmp_path / "hr", sr_pipe)
    sidecar = sidecar_of(out)
    assert sidecar["tiles"] == 9 and sidecar["overlap"] == 24
    with rasterio.open(out) as hr:
        data = hr.read()
    assert data.shape == (3, 112, 112) and (data.max(axis=0) > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"bands": "1,2,9"}, RasterInputError,
         r"bands='1,2,9': band\(s\) \[9\] out of range; the raster has 4 band\(s\)"),
        ({"bands": "1,2"}, RasterInputError, r"bands='1,2': this model takes 3 band\(s\)"),
        ({"scale": 0.5}, SpecError, r"^scale: expected a number >= 1, got 0\.5"),
        ({"ref_strength": -1.0}, SpecError, r"^ref_strength: expected a number >= 0, got -1\.0"),
        ({"tile": 50}, FieldError, r"^tile: 50: expected a multiple of 16 for this model"),
    ],
)  # fmt: skip
def test_job_bad_inputs(sr_bundle, sr_pipe, tmp_path, kwargs, error, match):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(0, 0, 16, 16))
    with pytest.raises(error, match=match):
        run_sr(job(sr_bundle, lr, **kwargs), tmp_path / "hr", sr_pipe)
    assert not (tmp_path / "hr").exists()  # refused before claiming it, or a failed fresh job frees its folder


def test_job_bad_files(sr_bundle, sr_pipe, tmp_path):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(0, 0, 16, 16))
    far = crop(shared_file(NAIP_2014), tmp_path / "far.tif", Window(0, 0, 16, 16), transform_shift=100_000.0)
    with pytest.raises(RasterInputError, match=r"does not overlap the LR footprint"):
        run_sr(job(sr_bundle, lr, ref=far), tmp_path / "far", sr_pipe)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 definitely not a tiff")
    with pytest.raises(RasterInputError, match=r"lr='.*broken\.tif': not a raster GDAL can read"):
        run_sr(job(sr_bundle, broken), tmp_path / "broken", sr_pipe)
    with pytest.raises(SpecError, match=r"^lr: '.*missing\.tif': no such file"):
        run_sr(job(sr_bundle, tmp_path / "missing.tif"), tmp_path / "missing", sr_pipe)
    no_crs = crop(shared_file(S2_20M), tmp_path / "s2.tif", Window(0, 0, 16, 16))
    with pytest.raises(RasterInputError, match=r"the LR raster has no CRS, so the reference cannot be aligned"):
        run_sr(job(sr_bundle, no_crs, ref=shared_file(NAIP_2014)), tmp_path / "no_crs", sr_pipe)
    for name in ("far", "broken", "missing", "no_crs"):
        assert not (tmp_path / name).exists()  # no sample written: the failed fresh job freed its folder


def test_cli_sr_end_to_end(sr_bundle, tmp_path, capsys, caplog):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(0, 0, 16, 16))
    out = tmp_path / "hr"
    args = ["sr", "--model", str(sr_bundle), "--lr", str(lr), "--scale", "3", "--ref", str(shared_file(NAIP_2014)),
            "--ref-strength", "0.4", "--out", str(out), "--tile", "64", "--steps", "2",
            "--threads", str(torch.get_num_threads())]  # fmt: skip
    assert main(args) == 0
    assert f"sr: 1 sample(s) in {out} (1 written now)" in capsys.readouterr().out
    with rasterio.open(out / f"{STEM}.tif") as hr:
        assert (hr.width, hr.height) == (48, 48) and hr.res == pytest.approx((5 / 3, 5 / 3))
    written = (out / f"{STEM}.tif").read_bytes()
    assert main(args) == 0  # the same command again resumes: nothing new is written
    assert f"sr: 1 sample(s) in {out} (0 written now)" in capsys.readouterr().out
    assert (out / f"{STEM}.tif").read_bytes() == written
    other = [a if a != "0.4" else "0.5" for a in args]
    assert main(other) == 2  # another spec in that folder: refused
    assert "holds another job" in caplog.text
    assert (out / f"{STEM}.tif").read_bytes() == written
    with pytest.raises(JobLockError, match=r"holds another job"):  # the runner's error behind that exit code
        run_job(job(sr_bundle, lr, scale=3, ref=shared_file(NAIP_2014), ref_strength=0.5, steps=2), out)


def test_job_strength_defaults_to_the_model_card_and_is_recorded(sr_bundle, sr_pipe, tmp_path):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(0, 0, 16, 16))
    card = json.loads((sr_bundle / "rsgen_model.json").read_text())
    outs, sidecars = {}, {}
    for name, kwargs in (("card", {}), ("half", {"strength": 0.5}), ("free", {"lr_consistency": False})):
        path = run_sr(job(sr_bundle, lr, steps=4, **kwargs), tmp_path / name, sr_pipe)
        with rasterio.open(path) as src:
            outs[name] = src.read().astype(int)
        sidecars[name] = sidecar_of(path)
    assert card["sr_strength"] == 1.0 and sidecars["card"]["strength"] == 1.0
    assert sidecars["half"]["strength"] == 0.5 and sidecars["free"]["lr_consistency"] is False
    assert np.abs(outs["card"] - outs["half"]).max() > 0 and np.abs(outs["card"] - outs["free"]).max() > 0
    with pytest.raises(SpecError, match=r"^strength: expected a number in \(0, 1\], got 1\.5"):
        run_sr(job(sr_bundle, lr, strength=1.5), tmp_path / "bad", sr_pipe)
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_real_sentinel2_20m_to_10m_grid(sr_bundle, sr_pipe, tmp_path):
    spec = job(sr_bundle, shared_file(S2_20M), bands="1,2,3", tile=128, overlap=16)
    out = run_sr(spec, tmp_path / "hr", sr_pipe)
    with rasterio.open(out) as hr, rasterio.open(shared_file(S2_10M)) as ten:
        assert (hr.width, hr.height) == (ten.width, ten.height) == (600, 600)


def test_reference_outside_its_footprint_is_invalid_even_without_nodata(sr_bundle, tmp_path):
    lr = crop(shared_file(NAIP_2020), tmp_path / "lr.tif", Window(200, 200, 32, 32))
    half = crop(shared_file(NAIP_2014), tmp_path / "half.tif", Window(200, 200, 16, 32), nodata=None)
    with rasterio.open(lr) as lr_ds, rasterio.open(half) as ref_ds:
        assert ref_ds.nodata is None
        grid = OutputGrid.scaled(lr_ds, 2)
        source = RasterSource(ref_ds, [1, 2, 3], grid, radiometry=Radiometry.infer("uint8"), aligned=False)
        _, valid = source.read_on_grid(Window(0, 0, 64, 64))
    assert valid[:, :28].all() and not valid[:, 36:].any()  # the reference covers the left half only


def test_valid_output_pixels_never_equal_nodata():
    assert _next_to(0, np.dtype("uint8")) == 1 and _next_to(255, np.dtype("uint8")) == 254
    assert _next_to(-9999.0, np.dtype("float32")) > -9999.0
