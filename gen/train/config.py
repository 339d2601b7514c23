"""``rsgen train`` configuration: a YAML file → :class:`TrainConfig` (errors name the key path).

Example (see ``examples/train/``)::

    task: denoiser                 # autoencoder | denoiser | sr | distill
    output_dir: runs/default
    data_root: ../shared/data      # data paths below are relative to this
    autoencoder: runs/ae/export/vae
    resolution: 256
    batch_size: 32
    max_steps: 3000
    data:
      - {kind: masks, images: seg/loveda/images, masks: seg/loveda/masks, palette: loveda, gsd: 0.3}
    model: {unet_channels: [64, 128, 192], controls: [mask]}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.config_file import ConfigError, apply_overrides, load_yaml_mapping
from gen.train.data import SOURCE_KINDS, DataSource

TASKS = ("autoencoder", "denoiser", "sr", "distill")
# Keys that may change between runs in one output folder (resuming with more steps, other cadences).
# Export-only keys (model card text, sampling defaults) may change too: they do not touch the weights.
RESUMABLE_KEYS = (
    "max_steps", "checkpoint_every", "sample_every", "log_every", "keep_checkpoints", "threads",
    "name", "license", "description", "native_size", "guide_controls", "sr_strength", "layout_strength",
)  # fmt: skip


@dataclass
class AutoencoderArch:
    channels: tuple[int, ...] = (32, 64, 128, 128)  # len 4 → 8× down-sampling
    layers_per_block: int = 1
    latent_channels: int = 4
    kl_weight: float = 1e-6
    edge_weight: float = 0.5  # L1 on image gradients: sharper reconstructions than pixel L1 alone
    # False: fine-tune the decoder only (needs init_from). The latent space, and with it every denoiser
    # and SR model trained on this VAE, stays valid: the export keeps the scaling_factor of init_from.
    train_encoder: bool = True


@dataclass
class DenoiserArch:
    unet_channels: tuple[int, ...] = (64, 128, 192)
    attention: tuple[bool, ...] = (False, True, True)  # cross-attention per resolution level
    layers_per_block: int = 2
    attention_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 2
    metadata: bool = True
    controls: tuple[str, ...] = ("mask",)  # ControlNets trained jointly; () = text + metadata only
    # The ControlNet's conditioning encoder runs at full image resolution: narrow is much cheaper, and a
    # piecewise-constant mask needs little width (16 → 8 channels at 256² cut a training step ~1.7×).
    control_embedding: tuple[int, ...] = (8, 16, 32, 64)
    control_prob: float = 0.7  # per sample: share of steps that see the control (the rest train the UNet alone)
    caption_dropout: float = 0.1
    metadata_dropout: float = 0.1
    snr_gamma: float = 5.0  # min-SNR loss weighting; 0 = plain MSE


@dataclass
class SRArch:
    unet_channels: tuple[int, ...] = (32, 64, 128)
    attention: tuple[bool, ...] = (False, False, True)
    layers_per_block: int = 2
    attention_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 1
    scale: int = 4  # LR = HR averaged over scale×scale blocks
    reference_prob: float = 0.7
    snr_gamma: float = 5.0


@dataclass
class DistillArch:
    """Task ``distill``: latent consistency distillation (LCM) of the ``init_from`` bundle's UNet (the teacher,
    guided with its mask ControlNet) into a student UNet that samples in a few steps with ``LCMScheduler``."""

    num_ddim_timesteps: int = 50  # the teacher's DDIM skip-step solver runs on this many of the 1000 timesteps
    guidance: float = 3.0  # teacher CFG scale baked into the student (rsgen's: uncond + g·(cond − uncond))
    huber_c: float = 0.001  # pseudo-Huber loss constant
    target_decay: float = 0.95  # EMA decay of the target network (the consistency target), per optimizer step
    timestep_scaling: float = 10.0  # boundary scalings c_skip/c_out at t·scaling; written to the LCMScheduler config
    student_steps: int = 4  # the exported card's default_steps (the recommended sampling steps)


ARCHS = {"autoencoder": AutoencoderArch, "denoiser": DenoiserArch, "sr": SRArch, "distill": DistillArch}
Arch = AutoencoderArch | DenoiserArch | SRArch | DistillArch


@dataclass
class TrainConfig:
    task: str
    output_dir: Path
    data: list[DataSource]
    model: Arch
    data_root: Path = Path(".")
    autoencoder: Path | None = None  # denoiser/sr: the trained VAE folder (diffusers AutoencoderKL)
    init_from: Path | None = None  # fine-tune: an rsgen bundle to start from (task distill: the teacher)
    resolution: int = 256
    native_size: int | None = None  # size written to the exported model card (default: resolution)
    pool_size: int = 1024
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    max_steps: int = 1000
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    sample_every: int = 500
    log_every: int = 25
    ema_decay: float = 0.999  # 0 disables EMA
    seed: int = 0
    threads: int | None = None
    guide_controls: bool = False  # written to the model card: guidance also over the controls at sampling
    sr_strength: float = 1.0  # task sr: written to the model card, the default `rsgen sr --strength`
    layout_strength: float = 1.0  # task denoiser: written to the model card (the layout prior's default)
    name: str = "rsgen-model"
    license: str = "see model card"
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def digest(self) -> str:
        """Hash of everything that defines the run, except what may change on resume."""
        data = {k: v for k, v in self.raw.items() if k not in RESUMABLE_KEYS}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def pool_digest(self) -> str:
        """Hash of what defines the crop pool (data, size, count, seed): keys the latent cache."""
        keys = ("data", "data_root", "resolution", "pool_size", "seed")
        data = {k: self.raw.get(k) for k in keys}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _err(path: str, message: str) -> ConfigError:
    return ConfigError(f"{path}: {message}")


def _number(data: dict[str, Any], key: str, default: Any, kind: type, low: float | None = None, path: str = "") -> Any:
    value = data.get(key, default)
    if value is None:
        return None
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _err(path + key, f"expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err(path + key, f"expected a number, got {value!r}")
        value = float(value)
    if low is not None and value < low:
        raise _err(path + key, f"expected >= {low}, got {value!r}")
    return value


def _arch(task: str, data: Any) -> Arch:
    cls = ARCHS[task]
    data = data or {}
    if not isinstance(data, dict):
        raise _err("model", f"expected a mapping of architecture settings, got {data!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise _err("model", f"unknown key(s) {unknown} for task {task!r}; known: {sorted(known)}")
    values = {}
    for key, value in data.items():
        default = known[key].default
        values[key] = tuple(value) if isinstance(default, tuple) else value
    arch = cls(**values)
    channels = getattr(arch, "unet_channels", None) or getattr(arch, "channels", ())
    if any(not isinstance(c, int) or c < 8 or c % 8 for c in channels):
        raise _err("model", f"channels {list(channels)}: expected multiples of 8 (GroupNorm uses 8 or 32 groups)")
    if hasattr(arch, "attention") and len(arch.attention) != len(arch.unet_channels):
        raise _err(
            "model.attention", f"{list(arch.attention)}: expected one flag per level of {list(arch.unet_channels)}"
        )
    for key in ("control_prob", "caption_dropout", "metadata_dropout", "reference_prob"):
        if hasattr(arch, key) and not 0 <= getattr(arch, key) <= 1:
            raise _err(f"model.{key}", f"expected a probability in [0, 1], got {getattr(arch, key)!r}")
    if isinstance(arch, DenoiserArch) and set(arch.controls) - {"mask"}:
        raise _err("model.controls", f"{list(arch.controls)}: rsgen train supports the 'mask' control")
    if isinstance(arch, DistillArch):
        _check_distill(arch)
    return arch


def _check_distill(arch: DistillArch) -> None:
    for key in ("num_ddim_timesteps", "student_steps"):
        value = getattr(arch, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _err(f"model.{key}", f"expected an integer >= 1, got {value!r}")
    for key in ("guidance", "huber_c", "target_decay", "timestep_scaling"):
        value = getattr(arch, key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _err(f"model.{key}", f"expected a number, got {value!r}")
    if 1000 % arch.num_ddim_timesteps:
        raise _err("model.num_ddim_timesteps", f"{arch.num_ddim_timesteps}: expected a divisor of the 1000 training "
                   "timesteps (e.g. 50, the LCM default)")  # fmt: skip
    if arch.student_steps > arch.num_ddim_timesteps:
        raise _err("model.student_steps", f"{arch.student_steps}: expected <= num_ddim_timesteps "
                   f"({arch.num_ddim_timesteps}): LCMScheduler samples on that schedule")  # fmt: skip
    if arch.guidance < 1:
        raise _err("model.guidance", f"{arch.guidance}: expected >= 1 (1 = the teacher without guidance)")
    if not arch.huber_c > 0:
        raise _err("model.huber_c", f"{arch.huber_c}: expected > 0")
    if not 0 <= arch.target_decay < 1:
        raise _err("model.target_decay", f"{arch.target_decay}: expected in [0, 1) (0 = the student itself)")
    if not arch.timestep_scaling > 0:
        raise _err("model.timestep_scaling", f"{arch.timestep_scaling}: expected > 0")


def _source(index: int, item: Any, root: Path) -> DataSource:
    path = f"data[{index}]"
    if not isinstance(item, dict):
        raise _err(path, f"expected a mapping with 'kind', got {item!r}")
    known = {f.name for f in dataclasses.fields(DataSource)}
    unknown = sorted(set(item) - known)
    if unknown:
        raise _err(path, f"unknown key(s) {unknown}; known: {sorted(known)}")
    if item.get("kind") not in SOURCE_KINDS:
        raise _err(f"{path}.kind", f"{item.get('kind')!r}: expected one of {list(SOURCE_KINDS)}")
    values = dict(item)
    for key in ("path", "images", "masks"):
        if values.get(key) is not None:
            values[key] = root / str(values[key])
    if "files" in values:
        if not isinstance(values["files"], list) or not values["files"]:
            raise _err(f"{path}.files", f"expected a non-empty list of GeoTIFF paths, got {values['files']!r}")
        values["files"] = [root / str(p) for p in values["files"]]
    scales = values.get("scales", [1])
    if not isinstance(scales, list) or not scales or any(not isinstance(s, int) or s < 1 for s in scales):
        raise _err(f"{path}.scales", f"expected a list of integers >= 1, got {scales!r}")
    if values.get("weight", 1.0) is not None and not float(values.get("weight", 1.0)) > 0:
        raise _err(f"{path}.weight", f"expected > 0, got {values['weight']!r}")
    values.setdefault("name", f"{path}:{item.get('kind')}")
    return DataSource(**values)


def parse_train_config(data: dict[str, Any]) -> TrainConfig:
    data = dict(data)
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"raw"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _err("config", f"unknown key(s) {unknown}; known keys: {sorted(known)}")
    task = data.get("task")
    if task not in TASKS:
        raise _err("task", f"{task!r}: expected one of {list(TASKS)}")
    if not data.get("output_dir"):
        raise _err("output_dir", "required: the folder for checkpoints, samples and the exported model")
    root = Path(str(data.get("data_root", ".")))
    items = data.get("data")
    if not isinstance(items, list) or not items:
        raise _err("data", "required: a non-empty list of data sources (see examples/train/)")
    sources = [_source(i, item, root) for i, item in enumerate(items)]
    if task == "distill" and not data.get("init_from"):
        raise _err("init_from", "task 'distill' needs the teacher: set init_from=BUNDLE, a controlled bundle with a "
                   "'mask' control (e.g. pipelines/default_model/controlled)")  # fmt: skip
    if task == "distill" and data.get("autoencoder"):
        raise _err("autoencoder", f"{data['autoencoder']!r}: task 'distill' uses the VAE of the teacher (init_from); "
                   "drop this key")  # fmt: skip
    if task in ("denoiser", "sr") and not data.get("autoencoder") and not data.get("init_from"):
        raise _err("autoencoder", f"task {task!r} needs a trained VAE: set autoencoder=DIR (from a task 'autoencoder' "
                   "run: OUTPUT_DIR/export/vae) or init_from=BUNDLE")  # fmt: skip
    mixed = data.get("mixed_precision", "no")
    if mixed not in ("no", "fp16", "bf16"):
        raise _err("mixed_precision", f"{mixed!r}: expected 'no', 'fp16' or 'bf16'")
    config = TrainConfig(
        task=task,
        output_dir=Path(str(data["output_dir"])),
        data=sources,
        model=_arch(task, data.get("model")),
        data_root=root,
        autoencoder=Path(str(data["autoencoder"])) if data.get("autoencoder") else None,
        init_from=Path(str(data["init_from"])) if data.get("init_from") else None,
        resolution=_number(data, "resolution", 256, int, 16),
        native_size=_number(data, "native_size", None, int, 16),
        pool_size=_number(data, "pool_size", 1024, int, 1),
        batch_size=_number(data, "batch_size", 16, int, 1),
        gradient_accumulation_steps=_number(data, "gradient_accumulation_steps", 1, int, 1),
        mixed_precision=mixed,
        learning_rate=_number(data, "learning_rate", 2e-4, float, 0),
        weight_decay=_number(data, "weight_decay", 0.01, float, 0),
        warmup_steps=_number(data, "warmup_steps", 100, int, 0),
        max_steps=_number(data, "max_steps", 1000, int, 1),
        checkpoint_every=_number(data, "checkpoint_every", 250, int, 1),
        keep_checkpoints=_number(data, "keep_checkpoints", 2, int, 1),
        sample_every=_number(data, "sample_every", 500, int, 1),
        log_every=_number(data, "log_every", 25, int, 1),
        ema_decay=_number(data, "ema_decay", 0.999, float, 0),
        seed=_number(data, "seed", 0, int, 0),
        threads=_number(data, "threads", None, int, 1),
        guide_controls=bool(data.get("guide_controls", False)),
        sr_strength=_number(data, "sr_strength", 1.0, float, 0),
        layout_strength=_number(data, "layout_strength", 1.0, float, 0),
        name=str(data.get("name", "rsgen-model")),
        license=str(data.get("license", "see model card")),
        description=str(data.get("description", "")),
        raw=data,
    )
    if isinstance(config.model, AutoencoderArch) and not config.model.train_encoder and config.init_from is None:
        raise _err("model.train_encoder", "false (decoder-only fine-tuning) needs init_from=VAE_DIR: the trained "
                   "autoencoder whose encoder is kept")  # fmt: skip
    if not 0 < config.layout_strength <= 1:
        raise _err("layout_strength", f"{config.layout_strength}: expected in (0, 1] (1 = no layout prior)")
    if not 0 < config.sr_strength <= 1:
        raise _err("sr_strength", f"{config.sr_strength}: expected in (0, 1] (1 = SR from pure noise)")
    if config.resolution % 16:
        raise _err("resolution", f"{config.resolution}: expected a multiple of 16 (VAE ×8, UNet ×2)")
    if not config.ema_decay < 1:
        raise _err("ema_decay", f"{config.ema_decay}: expected in [0, 1) (0 disables EMA)")
    if isinstance(config.model, SRArch) and config.resolution % (8 * config.model.scale):
        raise _err(
            "model.scale", f"resolution {config.resolution} must be a multiple of 8 × scale ({config.model.scale})"
        )
    return config


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return parse_train_config(apply_overrides(load_yaml_mapping(path, "training config"), overrides or []))


__all__ = [
    "AutoencoderArch",
    "DenoiserArch",
    "DistillArch",
    "SRArch",
    "TrainConfig",
    "load_train_config",
    "parse_train_config",
]
