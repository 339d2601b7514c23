"""A config-exact tiny replica of ``stabilityai/stable-diffusion-2-inpainting`` (diffusers folder).

Same files, classes, config keys and state-dict key names as the hub repository, random weights, widths and
depths shrunk. Checked against the public files: model_index.json (commit bae7a5c "Update model_index.json":
``StableDiffusionInpaintPipeline``, diffusers 0.8.0, feature_extractor ``CLIPFeatureExtractor``, safety_checker
``[null, null]``, ``requires_safety_checker: false``), scheduler/scheduler_config.json (``PNDMScheduler``, 0.8.0
keys), unet/config.json (0.8.0 keys, as in hub duplicates of the repository: in_channels 9, attention_head_dim
[5, 10, 20, 20], use_linear_projection) and text_encoder/config.json (transformers 4.24 keys, CLIPTextModel,
gelu, 23 layers). Assumed, not readable here: vae/config.json (the SD-2 VAE's 0.8.0 keys), the tokenizer files
(vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json as SD-2 ships them), and the key names of
the weight files: written by transformers 4.24 (``text_model.`` prefix and the ``position_ids`` buffer) and by
diffusers 0.8 (the VAE mid-block attention as ``query/key/value/proj_attn``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from pipelines.tiny_tokenizer import BOS, EOS, RS_WORDS, learn_bpe

TEXT_HIDDEN = 32
UNET_KEYS = ["act_fn", "attention_head_dim", "block_out_channels", "center_input_sample", "cross_attention_dim",
             "down_block_types", "downsample_padding", "dual_cross_attention", "flip_sin_to_cos", "freq_shift",
             "in_channels", "layers_per_block", "mid_block_scale_factor", "norm_eps", "norm_num_groups", "out_channels",
             "sample_size", "up_block_types", "use_linear_projection"]  # fmt: skip
VAE_KEYS = ["act_fn", "block_out_channels", "down_block_types", "in_channels", "latent_channels", "layers_per_block",
            "norm_num_groups", "out_channels", "sample_size", "up_block_types"]  # fmt: skip
TEXT_KEYS = ["attention_dropout", "bos_token_id", "dropout", "eos_token_id", "hidden_act", "hidden_size",
             "initializer_factor", "initializer_range", "intermediate_size", "layer_norm_eps",
             "max_position_embeddings", "model_type", "num_attention_heads", "num_hidden_layers", "pad_token_id",
             "projection_dim", "torch_dtype", "transformers_version", "vocab_size"]  # fmt: skip
SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}  # fmt: skip
MODEL_INDEX = {
    "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.8.0",
    "feature_extractor": ["transformers", "CLIPFeatureExtractor"], "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"], "requires_safety_checker": False,
}  # fmt: skip
FEATURE_EXTRACTOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}  # fmt: skip
VAE_ATTENTION_OLD = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def tiny_unet(in_channels: int = 9) -> UNet2DConditionModel:
    """SD-2's UNet layout (4 levels, 3 cross-attention, linear projections) at width 32/64."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=1,
        attention_head_dim=(2, 2, 4, 4), cross_attention_dim=TEXT_HIDDEN, use_linear_projection=True,
        norm_num_groups=32,
    )  # fmt: skip


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
        sample_size=64,
    )  # fmt: skip


def write_config(folder: Path, model: Any, keys: list[str], **extra: Any) -> None:
    """``config.json`` with exactly the published file's keys, values from ``model``'s config."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {**extra, **{k: _plain(model.config[k]) for k in keys if k in model.config}}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def write_weights(path: Path, state: dict[str, torch.Tensor], *, pickled: bool) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if pickled:
        torch.save(state, path.with_suffix(".bin"))
    else:
        save_file(state, str(path.with_suffix(".safetensors")))


def write_tokenizer(folder: Path) -> None:
    """SD-2's tokenizer files: vocab.json, merges.txt (a tiny learnt BPE), special_tokens_map.json, config."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = learn_bpe(RS_WORDS)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": "!", "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
              "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size, hidden_size=TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=77, projection_dim=TEXT_HIDDEN, hidden_act="gelu",
            bos_token_id=0, eos_token_id=2, pad_token_id=1,
        )
    )  # fmt: skip


