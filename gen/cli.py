"""The ``rsgen`` command line (also ``python -m gen``).

The generation commands (``txt2img``, ``generate``, ``inpaint``, ``change-pairs``, ``time-series``, ``sr``)
have one flag per field of their task's spec (``gen/tasks/``): each builds that spec and runs it with the same runner
as ``rsgen run``, so a command and the equivalent YAML spec write the same files.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InputError
from gen import __version__
from gen.spec import FieldError, add_spec_arguments, build_spec, flag_name, mapping_from_args, spec_options

logger = logging.getLogger("rsgen")

METADATA_GROUP = "metadata (leave a field out for 'unknown')"


@dataclass(frozen=True)
class Command:
    """A generation command: the task it runs and its help texts."""

    task: str
    help: str
    description: str
    examples: tuple[str, ...]


COMMANDS = {
    "txt2img": Command(
        "txt2img",
        "generate images from a prompt and acquisition metadata",
        "Generate images from a text prompt and metadata; each image gets a JSON provenance sidecar.",
        (
            "rsgen txt2img --prompt 'dense residential area with a river' --gsd 0.5 --lat 52.37 --lon 4.89 "
            "--date 2021-06-01 --cloud 0.1 --sensor aerial -n 8 --batch-size 4 --out out/ --format geotiff",
        ),
    ),
    "generate": Command(
        "generate",
        "controlled generation from vector layers, semantic masks or image controls, with exact labels",
        "Generate images that follow a layout: vector layers (GeoJSON/GeoPackage/Shapefile) rasterised at --gsd "
        "on the local UTM grid, or semantic masks in a known palette, plus optional image controls. Writes image, "
        "semantic mask, instance mask, object boxes and a provenance sidecar.",
        (
            "rsgen generate --vectors buildings:buildings.geojson --vectors roads:roads.geojson --gsd 0.5 "
            "--prompt suburb -n 4 --out out/",
            "rsgen generate --masks masks/ --palette loveda -n 8 --out out/",
            "rsgen generate --model models/ctrl --masks mask.png --palette loveda --control canny:ref.tif "
            "--control-scale canny=0.5 --control-guidance canny=0:0.6 --out out/",
        ),
    ),
    "inpaint": Command(
        "inpaint",
        "regenerate a region of an image; every pixel outside it is returned bit-identical",
        "Inpaint the non-zero pixels of --region in --image (8-bit RGB), optionally following controls. Pixels "
        "outside the region and its --feather margin are bit-identical to the input.",
        ("rsgen inpaint --image a.png --region hole.png --feather 4 --out inpainted/",),
    ),
    "change-pairs": Command(
        "change_pairs",
        "bi-temporal change pairs with exact labels: simulated events, full or hybrid synthesis",
        "Simulate change events on semantic layouts and synthesise image pairs. full: both dates generated from "
        "layouts t1/t2; hybrid: a real t1 image, t2 = t1 inpainted only where the layout changed (every other "
        "pixel bit-identical). Writes LEVIR-CD (A/B/label) or SECOND (im1/im2/label1/label2) folders plus events, "
        "captions and QA JSON.",
        (
            "rsgen change-pairs --masks layouts/ --palette loveda --events add_building=0.6,remove_building=0.2,"
            "transition=0.2 --change-fraction 0.1 -n 100 --out pairs/",
            "rsgen change-pairs --mode hybrid --images A/ --masks label/ --palette levir "
            "--distractors illumination,misregistration --out pairs/",
            "rsgen change-pairs --vectors buildings:buildings.geojson --vectors roads:roads.geojson --gsd 0.5 "
            "--size 512 --dataset-format second --out pairs/",
            "rsgen change-pairs --mode hybrid --images t1.tif --vectors buildings:buildings.geojson --out pairs/",
        ),
    ),
    "time-series": Command(
        "time_series",
        "time series of T dates with exact labels for every date pair: chained change events",
        "Simulate change events date after date (date t+1 from date t) on one layout and synthesise every date. "
        "full: each date generated from its layout with one seed; hybrid: the real image is date 0 and each later "
        "date inpaints only what changed since the previous one. Writes a folder per sequence: dates/, semantic/, "
        "labels/ (every consecutive pair and (0, t)), events.json with the date index of every event; --stack "
        "adds one multi-date GeoTIFF.",
        (
            "rsgen time-series --mode hybrid --images A/ --masks label/ --palette levir --num-dates 5 "
            "--date 2016-06-01 --interval-days 365 --distractors illumination,seasonal --out series/",
            "rsgen time-series --masks layouts/ --palette loveda --num-dates 4 --stack -n 20 --out series/",
        ),
    ),
    "sr": Command(
        "sr",
        "reference-guided super-resolution of rasters into georeferenced GeoTIFFs",
        "Super-resolve LR rasters (any band count, uint8/uint16/float) by --scale, optionally guided by a "
        "high-resolution reference of the same place. Output: a GeoTIFF per sample with the LR's CRS, the "
        "transform refined by the scale, band descriptions, nodata and dtype carried through, and a JSON sidecar.",
        ("rsgen sr --lr s2.tif --bands 1,2,3 --ref naip.tif --ref-strength 0.6 --scale 4 --tile 256 --out hr/",),
    ),
}


def _add_command(sub: argparse._SubParsersAction, name: str, command: Command) -> None:
    from gen.tasks import spec_class
    from gen.tasks.common import METADATA_FIELDS

    cls = spec_class(command.task)
    parser = sub.add_parser(
        name, help=command.help, description=command.description,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in command.examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_spec_arguments(parser, cls, {f: METADATA_GROUP for f in METADATA_FIELDS})
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--dry-run", action="store_true", help="check the options and print the plan; generate nothing")
    parser.set_defaults(handler=_cmd_task, task=command.task)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsgen",
        description="rsgen: diffusion-based data generation for remote sensing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rsgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--max-pixels", type=int, metavar="N",
        help="largest raster (width x height) read whole, e.g. a mask or an image to inpaint (default 25000000; "
        "also RSGEN_MAX_PIXELS)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in COMMANDS.items():
        _add_command(sub, name, command)
    for add in (_add_run, _add_train, _add_dataset_commands, _add_model, _add_bank, _add_quickstart):
        add(sub)
    return parser


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run a YAML job spec: deterministic, sharded, resumable, multi-process",
        description="Run or resume a dataset job. Sample i depends only on (seed, i): the same bytes for any "
        "number of processes or after an interruption. Re-running the same command resumes; a different spec "
        "in the same --out folder is refused. The spec's keys are the flags of the task's command "
        "(rsgen generate --help lists those of task generate), with underscores.",
        epilog="examples:\n  rsgen run examples/jobs/txt2img.yaml --out data/ --dry-run\n"
        "  rsgen run examples/jobs/txt2img.yaml --set num_samples=1000 --out data/ --num-processes 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("spec", type=Path, help="job spec (YAML)")
    run.add_argument("--out", type=Path, help="output folder (overrides the spec's 'out')")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; generate nothing")
    run.add_argument("--num-processes", type=int, default=1, help="run on N local processes (default 1)")
    run.set_defaults(handler=_cmd_run)


def _add_train(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser(
        "train",
        help="train or fine-tune a model from a YAML config (autoencoder, denoiser + mask ControlNet, SR)",
        description="Train through accelerate (CPU, one or many GPUs, mixed precision and gradient accumulation "
        "from the config). Re-running the same command resumes from the last checkpoint; raise max_steps with "
        "--set to train further. The EMA weights are exported as a model bundle to OUTPUT_DIR/export.",
        epilog="examples:\n  rsgen train examples/train/default_autoencoder.yaml\n"
        "  rsgen train examples/train/default_denoiser.yaml --set max_steps=4000\n"
        "  rsgen train my.yaml --num-processes 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("config", type=Path, help="training config (YAML); see examples/train/")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    tr.add_argument("--num-processes", type=int, default=1, help="launch N processes through accelerate")
    tr.add_argument("--no-export", action="store_true", help="train and checkpoint only; do not export a bundle")
    tr.add_argument("--dry-run", action="store_true", help="validate the config and print it; train nothing")
    tr.set_defaults(handler=_cmd_train)


def _add_dataset_commands(sub: argparse._SubParsersAction) -> None:
    from synth_datasets.caption_exports import SPLIT_CHOICES
    from synth_datasets.exporters import EXPORT_FORMATS

    exp = sub.add_parser(
        "export",
        help="export an rsgen dataset: HF parquet, WebDataset, COCO, STAC, or LEVIR-CC/LEVIR-MCI/SECOND-CC/"
        "ChangeChat/RSVQA for change data",
        description="Read a dataset written by rsgen (a job folder or a folder of samples) and export it. The "
        "change formats (levir-cc, levir-mci, second-cc, changechat, rsvqa) take change pairs or time series "
        "(their consecutive date pairs).",
    )
    exp.add_argument("dataset", type=Path, help="rsgen dataset folder")
    exp.add_argument("--format", required=True, choices=EXPORT_FORMATS, help="export format")
    exp.add_argument(
        "--split", choices=SPLIT_CHOICES,
        help="levir-cc, levir-mci, second-cc: the split of every pair (default train; auto: about 70/10/20 by the "
        "pair's id)",
    )  # fmt: skip
    exp.add_argument("--out", required=True, type=Path, help="output folder")
    exp.set_defaults(handler=_cmd_export)
    pre = sub.add_parser(
        "preview",
        help="HTML page and PNG contact sheet of a dataset (images, masks with legend, captions)",
        description="Write a self-contained HTML preview (images embedded) and a PNG contact sheet beside it.",
    )
    pre.add_argument("dataset", type=Path, help="rsgen dataset folder")
    pre.add_argument("--out", type=Path, default=Path("preview.html"), help="HTML file (default preview.html)")
    pre.add_argument("--limit", type=int, default=48, help="samples shown (default 48)")
    pre.set_defaults(handler=_cmd_preview)


def _add_model(sub: argparse._SubParsersAction) -> None:
    model = sub.add_parser("model", help="create and inspect model bundles")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
    model.set_defaults(handler=_cmd_model)
    tiny = model_sub.add_parser(
        "init-tiny",
        help="build a tiny random bundle (smoke tests; its images are noise)",
        description="Build a tiny model bundle with random weights. It runs every command end to end "
        "without downloads; its images are noise.",
    )
    tiny.add_argument("dir", type=Path, help="folder to create")
    tiny.add_argument("--size", type=int, default=256, help="native image size in pixels (default 256)")
    tiny.add_argument("--no-metadata", action="store_true", help="no metadata encoder (plain SD layout)")
    tiny.add_argument("--sr", action="store_true", help="build a super-resolution bundle (LR + reference control)")
    tiny.add_argument("--controls", help="build a controlled bundle with these ControlNets, e.g. mask,canny,depth")
    tiny.add_argument("--inpainting", action="store_true", help="with --controls: a 9-channel inpainting UNet")
    tiny.add_argument("--bands", default="red,green,blue", help="band names of an --sr bundle (default red,green,blue)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    info = model_sub.add_parser("info", help="print a bundle's rsgen_model.json")
    info.add_argument("dir", help="bundle folder, or 'default' for the built-in model")
    from pipelines.checkpoints import KINDS

    imp = model_sub.add_parser(
        "import",
        help="turn a downloaded public checkpoint into an rsgen bundle",
        description="Import a public remote-sensing checkpoint (HySCDG, Text2Earth, GeoSynth, DiffusionSat, the SD "
        "x4 upscaler or SD-2 inpainting) as an rsgen bundle: the diffusers layout rsgen's pipelines load plus "
        "rsgen_model.json. Every weight must find its place: an unmatched key fails the import with its name. "
        "See README 'Using public checkpoints'.",
    )
    imp.add_argument("kind", choices=tuple(KINDS), help="the checkpoint's family")
    imp.add_argument("src", type=Path, help="the downloaded checkpoint (folder or file)")
    imp.add_argument("dest", type=Path, help="bundle folder to create")
    imp.add_argument("--allow-pickle", action="store_true", help="accept pickled .bin/.ckpt weights (unsafe)")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing DEST")


def _add_bank(sub: argparse._SubParsersAction) -> None:
    bank = sub.add_parser("bank", help="build and inspect object banks: real object crops for exemplar synthesis")
    bank_sub = bank.add_subparsers(dest="bank_command", metavar="ACTION")
    bank.set_defaults(handler=_cmd_bank, bank_parser=bank)
    build = bank_sub.add_parser(
        "build",
        help="harvest real object instances and class textures from image/mask pairs into one bank file",
        description="Cut every instance of --classes (4-connected regions of the class; those cut by the image "
        "border or under --min-area-m2 are skipped) out of its image with its exact mask and a context margin, "
        "with GSD, area, orientation, size and Lab colour statistics, plus square texture patches of every class; "
        "written as one .safetensors file with provenance (source files and sha256, --licence).",
        epilog="examples:\n  rsgen bank build --images A/ --masks label/ --palette levir --gsd 0.5 "
        "--out bank.safetensors\n  rsgen bank build --images img/ --masks masks/ --palette loveda --gsd 0.3 "
        "--classes building,tree --licence 'CC BY-NC-SA 4.0' --out loveda.safetensors\n"
        "  rsgen bank build --images t1.tif --vectors buildings:buildings.geojson --out footprints.safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    build.add_argument("--images", required=True, type=Path, help="folder of 8-bit RGB images (or one image)")
    build.add_argument("--masks", type=Path, help="folder of masks named as their images (or one mask)")
    build.add_argument("--palette", help="the masks' label scheme (e.g. levir, loveda, canonical)")
    build.add_argument(
        "--vectors", action="append", default=[], metavar="SPEC",
        help="instead of masks: vector layers (as generate --vectors, e.g. buildings:footprints.geojson) rasterised "
        "on each georeferenced image's grid; buildings are then the footprints",
    )  # fmt: skip
    build.add_argument("--vectors-crs", help="CRS of vector layers that declare none, e.g. EPSG:32632")
    build.add_argument("--out", required=True, type=Path, help="bank file to write (.safetensors)")
    build.add_argument("--gsd", type=float, help="pixel size in metres (default: from the images' georeference)")
    build.add_argument("--classes", default="building", help="canonical classes to harvest (default building)")
    build.add_argument("--margin-m", type=float, default=3.0, help="context margin around each object (default 3 m)")
    build.add_argument("--min-area-m2", type=float, default=20.0, help="smallest object kept (default 20 m2)")
    build.add_argument("--max-objects-per-image", type=int, help="keep at most N objects per image (seeded draw)")
    build.add_argument("--texture-size-m", type=float, default=16.0, help="side of a texture patch (default 16 m)")
    build.add_argument("--textures-per-class", type=int, default=4, help="texture patches per class and image (4)")
    build.add_argument("--licence", default="", help="the source imagery's terms, recorded in the bank")
    build.add_argument("--seed", type=int, default=0, help="seed of the texture (and --max-objects) draws")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    info = bank_sub.add_parser("info", help="print a bank's counts per class, GSD and area ranges, licence, sources")
    info.add_argument("bank", type=Path, help="bank file (.safetensors)")


QUICKSTART_STEPS = 4  # for a card without default_steps: 2 run at layout_strength 0.7, as good as 20 (README)
QUICKSTART_GUIDANCE = 3.0  # for a model whose card has no default_guidance


def _add_quickstart(sub: argparse._SubParsersAction) -> None:
    quick = sub.add_parser(
        "quickstart",
        help="generate a small change-detection dataset with the built-in model and an HTML preview",
        description="The main job on the built-in default model: simulated change events on the shipped example "
        "layouts, both dates synthesised from the layouts (mask ControlNet), written in the LEVIR-CD layout with "
        "exact change masks, event lists, captions and QA, plus an HTML preview to open in a browser.",
    )
    quick.add_argument(
        "--out", type=Path, default=Path("quickstart-out"), help="output folder (default quickstart-out)"
    )
    quick.add_argument("-n", "--num-samples", type=int, default=8, help="number of change pairs (default 8)")
    quick.add_argument(
        "--steps", type=int, default=None,
        help=f"denoising steps per image (default: the model card's default_steps, else {QUICKSTART_STEPS})",
    )  # fmt: skip
    quick.add_argument(
        "--model", default="default", help="controlled bundle with a 'mask' control (default: the built-in model)"
    )
    quick.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    quick.set_defaults(handler=_cmd_quickstart)


@contextlib.contextmanager
def named_as(source: str, cls: type | None = None) -> Iterator[None]:
    """An input error found while running names the flag (``--size: 60: ...``) or the key. A reader's error
    (from ``conditions/``) starts with the key it was given (``image '/x.jpg': ...``, ``bands='1,2': ...``):
    on the command line that key is shown as ``cls``'s flag."""
    try:
        yield
    except FieldError as err:
        raise err.named(source) from None
    except InputError as err:
        match = re.match(r"([a-z_]+)(?=[ =])", str(err))
        fields = {f.name for f, _ in spec_options(cls)} if cls is not None else set()
        if source != "cli" or not match or match.group(1) not in fields:
            raise
        raise type(err)(flag_name(match.group(1)) + str(err)[match.end() :]) from None


