"""Benchmark: reference-guided SR vs. bicubic/Lanczos on the real Sentinel-2 pair, and peak memory.

1. Quality (PSNR/SSIM on reflectance / 10000, data range 1) on the real co-registered DSen2 crop:
   a. cross-resolution: real 20 m B8A (NIR) ×2 against the real 10 m B8 (NIR), 1-band bundle;
   b. degradation: the real 10 m RGB (B4,B3,B2) area-averaged to 20 m, ×2 back, against the 10 m.
   Baselines: bicubic and Lanczos resampling (rasterio/GDAL), measured in the same run.
   With a random-weight smoke bundle the pipeline's numbers are poor; the harness is what counts.
2. Peak memory (max RSS of a fresh process) of an ``sr`` job (``gen.runner.run_job``) at two output
   sizes: it must not grow with the raster's area (only with its width, through one strip of tile rows).

    python bench/bench_sr.py [--model SR_BUNDLE] [--steps 10] [--sizes 512,2048]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gen.runner import run_job, sample_stem  # noqa: E402
from gen.spec import build_spec  # noqa: E402
from gen.tasks.sr import SRSpec  # noqa: E402
from pipelines.tiny_bundle import TinySRBundleConfig, build_tiny_bundle  # noqa: E402

S2 = REPO.parent / "shared" / "data" / "geotiff" / "s2_multires_dsen2"
S2_10M, S2_20M = S2 / "S2A_MSIL1C_20170527_T33UUB_10m.tif", S2 / "S2A_MSIL1C_20170527_T33UUB_20m.tif"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM (Gaussian window 11, sigma 1.5, data range 1) over bands; arrays (bands, H, W)."""
    x = torch.from_numpy(a).float()[:, None]  # (bands, 1, H, W)
    y = torch.from_numpy(b).float()[:, None]
    coords = torch.arange(11, dtype=torch.float32) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]  # (1, 1, 11, 11)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(s.mean())


def unit(values: np.ndarray) -> np.ndarray:
    return np.clip(values.astype(np.float32) / 10000.0, 0, 1)


def resample(path: Path, bands: list[int], shape: tuple[int, int], method: Resampling) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(bands, out_shape=(len(bands), *shape), resampling=method)


def quality(model: dict[str, Path], tmp: Path, steps: int, tile: int) -> None:
    cases = []
    # a. real 20 m NIR (B8A, band 4) -> 10 m, truth = real 10 m B8 (band 4)
    with rasterio.open(S2_10M) as ten:
        truth_nir = ten.read([4])
        truth_rgb = ten.read([1, 2, 3])
        profile = ten.profile
    cases.append(("20m B8A -> 10m B8 (real pair)", S2_20M, [4], truth_nir, model["nir"]))
    # b. 10 m RGB degraded x2 by area averaging, restored x2
    degraded = tmp / "rgb_20m.tif"
    low = resample(S2_10M, [1, 2, 3], (300, 300), Resampling.average)
    profile.update(width=300, height=300, count=3, transform=rasterio.Affine.scale(2.0))
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(degraded, "w", **{**profile, "tiled": False}) as dst:
        dst.write(low)
    cases.append(("10m RGB degraded x2 -> 10m RGB", degraded, [1, 2, 3], truth_rgb, model["rgb"]))

    print("\n== quality (higher is better; smoke bundles have random weights) ==")
    print(f"{'case':34s} {'method':10s} {'PSNR dB':>8s} {'SSIM':>6s} {'time s':>7s}")
    for name, lr, bands, truth, bundle in cases:
        shape = truth.shape[1:]
        for label, method in (("bicubic", Resampling.cubic), ("lanczos", Resampling.lanczos)):
            start = time.perf_counter()
            up = resample(lr, bands, shape, method)
            elapsed = time.perf_counter() - start
            print(f"{name:34s} {label:10s} {psnr(unit(up), unit(truth)):8.2f} {ssim(unit(up), unit(truth)):6.3f} "
                  f"{elapsed:7.2f}")  # fmt: skip
        folder = tmp / f"sr_{len(bands)}"  # a fresh job folder per case
        start = time.perf_counter()
        spec = build_spec(SRSpec, {"model": str(bundle), "lr": str(lr), "scale": 2,
                                   "bands": ",".join(map(str, bands)), "tile": tile, "overlap": 32,
                                   "steps": steps})  # fmt: skip
        run_job(spec, folder)
        elapsed = time.perf_counter() - start
        out = folder / f"{sample_stem(0)}.tif"
        with rasterio.open(out) as src:
            sr = src.read()
        print(f"{name:34s} {'rsgen':10s} {psnr(unit(sr), unit(truth)):8.2f} {ssim(unit(sr), unit(truth)):6.3f} "
              f"{elapsed:7.2f}")  # fmt: skip


