"""Task ``denoiser``: the latent UNet with text + metadata conditioning, and jointly a mask ControlNet.

Per step and per sample: the caption is dropped with ``caption_dropout`` (→ ""), the metadata record
with ``metadata_dropout`` (→ all unknown, the guidance null), and the ControlNet's residuals are kept
with ``control_prob`` when the crop has a mask — otherwise zeroed, so the same steps also train the
UNet alone (text-to-image without a control). The VAE is frozen; the pool's latents are encoded
once and cached (mean and std of the posterior, sampled every step).

The export is an ``RSControlledPipeline`` bundle (or ``RSText2ImagePipeline`` without controls):
diffusers layout, safetensors, ``rsgen_model.json``, ``training.json`` and a README model card.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    ControlNetModel,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    MultiControlNetModel,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from conditions.masks import IGNORE
from conditions.metadata_encoder import MetadataEncoder
from conditions.palettes import CANONICAL
from core.hashing import sha256_file
from core.progress import progress
from gen.train.autoencoder import load_autoencoder, to_tensor, to_uint8
from gen.train.config import DenoiserArch, TrainConfig
from gen.train.data import TrainingPool, build_pool
from gen.train.loop import image_grid, min_snr_weights, step_generator, step_rng
from pipelines.bundle import ModelCard
from pipelines.controlled.pipeline_rs_controlled import RSControlledPipeline
from pipelines.text2img.pipeline_rs_text2img import RSText2ImagePipeline
from pipelines.tiny_tokenizer import build_tiny_clip_tokenizer

logger = logging.getLogger(__name__)

TOKEN_LENGTH = 32  # captions are short; a shorter context is cheaper than CLIP's 77


def training_scheduler() -> DDPMScheduler:
    """The noise schedule of training (Stable Diffusion's scaled-linear betas)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def inference_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++", solver_order=2, steps_offset=1,
    )  # fmt: skip


def build_unet(
    channels: tuple[int, ...], attention: tuple[bool, ...], layers: int, heads: int, text_hidden: int,
    size: int, in_channels: int, out_channels: int, metadata: bool,
) -> UNet2DConditionModel:  # fmt: skip
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention))
    return UNet2DConditionModel(
        sample_size=size // 8, in_channels=in_channels, out_channels=out_channels, block_out_channels=channels,
        layers_per_block=layers, down_block_types=down, up_block_types=up, cross_attention_dim=text_hidden,
        attention_head_dim=heads, norm_num_groups=32, class_embed_type="identity" if metadata else None,
    )  # fmt: skip