def _cmd_task(args: argparse.Namespace) -> int:
    from gen.runner import plan_job, run_job
    from gen.tasks import spec_class

    cls = spec_class(args.task)
    spec = build_spec(cls, mapping_from_args(cls, args), source="cli")
    with named_as("cli", cls):
        if args.dry_run:
            sys.stdout.write(json.dumps(plan_job(spec, args.out), indent=2, default=str) + "\n")
            return 0
        summary = run_job(spec, args.out)
    sys.stdout.write(f"{args.command}: {summary.num_samples} sample(s) in {args.out} "
                     f"({summary.written_by_this_process} written now)\n")  # fmt: skip
    return 0


def spec_out(spec_file: Path, out: object) -> Path:
    """A spec's own ``out``: a folder inside the spec's folder (relative to it); ``--out`` may point anywhere."""
    if out is None:
        raise ValueError("no output folder: pass --out DIR or set 'out' in the spec")
    if not isinstance(out, str) or not out:
        raise ValueError(f"out: expected a folder name, got {str(out)[:80]!r}")
    base = spec_file.resolve().parent
    resolved = (base / out).resolve()
    if not resolved.is_relative_to(base):
        raise ValueError(
            f"out {out!r}: leaves the folder of the spec ({base}); a spec writes only below its own folder, so "
            "give an out inside it or pass --out DIR on the command line"
        )
    return resolved