def text_encoder_state(model: CLIPTextModel, *, position_ids: bool) -> dict[str, torch.Tensor]:
    """The weights under transformers-4 names (``text_model.…``), optionally with the ``position_ids`` buffer."""
    state = {(k if k.startswith("text_model.") else "text_model." + k): v for k, v in model.state_dict().items()}
    if position_ids:
        state["text_model.embeddings.position_ids"] = torch.arange(model.config.max_position_embeddings)[None]
    return state


def vae_state(vae: AutoencoderKL, *, old_attention_names: bool) -> dict[str, torch.Tensor]:
    state = vae.state_dict()
    if not old_attention_names:
        return state
    renamed = {}
    for key, value in state.items():
        for new, old in VAE_ATTENTION_OLD.items():
            marker = f".attentions.0.{new}."
            if ".mid_block" in key and marker in key:
                key = key.replace(marker, f".attentions.0.{old}.")
        renamed[key] = value
    return renamed


def write_inpainting_folder(
    dest: Path,
    *,
    seed: int = 0,
    pickled: bool = False,
    model_index: dict[str, Any] | None = None,
    position_ids: bool = True,
    old_vae_names: bool = True,
    diffusers_version: str = "0.8.0",
) -> dict[str, Any]:
    """Write an SD-2 inpainting diffusers folder at ``dest``; returns the models written (for comparisons)."""
    torch.manual_seed(seed)
    unet, vae = tiny_unet(), tiny_vae()
    vocab, _ = learn_bpe(RS_WORDS)
    text = tiny_text_encoder(len(vocab))
    dest.mkdir(parents=True, exist_ok=True)
    index = dict(model_index or MODEL_INDEX)
    (dest / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    meta = {"_class_name": "UNet2DConditionModel", "_diffusers_version": diffusers_version,
            "_name_or_path": "./hf-models/stable-diffusion-v2-inpainting/unet"}  # fmt: skip
    write_config(dest / "unet", unet, UNET_KEYS, **meta)
    write_weights(dest / "unet" / "diffusion_pytorch_model", unet.state_dict(), pickled=pickled)
    meta = {"_class_name": "AutoencoderKL", "_diffusers_version": diffusers_version}
    write_config(dest / "vae", vae, VAE_KEYS, **meta)
    write_weights(dest / "vae" / "diffusion_pytorch_model", vae_state(vae, old_attention_names=old_vae_names),
                  pickled=pickled)  # fmt: skip
    text_dir = dest / "text_encoder"
    text_dir.mkdir(parents=True, exist_ok=True)
    config = {k: _plain(getattr(text.config, k)) for k in TEXT_KEYS if hasattr(text.config, k)}
    config.update(architectures=["CLIPTextModel"], model_type="clip_text_model", torch_dtype="float32",
                  transformers_version="4.24.0")  # fmt: skip
    (text_dir / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
    weights = text_dir / ("pytorch_model" if pickled else "model")
    write_weights(weights, text_encoder_state(text, position_ids=position_ids), pickled=pickled)
    write_tokenizer(dest / "tokenizer")
    (dest / "scheduler").mkdir(parents=True, exist_ok=True)
    (dest / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2) + "\n")
    if "feature_extractor" in index:
        (dest / "feature_extractor").mkdir(parents=True, exist_ok=True)
        (dest / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(FEATURE_EXTRACTOR) + "\n")
    return {"unet": unet, "vae": vae, "text_encoder": text}


def levir_crops(dest: Path, size: int = 64, names: tuple[str, ...] = ("test_2_0000_0000.png", "test_7_0256_0512.png"),
                ) -> Path:  # fmt: skip
    """``dest/A`` and ``dest/label``: a ``size``² crop of real LEVIR t1 images and their building masks, at the
    window of each with the most building pixels (fast tests on real data)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from tests.conftest import crop, shared_file

    for folder in ("A", "label"):
        (dest / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        label = shared_file(f"change/levir_like/label/{name}")
        with rasterio.open(label) as src:
            mask = src.read(1) > 0
        steps = range(0, mask.shape[0] - size + 1, size)
        y, x = max(
            ((y, x) for y in steps for x in steps), key=lambda p: mask[p[0] : p[0] + size, p[1] : p[1] + size].sum()
        )
        window = Window(x, y, size, size)
        crop(shared_file(f"change/levir_like/A/{name}"), dest / "A" / name, window)
        crop(label, dest / "label" / name, window)
        assert np.asarray(mask[y : y + size, x : x + size]).any()
    return dest
