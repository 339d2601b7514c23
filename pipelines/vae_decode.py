"""VAE encode/decode in the precision that does not overflow: one rule for every rsgen pipeline.

Some VAEs overflow in fp16 (SD-XL's: NaN or black images); ``config.force_upcast`` says so, and diffusers'
SD-XL pipelines decode such VAEs in fp32. rsgen follows the same rule, once, here, for every pipeline:
a VAE that holds fp16 weights and has ``force_upcast`` set is moved to fp32 the first time it encodes or
decodes, and **stays in fp32** (unlike diffusers, which casts it back to fp16 after every decode). The
result is the same as casting per call (fp16 -> fp32 is exact), without two conversions of the weights
per call; it costs the fp16/fp32 difference of the VAE's weights (about 160 MB for SD's 84 M-parameter
VAE). The UNet, ControlNets and text encoder stay in fp16; latents are cast at the VAE's boundary.

bf16 is never upcast: it has fp32's exponent range, so it cannot overflow where fp32 does not. A VAE
whose config sets ``force_upcast: false`` (e.g. an fp16-safe VAE) stays in fp16. A config without the
key gets diffusers' default (``True`` for ``AutoencoderKL``, so SD-1.x/2.x VAEs are upcast too: safe, a
slower decode; ``False`` for ``AutoencoderTiny``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from pipelines.conditioning import encode_latents

logger = logging.getLogger(__name__)


def vae_needs_upcast(vae: Any) -> bool:
    """True for a VAE with fp16 weights whose config sets ``force_upcast`` (it would overflow in fp16)."""
    return vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))


def vae_compute_dtype(vae: Any) -> torch.dtype:
    """The dtype ``vae`` encodes and decodes in: fp32 where it needs an upcast, else its weights' dtype."""
    return torch.float32 if vae_needs_upcast(vae) else vae.dtype


def prepare_vae(vae: Any) -> torch.dtype:
    """Move an fp16 ``force_upcast`` VAE to fp32, once and for good; returns the dtype it now runs in."""
    if vae_needs_upcast(vae):
        vae.float()  # not .to(dtype): diffusers 0.42 then warns about fp32 modules even when there are none
        logger.info("VAE kept in fp32 under fp16 (its config sets force_upcast: fp16 would overflow)")
    return vae.dtype


def decode_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, h, w) of any dtype -> the VAE's output (B, bands, H, W) in about [-1, 1], in the
    VAE's compute dtype (fp32 for an upcast VAE)."""
    dtype = prepare_vae(vae)
    return vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample  # (B, bands, H, W)


def encode_images(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """(B, bands, H, W) in [-1, 1] -> scaled latents (B, C, h, w) (deterministic, see
    :func:`pipelines.conditioning.encode_latents`), in the VAE's compute dtype; callers cast them to the
    UNet's dtype."""
    dtype = prepare_vae(vae)
    return encode_latents(vae, images.to(dtype))
