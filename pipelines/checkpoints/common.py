"""What every checkpoint importer shares: reading weights safely, loading a component with every key
matched, writing bundle components, and the import itself (atomic, checked by loading the result).

An importer turns a downloaded public checkpoint (a diffusers folder, or a file) into an rsgen bundle:
the diffusers layout rsgen's pipelines load, plus ``rsgen_model.json``. It converts only what must be
converted; a key it cannot place is an error that names the key, never dropped.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from core.atomic import atomic_dir, atomic_write_text
from pipelines.bundle import PICKLE_SUFFIXES, BundleError, ModelCard

logger = logging.getLogger(__name__)

# The components every Stable-Diffusion-layout bundle has: name -> (library, class) in model_index.json.
SD_COMPONENTS = {
    "vae": ("diffusers", "AutoencoderKL"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "unet": ("diffusers", "UNet2DConditionModel"),
}
CONFIG_SUFFIXES = (".json", ".txt", ".model")  # tokenizer / scheduler / config files copied as they are
MAX_NAMED_KEYS = 12


class CheckpointError(BundleError):
    """A checkpoint cannot be imported: missing files, unsafe weights, or keys that do not match."""


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file (config, model index, scheduler config) as a mapping, or a clear error."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is SRC the checkpoint's folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def weight_files(folder: Path, *, allow_pickle: bool) -> list[Path]:
    """The weight files of one component folder: its safetensors (sharded or not); its pickles only when
    ``allow_pickle`` (refused with the fix otherwise)."""
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: component folder not found; is this the checkpoint's folder?")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    if safetensors:
        return safetensors
    pickled = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if not pickled:
        raise CheckpointError(f"{folder}: no weight file (.safetensors, or a pickled .bin/.ckpt) found")
    if not allow_pickle:
        raise CheckpointError(
            f"{folder}: only pickled weights ({', '.join(p.name for p in pickled)}). Pickles can run arbitrary code, "
            "so rsgen refuses them by default; pass --allow-pickle if you trust the source (they are then read with "
            "torch.load(weights_only=True) and written out as safetensors)"
        )
    return pickled


def read_weights(path: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """Every tensor of a component folder (all its shards) or of one weight file, on the CPU."""
    files = weight_files(path, allow_pickle=allow_pickle) if path.is_dir() else [path]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            part = load_file(str(file))
        elif not allow_pickle:
            raise CheckpointError(f"{file}: pickled weights are refused; pass --allow-pickle if you trust the source")
        else:
            try:
                part = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as err:  # weights_only refuses pickled code objects: the file is not plain tensors
                raise CheckpointError(f"{file}: not a plain tensor checkpoint ({type(err).__name__}: {err})") from None
            part = part.get("state_dict", part) if isinstance(part, dict) else part
        if not isinstance(part, Mapping):
            raise CheckpointError(f"{file}: expected a mapping of tensor names to tensors")
        state.update(part)
    return state


def check_keys(component: str, expected: Iterable[str], found: Iterable[str]) -> None:
    """Raise :class:`CheckpointError` naming every missing and unexpected key (the first ones, and the count)."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if not (missing or unexpected):
        return

    def named(keys: list[str]) -> str:
        more = f" and {len(keys) - MAX_NAMED_KEYS} more" if len(keys) > MAX_NAMED_KEYS else ""
        return ", ".join(keys[:MAX_NAMED_KEYS]) + more

    parts = ([f"{len(missing)} missing: {named(missing)}"] if missing else []) + (
        [f"{len(unexpected)} unmatched: {named(unexpected)}"] if unexpected else [])  # fmt: skip
    raise CheckpointError(
        f"{component}: the weights do not match the model ({'; '.join(parts)}); is this the checkpoint the import "
        "kind expects (and its exact version)?"
    )


