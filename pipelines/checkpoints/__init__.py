"""``rsgen model import KIND SRC DEST``: public remote-sensing checkpoints as rsgen bundles.

One module per kind defines ``IMPORTER`` (:class:`pipelines.checkpoints.common.Importer`); this registry
is the only place a kind is chosen by name. ``--model hub:owner/name`` downloads a known checkpoint and
imports it into rsgen's cache once.
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
from pathlib import Path

from pipelines.checkpoints.common import CheckpointError, Importer, build_bundle

logger = logging.getLogger(__name__)

# kind -> module defining IMPORTER
KINDS = {
    "hyscdg": "pipelines.checkpoints.hyscdg",
    "text2earth": "pipelines.checkpoints.text2earth",
    "geosynth": "pipelines.checkpoints.geosynth",
    "diffusionsat": "pipelines.checkpoints.diffusionsat",
    "sd-upscaler": "pipelines.checkpoints.sd_upscaler",
    "sd-inpaint": "pipelines.checkpoints.sd_inpaint",
}
GEOSYNTH_BASE = "stabilityai/stable-diffusion-2-1-base"  # GeoSynth's ControlNets run on this base (their README)
# hub repository -> (kind, the base repository its snapshot needs beside it, or None)
HUB_CHECKPOINTS = {
    "Yanis236/HySCDG": ("hyscdg", None),
    "lcybuaa/Text2Earth": ("text2earth", None),
    "MVRL/GeoSynth-OSM": ("geosynth", GEOSYNTH_BASE),
    "MVRL/GeoSynth-SAM": ("geosynth", GEOSYNTH_BASE),
    "MVRL/GeoSynth-Canny": ("geosynth", GEOSYNTH_BASE),
    "stabilityai/stable-diffusion-x4-upscaler": ("sd-upscaler", None),
    "stabilityai/stable-diffusion-2-inpainting": ("sd-inpaint", None),
}


def importer(kind: str) -> Importer:
    if kind not in KINDS:
        raise CheckpointError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    return importlib.import_module(KINDS[kind]).IMPORTER


def import_checkpoint(
    kind: str, src: str | os.PathLike, dest: str | os.PathLike, *, allow_pickle: bool = False, overwrite: bool = False
) -> Path:
    """Import the checkpoint at ``src`` (a folder or a file) as an rsgen bundle at ``dest``."""
    if kind not in KINDS:
        raise CheckpointError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    if not src.exists():
        raise CheckpointError(f"SRC={str(src)!r}: no such file or folder; pass the downloaded checkpoint")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise CheckpointError(f"DEST={str(dest)!r} exists and is not empty; pass --overwrite or another folder")
    if dest.resolve() == src.resolve():
        raise CheckpointError("DEST must differ from SRC: the bundle is written beside the checkpoint, not over it")
    return build_bundle(importer(kind), src, dest, allow_pickle=allow_pickle)


def cache_root() -> Path:
    return Path(os.environ.get("RSGEN_CACHE", Path.home() / ".cache" / "rsgen")) / "imported"


def import_from_hub(repo: str, *, allow_pickle: bool = False) -> Path:
    """``hub:owner/name``: download a known public checkpoint (needs network) and import it once into the cache."""
    if repo not in HUB_CHECKPOINTS:
        raise CheckpointError(
            f"--model hub:{repo}: not a checkpoint rsgen knows how to import (known: {', '.join(HUB_CHECKPOINTS)}); "
            "download it yourself and run `rsgen model import KIND SRC DEST`"
        )
    kind, base = HUB_CHECKPOINTS[repo]
    dest = cache_root() / repo.replace("/", "--")
    if (dest / "rsgen_model.json").is_file():
        return dest
    snapshot = _download(repo, allow_pickle)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / repo.split("/")[1]  # the layout `rsgen model import` expects: the base beside the model
        src.symlink_to(snapshot, target_is_directory=True)
        if base is not None:
            (Path(tmp) / base.split("/")[1]).symlink_to(_download(base, allow_pickle), target_is_directory=True)
        logger.info("importing %s (%s) into %s", repo, kind, dest)
        return import_checkpoint(kind, src, dest, allow_pickle=allow_pickle, overwrite=True)


# never downloaded: code, single-file checkpoints the importers do not read, other frameworks' weights
HUB_IGNORE = ["*.py", "*.ckpt", "*.pth", "*.pt", "*.onnx", "*.msgpack", "*.h5", "x4-upscaler-ema*", "*.ipynb*"]


def _download(repo: str, allow_pickle: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, ignore_patterns=HUB_IGNORE + ([] if allow_pickle else ["*.bin"])))
    except Exception as err:  # network, auth, missing repos: the same for the user
        raise CheckpointError(
            f"--model hub:{repo}: could not download it ({type(err).__name__}: {err}); without network, download the "
            "checkpoint elsewhere and run `rsgen model import KIND SRC DEST`"
        ) from err


__all__ = ["HUB_CHECKPOINTS", "KINDS", "CheckpointError", "import_checkpoint", "import_from_hub", "importer"]
