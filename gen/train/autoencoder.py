"""Task ``autoencoder``: train a diffusers ``AutoencoderKL`` (8× down-sampling) on RGB crops.

Loss = L1 + MSE on pixels + ``edge_weight`` · L1 on image gradients + ``kl_weight`` · KL. The
export is a diffusers VAE folder whose ``scaling_factor`` is 1 / (std of the latents on the pool),
so the denoiser sees unit-variance latents, as Stable Diffusion does.

With ``model.train_encoder: false`` only the decoder (and ``post_quant_conv``) is trained from
``init_from``: the encoder is frozen, so latents, ``scaling_factor`` and every model trained on them
stay valid (Stable Diffusion's ft-MSE decoders were made this way).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, AutoencoderTiny
from PIL import Image
from torch import nn

from gen.train.config import AutoencoderArch, TrainConfig
from gen.train.data import TrainingPool, build_pool
from gen.train.loop import image_grid, step_generator, step_rng

logger = logging.getLogger(__name__)


def build_autoencoder(arch: AutoencoderArch, size: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(arch.channels),
        up_block_types=("UpDecoderBlock2D",) * len(arch.channels),
        block_out_channels=arch.channels,
        latent_channels=arch.latent_channels,
        layers_per_block=arch.layers_per_block,
        norm_num_groups=min(32, min(arch.channels)),
        sample_size=size,
    )


def load_autoencoder(path: Path, *, allow_tiny: bool = True) -> AutoencoderKL | AutoencoderTiny:
    """A trained VAE, frozen: an ``export/vae`` folder of this task, a bundle (its ``vae/`` component) or
    any diffusers ``AutoencoderKL`` / ``AutoencoderTiny`` folder (e.g. a TAESD conversion)."""
    folder = Path(path)
    if (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"autoencoder={str(path)!r}: no diffusers VAE here (config.json missing); pass the export/vae folder of "
            "a task 'autoencoder' run or a bundle folder"
        )
    kind = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("_class_name")
    classes = {"AutoencoderKL": AutoencoderKL, **({"AutoencoderTiny": AutoencoderTiny} if allow_tiny else {})}
    if kind not in classes:
        raise ValueError(
            f"autoencoder={str(path)!r}: a {kind!r}; expected one of {sorted(classes)} "
            + ("" if allow_tiny else "(task 'autoencoder' trains an AutoencoderKL)")
        )
    vae = classes[kind].from_pretrained(folder, use_safetensors=True)
    if getattr(vae.config, "shift_factor", None):
        raise ValueError(f"autoencoder={str(path)!r}: shift_factor={vae.config.shift_factor} is not supported (use 0)")
    vae.requires_grad_(False).eval()
    return vae


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


class AutoencoderObjective(nn.Module):
    def __init__(self, vae: AutoencoderKL, pool: TrainingPool, config: TrainConfig) -> None:
        super().__init__()
        self.vae = vae
        self.pool = pool
        self.arch: AutoencoderArch = config.model  # type: ignore[assignment]
        self.batch_size = config.batch_size
        self.seed = config.seed

    def forward(self, step: int, process: int) -> torch.Tensor:
        rng = step_rng(self.seed, process, step)
        index = rng.integers(0, len(self.pool), self.batch_size)
        device = next(self.vae.parameters()).device
        x = to_tensor(self.pool.images[index]).to(device)  # (B, 3, H, W)
        if self.arch.train_encoder:
            posterior = self.vae.encode(x).latent_dist
        else:
            with torch.no_grad():
                posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator=step_generator(self.seed, process, step, device))  # (B, C, H/8, W/8)
        recon = self.vae.decode(z).sample  # (B, 3, H, W)
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        if self.arch.edge_weight:
            (ry, rx), (xy, xx) = _gradients(recon), _gradients(x)
            loss = loss + self.arch.edge_weight * (F.l1_loss(ry, xy) + F.l1_loss(rx, xx))
        if not self.arch.train_encoder:
            return loss
        return loss + self.arch.kl_weight * posterior.kl().mean()


class AutoencoderTask:
    def __init__(self, config: TrainConfig, accelerator: Accelerator) -> None:
        self.config = config
        pool = build_pool(config.data, config.resolution, config.pool_size, config.seed)
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            vae = build_autoencoder(config.model, config.resolution)  # type: ignore[arg-type]
        if config.init_from is not None:
            vae = load_autoencoder(config.init_from, allow_tiny=False).requires_grad_(True).train()
        self.frozen_scaling_factor: float | None = None
        if not config.model.train_encoder:  # type: ignore[union-attr]
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
            self.frozen_scaling_factor = float(vae.config.scaling_factor)
        self.objective = AutoencoderObjective(vae, pool, config)
        self.preview = pool.images[np.linspace(0, len(pool) - 1, 6).astype(int)]

    @torch.no_grad()
    def sample_grid(self, objective: nn.Module, step: int) -> Image.Image:
        vae = objective.vae
        vae.eval()
        device = next(vae.parameters()).device
        recon = vae.decode(vae.encode(to_tensor(self.preview).to(device)).latent_dist.mode()).sample
        vae.train()
        return image_grid([list(self.preview), list(to_uint8(recon))])

    @torch.no_grad()
    def export(self, objective: nn.Module, out_dir: Path, summary: dict[str, Any]) -> None:
        vae: AutoencoderKL = objective.vae
        vae.eval()
        pool = objective.pool
        device = next(vae.parameters()).device
        latents, errors = [], []
        for start in range(0, min(len(pool), 256), 16):
            x = to_tensor(pool.images[start : start + 16]).to(device)
            z = vae.encode(x).latent_dist.mode()
            latents.append(z.cpu())
            recon = vae.decode(z).sample
            errors.append(F.mse_loss((recon.clamp(-1, 1) + 1) / 2, (x + 1) / 2).item())
        std = float(torch.cat(latents).std())
        # A frozen encoder keeps the latent space: keep its scaling factor so trained denoisers still fit.
        scaling = self.frozen_scaling_factor if self.frozen_scaling_factor is not None else 1.0 / std
        vae.register_to_config(scaling_factor=scaling)
        summary["latent_std"] = std
        summary["reconstruction_psnr_db"] = float(-10 * np.log10(max(float(np.mean(errors)), 1e-12)))
        vae.save_pretrained(out_dir / "vae", safe_serialization=True)
        logger.info("autoencoder: latent std %.3f → scaling_factor %.4f", std, scaling)


__all__ = ["AutoencoderTask", "build_autoencoder", "load_autoencoder", "to_tensor", "to_uint8"]
