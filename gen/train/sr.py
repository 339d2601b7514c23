"""Task ``sr``: the reference-guided super-resolution model (LR latent concatenated to the UNet input,
reference image through a ControlNet), trained on HR crops degraded on the fly.

For each HR crop: LR = the crop averaged over ``scale``×``scale`` blocks, brought back to the HR grid
with bicubic interpolation (as ``rsgen sr`` resamples the LR onto the output grid). The reference is a
*different-looking view of the same ground*: the HR crop shifted by up to ``scale`` pixels, with a
random gain, per-band tint and gamma, standing in for another date or sensor. It reaches the UNet only
with ``reference_prob``; otherwise the ControlNet residuals are zeroed, which is what the pipeline
does at ``reference_strength`` 0. HR and LR latents are cached once; the VAE is frozen.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import ControlNetModel, UNet2DConditionModel
from PIL import Image
from torch import nn
from transformers import CLIPTextModel

from gen.train.autoencoder import load_autoencoder, to_uint8
from gen.train.config import SRArch, TrainConfig
from gen.train.data import TrainingPool, build_pool
from gen.train.denoiser import (
    TOKEN_LENGTH,
    build_text_encoder,
    build_unet,
    encode_pool,
    eps_loss,
    inference_scheduler,
    noised_latents,
    training_scheduler,
)
from gen.train.loop import image_grid, step_generator, step_rng
from pipelines.bundle import ModelCard
from pipelines.super_resolution.pipeline_rs_sr import RSSuperResolutionPipeline
from pipelines.tiny_tokenizer import build_tiny_clip_tokenizer

logger = logging.getLogger(__name__)


def degrade(images: np.ndarray, scale: int) -> np.ndarray:
    """(N, H, W, 3) uint8 HR → (N, H, W, 3) uint8: block-averaged by ``scale``, bicubic back to H×W."""
    hr = torch.from_numpy(images).permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    lr = F.avg_pool2d(hr, scale)  # (N, 3, H/s, W/s)
    up = F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)  # (N, 3, H, W)
    return up.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def reference_views(hr: torch.Tensor, rng: np.random.Generator, max_shift: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] → another look at the same ground: shifted, gain, tint, gamma."""
    out = []
    for image in hr:
        dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
        view = torch.roll(image, shifts=(dy, dx), dims=(1, 2))  # (3, H, W)
        gain = float(rng.uniform(0.8, 1.2))
        tint = torch.from_numpy(rng.uniform(0.9, 1.1, 3)).float()[:, None, None]
        gamma = float(rng.uniform(0.8, 1.25))
        out.append((view.clamp(0, 1) ** gamma * gain * tint).clamp(0, 1))
    return torch.stack(out)  # (B, 3, H, W)


class SRObjective(nn.Module):
    def __init__(
        self, unet: UNet2DConditionModel, controlnet: ControlNetModel, text_encoder: CLIPTextModel,
        pool: TrainingPool, hr_latents: tuple[torch.Tensor, torch.Tensor], lr_latents: torch.Tensor,
        tokens: torch.Tensor, empty_tokens: torch.Tensor, scaling: float, config: TrainConfig,
    ) -> None:  # fmt: skip
        super().__init__()
        self.unet, self.controlnet, self.text_encoder = unet, controlnet, text_encoder
        self.pool, self.scaling = pool, scaling
        self.register_buffer("hr_mean", hr_latents[0], persistent=False)  # (N, C, h, w)
        self.register_buffer("hr_std", hr_latents[1], persistent=False)
        self.register_buffer("lr_latent", lr_latents, persistent=False)  # (N, C, h, w), distribution mode
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("empty_tokens", empty_tokens, persistent=False)
        self.arch: SRArch = config.model  # type: ignore[assignment]
        self.batch_size, self.seed = config.batch_size, config.seed
        self.noise_schedule = training_scheduler()

    def forward(self, step: int, process: int) -> torch.Tensor:
        arch, batch = self.arch, self.batch_size
        rng = step_rng(self.seed, process, step)
        index = rng.integers(0, len(self.pool), batch)
        device = self.hr_mean.device
        gen = step_generator(self.seed, process, step)
        noisy, noise, t = noised_latents(
            self.hr_mean[index], self.hr_std[index], self.scaling, self.noise_schedule, gen
        )
        model_in = torch.cat([noisy, self.lr_latent[index] * self.scaling], dim=1)  # (B, 2C, h, w)
        drop = torch.from_numpy(rng.random(batch) < 0.5).to(device)  # SR runs mostly without a prompt
        text = self.text_encoder(torch.where(drop[:, None], self.empty_tokens[None], self.tokens[index]))[0]
        hr = torch.from_numpy(self.pool.images[index]).permute(0, 3, 1, 2).float().to(device) / 255  # (B, 3, H, W)
        reference = reference_views(hr, rng, max_shift=arch.scale)
        down, mid = self.controlnet(
            model_in, t, encoder_hidden_states=text, controlnet_cond=reference, return_dict=False
        )
        gate = torch.from_numpy(rng.random(batch) < arch.reference_prob).to(device, noisy.dtype)[:, None, None, None]
        pred = self.unet(
            model_in,
            t,
            encoder_hidden_states=text,
            down_block_additional_residuals=[d * gate for d in down],
            mid_block_additional_residual=mid * gate,
        ).sample  # fmt: skip (B, C, h, w)
        return eps_loss(pred, noise, t, self.noise_schedule, arch.snr_gamma)