def _cmd_run(args: argparse.Namespace) -> int:
    from core.config_file import apply_overrides, load_yaml_mapping
    from gen.tasks import spec_from_mapping

    data = apply_overrides(load_yaml_mapping(args.spec, "job spec"), args.set)
    out = args.out or spec_out(args.spec, data.get("out"))
    spec = spec_from_mapping(data)
    if args.dry_run:
        from gen.runner import plan_job

        with named_as("yaml"):
            sys.stdout.write(json.dumps(plan_job(spec, out, args.num_processes), indent=2, default=str) + "\n")
        return 0
    from gen.runner import launch_job

    with named_as("yaml"):  # N > 1: N local workers, forked from this process once it has imported everything
        summary = launch_job(spec, out, args.num_processes)
    sys.stdout.write(f"job done: {summary.num_samples} samples in {summary.num_shards} shard(s) at {out}\n")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from gen.train import load_train_config, train

    config = load_train_config(args.config, args.set)
    if args.dry_run:
        sys.stdout.write(json.dumps({"digest": config.digest(), "config": config.raw}, indent=2, default=str) + "\n")
        return 0
    if args.num_processes > 1:
        import subprocess

        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(args.num_processes), "--num_machines", "1",
            "--mixed_precision", config.mixed_precision, "--dynamo_backend", "no",
            "-m", "gen", "train", str(args.config),
        ] + [x for item in args.set for x in ("--set", item)] + (["--no-export"] if args.no_export else [])  # fmt: skip
        return subprocess.call(cmd)
    out = train(config, export=not args.no_export)
    sys.stdout.write(f"training done: {out}\n")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from synth_datasets.exporters import export
    from synth_datasets.reader import load_dataset

    result = export(load_dataset(args.dataset), args.format, args.out, split=args.split)
    sys.stdout.write(f"exported {args.dataset} as {args.format}: {result}\n")
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    from synth_datasets.preview import write_preview
    from synth_datasets.reader import load_dataset

    page, sheet = write_preview(load_dataset(args.dataset), args.out, limit=args.limit)
    sys.stdout.write(f"wrote {page} and {sheet}\n")
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    if args.model_command == "init-tiny":
        from pipelines.tiny_bundle import (
            SMOKE_TEST_WARNING,
            TinyBundleConfig,
            TinyControlledBundleConfig,
            TinySRBundleConfig,
            build_tiny_bundle,
        )

        if args.inpainting and not args.controls:
            raise ValueError("--inpainting builds a controlled bundle: add --controls (e.g. --controls mask)")
        if args.controls:
            names = tuple(c.strip() for c in args.controls.split(",") if c.strip())
            config = TinyControlledBundleConfig(
                image_size=args.size, controls=names, metadata=not args.no_metadata, inpainting=args.inpainting
            )
        elif args.sr:
            bands = tuple(b.strip() for b in args.bands.split(",") if b.strip())
            config = TinySRBundleConfig(tile_size=args.size, bands=bands, seed=args.seed)
        else:
            config = TinyBundleConfig(image_size=args.size, metadata=not args.no_metadata, seed=args.seed)
        path = build_tiny_bundle(args.dir, config, overwrite=args.overwrite)
        sys.stdout.write(f"tiny bundle written to {path} ({SMOKE_TEST_WARNING})\n")
        return 0
    if args.model_command == "import":
        from pipelines.checkpoints import import_checkpoint

        dest = import_checkpoint(args.kind, args.src, args.dest, allow_pickle=args.allow_pickle,
                                 overwrite=args.overwrite)  # fmt: skip
        sys.stdout.write(f"imported {args.kind} checkpoint {args.src} as the rsgen bundle {dest}\n")
        return 0
    if args.model_command == "info":
        from pipelines.bundle import ModelCard, is_default, resolve_bundle

        if is_default(str(args.dir)):  # the built-in model: one card per bundle it ships
            pipelines = {"controlled": "RSControlledPipeline", "sr": "RSSuperResolutionPipeline"}
            cards = {k: ModelCard.read(resolve_bundle(None, pipeline=p)).to_dict() for k, p in pipelines.items()}
            sys.stdout.write(json.dumps(cards, indent=2) + "\n")
            return 0
        sys.stdout.write(json.dumps(ModelCard.read(args.dir).to_dict(), indent=2) + "\n")
        return 0
    raise ValueError("rsgen model: choose an action: init-tiny or info (see `rsgen model --help`)")


