"""Benchmark: the job engine vs a naive loop, and 1 vs 2 processes.

On the same tiny bundle, the same samples (prompts, metadata, seeds) and the same output format:

* naive: for each sample, one pipeline call (batch 1) and a synchronous PNG + sidecar save;
* engine: ``rsgen run`` (batches of ``--batch-size``, writes on a background thread, shards,
  manifest), 1 process with ``threads`` = cores, then 2 processes with 1 thread each.

Prints wall times, images/s, the engine/naive ratio and the 2-process scaling efficiency.

    python bench/bench_jobs.py [--size 128] [-n 32] [--batch-size 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def naive(spec_data: dict, out: Path, threads: int) -> None:
    import torch

    from core.seeding import sample_generators
    from gen.tasks import spec_from_mapping
    from gen.tasks.common import draw_text_conditions
    from pipelines.text2img import RSText2ImagePipeline
    from synth_datasets.sample_writer import write_image_sample
    from synth_datasets.samples import ImageSample

    torch.set_num_threads(threads)
    spec = spec_from_mapping(spec_data)
    pipe = RSText2ImagePipeline.from_bundle(spec.model)
    pipe.set_progress_bar_config(disable=True)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(spec.num_samples):
        text, _ = draw_text_conditions(spec, i)  # the same prompt and metadata as the engine's sample i
        result = pipe(
            text.prompt, metadata=text.metadata, num_inference_steps=spec.steps, guidance_scale=spec.guidance,
            generator=sample_generators(spec.seed, [i]), output_type="np",
        )  # fmt: skip
        image = result.images[0]
        write_image_sample(out, f"{i:08d}", ImageSample(image, {"prompt": text.prompt, "index": i}))


def run_cli(spec_file: Path, out: Path, processes: int) -> float:
    env = {**os.environ, "RSGEN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "gen", "run", str(spec_file), "--out", str(out), "--num-processes", str(processes)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--naive-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_child:
        naive(
            yaml.safe_load(Path(args.naive_child[0]).read_text()), Path(args.naive_child[1]), int(args.naive_child[2])
        )
        return
    from pipelines.tiny_bundle import TinyBundleConfig, build_tiny_bundle

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_bundle(tmp / "m", TinyBundleConfig(image_size=args.size))
        spec = {
            "task": "txt2img", "model": str(model), "num_samples": args.n, "seed": 0, "batch_size": args.batch_size,
            "shard_size": max(args.n // 4, args.batch_size), "steps": args.steps, "threads": cores,
            "prompt": ["dense residential area", "farmland with a river"],
            "gsd": {"loguniform": [0.3, 2.0]}, "cloud": {"uniform": [0, 0.2]},
        }  # fmt: skip
        one = tmp / "one.yaml"
        one.write_text(yaml.safe_dump(spec))
        two = tmp / "two.yaml"
        two.write_text(yaml.safe_dump({**spec, "threads": 1}))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--naive-child", str(one), str(tmp / "naive"), str(cores)],
                       check=True, env=env, capture_output=True)  # fmt: skip
        t_naive = time.perf_counter() - start
        t_one = run_cli(one, tmp / "engine1", 1)
        t_one_1thread = run_cli(two, tmp / "engine1t", 1)
        t_two = run_cli(two, tmp / "engine2", 2)
    n = args.n
    print(f"tiny bundle {args.size}px, n={n}, steps={args.steps}, batch {args.batch_size}, {cores} cores")
    print(f"naive loop (batch 1, sync save, {cores} threads): {t_naive:7.1f} s  {n / t_naive:6.2f} img/s")
    print(f"engine, 1 process, {cores} threads:            {t_one:7.1f} s  {n / t_one:6.2f} img/s")
    print(f"engine, 1 process, 1 thread:                {t_one_1thread:7.1f} s  {n / t_one_1thread:6.2f} img/s")
    print(f"engine, 2 processes, 1 thread each:         {t_two:7.1f} s  {n / t_two:6.2f} img/s")
    print(f"engine / naive speed-up: {t_naive / t_one:.2f}x")
    print(f"2-process scaling efficiency vs 1 process x 1 thread: {t_one_1thread / (2 * t_two):.2f}")


if __name__ == "__main__":
    main()
