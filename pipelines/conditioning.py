"""Text and metadata conditioning shared by rsgen pipelines."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from conditions.metadata import Metadata
from conditions.metadata_adapters import gsd_to_text2earth_level
from conditions.metadata_encoder import DiffusionSatMetadataEncoder, MetadataEncoder

logger = logging.getLogger(__name__)


# What a UNet's own class embedding can take as ``class_labels`` (rsgen_model.json 'class_labels'):
# "text2earth_level" = the Google zoom level 10..18 nearest the sample's GSD (Text2Earth; 0 = unconditional).
CLASS_LABEL_KINDS = ("text2earth_level",)
TEXT2EARTH_NULL_LEVEL = 0  # the level of Text2Earth's unconditional branch and of prompts without a level


def check_metadata_components(
    unet: UNet2DConditionModel,
    metadata_encoder: MetadataEncoder | DiffusionSatMetadataEncoder | None,
    *,
    class_labels: bool = False,
) -> None:
    """A metadata encoder goes with ``class_embed_type='identity'`` and the UNet's time-embedding size. With
    ``class_labels`` (pipelines that read rsgen_model.json 'class_labels') a UNet with a ``"timestep"`` class
    embedding and no metadata encoder is complete: its labels come from the metadata (e.g. Text2Earth's level)."""
    has_class_embedding = unet.config.class_embed_type is not None or unet.config.num_class_embeds
    if class_labels and metadata_encoder is None and unet.config.class_embed_type == "timestep":
        return
    if metadata_encoder is not None and unet.config.class_embed_type != "identity":
        raise ValueError(
            "metadata_encoder given but unet.config.class_embed_type="
            f"{unet.config.class_embed_type!r}; a metadata model needs class_embed_type='identity'"
        )
    if metadata_encoder is None and has_class_embedding:
        raise ValueError(
            f"unet has a class embedding ({unet.config.class_embed_type!r}) but no metadata_encoder was "
            "given; the bundle is incomplete"
        )
    if metadata_encoder is not None:
        time_dim = unet.config.time_embedding_dim or unet.config.block_out_channels[0] * 4
        if metadata_encoder.config.embedding_dim != time_dim:
            raise ValueError(
                f"metadata_encoder.embedding_dim={metadata_encoder.config.embedding_dim} must equal the "
                f"unet time-embedding size {time_dim}"
            )


def scheduler_step_kwargs(scheduler: Any, generator: Any, eta: float = 0.0) -> dict[str, Any]:
    """The ``eta``/``generator`` keyword arguments that ``scheduler.step`` accepts (they differ by scheduler)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent pixel of an ``AutoencoderKL`` or ``AutoencoderTiny`` (2 ** (levels - 1))."""
    channels = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
    return 2 ** (len(channels) - 1)


def encode_latents(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """(B, bands, H, W) in [-1, 1] → scaled latents (B, C, h, w), deterministic: the posterior mode of an
    ``AutoencoderKL`` or the latents of an ``AutoencoderTiny``, times the VAE's ``scaling_factor``."""
    encoded = vae.encode(images)
    latent = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
    return latent * vae.config.scaling_factor


def tail_timesteps(scheduler: Any, num_inference_steps: int, strength: float) -> tuple[Any, int]:
    """After ``scheduler.set_timesteps``: the last ``int(num_inference_steps * strength)`` timesteps (all
    of them at strength 1) and how many were skipped; the scheduler is told where it begins (img2img).

    A scheduler whose ``set_timesteps`` takes ``strength`` itself (``LCMScheduler``: its schedule is a
    subset of the distillation timesteps) is set again with it and runs all ``num_inference_steps`` steps
    below ``strength`` of the schedule, as diffusers' LCM img2img does; the returned skip is then the number
    of steps of that spacing that would lie above (so ``skip / (skip + steps)`` ≈ 1 − ``strength``)."""
    timesteps = scheduler.timesteps
    if strength >= 1:
        return timesteps, 0
    if "strength" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(num_inference_steps, device=timesteps.device, strength=strength)
        return scheduler.timesteps, round(num_inference_steps * (1 - strength) / strength)
    skip = (num_inference_steps - int(num_inference_steps * strength)) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(skip)
    return timesteps[skip:], skip


def class_labels_from_metadata(
    kind: str, records: list[Metadata | None], device: torch.device, do_cfg: bool
) -> torch.Tensor:
    """The UNet's ``class_labels`` (2B,) as [null; cond] with guidance, else (B,), for a card's ``class_labels``
    kind. ``"text2earth_level"``: the Google level nearest each record's GSD; a record without a GSD gets the
    null level 0, which is also what Text2Earth's own pipeline uses for a prompt without a level prefix."""
    if kind != "text2earth_level":
        raise ValueError(f"rsgen_model.json class_labels={kind!r}: expected one of {CLASS_LABEL_KINDS} or null")
    levels = [TEXT2EARTH_NULL_LEVEL if r is None or r.gsd is None else gsd_to_text2earth_level(r.gsd) for r in records]
    if do_cfg:
        levels = [TEXT2EARTH_NULL_LEVEL] * len(records) + levels
    return torch.tensor(levels, dtype=torch.long, device=device)  # (nB,)


class TextMetadataConditioningMixin:
    """``encode_prompt`` / ``encode_metadata`` for pipelines with tokenizer, text_encoder, unet and an
    optional metadata_encoder."""

    @property
    def has_metadata(self) -> bool:
        return self.metadata_encoder is not None

    def encode_prompt(
        self, prompts: list[str], negative_prompts: list[str], device: torch.device, do_cfg: bool
    ) -> torch.Tensor:
        """Returns text embeddings (2B, L, D) as [uncond; cond] with guidance, else (B, L, D)."""
        texts = negative_prompts + prompts if do_cfg else prompts
        tokens = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        untruncated = self.tokenizer(texts, padding="longest", return_tensors="pt").input_ids
        if untruncated.shape[-1] > tokens.input_ids.shape[-1]:
            logger.warning(
                "prompt longer than %d tokens was truncated for the text encoder", self.tokenizer.model_max_length
            )
        embeds = self.text_encoder(tokens.input_ids.to(device))[0]  # (nB, L, D)
        return embeds.to(self.unet.dtype)

    def encode_metadata(
        self, records: list[Metadata | None], device: torch.device, do_cfg: bool
    ) -> torch.Tensor | None:
        """Returns metadata embeddings (2B, E) as [null; cond] with guidance, else (B, E); None without
        a metadata encoder. The unconditional half is the all-unknown record's embedding."""
        if self.metadata_encoder is None:
            return None
        if do_cfg:
            records = [None] * len(records) + list(records)
        prepared = self.metadata_encoder.prepare(records)
        embeds = self.metadata_encoder(prepared.values, prepared.known, prepared.sensor_ids)  # (nB, E)
        return embeds.to(device=device, dtype=self.unet.dtype)
