"""The GPU inference path, checked on the CPU: fp16 VAEs with ``force_upcast`` encode/decode in fp32 (and no
other), ``batch_size: auto`` (its memory estimate with given free-memory numbers, and 1 off CUDA)."""

import copy

import pytest
import torch
from diffusers import AutoencoderKL

from core.seeding import sample_generators
from gen.cli import main
from gen.spec import SpecError
from gen.tasks import open_task, spec_from_mapping
from gen.tasks.common import (
    AUTO_BATCH_CAP,
    CPU_BATCH_SIZE,
    auto_batch_size,
    image_memory_bytes,
)
from pipelines import RSText2ImagePipeline
from pipelines.controlled import RSControlledPipeline
from pipelines.tiny_bundle import TinySRBundleConfig, build_tiny_bundle
from pipelines.vae_decode import decode_latents, encode_images, vae_compute_dtype, vae_needs_upcast

GiB = 2**30


def _tiny_vae(force_upcast: bool) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, norm_num_groups=32, latent_channels=4,
        force_upcast=force_upcast,
    )  # fmt: skip


def _latents() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # (B, C, h, w)


@torch.no_grad()
def test_fp16_vae_with_force_upcast_decodes_and_encodes_in_fp32():
    vae = _tiny_vae(force_upcast=True).to(torch.float16)
    reference = copy.deepcopy(vae).to(torch.float32)  # the same (fp16-rounded) weights in fp32
    assert vae_needs_upcast(vae) and vae_compute_dtype(vae) == torch.float32
    latents = _latents().to(torch.float16)
    decoded = decode_latents(vae, latents)  # (2, 3, 16, 16)
    expected = reference.decode(latents.float() / reference.config.scaling_factor).sample
    assert decoded.dtype == torch.float32 and torch.equal(decoded, expected)
    assert vae.dtype == torch.float32 and not vae_needs_upcast(vae)  # kept in fp32 for good
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1  # (B, 3, H, W)
    encoded = encode_images(vae, images.half())
    expected = reference.encode(images.half().float()).latent_dist.mode() * reference.config.scaling_factor
    assert encoded.dtype == torch.float32 and torch.equal(encoded, expected)


@torch.no_grad()
def test_vae_without_force_upcast_and_bf16_vaes_stay_in_their_dtype():
    latents = _latents()
    for force_upcast, dtype in ((False, torch.float16), (True, torch.bfloat16), (False, torch.bfloat16)):
        vae = _tiny_vae(force_upcast).to(dtype)
        reference = copy.deepcopy(vae).to(torch.float32)
        assert not vae_needs_upcast(vae) and vae_compute_dtype(vae) == dtype
        decoded = decode_latents(vae, latents)
        assert decoded.dtype == dtype and vae.dtype == dtype, (force_upcast, dtype)
        expected = reference.decode(latents.to(dtype).float() / reference.config.scaling_factor).sample
        assert not torch.equal(decoded.float(), expected)  # the low precision really ran
        assert (decoded.float() - expected).abs().max() < 0.1


@torch.no_grad()
def test_fp16_pipelines_keep_their_vae_in_fp32_and_run_every_encode_path(tiny_bundle, ctrl, tmp_path):
    """Loaded in fp16 (which runs on this CPU too), every pipeline's UNet stays fp16 and its force_upcast VAE
    runs in fp32: text-to-image, inpainting (the known-region latents), a layout prior and super-resolution."""
    pipe = RSText2ImagePipeline.from_bundle(tiny_bundle, torch_dtype=torch.float16)
    pipe.set_progress_bar_config(disable=True)
    latents = pipe("a river", num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="latent")
    images = pipe("a river", num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="pt")
    assert pipe.unet.dtype == torch.float16 and pipe.vae.dtype == torch.float32
    expected = (decode_latents(pipe.vae, latents.images) / 2 + 0.5).clamp(0, 1)
    assert images.images.dtype == torch.float32 and torch.equal(images.images, expected)

    ctrl_pipe = RSControlledPipeline.from_bundle(ctrl[0], torch_dtype=torch.float16)
    ctrl_pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 3, 64, 64)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    region = torch.zeros(1, 1, 64, 64)
    region[..., 8:40, 16:48] = 1
    out = ctrl_pipe("fields", controls={"mask": mask}, image=image, mask_image=region, num_inference_steps=1,
                    generator=sample_generators(0, range(1)), output_type="pt")  # fmt: skip
    assert ctrl_pipe.unet.dtype == torch.float16 and ctrl_pipe.vae.dtype == torch.float32
    assert torch.isfinite(out.images).all() and torch.equal(out.images[region.expand(1, 3, -1, -1) == 0],
                                                            image[region.expand(1, 3, -1, -1) == 0])  # fmt: skip

    from pipelines.super_resolution import RSSuperResolutionPipeline

    sr_path = build_tiny_bundle(tmp_path / "sr", TinySRBundleConfig(tile_size=32))
    sr = RSSuperResolutionPipeline.from_bundle(sr_path, torch_dtype=torch.float16)
    sr.set_progress_bar_config(disable=True)
    up = sr(torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4)), num_inference_steps=2,
            strength=0.5, generator=torch.Generator().manual_seed(0), output_type="pt")  # fmt: skip
    assert sr.unet.dtype == torch.float16 and sr.vae.dtype == torch.float32 and torch.isfinite(up.images).all()


