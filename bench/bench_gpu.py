"""Benchmark: GPU inference throughput of full-size Stable Diffusion architectures, rsgen's job engine vs diffusers.

Builds SD-1.5, SD-2.1 and SD-2-inpainting + a ControlNet with the published architectures (random weights,
no download), saves each as an rsgen bundle and loads it back with rsgen, then generates 512² images with
20 steps (guidance 7.5) at batch 1 and 8:

* precision and attention (SD-1.5): fp32, fp16 (PyTorch SDPA), fp16 + ``torch.compile`` of the UNet, and
  fp16 + xformers (when importable); SD-2.1 and SD-2-inpainting + ControlNet in fp16 only;
* engine: **rsgen** = a ``txt2img`` / ``inpaint`` job through rsgen's runner (task layer, pipeline, PNG +
  sidecar writes) vs **diffusers** = a plain loop of ``StableDiffusionPipeline`` (or
  ``StableDiffusionControlNetInpaintPipeline``) calls saving PNGs. Both share the UNet, text encoder and
  ControlNet (one copy on the GPU, so each configuration's dtype, channels-last layout, attention and
  compilation are the same for both); each has its own VAE, because rsgen keeps an fp16 VAE whose config
  sets ``force_upcast`` (SD VAEs do, by diffusers' default) in fp32 and diffusers' SD pipelines do not.

Every configuration is warmed up once (a 2-step call of the same batch: compilation, cuDNN) and then timed
once with ``torch.cuda.synchronize`` around it; the table gives img/s of both engines, their ratio, and
the GPU memory the rsgen run added to the loaded model (per image), next to the estimate behind
``batch_size: auto``. The matrix is kept small to finish in about 5 minutes on an H100-class GPU (a
target, not yet measured: the compile rows dominate, about a minute per shape). Run by hand::

    python bench/bench_gpu.py                  # CUDA; --models sd15 to run one model
    python bench/bench_gpu.py --dry-run        # CPU: the same architectures at tiny width, one step at 64²

``--dry-run`` builds the same classes with the same config keys at tiny widths and runs one step of every
configuration at 64² on the CPU, printing the same table (its numbers mean nothing). There the fp16 rows
run in bf16 (fp16 is several times slower on a CPU, and rsgen's jobs refuse it there), compiled UNets run
eagerly (``torch.compiler.set_stance("force_eager")``: tracing alone would take about 15 s per shape), and
xformers rows are skipped (CUDA only).
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import importlib.util
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import diffusers
import diffusers.utils.logging
import numpy as np
import PIL.Image
import torch
import transformers
import transformers.utils.logging
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DPMSolverMultistepScheduler,
    MultiControlNetModel,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from conditions.image_controls import control_from_spec
from core.seeding import sample_generators
from gen.runner import run_job, sample_stem
from gen.tasks import spec_from_mapping
from gen.tasks.common import image_memory_bytes
from pipelines import RSText2ImagePipeline
from pipelines.bundle import ModelCard
from pipelines.controlled import RSControlledPipeline
from pipelines.tiny_tokenizer import build_tiny_clip_tokenizer

PROMPT = "aerial image of a dense residential area with a river and a bridge"
GUIDANCE = 7.5
BATCHES = (1, 8)
CONFIGS = ("fp32", "fp16", "fp16+compile", "fp16+xformers")
GiB = 2**30

# ---------------------------------------------------------------------- the published architectures
CROSS_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
CROSS_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
SD15_UNET = {  # runwayml/stable-diffusion-v1-5 unet/config.json
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2, "down_block_types": CROSS_DOWN, "up_block_types": CROSS_UP, "cross_attention_dim": 768,
    "attention_head_dim": 8, "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True,
    "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
}  # fmt: skip
SD21_UNET = {  # stabilityai/stable-diffusion-2-1 unet/config.json: OpenCLIP width, heads per level, linear projections
    **SD15_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True, "upcast_attention": True,
}  # fmt: skip
SD2_INPAINT_UNET = {**SD21_UNET, "sample_size": 64, "in_channels": 9, "upcast_attention": False}  # sd-2-inpainting
SD_VAE = {  # the SD-1.x / SD-2.x AutoencoderKL (no force_upcast key: diffusers' default True)
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2, "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32, "act_fn": "silu", "sample_size": 512, "scaling_factor": 0.18215,
}  # fmt: skip
CLIP_VIT_L14 = {  # openai/clip-vit-large-patch14 text model (SD-1.5)
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768,
    "layer_norm_eps": 1e-5,
}  # fmt: skip
OPENCLIP_VIT_H = {  # SD-2.x text_encoder: OpenCLIP ViT-H/14 text tower, 23 of its 24 layers (SD-2 uses the penultimate)
    **CLIP_VIT_L14, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
    "num_attention_heads": 16, "hidden_act": "gelu", "projection_dim": 512,
}  # fmt: skip
SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}
CONTROLNET_EMBEDDING = (16, 32, 96, 256)  # ControlNetModel's conditioning_embedding_out_channels


@dataclass(frozen=True)
class Architecture:
    """One model: config kwargs of each component, as published (or shrunk for ``--dry-run``)."""

    name: str
    title: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    scheduler: dict[str, Any]
    native_size: int
    configs: tuple[str, ...]  # the CONFIGS this model is measured in
    controlnet: dict[str, Any] | None = None  # ControlNetModel kwargs: the inpainting model's canny ControlNet

    @property
    def inpainting(self) -> bool:
        return self.unet["in_channels"] == 9


def _controlnet_of(unet: dict[str, Any]) -> dict[str, Any]:
    """ControlNetModel kwargs matching an SD-2 UNet: the noisy latent (4 channels) in, as diffusers' ControlNet
    inpainting does for 9-channel UNets."""
    keys = ("block_out_channels", "layers_per_block", "down_block_types", "cross_attention_dim", "attention_head_dim",
            "norm_num_groups", "norm_eps", "act_fn", "flip_sin_to_cos", "freq_shift", "downsample_padding",
            "mid_block_scale_factor", "use_linear_projection", "upcast_attention")  # fmt: skip
    return {**{k: unet[k] for k in keys}, "in_channels": 4, "conditioning_channels": 3,
            "conditioning_embedding_out_channels": CONTROLNET_EMBEDDING}  # fmt: skip


def full_architectures() -> dict[str, Architecture]:
    return {
        "sd15": Architecture("sd15", "SD-1.5", SD15_UNET, SD_VAE, CLIP_VIT_L14, SD_SCHEDULER, 512, CONFIGS),
        "sd21": Architecture("sd21", "SD-2.1", SD21_UNET, {**SD_VAE, "sample_size": 768}, OPENCLIP_VIT_H,
                             {**SD_SCHEDULER, "prediction_type": "v_prediction"}, 768, ("fp16",)),
        "sd2-inpaint-cn": Architecture("sd2-inpaint-cn", "SD-2-inpainting + ControlNet", SD2_INPAINT_UNET, SD_VAE,
                                       OPENCLIP_VIT_H, SD_SCHEDULER, 512, ("fp16",), _controlnet_of(SD2_INPAINT_UNET)),
    }  # fmt: skip


def tiny(arch: Architecture) -> Architecture:
    """The same classes and config keys with widths (and depths) shrunk, for ``--dry-run``."""
    heads = arch.unet["attention_head_dim"]
    unet = {**arch.unet, "block_out_channels": (32, 32, 64, 64), "layers_per_block": 1, "cross_attention_dim": 32,
            "attention_head_dim": (2, 2, 4, 4) if isinstance(heads, tuple) else 8}  # fmt: skip
    vae = {**arch.vae, "block_out_channels": (32, 32, 32, 32), "layers_per_block": 1}
    text = {**arch.text, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "projection_dim": 32,
            "num_hidden_layers": 2 if arch.text["num_hidden_layers"] < 20 else 3}  # fmt: skip
    controlnet = None
    if arch.controlnet is not None:
        controlnet = {**_controlnet_of(unet), "conditioning_embedding_out_channels": (16, 16, 16, 16)}
    return replace(arch, unet=unet, vae=vae, text=text, controlnet=controlnet)


# ---------------------------------------------------------------------- building and loading
def build_bundle(arch: Architecture, folder: Path, device: torch.device) -> Path:
    """Random-weight components of ``arch`` (built on ``device``), saved in fp16 as an rsgen bundle."""
    tokenizer = build_tiny_clip_tokenizer()  # offline; every id it makes is < the CLIP vocabulary size
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        vae = AutoencoderKL(**arch.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text, **ids))
        unet = UNet2DConditionModel(**arch.unet)
        controlnet = MultiControlNetModel([ControlNetModel(**arch.controlnet)]) if arch.controlnet else None
    scheduler = DPMSolverMultistepScheduler(**arch.scheduler)
    common = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}
    if arch.controlnet is None:
        pipe = RSText2ImagePipeline(**common, metadata_encoder=None)
    else:
        pipe = RSControlledPipeline(**common, controlnet=controlnet, metadata_encoder=None)
    card = ModelCard(
        name=f"bench-{arch.name}", pipeline=type(pipe).__name__, native_size=(arch.native_size,) * 2,
        controls=["canny"] if arch.controlnet else [], inpainting=arch.inpainting,
        masked_image="diffusers" if arch.inpainting else "rsgen", smoke_test=True,
        description=f"{arch.title} architecture with random weights (bench/bench_gpu.py)",
    )  # fmt: skip
    pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    card.write(folder)
    return folder


@dataclass
class Engines:
    """rsgen's pipeline (loaded from the bundle) and a diffusers pipeline sharing its UNet, text encoder and
    ControlNet, with a VAE of its own."""

    arch: Architecture
    bundle: Path
    rsgen: Any
    diffusers: Any
    unet: Any = field(init=False)

    def __post_init__(self) -> None:
        self.unet = self.rsgen.unet

    def to(self, dtype: torch.dtype) -> None:
        self.rsgen.to(dtype=dtype)  # a force_upcast VAE goes back to fp32 at its first decode
        self.diffusers.to(dtype=dtype)

    def set_unet(self, unet: Any) -> None:
        self.rsgen.unet = unet
        self.diffusers.unet = unet


def load_engines(arch: Architecture, bundle: Path, device: torch.device) -> Engines:
    cls = RSControlledPipeline if arch.controlnet else RSText2ImagePipeline
    rsgen = cls.from_bundle(bundle, torch_dtype=torch.float32).to(device)
    if device.type == "cuda":
        rsgen.unet.to(memory_format=torch.channels_last)  # as rsgen's load_pipeline does on CUDA
    parts = {"vae": copy.deepcopy(rsgen.vae), "text_encoder": rsgen.text_encoder, "tokenizer": rsgen.tokenizer,
             "unet": rsgen.unet, "scheduler": copy.deepcopy(rsgen.scheduler), "safety_checker": None,
             "feature_extractor": None, "requires_safety_checker": False}  # fmt: skip
    if arch.controlnet:
        plain = StableDiffusionControlNetInpaintPipeline(**parts, controlnet=rsgen.controlnet.nets[0])
    else:
        plain = StableDiffusionPipeline(**parts)
    for pipe in (rsgen, plain):
        pipe.set_progress_bar_config(disable=True)
    return Engines(arch, bundle, rsgen, plain)


# ---------------------------------------------------------------------- the two engines
@dataclass(frozen=True)
class Inputs:
    """The inpainting model's inputs, as files (rsgen's job) and PIL images (diffusers)."""

    image: Path
    region: Path
    control: torch.Tensor  # (3, H, W) in [0, 1]: rsgen's canny control of ``image``


def write_inputs(folder: Path, size: int) -> Inputs:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    image = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # (size, size, 3): blocky, so Canny finds edges
    region = np.zeros((size, size), dtype=np.uint8)
    region[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    folder.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(folder / "image.png")
    PIL.Image.fromarray(region).save(folder / "region.png")
    control = control_from_spec(f"canny:{folder / 'image.png'}").tensor
    return Inputs(folder / "image.png", folder / "region.png", control)


def run_rsgen(
    engines: Engines, inputs: Inputs | None, out: Path, n: int, batch: int, steps: int, size: int, config: str
) -> None:
    """One rsgen job of ``n`` samples through the runner, on the already loaded pipeline."""
    dtype = "fp32" if config == "fp32" else "bf16" if engines.rsgen.unet.dtype == torch.bfloat16 else "fp16"
    spec = {"model": str(engines.bundle), "prompt": PROMPT, "num_samples": n, "batch_size": batch, "steps": steps,
            "guidance": GUIDANCE, "dtype": dtype, "compile": "compile" in config,
            "threads": torch.get_num_threads()}  # fmt: skip
    if inputs is None:
        spec |= {"task": "txt2img", "height": size, "width": size}
    else:
        spec |= {"task": "inpaint", "image": str(inputs.image), "region": str(inputs.region),
                 "control": [f"canny:{inputs.image}"]}  # fmt: skip
    run_job(spec_from_mapping(spec), out, pipe=engines.rsgen)


def run_diffusers(
    engines: Engines, inputs: Inputs | None, out: Path, n: int, batch: int, steps: int, size: int
) -> None:
    """The plain loop: one diffusers call per batch, each image saved as a PNG."""
    out.mkdir(parents=True, exist_ok=True)
    extra: dict[str, Any] = {"height": size, "width": size}
    if inputs is not None:
        control = PIL.Image.fromarray((inputs.control.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        extra = {"image": PIL.Image.open(inputs.image), "mask_image": PIL.Image.open(inputs.region),
                 "control_image": control, **extra}  # fmt: skip
    for start in range(0, n, batch):
        indices = range(start, min(start + batch, n))
        images = engines.diffusers(
            prompt=[PROMPT] * len(indices), num_inference_steps=steps, guidance_scale=GUIDANCE,
            generator=sample_generators(0, indices), output_type="pil", **extra,
        ).images  # fmt: skip
        for index, image in zip(indices, images):
            image.save(out / f"{sample_stem(index)}.png")


# ---------------------------------------------------------------------- configurations and timing
@dataclass
class Row:
    model: str
    config: str
    batch: int
    diffusers: float | None = None  # img/s
    rsgen: float | None = None
    rsgen_gib_per_image: float | None = None  # GPU memory the rsgen run added to the loaded model, per image
    estimate_gib_per_image: float | None = None  # image_memory_bytes (batch_size auto)
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], None]) -> tuple[float, int | None]:
    """Seconds ``run`` takes and the GPU memory it added at its peak (bytes; None off CUDA)."""
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    start = time.perf_counter()
    run()
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    return seconds, peak


def skip_reason(config: str, device: torch.device) -> str:
    if "xformers" not in config:
        return ""
    if device.type != "cuda":
        return "skipped: xformers needs CUDA"
    if importlib.util.find_spec("xformers") is None:
        return "skipped: xformers not importable (pip install -e '.[gpu]')"
    return ""


@contextmanager
def configured(engines: Engines, config: str, device: torch.device, dry_run: bool) -> Iterator[None]:
    """Set the shared modules up for ``config`` (dtype, attention, compilation) and undo the compilation after."""
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    engines.to(torch.float32 if config == "fp32" else half)
    stance = nullcontext()
    if "xformers" in config:
        engines.rsgen.enable_xformers_memory_efficient_attention()
        engines.diffusers.enable_xformers_memory_efficient_attention()
    if "compile" in config:
        engines.set_unet(torch.compile(engines.unet))
        if dry_run and hasattr(torch.compiler, "set_stance"):
            stance = torch.compiler.set_stance("force_eager")
    try:
        with stance:
            yield
    finally:
        engines.set_unet(engines.unet)
        if "xformers" in config:
            engines.rsgen.disable_xformers_memory_efficient_attention()
            engines.diffusers.disable_xformers_memory_efficient_attention()


def estimate_gib(engines: Engines, size: int) -> float:
    """image_memory_bytes for this model in fp16 with rsgen's fp32 VAE (what ``batch_size: auto`` assumes)."""
    return image_memory_bytes(
        size, size, vae_channels=engines.arch.vae["block_out_channels"][1], vae_bytes=4,
        unet_channels=engines.arch.unet["block_out_channels"][0], unet_bytes=2,
    ) / GiB  # fmt: skip


