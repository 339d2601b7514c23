"""A config-exact tiny replica of the published Text2Earth checkpoint (hub ``lcybuaa/Text2Earth``).

Same layout as the hub folder (model_index.json naming ``Text2EarthDiffusionPipeline``; ``vae``, ``text_encoder``,
``tokenizer``, ``unet``, ``scheduler``, ``feature_extractor``; the authors' ``pipeline_text2earth_diffusion.py``;
README.md), the same classes and config keys (UNet2DConditionModel with ``class_embed_type="timestep"``,
SD-2-style ``attention_head_dim`` list, ``use_linear_projection``; CLIPTextModel; AutoencoderKL; model_index
naming PNDMScheduler while scheduler_config.json says DDIMScheduler, as reported for the hub files) and the same
state-dict key names; only widths and depths are shrunk and the weights are random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.tiny_tokenizer import build_tiny_clip_tokenizer

# Stands in for the authors' custom pipeline file: importing or executing it must never happen.
PIPELINE_FILE = 'raise RuntimeError("rsgen must never execute a checkpoint\'s pipeline file")\n'

SCHEDULER_CONFIG = {  # stable-diffusion-2-base's DDIM config (epsilon prediction)
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.29.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}


def tiny_sd2_unet(*, in_channels: int = 4, class_embed_type: str | None = "timestep", cross_dim: int = 32):
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=[2, 4],
        cross_attention_dim=cross_dim,
        use_linear_projection=True,
        norm_num_groups=16,
        class_embed_type=class_embed_type,
    )


def tiny_clip_text_encoder(tokenizer, hidden: int = 32) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, architectures=["CLIPTextModel"],
    )  # fmt: skip
    return CLIPTextModel(config)


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 16), latent_channels=4, layers_per_block=1, norm_num_groups=8, sample_size=16,
    )  # fmt: skip


def write_sd_folder(
    dest: Path, unet: UNet2DConditionModel, index: dict, scheduler: dict, *, safe: bool = True, seed: int = 0
) -> Path:
    """vae/, text_encoder/, tokenizer/, scheduler/, feature_extractor/ and model_index.json around ``unet``."""
    torch.manual_seed(seed)
    tokenizer = build_tiny_clip_tokenizer()
    tokenizer.save_pretrained(dest / "tokenizer")
    text_encoder = tiny_clip_text_encoder(tokenizer)
    text_encoder.config.save_pretrained(dest / "text_encoder")
    if safe:
        save_file(dict(text_encoder.state_dict()), str(dest / "text_encoder" / "model.safetensors"))
    else:  # transformers' pickled file name
        torch.save(dict(text_encoder.state_dict()), dest / "text_encoder" / "pytorch_model.bin")
    tiny_vae().save_pretrained(dest / "vae", safe_serialization=safe)
    (dest / "scheduler").mkdir(parents=True)
    (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    (dest / "feature_extractor").mkdir()
    (dest / "feature_extractor" / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": 224,
                "do_center_crop": True,
                "do_normalize": True,
                "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_processor_type": "CLIPImageProcessor",
                "size": 224,
            }
        )  # fmt: skip
    )
    (dest / "model_index.json").write_text(json.dumps(index, indent=2))
    if unet is not None:
        unet.save_pretrained(dest / "unet", safe_serialization=safe)
    return dest


def build_text2earth_replica(dest: Path, *, safe: bool = True, seed: int = 0) -> Path:
    """The replica folder at ``dest`` (``safe=False``: every weight as a pickled .bin)."""
    dest.mkdir(parents=True)
    torch.manual_seed(seed + 1)
    unet = tiny_sd2_unet()
    index = {
        "_class_name": "Text2EarthDiffusionPipeline",
        "_diffusers_version": "0.29.0.dev0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    write_sd_folder(dest, unet, index, SCHEDULER_CONFIG, safe=safe, seed=seed)
    (dest / "pipeline_text2earth_diffusion.py").write_text(PIPELINE_FILE)
    (dest / "README.md").write_text("---\nlicense: apache-2.0\n---\n# Text2Earth (tiny replica)\n")
    return dest
