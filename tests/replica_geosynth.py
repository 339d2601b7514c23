"""Config-exact tiny replicas of GeoSynth's published files, with random weights.

Layout (as downloaded with ``huggingface-cli download``)::

    root/
      stable-diffusion-2-1-base/   model_index.json (StableDiffusionPipeline), unet/, vae/, text_encoder/,
                                   tokenizer/, scheduler/ (PNDMScheduler), feature_extractor/
      GeoSynth-OSM/                config.json (ControlNetModel), diffusion_pytorch_model.safetensors, README.md

The configs carry the keys and the architecture pattern of the real ones (SD-2.1-base: linear-projection
transformers, per-block head counts, context = text hidden size, eps-prediction PNDM; the ControlNet as diffusers'
``convert_original_controlnet_to_diffusers`` writes it from GeoSynth's ``cldm_v21.yaml``), with widths and block
counts shrunk. The VAE file uses the pre-0.14 attention names (``query``/``key``/``value``/``proj_attn``) and the
text encoder file holds ``text_model.embeddings.position_ids``, as the 2022 stabilityai upload does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.tiny_tokenizer import build_tiny_clip_tokenizer

TEXT_HIDDEN = 32
UNET_CHANNELS = [32, 64]
SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None,
}  # fmt: skip
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.10.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"], "requires_safety_checker": False,
    "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}  # fmt: skip
README = {
    "osm": "This is a ControlNet based model that synthesizes satellite images given OpenStreetMap Images.",
    "canny": "This is a ControlNet based model that synthesizes satellite images given Canny edge images.",
    "sam": "This is a ControlNet based model that synthesizes satellite images given SAM segmentation images.",
}
NEW_TO_OLD_VAE = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=UNET_CHANNELS, layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
        act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=TEXT_HIDDEN, attention_head_dim=[2, 4],
        use_linear_projection=True, dual_cross_attention=False, upcast_attention=False,
    )  # fmt: skip


def _controlnet() -> ControlNetModel:
    net = ControlNetModel(
        in_channels=4, conditioning_channels=3, flip_sin_to_cos=True, freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), only_cross_attention=False,
        block_out_channels=UNET_CHANNELS, layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
        act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=TEXT_HIDDEN, attention_head_dim=[2, 4],
        use_linear_projection=True, class_embed_type=None, num_class_embeds=None, upcast_attention=False,
        resnet_time_scale_shift="default", projection_class_embeddings_input_dim=None,
        controlnet_conditioning_channel_order="rgb", conditioning_embedding_out_channels=(4, 8, 8, 16),
        global_pool_conditions=False,
    )  # fmt: skip
    # A trained ControlNet's zero convolutions are no longer zero: randomise them so that the hint matters.
    for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.2)
    torch.nn.init.normal_(net.controlnet_cond_embedding.conv_out.weight, std=3.0)
    return net


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(32, 32, 64, 64), latent_channels=4,
        layers_per_block=1, act_fn="silu", norm_num_groups=32, sample_size=64,
    )  # fmt: skip


def _save_old_vae_names(folder: Path) -> None:
    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    renamed = {}
    for key, value in state.items():
        if ".attentions." in key:
            for new, old in NEW_TO_OLD_VAE.items():
                key = key.replace(new, old)
        renamed[key] = value.contiguous()
    save_file(renamed, str(path))


def build_base(folder: Path, seed: int = 0) -> Path:
    """A tiny stabilityai/stable-diffusion-2-1-base snapshot."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    _unet().save_pretrained(folder / "unet", safe_serialization=True)
    _vae().save_pretrained(folder / "vae", safe_serialization=True)
    _save_old_vae_names(folder / "vae")
    tokenizer = build_tiny_clip_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=TEXT_HIDDEN,
        hidden_act="gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))  # fmt: skip
    text.save_pretrained(folder / "text_encoder", safe_serialization=True)
    weights = folder / "text_encoder" / "model.safetensors"
    state = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in load_file(str(weights)).items()}
    state["text_model.embeddings.position_ids"] = torch.arange(tokenizer.model_max_length)[None]  # transformers 4
    save_file(state, str(weights), metadata={"format": "pt"})
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER, indent=2))
    (folder / "feature_extractor").mkdir()
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
    }))  # fmt: skip
    return folder


def build_controlnet(folder: Path, control: str = "osm", *, pickled: bool = False, seed: int = 1) -> Path:
    """A tiny MVRL/GeoSynth-<control> snapshot; ``pickled``: diffusion_pytorch_model.bin instead of safetensors."""
    torch.manual_seed(seed)
    net = _controlnet()
    net.save_pretrained(folder, safe_serialization=not pickled)
    (folder / "README.md").write_text(f"---\nlibrary_name: diffusers\nlicense: apache-2.0\n---\n\n{README[control]}\n")
    return folder


def build_replica(root: Path, control: str = "osm", *, pickled: bool = False) -> Path:
    """``root/stable-diffusion-2-1-base`` + ``root/GeoSynth-<Control>``; returns the ControlNet folder (SRC)."""
    build_base(root / "stable-diffusion-2-1-base")
    name = {"osm": "GeoSynth-OSM", "sam": "GeoSynth-SAM", "canny": "GeoSynth-Canny"}[control]
    return build_controlnet(root / name, control, pickled=pickled)
