"""The one job runner: every CLI command and ``rsgen run`` go through :func:`run_job`.

Layout of an output folder (samples of every shard side by side, named by their 8-digit index)::

    OUT/.rsgen-job.json      lock: spec digest, state, pid of the running main process
    OUT/spec.yaml            the resolved spec (every key, defaults included)
    OUT/00000000.png + .json (+ labels)      or  OUT/A/ B/ label/ changes/ for change pairs
    OUT/shards/00000.jsonl   manifest of shard 0, written when the shard is complete
    OUT/manifest.jsonl       all shard manifests in order (written by rank 0 at the end)
    OUT/index.json           counts, task and digest

* Sample ``i`` belongs to shard ``i // shard_size``; rank ``r`` of ``W`` processes takes the shards
  ``k ≡ r (mod W)``. Samples are generated in fixed chunks of the task's batch size counted from the
  shard's start, each with its own generator: the bytes of every sample are the same for any number of
  processes, and after any interruption.
* Every file is written atomically; a sample is complete once its last file (sidecar or change record)
  exists, a shard once its manifest exists. A restarted job (after ``kill -9`` too) skips complete
  shards, regenerates only chunks with missing samples, writes only the missing ones, and clears stale
  temporaries.
* A folder holding a different spec's job is refused; the same spec resumes. A non-empty folder that
  holds no job is refused too.
* Writes run on a background thread while the model computes the next chunk (streamed images, such as
  tiled scenes and super-resolved rasters, are written on the main thread: they call the model).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from core.atomic import atomic_write_text, remove_stale_temporaries
from core.device import default_threads
from core.progress import progress
from gen.spec import spec_digest, spec_mapping
from gen.tasks import open_task
from synth_datasets.samples import StreamedImage

logger = logging.getLogger(__name__)

LOCK_FILE = ".rsgen-job.json"
STEM_DIGITS = 8


class JobLockError(RuntimeError):
    """The output folder belongs to another job (a different spec), or one is still running there."""


def sample_stem(index: int) -> str:
    return f"{index:0{STEM_DIGITS}d}"


@dataclass(frozen=True)
class JobSummary:
    num_samples: int
    num_shards: int
    spec_sha256: str
    written_by_this_process: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(out: Path, spec: Any) -> bool:
    """Claim ``out`` for ``spec`` (main process only); refuse another spec, a live run, or a foreign folder.
    Returns whether the folder was empty (a fresh job)."""
    lock = out / LOCK_FILE
    digest = spec_digest(spec)
    if lock.exists():
        held = json.loads(lock.read_text())
        if held.get("spec_sha256") != digest:
            raise JobLockError(
                f"out={str(out)!r} holds another job (spec sha256 {held.get('spec_sha256', '?')[:12]}…, this spec "
                f"{digest[:12]}…); use a new --out folder, or rerun that job's exact command or spec to resume it"
            )
        pid, host = held.get("pid"), held.get("host")
        if held.get("state") == "running" and host == socket.gethostname() and pid and pid != os.getpid():
            if _pid_alive(pid):
                raise JobLockError(f"out={str(out)!r}: the same job is already running (pid {pid}); wait for it")
    elif any(out.iterdir()):
        raise JobLockError(f"out={str(out)!r} is not empty and holds no rsgen job; use a new or empty folder")
    fresh = not lock.exists()
    record = {"spec_sha256": digest, "state": "running", "pid": os.getpid(), "host": socket.gethostname()}
    atomic_write_text(lock, json.dumps(record, indent=2) + "\n")
    spec_file = out / "spec.yaml"
    if not spec_file.exists():
        atomic_write_text(spec_file, yaml.safe_dump(spec_mapping(spec), sort_keys=True))
    return fresh


def _release_lock(out: Path, spec: Any) -> None:
    record = {"spec_sha256": spec_digest(spec), "state": "done", "pid": None, "host": socket.gethostname()}
    atomic_write_text(out / LOCK_FILE, json.dumps(record, indent=2) + "\n")


def plan_job(spec: Any, out: str | os.PathLike, processes: int = 1) -> dict[str, Any]:
    """What ``run_job`` would do, with the conditions of the first samples; loads no model."""
    task = open_task(spec)
    return {
        "task": spec.task, "model": spec.model, "out": str(out), "num_samples": spec.num_samples,
        "shards": spec.num_shards, "shard_size": spec.shard_size, "processes": processes,
        "spec_sha256": spec_digest(spec),
        "first_samples": [{"index": i, **task.describe(i)} for i in range(min(3, spec.num_samples))],
    }  # fmt: skip


def _chunks(indices: range, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, indices.stop))) for s in range(indices.start, indices.stop, size)]


def run_job(spec: Any, out: str | os.PathLike, *, pipe: Any = None) -> JobSummary:
    """Run (or resume) ``spec`` into ``out`` on this process's share of the shards (``pipe``: a loaded model)."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    out = Path(out)
    task = open_task(spec)  # inputs are read and checked before the folder is claimed (errors: FieldError)
    fresh = False
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        fresh = acquire_lock(out, spec)
        remove_stale_temporaries(out)
    state.wait_for_everyone()
    if json.loads((out / LOCK_FILE).read_text())["spec_sha256"] != spec_digest(spec):
        raise JobLockError(f"rank {rank}: the lock in {out} names another spec")
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads or default_threads())
    try:
        written = _run_shards(spec, task, out, rank, world, pipe)
    except BaseException:
        if state.is_main_process and fresh and not _any_sample(spec, task, out):
            shutil.rmtree(out, ignore_errors=True)  # no sample was complete: free the folder for a corrected command
        raise
    finally:
        torch.set_num_threads(threads)
    state.wait_for_everyone()
    summary = JobSummary(spec.num_samples, spec.num_shards, spec_digest(spec), written)
    if state.is_main_process:
        _finish(spec, out, summary)
    return summary


