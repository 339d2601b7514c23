"""``rsgen model import geosynth SRC DEST``: GeoSynth (Sastry et al., CVPRW EarthVision 2024; ``mvrl/GeoSynth``).

The published hub repos ``MVRL/GeoSynth-OSM``, ``MVRL/GeoSynth-SAM`` and ``MVRL/GeoSynth-Canny`` each hold only a
diffusers ``ControlNetModel`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, plus the LDM ``.ckpt`` it
was converted from); their model cards load it onto ``stabilityai/stable-diffusion-2-1-base`` with
``StableDiffusionControlNetPipeline``. So SRC is one of these layouts::

    SRC/                                 SRC = the ControlNet folder, the base beside it:
      base/   (an SD-2.1-base snapshot)    parent/
      controlnet/ (a GeoSynth-* snapshot)    GeoSynth-OSM/            <- SRC
                                             stable-diffusion-2-1-base/  (or base/)

The base is any diffusers SD-2.1-base-architecture pipeline folder (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ``tokenizer/``, ``scheduler/``): ``stabilityai/stable-diffusion-2-1-base`` as in the authors'
example, or ``MVRL/GeoSynth`` (their text-to-image fine-tune, same layout). The control (``osm``, ``sam`` or
``canny``) is read from the ControlNet folder's name, its files (``geosynth-osm-text.ckpt``, ...) or its README.

The bundle is an ``RSControlledPipeline`` (4-channel UNet + one ControlNet) whose control takes the hint as RGB in
[0, 1], as GeoSynth's training data loader (``scripts/data.py``: ``hint = RGB / 255``) and diffusers' ControlNet
pipeline do. ``osm`` hints are OSM map tiles: ``rsgen generate --vectors ...`` renders them from vector layers
(:mod:`conditions.osm_render`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

from pipelines.bundle import ModelCard
from pipelines.checkpoints.common import (
    SD_COMPONENTS,
    CheckpointError,
    Importer,
    copy_config_files,
    load_exact,
    load_text_encoder,
    native_size,
    save_component,
    vae_key,
    write_model_index,
)

logger = logging.getLogger(__name__)

KIND = "geosynth"
CONTROLS = ("osm", "sam", "canny")
HUB = {"osm": "MVRL/GeoSynth-OSM", "sam": "MVRL/GeoSynth-SAM", "canny": "MVRL/GeoSynth-Canny"}
BASE_NAMES = ("stable-diffusion-2-1-base", "base")
# Words that name each variant in folder names, file names (geosynth-osm-text.ckpt, geosynth_sam.ckpt,
# geosynth_canny_text-v1.ckpt) and model cards ("... given OpenStreetMap Images", "... given Canny edge images").
VARIANT_WORDS = {"osm": ("osm", "openstreetmap"), "sam": ("sam", "segment anything"), "canny": ("canny",)}
# diffusers' pre-0.14 VAE attention names, which the stabilityai/stable-diffusion-2-1-base VAE file still uses.
DESCRIPTION = (
    "GeoSynth (Sastry et al., CVPRW 2024): SD-2.1-base + a ControlNet trained on {n}k satellite images with LLaVA "
    "captions; control '{control}'. Prompts are captions such as 'Satellite image features a city neighborhood'. "
    "Checked against public files: hub model cards of MVRL/GeoSynth-OSM/-SAM/-Canny (ControlNet-only repos: "
    "config.json "
    "+ diffusion_pytorch_model.safetensors, loaded onto stabilityai/stable-diffusion-2-1-base), mvrl/GeoSynth "
    "scripts/data.py (hint = RGB/255, target in [-1, 1]), scripts/models/cldm_v21.yaml (SD-2.1 UNet: 320 channels, "
    "mult 1-2-4-4, 64-channel heads, linear transformers, context 1024, hint_channels 3, eps-prediction), "
    "scripts/tool_convert_to_diffusers.sh (diffusers' convert_original_controlnet_to_diffusers). Not checked (no "
    "download): the exact config.json values and key names of the released files (a key or shape that differs "
    "fails the import by name), the GSD of the training tiles (the README's example is an OSM zoom-18 tile; "
    "gsd_range is an estimate), and the Mapbox style of the OSM hints (rsgen renders openstreetmap-carto colours)."
)


def _is_controlnet(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "ControlNetModel"
    except json.JSONDecodeError:
        return False


def locate(src: Path) -> tuple[Path, Path]:
    """(base pipeline folder, ControlNet folder) of ``src`` in one of the documented layouts."""
    if (src / "controlnet").is_dir():
        controlnet, bases = src / "controlnet", [src / "base"]
    elif _is_controlnet(src):
        controlnet, bases = src, [src.parent / name for name in BASE_NAMES]
    else:
        raise CheckpointError(
            f"SRC={str(src)!r}: expected a GeoSynth ControlNet folder (config.json of a ControlNetModel, e.g. a "
            "MVRL/GeoSynth-OSM snapshot) with the SD-2.1-base snapshot beside it (stable-diffusion-2-1-base/), or a "
            "folder holding controlnet/ and base/"
        )
    if not _is_controlnet(controlnet):
        raise CheckpointError(f"{controlnet}: no config.json of a ControlNetModel; is this a GeoSynth-* snapshot?")
    base = next((b for b in bases if (b / "model_index.json").is_file()), None)
    if base is None:
        raise CheckpointError(
            f"{controlnet}: GeoSynth ships only the ControlNet; the SD-2.1-base pipeline it runs on was not found "
            f"(looked for model_index.json in {', '.join(str(b) for b in bases)}); download "
            "stabilityai/stable-diffusion-2-1-base there"
        )
    return base, controlnet


def _mentions(text: str) -> set[str]:
    text = text.lower()
    return {
        name for name, words in VARIANT_WORDS.items()
        if any(re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", text) for w in words)
    }  # fmt: skip


def control_name(controlnet: Path) -> str:
    """The variant of a GeoSynth ControlNet folder: from its path, then its file names, then its README."""
    readme = controlnet / "README.md"
    sources = [
        ("folder name", " ".join(controlnet.resolve().parts[-4:])),
        ("file names", " ".join(p.name for p in controlnet.iterdir())),
        ("README.md", readme.read_text(errors="replace") if readme.is_file() else ""),
    ]
    for where, text in sources:
        found = _mentions(text.replace("_", " ").replace("-", " "))
        if len(found) == 1:
            return found.pop()
        if found:
            raise CheckpointError(f"{controlnet}: its {where} name several GeoSynth controls {sorted(found)}")
    raise CheckpointError(
        f"{controlnet}: cannot tell which GeoSynth ControlNet this is ({'/'.join(CONTROLS)}); name its folder after "
        "the hub repo (GeoSynth-OSM, GeoSynth-SAM or GeoSynth-Canny)"
    )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _check_pair(unet: UNet2DConditionModel, controlnet: ControlNetModel, text_hidden: int, folder: Path) -> None:
    """The ControlNet must match the base it is added to (SD-2.1: context 1024, channels 320-640-1280-1280)."""
    for key in ("block_out_channels", "cross_attention_dim", "layers_per_block"):
        mine, theirs = _plain(controlnet.config[key]), _plain(unet.config[key])
        if mine != theirs:
            raise CheckpointError(
                f"{folder}: ControlNet {key}={mine} but the base UNet has {theirs}; GeoSynth's ControlNets need the "
                "SD-2.1-base architecture"
            )
    if unet.config.cross_attention_dim != text_hidden:
        raise CheckpointError(
            f"unet cross_attention_dim={unet.config.cross_attention_dim} but the text encoder's hidden size is "
            f"{text_hidden}; the base folder mixes models"
        )
    if controlnet.config.conditioning_channels != 3:
        raise CheckpointError(f"{folder}: conditioning_channels={controlnet.config.conditioning_channels}; expected 3")
    if unet.config.in_channels != 4:
        raise CheckpointError(f"unet in_channels={unet.config.in_channels}: expected 4 (a generation UNet)")


def run(src: Path, staging: Path, allow_pickle: bool) -> ModelCard:
    base, cn_folder = locate(src)
    control = control_name(cn_folder)
    logger.info("geosynth: base %s, ControlNet %s (control %r)", base, cn_folder, control)
    unet = load_exact(UNet2DConditionModel, base / "unet", allow_pickle=allow_pickle)
    vae = load_exact(AutoencoderKL, base / "vae", allow_pickle=allow_pickle, rename=vae_key)
    text_encoder = load_text_encoder(base / "text_encoder", allow_pickle=allow_pickle)
    controlnet = load_exact(ControlNetModel, cn_folder, allow_pickle=allow_pickle)
    _check_pair(unet, controlnet, text_encoder.config.hidden_size, cn_folder)
    scheduler_config = base / "scheduler" / "scheduler_config.json"
    if not scheduler_config.is_file():
        raise CheckpointError(f"{scheduler_config}: not found; the base pipeline needs its scheduler")
    scheduler_class = json.loads(scheduler_config.read_text()).get("_class_name", "PNDMScheduler")
    prediction = json.loads(scheduler_config.read_text()).get("prediction_type", "epsilon")
    if prediction != "epsilon":
        logger.warning("geosynth: the base's scheduler predicts %r; GeoSynth was trained on SD-2.1-base (epsilon)",
                       prediction)  # fmt: skip

    # One ControlNet: MultiControlNetModel loads it from controlnet/ (a second one would be controlnet_1/).
    for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("controlnet", controlnet)):
        save_component(module, staging, name)
    copy_config_files(base / "tokenizer", staging / "tokenizer")
    copy_config_files(base / "scheduler", staging / "scheduler")
    write_model_index(staging, "RSControlledPipeline", {
        **SD_COMPONENTS, "controlnet": ("diffusers", "MultiControlNetModel"),
        "scheduler": ("diffusers", scheduler_class), "metadata_encoder": None,
    })  # fmt: skip
    return ModelCard(
        name=f"geosynth-{control}",
        native_size=native_size(unet, vae),
        gsd_range=(0.2, 0.6),
        controls=[control],
        kind=KIND,
        source=f"{HUB[control]} + {base.name} (stabilityai/stable-diffusion-2-1-base per the GeoSynth model card)",
        description=DESCRIPTION.format(n=44, control=control),
        license="Apache-2.0 (GeoSynth ControlNet); CreativeML Open RAIL++-M (stable-diffusion-2-1-base)",
    )


IMPORTER = Importer(
    kind=KIND,
    pipeline="RSControlledPipeline",
    run=run,
    help="GeoSynth-OSM/-SAM/-Canny ControlNet (MVRL) + its SD-2.1-base: SRC = the ControlNet folder with "
    "stable-diffusion-2-1-base/ beside it, or a folder with controlnet/ and base/",
)
