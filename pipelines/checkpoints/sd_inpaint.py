"""``rsgen model import sd-inpaint SRC DEST``: Stable Diffusion 2 inpainting
(``stabilityai/stable-diffusion-2-inpainting``) as an :class:`~pipelines.controlled.RSControlledPipeline`
bundle without a ControlNet.

SRC is the diffusers folder of the hub repository: ``model_index.json`` (``StableDiffusionInpaintPipeline``),
``unet/`` (9 input channels: noisy latent + mask + masked-image latent), ``vae/``, ``text_encoder/``
(OpenCLIP-H as a transformers ``CLIPTextModel``, 23 layers), ``tokenizer/``, ``scheduler/`` (``PNDMScheduler``)
and ``feature_extractor/`` (only used by diffusers' safety checker, which the repository leaves out and rsgen
does not run). The top-level ``512-inpainting-ema.ckpt`` / ``.safetensors`` (the original LDM checkpoint) is not
read. The folder reader here is shared with the HySCDG importer (its pipeline is an SD-2 inpainting fine-tune
in the same layout).

The bundle inpaints from the prompt alone (``rsgen inpaint``; ``rsgen change-pairs --mode hybrid`` fills the
changed regions from the prompt). Its masked image is formed as SD inpainting was trained (card
``masked_image="diffusers"``: image in [-1, 1] × (1 − mask)).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diffusers
from diffusers import AutoencoderKL, UNet2DConditionModel

from pipelines.bundle import ModelCard
from pipelines.checkpoints.common import (
    SD_COMPONENTS,
    CheckpointError,
    Importer,
    component_state,
    copy_config_files,
    load_exact,
    load_text_encoder,
    native_size,
    save_component,
    vae_key,
    write_model_index,
)

logger = logging.getLogger(__name__)

SOURCE = "stabilityai/stable-diffusion-2-inpainting"
LICENSE = "openrail++"  # CreativeML Open RAIL++-M (the hub repository's licence tag)
# model_index.json component -> the (library, class) names rsgen loads it as
REQUIRED_COMPONENTS = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
    "scheduler": None,  # any diffusers scheduler: its class is read from scheduler_config.json
}


@dataclass(frozen=True)
class InpaintingParts:
    """What :func:`import_inpainting_folder` wrote and read: enough for the caller's model index and card."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    scheduler_class: str
    native_size: tuple[int, int]


def scheduler_class(folder: Path) -> str:
    """The diffusers scheduler class named by ``scheduler/scheduler_config.json`` (checked to exist)."""
    config_file = folder / "scheduler_config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: not found; the scheduler folder needs its config")
    name = json.loads(config_file.read_text()).get("_class_name", "")
    cls = getattr(diffusers, name, None) if name else None
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise CheckpointError(f"{config_file}: _class_name={name!r} is not a diffusers scheduler")
    return name