def load_exact(
    model_cls: Any,
    folder: Path,
    *,
    allow_pickle: bool,
    config: Mapping[str, Any] | None = None,
    rename: Callable[[str], str] | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> Any:
    """``model_cls`` built from ``folder/config.json`` (or ``config``) with the folder's weights (or ``state``),
    every key renamed by ``rename`` first and every key matched (:func:`check_keys`); shapes must agree too."""
    if config is None:
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{config_file}: not found; the component folder needs its config")
        config = json.loads(config_file.read_text())
    model = model_cls.from_config(dict(config))
    weights = dict(state) if state is not None else read_weights(folder, allow_pickle=allow_pickle)
    if rename is not None:
        weights = {rename(k): v for k, v in weights.items()}
    check_keys(f"{folder.name} ({model_cls.__name__})", model.state_dict().keys(), weights.keys())
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:  # size mismatches: a checkpoint of another width or version
        raise CheckpointError(f"{folder.name} ({model_cls.__name__}): {str(err).splitlines()[0]} …") from None
    return model.eval()


def save_component(module: Any, dest: Path, name: str) -> Path:
    """Write one model component as diffusers does (config + safetensors) under ``dest/name``."""
    module.save_pretrained(dest / name, safe_serialization=True)
    return dest / name


def copy_config_files(src: Path, dest: Path) -> Path:
    """Copy a tokenizer / scheduler folder: its config and vocabulary files only (never weights or code)."""
    if not src.is_dir():
        raise CheckpointError(f"{src}: folder not found; is this the checkpoint's folder?")
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix in CONFIG_SUFFIXES:
            shutil.copy2(path, dest / path.name)
    return dest


def write_model_index(dest: Path, pipeline: str, components: Mapping[str, tuple[str, str] | None]) -> Path:
    """``model_index.json`` of an rsgen bundle: component name -> (library, class), ``None`` for an absent
    optional component."""
    index: dict[str, Any] = {"_class_name": pipeline, "_diffusers_version": _diffusers_version()}
    index.update({name: list(spec) if spec else [None, None] for name, spec in components.items()})
    return atomic_write_text(dest / "model_index.json", json.dumps(index, indent=2) + "\n")


def native_size(unet: Any, vae: Any) -> tuple[int, int]:
    """(height, width) in pixels a UNet was trained at: its latent ``sample_size`` times the VAE's downscale."""
    side = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    return side, side


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


# ---------------------------------------------------------------------- Stable Diffusion components as published
TEXT_PREFIX = "text_model."  # transformers < 5 CLIPTextModel keys (what SD-2 checkpoints hold)
POSITION_IDS = "embeddings.position_ids"  # a buffer older transformers wrote into the weights
DEPRECATED_VAE_ATTENTION = re.compile(r"(?P<path>.*mid_block\.attentions\.\d+)\.(?P<name>query|key|value|proj_attn)"
                                      r"\.(?P<kind>weight|bias)")  # fmt: skip
DEPRECATED_VAE_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def component_state(folder: Path, *, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """The tensors of one diffusers component folder. Hub folders may hold the full-precision file beside
    ``variant`` copies (``diffusion_pytorch_model.fp16.safetensors``, ``model.fp16.safetensors``): the plain
    file (or its shards) is read, a single variant only when it is all there is."""
    files = weight_files(folder, allow_pickle=allow_pickle)
    plain = [f for f in files if f.name.count(".") == 1]  # stem.suffix or stem-0000k-of-0000n.suffix
    if plain:
        files = plain
    else:
        variants = sorted({f.name.split(".")[1] for f in files})
        if len(variants) > 1:
            raise CheckpointError(
                f"{folder}: only variant weight files ({', '.join(f.name for f in files)}); keep one variant"
            )
        logger.info("%s: reading the %s variant weights", folder.name, variants[0])
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_weights(file, allow_pickle=allow_pickle))
    return state


def vae_key(key: str) -> str:
    """VAE weights written before diffusers 0.14 name the mid-block attention ``query/key/value/proj_attn``
    (SD-2's hub files); today's names are ``to_q/to_k/to_v/to_out.0`` (what diffusers itself maps on load)."""
    match = DEPRECATED_VAE_ATTENTION.fullmatch(key)
    if not match:
        return key
    return f"{match['path']}.{DEPRECATED_VAE_NAMES[match['name']]}.{match['kind']}"


def load_text_encoder(folder: Path, *, allow_pickle: bool) -> CLIPTextModel:
    """A transformers ``CLIPTextModel`` from its folder with every key matched. Checkpoints written by
    transformers < 5 name keys ``text_model.…`` and may hold the ``position_ids`` buffer (always 0..n-1):
    the prefix is mapped to this transformers' names (errors name the keys as the file does) and the buffer is
    checked and dropped."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: not found; the text encoder folder needs its config")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or ["CLIPTextModel"]
    if architectures != ["CLIPTextModel"]:
        raise CheckpointError(f"{config_file}: architectures={architectures}; expected ['CLIPTextModel']")
    model = CLIPTextModel(CLIPTextConfig.from_dict(config))
    expected = model.state_dict()
    prefixed = any(k.startswith(TEXT_PREFIX) for k in expected)
    state = component_state(folder, allow_pickle=allow_pickle)
    weights = [k for k in state if not k.endswith(POSITION_IDS)]
    in_file = any(k.startswith(TEXT_PREFIX) for k in weights)  # compared in the file's naming: errors name its keys
    if in_file == prefixed:
        names = {k: k for k in expected}
    elif in_file:
        names = {TEXT_PREFIX + k: k for k in expected}
    else:
        names = {k.removeprefix(TEXT_PREFIX): k for k in expected}
    for buffer in (TEXT_PREFIX + POSITION_IDS, POSITION_IDS):
        if buffer in state and buffer not in names:  # rebuilt by transformers: checked, then dropped
            ids = state.pop(buffer)
            if not torch.equal(ids.flatten().long(), torch.arange(ids.numel())):
                raise CheckpointError(f"{folder.name} (CLIPTextModel): {buffer} is not 0..{ids.numel() - 1}")
    check_keys(f"{folder.name} (CLIPTextModel)", names, state.keys())
    state = {names[k]: v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{folder.name} (CLIPTextModel): {str(err).splitlines()[0]} …") from None
    return model.eval()


@dataclass(frozen=True)
class Importer:
    """One import kind: the rsgen pipeline its bundles load with, and the function that writes the bundle's
    components into a staging folder and returns its model card."""

    kind: str
    pipeline: str  # rsgen pipeline class name (RSText2ImagePipeline, RSControlledPipeline, ...)
    run: Callable[[Path, Path, bool], ModelCard]  # (source, staging folder, allow_pickle) -> card
    help: str  # one line: what it imports, from where


def build_bundle(importer: Importer, src: Path, dest: Path, *, allow_pickle: bool) -> Path:
    """Run ``importer`` into a staging folder beside ``dest``, write the card, check that the bundle loads with
    its pipeline, then move it into place (``dest`` is replaced only by a complete, loadable bundle)."""
    from pipelines.bundle import load_bundle
    from pipelines.controlled import RSControlledPipeline
    from pipelines.super_resolution import RSSuperResolutionPipeline
    from pipelines.text2img import RSText2ImagePipeline

    pipelines = {p.__name__: p for p in (RSText2ImagePipeline, RSControlledPipeline, RSSuperResolutionPipeline)}
    with atomic_dir(dest) as staging:
        card = importer.run(src, staging, allow_pickle)
        card.pipeline = importer.pipeline
        card.write(staging)
        pipe_cls = pipelines[importer.pipeline]
        loader = getattr(pipe_cls, "from_bundle", None)
        pipe = loader(staging) if loader is not None else load_bundle(pipe_cls, staging)
        logger.info("imported %s from %s: %s loads (%s)", importer.kind, src, type(pipe).__name__, card.name)
        del pipe
    return dest
