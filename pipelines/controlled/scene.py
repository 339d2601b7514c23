"""Large scenes: controlled generation of a raster larger than the model's native size.

MultiDiffusion-style: the latent canvas of the whole scene is denoised with overlapping latent
tiles; at every step each tile's guided noise prediction (with its crop of the controls) is
cross-faded into a canvas-wide prediction with ramp weights, and one scheduler step is taken on
the whole canvas — so the scheduler's multistep state stays consistent and tiles agree where they
overlap: no seams. Decoding is tiled too (``decode_scene``), blended in pixel space, and handed
to a row writer. UNet/VAE memory is bounded by the tile; what grows with the scene is only the
latent canvas (1/64 of the pixels × 4 channels) and the uint8 control canvas.

A scene that fits one tile gives exactly the single-call result of the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from conditions.metadata import Metadata
from pipelines.conditioning import scheduler_step_kwargs, tail_timesteps
from pipelines.controlled.pipeline_rs_controlled import RSControlledPipeline
from pipelines.tiling import StripBlender, ramp, tile_starts

logger = logging.getLogger(__name__)


def _latent_tiles(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """(row, col, h, w) latent windows covering a (height, width) canvas."""
    th, tw = min(tile, height), min(tile, width)
    return [(r, c, th, tw) for r in tile_starts(height, th, overlap) for c in tile_starts(width, tw, overlap)]


def _weights(r: int, c: int, th: int, tw: int, height: int, width: int, overlap: int) -> torch.Tensor:
    wy = ramp(th, overlap, r > 0, r + th < height)
    wx = ramp(tw, overlap, c > 0, c + tw < width)
    return torch.from_numpy(np.outer(wy, wx))[None, None]  # (1, 1, th, tw)


def check_scene(pipe: RSControlledPipeline, height: int, width: int, tile: int, overlap: int) -> None:
    multiple = pipe.size_multiple
    if tile % multiple or tile <= 0:
        raise ValueError(f"tile={tile}: expected a positive multiple of {multiple} pixels for this model")
    if overlap % pipe.vae_scale_factor or not 0 <= overlap <= tile // 2:
        raise ValueError(
            f"overlap={overlap}: expected a multiple of {pipe.vae_scale_factor} between 0 and half the tile "
            f"({tile // 2})"
        )
    if height % multiple or width % multiple:
        raise ValueError(f"scene size {height}x{width}: must be a multiple of {multiple} pixels")


@torch.no_grad()
def scene_latents(
    pipe: RSControlledPipeline,
    prompt: str,
    controls: Mapping[str, torch.Tensor],
    *,
    tile: int,
    overlap: int,
    control_scales: Mapping[str, float] | None = None,
    control_guidance: Mapping[str, tuple[float, float]] | None = None,
    negative_prompt: str | None = None,
    metadata: Metadata | None = None,
    num_inference_steps: int = 20,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
    progress: Callable[[int], None] | None = None,
    layout_strength: float | None = None,
) -> torch.Tensor:
    """Denoise a whole scene; ``controls`` are (1, 3, H, W) uint8 or float tensors. Returns the
    latent canvas (1, C, H/8, W/8). With a layout prior (``layout_strength`` < 1, default: the
    pipeline's) the painted mask is VAE-encoded tile by tile and cross-faded like the noise."""
    control_scales = dict(control_scales or {})
    control_guidance = dict(control_guidance or {})
    first = next(iter(controls.values()))
    height, width = first.shape[-2:]
    check_scene(pipe, height, width, tile, overlap)
    if pipe.is_inpainting_model:
        raise ValueError("large scenes need a generation model; this bundle's UNet is an inpainting UNet")
    # Validate the call on one tile-sized crop, with the pipeline's own checks.
    crop = {k: v[..., :tile, :tile] for k, v in controls.items()}  # check_inputs looks at shapes only
    pipe.check_inputs(prompt, crop, control_scales, control_guidance, metadata, None, None, 0,
                      num_inference_steps, guidance_scale, "latent", generator)  # fmt: skip
    layout_strength = pipe.check_layout_strength(layout_strength, controls, num_inference_steps)
    device = pipe._execution_device
    do_cfg = guidance_scale > 1.0
    text_embeds = pipe.encode_prompt([prompt], [negative_prompt or ""], device, do_cfg)  # (n, L, D)
    metadata_embeds = pipe.encode_metadata([metadata], device, do_cfg)  # (n, E) or None
    f = pipe.vae_scale_factor
    lh, lw, lt, lo = height // f, width // f, tile // f, overlap // f
    pipe.scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps, skip = tail_timesteps(pipe.scheduler, num_inference_steps, layout_strength)
    shape = (1, pipe.vae.config.latent_channels, lh, lw)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=pipe.unet.dtype)  # (1, C, lh, lw)
    windows = _latent_tiles(lh, lw, lt, lo)
    weights = [_weights(r, c, th, tw, lh, lw, lo).to(device, latents.dtype) for r, c, th, tw in windows]
    if layout_strength < 1:
        prior_sum = torch.zeros_like(latents)  # (1, C, lh, lw)
        weight_sum = torch.zeros_like(latents[:, :1])  # (1, 1, lh, lw)
        for (r, c, th, tw), weight in zip(windows, weights):
            crop = controls["mask"][..., r * f : (r + th) * f, c * f : (c + tw) * f].to(device)
            prior_sum[..., r : r + th, c : c + tw] += pipe.encode_image(pipe.paint_layout(crop)) * weight
            weight_sum[..., r : r + th, c : c + tw] += weight
        latents = pipe.scheduler.add_noise(prior_sum / weight_sum, latents, timesteps[:1])
    else:
        latents = latents * pipe.scheduler.init_noise_sigma
    step_kwargs = scheduler_step_kwargs(pipe.scheduler, generator)
    logger.info("scene %dx%d px: %d tiles of %d px, overlap %d px", height, width, len(windows), tile, overlap)
    for step, t in enumerate(timesteps):
        fraction = (skip + step) / (skip + len(timesteps))  # share of the full schedule
        noise_sum = torch.zeros_like(latents)  # (1, C, lh, lw)
        weight_sum = torch.zeros_like(latents[:, :1])  # (1, 1, lh, lw)
        for (r, c, th, tw), weight in zip(windows, weights):
            window = {k: v[..., r * f : (r + th) * f, c * f : (c + tw) * f] for k, v in controls.items()}
            cond = pipe.prepare_controls(window, device, do_cfg)  # name -> (n, 3, th*f, tw*f)
            pred = pipe.guided_noise(
                latents[..., r : r + th, c : c + tw],
                t,
                fraction,
                text_embeds,
                metadata_embeds,
                cond,
                control_scales,
                control_guidance,
                guidance_scale,
            )  # fmt: skip (1, C, th, tw)
            noise_sum[..., r : r + th, c : c + tw] += pred * weight
            weight_sum[..., r : r + th, c : c + tw] += weight
        latents = pipe.scheduler.step(noise_sum / weight_sum, t, latents, **step_kwargs).prev_sample
        if progress is not None:
            progress(1)
    return latents