def run_engine(
    engine: str, engines: Engines, inputs: Inputs | None, out: Path, batch: int, steps: int, size: int, config: str
) -> None:
    """One batch of ``batch`` images with ``engine`` ("rsgen" or "diffusers") into ``out``."""
    if engine == "rsgen":
        run_rsgen(engines, inputs, out, batch, batch, steps, size, config)
    else:
        run_diffusers(engines, inputs, out, batch, batch, steps, size)


def measure(
    engines: Engines, inputs: Inputs | None, root: Path, config: str, batch: int, args: argparse.Namespace
) -> Row:
    """Both engines in ``config`` at ``batch``: warmed up once (not in a dry run), then timed once."""
    device = args.device
    row = Row(engines.arch.name, config, batch, note=skip_reason(config, device))
    if row.note:
        return row
    tag = f"{engines.arch.name}-{config}-b{batch}"
    with configured(engines, config, device, args.dry_run):
        for engine in ("diffusers", "rsgen"):
            run = functools.partial(run_engine, engine, engines, inputs, batch=batch, size=args.size, config=config)
            if not args.dry_run:
                run(root / f"warm-{engine}-{tag}", steps=min(2, args.steps))  # compilation, cuDNN, allocator
            seconds, peak = timed(device, functools.partial(run, root / f"{engine}-{tag}", steps=args.steps))
            setattr(row, engine, batch / seconds)
            if engine == "rsgen" and peak is not None:
                row.rsgen_gib_per_image = peak / GiB / batch
    if config != "fp32":
        row.estimate_gib_per_image = estimate_gib(engines, args.size)
    return row


