"""``rsgen model import text2earth SRC DEST``: Text2Earth (Liu et al. 2025, hub ``lcybuaa/Text2Earth``).

The published checkpoint is a diffusers folder (``model_index.json`` naming ``Text2EarthDiffusionPipeline``,
``vae``, ``text_encoder``, ``tokenizer``, ``unet``, ``scheduler``, ``feature_extractor``, and the authors' pipeline
file ``pipeline_text2earth_diffusion.py``). Its UNet is a stock ``UNet2DConditionModel`` with
``class_embed_type="timestep"``: the authors' pipeline reads a Google zoom level 10..18 from a
``"{level}_GOOGLE_LEVEL_"`` prompt prefix, strips the prefix before the text encoder, and passes the level as
``class_labels`` (0 in the unconditional half of guidance, and when the prompt has no prefix). rsgen never runs
that file: the bundle is an ``RSText2ImagePipeline`` whose card says ``class_labels="text2earth_level"``, so the
level comes from the sample's GSD (``--gsd``). Every weight is loaded with every key matched and re-saved as
safetensors; the authors' ``.py`` file is not copied.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import diffusers
from diffusers import AutoencoderKL, UNet2DConditionModel

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

SOURCE = "lcybuaa/Text2Earth"
PIPELINE_NAMES = ("Text2EarthDiffusionPipeline", "StableDiffusionPipeline")
NEEDED = SD_COMPONENTS
NOT_FOR_GENERATION = ("feature_extractor", "safety_checker")  # the safety checker's inputs; not imported


# ---------------------------------------------------------------------- helpers shared with diffusionsat
def check_config_keys(model_cls: Any, config: dict[str, Any], where: str) -> None:
    """Every config key must be a constructor argument of ``model_cls`` (diffusers would drop the others)."""
    known = set(inspect.signature(model_cls.__init__).parameters) | set(getattr(model_cls, "_deprecated_kwargs", ()))
    unknown = sorted(k for k in config if not k.startswith("_") and k not in known)
    if unknown:
        raise CheckpointError(
            f"{where}: config key(s) {unknown} are not {model_cls.__name__} options; is this the checkpoint the "
            "import kind expects?"
        )


def load_unet_exact(folder: Path, config: dict[str, Any], *, allow_pickle: bool, state: Any = None) -> Any:
    check_config_keys(UNet2DConditionModel, config, f"{folder}/config.json")
    return load_exact(UNet2DConditionModel, folder, allow_pickle=allow_pickle, config=config, state=state)


def scheduler_class(index: dict[str, Any], root: Path) -> type:
    """The scheduler class ``model_index.json`` names: the one diffusers' ``from_pretrained`` builds."""
    spec = index.get("scheduler")
    name = spec[1] if isinstance(spec, list) and len(spec) == 2 else None
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not issubclass(cls, diffusers.SchedulerMixin):
        raise CheckpointError(f"{root}/model_index.json: scheduler={spec!r} is not a diffusers scheduler")
    return cls


def import_scheduler(root: Path, index: dict[str, Any], staging: Path) -> Any:
    """The scheduler as diffusers builds it (model_index class, scheduler_config.json values, so the
    ``prediction_type`` is kept), saved with its config only."""
    cls = scheduler_class(index, root)
    config = read_json(root / "scheduler" / "scheduler_config.json")
    scheduler = cls.from_config(config)
    if config.get("_class_name", cls.__name__) != cls.__name__:
        logger.info(
            "%s: model_index.json names %s, scheduler_config.json %s; using %s (what diffusers loads)",
            root, cls.__name__, config.get("_class_name"), cls.__name__,
        )  # fmt: skip
    scheduler.save_pretrained(staging / "scheduler")
    return scheduler


def import_sd_components(root: Path, staging: Path, index: dict[str, Any], *, allow_pickle: bool) -> None:
    """VAE, CLIP text encoder + tokenizer and scheduler of a Stable-Diffusion-layout folder, into ``staging``."""
    for name, (library, cls_name) in NEEDED.items():
        if name == "unet":
            continue
        spec = index.get(name)
        if not isinstance(spec, list) or spec[1] not in (cls_name, cls_name + "Fast"):
            raise CheckpointError(f"{root}/model_index.json: {name}={spec!r}; expected [{library!r}, {cls_name!r}]")
    save_component(load_exact(AutoencoderKL, root / "vae", allow_pickle=allow_pickle, rename=vae_key), staging, "vae")
    save_component(load_text_encoder(root / "text_encoder", allow_pickle=allow_pickle), staging, "text_encoder")
    copy_config_files(root / "tokenizer", staging / "tokenizer")
    import_scheduler(root, index, staging)