@torch.no_grad()
def decode_scene(
    pipe: RSControlledPipeline,
    latents: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    write: Callable[[np.ndarray, np.ndarray, int], None],
) -> None:
    """Decode a latent canvas (1, C, h, w) in overlapping tiles, cross-fade them in pixel space and call
    ``write(rows (3, n, W) float in [0, 1], valid (n, W), row_off)`` for finished rows, top to bottom."""
    f = pipe.vae_scale_factor
    lh, lw = latents.shape[-2:]
    lt, lo = tile // f, overlap // f
    height, width = lh * f, lw * f
    windows = _latent_tiles(lh, lw, lt, lo)
    blender = StripBlender(3, height, width, min(lt, lh) * f, write)
    current_row = -1
    for r, c, th, tw in windows:
        if r != current_row:
            blender.flush_until(r * f)
            current_row = r
        pixels = pipe.decode_latents(latents[..., r : r + th, c : c + tw])[0].cpu().numpy()  # (3, th*f, tw*f)
        weight = np.outer(
            ramp(th * f, lo * f, r > 0, r + th < lh), ramp(tw * f, lo * f, c > 0, c + tw < lw)
        )  # (th*f, tw*f)
        blender.add(pixels, weight, np.ones(weight.shape, dtype=bool), r * f, c * f)
    blender.flush_until(height)
