"""What every task shares: the job fields, prompt and metadata fields, per-sample draws, model loading
and the provenance record."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from conditions import vector_layouts
from conditions.metadata import Metadata, MetadataError, parse_date
from conditions.vectors import VectorError
from core.device import DEVICE_HELP, check_device, resolve_device
from core.seeding import sample_seed
from gen.provenance import sample_record
from gen.spec import (
    FieldError,
    boolean,
    choice,
    cli_comma_list,
    cli_yaml,
    integer,
    number,
    option,
    optional,
    spec_digest,
    string,
    string_list,
)
from pipelines.bundle import MODEL_CARD_FILE, ModelCard
from synth_datasets.exporters import EXPORT_FORMATS

logger = logging.getLogger(__name__)

WRITERS = EXPORT_FORMATS
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "range", "box")
METADATA_FIELDS = ("gsd", "lat", "lon", "location", "date", "cloud", "sensor")
DRAW_ORDER = ("gsd", "date", "location", "cloud", "sensor")  # the order values are drawn for a sample


def _device(value: Any) -> str:
    value = string(value)
    check_device(value, "value")
    return value


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """The fields of every task: model, how many samples, seeds, sharding, threads, device, exports."""

    task: ClassVar[str] = ""
    model: str = option("default", "model bundle folder, hub id, or 'default' (the built-in model)", string)
    num_samples: int = option(1, "number of samples", integer(1), cli=int, short="-n", metavar="N")
    seed: int = option(0, "job seed: sample i is drawn from sample_seed(seed, i)", integer(0), cli=int)
    shard_size: int = option(100, "samples per shard (the unit of resuming and of work per process)",
                             integer(1), cli=int)  # fmt: skip
    threads: int | None = option(
        None, "torch threads per process (default: all cores; the bytes depend on it, not on the process count)",
        optional(integer(1)), cli=int,
    )  # fmt: skip
    device: str = option("auto", DEVICE_HELP, _device)
    dtype: str = option("auto", "weights and activations: auto (fp16 on CUDA, fp32 on CPU), fp32, fp16 (CUDA only) or "
                        "bf16", choice("auto", "fp32", "fp16", "bf16"))  # fmt: skip
    compile: bool = option(False, "torch.compile the UNet and ControlNets (slow first call, faster steps on GPUs)",
                           boolean, boolean=True)  # fmt: skip
    allow_pickle: bool = option(False, "allow pickled .bin/.ckpt weights (unsafe)", boolean, boolean=True)
    writers: tuple[str, ...] = option(
        [], f"exports written when the job is done, comma-separated: {', '.join(WRITERS)}",
        string_list(allowed=WRITERS), cli=cli_comma_list,
    )  # fmt: skip

    def validate(self) -> None:
        """Cross-field checks of a task (raise :class:`FieldError` naming a field)."""

    @classmethod
    def model_defaults(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults that come from the model of a job (``data``: its given keys): a local bundle's card
        ``default_steps`` / ``default_guidance`` (a distilled bundle samples in a few steps at guidance 1) for the
        ``steps`` / ``guidance`` the job leaves out. Other models (the built-in one, hub ids) add none."""
        model = data.get("model")
        if not isinstance(model, str) or not (Path(model).expanduser() / MODEL_CARD_FILE).is_file():
            return {}
        card = ModelCard.read(Path(model).expanduser())
        names = {f.name for f in dataclasses.fields(cls)}
        found = {"steps": card.default_steps, "guidance": card.default_guidance}
        return {k: v for k, v in found.items() if v is not None and k in names}

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def shard_indices(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples))


# ---------------------------------------------------------------------- field factories
def steps_option() -> Any:
    return option(20, "denoising steps", integer(1), cli=int)


def guidance_option(default: float = 7.5) -> Any:
    return option(default, "classifier-free guidance scale", number(0), cli=float)


AUTO = "auto"
CPU_BATCH_SIZE = 1  # what batch_size auto is off CUDA (the default before auto): CPU outputs are unchanged

# batch_size auto on CUDA (see README "Precision and compilation"): a deliberately simple, conservative estimate.
AUTO_BATCH_CAP = 16  # larger batches add little throughput on one GPU and delay the first written samples
VAE_LIVE_TENSORS = 4  # full-resolution decoder activations alive at the VAE's peak (input, norm, conv, residual)
UNET_LIVE_TENSORS = 24  # first-level-sized UNet/ControlNet activations kept (skip connections over all levels)
MEMORY_RESERVE_FRACTION = 0.2  # of the free memory, never planned for (allocator fragmentation, workspaces)
MEMORY_RESERVE_BYTES = 2**30  # and 1 GiB more (text encoder, cuDNN/compile workspaces)