def check_components(root: Path, index: dict[str, Any], *, unet_folder: bool = True) -> None:
    """Every non-null component of ``model_index.json`` is one rsgen imports or knowingly leaves out, and the
    component folders are there (``unet/`` only with ``unet_folder``)."""
    known = set(NEEDED) | {"scheduler", *NOT_FOR_GENERATION}
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        if name not in known and spec != [None, None]:
            raise CheckpointError(f"{root}/model_index.json: component {name}={spec!r} is not one rsgen imports")
        if name in NOT_FOR_GENERATION and spec != [None, None]:
            logger.info("%s: %s (%s) is not needed for generation; not imported", root, name, spec[1])
    folders = [n for n in (*NEEDED, "scheduler") if unet_folder or n != "unet"]
    missing = sorted(n for n in folders if not (root / n).is_dir())
    if missing:
        raise CheckpointError(f"{root}: component folder(s) {missing} not found; is SRC the checkpoint's folder?")


def bundle_components(scheduler: str, metadata_encoder: tuple[str, str] | None) -> dict[str, Any]:
    return {**NEEDED, "scheduler": ("diffusers", scheduler), "metadata_encoder": metadata_encoder}


# ---------------------------------------------------------------------- text2earth
def run(src: Path, staging: Path, allow_pickle: bool) -> ModelCard:
    if not src.is_dir():
        raise CheckpointError(f"SRC={str(src)!r}: expected the downloaded {SOURCE} folder (with model_index.json)")
    index = read_json(src / "model_index.json")
    if index.get("_class_name") not in PIPELINE_NAMES:
        raise CheckpointError(
            f"{src}/model_index.json: _class_name={index.get('_class_name')!r}; expected one of {PIPELINE_NAMES}"
        )
    check_components(src, index)
    unet_config = read_json(src / "unet" / "config.json")
    if unet_config.get("class_embed_type") != "timestep":
        raise CheckpointError(
            f"{src}/unet/config.json: class_embed_type={unet_config.get('class_embed_type')!r}; Text2Earth's UNet has "
            "'timestep' (its resolution level); is this the Text2Earth checkpoint?"
        )
    if unet_config.get("in_channels", 4) != 4:
        raise CheckpointError(
            f"{src}/unet/config.json: in_channels={unet_config.get('in_channels')}; this looks like "
            "Text2Earth-inpainting, which rsgen does not import (only the text-to-image Text2Earth)"
        )
    unet = load_unet_exact(src / "unet", unet_config, allow_pickle=allow_pickle)
    save_component(unet, staging, "unet")
    import_sd_components(src, staging, index, allow_pickle=allow_pickle)
    scheduler = scheduler_class(index, src)
    write_model_index(staging, "RSText2ImagePipeline", bundle_components(scheduler.__name__, None))
    skipped = sorted(p.name for p in src.glob("*.py"))
    if skipped:
        logger.info("%s: not copied (rsgen never runs checkpoint code): %s", src, ", ".join(skipped))
    prediction = read_json(staging / "scheduler" / "scheduler_config.json").get("prediction_type")
    return ModelCard(
        name="text2earth",
        native_size=(256, 256),
        gsd_range=(0.5, 128.0),
        class_labels="text2earth_level",
        kind="text2earth",
        source=SOURCE,
        license="apache-2.0",
        description=(
            "Text2Earth (Liu et al. 2025, IEEE GRSM), imported by rsgen. Conditioning: the prompt (CLIP text "
            "encoder, prefix-free) and the Google zoom level nearest --gsd (level = 17 - log2(gsd), 10..18 = "
            "128..0.5 m/px) as the UNet's class_labels (class_embed_type 'timestep'); level 0 in the unconditional "
            "branch and for samples without a GSD. lat/lon/date/cloud/sensor do not condition it. "
            f"Scheduler {scheduler.__name__} (model_index.json), prediction_type={prediction!r} (scheduler config). "
            "Checked against the authors' code (Chen-Yang-Liu/Text2Earth, src/diffusers/pipelines/stable_diffusion/"
            "pipeline_text2earth_diffusion.py): prefix parsing and stripping, class_labels = [0]*B + levels under "
            "guidance, 0 without a prefix; README: 256x256 usage, resolution = 2^(17 - level). Hub file list of "
            "lcybuaa/Text2Earth (folders, pipeline file, apache-2.0). Not checked against the real files: the exact "
            "config values (SD-2-base-like, OpenCLIP ViT-H text tower per third-party analysis) - they are read "
            "from the checkpoint, every weight key matched."
        ),
    )


IMPORTER = Importer(
    kind="text2earth",
    pipeline="RSText2ImagePipeline",
    run=run,
    help="Text2Earth (hub lcybuaa/Text2Earth): text-to-image with the GSD as its resolution level (--gsd)",
)

__all__ = ["IMPORTER", "run"]
