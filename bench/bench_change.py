"""Benchmark: change-event simulation throughput and change-pair generation time by stage.

1. Event simulation on 512×512 real layouts (LEVIR 1024 label crops, LoveDA mask crops): masks/s,
   against a baseline measured in the same run — a naive per-pixel-random 'change' (the cheapest
   possible mask, no geometry): the ratio shows what exact geometric events cost.
2. Pair generation (hybrid, real LEVIR images, tiny random controlled bundle) split into
   simulation, synthesis (inpainting) and writing.

    python bench/bench_change.py [--pairs 8] [--steps 20]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def layouts_512() -> list[tuple[np.ndarray, float]]:
    from conditions.palettes import get_palette

    out = []
    for name in ("test_7", "test_102"):
        with rasterio.open(SHARED / "change" / "levir_cd_1024" / "label" / f"{name}.png") as src:
            label = src.read(1)
        for r in (0, 512):
            for c in (0, 512):
                out.append((get_palette("levir").to_canonical(label[r : r + 512, c : c + 512]), 0.5))
    with rasterio.open(SHARED / "seg" / "loveda" / "masks" / "0.png") as src:
        mask = src.read(1)
    for r in (0, 512):
        for c in (0, 512):
            out.append((get_palette("loveda").to_canonical(mask[r : r + 512, c : c + 512]), 0.3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from conditions.change_events import ChangeConfig, simulate_change

    layouts = layouts_512()
    config = ChangeConfig(change_fraction=0.1)
    start = time.perf_counter()
    events = 0
    for k, (semantic, gsd) in enumerate(layouts):
        events += len(simulate_change(semantic, gsd, config, np.random.default_rng(k)).events)
    t_sim = time.perf_counter() - start
    start = time.perf_counter()
    for k, (semantic, _) in enumerate(layouts):
        rng = np.random.default_rng(k)
        changed = rng.random(semantic.shape) < 0.1
        _ = np.where(changed, 5, semantic)
    t_naive = time.perf_counter() - start
    n = len(layouts)
    print(f"event simulation, {n} real 512x512 layouts, change fraction 0.1: {n / t_sim:.1f} masks/s "
          f"({events / n:.1f} events/mask); per-pixel random baseline {n / t_naive:.1f} masks/s; "
          f"ratio {t_sim / t_naive:.1f}x slower for exact geometric events")  # fmt: skip

    import gen.tasks.change_pairs as change_pairs
    from gen.spec import build_spec
    from pipelines.controlled import RSControlledPipeline
    from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle
    from synth_datasets.change_writer import write_change_pair

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_bundle(tmp / "ctrl", TinyControlledBundleConfig(256, ("mask",)))
        pipe = RSControlledPipeline.from_bundle(model)
        pipe.set_progress_bar_config(disable=True)
        levir = SHARED / "change" / "levir_like"
        spec = build_spec(change_pairs.ChangePairsSpec, {
            "model": str(model), "mode": "hybrid", "images": str(levir / "A"), "masks": str(levir / "label"),
            "steps": args.steps, "change_fraction": config.change_fraction, "num_samples": args.pairs,
        })  # fmt: skip
        task = change_pairs.ChangePairsTask(spec)  # reads and checks the sources
        task.load_model(pipe)
        stages = {"simulation": 0.0, "synthesis": 0.0, "writing": 0.0}

        original = change_pairs.simulate_change

        def timed_simulate(*a, **kw):
            t0 = time.perf_counter()
            result = original(*a, **kw)
            stages["simulation"] += time.perf_counter() - t0
            return result

        change_pairs.simulate_change = timed_simulate
        for i in range(args.pairs):
            t0 = time.perf_counter()
            pair = task.pair(i)  # layout t1, simulation, synthesis and distractors of sample i
            stages["synthesis"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            write_change_pair(tmp / "out", f"{i:08d}", pair, dataset_format=spec.dataset_format)
            stages["writing"] += time.perf_counter() - t0
        stages["synthesis"] -= stages["simulation"]
    total = sum(stages.values())
    print(f"hybrid pairs, 256x256 real LEVIR, tiny model, {args.steps} steps: {args.pairs} pairs in {total:.1f} s")
    for name, seconds in stages.items():
        share, per_pair = 100 * seconds / total, seconds / args.pairs * 1000
        print(f"  {name:10s} {seconds:7.2f} s  ({share:4.1f} %)  {per_pair:7.1f} ms/pair")


if __name__ == "__main__":
    main()
