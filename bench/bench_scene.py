"""Benchmark: large-scene controlled generation — time and peak memory at two scene sizes.

Each run is a fresh process generating one scene from the real West Oakland OSM layout
(buildings + roads) with a tiny random controlled bundle (native 256 px):

* tiled: ``rsgen generate`` scene mode (MultiDiffusion latent tiles of 256 px, overlap 64);
* baseline: one untiled pipeline call on the whole canvas (what a plain diffusers ControlNet loop
  does), measured in the same run.

Peak RSS of the tiled runs should stay flat as the area grows; the untiled baseline's grows.

    python bench/bench_scene.py [--sizes 512,1024] [--steps 10]
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VECTOR = REPO.parent / "shared" / "data" / "vector" / "osm_west_oakland"


def child(model: str, size: int, steps: int, mode: str) -> None:
    import torch

    from core.seeding import sample_generators
    from gen.runner import run_job
    from gen.spec import build_spec
    from gen.tasks.generate import GenerateSpec, GenerateTask
    from pipelines.controlled import RSControlledPipeline

    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    pipe = RSControlledPipeline.from_bundle(model)
    pipe.set_progress_bar_config(disable=True)
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as tmp:
        spec = build_spec(GenerateSpec, {
            "model": model, "prompt": "residential neighbourhood",
            "vectors": [f"buildings:{VECTOR / 'buildings.geojson'}", f"roads:{VECTOR / 'roads.geojson'}"],
            "gsd": 0.5, "size": size, "tile": 256, "overlap": 64, "steps": steps, "threads": 2,
        })  # fmt: skip
        start = time.perf_counter()
        if mode == "tiled":
            run_job(spec, Path(tmp) / "out", pipe=pipe)
        else:  # untiled baseline: the same layout as one pipeline call on the whole canvas
            from conditions.masks import SemanticMask, encode_color
            from conditions.palettes import CANONICAL

            task = GenerateTask(spec)
            task.load_model(pipe)
            labels = task.conditions(0).labels  # the layers rasterised on the size² grid, as the tiled job does
            control = encode_color(SemanticMask(labels.semantic, CANONICAL))[None]
            pipe(spec.prompt[0], controls={"mask": control}, num_inference_steps=steps,
                 generator=sample_generators(0, [0]), output_type="np")  # fmt: skip
        elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"loaded_mb": loaded, "peak_mb": peak, "seconds": elapsed}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.steps, args.child[2])
        return
    if not VECTOR.exists():
        raise SystemExit(f"needs the shared data beside the repo: {VECTOR}")
    logging.basicConfig(level=logging.ERROR)
    from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_bundle(Path(tmp) / "ctrl", TinyControlledBundleConfig(image_size=256, controls=("mask",)))
        print(f"scene generation, tiny controlled bundle (native 256 px), {args.steps} steps, 2 threads")
        print(f"{'size':>6s} {'mode':8s} {'seconds':>8s} {'peak RSS MB':>12s} {'after load MB':>14s}")
        for size in (int(s) for s in args.sizes.split(",")):
            for mode in ("tiled", "untiled"):
                cmd = [sys.executable, __file__, "--steps", str(args.steps), "--child", str(model), str(size), mode]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"{size:6d} {mode:8s} failed: {done.stderr.strip().splitlines()[-1]}")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{size:6d} {mode:8s} {row['seconds']:8.1f} {row['peak_mb']:12.0f} {row['loaded_mb']:14.0f}")


if __name__ == "__main__":
    main()
