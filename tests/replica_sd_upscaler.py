"""A config-exact tiny replica of ``stabilityai/stable-diffusion-x4-upscaler`` (a diffusers folder).

Same file layout, component classes, config keys and state-dict key names as the published snapshot
(checked against the hub files: model_index.json, unet/vae/text_encoder ``config.json``, tokenizer and
both scheduler configs, and the Stability-AI/stablediffusion ``configs/stable-diffusion/x4-upscaling.yaml``
it was converted from); only widths and layer counts are shrunk and the weights are random. The VAE keeps
its three levels (the ×4 factor), the UNet its four blocks, 7 input channels and 1000 noise-level class
embeddings. Weights are written as in the 2022 snapshot: the VAE's mid-block attention under the
deprecated diffusers names (``query``/``key``/``value``/``proj_attn``), the text encoder with its
``position_ids`` buffer, each component as ``.safetensors`` and as a pickled ``.bin`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.tiny_tokenizer import BOS, EOS, RS_WORDS, learn_bpe

DIFFUSERS_VERSION = "0.9.0.dev0"  # the snapshot's configs were written by this version

MODEL_INDEX = {
    "_class_name": "StableDiffusionUpscalePipeline",
    "_diffusers_version": DIFFUSERS_VERSION,
    "low_res_scheduler": ["diffusers", "DDPMScheduler"],
    "max_noise_level": 350,
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# Published widths in comments; the replica's are shrunk.
TEXT_HIDDEN = 32  # 1024 (OpenCLIP ViT-H, penultimate layer: 23 of 24 layers)


def unet_config(sample_size: int = 8) -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "_name_or_path": "hf-models/stable-diffusion-x4-upscaler/unet",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [8, 16, 16, 32],  # [256, 512, 512, 1024]
        "center_input_sample": False,
        "cross_attention_dim": TEXT_HIDDEN,  # 1024
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 7,
        "layers_per_block": 1,  # 2
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 8,  # 32
        "num_class_embeds": 1000,
        "only_cross_attention": [True, True, True, False],
        "out_channels": 4,
        "sample_size": sample_size,  # 128
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }


def vae_config(*, scaling_factor: float | None = 0.08333) -> dict:
    config = {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "_name_or_path": "hf-models/stable-diffusion-x4-upscaler/vae",
        "act_fn": "silu",
        "block_out_channels": [8, 16, 16],  # [128, 256, 512]
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 1,  # 2
        "norm_num_groups": 8,  # 32
        "out_channels": 3,
        "sample_size": 32,  # 256
        "up_block_types": ["UpDecoderBlock2D"] * 3,
    }
    if scaling_factor is not None:  # the first snapshot had none; a later commit added 0.08333
        config["scaling_factor"] = scaling_factor
    return config


def text_encoder_config(vocab_size: int) -> dict:
    return {
        "_name_or_path": "hf-models/stable-diffusion-x4-upscaler/text_encoder",
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": TEXT_HIDDEN,  # 1024
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 37,  # 4096
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 4,  # 16
        "num_hidden_layers": 2,  # 23
        "pad_token_id": 1,
        "projection_dim": 512,
        "torch_dtype": "float32",
        "transformers_version": "4.25.0.dev0",
        "vocab_size": vocab_size,  # 49408
    }


SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
LOW_RES_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "beta_end": 0.02,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "trained_betas": None,
    "variance_type": "fixed_small",
}


def _added(content: str, typed: bool) -> dict:
    token = {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    return {"__type": "AddedToken", **token} if typed else token


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _write_weights(folder: Path, stem: str, state: dict[str, torch.Tensor], weights: str) -> None:
    state = {k: v.contiguous() for k, v in state.items()}
    if weights in ("safetensors", "both"):
        save_file(state, str(folder / f"{stem}.safetensors"))
    if weights in ("pickle", "both"):
        torch.save(state, folder / ("pytorch_model.bin" if stem == "model" else f"{stem}.bin"))


DEPRECATED_ATTENTION = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _deprecated_vae_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers 0.9's names for the VAE mid-block attention (``to_q`` was ``query`` ...)."""
    out = {}
    for key, value in state.items():
        for new, old in DEPRECATED_ATTENTION.items():
            if ".mid_block.attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        out[key] = value
    return out


def _transformers_4_text_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The 2022 (transformers 4.25) names: every key under ``text_model.``, the ``position_ids`` buffer saved."""
    out = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
    out["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return out


def write_replica(
    root: Path, *, seed: int = 0, weights: str = "both", vae_scaling_factor: float | None = 0.08333
) -> Path:
    """Write the replica snapshot into ``root`` (``weights``: "safetensors", "pickle" or "both")."""
    root.mkdir(parents=True, exist_ok=True)
    _write_json(root / "model_index.json", MODEL_INDEX)
    vocab, merges = learn_bpe(RS_WORDS)
    tok = root / "tokenizer"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (tok / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    _write_json(tok / "special_tokens_map.json", {
        "bos_token": _added(BOS, False), "eos_token": _added(EOS, False), "pad_token": "!",
        "unk_token": _added(EOS, False),
    })  # fmt: skip
    _write_json(tok / "tokenizer_config.json", {
        "add_prefix_space": False, "bos_token": _added(BOS, True), "do_lower_case": True,
        "eos_token": _added(EOS, True),
        "errors": "replace", "model_max_length": 77, "name_or_path": "hf-models/stable-diffusion-x4-upscaler/tokenizer",
        "pad_token": EOS, "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added(EOS, True),
    })  # fmt: skip
    _write_json(root / "scheduler" / "scheduler_config.json", SCHEDULER)
    _write_json(root / "low_res_scheduler" / "scheduler_config.json", LOW_RES_SCHEDULER)

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel.from_config(unet_config())
        vae = AutoencoderKL.from_config(vae_config())
        text_encoder = CLIPTextModel(CLIPTextConfig.from_dict(text_encoder_config(len(vocab))))
    for name, config, stem, state in (
        ("unet", unet_config(), "diffusion_pytorch_model", unet.state_dict()),
        ("vae", vae_config(scaling_factor=vae_scaling_factor), "diffusion_pytorch_model",
         _deprecated_vae_keys(vae.state_dict())),
        ("text_encoder", text_encoder_config(len(vocab)), "model",
         _transformers_4_text_keys(text_encoder.state_dict())),
    ):  # fmt: skip
        folder = root / name
        _write_json(folder / "config.json", config)
        _write_weights(folder, stem, state, weights)
    # the snapshot also carries a stray notebook copy of the UNet config
    _write_json(root / "unet" / ".ipynb_checkpoints" / "config-checkpoint.json", unet_config())
    return root
