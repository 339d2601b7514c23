"""YAML job specs: loading (safe), validation with key paths, overrides, and per-sample condition sampling.

A spec names the task and model, where conditions come from, how many samples, shards and the job
seed. Everything a sample needs is drawn from its own generator seeded by ``sample_seed(seed, i)``,
so sample ``i`` never depends on the number of workers, the batch size or the order of completion.

Example (``examples/jobs/txt2img.yaml``)::

    task: txt2img
    model: models/tiny
    num_samples: 100
    seed: 0
    batch_size: 4
    shard_size: 50
    prompts: ["dense residential area", "farmland with a river"]
    metadata:
      gsd: {loguniform: [0.3, 10]}
      date: {range: ["2018-01-01", "2023-12-31"]}
      location: {box: [4.7, 52.2, 5.1, 52.5]}     # lon_min, lat_min, lon_max, lat_max
      cloud: {uniform: [0, 0.2]}
      sensor: {choice: [aerial, sentinel-2]}
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from conditions.metadata import Metadata, MetadataError, parse_date
from conditions.palettes import PALETTES
from core.seeding import sample_seed

TASKS = ("txt2img", "generate", "layout", "sr", "change_pairs")
FORMATS = ("png", "geotiff")
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "range", "box")


class SpecError(ValueError):
    """A job spec key is missing, unknown or has an invalid value; the message names the key path."""


def _err(path: str, message: str) -> SpecError:
    return SpecError(f"{path}: {message}")


def load_spec_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"job spec {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpecError(f"job spec {str(path)!r}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise SpecError(f"job spec {str(path)!r}: expected a mapping of keys at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``--set a.b=value`` overrides; values are parsed as YAML (numbers, lists, strings)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(f"--set {item!r}: expected KEY=VALUE, e.g. --set num_samples=100")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"--set {item!r}: {part} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


@dataclass(frozen=True)
class JobSpec:
    task: str
    model: str
    num_samples: int
    seed: int
    batch_size: int
    shard_size: int
    steps: int
    guidance: float
    threads: int
    prompts: tuple[str, ...]
    negative_prompt: str | None
    metadata: dict[str, Any]
    format: str
    masks: dict[str, Any] | None
    layouts: dict[str, Any] | None
    lr: dict[str, Any] | None
    change: dict[str, Any] | None
    writers: tuple[str, ...]
    cog: bool
    raw: dict[str, Any]

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.shard_size)

    def shard_indices(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_samples))

    def digest(self) -> str:
        """sha256 of the resolved spec (what a resume must match)."""
        return hashlib.sha256(json.dumps(self.raw, sort_keys=True, default=str).encode()).hexdigest()

    @functools.cached_property
    def mask_files(self) -> list[Path]:
        folder = Path(self.masks["dir"])
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".tif", ".tiff"))
        if not files:
            raise _err("masks.dir", f"{str(folder)!r} holds no .png/.tif masks")
        return files

    # ------------------------------------------------------------------ per-sample conditions
    def sample_conditions(
        self, index: int, layout_bounds: tuple[float, float, float, float] | None = None
    ) -> dict[str, Any]:
        """Prompt, metadata (and mask or LR file) of sample ``index``: a function of (seed, index) only.
        For ``layout`` jobs the location is drawn inside ``layout_bounds`` (lon/lat) unless the spec
        gives ``metadata.location``."""
        rng = np.random.default_rng(sample_seed(self.seed, index))
        prompt = self.prompts[int(rng.integers(len(self.prompts)))]
        values: dict[str, Any] = {}
        metadata = dict(self.metadata)
        if self.layouts is not None:
            metadata.setdefault("gsd", self.layouts["gsd"])
            if "location" not in metadata and layout_bounds is not None:
                metadata["location"] = {"box": list(layout_bounds)}
        for name in ("gsd", "date", "location", "cloud", "sensor"):
            if name in metadata:
                values[name] = _draw(metadata[name], rng)
        location = values.pop("location", None)
        if location is not None:
            values["lon"], values["lat"] = location
        out = {"prompt": prompt, "metadata": Metadata(**values)}
        if self.masks is not None:
            files = self.mask_files
            out["mask"] = files[index % len(files)]
        if self.lr is not None:
            files = self.lr_files
            out["lr"] = files[index % len(files)]
        return out

    @functools.cached_property
    def lr_files(self) -> list[Path]:
        files = [Path(f) for f in self.lr["files"]]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise _err("lr.files", f"no such file(s) {missing}")
        return files


def _draw(dist: Any, rng: np.random.Generator) -> Any:
    if not isinstance(dist, dict):
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
    if kind == "box":
        lon_min, lat_min, lon_max, lat_max = args
        return float(rng.uniform(lon_min, lon_max)), float(rng.uniform(lat_min, lat_max))
    raise AssertionError(kind)  # validated before


# ---------------------------------------------------------------------- validation
KNOWN_KEYS = {
    "task", "model", "num_samples", "seed", "batch_size", "shard_size", "steps", "guidance", "threads",
    "prompts", "negative_prompt", "metadata", "format", "masks", "out", "writers", "layouts", "lr", "cog", "change",
    "layout_strength",
}  # fmt: skip
WRITERS = ("hf", "webdataset", "coco", "stac", "captions")


def _int(data: dict, key: str, default: int | None, low: int) -> int:
    value = data.get(key, default)
    if value is None:
        raise _err(key, "required")
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _err(key, f"expected an integer >= {low}, got {value!r}")
    return value


def _validate_distribution(path: str, dist: Any) -> None:
    if not isinstance(dist, dict):
        return
    if len(dist) != 1:
        raise _err(path, f"expected one of {DISTRIBUTIONS} as a single key, got {sorted(dist)}")
    ((kind, args),) = dist.items()
    if kind not in DISTRIBUTIONS:
        raise _err(path, f"unknown distribution {kind!r}; use one of {DISTRIBUTIONS}")
    sub = f"{path}.{kind}"
    if kind in ("uniform", "loguniform"):
        if not (isinstance(args, list) and len(args) == 2 and all(isinstance(v, int | float) for v in args)):
            raise _err(sub, f"expected [min, max], got {args!r}")
        if not args[0] <= args[1] or (kind == "loguniform" and args[0] <= 0):
            raise _err(sub, f"expected min <= max{' and min > 0' if kind == 'loguniform' else ''}, got {args!r}")
    elif kind == "choice":
        if not isinstance(args, list) or not args:
            raise _err(sub, f"expected a non-empty list, got {args!r}")
    elif kind == "range":
        if not (isinstance(args, list) and len(args) == 2):
            raise _err(sub, f"expected [start_date, end_date], got {args!r}")
        try:
            start, end = parse_date(str(args[0])), parse_date(str(args[1]))
        except MetadataError as err:
            raise _err(sub, str(err)) from None
        if start > end:
            raise _err(sub, f"start {start} is after end {end}")
    elif kind == "box":
        ok = isinstance(args, list) and len(args) == 4 and all(isinstance(v, int | float) for v in args)
        if not ok or not (-180 <= args[0] <= args[2] <= 180 and -90 <= args[1] <= args[3] <= 90):
            raise _err(sub, f"expected [lon_min, lat_min, lon_max, lat_max] in degrees, got {args!r}")


def validate_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a spec mapping; errors name the key path (``metadata.cloud.uniform: ...``)."""
    unknown = sorted(set(data) - KNOWN_KEYS)
    if unknown:
        raise _err(unknown[0], f"unknown key; known keys are {sorted(KNOWN_KEYS)}")
    task = data.get("task")
    if task not in TASKS:
        raise _err("task", f"expected one of {TASKS}, got {task!r}")
    model = data.get("model", "default")
    if not isinstance(model, str) or not model:
        raise _err("model", f"{model!r}: expected a bundle folder, a hub id or 'default' (the built-in model)")
    num_samples = _int(data, "num_samples", None, 1)
    seed = _int(data, "seed", 0, 0)
    batch_size = _int(data, "batch_size", 4, 1)
    shard_size = _int(data, "shard_size", 100, 1)
    steps = _int(data, "steps", 20, 1)
    threads = _int(data, "threads", 1, 1)
    guidance = data.get("guidance", 7.5)
    if not isinstance(guidance, int | float) or guidance < 0:
        raise _err("guidance", f"expected a number >= 0, got {guidance!r}")
    strength = data.get("layout_strength")
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, int | float)
                                 or not 0 < strength <= 1):  # fmt: skip
        raise _err("layout_strength", f"expected a number in (0, 1] (1 = no layout prior), got {strength!r}")
    prompts = data.get("prompts", [""])
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise _err("prompts", f"expected a non-empty list of strings, got {prompts!r}")
    negative = data.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise _err("negative_prompt", f"expected a string, got {negative!r}")
    metadata = data.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise _err("metadata", f"expected a mapping of field -> value or distribution, got {metadata!r}")
    for key, dist in metadata.items():
        if key not in ("gsd", "date", "location", "cloud", "sensor"):
            raise _err(f"metadata.{key}", "unknown field; use gsd, date, location, cloud, sensor")
        _validate_distribution(f"metadata.{key}", dist)
    if "cloud" in metadata and isinstance(metadata["cloud"], dict) and "uniform" in metadata["cloud"]:
        low, high = metadata["cloud"]["uniform"]
        if not 0 <= low <= high <= 1:
            raise _err("metadata.cloud.uniform", f"expected fractions in [0, 1], got {[low, high]}")
    fmt = data.get("format", "png")
    if fmt not in FORMATS:
        raise _err("format", f"expected one of {FORMATS}, got {fmt!r}")
    if fmt == "geotiff" and task in ("txt2img", "generate") and not ({"gsd", "location"} <= set(metadata)):
        raise _err("format", "geotiff needs metadata.gsd and metadata.location to place each image")
    layouts = data.get("layouts")
    if task == "layout":
        if not isinstance(layouts, dict) or not layouts.get("files"):
            raise _err("layouts", "task layout needs layouts: {files: [buildings:PATH, roads:PATH], gsd: M, size: PX}")
        if not isinstance(layouts.get("gsd"), int | float) or layouts["gsd"] <= 0:
            raise _err("layouts.gsd", f"expected a positive GSD in metres, got {layouts.get('gsd')!r}")
        if "size" in layouts and (not isinstance(layouts["size"], int) or layouts["size"] < 16):
            raise _err("layouts.size", f"expected an integer number of pixels >= 16, got {layouts['size']!r}")
        unknown_layout = sorted(set(layouts) - {"files", "gsd", "size", "polygon_classes"})
        if unknown_layout:
            raise _err(f"layouts.{unknown_layout[0]}", "unknown key; use files, gsd, size, polygon_classes")
        fmt = "geotiff"  # layout samples are always georeferenced
    elif layouts is not None:
        raise _err("layouts", f"only used by task layout, not {task}")
    lr = data.get("lr")
    if task == "sr":
        if not isinstance(lr, dict) or not lr.get("files") or "scale" not in lr:
            raise _err("lr", "task sr needs lr: {files: [PATH, ...], scale: FACTOR}")
        if not isinstance(lr["scale"], int | float) or lr["scale"] < 1:
            raise _err("lr.scale", f"expected a factor >= 1, got {lr['scale']!r}")
        lr_keys = ("files", "scale", "bands", "ref", "ref_strength", "strength", "lr_consistency", "tile", "overlap")
        unknown_lr = sorted(set(lr) - set(lr_keys))
        if unknown_lr:
            raise _err(f"lr.{unknown_lr[0]}", f"unknown key; use {', '.join(lr_keys)}")
        if lr.get("strength") is not None and (
            not isinstance(lr["strength"], int | float) or not 0 < lr["strength"] <= 1
        ):
            raise _err("lr.strength", f"expected a number in (0, 1], got {lr['strength']!r}")
        if fmt != "geotiff":
            fmt = "geotiff"  # SR always writes GeoTIFF
    elif lr is not None:
        raise _err("lr", f"only used by task sr, not {task}")
    change = data.get("change")
    if task == "change_pairs":
        keys = {"mode", "layouts", "images", "masks", "vectors", "polygon_classes", "size", "lat", "lon", "palette",
                "events", "change_fraction", "no_change_fraction", "distractors", "gsd", "layout"}  # fmt: skip
        if not isinstance(change, dict):
            raise _err("change", "task change_pairs needs change: {mode: full, layouts: DIR, palette: NAME, ...}")
        unknown_change = sorted(set(change) - keys)
        if unknown_change:
            raise _err(f"change.{unknown_change[0]}", f"unknown key; use {sorted(keys)}")
        mode = change.get("mode", "full")
        vectors = change.get("vectors")
        if vectors is not None:
            if not isinstance(vectors, list) or not vectors or not all(isinstance(v, str) for v in vectors):
                raise _err("change.vectors", f"expected a list like [buildings:PATH, roads:PATH], got {vectors!r}")
            if change.get("layouts") or change.get("masks"):
                raise _err("change.vectors", "vectors replace layouts/masks as layout t1; give one of them")
        if mode == "hybrid":
            needed = ["images"] if vectors else ["images", "masks"]
        else:
            needed = [] if vectors else ["layouts"]
        for key in needed:
            path = Path(change[key]) if change.get(key) else None
            if path is None or not (path.is_dir() or (vectors and key == "images" and path.is_file())):
                raise _err(f"change.{key}", f"mode {mode} needs a folder here, got {change.get(key)!r}")
        if "size" in change and (not isinstance(change["size"], int) or change["size"] < 8):
            raise _err("change.size", f"expected an integer number of pixels >= 8, got {change['size']!r}")
        for key, limit in (("lat", 90), ("lon", 180)):
            if key in change and (not isinstance(change[key], int | float) or abs(change[key]) > limit):
                raise _err(f"change.{key}", f"expected degrees in [-{limit}, {limit}], got {change[key]!r}")
        if ("lat" in change) != ("lon" in change):
            raise _err("change.lat", "give both lat and lon (the grid centre) or neither")
        fraction = change.get("change_fraction", 0.1)
        if not isinstance(fraction, int | float) or not 0 < fraction <= 1:
            raise _err("change.change_fraction", f"expected a fraction in (0, 1], got {fraction!r}")
        for name, p in (change.get("events") or {}).items():
            if not isinstance(p, int | float) or not 0 <= p <= 1:
                raise _err(f"change.events.{name}", f"expected a probability in [0,1], got {p!r}")
    elif change is not None:
        raise _err("change", f"only used by task change_pairs, not {task}")
    masks = data.get("masks")
    if task == "generate":
        if not isinstance(masks, dict) or "dir" not in masks or "palette" not in masks:
            raise _err("masks", "task generate needs masks: {dir: FOLDER, palette: NAME}")
        if masks["palette"] not in PALETTES:
            raise _err("masks.palette", f"unknown scheme {masks['palette']!r}; choose one of {sorted(PALETTES)}")
        if not Path(masks["dir"]).is_dir():
            raise _err("masks.dir", f"{masks['dir']!r} is not a folder")
    elif masks is not None:
        raise _err("masks", f"only used by task generate, not {task}")
    writers = data.get("writers", [])
    if not isinstance(writers, list) or any(w not in WRITERS for w in writers):
        raise _err("writers", f"expected a list drawn from {WRITERS}, got {writers!r}")
    if "stac" in writers and fmt != "geotiff":
        raise _err("writers", "stac needs georeferenced samples: set format: geotiff")
    cog = data.get("cog", False)
    if not isinstance(cog, bool):
        raise _err("cog", f"expected true or false, got {cog!r}")
    if cog and (fmt != "geotiff" or task == "sr"):
        raise _err("cog", "Cloud-Optimized GeoTIFFs need format: geotiff (tasks txt2img, generate, layout)")
    resolved = {k: v for k, v in data.items() if k != "out"}
    return JobSpec(
        task=task, model=model, num_samples=num_samples, seed=seed, batch_size=batch_size, shard_size=shard_size,
        steps=steps, guidance=float(guidance), threads=threads, prompts=tuple(prompts), negative_prompt=negative,
        metadata=metadata, format=fmt, masks=masks, layouts=layouts, lr=lr, change=change,
        writers=tuple(writers), cog=cog, raw=resolved,
    )  # fmt: skip