# ---------------------------------------------------------------------- the table
def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[Row]) -> str:
    head = (f"{'model':<15} {'config':<14} {'batch':>5} {'diffusers img/s':>16} {'rsgen img/s':>12} "
            f"{'rsgen/diffusers':>16} {'rsgen GiB/img':>14} {'estimate':>9}  note")  # fmt: skip
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r.rsgen / r.diffusers if r.rsgen and r.diffusers else None
        lines.append(
            f"{r.model:<15} {r.config:<14} {r.batch:>5} {_num(r.diffusers):>16} {_num(r.rsgen):>12} "
            f"{_num(ratio):>16} {_num(r.rsgen_gib_per_image):>14} {_num(r.estimate_gib_per_image):>9}  {r.note}"
        )  # fmt: skip
    return "\n".join(lines)


def format_ratios(rows: list[Row]) -> str:
    """img/s of each configuration over the fp16 row of the same model, batch and engine."""
    by_key = {(r.model, r.config, r.batch): r for r in rows}
    lines = ["ratios over fp16 (same model, batch and engine; '-' = not run):"]
    for r in rows:
        base = by_key.get((r.model, "fp16", r.batch))
        if r.config == "fp16" or base is None:
            continue
        parts = []
        for engine in ("diffusers", "rsgen"):
            value, ref = getattr(r, engine), getattr(base, engine)
            parts.append(f"{engine} {_num(value / ref if value and ref else None)}x")
        lines.append(f"  {r.model:<15} {r.config:<14} batch {r.batch}: {', '.join(parts)}")
    return "\n".join(lines)


