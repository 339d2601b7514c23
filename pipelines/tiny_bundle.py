"""Tiny smoke-test bundles with random weights, built from configs and saved as real bundles.

They exercise the real save/load path (diffusers layout, safetensors, ``rsgen_model.json``) with
no network and no downloaded weights. **Their images are noise**: use them to test commands and
pipelines end to end, never to judge quality.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DPMSolverMultistepScheduler,
    MultiControlNetModel,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from conditions.metadata_encoder import MetadataEncoder
from core.atomic import atomic_dir
from pipelines.bundle import BundleError, ModelCard
from pipelines.controlled.pipeline_rs_controlled import RSControlledPipeline
from pipelines.super_resolution.pipeline_rs_sr import RSSuperResolutionPipeline
from pipelines.text2img.pipeline_rs_text2img import RSText2ImagePipeline
from pipelines.tiny_tokenizer import build_tiny_clip_tokenizer

logger = logging.getLogger(__name__)

SMOKE_TEST_WARNING = "random weights: a smoke-test bundle whose images are noise"


@dataclass(frozen=True)
class TinyBundleConfig:
    image_size: int = 256  # native size in pixels (the VAE down-samples by 8)
    metadata: bool = True  # add a metadata encoder (UNet class_embed_type='identity')
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int, int] = (32, 32, 64, 64)
    text_hidden: int = 32
    seed: int = 0


@dataclass(frozen=True)
class TinySRBundleConfig:
    """A tiny reference-guided SR bundle: LR latent concatenated to the UNet input, reference ControlNet."""

    tile_size: int = 256  # native tile size in pixels
    bands: tuple[str, ...] = ("red", "green", "blue")
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int, int] = (32, 32, 64, 64)
    text_hidden: int = 32
    seed: int = 0


KNOWN_CONTROLS = ("mask", "canny", "depth", "image")


@dataclass(frozen=True)
class TinyControlledBundleConfig:
    """A tiny controlled bundle: the text(+metadata) model plus one ControlNet per control name."""

    image_size: int = 256
    controls: tuple[str, ...] = ("mask",)
    metadata: bool = True
    inpainting: bool = False  # a 9-channel inpainting UNet (latent + mask + masked-image latent)
    unet_channels: tuple[int, int] = (32, 64)
    vae_channels: tuple[int, int, int, int] = (32, 32, 64, 64)
    text_hidden: int = 32
    seed: int = 0


def _tiny_scheduler() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
    )


def _tiny_text_encoder(tokenizer, hidden: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            projection_dim=hidden,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _tiny_vae(channels: tuple[int, ...], bands: int, size: int) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=bands,
        out_channels=bands,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=size,
    )


def _tiny_unet(
    config: TinyBundleConfig | TinySRBundleConfig | TinyControlledBundleConfig,
    size: int,
    in_channels: int,
    class_embed_type: str | None,
) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=size // 8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=config.unet_channels,
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=config.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
        class_embed_type=class_embed_type,
    )


def _randomised_controlnet(unet: UNet2DConditionModel, channels: int) -> ControlNetModel:
    controlnet = ControlNetModel.from_unet(
        unet, conditioning_channels=channels, conditioning_embedding_out_channels=(16, 32, 64, 64)
    )
    # A trained ControlNet starts from zero convolutions; a smoke bundle randomises them so that the
    # control path has a visible effect in tests.
    for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.05)
    return controlnet


def build_tiny_controlled_pipeline(
    config: TinyControlledBundleConfig = TinyControlledBundleConfig(),
) -> RSControlledPipeline:
    """Assemble a tiny controlled pipeline (one ControlNet per control) with seeded random weights."""
    unknown = sorted(set(config.controls) - set(KNOWN_CONTROLS))
    if not config.controls or unknown or len(set(config.controls)) != len(config.controls):
        raise ValueError(f"controls={list(config.controls)}: expected distinct names among {list(KNOWN_CONTROLS)}")
    base = build_tiny_pipeline(
        TinyBundleConfig(config.image_size, config.metadata, config.unet_channels, config.vae_channels,
                         config.text_hidden, config.seed)
    )  # fmt: skip
    unet = base.unet
    if config.inpainting:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed + 2)
            unet = _tiny_unet(config, config.image_size, 9, "identity" if config.metadata else None)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed + 1)
        nets = [_randomised_controlnet(unet, 3) for _ in config.controls]
    pipe = RSControlledPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        controlnet=MultiControlNetModel(nets), scheduler=base.scheduler, metadata_encoder=base.metadata_encoder,
    )  # fmt: skip
    pipe.control_names = list(config.controls)
    card = tiny_model_card(TinyBundleConfig(config.image_size, config.metadata), base.metadata_encoder)
    card.name = "rsgen-tiny-random-controlled"
    card.pipeline = "RSControlledPipeline"
    card.controls = list(config.controls)
    card.inpainting = config.inpainting
    card.palette = {"name": "canonical", "encoding": "color"} if "mask" in config.controls else None
    card.description = f"Tiny controlled bundle with {SMOKE_TEST_WARNING}. Built by `rsgen model init-tiny --controls`."
    pipe.model_card = card
    return pipe


def build_tiny_sr_pipeline(config: TinySRBundleConfig = TinySRBundleConfig()) -> RSSuperResolutionPipeline:
    """Assemble a tiny reference-guided SR pipeline with seeded random weights."""
    if config.tile_size % 16:
        raise ValueError(f"tile_size={config.tile_size}: expected a multiple of 16 (VAE ×8, UNet ×2)")
    tokenizer = build_tiny_clip_tokenizer()
    bands = len(config.bands)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        unet = _tiny_unet(config, config.tile_size, in_channels=8, class_embed_type=None)
        vae = _tiny_vae(config.vae_channels, bands, config.tile_size)
        text_encoder = _tiny_text_encoder(tokenizer, config.text_hidden)
        controlnet = _randomised_controlnet(unet, bands)
    pipe = RSSuperResolutionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=_tiny_scheduler(), metadata_encoder=None,
    )  # fmt: skip
    pipe.model_card = ModelCard(
        name="rsgen-tiny-random-sr",
        pipeline="RSSuperResolutionPipeline",
        native_size=(config.tile_size, config.tile_size),
        bands=list(config.bands),
        controls=["reference"],
        smoke_test=True,
        description=f"Tiny reference-guided SR bundle with {SMOKE_TEST_WARNING}. "
        "Built by `rsgen model init-tiny --sr`.",
        license="Apache-2.0",
    )
    return pipe


def build_tiny_pipeline(config: TinyBundleConfig = TinyBundleConfig()) -> RSText2ImagePipeline:
    """Assemble a tiny text(+metadata)-to-image pipeline with seeded random weights."""
    if config.image_size % 16:
        raise ValueError(f"image_size={config.image_size}: expected a multiple of 16 (VAE ×8, UNet ×2)")
    tokenizer = build_tiny_clip_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        unet_time_dim = config.unet_channels[0] * 4
        unet = _tiny_unet(config, config.image_size, 4, "identity" if config.metadata else None)
        vae = _tiny_vae(config.vae_channels, 3, config.image_size)
        text_encoder = _tiny_text_encoder(tokenizer, config.text_hidden)
        metadata_encoder = (
            MetadataEncoder(embedding_dim=unet_time_dim, frequency_dim=64, hidden_dim=64) if config.metadata else None
        )
    pipe = RSText2ImagePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_tiny_scheduler(),
        metadata_encoder=metadata_encoder,
    )
    pipe.model_card = tiny_model_card(config, metadata_encoder)
    return pipe


def tiny_model_card(config: TinyBundleConfig, metadata_encoder: MetadataEncoder | None) -> ModelCard:
    return ModelCard(
        name="rsgen-tiny-random" + ("" if config.metadata else "-nometa"),
        native_size=(config.image_size, config.image_size),
        gsd_range=(0.05, 500.0) if config.metadata else None,
        metadata=metadata_encoder.schema() if metadata_encoder is not None else None,
        smoke_test=True,
        description=f"Tiny rsgen bundle with {SMOKE_TEST_WARNING}. Built by `rsgen model init-tiny`.",
        license="Apache-2.0",
    )


def build_tiny_bundle(
    out_dir: str | os.PathLike,
    config: TinyBundleConfig | TinySRBundleConfig | TinyControlledBundleConfig = TinyBundleConfig(),
    *,
    overwrite: bool = False,
) -> Path:
    """Build a tiny random bundle (text-to-image, or SR for a :class:`TinySRBundleConfig`) and save it
    to ``out_dir`` atomically (built beside it, then renamed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise BundleError(f"out_dir={str(out_dir)!r} exists and is not empty; pick a new folder or pass overwrite")
    if isinstance(config, TinySRBundleConfig):
        pipe = build_tiny_sr_pipeline(config)
    elif isinstance(config, TinyControlledBundleConfig):
        pipe = build_tiny_controlled_pipeline(config)
    else:
        pipe = build_tiny_pipeline(config)
    with atomic_dir(out_dir) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        pipe.model_card.write(staging)
        (staging / "README.md").write_text(
            f"# {pipe.model_card.name}\n\n**Smoke-test bundle: {SMOKE_TEST_WARNING}.**\n\n"
            "Built by `rsgen model init-tiny` to run rsgen end to end without downloading weights.\n",
            encoding="utf-8",
        )
    logger.warning("built %s at %s (%s)", pipe.model_card.name, out_dir, SMOKE_TEST_WARNING)
    return out_dir