def check_batch_size(value: Any) -> int | str:
    """``auto`` or an integer >= 1."""
    if value == AUTO:
        return value
    try:
        return integer(1)(value)
    except ValueError:
        raise ValueError(f"expected auto or an integer >= 1, got {repr(value)[:80]}") from None


def batch_size_option() -> Any:
    return option(AUTO, "samples per pipeline call, or auto: on CUDA chosen from the free GPU memory and the model "
                  f"(at most {AUTO_BATCH_CAP}), {CPU_BATCH_SIZE} elsewhere; any size gives the same images, to float "
                  "round-off", check_batch_size, cli=cli_yaml, metavar="N|auto")  # fmt: skip


def prompts_option() -> Any:
    return option([""], "text prompt; a list (or a repeated flag) is drawn from per sample",
                  string_list(non_empty=True), repeat="list")  # fmt: skip


def negative_prompt_option() -> Any:
    return option(None, "negative prompt (the unconditional branch of guidance)", optional(string))


def layout_strength_option() -> Any:
    return option(
        None, "in (0, 1]: < 1 starts from the mask painted in the model's class colours (default: the model card's)",
        optional(number(0, 1, low_open=True)), cli=float,
    )  # fmt: skip


METADATA_HELP = {
    "gsd": "ground sample distance, metres per pixel",
    "lat": "latitude of the image centre, degrees north",
    "lon": "longitude of the image centre, degrees east",
    "location": "a {box: [lon_min, lat_min, lon_max, lat_max]} to draw the centre from",
    "date": "acquisition date, YYYY-MM-DD",
    "cloud": "cloud-cover fraction, 0..1",
    "sensor": "sensor/platform name, e.g. sentinel-2, naip, aerial",
}


def metadata_option(name: str, *, drawn: bool = True) -> Any:
    """A metadata field: a value, or (``drawn``) a distribution {uniform|loguniform|choice|range|box: ARGS}."""
    text = METADATA_HELP[name] + ("; or a distribution, e.g. '{loguniform: [0.3, 2]}'" if drawn else "")
    return option(None, text, lambda value: check_metadata_value(name, value, drawn), cli=cli_yaml)


def check_metadata_value(name: str, value: Any, drawn: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if not drawn:
            raise ValueError(f"expected a fixed value for this task, got the distribution {dict(value)!r}")
        check_distribution(value)
        return dict(value)
    if name == "location":
        if value == "layers":
            return value
        raise ValueError(f"expected {{box: [lon_min, lat_min, lon_max, lat_max]}} or 'layers', got {value!r}")
    try:
        Metadata(**({"lat": value, "lon": 0.0} if name == "lat" else {"lat": 0.0, "lon": value} if name == "lon"
                    else {name: str(value) if name == "date" else value}))  # fmt: skip
    except MetadataError as err:
        raise ValueError(str(err).split(": ", 1)[-1]) from None
    return str(value) if name == "date" else value


def check_distribution(dist: Mapping[str, Any]) -> None:
    if len(dist) != 1:
        raise ValueError(f"expected one of {DISTRIBUTIONS} as a single key, got {sorted(dist)}")
    ((kind, args),) = dist.items()
    if kind not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {kind!r}; use one of {DISTRIBUTIONS}")
    numbers = isinstance(args, list) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in args)
    if kind in ("uniform", "loguniform"):
        if not (numbers and len(args) == 2):
            raise ValueError(f"{kind}: expected [min, max], got {args!r}")
        if not args[0] <= args[1] or (kind == "loguniform" and args[0] <= 0):
            raise ValueError(f"{kind}: expected min <= max{' and min > 0' if kind == 'loguniform' else ''}, got {args}")
    elif kind == "choice" and (not isinstance(args, list) or not args):
        raise ValueError(f"choice: expected a non-empty list, got {args!r}")
    elif kind == "range":
        if not (isinstance(args, list) and len(args) == 2):
            raise ValueError(f"range: expected [start_date, end_date], got {args!r}")
        try:
            start, end = parse_date(str(args[0])), parse_date(str(args[1]))
        except MetadataError as err:
            raise ValueError(f"range: {err}") from None
        if start > end:
            raise ValueError(f"range: start {start} is after end {end}")
    elif kind == "box":
        if not (numbers and len(args) == 4 and -180 <= args[0] <= args[2] <= 180 and -90 <= args[1] <= args[3] <= 90):
            raise ValueError(f"box: expected [lon_min, lat_min, lon_max, lat_max] in degrees, got {args!r}")


