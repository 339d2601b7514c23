"""``rsgen model import diffusionsat SRC DEST``: DiffusionSat (Khanna et al., ICLR 2024, ``samar-khanna/DiffusionSat``).

The published single-image checkpoints (Zenodo records 13751498 / 13756199, e.g.
``finetune_sd21_sn-satlas-fmow_snr5_md7norm_bs64.zip``) are training output folders: a Stable-Diffusion-2.1
pipeline folder (``model_index.json``, ``vae``, ``text_encoder``, ``tokenizer``, ``scheduler``) plus accelerate
checkpoints ``checkpoint-<step>/unet`` holding the ``SatUNet`` (the authors' notebook loads
``checkpoint-150000/unet``). SRC is that folder (or the .zip itself).

``SatUNet`` is SD-2.1's UNet plus ``metadata_embedding.{0..6}``: seven ``TimestepEmbedding(320, 1280)`` over
the UNet's own sinusoidal projection of ``[lon, lat, gsd, cloud, year, month, day]`` (normalised to 0–1000),
summed into the time embedding right after the (absent) class embedding. A stock ``UNet2DConditionModel``
would drop those weights silently, so the importer splits them off into a
:class:`conditions.metadata_encoder.DiffusionSatMetadataEncoder` (same key names) and gives the UNet
``class_embed_type="identity"``, which adds the encoder's output at the same point. Any other key is an error.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from conditions.metadata_adapters import DIFFUSIONSAT_FIELDS
from conditions.metadata_encoder import DiffusionSatMetadataEncoder
from pipelines.bundle import ModelCard
from pipelines.checkpoints.common import (
    CheckpointError,
    Importer,
    load_exact,
    read_json,
    read_weights,
    save_component,
    write_model_index,
)
from pipelines.checkpoints.text2earth import (
    bundle_components,
    check_components,
    import_sd_components,
    load_unet_exact,
    scheduler_class,
)

logger = logging.getLogger(__name__)

SOURCE = "samar-khanna/DiffusionSat"
SATUNET_ONLY_KEYS = ("use_metadata", "num_metadata")
METADATA_PREFIX = "metadata_embedding."


def _extract(archive: Path, into: Path) -> Path:
    """Unpack a checkpoint .zip (member paths checked: nothing is written outside ``into``)."""
    with zipfile.ZipFile(archive) as zf:
        root = into.resolve()
        for member in zf.namelist():
            target = (into / member).resolve()
            if root != target and root not in target.parents:
                raise CheckpointError(f"{archive}: member {member!r} would be written outside the extraction folder")
        zf.extractall(into)
    found = sorted(p.parent for p in into.rglob("model_index.json"))
    if not found:
        raise CheckpointError(f"{archive}: no model_index.json inside; is this a DiffusionSat checkpoint archive?")
    return found[0]


def find_unet(root: Path) -> Path:
    """The newest ``checkpoint-<step>/unet`` (what the authors' notebook loads), else ``unet``."""
    steps = []
    for folder in root.glob("checkpoint-*/unet"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.parent.name)
        if match and (folder / "config.json").is_file():
            steps.append((int(match.group(1)), folder))
    if steps:
        step, folder = max(steps)
        logger.info("%s: using the SatUNet of checkpoint-%d (of %d checkpoint(s))", root, step, len(steps))
        if (folder.parent / "unet_ema").is_dir():
            logger.info("%s: unet_ema beside it is not used (the authors' notebook loads 'unet')", folder.parent)
        return folder
    if (root / "unet" / "config.json").is_file():
        return root / "unet"
    raise CheckpointError(f"{root}: no checkpoint-<step>/unet or unet/ folder with a config.json; is SRC DiffusionSat?")


def unet_and_encoder(folder: Path, *, allow_pickle: bool) -> tuple[Any, DiffusionSatMetadataEncoder]:
    """The SatUNet split into a stock UNet (class_embed_type 'identity') and the metadata encoder."""
    config = read_json(folder / "config.json")
    where = f"{folder}/config.json"
    if config.get("_class_name") != "SatUNet":
        raise CheckpointError(
            f"{where}: _class_name={config.get('_class_name')!r}, not 'SatUNet': this UNet has no DiffusionSat "
            "metadata embedding; pass the DiffusionSat checkpoint folder"
        )
    if not config.get("use_metadata", True) or config.get("num_metadata", 7) != len(DIFFUSIONSAT_FIELDS):
        raise CheckpointError(
            f"{where}: use_metadata={config.get('use_metadata')!r}, num_metadata={config.get('num_metadata')!r}; "
            f"rsgen imports the {len(DIFFUSIONSAT_FIELDS)}-field metadata model {list(DIFFUSIONSAT_FIELDS)}"
        )
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise CheckpointError(f"{where}: a SatUNet with its own class embedding is not a published DiffusionSat")
    if config.get("time_embedding_type", "positional") != "positional":
        raise CheckpointError(f"{where}: time_embedding_type={config['time_embedding_type']!r}; expected 'positional'")
    unet_config = {k: v for k, v in config.items() if k not in SATUNET_ONLY_KEYS}
    unet_config.update(_class_name="UNet2DConditionModel", class_embed_type="identity")
    state = read_weights(folder, allow_pickle=allow_pickle)
    backbone = {k: v for k, v in state.items() if not k.startswith(METADATA_PREFIX)}
    metadata = {k: v for k, v in state.items() if k.startswith(METADATA_PREFIX)}  # same names in the encoder
    unet = load_unet_exact(folder, unet_config, allow_pickle=allow_pickle, state=backbone)
    channels = unet.config.block_out_channels[0]
    encoder_config = {
        "embedding_dim": channels * 4,  # SatUNet's time_embed_dim for positional time embeddings
        "frequency_dim": channels,  # Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        "flip_sin_to_cos": bool(unet.config.flip_sin_to_cos),
        "freq_shift": float(unet.config.freq_shift),
        "num_metadata": len(DIFFUSIONSAT_FIELDS),
    }
    encoder = load_exact(DiffusionSatMetadataEncoder, folder, allow_pickle=allow_pickle, config=encoder_config,
                         state=metadata)  # fmt: skip
    return unet, encoder


def native_side(name: str) -> int:
    """512 for the 512 model; 256 when the folder name says so (``finetune_sd21_256_...``)."""
    return 256 if re.search(r"(?<!\d)256(?!\d)", name) else 512


def run(src: Path, staging: Path, allow_pickle: bool) -> ModelCard:
    scratch = None
    try:
        if src.is_file() and src.suffix == ".zip":
            scratch = Path(tempfile.mkdtemp(prefix=".rsgen-extract-", dir=staging.parent))
            root = _extract(src, scratch)
        elif src.is_dir():
            root = src
        else:
            raise CheckpointError(f"SRC={str(src)!r}: expected the DiffusionSat checkpoint folder or its .zip")
        index = read_json(root / "model_index.json")
        check_components(root, index, unet_folder=False)  # the SatUNet is under checkpoint-<step>/
        unet, encoder = unet_and_encoder(find_unet(root), allow_pickle=allow_pickle)
        save_component(unet, staging, "unet")
        save_component(encoder, staging, "metadata_encoder")
        import_sd_components(root, staging, index, allow_pickle=allow_pickle)
        scheduler = scheduler_class(index, root)
        encoder_spec = ("conditions.metadata_encoder", "DiffusionSatMetadataEncoder")
        write_model_index(staging, "RSText2ImagePipeline", bundle_components(scheduler.__name__, encoder_spec))
        side = native_side(root.name)
        prediction = read_json(staging / "scheduler" / "scheduler_config.json").get("prediction_type")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return ModelCard(
        name="diffusionsat",
        native_size=(side, side),
        gsd_range=(0.3, 10.0),
        metadata=encoder.schema(),
        kind="diffusionsat",
        source=SOURCE,
        license="apache-2.0",
        description=(
            "DiffusionSat (Khanna et al., ICLR 2024), imported by rsgen. Conditioning: the prompt (SD-2.1 CLIP "
            "text encoder) and metadata [lon, lat, gsd, cloud, year, month, day] normalised as in training "
            "((lon+180)/360, (lat+90)/180, gsd/1 m, cloud, (year-1980)/120, month/12, day/31, x1000; unknown = 0), "
            "each through its own TimestepEmbedding over the UNet's sinusoidal projection and summed into the time "
            "embedding (here: metadata_encoder -> class_labels, class_embed_type 'identity'); all-zero metadata in "
            f"the unconditional branch. Scheduler {scheduler.__name__}, prediction_type={prediction!r} (SD-2.1 "
            "v-prediction expected). Checked against samar-khanna/DiffusionSat: diffusionsat/sat_unet.py (SatUNet "
            "config keys, metadata_embedding ModuleList, summation point), diffusionsat/pipeline.py (zeros for the "
            "unconditional metadata), diffusionsat/data_util.py (*_numerical_metadata + metadata_normalize), "
            "train_text_to_image.py and notebooks/single-image.ipynb (checkpoint-<step>/unet layout). Not checked "
            "against the real archive: its exact file list and weight format; the native size is read from the "
            "folder name (256 if it says so, else 512); the GSD range 0.3-10 m is approximate (fMoW, SpaceNet, "
            "Satlas at training resolution)."
        ),
    )


IMPORTER = Importer(
    kind="diffusionsat",
    pipeline="RSText2ImagePipeline",
    run=run,
    help="DiffusionSat (samar-khanna/DiffusionSat, Zenodo): text + lat/lon/gsd/cloud/date metadata to image",
)

__all__ = ["IMPORTER", "run"]