class SRTask:
    def __init__(self, config: TrainConfig, accelerator: Accelerator) -> None:
        self.config = config
        arch: SRArch = config.model  # type: ignore[assignment]
        pool = build_pool(config.data, config.resolution, config.pool_size, config.seed)
        self.lr_images = degrade(pool.images, arch.scale)
        self.vae = load_autoencoder(config.autoencoder or config.init_from)
        self.tokenizer = build_tiny_clip_tokenizer(model_max_length=TOKEN_LENGTH)
        latent = self.vae.config.latent_channels
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            unet = build_unet(arch.unet_channels, arch.attention, arch.layers_per_block, arch.attention_heads,
                              arch.text_hidden, config.resolution, 2 * latent, latent, metadata=False)  # fmt: skip
            text_encoder = build_text_encoder(self.tokenizer, arch.text_hidden, arch.text_layers)
            controlnet = ControlNetModel.from_unet(
                unet, conditioning_channels=3, conditioning_embedding_out_channels=(8, 16, 32, 64)
            )
        if config.init_from is not None:
            pipe = RSSuperResolutionPipeline.from_bundle(config.init_from)
            unet, text_encoder, controlnet, self.tokenizer = (
                pipe.unet,
                pipe.text_encoder,
                pipe.controlnet,
                pipe.tokenizer,
            )
        cache = config.output_dir / "cache"
        hr = encode_pool(self.vae, pool, cache / f"hr-{config.pool_digest()}.safetensors")
        lr_pool = TrainingPool(self.lr_images, pool.masks, pool.has_mask, pool.captions, pool.metadata, pool.sources)
        lr_mean, _ = encode_pool(self.vae, lr_pool, cache / f"lr-{config.pool_digest()}-x{arch.scale}.safetensors")
        tokens = self.tokenizer(
            pool.captions, padding="max_length", max_length=TOKEN_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids  # fmt: skip (N, L)
        empty = self.tokenizer([""], padding="max_length", max_length=TOKEN_LENGTH, return_tensors="pt").input_ids[0]
        self.objective = SRObjective(unet, controlnet, text_encoder, pool, hr, lr_mean, tokens, empty,
                                     float(self.vae.config.scaling_factor), config)  # fmt: skip
        self.preview = [int(i) for i in np.linspace(0, len(pool) - 1, 4).astype(int)]

    def pipeline(self, objective: nn.Module) -> RSSuperResolutionPipeline:
        return RSSuperResolutionPipeline(
            vae=self.vae, text_encoder=objective.text_encoder, tokenizer=self.tokenizer, unet=objective.unet,
            controlnet=objective.controlnet, scheduler=inference_scheduler(), metadata_encoder=None,
        )  # fmt: skip

    @torch.no_grad()
    def sample_grid(self, objective: nn.Module, step: int) -> Image.Image:
        objective.eval()
        pipe = self.pipeline(objective)
        pipe.set_progress_bar_config(disable=True)
        rows = []
        for i in self.preview:
            hr = torch.from_numpy(objective.pool.images[i : i + 1]).permute(0, 3, 1, 2).float() / 255
            lr = torch.from_numpy(self.lr_images[i : i + 1]).permute(0, 3, 1, 2).float() / 255
            reference = reference_views(hr, np.random.default_rng(i), self.config.model.scale)
            gen = torch.Generator().manual_seed(i)
            out = pipe(image=lr, reference=reference, reference_strength=1.0, prompt="", num_inference_steps=20,
                       guidance_scale=1.0, generator=gen, output_type="pt").images  # fmt: skip
            rows.append([self.lr_images[i], to_uint8(out * 2 - 1)[0], objective.pool.images[i],
                         to_uint8(reference * 2 - 1)[0]])  # fmt: skip
        objective.train()
        return image_grid(rows)

    def export(self, objective: nn.Module, out_dir: Path, summary: dict[str, Any]) -> None:
        config = self.config
        pipe = self.pipeline(objective)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        ModelCard(
            name=config.name,
            pipeline="RSSuperResolutionPipeline",
            native_size=(config.native_size or config.resolution,) * 2,
            bands=["red", "green", "blue"],
            controls=["reference"],
            sr_strength=config.sr_strength,
            description=config.description or f"Reference-guided SR ×{config.model.scale}, trained by `rsgen train`.",
            license=config.license,
        ).write(out_dir)
        summary["scale"] = config.model.scale


__all__ = ["SRTask", "degrade", "reference_views"]