def check_metadata_fields(spec: Any) -> None:
    """Cross-field metadata rules: lat with lon, a location box or lat/lon, cloud fractions in [0, 1]."""
    lat, lon = getattr(spec, "lat", None), getattr(spec, "lon", None)
    if (lat is None) != (lon is None):
        raise FieldError("lat", f"lat={lat!r} / lon={lon!r}: give both (the image centre) or neither")
    if lat is not None and getattr(spec, "location", None) is not None:
        raise FieldError("location", "give a location to draw from or lat/lon, not both")
    cloud = getattr(spec, "cloud", None)
    if isinstance(cloud, dict) and "uniform" in cloud and not 0 <= cloud["uniform"][0] <= cloud["uniform"][1] <= 1:
        raise FieldError("cloud", f"uniform: expected fractions in [0, 1], got {cloud['uniform']}")


@dataclass(frozen=True, kw_only=True)
class PromptOptions:
    """A prompt drawn per sample from a list, and a negative prompt."""

    prompt: tuple[str, ...] = prompts_option()
    negative_prompt: str | None = negative_prompt_option()


@dataclass(frozen=True, kw_only=True)
class MetadataOptions:
    """Acquisition metadata fields: each a value or a distribution drawn per sample."""

    gsd: Any = metadata_option("gsd")
    lat: Any = metadata_option("lat")
    lon: Any = metadata_option("lon")
    location: Any = metadata_option("location")
    date: Any = metadata_option("date")
    cloud: Any = metadata_option("cloud")
    sensor: Any = metadata_option("sensor")


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """Pipeline calls of ``batch_size`` samples, ``steps`` denoising steps, guidance ``guidance``."""

    batch_size: int | str = batch_size_option()
    steps: int = steps_option()
    guidance: float = guidance_option()


@dataclass(frozen=True, kw_only=True)
class GenerationOptions(SamplingOptions, MetadataOptions, PromptOptions, JobOptions):
    """The fields of the tasks that generate images from a prompt and metadata (txt2img, generate, inpaint)."""

    def validate(self) -> None:
        check_metadata_fields(self)


def _crs(value: Any) -> str:
    from pyproj import CRS
    from pyproj.exceptions import CRSError

    value = string(value)
    try:
        CRS.from_user_input(value)
    except CRSError:
        raise ValueError(f"{value[:80]!r} is not a CRS pyproj knows; give e.g. EPSG:32632") from None
    return value


def vectors_crs_option() -> Any:
    return option(None, "CRS of vector layers that declare none (a GeoJSON without 'crs', a Shapefile without .prj)"
                  ", e.g. EPSG:32632", optional(_crs))  # fmt: skip


def read_layers(spec: Any) -> list[Any]:
    """The vector layers of ``spec.vectors`` (with its ``polygon_class`` rules), read once; errors name ``vectors``."""
    if not spec.vectors:
        return []
    try:
        polygon_classes = vector_layouts.parse_polygon_classes(spec.polygon_class)
    except VectorError as err:
        raise FieldError("polygon_class", str(err).removeprefix("polygon_class ")) from None
    try:
        return vector_layouts.load_layer_rules(spec.vectors, polygon_classes, crs=spec.vectors_crs)
    except VectorError as err:
        raise FieldError("vectors", str(err).removeprefix("vectors ")) from None


