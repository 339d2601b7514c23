"""Model bundles: a diffusers-layout folder (or hub id) plus ``rsgen_model.json``.

``rsgen_model.json`` says how to condition the model: the metadata fields it was trained with and
their normalisation, its native size and GSD range, its bands, its class palette and its controls.

Loading is safe by default: safetensors only. Pickled weights (``.bin``, ``.ckpt``, ``.pth`` …) are
refused unless the caller passes ``allow_pickle=True``; even then diffusers/transformers load them
with ``torch.load(weights_only=True)``. Remote code is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from safetensors import safe_open

from core.atomic import atomic_write_text
from core.errors import InputError
from core.hashing import sha256_file

logger = logging.getLogger(__name__)

MODEL_CARD_FILE = "rsgen_model.json"
CARD_FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt", ".pkl", ".pickle")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# The built-in default model, trained by `rsgen train` (examples/train/default_*.yaml) and shipped in
# the package: one controlled bundle (text + metadata + mask ControlNet; text-to-image and inpainting
# use its UNet) and one reference-guided SR bundle. `--model default` (or no --model) selects it.
DEFAULT_MODEL = "default"
DEFAULT_MODEL_ROOT = Path(__file__).parent / "default_model"
DEFAULT_BUNDLES = {
    "RSText2ImagePipeline": "controlled",
    "RSControlledPipeline": "controlled",
    "RSSuperResolutionPipeline": "sr",
}


class BundleError(InputError):
    """A model bundle is missing, malformed, unsafe or inconsistent."""


@dataclass
class ModelCard:
    """Contents of ``rsgen_model.json``."""

    name: str
    pipeline: str = "RSText2ImagePipeline"
    native_size: tuple[int, int] = (512, 512)  # (height, width) in pixels
    gsd_range: tuple[float, float] | None = None  # metres per pixel the model was trained on
    bands: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    metadata: dict[str, Any] | None = None  # {"fields": [FieldSpec...], "sensors": [...]} or None
    palette: dict[str, Any] | None = None
    controls: list[str] = field(default_factory=list)
    inpainting: bool = False  # the UNet takes mask + masked image (9 channels)
    # Classifier-free guidance over the controls too: the unconditional branch runs without ControlNets,
    # so guidance amplifies what the controls add (for models trained with control dropout).
    guide_controls: bool = False
    # SR bundles: the pipeline ``strength`` `rsgen sr` uses unless told otherwise (1 = from pure noise;
    # lower = start from the noised LR latent, for models that are weak from pure noise).
    sr_strength: float = 1.0
    # Controlled bundles: mean RGB (0-255) of each canonical class in the training data, and the default
    # ``layout_strength`` (< 1: sampling starts from the mask painted in these colours, noised to that share).
    class_colors: dict[str, list[float]] | None = None
    layout_strength: float = 1.0
    # Imported public checkpoints (`rsgen model import`): the import kind and where the weights came from.
    kind: str = "rsgen"
    source: str = ""
    # Inpainting with soft masks (HySCDG): the mask reaches the UNet as given (no binarisation) and the masked
    # image is image * (1 - mask).
    soft_mask: bool = False
    # What an inpainting UNet's masked image is: "rsgen" = image in [0, 1] × (1 − mask) (masked pixels black, rsgen's
    # own bundles); "diffusers" = image in [-1, 1] × (1 − mask) (masked pixels mid-grey), as Stable Diffusion
    # inpainting UNets were trained (diffusers' inpaint pipelines; equal to its `image * (mask < 0.5)` for 0/1 masks).
    masked_image: str = "rsgen"
    # What the UNet's own class embedding takes as ``class_labels`` (None: nothing or the metadata encoder's
    # output): "text2earth_level" = the Google zoom level 10..18 of the GSD (0 = unconditional).
    class_labels: str | None = None
    # Sampling defaults of few-step models (`rsgen train` task distill writes 4 and 1.0): the steps and guidance
    # scale `rsgen quickstart` uses unless told otherwise (None: the command's own default). Guidance 1 = no CFG.
    default_steps: int | None = None
    default_guidance: float | None = None
    smoke_test: bool = False  # random weights: images are noise
    description: str = ""
    license: str = "unknown"
    format_version: int = CARD_FORMAT_VERSION

    def __post_init__(self) -> None:
        self.native_size = tuple(int(v) for v in self.native_size)  # type: ignore[assignment]
        if len(self.native_size) != 2 or min(self.native_size) <= 0:
            raise BundleError(f"{MODEL_CARD_FILE}: native_size={self.native_size!r}: expected [height, width] > 0")
        if self.gsd_range is not None:
            low, high = (float(v) for v in self.gsd_range)
            if not 0 < low <= high:
                raise BundleError(
                    f"{MODEL_CARD_FILE}: gsd_range={self.gsd_range!r}: expected [min, max], 0 < min <= max"
                )
            self.gsd_range = (low, high)
        if not 0 < float(self.layout_strength) <= 1:
            raise BundleError(f"{MODEL_CARD_FILE}: layout_strength={self.layout_strength!r}: expected in (0, 1]")
        if self.layout_strength < 1 and not self.class_colors:
            raise BundleError(f"{MODEL_CARD_FILE}: layout_strength < 1 needs class_colors (mean RGB per class)")
        for name, rgb in (self.class_colors or {}).items():
            if not isinstance(rgb, list | tuple) or len(rgb) != 3 or not all(0 <= float(v) <= 255 for v in rgb):
                raise BundleError(f"{MODEL_CARD_FILE}: class_colors[{name!r}]={rgb!r}: expected [r, g, b] in 0..255")
        if self.masked_image not in ("rsgen", "diffusers"):
            raise BundleError(f"{MODEL_CARD_FILE}: masked_image={self.masked_image!r}: expected 'rsgen' or 'diffusers'")
        if not 0 < float(self.sr_strength) <= 1:
            raise BundleError(f"{MODEL_CARD_FILE}: sr_strength={self.sr_strength!r}: expected a number in (0, 1]")
        if self.default_steps is not None and (
            isinstance(self.default_steps, bool) or not isinstance(self.default_steps, int) or self.default_steps < 1
        ):
            raise BundleError(
                f"{MODEL_CARD_FILE}: default_steps={self.default_steps!r}: expected an integer >= 1 or null"
            )
        if self.default_guidance is not None and (
            isinstance(self.default_guidance, bool)
            or not isinstance(self.default_guidance, int | float)
            or self.default_guidance < 0
        ):
            raise BundleError(
                f"{MODEL_CARD_FILE}: default_guidance={self.default_guidance!r}: expected a number >= 0 or null "
                "(1 = no classifier-free guidance)"
            )
        if self.format_version > CARD_FORMAT_VERSION:
            raise BundleError(
                f"{MODEL_CARD_FILE}: format_version={self.format_version} is newer than this rsgen understands "
                f"({CARD_FORMAT_VERSION}); upgrade rsgen"
            )

    @classmethod
    def read(cls, folder: str | Path) -> ModelCard:
        path = Path(folder) / MODEL_CARD_FILE
        if not path.is_file():
            raise BundleError(
                f"{path} not found: an rsgen model bundle needs {MODEL_CARD_FILE} beside model_index.json; "
                "build one with `rsgen model init-tiny DIR` or see README 'Model bundles'"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BundleError(f"{path}: not valid JSON ({err}); fix or regenerate the file") from None
        if not isinstance(data, dict):
            raise BundleError(f"{path}: expected a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise BundleError(f"{path}: unknown key(s) {unknown}; known keys are {sorted(known)}")
        if "name" not in data:
            raise BundleError(f"{path}: missing required key 'name'")
        return cls(**data)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MODEL_CARD_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["native_size"] = list(self.native_size)
        data["gsd_range"] = list(self.gsd_range) if self.gsd_range else None
        return data


def default_bundle(pipeline: str) -> Path:
    """The shipped default bundle folder for a pipeline class name."""
    if pipeline not in DEFAULT_BUNDLES:
        raise BundleError(f"rsgen has no built-in default model for {pipeline}; pass --model")
    folder = DEFAULT_MODEL_ROOT / DEFAULT_BUNDLES[pipeline]
    if not (folder / MODEL_CARD_FILE).is_file():
        raise BundleError(
            f"the built-in default model is missing from this install ({folder} has no {MODEL_CARD_FILE}); "
            "reinstall rsgen from a full checkout, or pass --model DIR"
        )
    return folder


def is_default(model: str | os.PathLike | None) -> bool:
    return model is None or str(model) == DEFAULT_MODEL


def resolve_bundle(
    model: str | os.PathLike | None, *, allow_pickle: bool = False, pipeline: str = "RSControlledPipeline"
) -> Path:
    """A local bundle folder for ``model``: the folder itself, a hub snapshot (needs network), ``hub:owner/name``
    (a known public checkpoint, imported into rsgen's cache), or for ``None`` / ``"default"`` the built-in
    default bundle for ``pipeline``."""
    if is_default(model):
        return default_bundle(pipeline)
    if str(model).startswith("hub:"):  # a known public checkpoint, downloaded and imported once
        from pipelines.checkpoints import import_from_hub

        return import_from_hub(str(model)[4:], allow_pickle=allow_pickle)
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BundleError(f"model={str(model)!r} is a file; pass the bundle folder that holds model_index.json")
        return path
    if not HUB_ID.match(str(model)):
        raise BundleError(
            f"model={str(model)!r}: no such folder, and it is not a hub id of the form 'owner/name'; "
            "pass an existing bundle folder (`rsgen model init-tiny DIR` makes a smoke-test one)"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.md"]
    if allow_pickle:
        patterns += [f"*{s}" for s in PICKLE_SUFFIXES]
    try:
        return Path(snapshot_download(str(model), allow_patterns=patterns))
    except Exception as err:  # network errors, missing repos, auth: all end the same way for the user
        raise BundleError(
            f"model={str(model)!r}: could not fetch it from the hub ({type(err).__name__}: {err}); without "
            "network access pass a local bundle folder instead"
        ) from err


def check_weight_files(folder: Path, *, allow_pickle: bool = False) -> list[Path]:
    """Validate the weight files of a bundle; returns the files that will be loaded.

    Every ``.safetensors`` header is parsed (a truncated or non-safetensors file is reported by
    name). A component folder whose only weights are pickled is refused unless ``allow_pickle``.
    """
    weights: list[Path] = []
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in component.rglob("*") if p.is_file())
        safetensors = [p for p in files if p.suffix == ".safetensors"]
        pickled = [p for p in files if p.suffix in PICKLE_SUFFIXES]
        for path in safetensors:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            except Exception as err:
                raise BundleError(
                    f"{path}: corrupt or not a safetensors file ({err}); re-export or re-download this component"
                ) from None
        if pickled and not safetensors:
            if not allow_pickle:
                names = ", ".join(p.name for p in pickled)
                raise BundleError(
                    f"{component}: only pickled weights ({names}). Pickles can run arbitrary code, so rsgen refuses "
                    "them by default. Convert them to safetensors, or pass allow_pickle=True (CLI: --allow-pickle) "
                    "if you trust the source; they are then loaded with torch.load(weights_only=True)"
                )
            logger.warning("loading pickled weights from %s (weights_only=True)", component)
            weights += pickled
        weights += safetensors
    if not weights:
        raise BundleError(f"{folder}: no weight files found in any component folder; is this a model bundle?")
    return weights


def weights_sha256(folder: Path, files: list[Path]) -> str:
    """One sha256 over the weight files' relative paths and contents (provenance of a sample)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(folder).as_posix()}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


PipelineT = TypeVar("PipelineT")


def _dtype_argument() -> str:
    """The name diffusers' ``from_pretrained`` takes the dtype by: ``dtype`` (newer releases, which deprecate
    ``torch_dtype`` with a warning) or ``torch_dtype``."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401 - present where `dtype` is taken
    except ImportError:
        return "torch_dtype"
    return "dtype"


def load_bundle(
    pipeline_cls: type[PipelineT],
    model: str | os.PathLike | None,
    *,
    allow_pickle: bool = False,
    torch_dtype: Any = None,
) -> PipelineT:
    """Load ``pipeline_cls`` from a bundle through diffusers' ``from_pretrained``; ``None`` or
    ``"default"`` loads the built-in default model.

    The returned pipeline carries ``model_card``, ``model_source`` and ``weights_sha256``.
    """
    folder = resolve_bundle(model, allow_pickle=allow_pickle, pipeline=pipeline_cls.__name__)
    card = ModelCard.read(folder)
    if not (folder / "model_index.json").is_file():
        raise BundleError(f"{folder}: model_index.json not found; a bundle is a diffusers-layout folder")
    if card.pipeline != pipeline_cls.__name__:
        raise BundleError(
            f"{folder}: this bundle is a {card.pipeline} (rsgen_model.json 'pipeline'), not a {pipeline_cls.__name__}; "
            "use the command for that task or a bundle built for this one"
        )
    files = check_weight_files(folder, allow_pickle=allow_pickle)
    try:
        pipe = pipeline_cls.from_pretrained(  # type: ignore[attr-defined]
            folder, use_safetensors=None if allow_pickle else True, trust_remote_code=False,
            **({} if torch_dtype is None else {_dtype_argument(): torch_dtype}),
        )  # fmt: skip
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise BundleError(f"{folder}: diffusers could not load the bundle: {err}") from err
    pipe.model_card = card
    pipe.model_source = DEFAULT_MODEL if is_default(model) else str(model)
    pipe.weights_sha256 = weights_sha256(folder, files)
    logger.info("loaded %s from %s (weights sha256 %s…)", type(pipe).__name__, folder, pipe.weights_sha256[:12])
    return pipe