def test_image_memory_estimate_of_sd15_at_512():
    """SD-1.5 at 512² in fp16 with its VAE upcast to fp32: 4 × 256 ch × 512² × 4 B (VAE decoder) +
    24 × 320 ch × 64² × 2 B × 2 (UNet with guidance)."""
    per_image = image_memory_bytes(512, 512, vae_channels=256, vae_bytes=4, unet_channels=320, unet_bytes=2)
    assert per_image == 4 * 256 * 512 * 512 * 4 + 24 * 320 * 64 * 64 * 2 * 2 == 1_199_570_944
    assert image_memory_bytes(512, 512, vae_channels=256, vae_bytes=2, unet_channels=320, unet_bytes=2) == (
        4 * 256 * 512 * 512 * 2 + 24 * 320 * 64 * 64 * 2 * 2
    )  # fmt: skip


@pytest.mark.parametrize(
    ("free_gib", "batch"),
    [(135, AUTO_BATCH_CAP), (24, AUTO_BATCH_CAP), (16, 10), (8, 4), (3, 1), (1, 1), (0, 1)],
)
def test_auto_batch_size_fits_the_free_memory_less_the_reserve(free_gib, batch):
    """(free × 0.8 − 1 GiB) // per-image, between 1 and the cap: 135 GiB (an H200) → 16 (capped), 16 GiB → 10."""
    per_image = image_memory_bytes(512, 512, vae_channels=256, vae_bytes=4, unet_channels=320, unet_bytes=2)
    assert auto_batch_size(free_gib * GiB, per_image) == batch
    assert auto_batch_size(135 * GiB, per_image, cap=100) == 95


def test_batch_size_auto_is_the_default_and_one_on_the_cpu(tiny_bundle, tmp_path, caplog):
    spec = spec_from_mapping({"task": "txt2img", "model": str(tiny_bundle), "num_samples": 3})
    assert spec.batch_size == "auto"
    task = open_task(spec)
    assert task.chunk_size == CPU_BATCH_SIZE  # before the model is loaded too (a resume that loads none)
    task.load_model()
    assert task.chunk_size == CPU_BATCH_SIZE == 1 and task.call_size() == (64, 64)
    explicit = open_task(spec_from_mapping({"task": "txt2img", "model": str(tiny_bundle), "batch_size": 3}))
    explicit.load_model(task.pipe)
    assert explicit.chunk_size == 3
    base = ["txt2img", "--model", str(tiny_bundle), "--prompt", "x", "--steps", "1", "-n", "2", "--threads", "1"]
    assert main([*base, "--batch-size", "auto", "--out", str(tmp_path / "auto")]) == 0
    assert main([*base, "--batch-size", "1", "--out", str(tmp_path / "one")]) == 0
    for i in range(2):
        auto, one = ((tmp_path / d / f"{i:08d}.png").read_bytes() for d in ("auto", "one"))
        assert auto == one
    for bad in (0, 2.5, "big"):
        with pytest.raises(SpecError, match=rf"^batch_size: expected auto or an integer >= 1, got {bad!r}$"):
            spec_from_mapping({"task": "txt2img", "batch_size": bad})
    assert main([*base, "--batch-size", "many", "--out", str(tmp_path / "bad")]) == 2
    assert "--batch-size: expected auto or an integer >= 1, got 'many'" in caplog.text


def test_processes_take_the_gpus_in_turn():
    from core.device import local_cuda_index

    assert [local_cuda_index(rank, 2) for rank in range(5)] == [0, 1, 0, 1, 0]
    assert [local_cuda_index(rank, 1) for rank in range(3)] == [0, 0, 0]  # more processes than GPUs: they share it
    assert local_cuda_index(3, 0) == 0