BANK_ARGUMENTS = ("images", "masks", "palette", "gsd", "classes", "margin_m", "min_area_m2", "max_objects_per_image",
                  "texture_size_m", "textures_per_class", "out", "vectors")  # fmt: skip


@contextlib.contextmanager
def _bank_flags() -> Iterator[None]:
    """A bank error naming a ``build_bank`` argument (``min_area_m2=-1: ...``) names its flag (``--min-area-m2``)."""
    try:
        yield
    except InputError as err:
        match = re.match(r"([a-z_0-9]+)(?=[ =:])", str(err))
        if not match or match.group(1) not in BANK_ARGUMENTS:
            raise
        raise type(err)(flag_name(match.group(1)) + str(err)[match.end() :]) from None


def _cmd_bank(args: argparse.Namespace) -> int:
    if args.bank_command is None:
        args.bank_parser.print_help()
        return 2
    from conditions.object_bank import BankError, ObjectBank, build_bank, check_bank_path, describe_bank

    if args.bank_command == "info":
        sys.stdout.write(f"bank {args.bank}\n" + describe_bank(ObjectBank.load(args.bank)))
        return 0
    import time

    with _bank_flags():
        check_bank_path(args.out, "out")
        if args.out.exists() and not args.overwrite:
            raise BankError(f"out {str(args.out)!r}: exists; pass --overwrite to replace it, or another --out")
        started = time.perf_counter()
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        bank = build_bank(args.images, args.masks, args.palette, gsd=args.gsd, classes=classes,
                          margin_m=args.margin_m, min_area_m2=args.min_area_m2,
                          max_objects_per_image=args.max_objects_per_image, texture_size_m=args.texture_size_m,
                          textures_per_class=args.textures_per_class, licence=args.licence, seed=args.seed,
                          vectors=args.vectors, vectors_crs=args.vectors_crs)  # fmt: skip
        bank.save(args.out)
    objects = {c: len(bank.of_class(c)) for c in dict.fromkeys(o.class_name for o in bank.objects)}
    textures = {c: len(bank.textures_of(c)) for c in dict.fromkeys(t.class_name for t in bank.textures)}
    logger.info("bank: objects per class %s, textures per class %s, from %d source(s) in %.1f s", objects, textures,
                len(bank.sources), time.perf_counter() - started)  # fmt: skip
    sys.stdout.write(f"bank: {len(bank.objects)} objects and {len(bank.textures)} textures from "
                     f"{len(bank.sources)} image(s) in {args.out} (sha256 {bank.sha256})\n")  # fmt: skip
    return 0


