"""Benchmark: change-event simulation against Changen2's simulator, and change-pair generation time by stage.

1. Event simulation on 16 real 512×512 layouts (LEVIR-CD 1024 label crops, LoveDA mask crops), one thread,
   side by side with Changen2's simulator (torchange 0.0.4, ``models/changen2/change_event_simulation.py``)
   on the same masks: per mask, its ``remove_add_object`` on the building mask (up to 5 removals and 5
   additions) and its ``random_transition`` on the land cover mapped to its OpenEarthMap classes. The two
   alternate over ``--repeats`` rounds; masks/s are per process CPU second (robust to other load) and wall.
   rsgen's number includes every event's exact polygons (what Changen2 does not produce).
2. Pair generation (hybrid, real LEVIR images, tiny random controlled bundle) split into
   simulation, synthesis (inpainting) and writing.

Changen2's code is loaded from torchange's wheel without importing the package (whose imports are heavy);
it needs scikit-image, kept out of rsgen's environment in a folder of its own::

    pip download torchange==0.0.4 --no-deps -d bench-out/changen2
    pip install --target bench-out/changen2/site scikit-image
    python bench/bench_change.py [--pairs 8] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
CHANGEN2 = REPO / "bench-out" / "changen2"
CHANGEN2_MODULE = "torchange/models/changen2/change_event_simulation.py"
# canonical class -> Changen2's OpenEarthMap land-cover ids (0 = unknown: background, ignore, vehicle, sports)
OEM = {"bare": 1, "low_vegetation": 2, "impervious": 3, "road": 4, "tree": 5, "water": 6, "agriculture": 7,
       "building": 8}  # fmt: skip


def layouts_512() -> list[tuple[np.ndarray, float]]:
    from conditions.palettes import get_palette

    out = []
    for name in ("test_7", "test_102"):
        with rasterio.open(SHARED / "change" / "levir_cd_1024" / "label" / f"{name}.png") as src:
            label = src.read(1)
        for r in (0, 512):
            for c in (0, 512):
                out.append((get_palette("levir").to_canonical(label[r : r + 512, c : c + 512]), 0.5))
    for k in (0, 1):
        with rasterio.open(SHARED / "seg" / "loveda" / "masks" / f"{k}.png") as src:
            mask = src.read(1)
        for r in (0, 512):
            for c in (0, 512):
                out.append((get_palette("loveda").to_canonical(mask[r : r + 512, c : c + 512]), 0.3))
    return out


def load_changen2(folder: Path) -> ModuleType:
    """Changen2's simulator module, read from torchange's wheel in ``folder`` (scikit-image from folder/site)."""
    wheels = sorted(folder.glob("torchange-*.whl"))
    if not wheels or not (folder / "site" / "skimage").is_dir():
        sys.exit(
            f"Changen2's simulator is not set up in {folder}: run\n  pip download torchange==0.0.4 --no-deps "
            f"-d {folder}\n  pip install --target {folder / 'site'} scikit-image\n(or pass --no-changen2)"
        )
    sys.path.append(str(folder / "site"))  # after rsgen's own packages: rsgen's numpy stays the one imported
    source = folder / "change_event_simulation.py"
    with zipfile.ZipFile(wheels[-1]) as wheel:
        source.write_bytes(wheel.read(CHANGEN2_MODULE))
    spec = importlib.util.spec_from_file_location("changen2_simulation", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_rsgen(layouts: list[tuple[np.ndarray, float]]) -> tuple[float, float, float, float]:
    """(CPU s, wall s, events per mask, changed fraction) for rsgen's simulator over the layouts."""
    from conditions.change_events import ChangeConfig, simulate_change

    config, events, changed = ChangeConfig(change_fraction=0.1), 0, 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    for k, (semantic, gsd) in enumerate(layouts):
        result = simulate_change(semantic, gsd, config, np.random.default_rng(k))
        events += len(result.events)
        changed += result.change_mask.mean()
    n = len(layouts)
    return time.process_time() - cpu, time.perf_counter() - wall, events / n, changed / n


def run_changen2(module: ModuleType, layouts: list[tuple[np.ndarray, float]]) -> tuple[float, float, float, float]:
    """The same for Changen2's simulator: building removals/additions and land-cover transitions per mask."""
    from conditions.palettes import CANONICAL

    table = np.zeros(256, np.int64)
    for name, oem in OEM.items():
        table[CANONICAL.class_by_name(name).id] = oem
    building = CANONICAL.class_by_name("building").id
    inputs = [((semantic == building).astype(np.uint8), table[semantic]) for semantic, _ in layouts]
    changed = 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    for k, (buildings, land_cover) in enumerate(inputs):
        random.seed(k)
        np.random.seed(k)
        buildings_t2 = module.remove_add_object(buildings, 5)
        land_cover_t2 = module.random_transition(land_cover, 9)
        changed += ((buildings_t2 != buildings) | (land_cover_t2 != land_cover)).mean()
    return time.process_time() - cpu, time.perf_counter() - wall, float("nan"), changed / len(inputs)


def simulation_table(repeats: int, changen2: ModuleType | None) -> None:
    import cv2

    cv2.setNumThreads(1)
    layouts = layouts_512()
    n = len(layouts)
    runs: dict[str, list[tuple[float, float, float, float]]] = {"rsgen": [], "changen2": []}
    run_rsgen(layouts[:2])  # warm-up: imports, caches
    for _ in range(repeats):  # alternate, so both see the same machine
        runs["rsgen"].append(run_rsgen(layouts))
        if changen2 is not None:
            runs["changen2"].append(run_changen2(changen2, layouts))
    print(f"event simulation, {n} real 512x512 layouts (LEVIR-CD, LoveDA), 1 thread, {repeats} alternated rounds:")
    print(f"  {'simulator':10s} {'masks/CPU-s':>12s} {'masks/s wall':>13s} {'events/mask':>12s} {'changed':>8s}")
    rates = {}
    for name, rounds in runs.items():
        if not rounds:
            continue
        cpu = statistics.median(r[0] for r in rounds)
        wall = statistics.median(r[1] for r in rounds)
        rates[name] = n / cpu
        print(f"  {name:10s} {n / cpu:12.1f} {n / wall:13.1f} {rounds[0][2]:12.1f} {rounds[0][3]:8.3f}")
    if "changen2" in rates:
        print(f"  rsgen / Changen2: {rates['rsgen'] / rates['changen2']:.2f}x (per CPU second, median of rounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--changen2", type=Path, default=CHANGEN2, help="folder with torchange's wheel and site/")
    parser.add_argument("--no-changen2", action="store_true", help="time rsgen's simulator only")
    parser.add_argument("--simulation-only", action="store_true", help="skip the pair-generation stages")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    simulation_table(args.repeats, None if args.no_changen2 else load_changen2(args.changen2))
    if args.simulation_only:
        return

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
            "steps": args.steps, "change_fraction": 0.1, "num_samples": args.pairs,
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