def write_mosaic(path: Path, lr_size: int) -> None:
    """An lr_size^2 LR raster tiled from the real 10 m RGB crop (written by the parent process)."""
    with rasterio.open(S2_10M) as ten:
        rgb = ten.read([1, 2, 3])
        profile = ten.profile
    reps = -(-lr_size // 600)
    mosaic = np.tile(rgb, (1, reps, reps))[:, :lr_size, :lr_size]
    profile.update(width=lr_size, height=lr_size, count=3, tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mosaic)


def current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(model: str, lr: Path, steps: int, tile: int) -> None:
    """Run in a fresh process: load the bundle, then SR ``lr`` x2; print RSS after loading and the peak."""
    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    from pipelines.super_resolution import RSSuperResolutionPipeline

    pipe = RSSuperResolutionPipeline.from_bundle(model)
    loaded = current_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        spec = build_spec(SRSpec, {"model": model, "lr": str(lr), "scale": 2, "tile": tile, "overlap": 32,
                                   "steps": steps, "threads": 2})  # fmt: skip
        run_job(spec, Path(tmp) / "hr", pipe=pipe)
        elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"loaded_rss_mb": loaded, "peak_rss_mb": peak, "seconds": elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="an SR bundle with 3 bands (default: a tiny random one)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--sizes", default="512,2048", help="output sizes for the memory test")
    parser.add_argument("--memory-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.model, args.memory_child, args.steps, args.tile)
        return
    logging.basicConfig(level=logging.ERROR)
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not S2_10M.exists():
        raise SystemExit(f"needs the shared data beside the repo: {S2_10M}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {
            "rgb": Path(args.model) if args.model else build_tiny_bundle(tmp / "rgb", TinySRBundleConfig(args.tile)),
            "nir": build_tiny_bundle(tmp / "nir", TinySRBundleConfig(args.tile, bands=("nir",))),
        }
        quality(models, tmp, args.steps, args.tile)
        print("\n== peak memory vs output size (fresh process each, LR written beforehand) ==")
        rows = []
        for size in (int(v) for v in args.sizes.split(",")):
            lr = tmp / f"mosaic_{size}.tif"
            write_mosaic(lr, size // 2)
            cmd = [sys.executable, __file__, "--memory-child", str(lr), "--model", str(models["rgb"]),
                   "--steps", str(args.steps), "--tile", str(args.tile)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = {"size": size, **json.loads(done.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"output {size}x{size}: peak RSS {row['peak_rss_mb']:.0f} MB (after loading the model "
                  f"{row['loaded_rss_mb']:.0f} MB), {row['seconds']:.1f} s")  # fmt: skip
        if len(rows) >= 2:
            first, last = rows[0], rows[-1]
            area = (last["size"] / first["size"]) ** 2
            print(f"area x{area:.0f} -> peak RSS x{last['peak_rss_mb'] / first['peak_rss_mb']:.3f} "
                  f"(+{last['peak_rss_mb'] - first['peak_rss_mb']:.0f} MB)")  # fmt: skip


if __name__ == "__main__":
    main()