def read_model_index(folder: Path) -> dict[str, Any]:
    """``model_index.json`` of a diffusers inpainting folder, with the components rsgen needs checked."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise CheckpointError(f"{index_file}: not found; pass the diffusers folder of the inpainting pipeline")
    index = json.loads(index_file.read_text())
    for name, classes in REQUIRED_COMPONENTS.items():
        spec = index.get(name)
        if not (isinstance(spec, list) and len(spec) == 2 and spec[1]):
            raise CheckpointError(f"{index_file}: component {name!r} missing (got {spec!r})")
        if classes and spec[1] not in classes:
            raise CheckpointError(f"{index_file}: {name} is a {spec[1]}; expected {' or '.join(classes)}")
    return index


def import_inpainting_folder(src: Path, staging: Path, *, allow_pickle: bool) -> InpaintingParts:
    """Read a diffusers SD inpainting folder (every key matched) and write its unet, vae, text encoder,
    tokenizer and scheduler into ``staging``."""
    index = read_model_index(src)
    unet = load_exact(UNet2DConditionModel, src / "unet", allow_pickle=allow_pickle,
                      state=component_state(src / "unet", allow_pickle=allow_pickle))  # fmt: skip
    vae = load_exact(AutoencoderKL, src / "vae", allow_pickle=allow_pickle, rename=vae_key,
                     state=component_state(src / "vae", allow_pickle=allow_pickle))  # fmt: skip
    latent = vae.config.latent_channels
    if unet.config.in_channels != 2 * latent + 1:
        raise CheckpointError(
            f"{src / 'unet'}: in_channels={unet.config.in_channels}; an inpainting UNet takes {2 * latent + 1} "
            "(latent + mask + masked-image latent). Is this the inpainting checkpoint?"
        )
    text_encoder = load_text_encoder(src / "text_encoder", allow_pickle=allow_pickle)
    if text_encoder.config.hidden_size != unet.config.cross_attention_dim:
        raise CheckpointError(
            f"{src}: text_encoder hidden_size={text_encoder.config.hidden_size} != unet cross_attention_dim="
            f"{unet.config.cross_attention_dim}; the components come from different models"
        )
    scheduler = scheduler_class(src / "scheduler")
    for module, name in ((unet, "unet"), (vae, "vae"), (text_encoder, "text_encoder")):
        save_component(module, staging, name)
    copy_config_files(src / "tokenizer", staging / "tokenizer")
    copy_config_files(src / "scheduler", staging / "scheduler")
    logger.info("%s: %s with a %d-channel UNet, %s scheduler", src, index["_class_name"], unet.config.in_channels,
                scheduler)  # fmt: skip
    return InpaintingParts(unet, vae, scheduler, native_size(unet, vae))


def model_index_components(parts: InpaintingParts, *, controlnet: bool) -> dict[str, tuple[str, str] | None]:
    """The bundle's model_index.json components (RSControlledPipeline)."""
    return {
        **SD_COMPONENTS,
        "controlnet": ("diffusers", "MultiControlNetModel") if controlnet else None,
        "scheduler": ("diffusers", parts.scheduler_class),
        "metadata_encoder": None,
    }


def run(src: Path, staging: Path, allow_pickle: bool) -> ModelCard:
    parts = import_inpainting_folder(src, staging, allow_pickle=allow_pickle)
    write_model_index(staging, "RSControlledPipeline", model_index_components(parts, controlnet=False))
    return ModelCard(
        name="stable-diffusion-2-inpainting",
        native_size=parts.native_size,
        gsd_range=None,  # a general-purpose model: no remote-sensing resolution it was trained on
        controls=[],
        inpainting=True,
        masked_image="diffusers",
        kind="sd-inpaint",
        source=SOURCE,
        license=LICENSE,
        description=(
            "Stable Diffusion 2 inpainting (Stability AI), imported by `rsgen model import sd-inpaint`: a 9-channel "
            "UNet that sees the mask and the masked image, no ControlNet and no metadata conditioning; it inpaints "
            "from the prompt alone (`rsgen inpaint`, `rsgen change-pairs --mode hybrid`). Not a remote-sensing model. "
            "Checked against public files: model_index.json (StableDiffusionInpaintPipeline: unet, vae, "
            "text_encoder CLIPTextModel, tokenizer CLIPTokenizer, scheduler PNDMScheduler, feature_extractor, "
            "safety_checker null), unet/config.json (in_channels 9, cross_attention_dim 1024, "
            "use_linear_projection, sample_size 64), text_encoder/config.json (hidden_size 1024, 23 layers, gelu), "
            "scheduler_config.json (PNDMScheduler, scaled_linear 0.00085-0.012, epsilon) and diffusers' masked image "
            "(image in [-1, 1] times (mask < 0.5)). Not checked: the weight files' key names (taken as diffusers/"
            "transformers write them; transformers<5 text-encoder names are mapped)."
        ),
    )


IMPORTER = Importer(
    kind="sd-inpaint",
    pipeline="RSControlledPipeline",
    run=run,
    help="Stable Diffusion 2 inpainting (stabilityai/stable-diffusion-2-inpainting, diffusers folder)",
)