def _run_shards(spec: Any, task: Any, out: Path, rank: int, world: int, pipe: Any) -> int:
    """Generate and write this process's missing samples, shard by shard; returns how many it wrote."""
    mine = [k for k in range(spec.num_shards) if k % world == rank]
    todo = [k for k in mine if not (out / "shards" / f"{k:05d}.jsonl").exists()]
    done = task.layout.done_file
    missing_total = sum(not done(out, sample_stem(i)).exists() for k in todo for i in spec.shard_indices(k))
    logger.info("rank %d/%d: %d shard(s) to do, %d sample(s) missing", rank, world, len(todo), missing_total)
    if missing_total:  # a finished job resumes without loading its model
        task.load_model(pipe)
    written = 0
    bar = progress(total=missing_total, desc=spec.task, unit="sample")
    with ThreadPoolExecutor(max_workers=1) as writer, bar:
        for k in todo:
            indices = spec.shard_indices(k)
            pending: list[Future] = []
            for chunk in _chunks(indices, task.chunk_size):
                missing = {i for i in chunk if not done(out, sample_stem(i)).exists()}
                if not missing:
                    continue
                samples = task.samples(chunk)  # the whole chunk, so the bytes never change
                for future in pending:  # the previous chunk's writes ran while this chunk computed
                    future.result()
                pending = []
                for index, sample in zip(chunk, samples):
                    if index not in missing:
                        continue
                    if isinstance(getattr(sample, "image", None), StreamedImage):
                        task.layout.write(out, sample_stem(index), sample)  # runs the model: main thread
                    else:
                        pending.append(writer.submit(task.layout.write, out, sample_stem(index), sample))
                bar.update(len(missing))
                written += len(missing)
            for future in pending:
                future.result()
            entries = [{**task.layout.manifest_entry(out, sample_stem(i), i), "shard": k} for i in indices]
            text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
            atomic_write_text(out / "shards" / f"{k:05d}.jsonl", text)
    return written


def _any_sample(spec: Any, task: Any, out: Path) -> bool:
    return any(task.layout.done_file(out, sample_stem(i)).exists() for i in range(spec.num_samples))


def _finish(spec: Any, out: Path, summary: JobSummary) -> None:
    """Join the shard manifests, write the index, run the export writers, release the lock."""
    manifest = "".join((out / "shards" / f"{k:05d}.jsonl").read_text() for k in range(spec.num_shards))
    atomic_write_text(out / "manifest.jsonl", manifest)
    index = {"num_samples": summary.num_samples, "num_shards": summary.num_shards,
             "spec_sha256": summary.spec_sha256, "task": spec.task}  # fmt: skip
    atomic_write_text(out / "index.json", json.dumps(index, indent=2) + "\n")
    if spec.writers:
        from synth_datasets.exporters import export
        from synth_datasets.reader import load_dataset

        dataset = load_dataset(out)
        for fmt in spec.writers:
            export(dataset, fmt, out / "export" / fmt)
            logger.info("exported %s to %s", fmt, out / "export" / fmt)
    _release_lock(out, spec)