class TaskBase:
    """What every task object holds: its spec, output layout, chunk size and (once loaded) its pipeline."""

    def __init__(self, spec: Any, layout: Any, chunk_size: int | str) -> None:
        self.spec = spec
        self.layout = layout
        self.auto_batch_size = chunk_size == AUTO
        # batch_size auto: CPU_BATCH_SIZE until the model is loaded (attach), then the device's choice
        self.chunk_size = CPU_BATCH_SIZE if self.auto_batch_size else chunk_size
        self.pipe: Any = None

    def attach(self, pipeline_class: Any, pipe: Any = None) -> Any:
        """Use ``pipe`` (already loaded; never modified) or load ``spec.model`` with ``pipeline_class``; a
        ``batch_size: auto`` is then chosen for the pipeline's device (:func:`device_batch_size`)."""
        self.pipe = pipe if pipe is not None else load_pipeline(pipeline_class, self.spec)
        if self.auto_batch_size:
            self.chunk_size = device_batch_size(self.pipe, self.call_size())
        return self.pipe

    def call_size(self) -> tuple[int, int]:
        """(height, width) of the images of one pipeline call, for ``batch_size: auto``: the model's native size,
        or the spec's ``height``/``width``/``size`` where they are larger."""
        height, width = self.pipe.model_card.native_size
        size = getattr(self.spec, "size", None)
        height = max(height, getattr(self.spec, "height", None) or 0, size or 0)
        width = max(width, getattr(self.spec, "width", None) or 0, size or 0)
        return height, width

    def layout_strength(self, controls: Mapping[str, Any]) -> float:
        """The layout strength a call with ``controls`` runs with: the spec's, else the model card's (1 without a
        mask control); passed to every call, so a shared pipeline is never changed."""
        try:
            return self.pipe.check_layout_strength(self.spec.layout_strength, controls, self.spec.steps)
        except ValueError as err:
            raise FieldError("layout_strength", f"{self.spec.layout_strength}: {str(err).split(': ', 1)[-1]}") from None


# ---------------------------------------------------------------------- per-sample draws
def draw(dist: Any, rng: np.random.Generator) -> Any:
    """A value of a distribution (a fixed value is returned as it is, drawing nothing)."""
    if not isinstance(dist, Mapping):
        return dist
    ((kind, args),) = dist.items()
    if kind == "uniform":
        return float(rng.uniform(args[0], args[1]))
    if kind == "loguniform":
        return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "range":
        start, end = parse_date(args[0]), parse_date(args[1])
        return start + dt.timedelta(days=int(rng.integers((end - start).days + 1)))
    lon_min, lat_min, lon_max, lat_max = args  # box
    return float(rng.uniform(lon_min, lon_max)), float(rng.uniform(lat_min, lat_max))


@dataclass(frozen=True)
class TextConditions:
    """The prompt and metadata of one sample."""

    prompt: str
    metadata: Metadata


def draw_text_conditions(
    spec: Any, index: int, location: Mapping[str, Any] | None = None
) -> tuple[TextConditions, np.random.Generator]:
    """Prompt and metadata of sample ``index``, drawn from its own generator seeded by ``sample_seed(seed, i)``
    (returned for further draws). ``location`` stands for a ``location`` field that is missing or ``layers``
    (e.g. the layers' box)."""
    rng = np.random.default_rng(sample_seed(spec.seed, index))
    prompt = spec.prompt[int(rng.integers(len(spec.prompt)))]
    values: dict[str, Any] = {}
    for name in DRAW_ORDER:
        value = getattr(spec, name, None)
        if name == "location" and value in (None, "layers"):
            value = location
        if value is not None:
            values[name] = draw(value, rng)
    drawn_location = values.pop("location", None)
    if drawn_location is not None:
        values["lon"], values["lat"] = drawn_location
    elif getattr(spec, "lat", None) is not None:
        values["lat"], values["lon"] = spec.lat, spec.lon
    return TextConditions(prompt, Metadata(**values)), rng


def fixed_metadata(spec: Any, **defaults: Any) -> Metadata:
    """The metadata of a task whose metadata fields are fixed values (``defaults`` fill unset ones)."""
    values = {name: getattr(spec, name, None) for name in ("gsd", "lat", "lon", "date", "cloud", "sensor")}
    values = {k: v for k, v in values.items() if v is not None}
    return Metadata(**{**defaults, **values})


def pad_to_multiple(array: np.ndarray, multiple: int, **kwargs: Any) -> np.ndarray:
    """Pad the first two axes at the bottom/right up to a multiple of ``multiple`` (``np.pad`` ``kwargs``);
    the caller crops the result back, so any image size keeps its stated output size."""
    pad_h, pad_w = -array.shape[0] % multiple, -array.shape[1] % multiple
    if not (pad_h or pad_w):
        return array
    return np.pad(array, ((0, pad_h), (0, pad_w)) + ((0, 0),) * (array.ndim - 2), **kwargs)


# ---------------------------------------------------------------------- models and records
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA, fp32 on CPU. fp16 on a CPU is refused (slow and partly unsupported there)."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise FieldError("dtype", "fp16 runs on CUDA only; on a CPU use bf16 or fp32")
    return DTYPES[name]