def build_text_encoder(tokenizer: Any, hidden: int, layers: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip


def control_images(masks: np.ndarray) -> torch.Tensor:
    """(B, H, W) canonical ids → (B, 3, H, W) palette colours in [0, 1], as the pipelines' 'mask' control."""
    rgb = CANONICAL.colorize(masks.reshape(-1, masks.shape[-1])).reshape(*masks.shape, 3)  # (B, H, W, 3)
    return torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255.0


def noised_latents(
    mean: torch.Tensor, std: torch.Tensor, scaling: float, schedule: DDPMScheduler, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample latents from cached posteriors (B, C, h, w) and noise them: (noisy, noise, timesteps)."""
    device = mean.device
    eps = torch.randn(mean.shape, generator=gen).to(device)
    latents = (mean + std * eps) * scaling  # (B, C, h, w)
    noise = torch.randn(latents.shape, generator=gen).to(device)
    t = torch.randint(0, schedule.config.num_train_timesteps, (len(latents),), generator=gen)
    return schedule.add_noise(latents, noise, t), noise, t.to(device)


def eps_loss(
    pred: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: DDPMScheduler, gamma: float
) -> torch.Tensor:
    """Min-SNR-weighted ε-prediction MSE (a scalar)."""
    per_sample = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))  # (B,)
    return (per_sample * min_snr_weights(schedule.alphas_cumprod, t.cpu(), gamma).to(pred.device)).mean()


@torch.no_grad()
def encode_pool(
    vae: AutoencoderKL | AutoencoderTiny, pool: TrainingPool, cache: Path | None, batch: int = 16
) -> tuple[torch.Tensor, ...]:
    """Posterior mean and std of every pool crop, (N, C, h, w) each (an ``AutoencoderTiny`` is
    deterministic: std 0); cached in ``cache`` if given."""
    if cache is not None and cache.is_file():
        data = load_file(str(cache))
        if data["mean"].shape[0] == len(pool):
            return data["mean"], data["std"]
    means, stds = [], []
    for start in progress(range(0, len(pool), batch), desc="encoding latents", unit="batch"):
        encoded = vae.encode(to_tensor(pool.images[start : start + batch]))
        if hasattr(encoded, "latent_dist"):  # AutoencoderKL: a diagonal Gaussian per latent
            means.append(encoded.latent_dist.mean)
            stds.append(encoded.latent_dist.std)
        else:  # AutoencoderTiny
            means.append(encoded.latents)
            stds.append(torch.zeros_like(encoded.latents))
    mean, std = torch.cat(means), torch.cat(stds)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp))
        tmp.replace(cache)
    return mean, std


def pool_latents(
    config: TrainConfig, vae: AutoencoderKL | AutoencoderTiny, pool: TrainingPool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`encode_pool` of the config's pool, cached in ``output_dir/cache`` under the pool's and the VAE's
    digests (posterior mean and std, (N, C, h, w) each)."""
    vae_file = next((p for p in sorted(Path(vae.config._name_or_path or ".").glob("*.safetensors"))), None)
    tag = sha256_file(vae_file)[:12] if vae_file else "vae"
    cache = config.output_dir / "cache" / f"latents-{config.pool_digest()}-{tag}.safetensors"
    return encode_pool(vae, pool, cache)


def caption_tokens(tokenizer: Any, captions: list[str], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of every caption (N, L) and of the empty caption (L,), padded to ``length``."""
    tokens = tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    empty = tokenizer([""], padding="max_length", max_length=length, return_tensors="pt").input_ids[0]  # (L,)
    return tokens.input_ids, empty


def preview_indices(pool: TrainingPool, count: int = 4) -> list[int]:
    """Up to ``count`` pool crops, evenly spread, whose masks label more than 90 % of the pixels (sample grids)."""
    with_mask = np.flatnonzero(pool.has_mask & ((pool.masks != IGNORE).mean(axis=(1, 2)) > 0.9))
    if not len(with_mask):
        return []
    return [int(i) for i in with_mask[np.linspace(0, len(with_mask) - 1, min(count, len(with_mask))).astype(int)]]


class DenoiserObjective(nn.Module):
    def __init__(
        self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, metadata_encoder: MetadataEncoder | None,
        controlnet: ControlNetModel | None, pool: TrainingPool, latents: tuple[torch.Tensor, torch.Tensor],
        tokens: torch.Tensor, empty_tokens: torch.Tensor, scaling: float, config: TrainConfig,
    ) -> None:  # fmt: skip
        super().__init__()
        self.unet, self.text_encoder, self.metadata_encoder, self.controlnet = (
            unet,
            text_encoder,
            metadata_encoder,
            controlnet,
        )
        self.pool, self.scaling = pool, scaling
        self.register_buffer("latent_mean", latents[0], persistent=False)  # (N, C, h, w)
        self.register_buffer("latent_std", latents[1], persistent=False)
        self.register_buffer("tokens", tokens, persistent=False)  # (N, L)
        self.register_buffer("empty_tokens", empty_tokens, persistent=False)  # (L,)
        self.prepared = metadata_encoder.prepare(pool.metadata) if metadata_encoder is not None else None
        self.arch: DenoiserArch = config.model  # type: ignore[assignment]
        self.batch_size, self.seed = config.batch_size, config.seed
        self.noise_schedule = training_scheduler()

    def forward(self, step: int, process: int) -> torch.Tensor:
        arch, batch = self.arch, self.batch_size
        rng = step_rng(self.seed, process, step)
        index = rng.integers(0, len(self.pool), batch)
        device = self.latent_mean.device
        gen = step_generator(self.seed, process, step)
        noisy, noise, t = noised_latents(
            self.latent_mean[index], self.latent_std[index], self.scaling, self.noise_schedule, gen
        )  # (B, C, h, w)

        drop_caption = torch.from_numpy(rng.random(batch) < arch.caption_dropout).to(device)
        ids = torch.where(drop_caption[:, None], self.empty_tokens[None], self.tokens[index])  # (B, L)
        text = self.text_encoder(ids)[0]  # (B, L, D)

        metadata = None
        if self.metadata_encoder is not None:
            p = self.prepared
            keep = torch.from_numpy(rng.random(batch) >= arch.metadata_dropout)  # (B,)
            field_keep = torch.from_numpy(rng.random((batch, p.values.shape[1])) >= arch.metadata_dropout / 2)
            known = p.known[index] & keep[:, None] & field_keep  # (B, F)
            sensors = torch.where(keep, p.sensor_ids[index], len(self.metadata_encoder.sensor_names))
            metadata = self.metadata_encoder(p.values[index], known, sensors)  # (B, E)

        down = mid = None
        if self.controlnet is not None:
            use = (rng.random(batch) < arch.control_prob) & self.pool.has_mask[index]
            cond = control_images(self.pool.masks[index]).to(device)  # (B, 3, H, W)
            down, mid = self.controlnet(
                noisy, t, encoder_hidden_states=text, controlnet_cond=cond, class_labels=metadata, return_dict=False
            )
            gate = torch.from_numpy(use).to(device, noisy.dtype)[:, None, None, None]  # (B, 1, 1, 1)
            down = [d * gate for d in down]
            mid = mid * gate
        pred = self.unet(
            noisy,
            t,
            encoder_hidden_states=text,
            class_labels=metadata,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample  # fmt: skip (B, C, h, w)
        return eps_loss(pred, noise, t, self.noise_schedule, arch.snr_gamma)


def class_mean_colors(pool: TrainingPool, min_pixels: int = 1000, chunk: int = 256) -> dict[str, list[float]]:
    """Mean RGB (0-255) of every canonical class with at least ``min_pixels`` labelled pixels in the
    pool's masked crops: the model card's ``class_colors`` (the colours of the layout prior)."""
    counts = np.zeros(256, np.int64)
    sums = np.zeros((256, 3), np.float64)
    for start in range(0, len(pool), chunk):
        labelled = pool.has_mask[start : start + chunk]
        ids = pool.masks[start : start + chunk][labelled].reshape(-1)  # (n·S·S,)
        rgb = pool.images[start : start + chunk][labelled].reshape(-1, 3)  # (n·S·S, 3)
        counts += np.bincount(ids, minlength=256)
        for band in range(3):
            sums[:, band] += np.bincount(ids, weights=rgb[:, band], minlength=256)
    return {
        c.name: [round(float(v), 1) for v in sums[c.id] / counts[c.id]]
        for c in CANONICAL.classes
        if counts[c.id] >= min_pixels
    }


def _gsd_range(pool: TrainingPool) -> tuple[float, float] | None:
    gsds = [m.gsd for m in pool.metadata if m.gsd is not None]
    return (min(gsds), max(gsds)) if gsds else None


class DenoiserTask:
    def __init__(self, config: TrainConfig, accelerator: Accelerator) -> None:
        self.config = config
        arch: DenoiserArch = config.model  # type: ignore[assignment]
        pool = build_pool(config.data, config.resolution, config.pool_size, config.seed)
        self.vae = load_autoencoder(config.autoencoder or config.init_from)
        self.tokenizer = build_tiny_clip_tokenizer(model_max_length=TOKEN_LENGTH)
        latent = self.vae.config.latent_channels
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            unet = build_unet(arch.unet_channels, arch.attention, arch.layers_per_block, arch.attention_heads,
                              arch.text_hidden, config.resolution, latent, latent, arch.metadata)  # fmt: skip
            text_encoder = build_text_encoder(self.tokenizer, arch.text_hidden, arch.text_layers)
            time_dim = arch.unet_channels[0] * 4
            metadata_encoder = (
                MetadataEncoder(embedding_dim=time_dim, frequency_dim=64, hidden_dim=128) if arch.metadata else None
            )
            controlnet = (
                ControlNetModel.from_unet(
                    unet, conditioning_channels=3, conditioning_embedding_out_channels=arch.control_embedding
                )
                if arch.controls else None
            )  # fmt: skip
        if config.init_from is not None:
            unet, text_encoder, metadata_encoder, controlnet = self._from_bundle(config.init_from, controlnet)
        latents = pool_latents(config, self.vae, pool)
        tokens, empty = caption_tokens(self.tokenizer, pool.captions, TOKEN_LENGTH)
        self.objective = DenoiserObjective(
            unet, text_encoder, metadata_encoder, controlnet, pool, latents, tokens, empty,
            float(self.vae.config.scaling_factor), config,
        )  # fmt: skip
        self.preview = preview_indices(pool)

    def _from_bundle(self, path: Path, fresh_controlnet: ControlNetModel | None) -> tuple[Any, ...]:
        card = ModelCard.read(path)
        if card.pipeline == "RSControlledPipeline":
            pipe = RSControlledPipeline.from_bundle(path)
            controlnet = pipe.controlnet.nets[0] if len(pipe.controlnet.nets) else fresh_controlnet
        else:
            from pipelines.bundle import load_bundle

            pipe = load_bundle(RSText2ImagePipeline, path)
            controlnet = ControlNetModel.from_unet(pipe.unet, conditioning_channels=3) if fresh_controlnet else None
        self.tokenizer = pipe.tokenizer
        return pipe.unet, pipe.text_encoder, pipe.metadata_encoder, controlnet

    def pipeline(self, objective: nn.Module) -> RSControlledPipeline | RSText2ImagePipeline:
        common = dict(vae=self.vae, text_encoder=objective.text_encoder, tokenizer=self.tokenizer, unet=objective.unet,
                      scheduler=inference_scheduler(), metadata_encoder=objective.metadata_encoder)  # fmt: skip
        if objective.controlnet is None:
            return RSText2ImagePipeline(**common)
        pipe = RSControlledPipeline(**common, controlnet=MultiControlNetModel([objective.controlnet]))
        pipe.control_names = ["mask"]
        pipe.guide_controls = self.config.guide_controls
        return pipe

    @torch.no_grad()
    def sample_grid(self, objective: nn.Module, step: int) -> Image.Image:
        objective.eval()
        pool = objective.pool
        pipe = self.pipeline(objective)
        pipe.set_progress_bar_config(disable=True)
        rows = []
        for i in self.preview or [0]:
            prompt, meta = pool.captions[i], pool.metadata[i]
            gen = torch.Generator().manual_seed(i)
            kwargs: dict[str, Any] = dict(prompt=prompt, metadata=meta, num_inference_steps=20, guidance_scale=3.0,
                                          generator=gen, output_type="pt")  # fmt: skip
            if isinstance(pipe, RSControlledPipeline):
                kwargs["controls"] = {"mask": control_images(pool.masks[i : i + 1])}
            image = pipe(**kwargs).images  # (1, 3, H, W) in [0, 1]
            mask_rgb = CANONICAL.colorize(pool.masks[i])
            rows.append([mask_rgb, to_uint8(image * 2 - 1)[0], pool.images[i]])
        objective.train()
        return image_grid(rows)

    def export(self, objective: nn.Module, out_dir: Path, summary: dict[str, Any]) -> None:
        config, arch = self.config, self.config.model
        pipe = self.pipeline(objective)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        colors = class_mean_colors(objective.pool) if "mask" in arch.controls else {}
        card = ModelCard(
            name=config.name,
            pipeline=type(pipe).__name__,
            native_size=(config.native_size or config.resolution,) * 2,
            gsd_range=_gsd_range(objective.pool),
            metadata=objective.metadata_encoder.schema() if objective.metadata_encoder is not None else None,
            palette={"name": "canonical", "encoding": "color"} if arch.controls else None,
            controls=list(arch.controls),
            guide_controls=config.guide_controls and bool(arch.controls),
            class_colors=colors or None,
            layout_strength=config.layout_strength if colors else 1.0,
            description=config.description or f"Trained by `rsgen train` ({summary['steps']} steps).",
            license=config.license,
        )
        card.write(out_dir)
        summary["data"] = sorted({s.split("/")[0] for s in objective.pool.sources})
        summary["pool_crops_with_mask"] = int(objective.pool.has_mask.sum())


__all__ = [
    "DenoiserTask",
    "build_text_encoder",
    "build_unet",
    "caption_tokens",
    "class_mean_colors",
    "control_images",
    "inference_scheduler",
    "pool_latents",
    "preview_indices",
]