def matrix(architectures: dict[str, Architecture]) -> list[tuple[str, str, int]]:
    """Every (model, config, batch) row of the table, in order."""
    return [(a.name, c, b) for a in architectures.values() for c in a.configs for b in BATCHES]


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU: tiny widths, one step at 64² (a smoke test)")
    parser.add_argument("--models", default=",".join(full_architectures()), help="comma-separated subset")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; dry run 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 20; dry run 1)")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.dry_run else 512)
    args.steps = args.steps or (1 if args.dry_run else 20)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures GPUs; use --dry-run on a CPU")
    args.device = torch.device("cpu" if args.dry_run else "cuda")
    unknown = sorted(set(args.models.split(",")) - set(full_architectures()))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(full_architectures())}")
    return args


def quiet() -> None:
    os.environ["RSGEN_NO_PROGRESS"] = "1"
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.basicConfig(level=logging.ERROR)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    quiet()
    architectures = {k: v for k, v in full_architectures().items() if k in args.models.split(",")}
    if args.dry_run:
        architectures = {k: tiny(v) for k, v in architectures.items()}
    device = args.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run: numbers mean nothing)"
    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
    print(f"device {name}; {versions}; {args.size}² px, {args.steps} steps, guidance {GUIDANCE}")
    if args.dry_run:
        print("dry run: fp16 rows run in bf16, compiled UNets run eagerly, xformers rows are skipped")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rsgen-bench-gpu-") as tmp:
        root = Path(tmp)
        for arch in architectures.values():
            start = time.perf_counter()
            bundle = build_bundle(arch, root / f"bundle-{arch.name}", device)
            engines = load_engines(arch, bundle, device)
            inputs = write_inputs(root / f"inputs-{arch.name}", args.size) if arch.inpainting else None
            print(f"{arch.title}: built, saved and loaded in {time.perf_counter() - start:.1f} s", flush=True)
            for config in arch.configs:
                for batch in BATCHES:
                    rows.append(measure(engines, inputs, root / "out", config, batch, args))
            del engines
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(format_table(rows))
    print(format_ratios(rows))
    print("rsgen GiB/img: GPU memory the rsgen run added to the loaded model, per image; estimate: the per-image "
          "estimate batch_size auto uses (fp16 rows)")  # fmt: skip
    return rows


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
