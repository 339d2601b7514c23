"""Benchmark: the rsgen txt2img job vs. a plain loop of diffusers StableDiffusionPipeline calls.

Both run on the same tiny bundle (no metadata, so Stable Diffusion can run it), the same steps,
guidance and per-sample seeds, and both write PNGs. The script checks that the images agree and
prints both wall times and the ratio. Run by hand:

    python bench/bench_txt2img.py --size 256 -n 16 --batch-size 4 --steps 20
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import diffusers.utils.logging
import numpy as np
import PIL.Image
import torch
import transformers.utils.logging
from diffusers import StableDiffusionPipeline

from core.seeding import sample_seed
from gen.runner import run_job, sample_stem
from gen.spec import build_spec
from gen.tasks.txt2img import Txt2ImgSpec
from pipelines.tiny_bundle import TinyBundleConfig, build_tiny_bundle

PROMPT = "dense residential area with a river and a bridge"


def plain_diffusers_loop(model: Path, out: Path, n: int, steps: int, guidance: float, seed: int) -> None:
    """The baseline a user would write: one pipeline call and one synchronous save per sample."""
    pipe = StableDiffusionPipeline.from_pretrained(
        model, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        generator = torch.Generator().manual_seed(sample_seed(seed, i))
        image = pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance, generator=generator).images[0]
        image.save(out / f"{sample_stem(i)}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ["RSGEN_NO_PROGRESS"] = "1"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_bundle(root / "model", TinyBundleConfig(image_size=args.size, metadata=False))

        start = time.perf_counter()
        plain_diffusers_loop(model, root / "plain", args.n, args.steps, args.guidance, args.seed)
        t_plain = time.perf_counter() - start

        spec = build_spec(
            Txt2ImgSpec,
            {
                "model": str(model), "prompt": PROMPT, "num_samples": args.n, "batch_size": args.batch_size,
                "seed": args.seed, "steps": args.steps, "guidance": args.guidance, "threads": args.threads,
            },
        )  # fmt: skip
        start = time.perf_counter()
        run_job(spec, root / "rsgen")  # loads the bundle itself, like the plain loop
        t_rsgen = time.perf_counter() - start

        max_diff = 0
        for i in range(args.n):
            a = np.asarray(PIL.Image.open(root / "plain" / f"{sample_stem(i)}.png"), dtype=np.int16)
            b = np.asarray(PIL.Image.open(root / "rsgen" / f"{sample_stem(i)}.png"), dtype=np.int16)
            max_diff = max(max_diff, int(np.abs(a - b).max()))

    print(f"tiny bundle {args.size}x{args.size}, n={args.n}, steps={args.steps}, threads={args.threads}")
    print(f"plain diffusers loop (batch 1, sync save): {t_plain:8.2f} s  ({args.n / t_plain:.2f} img/s)")
    print(f"rsgen txt2img job (batch {args.batch_size}):           {t_rsgen:8.2f} s  ({args.n / t_rsgen:.2f} img/s)")
    print(f"speed-up rsgen / plain: {t_plain / t_rsgen:.2f}x")
    print(f"max |pixel difference| between the two outputs: {max_diff} (uint8 levels)")
    if max_diff > 2:
        raise SystemExit("outputs disagree: the job path does not reproduce the plain diffusers images")


if __name__ == "__main__":
    main()
