"""Tiny smoke-test bundles with random weights, built from configs and saved as real bundles.

They exercise the real save/load path (diffusers layout, safetensors, ``rsgen_model.json``) with
no network and no downloaded weights. **Their images are noise**: use them to test commands and
pipelines end to end, never to judge quality.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from conditions.metadata_encoder import MetadataEncoder
from pipelines.bundle import BundleError, ModelCard
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


def build_tiny_pipeline(config: TinyBundleConfig = TinyBundleConfig()) -> RSText2ImagePipeline:
    """Assemble a tiny text(+metadata)-to-image pipeline with seeded random weights."""
    if config.image_size % 16:
        raise ValueError(f"image_size={config.image_size}: expected a multiple of 16 (VAE ×8, UNet ×2)")
    tokenizer = build_tiny_clip_tokenizer()
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        unet_time_dim = config.unet_channels[0] * 4
        unet = UNet2DConditionModel(
            sample_size=config.image_size // 8,
            in_channels=4,
            out_channels=4,
            block_out_channels=config.unet_channels,
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=config.text_hidden,
            attention_head_dim=8,
            norm_num_groups=32,
            class_embed_type="identity" if config.metadata else None,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
            up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
            block_out_channels=config.vae_channels,
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=config.image_size,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=config.text_hidden,
                intermediate_size=37,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                projection_dim=config.text_hidden,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        metadata_encoder = (
            MetadataEncoder(embedding_dim=unet_time_dim, frequency_dim=64, hidden_dim=64) if config.metadata else None
        )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        algorithm_type="dpmsolver++",
        solver_order=2,
        steps_offset=1,
    )
    pipe = RSText2ImagePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
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
    out_dir: str | os.PathLike, config: TinyBundleConfig = TinyBundleConfig(), *, overwrite: bool = False
) -> Path:
    """Build a tiny random bundle and save it to ``out_dir`` (atomically: built beside, then renamed)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise BundleError(f"out_dir={str(out_dir)!r} exists and is not empty; pick a new folder or pass overwrite")
    pipe = build_tiny_pipeline(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".rsgen-tmp-bundle-", dir=out_dir.parent))
    try:
        pipe.save_pretrained(staging, safe_serialization=True)
        pipe.model_card.write(staging)
        (staging / "README.md").write_text(
            f"# {pipe.model_card.name}\n\n**Smoke-test bundle: {SMOKE_TEST_WARNING}.**\n\n"
            "Built by `rsgen model init-tiny` to run rsgen end to end without downloading weights.\n",
            encoding="utf-8",
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.warning("built %s at %s (%s)", pipe.model_card.name, out_dir, SMOKE_TEST_WARNING)
    return out_dir
