"""A config-exact tiny replica of the ``Yanis236/HySCDG`` hub snapshot.

Layout checked against the hub tree (``HySCDG_ControlNet/``, ``HySCDG_Inpainting/``, README.md) and the
authors' loaders (github.com/yb23/HySCDG ``generation/diffusion.py``: ``ControlNetModel.from_pretrained`` on the
ControlNet folder, ``StableDiffusionControlNetInpaintPipeline.from_pretrained`` on the pipeline folder; a
third-party script loads exactly these two folder names). Assumed (the hub files were not readable here): the
inpainting folder is an SD-2 inpainting pipeline saved by a diffusers 0.2x ``save_pretrained`` (its
model_index.json, full configs, today's key names, a transformers-4 text encoder without the ``position_ids``
buffer) and the ControlNet a diffusers ``ControlNetModel`` with 4 input channels (what their pipeline feeds it),
3 conditioning channels and the UNet's cross-attention width. Random weights; the ControlNet's zero convolutions
(and its conditioning embedding's output convolution) are randomised so that the label map visibly changes the output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel

from pipelines.tiny_tokenizer import RS_WORDS, learn_bpe
from tests.replica_sd_inpaint import (
    FEATURE_EXTRACTOR,
    SCHEDULER_CONFIG,
    TEXT_KEYS,
    _plain,
    text_encoder_state,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
    write_tokenizer,
    write_weights,
)

DIFFUSERS_VERSION = "0.25.0"
MODEL_INDEX = {
    "_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": DIFFUSERS_VERSION,
    "feature_extractor": ["transformers", "CLIPImageProcessor"], "image_encoder": [None, None],
    "requires_safety_checker": False, "safety_checker": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
}  # fmt: skip


def tiny_controlnet() -> ControlNetModel:
    """SD-2-shaped ControlNet on the 4-channel latent, RGB label map conditioning."""
    net = ControlNetModel.from_unet(tiny_unet(in_channels=4), conditioning_embedding_out_channels=(16, 16, 32, 32))
    for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
        torch.nn.init.normal_(conv.weight, std=0.2)
    torch.nn.init.normal_(net.controlnet_cond_embedding.conv_out.weight, std=0.5)
    return net


def _save(model: Any, folder: Path, *, pickled: bool) -> None:
    model.save_pretrained(folder, safe_serialization=not pickled)
    config = json.loads((folder / "config.json").read_text())
    config["_diffusers_version"] = DIFFUSERS_VERSION
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_hyscdg_snapshot(root: Path, *, seed: int = 0, pickled: bool = False) -> dict[str, Any]:
    """Write ``root/HySCDG_Inpainting`` and ``root/HySCDG_ControlNet``; returns the models written."""
    torch.manual_seed(seed)
    unet, vae = tiny_unet(), tiny_vae()
    vocab, _ = learn_bpe(RS_WORDS)
    text = tiny_text_encoder(len(vocab))
    controlnet = tiny_controlnet()
    pipe = root / "HySCDG_Inpainting"
    pipe.mkdir(parents=True, exist_ok=True)
    (pipe / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    _save(unet, pipe / "unet", pickled=pickled)
    _save(vae, pipe / "vae", pickled=pickled)
    text_dir = pipe / "text_encoder"
    text_dir.mkdir(parents=True, exist_ok=True)
    config = {k: _plain(getattr(text.config, k)) for k in TEXT_KEYS if hasattr(text.config, k)}
    config.update(architectures=["CLIPTextModel"], model_type="clip_text_model", torch_dtype="float32",
                  transformers_version="4.36.2")  # fmt: skip
    (text_dir / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
    write_weights(text_dir / ("pytorch_model" if pickled else "model"), text_encoder_state(text, position_ids=False),
                  pickled=pickled)  # fmt: skip
    write_tokenizer(pipe / "tokenizer")
    (pipe / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = {**SCHEDULER_CONFIG, "_diffusers_version": DIFFUSERS_VERSION, "prediction_type": "epsilon",
                 "timestep_spacing": "leading"}  # fmt: skip
    (pipe / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
    (pipe / "feature_extractor").mkdir(parents=True, exist_ok=True)
    (pipe / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(FEATURE_EXTRACTOR) + "\n")
    _save(controlnet, root / "HySCDG_ControlNet", pickled=pickled)
    (root / "README.md").write_text("HySCDG generation model (Stable Diffusion inpainting + ControlNet)\n")
    return {"unet": unet, "vae": vae, "text_encoder": text, "controlnet": controlnet}
