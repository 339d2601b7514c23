"""A config-exact tiny replica of a published DiffusionSat single-image checkpoint (samar-khanna/DiffusionSat).

Layout of the training output the authors published (``train_text_to_image.py`` + notebooks/single-image.ipynb):
``finetune_sd21_sn-satlas-fmow_snr5_md7norm_bs64/`` with the Stable-Diffusion-2.1 pipeline folder
(model_index.json ``StableDiffusionPipeline``, vae, text_encoder, tokenizer, scheduler, feature_extractor) and
``checkpoint-<step>/unet`` holding the ``SatUNet`` (config ``_class_name: SatUNet`` with every SatUNet argument,
``use_metadata``, ``num_metadata=7``), beside accelerate's own state files. diffusers 0.17 / transformers of 2023
saved pickles (``.bin``) by default, and CLIP text weights still carried ``position_ids``; the replica does too.
The SatUNet state dict is SD's UNet keys plus ``metadata_embedding.{0..6}.linear_{1,2}.{weight,bias}``
(``nn.ModuleList`` of ``TimestepEmbedding``); widths are shrunk, weights random.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.models.embeddings import TimestepEmbedding
from safetensors.torch import save_file
from torch import nn

from tests.replica_text2earth import tiny_sd2_unet, write_sd_folder

NAME = "finetune_sd21_sn-satlas-fmow_snr5_md7norm_bs64"
STEP = 150000
SCHEDULER_CONFIG = {  # stable-diffusion-2-1 (768, v-prediction)
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.8.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SATUNET_ARGS = (  # SatUNet.__init__ (diffusionsat/sat_unet.py), in order
    "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift",
    "down_block_types", "mid_block_type", "up_block_types", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "attention_head_dim", "dual_cross_attention", "use_linear_projection",
    "class_embed_type", "num_class_embeds", "upcast_attention", "resnet_time_scale_shift", "time_embedding_type",
    "timestep_post_act", "time_cond_proj_dim", "conv_in_kernel", "conv_out_kernel", "use_metadata", "num_metadata",
)  # fmt: skip


def satunet_state(seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """(SatUNet config, state dict): the SD backbone's keys plus the 7 metadata TimestepEmbeddings."""
    torch.manual_seed(seed + 2)
    backbone = tiny_sd2_unet(class_embed_type=None)
    channels = backbone.config.block_out_channels[0]
    metadata = nn.ModuleList(TimestepEmbedding(channels, channels * 4) for _ in range(7))
    state = dict(backbone.state_dict())
    state.update({f"metadata_embedding.{k}": v for k, v in metadata.state_dict().items()})
    config = {"_class_name": "SatUNet", "_diffusers_version": "0.17.0.dev0"}
    config.update({k: backbone.config[k] for k in SATUNET_ARGS[:-2]})
    config.update(use_metadata=True, num_metadata=7, upcast_attention=True)
    return config, state


def write_satunet(folder: Path, config: dict, state: dict[str, torch.Tensor], *, safe: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.contiguous() for k, v in state.items()}
    if safe:
        save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    else:
        torch.save(tensors, folder / "diffusion_pytorch_model.bin")
    return folder


def build_diffusionsat_replica(parent: Path, *, safe: bool = False, seed: int = 0, extra: dict | None = None) -> Path:
    """The replica folder ``parent/NAME`` (pickled .bin weights unless ``safe``); ``extra`` tensors are added to the
    SatUNet's state dict (for the unmatched-key test)."""
    root = parent / NAME
    root.mkdir(parents=True)
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.17.0.dev0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    write_sd_folder(root, None, index, SCHEDULER_CONFIG, safe=safe, seed=seed)
    if not safe:  # transformers of 2023 saved the position_ids buffer with the CLIP text weights
        text = root / "text_encoder" / "pytorch_model.bin"
        weights = torch.load(text, weights_only=True)
        weights["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
        torch.save(weights, text)
    config, state = satunet_state(seed)
    state.update(extra or {})
    checkpoint = root / f"checkpoint-{STEP}"
    write_satunet(checkpoint / "unet", config, state, safe=safe)
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl", "scaler.pt"):  # accelerate's state
        (checkpoint / name).write_bytes(b"accelerate training state: never read by the importer")
    return root
