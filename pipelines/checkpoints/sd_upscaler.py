"""``rsgen model import sd-upscaler SRC DEST``: Stable Diffusion's ×4 upscaler as an rsgen SR bundle.

SRC is the diffusers snapshot of ``stabilityai/stable-diffusion-x4-upscaler`` (model_index.json of a
``StableDiffusionUpscalePipeline`` with vae, text_encoder, tokenizer, unet, scheduler and
low_res_scheduler folders; the root's single-file ``x4-upscaler-ema`` checkpoint is not read). The bundle
is an ``RSSuperResolutionPipeline`` without a ControlNet and with the ``low_res_scheduler``: it conditions
as diffusers' upscale pipeline does (the LR image noised to ``noise_level`` concatenated to the latent,
the noise level as the UNet's class label) and runs through ``rsgen sr --scale 4``.

Conversions, each what diffusers does on load: the VAE's deprecated mid-block attention names
(``query``/``key``/``value``/``proj_attn``, diffusers 0.9) become ``to_q``/``to_k``/``to_v``/``to_out.0``;
the text encoder's saved ``position_ids`` buffer (a fixed arange transformers rebuilds) is dropped and its
``text_model.`` key prefix stripped where the installed transformers (5) no longer has it; a
VAE config without ``scaling_factor`` (the first snapshot) gets the model's 0.08333.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel

from core.atomic import atomic_write_text
from pipelines.bundle import ModelCard
from pipelines.checkpoints.common import (
    SD_COMPONENTS,
    CheckpointError,
    Importer,
    copy_config_files,
    load_exact,
    load_text_encoder,
    read_json,
    save_component,
    vae_key,
    write_model_index,
)

logger = logging.getLogger(__name__)

KIND = "sd-upscaler"
SOURCE = "stabilityai/stable-diffusion-x4-upscaler"
LICENSE = "CreativeML Open RAIL++-M"
SOURCE_PIPELINE = "StableDiffusionUpscalePipeline"
SCALING_FACTOR = 0.08333  # x4-upscaling.yaml scale_factor; diffusers forces it for this pipeline
DEFAULT_MAX_NOISE_LEVEL = 350  # x4-upscaling.yaml low_scale_config.max_noise_level
SCALE = 4  # the VAE's three levels: the latent (and the LR) is a quarter of the output
COMPONENTS = {  # name -> (library, class) in the source's model_index.json; the scheduler class may vary
    **SD_COMPONENTS,
    "scheduler": ("diffusers", None),
    "low_res_scheduler": ("diffusers", "DDPMScheduler"),
}


def _check_index(src: Path) -> dict[str, Any]:
    if src.is_file():
        raise CheckpointError(
            f"SRC={str(src)!r} is a file; pass the diffusers snapshot folder of {SOURCE} (the one with "
            "model_index.json), not the single-file x4-upscaler-ema checkpoint"
        )
    index = read_json(src / "model_index.json")
    if index.get("_class_name") != SOURCE_PIPELINE:
        raise CheckpointError(
            f"{src / 'model_index.json'}: _class_name={index.get('_class_name')!r}, expected {SOURCE_PIPELINE!r}; "
            f"is this a snapshot of {SOURCE}?"
        )
    for name, (library, cls) in COMPONENTS.items():
        spec = index.get(name)
        if not isinstance(spec, list) or len(spec) != 2 or spec[0] != library or (cls and spec[1] != cls):
            raise CheckpointError(
                f"{src / 'model_index.json'}: {name}={spec!r}, expected [{library!r}, {cls or 'a scheduler class'!r}]"
            )
    return index


def _load_vae(folder: Path, allow_pickle: bool) -> AutoencoderKL:
    config = read_json(folder / "config.json")
    factor = config.get("scaling_factor")
    if factor != SCALING_FACTOR:
        if factor is not None:  # diffusers' upscale pipeline overrides it too
            logger.warning("%s: scaling_factor=%s; using the x4 upscaler's %s", folder, factor, SCALING_FACTOR)
        config["scaling_factor"] = SCALING_FACTOR
    vae = load_exact(AutoencoderKL, folder, allow_pickle=allow_pickle, config=config, rename=vae_key)
    levels = len(vae.config.block_out_channels)
    if 2 ** (levels - 1) != SCALE or vae.config.in_channels != 3 or vae.config.out_channels != 3:
        raise CheckpointError(
            f"{folder}: an RGB VAE with 3 levels (×{SCALE}) expected, got {levels} levels and "
            f"{vae.config.in_channels}/{vae.config.out_channels} channels"
        )
    return vae


def _load_unet(folder: Path, allow_pickle: bool, vae: AutoencoderKL, max_noise_level: int) -> UNet2DConditionModel:
    unet = load_exact(UNet2DConditionModel, folder, allow_pickle=allow_pickle)
    latent, bands = vae.config.latent_channels, vae.config.in_channels
    if unet.config.in_channels != latent + bands or unet.config.out_channels != latent:
        raise CheckpointError(
            f"{folder}: in/out channels {unet.config.in_channels}/{unet.config.out_channels}; the ×4 upscaler's "
            f"UNet takes the latent plus the LR image ({latent} + {bands}) and predicts {latent}"
        )
    classes = unet.config.num_class_embeds
    if unet.config.class_embed_type is not None or not classes or classes <= max_noise_level:
        raise CheckpointError(
            f"{folder}: num_class_embeds={classes!r} (class_embed_type={unet.config.class_embed_type!r}); the "
            f"noise level 0..{max_noise_level} needs a class embedding with more entries"
        )
    return unet


def _check_low_res_scheduler(src: Path) -> None:
    config = read_json(src / "low_res_scheduler" / "scheduler_config.json")
    if config.get("_class_name") != "DDPMScheduler":
        raise CheckpointError(
            f"{src / 'low_res_scheduler'}: _class_name={config.get('_class_name')!r}, expected DDPMScheduler"
        )


def _description(max_noise_level: int, prediction: str) -> str:
    return (
        "Stable Diffusion x4 upscaler (Rombach & Esser, Stability AI), imported from the diffusers snapshot of "
        f"{SOURCE}: text-guided latent ×4 upscaling trained on 512x512 crops of LAION photos (>2048 px), not on "
        "remote-sensing imagery, so it invents plausible photographic detail, not sensor-true detail. Conditioning "
        "as diffusers' StableDiffusionUpscalePipeline: the LR RGB image in [-1, 1] is noised by low_res_scheduler "
        f"(DDPM) to noise_level (default 20, 0..{max_noise_level}) and concatenated to the latent (7-channel UNet), "
        "the noise level is the UNet's class label (num_class_embeds), the text prompt goes through the OpenCLIP "
        f"text encoder; {prediction} prediction; VAE scaling_factor 0.08333; the VAE decodes 4x the LR-sized "
        "latent, so `rsgen sr` takes --scale 4 only. Checked against the hub files (model_index.json, unet/vae/"
        "text_encoder config.json, tokenizer and scheduler configs) and Stability-AI/stablediffusion "
        "configs/stable-diffusion/x4-upscaling.yaml; outputs match diffusers' pipeline on a tiny replica. Not "
        "checked here: the real weights (tested on a config-exact tiny replica with random weights) and whether the "
        "real safetensors use the deprecated VAE attention names or keep position_ids (both forms are accepted)."
    )


def run(src: Path, staging: Path, allow_pickle: bool) -> ModelCard:
    index = _check_index(src)
    max_noise_level = int(index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL))
    _check_low_res_scheduler(src)
    scheduler_cls = index["scheduler"][1]
    prediction = read_json(src / "scheduler" / "scheduler_config.json").get("prediction_type", "epsilon")

    vae = _load_vae(src / "vae", allow_pickle)
    unet = _load_unet(src / "unet", allow_pickle, vae, max_noise_level)
    text_encoder = load_text_encoder(src / "text_encoder", allow_pickle=allow_pickle)
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise CheckpointError(
            f"text_encoder hidden_size={text_encoder.config.hidden_size} must equal the unet's cross_attention_dim="
            f"{unet.config.cross_attention_dim}"
        )
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        save_component(module, staging, name)
    for name in ("tokenizer", "scheduler", "low_res_scheduler"):
        copy_config_files(src / name, staging / name)
    index_path = write_model_index(staging, "RSSuperResolutionPipeline", {
        **SD_COMPONENTS, "controlnet": None, "scheduler": ("diffusers", scheduler_cls),
        "metadata_encoder": None, "low_res_scheduler": COMPONENTS["low_res_scheduler"],
    })  # fmt: skip
    bundle_index = json.loads(index_path.read_text())
    bundle_index["max_noise_level"] = max_noise_level  # the pipeline's config, as in the source's model_index
    atomic_write_text(index_path, json.dumps(bundle_index, indent=2) + "\n")
    native = unet.config.sample_size * SCALE  # output pixels: 128 latent (LR) pixels → 512
    return ModelCard(
        name="stable-diffusion-x4-upscaler",
        pipeline="RSSuperResolutionPipeline",
        native_size=(native, native),
        gsd_range=None,  # trained on photos, not tied to a ground sampling distance
        bands=["red", "green", "blue"],
        kind=KIND,
        source=SOURCE,
        description=_description(max_noise_level, prediction),
        license=LICENSE,
    )


IMPORTER = Importer(
    kind=KIND,
    pipeline="RSSuperResolutionPipeline",
    run=run,
    help=f"Stable Diffusion x4 upscaler ({SOURCE}, diffusers folder) for `rsgen sr --scale 4`",
)
