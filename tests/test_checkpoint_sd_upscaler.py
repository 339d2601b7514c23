"""`rsgen model import sd-upscaler`: Stable Diffusion's ×4 upscaler, on a config-exact tiny replica."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionUpscalePipeline
from rasterio.transform import Affine
from rasterio.windows import Window
from safetensors.torch import load_file, save_file

from gen.cli import main
from pipelines.bundle import ModelCard
from pipelines.checkpoints import CheckpointError, import_checkpoint
from pipelines.super_resolution import RSSuperResolutionPipeline
from tests.conftest import crop, shared_file
from tests.replica_sd_upscaler import write_replica

NAIP = "geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif"
STEM = "00000000"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared machine: one torch thread is far faster than contended ones (and deterministic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> Path:
    return write_replica(tmp_path_factory.mktemp("x4") / "stable-diffusion-x4-upscaler")


@pytest.fixture(scope="module")
def bundle(replica, tmp_path_factory) -> Path:
    return import_checkpoint("sd-upscaler", replica, tmp_path_factory.mktemp("x4b") / "bundle")


@pytest.fixture(scope="module")
def pipe(bundle) -> RSSuperResolutionPipeline:
    pipe = RSSuperResolutionPipeline.from_bundle(bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_import_writes_a_loadable_upscaler_bundle(replica, bundle, pipe):
    index = json.loads((bundle / "model_index.json").read_text())
    assert index["_class_name"] == "RSSuperResolutionPipeline" and index["max_noise_level"] == 350
    assert index["low_res_scheduler"] == ["diffusers", "DDPMScheduler"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["controlnet"] == [None, None] and index["metadata_encoder"] == [None, None]
    card = ModelCard.read(bundle)
    assert (card.kind, card.source, card.license) == (
        "sd-upscaler", "stabilityai/stable-diffusion-x4-upscaler", "CreativeML Open RAIL++-M")  # fmt: skip
    assert card.native_size == (32, 32) and card.bands == ["red", "green", "blue"] and card.gsd_range is None
    assert not list(bundle.rglob("*.bin"))  # safetensors only
    vae_keys = load_file(bundle / "vae" / "diffusion_pytorch_model.safetensors").keys()
    assert "decoder.mid_block.attentions.0.to_q.weight" in vae_keys  # renamed from the 2022 `query`
    assert pipe.is_upscaler and pipe.fixed_scale == 4 and pipe.controlnet is None
    assert pipe.vae.config.scaling_factor == 0.08333 and pipe.unet.config.in_channels == 7
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    # every tensor came through unchanged
    source = load_file(replica / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(source[k], v) for k, v in pipe.unet.state_dict().items())


def test_cli_import(replica, tmp_path):
    assert main(["model", "import", "sd-upscaler", str(replica), str(tmp_path / "b")]) == 0
    assert ModelCard.read(tmp_path / "b").kind == "sd-upscaler"


def _low_res(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed))  # (1, 3, h, w) in [0, 1]


def _up(low: torch.Tensor) -> torch.Tensor:
    return F.interpolate(low, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)  # (1, 3, 4h, 4w)


def test_matches_diffusers_upscale_pipeline(pipe):
    """Same components, generator and inputs: the output of diffusers' StableDiffusionUpscalePipeline."""
    reference = StableDiffusionUpscalePipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        low_res_scheduler=pipe.low_res_scheduler, scheduler=pipe.scheduler, max_noise_level=350,
    )  # fmt: skip
    reference.set_progress_bar_config(disable=True)
    low = _low_res()
    for level, guidance in ((20, 1.0), (150, 4.0)):
        expected = reference(
            prompt=["farmland"], image=low * 2 - 1, noise_level=level, guidance_scale=guidance,
            num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt",
        ).images  # fmt: skip
        ours = pipe(
            _up(low), low_res=low, noise_level=level, prompt="farmland", guidance_scale=guidance,
            num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="pt",
        ).images  # fmt: skip
        assert ours.shape == expected.shape == (1, 3, 32, 32)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_noise_level_and_lr_image_reach_the_unet(pipe):
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module, args, kwargs):
        seen.append((args[0].clone(), kwargs["class_labels"].clone()))

    low, level, seed = _low_res(1), 100, 5
    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run = lambda level, low: pipe(  # noqa: E731
            _up(low), low_res=low, noise_level=level, num_inference_steps=2,
            generator=torch.Generator().manual_seed(seed), output_type="pt",
        ).images  # fmt: skip
        base = run(level, low)
        sample, labels = seen[0]
        assert labels.dtype == torch.long and labels.tolist() == [level]  # the noise level is the class label
        # channels 4..6: the LR in [-1, 1] noised by low_res_scheduler to that level (the first draw of the generator)
        noise = torch.randn(low.shape, generator=torch.Generator().manual_seed(seed))
        expected = pipe.low_res_scheduler.add_noise(low * 2 - 1, noise, torch.tensor([level]))
        assert sample.shape == (1, 7, 8, 8)
        torch.testing.assert_close(sample[:, 4:], expected)
        assert all(torch.equal(s[:, 4:], sample[:, 4:]) for s, _ in seen)  # the same at every step
        # a different noise level, or LR, changes the output
        assert (run(300, low) - base).abs().max() > 1e-3
        assert (run(level, _low_res(2)) - base).abs().max() > 1e-3
        # default: noise level 20, LR = the image area-averaged by 4
        seen.clear()
        pipe(_up(low), num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt")
        assert seen[0][1].tolist() == [20]
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"noise_level": 351}, r"noise_level=351: expected an integer in 0\.\.350"),
        ({"noise_level": -1}, r"noise_level=-1"),
        (
            {"low_res": torch.rand(1, 3, 16, 16)},
            r"low_res: expected the LR at 1/4 of the image's size, shape \(1, 3, 8, 8\)",
        ),
        ({"reference": torch.rand(1, 3, 32, 32)}, r"reference: this model has no reference ControlNet"),
        ({"image": torch.rand(1, 3, 40, 40)}, r"size 40x40 must be a multiple of 32"),
    ],
)
def test_check_inputs(pipe, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(**{"image": torch.rand(1, 3, 32, 32), "num_inference_steps": 1, **kwargs})


def test_rsgen_sr_writes_a_georeferenced_x4_geotiff(bundle, tmp_path):
    lr = crop(shared_file(NAIP), tmp_path / "lr.tif", Window(300, 200, 16, 16))
    args = ["sr", "--model", str(bundle), "--lr", str(lr), "--bands", "1,2,3", "--scale", "4", "--steps", "1",
            "--tile", "32", "--overlap", "8", "--prompt", "farmland", "--threads", "1"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "hr")]) == 0
    with rasterio.open(lr) as src, rasterio.open(tmp_path / "hr" / f"{STEM}.tif") as out:
        assert (out.width, out.height, out.count, out.dtypes[0]) == (64, 64, 3, "uint8")
        assert out.crs == src.crs and out.transform.almost_equals(src.transform * Affine.scale(0.25))
        assert out.bounds == src.bounds
        base = out.read()
    record = json.loads((tmp_path / "hr" / f"{STEM}.json").read_text())
    assert record["noise_level"] == 20 and record["scale"] == 4 and record["tiles"] == 9
    assert main([*args, "--noise-level", "250", "--out", str(tmp_path / "hr250")]) == 0
    with rasterio.open(tmp_path / "hr250" / f"{STEM}.tif") as out:
        assert not np.array_equal(out.read(), base)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scale", "2"], "--scale: 2: stable-diffusion-x4-upscaler is an upscaler that enlarges by exactly 4"),
        (["--scale", "4", "--overlap", "6"], "--overlap: 6: an ×4 upscaler needs a multiple of 4"),
        (["--scale", "4", "--noise-level", "400"], "--noise-level: 400: expected 0..350"),
    ],
)
def test_rsgen_sr_refuses_other_scales(bundle, tmp_path, caplog, extra, message):
    lr = crop(shared_file(NAIP), tmp_path / "lr.tif", Window(300, 200, 8, 8))
    args = ["sr", "--model", str(bundle), "--lr", str(lr), "--bands", "1,2,3", "--steps", "1", "--tile", "32",
            "--overlap", "8"]  # fmt: skip
    with caplog.at_level(logging.ERROR):
        assert main([*args, *extra, "--out", str(tmp_path / "o")]) == 2
    assert message in caplog.text


