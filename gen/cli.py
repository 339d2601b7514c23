"""The ``rsgen`` command line (also ``python -m gen``)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from conditions.metadata import Metadata, parse_date
from gen import __version__
from pipelines.bundle import DEFAULT_MODEL

logger = logging.getLogger("rsgen")

EPILOG_TXT2IMG = """\
examples:
  rsgen model init-tiny models/tiny
  rsgen txt2img --model models/tiny --prompt "dense residential area with a river" \\
      --gsd 0.5 --lat 52.37 --lon 4.89 --date 2021-06-01 --cloud 0.1 --sensor aerial \\
      -n 8 --batch-size 4 --seed 0 --out out/ --format geotiff
"""


def _add_metadata_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("metadata (leave a field out for 'unknown')")
    group.add_argument("--gsd", type=float, help="ground sample distance, metres per pixel")
    group.add_argument("--lat", type=float, help="latitude of the image centre, degrees north")
    group.add_argument("--lon", type=float, help="longitude of the image centre, degrees east")
    group.add_argument("--date", help="acquisition date, YYYY-MM-DD")
    group.add_argument("--cloud", type=float, help="cloud-cover fraction, 0..1")
    group.add_argument("--sensor", help="sensor/platform name, e.g. sentinel-2, naip, aerial")


def _metadata_from_args(args: argparse.Namespace) -> Metadata:
    return Metadata(
        gsd=args.gsd,
        lat=args.lat,
        lon=args.lon,
        date=parse_date(args.date) if args.date else None,
        cloud=args.cloud,
        sensor=args.sensor,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsgen",
        description="rsgen: diffusion-based data generation for remote sensing.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rsgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    t2i = sub.add_parser(
        "txt2img",
        help="generate images from a prompt and acquisition metadata",
        description="Generate images from a text prompt and metadata; each image gets a JSON provenance sidecar.",
        epilog=EPILOG_TXT2IMG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t2i.add_argument("--model", help="model bundle folder or hub id (default: the built-in model)")
    t2i.add_argument("--prompt", required=True, help="text prompt")
    t2i.add_argument("--negative-prompt", help="negative prompt (the unconditional branch of guidance)")
    _add_metadata_args(t2i)
    t2i.add_argument("-n", "--num-samples", type=int, default=1, help="number of images (default 1)")
    t2i.add_argument("--batch-size", type=int, default=1, help="images per pipeline call (default 1)")
    t2i.add_argument("--seed", type=int, default=0, help="job seed; image i uses a seed derived from (seed, i)")
    t2i.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    t2i.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    t2i.add_argument("--height", type=int, help="image height in pixels (default: the model's native size)")
    t2i.add_argument("--width", type=int, help="image width in pixels (default: the model's native size)")
    t2i.add_argument("--out", required=True, type=Path, help="output folder")
    t2i.add_argument(
        "--format", choices=("png", "geotiff"), default="png",
        help="png, or geotiff placed in the local UTM zone (needs --lat --lon --gsd)",
    )  # fmt: skip
    t2i.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    t2i.add_argument("--allow-pickle", action="store_true", help="allow pickled .bin/.ckpt weights (unsafe)")
    t2i.add_argument("--overwrite", action="store_true", help="write into a folder that already holds samples")

    sr = sub.add_parser(
        "sr",
        help="reference-guided super-resolution of a raster into a georeferenced GeoTIFF",
        description="Super-resolve an LR raster (any band count, uint8/uint16/float) by --scale, optionally "
        "guided by a high-resolution reference of the same place. Output: GeoTIFF with the LR's CRS, the "
        "transform refined by the scale, band descriptions, nodata and dtype carried through, and a JSON sidecar.",
        epilog="example:\n  rsgen sr --model models/sr --lr s2.tif --bands 1,2,3 --ref naip.tif "
        "--ref-strength 0.6 --scale 4 --out hr.tif --tile 256 --overlap 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sr.add_argument("--model", help="SR bundle folder or hub id (default: the built-in model)")
    sr.add_argument("--lr", required=True, type=Path, help="low-resolution raster (GeoTIFF or any GDAL raster)")
    sr.add_argument("--bands", help="1-based LR bands feeding the model, e.g. 4,3,2 (default: the first N)")
    sr.add_argument("--scale", required=True, type=float, help="scale factor >= 1 (2, 4, 6, 8, 10, ...)")
    sr.add_argument("--ref", type=Path, help="high-resolution reference raster of the same place")
    sr.add_argument("--ref-bands", help="1-based reference bands (default: the first N)")
    sr.add_argument("--ref-strength", type=float, default=0.5, help="trust in the reference, 0 = ignore (0.5)")
    sr.add_argument("--ref-strength-map", type=Path, help="per-pixel strength raster covering the LR footprint")
    sr.add_argument("--prompt", default="", help="optional text prompt")
    sr.add_argument("--tile", type=int, help="tile size in output pixels (default: the model's native size)")
    sr.add_argument("--overlap", type=int, default=32, help="tile overlap in output pixels (default 32)")
    sr.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    sr.add_argument("--guidance", type=float, default=1.0, help="text guidance scale (default 1 = off)")
    sr.add_argument(
        "--strength", type=float,
        help="in (0, 1]: 1 samples from pure noise, lower starts from the noised LR (default: the model card's)",
    )  # fmt: skip
    sr.add_argument(
        "--no-lr-consistency", dest="lr_consistency", action="store_false",
        help="let the model change the image below the LR's resolution (default: keep the LR there, add detail)",
    )  # fmt: skip
    sr.add_argument("--seed", type=int, default=0, help="job seed; tile k uses a seed derived from (seed, k)")
    sr.add_argument(
        "--radiometry", default="auto", choices=("auto", "uint8", "reflectance", "float"),
        help="value scaling: auto (by dtype), uint8 (/255), reflectance (/10000), float (already 0..1)",
    )  # fmt: skip
    sr.add_argument("--out", required=True, type=Path, help="output GeoTIFF (*.tif)")
    sr.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    sr.add_argument("--allow-pickle", action="store_true", help="allow pickled .bin/.ckpt weights (unsafe)")
    sr.add_argument("--overwrite", action="store_true", help="replace an existing output file")

    gen = sub.add_parser(
        "generate",
        help="controlled generation from vector layouts, semantic masks or image controls, with exact labels",
        description="Generate images that follow a layout: vector layers (GeoJSON/GeoPackage/Shapefile) "
        "rasterised at --gsd on the local UTM grid, or a semantic mask in a known palette, plus optional image "
        "controls. Writes image, semantic mask, instance mask, object boxes and a provenance sidecar.",
        epilog="examples:\n"
        "  rsgen generate --model models/ctrl --layout buildings.geojson --layout roads.geojson --gsd 0.5 "
        "--prompt 'suburb' -n 4 --out out/\n"
        "  rsgen generate --model models/ctrl --mask mask.png --palette loveda --out out/\n"
        "  rsgen generate --model models/ctrl --mask mask.png --palette loveda --control canny:ref.tif "
        "--control-scale canny=0.5 --control-guidance canny=0:0.6 --out out/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gen.add_argument("--model", help="controlled bundle folder or hub id (default: the built-in model)")
    gen.add_argument("--prompt", default="", help="text prompt")
    gen.add_argument("--negative-prompt", help="negative prompt")
    gen.add_argument(
        "--layout", action="append", default=[],
        help="vector layer, repeatable: PATH (lines = roads, polygons = buildings) or buildings:PATH, roads:PATH, "
        "polygons=CLASS:PATH (CLASS a canonical class, e.g. water)",
    )  # fmt: skip
    gen.add_argument(
        "--polygon-class", action="append", default=[],
        help="attribute rule for polygons: KEY[=VALUE]:CLASS, e.g. natural=water:water, landuse=forest:tree",
    )  # fmt: skip
    gen.add_argument("--mask", type=Path, help="semantic mask (PNG/GeoTIFF, ids or palette colours)")
    gen.add_argument("--palette", help="scheme of --mask: loveda, potsdam, vaihingen, openearthmap, second, levir")
    gen.add_argument(
        "--control", action="append", default=[], help="image control: canny:PATH, depth:DSM[,DTM], image:PATH"
    )
    gen.add_argument("--control-scale", action="append", default=[], help="NAME=SCALE, e.g. canny=0.5 (default 1)")
    gen.add_argument("--control-guidance", action="append", default=[], help="NAME=START:END fraction of the steps")
    _add_metadata_args(gen)
    gen.add_argument("--size", type=int, help="output size in pixels for vector layouts (default: native size)")
    gen.add_argument("--tile", type=int, help="scenes larger than this (px) are generated in tiles (default: native)")
    gen.add_argument("--overlap", type=int, help="tile overlap in pixels for large scenes (default: tile/4, <= 64)")
    for parser_ in (gen,):
        parser_.add_argument("-n", "--num-samples", type=int, default=1, help="number of images (default 1)")
        parser_.add_argument("--batch-size", type=int, default=1, help="images per pipeline call (default 1)")
    inp = sub.add_parser(
        "inpaint",
        help="regenerate a region of an image; every pixel outside it is returned bit-identical",
        description="Inpaint the non-zero pixels of --region in --image (8-bit RGB), optionally following controls. "
        "Pixels outside the region and its --feather margin are bit-identical to the input.",
    )
    inp.add_argument("--model", help="controlled bundle folder or hub id (default: the built-in model)")
    inp.add_argument("--image", required=True, type=Path, help="8-bit RGB image (PNG/GeoTIFF)")
    inp.add_argument("--region", required=True, type=Path, help="mask of the same size: non-zero = regenerate")
    inp.add_argument("--prompt", default="", help="text prompt")
    inp.add_argument("--negative-prompt", help="negative prompt")
    inp.add_argument("--control", action="append", default=[], help="image control: canny:PATH, depth:DSM, image:PATH")
    inp.add_argument("--feather", type=int, default=0, help="cross-fade margin in pixels outside the region (0)")
    _add_metadata_args(inp)
    inp.add_argument("-n", "--num-samples", type=int, default=1, help="number of images (default 1)")
    for parser_ in (gen, inp):
        parser_.add_argument("--seed", type=int, default=0, help="job seed; image i uses a seed derived from (seed, i)")
        parser_.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
        parser_.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (7.5)")
        parser_.add_argument("--out", required=True, type=Path, help="output folder")
        parser_.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
        parser_.add_argument("--allow-pickle", action="store_true", help="allow pickled weights (unsafe)")
        parser_.add_argument("--overwrite", action="store_true", help="write into a folder that already holds samples")
    gen.add_argument(
        "--layout-strength", type=float,
        help="in (0, 1]: < 1 starts from the mask painted in the model's class colours (default: the model card's)",
    )  # fmt: skip

    run = sub.add_parser(
        "run",
        help="run a YAML job spec: deterministic, sharded, resumable, multi-process",
        description="Run or resume a dataset job. Sample i depends only on (seed, i): the same bytes for any "
        "number of processes or after an interruption. Re-running the same command resumes; a different spec "
        "in the same --out folder is refused.",
        epilog="examples:\n  rsgen run examples/jobs/txt2img.yaml --set model=models/tiny --out data/ --dry-run\n"
        "  rsgen run examples/jobs/txt2img.yaml --set model=models/tiny --set num_samples=1000 --out data/ "
        "--num-processes 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("spec", type=Path, help="job spec (YAML)")
    run.add_argument("--out", type=Path, help="output folder (overrides the spec's 'out')")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a spec key")
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan; generate nothing")
    run.add_argument("--num-processes", type=int, default=1, help="launch N processes through accelerate")

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

    cp = sub.add_parser(
        "change-pairs",
        help="bi-temporal change pairs with exact labels: simulated events, full or hybrid synthesis",
        description="Simulate change events on semantic layouts and synthesise image pairs. full: both dates "
        "generated from layouts t1/t2; hybrid: a real t1 image, t2 = t1 inpainted only where the layout changed "
        "(every other pixel bit-identical). Writes LEVIR-CD (A/B/label) or SECOND (im1/im2/label1/label2) "
        "layouts plus events, captions and QA JSON.",
        epilog="examples:\n  rsgen change-pairs --model models/ctrl --layouts masks/ --palette loveda --mode full "
        "--events add_building=0.6,remove_building=0.2,transition=0.2 --change-fraction 0.1 -n 100 --out pairs/\n"
        "  rsgen change-pairs --model models/ctrl --images A/ --masks label/ --palette levir --mode hybrid "
        "--distractors illumination,misregistration --out pairs/\n"
        "  rsgen change-pairs --model models/ctrl --vectors buildings:buildings.geojson --vectors roads:roads.geojson "
        "--gsd 0.5 --size 512 --out pairs/\n"
        "  rsgen change-pairs --model models/ctrl --mode hybrid --images t1.tif --vectors buildings:buildings.geojson "
        "--out pairs/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cp.add_argument("--model", help="controlled bundle with a 'mask' control (default: the built-in model)")
    cp.add_argument("--mode", default="full", choices=("full", "hybrid"), help="full or hybrid synthesis (full)")
    cp.add_argument("--layouts", type=Path, help="full mode: folder of semantic masks")
    cp.add_argument("--images", type=Path, help="hybrid mode: folder of real t1 images (8-bit RGB)")
    cp.add_argument("--masks", type=Path, help="hybrid mode: folder of their masks (same file names)")
    cp.add_argument(
        "--vectors", action="append", default=[],
        help="layout t1 from vector layers instead of masks, repeatable: buildings:PATH (one instance per footprint), "
        "roads:PATH (lines), polygons=CLASS:PATH, or a bare PATH. full mode: rasterised on a UTM grid of --size px "
        "at --gsd; hybrid mode: on the grid of each georeferenced --images file",
    )  # fmt: skip
    cp.add_argument(
        "--polygon-class", action="append", default=[],
        help="--vectors attribute rule for polygons: KEY[=VALUE]:CLASS, e.g. natural=water:water",
    )  # fmt: skip
    cp.add_argument("--size", type=int, help="full mode with --vectors: grid size in pixels (default: native size)")
    cp.add_argument("--lat", type=float, help="full mode with --vectors: grid centre latitude (default: the layers')")
    cp.add_argument("--lon", type=float, help="full mode with --vectors: grid centre longitude")
    cp.add_argument("--palette", default="levir", help="scheme of the masks (levir, loveda, potsdam, ...)")
    cp.add_argument("--events", help="event probabilities, e.g. add_building=0.6,remove_building=0.2,transition=0.2")
    cp.add_argument("--change-fraction", type=float, default=0.1, help="target changed fraction (0.1)")
    cp.add_argument("--no-change-fraction", type=float, default=0.0, help="share of pairs with no event (0)")
    cp.add_argument("--distractors", default="", help="pseudo-changes on t2: illumination,colour,seasonal,haze,"
                    "blur,misregistration,resampling")  # fmt: skip
    cp.add_argument(
        "--gsd", type=float, default=0.5,
        help="ground sample distance of the layouts, m (0.5); --vectors on --images use the images' pixel size",
    )  # fmt: skip
    cp.add_argument("--prompt", default="", help="text prompt")
    cp.add_argument("--layout", default="levir", choices=("levir", "second"), help="output layout (levir)")
    cp.add_argument("-n", "--num-samples", type=int, default=1, help="number of pairs (1)")
    cp.add_argument("--seed", type=int, default=0, help="job seed")
    cp.add_argument("--steps", type=int, default=20, help="denoising steps (20)")
    cp.add_argument("--guidance", type=float, default=7.5, help="guidance scale (7.5)")
    cp.add_argument(
        "--layout-strength", type=float,
        help="in (0, 1]: < 1 starts from the mask painted in the model's class colours (default: the model card's)",
    )  # fmt: skip
    cp.add_argument("--out", required=True, type=Path, help="output folder")
    cp.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    cp.add_argument("--overwrite", action="store_true", help="write into a folder that already holds pairs")

    exp = sub.add_parser(
        "export",
        help="export an rsgen dataset to HF datasets parquet, WebDataset, COCO JSON or a STAC catalog",
        description="Read a dataset written by rsgen (a job folder or a folder of samples) and export it.",
    )
    exp.add_argument("dataset", type=Path, help="rsgen dataset folder")
    exp.add_argument(
        "--format", required=True, choices=("hf", "webdataset", "coco", "stac", "captions"), help="export format"
    )
    exp.add_argument("--out", required=True, type=Path, help="output folder")
    pre = sub.add_parser(
        "preview",
        help="HTML page and PNG contact sheet of a dataset (images, masks with legend, captions)",
        description="Write a self-contained HTML preview (images embedded) and a PNG contact sheet beside it.",
    )
    pre.add_argument("dataset", type=Path, help="rsgen dataset folder")
    pre.add_argument("--out", type=Path, default=Path("preview.html"), help="HTML file (default preview.html)")
    pre.add_argument("--limit", type=int, default=48, help="samples shown (default 48)")

    model = sub.add_parser("model", help="create and inspect model bundles")
    model_sub = model.add_subparsers(dest="model_command", metavar="ACTION")
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
    quick.add_argument("--steps", type=int, default=20, help="denoising steps per image (default 20)")
    quick.add_argument("--model", help="controlled bundle with a 'mask' control (default: the built-in model)")
    return parser


def _cmd_txt2img(args: argparse.Namespace) -> int:
    from gen.txt2img_job import Txt2ImgJob, run_txt2img

    args.model = args.model or DEFAULT_MODEL
    job = Txt2ImgJob(
        model=args.model,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        metadata=_metadata_from_args(args),
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height,
        width=args.width,
        out=args.out,
        fmt=args.format,
        allow_pickle=args.allow_pickle,
        device=args.device,
        overwrite=args.overwrite,
    )
    written = run_txt2img(job)
    sys.stdout.write(f"wrote {len(written)} images with sidecars to {args.out}\n")
    return 0


def _cmd_sr(args: argparse.Namespace) -> int:
    from gen.sr_job import SRJob, run_sr

    args.model = args.model or DEFAULT_MODEL
    job = SRJob(
        model=args.model, lr=args.lr, out=args.out, scale=args.scale, bands=args.bands, ref=args.ref,
        ref_bands=args.ref_bands, ref_strength=args.ref_strength, ref_strength_map=args.ref_strength_map,
        prompt=args.prompt, tile=args.tile, overlap=args.overlap, steps=args.steps, guidance=args.guidance,
        strength=args.strength, lr_consistency=args.lr_consistency, seed=args.seed, radiometry=args.radiometry,
        allow_pickle=args.allow_pickle, device=args.device,
        overwrite=args.overwrite,
    )  # fmt: skip
    path = run_sr(job)
    sys.stdout.write(f"wrote {path} and {path.with_suffix('.json').name}\n")
    return 0


def _pairs(items: list[str], argument: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{argument} {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def _polygon_classes(rules: list[str]) -> dict[str, str]:
    """``--polygon-class KEY[=VALUE]:CLASS`` rules -> {"KEY[=VALUE]": CLASS}."""
    polygon_classes = {}
    for rule in rules:
        key, sep, cls = rule.rpartition(":")
        if not sep or not key or not cls:
            raise ValueError(f"--polygon-class {rule!r}: expected KEY[=VALUE]:CLASS, e.g. natural=water:water")
        polygon_classes[key] = cls
    return polygon_classes


def _cmd_generate(args: argparse.Namespace) -> int:
    from gen.controlled_job import GenerateJob, run_generate

    args.model = args.model or DEFAULT_MODEL
    scales, guidance = {}, {}
    for name, value in _pairs(args.control_scale, "--control-scale").items():
        try:
            scales[name] = float(value)
        except ValueError:
            raise ValueError(f"--control-scale {name}={value!r}: expected a number, e.g. {name}=0.5") from None
    for name, value in _pairs(args.control_guidance, "--control-guidance").items():
        start, sep, end = value.partition(":")
        try:
            guidance[name] = (float(start), float(end))
        except ValueError:
            raise ValueError(
                f"--control-guidance {name}={value!r}: expected NAME=START:END, e.g. canny=0:0.6"
            ) from None
        if not sep:
            raise ValueError(f"--control-guidance {name}={value!r}: expected NAME=START:END, e.g. canny=0:0.6")
    polygon_classes = _polygon_classes(args.polygon_class)
    job = GenerateJob(
        model=args.model, out=args.out, prompt=args.prompt, negative_prompt=args.negative_prompt,
        layouts=args.layout, polygon_classes=polygon_classes, mask=args.mask, palette=args.palette,
        controls=args.control, control_scales=scales, control_guidance=guidance, metadata=_metadata_from_args(args),
        size=args.size, tile=args.tile, overlap=args.overlap, num_samples=args.num_samples,
        batch_size=args.batch_size, seed=args.seed, steps=args.steps, guidance=args.guidance,
        layout_strength=args.layout_strength, allow_pickle=args.allow_pickle, device=args.device,
        overwrite=args.overwrite,
    )  # fmt: skip
    written = run_generate(job)
    sys.stdout.write(f"wrote {len(written)} images with labels and sidecars to {args.out}\n")
    return 0


def _cmd_inpaint(args: argparse.Namespace) -> int:
    from gen.controlled_job import InpaintJob, run_inpaint

    args.model = args.model or DEFAULT_MODEL
    job = InpaintJob(
        model=args.model, image=args.image, region=args.region, out=args.out, prompt=args.prompt,
        negative_prompt=args.negative_prompt, controls=args.control, feather=args.feather,
        metadata=_metadata_from_args(args), num_samples=args.num_samples, seed=args.seed, steps=args.steps,
        guidance=args.guidance, allow_pickle=args.allow_pickle, device=args.device, overwrite=args.overwrite,
    )  # fmt: skip
    written = run_inpaint(job)
    sys.stdout.write(f"wrote {len(written)} inpainted images with sidecars to {args.out}\n")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from gen.job_spec import apply_overrides, load_spec_file, validate_spec

    data = apply_overrides(load_spec_file(args.spec), args.set)
    out = args.out or data.get("out")
    if not out:
        raise ValueError("no output folder: pass --out DIR or set 'out' in the spec")
    spec = validate_spec(data)
    if args.dry_run:
        plan = {
            "task": spec.task, "model": spec.model, "out": str(out), "num_samples": spec.num_samples,
            "shards": spec.num_shards, "shard_size": spec.shard_size, "batch_size": spec.batch_size,
            "processes": args.num_processes, "spec_sha256": spec.digest(),
            "first_samples": [
                {"index": i, "prompt": c["prompt"], "metadata": c["metadata"].to_dict(),
                 **({"mask": str(c["mask"])} if "mask" in c else {})}
                for i, c in ((i, spec.sample_conditions(i)) for i in range(min(3, spec.num_samples)))
            ],
        }  # fmt: skip
        sys.stdout.write(json.dumps(plan, indent=2, default=str) + "\n")
        return 0
    if args.num_processes > 1:
        import subprocess

        # The launcher of this interpreter's accelerate (works without an activated venv / PATH entry).
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(args.num_processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "gen", "run", str(args.spec), "--out", str(out),
        ] + [x for item in args.set for x in ("--set", item)]  # fmt: skip
        return subprocess.call(cmd)
    from gen.job_runner import run_job

    summary = run_job(spec, out)
    sys.stdout.write(f"job done: {summary['num_samples']} samples in {summary['num_shards']} shard(s) at {out}\n")
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


def _cmd_change_pairs(args: argparse.Namespace) -> int:
    from conditions.change_events import ChangeConfig
    from gen.change_job import ChangePairJob, run_change_pairs

    args.model = args.model or DEFAULT_MODEL
    events = {}
    if args.events:
        for name, value in _pairs(args.events.split(","), "--events").items():
            try:
                events[name] = float(value)
            except ValueError:
                raise ValueError(f"--events {name}={value!r}: expected a probability, e.g. {name}=0.5") from None
    config = ChangeConfig(change_fraction=args.change_fraction, **({"events": events} if events else {}))
    if (args.lat is None) != (args.lon is None):
        raise ValueError(f"--lat {args.lat} / --lon {args.lon}: give both (the grid centre) or neither")
    job = ChangePairJob(
        model=args.model, out=args.out, mode=args.mode, layouts=args.layouts, images=args.images, masks=args.masks,
        vectors=args.vectors, polygon_classes=_polygon_classes(args.polygon_class), size=args.size,
        metadata=Metadata(lat=args.lat, lon=args.lon),
        palette=args.palette, change=config, no_change_fraction=args.no_change_fraction,
        distractors=[d for d in args.distractors.split(",") if d], gsd=args.gsd, prompt=args.prompt,
        num_samples=args.num_samples, seed=args.seed, steps=args.steps, guidance=args.guidance, layout=args.layout,
        layout_strength=args.layout_strength, device=args.device, overwrite=args.overwrite,
    )  # fmt: skip
    written = run_change_pairs(job)
    sys.stdout.write(f"wrote {len(written)} change pairs ({args.layout} layout) to {args.out}\n")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from synth_datasets.exporters import export
    from synth_datasets.reader import load_dataset

    result = export(load_dataset(args.dataset), args.format, args.out)
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


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from conditions.change_events import ChangeConfig
    from gen.assets import EXAMPLE_LAYOUTS
    from gen.change_job import ChangePairJob, run_change_pairs
    from synth_datasets.preview import write_preview
    from synth_datasets.reader import load_dataset

    pairs = args.out / "change-pairs"
    job = ChangePairJob(
        model=args.model or DEFAULT_MODEL, out=pairs, mode="full", layouts=EXAMPLE_LAYOUTS, palette="canonical",
        change=ChangeConfig(change_fraction=0.08), distractors=["illumination"], gsd=0.5,
        prompt="aerial image of a suburb", metadata=Metadata(gsd=0.5, sensor="aerial", date=parse_date("2021-06-01")),
        num_samples=args.num_samples, seed=0, steps=args.steps, guidance=3.0, layout="levir", overwrite=True,
    )  # fmt: skip
    written = run_change_pairs(job)
    page, sheet = write_preview(load_dataset(pairs), args.out / "preview.html")
    sys.stdout.write(
        f"quickstart: {len(written)} change pairs (LEVIR-CD layout: A/, B/, label/, captions, events) in {pairs}\n"
        f"open {page} in a browser (contact sheet: {sheet})\n"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("diffusers", "transformers", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING if not args.verbose else logging.DEBUG)
    if not args.verbose:  # rsgen shows its own progress bar; hide the libraries' loading bars
        import diffusers.utils.logging
        import transformers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
    handlers = {
        "txt2img": _cmd_txt2img,
        "generate": _cmd_generate,
        "inpaint": _cmd_inpaint,
        "sr": _cmd_sr,
        "run": _cmd_run,
        "train": _cmd_train,
        "export": _cmd_export,
        "change-pairs": _cmd_change_pairs,
        "preview": _cmd_preview,
        "model": _cmd_model,
        "quickstart": _cmd_quickstart,
    }
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "model" and args.model_command is None:
        parser.parse_args(["model", "--help"])
    from gen.job_runner import JobLockError

    try:
        return handlers[args.command](args)
    except (ValueError, JobLockError, FileExistsError, FileNotFoundError) as err:  # domain errors subclass ValueError
        logger.error("%s", err)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted; samples already written are complete (atomic writes)")
        return 130
