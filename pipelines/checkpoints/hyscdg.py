"""``rsgen model import hyscdg SRC DEST``: HySCDG (Benidir et al., CVPR 2025, hub ``Yanis236/HySCDG``), the
inpainting + semantic-map ControlNet model behind the FSC-180k hybrid change dataset, as an
:class:`~pipelines.controlled.RSControlledPipeline` bundle with one ``mask`` control.

SRC is the hub snapshot: ``HySCDG_Inpainting/`` (a diffusers SD-2 inpainting pipeline folder, read by
:func:`pipelines.checkpoints.sd_inpaint.import_inpainting_folder`) and ``HySCDG_ControlNet/`` (a diffusers
``ControlNetModel``). The authors' ``generate.py`` loads them as ``StableDiffusionControlNetInpaintPipeline.
from_pretrained(model_path, controlnet=ControlNetModel.from_pretrained(controlnet_path))`` with their copy of
that pipeline (``generation/controlnet_inpaint.py``), which differs from diffusers' by not binarising the mask.

Conditioning, as in their code: the ControlNet sees the FLAIR label map coloured by ``src/utils.py``
``convert_to_color`` (``lut_colors``) in [0, 1] and the 4-channel noisy latent (not the UNet's 9 channels);
conditioning scale 1 (``generate.py --conditioning_scale`` default), guidance 7.5, 20 steps (their defaults);
the UNet sees the soft mask as given (card ``soft_mask``) and the masked-image latent (card ``masked_image``
"diffusers": image in [-1, 1] × (1 − mask), as in their ``generation/pipeline_inpaint.py``; their ControlNet
pipeline thresholds that product at mask 0.5, which is the same for the 0/1 masks rsgen's commands pass).
Prompts in their style: "aerial view of building and water <FLAIR image prompt>, high resolution, highly
detailed".
"""

from __future__ import annotations

import logging
from pathlib import Path

from diffusers import ControlNetModel

from pipelines.bundle import ModelCard
from pipelines.checkpoints.common import (
    CheckpointError,
    Importer,
    component_state,
    load_exact,
    save_component,
    write_model_index,
)
from pipelines.checkpoints.sd_inpaint import import_inpainting_folder, model_index_components

logger = logging.getLogger(__name__)

SOURCE = "Yanis236/HySCDG"
INPAINTING_FOLDER = "HySCDG_Inpainting"
CONTROLNET_FOLDER = "HySCDG_ControlNet"
FLAIR_GSD = 0.2  # FLAIR-1 aerial orthophotos (IGN BD ORTHO), the images HySCDG was trained on
LICENSE = (
    "unknown: neither the HySCDG hub repository nor github.com/yb23/HySCDG states a licence; the weights are a "
    "fine-tune of stabilityai/stable-diffusion-2-inpainting (CreativeML Open RAIL++-M)"
)


def load_controlnet(folder: Path, *, allow_pickle: bool, cross_attention_dim: int, latent: int) -> ControlNetModel:
    """The semantic-map ControlNet, every key matched, checked against the inpainting UNet it drives."""
    net = load_exact(ControlNetModel, folder, allow_pickle=allow_pickle,
                     state=component_state(folder, allow_pickle=allow_pickle))  # fmt: skip
    config = net.config
    problems = []
    if config.conditioning_channels != 3:
        problems.append(f"conditioning_channels={config.conditioning_channels} (expected 3: an RGB label map)")
    if config.cross_attention_dim != cross_attention_dim:
        problems.append(f"cross_attention_dim={config.cross_attention_dim} (the UNet's is {cross_attention_dim})")
    if config.in_channels not in (latent, 2 * latent + 1):
        problems.append(f"in_channels={config.in_channels} (expected {latent}, the noisy latent)")
    if problems:
        raise CheckpointError(f"{folder}: not HySCDG's ControlNet for this UNet: {'; '.join(problems)}")
    return net


def run(src: Path, staging: Path, allow_pickle: bool) -> ModelCard:
    missing = [name for name in (INPAINTING_FOLDER, CONTROLNET_FOLDER) if not (src / name).is_dir()]
    if missing:
        raise CheckpointError(
            f"{src}: no {' or '.join(missing)} folder; pass the snapshot of {SOURCE} (it holds {INPAINTING_FOLDER}/ "
            f"and {CONTROLNET_FOLDER}/)"
        )
    parts = import_inpainting_folder(src / INPAINTING_FOLDER, staging, allow_pickle=allow_pickle)
    controlnet = load_controlnet(
        src / CONTROLNET_FOLDER, allow_pickle=allow_pickle,
        cross_attention_dim=parts.unet.config.cross_attention_dim, latent=parts.vae.config.latent_channels,
    )  # fmt: skip
    save_component(controlnet, staging, "controlnet")  # loaded as a MultiControlNetModel of one net
    write_model_index(staging, "RSControlledPipeline", model_index_components(parts, controlnet=True))
    logger.info("HySCDG ControlNet: %d input channels", controlnet.config.in_channels)
    return ModelCard(
        name="HySCDG",
        native_size=parts.native_size,
        gsd_range=(FLAIR_GSD, FLAIR_GSD),
        controls=["mask"],
        palette={"name": "flair", "encoding": "color"},
        inpainting=True,
        soft_mask=True,
        masked_image="diffusers",
        kind="hyscdg",
        source=SOURCE,
        license=LICENSE,
        description=(
            "HySCDG (Benidir, Gonthier, Mallet, CVPR 2025): SD-2 inpainting fine-tuned on FLAIR aerial images "
            "(0.2 m, France) with a ControlNet on FLAIR label maps; imported by `rsgen model import hyscdg`. Use it "
            "for hybrid change pairs (`rsgen change-pairs --mode hybrid`, the 'mask' control is coloured in the "
            "FLAIR palette) and `rsgen inpaint`. Prompts as the authors': 'aerial view of <classes> <scene>, high "
            "resolution, highly detailed'. Checked against the authors' code (github.com/yb23/HySCDG): "
            "generate.py + generation/diffusion.py (inpainting pipeline folder + ControlNetModel folder, "
            "conditioning scale 1, 20 steps, guidance 7.5), generation/controlnet_inpaint.py (mask not binarised, "
            "4-channel latent into the ControlNet, label map in [0, 1]), generation/pipeline_inpaint.py (masked "
            "image = image x (1 - mask)), src/utils.py lut_colors (= the FLAIR colours); hub tree: "
            "HySCDG_Inpainting/ and HySCDG_ControlNet/. Not checked (the hub files were not readable here): their "
            "model_index.json, configs and key names, taken as an SD-2 inpainting pipeline folder "
            "(stabilityai/stable-diffusion-2-inpainting layout, PNDMScheduler) and a diffusers ControlNetModel "
            "with 4 input channels."
        ),
    )


IMPORTER = Importer(
    kind="hyscdg",
    pipeline="RSControlledPipeline",
    run=run,
    help="HySCDG inpainting + FLAIR-map ControlNet (Yanis236/HySCDG: HySCDG_Inpainting/, HySCDG_ControlNet/)",
)