@pytest.mark.parametrize(
    ("component", "file", "edit", "key"),
    [
        ("unet", "diffusion_pytorch_model.safetensors", "add", "conv_extra.weight"),
        ("text_encoder", "model.safetensors", "rename", "text_model.final_layer_norm.gamma"),
    ],
)
def test_unmatched_key_fails_the_import(tmp_path, component, file, edit, key):
    src = write_replica(tmp_path / "src", weights="safetensors")
    path = src / component / file
    state = load_file(path)
    if edit == "add":
        state[key] = torch.zeros(2)
    else:
        state[key] = state.pop("text_model.final_layer_norm.weight")
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        import_checkpoint("sd-upscaler", src, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_pickled_weights_need_allow_pickle(tmp_path, pipe):
    src = write_replica(tmp_path / "src", weights="pickle")
    with pytest.raises(CheckpointError, match=r"only pickled weights.*--allow-pickle"):
        import_checkpoint("sd-upscaler", src, tmp_path / "dest")
    dest = import_checkpoint("sd-upscaler", src, tmp_path / "dest", allow_pickle=True)
    assert not list(dest.rglob("*.bin"))
    imported = RSSuperResolutionPipeline.from_bundle(dest)
    for name in ("unet", "vae", "text_encoder"):  # the same seed: the same tensors as the safetensors replica
        ours, theirs = getattr(imported, name).state_dict(), getattr(pipe, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_vae_without_scaling_factor_gets_the_upscalers(tmp_path):
    src = write_replica(tmp_path / "src", weights="safetensors", vae_scaling_factor=None)
    dest = import_checkpoint("sd-upscaler", src, tmp_path / "dest")
    assert json.loads((dest / "vae" / "config.json").read_text())["scaling_factor"] == 0.08333


def test_other_checkpoints_are_refused(tmp_path):
    src = write_replica(tmp_path / "src", weights="safetensors")
    index = json.loads((src / "model_index.json").read_text())
    (src / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(CheckpointError, match=r"_class_name='StableDiffusionPipeline', expected 'StableDiffusionUps"):
        import_checkpoint("sd-upscaler", src, tmp_path / "dest")
    with pytest.raises(CheckpointError, match=r"is a file; pass the diffusers snapshot folder"):
        import_checkpoint("sd-upscaler", src / "model_index.json", tmp_path / "dest")