def image_memory_bytes(
    height: int, width: int, *, vae_channels: int, vae_bytes: int, unet_channels: int, unet_bytes: int,
    vae_scale_factor: int = 8,
) -> int:  # fmt: skip
    """Estimated GPU memory one image of a pipeline call needs at its peak: the VAE decoder's full-resolution
    activations (``VAE_LIVE_TENSORS`` tensors of ``vae_channels``, the width the decoder up-samples into full
    resolution with, in the dtype it decodes in) plus the denoiser's (``UNET_LIVE_TENSORS`` tensors of the UNet's
    first-level width at latent resolution, twice for classifier-free guidance). Weights are not counted: they
    are on the device already when the free memory is read."""
    vae = VAE_LIVE_TENSORS * vae_channels * height * width * vae_bytes
    latent_pixels = (height // vae_scale_factor) * (width // vae_scale_factor)
    unet = UNET_LIVE_TENSORS * unet_channels * latent_pixels * unet_bytes * 2  # (2B, C, h, w): guidance
    return vae + unet


def auto_batch_size(free_bytes: int, per_image_bytes: int, *, cap: int = AUTO_BATCH_CAP) -> int:
    """The largest batch whose estimated memory fits the free memory less the reserve, between 1 and ``cap``."""
    usable = free_bytes * (1 - MEMORY_RESERVE_FRACTION) - MEMORY_RESERVE_BYTES
    return max(1, min(cap, int(usable // per_image_bytes)))


def device_batch_size(pipe: Any, size: tuple[int, int]) -> int:
    """``batch_size: auto`` for ``pipe`` on its device: ``CPU_BATCH_SIZE`` off CUDA; on CUDA from
    ``torch.cuda.mem_get_info`` and :func:`image_memory_bytes` of the model at ``size`` (height, width)."""
    device = pipe.unet.device
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    from pipelines.vae_decode import vae_compute_dtype

    vae_config = pipe.vae.config
    vae_widths = getattr(vae_config, "block_out_channels", None) or vae_config.decoder_block_out_channels
    per_image = image_memory_bytes(
        *size, vae_channels=vae_widths[min(1, len(vae_widths) - 1)],
        vae_bytes=torch.finfo(vae_compute_dtype(pipe.vae)).bits // 8,
        unet_channels=pipe.unet.config.block_out_channels[0], unet_bytes=torch.finfo(pipe.unet.dtype).bits // 8,
        vae_scale_factor=pipe.vae_scale_factor,
    )  # fmt: skip
    free, _ = torch.cuda.mem_get_info(device)
    batch = auto_batch_size(free, per_image)
    logger.info("batch_size auto: %d (%.1f GiB free on %s, about %.2f GiB per %dx%d image)",
                batch, free / 2**30, device, per_image / 2**30, *size)  # fmt: skip
    return batch


def load_pipeline(pipeline_class: Any, spec: JobOptions) -> Any:
    """Load ``spec.model`` with ``pipeline_class`` onto ``spec.device``; xformers attention on CUDA if installed."""
    target = resolve_device(spec.device, "device")
    dtype = resolve_dtype(spec.dtype, target)
    pipe = pipeline_class.from_bundle(spec.model, allow_pickle=spec.allow_pickle, torch_dtype=dtype)
    pipe.to(target)
    if target.type == "cuda":
        pipe.unet.to(memory_format=torch.channels_last)
        try:
            pipe.enable_xformers_memory_efficient_attention()
            logger.info("using xformers attention")
        except Exception as err:  # xformers missing or incompatible: SDPA is the default and is fine
            logger.info("xformers not used (%s); using PyTorch SDPA attention", err)
    if spec.compile:
        pipe.unet = torch.compile(pipe.unet)
        if getattr(pipe, "controlnet", None) is not None:
            pipe.controlnet = torch.compile(pipe.controlnet)
    if pipe.model_card.smoke_test:
        logger.warning("model %s has random weights: its images are noise (smoke test only)", spec.model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def record(spec: Any, pipe: Any, index: int, text: TextConditions, **extra: Any) -> dict[str, Any]:
    """The sidecar record of sample ``index``: enough to regenerate it exactly (``extra``: the task's own)."""
    return {
        **sample_record(
            spec.task,
            pipe,
            spec.model,
            job_seed=spec.seed,
            index=index,
            steps=spec.steps,
            guidance=spec.guidance,
            prompt=text.prompt,
            negative_prompt=getattr(spec, "negative_prompt", None),
            metadata=text.metadata,
        ),  # fmt: skip
        "spec_sha256": spec_digest(spec),
        **extra,
    }