def quickstart_spec(
    num_samples: int, steps: int | None = None, model: str = "default", threads: int | None = None
) -> Any:
    """The quickstart job: change pairs on the shipped example layouts with the built-in model. ``steps`` None
    takes the model card's ``default_steps`` (else :data:`QUICKSTART_STEPS`); the guidance is the card's
    ``default_guidance`` (a distilled model's 1: its guidance is in the weights), else :data:`QUICKSTART_GUIDANCE`."""
    from gen.assets import EXAMPLE_LAYOUTS
    from gen.tasks import spec_class
    from pipelines.bundle import ModelCard, resolve_bundle

    card = ModelCard.read(resolve_bundle(model, pipeline="RSControlledPipeline"))
    if steps is None:
        steps = card.default_steps or QUICKSTART_STEPS
    guidance = card.default_guidance if card.default_guidance is not None else QUICKSTART_GUIDANCE
    data = {"model": model, "masks": str(EXAMPLE_LAYOUTS), "palette": "canonical", "change_fraction": 0.08,
            "distractors": ["illumination"], "gsd": 0.5, "prompt": "aerial image of a suburb", "sensor": "aerial",
            "date": "2021-06-01", "num_samples": num_samples, "steps": steps, "guidance": guidance,
            "threads": threads}  # fmt: skip
    return build_spec(spec_class("change_pairs"), data)


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from gen.runner import LOCK_FILE, run_job
    from gen.spec import spec_digest
    from synth_datasets.preview import write_preview
    from synth_datasets.reader import load_dataset

    spec = quickstart_spec(args.num_samples, args.steps, args.model, args.threads)
    pairs = args.out / "change-pairs"
    lock = pairs / LOCK_FILE
    if lock.is_file() and json.loads(lock.read_text()).get("spec_sha256") != spec_digest(spec):
        logger.info("replacing the previous quickstart pairs in %s (other options)", pairs)
        shutil.rmtree(pairs)  # the quickstart owns this folder: a run with other options starts afresh
    summary = run_job(spec, pairs)
    page, sheet = write_preview(load_dataset(pairs), args.out / "preview.html")
    sys.stdout.write(
        f"quickstart: {summary.num_samples} change pairs (LEVIR-CD layout: A/, B/, label/, captions, events) in "
        f"{pairs}\nopen {page} in a browser (contact sheet: {sheet})\n"
    )
    return 0


def run_cli() -> None:
    """The ``rsgen`` console command (and ``python -m gen``): :func:`main`, then exit with its code."""
    code = main()
    # What is alive now lives until exit: freezing it spares the interpreter's final garbage collections over
    # torch's and diffusers' module graphs (about 1 s of every command's exit on 2 cores).
    gc.freeze()
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """``rsgen`` with ``argv`` (default: the command line); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("diffusers", "transformers", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
    if args.command is None:
        parser.print_help()
        return 2
    if args.max_pixels is not None:  # the readers (and every process of a multi-process run) read it from here
        os.environ["RSGEN_MAX_PIXELS"] = str(args.max_pixels)
    if args.command == "model" and args.model_command is None:
        parser.parse_args(["model", "--help"])
    if not args.verbose:  # rsgen shows its own progress bar; hide the libraries' loading bars
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    from gen.runner import JobLockError

    try:
        return args.handler(args)
    except (ValueError, JobLockError, FileExistsError, FileNotFoundError) as err:  # domain errors subclass ValueError
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; samples already written are complete (atomic writes)")
        return 130
