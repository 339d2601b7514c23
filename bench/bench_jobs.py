"""Benchmark: the job engine vs a naive loop, and 1 vs 2 processes.

On the same tiny bundle, the same samples (prompts, metadata, seeds) and the same output format:

* naive: for each sample, one pipeline call (batch 1) and a synchronous PNG + sidecar save;
* engine: ``rsgen run`` (batches of ``--batch-size``, writes on a background thread, shards,
  manifest), 1 process with ``threads`` = cores, then 1 process with 1 thread, then 2 processes
  with 1 thread each (``--num-processes 2``).

Every configuration runs ``--repeats`` times, in turn (so a burst of load on a shared machine hits
one repeat of each, not every repeat of one); each number is printed as the median with the
[min, max] over the repeats, and the 1-minute load average of the machine before and after each
run is shown, so the numbers taken under load stand out. Prints:

* wall times (the whole command: launch, imports, model load, generation, manifest, exit) and images/s;
* per engine run, where the wall time went, from the times the runner records in ``OUT/index.json``
  (``last_run``): launch to the first process's start (the parent's imports and checks, for 2
  processes), start to ready (imports, and model load), ready to finished (generation, writes,
  manifest) and finished to exit;
* the engine/naive speed-up (wall times, 1 process with all cores vs the naive loop);
* the 2-process scaling efficiency vs 1 process x 1 thread on wall times, and again with the clock
  started once every process has loaded its model (ready to finished: the last process's ready
  time for 2 processes; the skew between the two processes' ready times is shown).

    python bench/bench_jobs.py [--size 128] [-n 96] [--batch-size 8] [--steps 20] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class EngineRun:
    """One ``rsgen run``: its wall time and the phases read from ``index.json`` (seconds)."""

    wall: float
    to_start: float  # command launched -> first process created
    to_ready: float  # first process created -> last process ready (model loaded)
    ready_skew: float  # first -> last process ready
    generating: float  # last process ready -> job finished (manifest and index written)
    to_exit: float  # job finished -> command exited
    load: tuple[float, float]  # 1-minute load average before and after


def loadavg() -> float:
    return os.getloadavg()[0]


def run_cli(spec_file: Path, out: Path, processes: int) -> EngineRun:
    env = {**os.environ, "RSGEN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "gen", "run", str(spec_file), "--out", str(out), "--num-processes", str(processes)]
    before = loadavg()
    launched, start = time.time(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    wall, exited = time.perf_counter() - start, time.time()
    last_run = json.loads((out / "index.json").read_text())["last_run"]
    started = min(p["started"] for p in last_run["processes"])
    readies = [p["ready"] for p in last_run["processes"]]
    finished = last_run["finished"]
    return EngineRun(wall, started - launched, max(readies) - started, max(readies) - min(readies),
                     finished - max(readies), exited - finished, (before, loadavg()))  # fmt: skip


def run_naive(spec_file: Path, out: Path, threads: int) -> tuple[float, tuple[float, float]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = loadavg()
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--naive-child", str(spec_file), str(out), str(threads)],
                   check=True, env=env, capture_output=True)  # fmt: skip
    return time.perf_counter() - start, (before, loadavg())


def spread(values: list[float], digits: int = 1) -> str:
    """median [min, max]; a single value as it is."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]"


def loads(runs: list[tuple[float, float]]) -> str:
    return ", ".join(f"{a:.1f}->{b:.1f}" for a, b in runs)


def phases(runs: list[EngineRun]) -> str:
    def phase(name: str, digits: int = 1) -> str:
        return spread([getattr(r, name) for r in runs], digits)

    return (f"launch->start {phase('to_start')} s, start->ready {phase('to_ready')} s "
            f"(ready skew {phase('ready_skew', 2)} s), ready->finished {phase('generating')} s, "
            f"finished->exit {phase('to_exit')} s")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("-n", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="runs of every configuration (default 2)")
    parser.add_argument("--naive-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_child:
        naive(
            yaml.safe_load(Path(args.naive_child[0]).read_text()), Path(args.naive_child[1]), int(args.naive_child[2])
        )
        return
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: expected an integer >= 1")
    from pipelines.tiny_bundle import TinyBundleConfig, build_tiny_bundle

    cores = os.cpu_count() or 1
    naive_runs: list[tuple[float, tuple[float, float]]] = []
    engine: dict[str, list[EngineRun]] = {"one": [], "one_1thread": [], "two": []}
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
        one_thread = tmp / "one_thread.yaml"
        one_thread.write_text(yaml.safe_dump({**spec, "threads": 1}))
        for repeat in range(args.repeats):
            naive_runs.append(run_naive(one, tmp / f"naive{repeat}", cores))
            engine["one"].append(run_cli(one, tmp / f"engine1-{repeat}", 1))
            engine["one_1thread"].append(run_cli(one_thread, tmp / f"engine1t-{repeat}", 1))
            engine["two"].append(run_cli(one_thread, tmp / f"engine2-{repeat}", 2))
    n = args.n
    t_naive = [wall for wall, _ in naive_runs]
    print(f"tiny bundle {args.size}px, n={n}, steps={args.steps}, batch {args.batch_size}, {cores} cores, "
          f"{args.repeats} repeat(s): median [min, max]")  # fmt: skip
    print(f"naive loop (batch 1, sync save, {cores} threads): {spread(t_naive)} s  "
          f"{spread([n / t for t in t_naive], 2)} img/s   load {loads([lo for _, lo in naive_runs])}")  # fmt: skip
    labels = {"one": f"engine, 1 process, {cores} threads:", "one_1thread": "engine, 1 process, 1 thread:",
              "two": "engine, 2 processes, 1 thread each:"}  # fmt: skip
    for key, label in labels.items():
        runs = engine[key]
        print(f"{label:37s} {spread([r.wall for r in runs])} s  {spread([n / r.wall for r in runs], 2)} img/s   "
              f"load {loads([r.load for r in runs])}")  # fmt: skip
        print("    " + phases(runs))
    speedup = [a / r.wall for a, r in zip(t_naive, engine["one"], strict=True)]
    wall_eff = [a.wall / (2 * b.wall) for a, b in zip(engine["one_1thread"], engine["two"], strict=True)]
    ready_eff = [a.generating / (2 * b.generating) for a, b in zip(engine["one_1thread"], engine["two"], strict=True)]
    print(f"engine / naive speed-up (wall): {spread(speedup, 2)}x")
    print(f"2-process scaling efficiency vs 1 process x 1 thread, wall (everything): {spread(wall_eff, 2)}")
    print(
        f"2-process scaling efficiency vs 1 process x 1 thread, clock from every process ready: {spread(ready_eff, 2)}"
    )


if __name__ == "__main__":
    main()
