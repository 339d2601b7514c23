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
* :func:`launch_job` runs a job on N local processes (``rsgen run --num-processes N``). With a CPU build of
  torch the workers are forked from the caller after it has imported everything: no worker re-imports torch,
  diffusers or the tasks, they start together and each only loads its model. Otherwise (a CUDA build, or a
  caller that has already started torch's thread pool, which a forked child cannot use) they are spawned, and
  import in parallel. ``accelerate launch -m gen run`` still works: :func:`run_job` reads the rank from the
  environment either way.
* ``OUT/index.json`` records the times of the last run (``last_run``): for every process when it started,
  when it was ready (model loaded, about to generate) and when its last shard was done; and when the job
  finished (manifest and index written).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import shutil
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import PartialState

from core.atomic import atomic_write_text, remove_stale_temporaries
from core.device import default_threads
from core.progress import progress
from gen.spec import spec_digest, spec_mapping
from gen.tasks import open_task
from synth_datasets.samples import StreamedImage

logger = logging.getLogger(__name__)

LOCK_FILE = ".rsgen-job.json"
STEM_DIGITS = 8
STOP_GRACE_S = 10.0  # how long a stopped worker gets to exit on SIGTERM before it is killed
_IMPORTED_AT = time.time()


def _os_thread_count() -> int | None:
    """Threads of this process (all of them, not only Python's); ``None`` where /proc is missing."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _process_start_time() -> float:
    """When this process was created (Unix time, to 10 ms, from /proc on Linux; elsewhere when this module was
    imported)."""
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        ticks = int(Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


# Threads started by the imports above (numpy's and OpenCV's pools: fork-safe). A thread started later may be
# torch's OpenMP pool, which a forked child cannot use (it hangs in its first multi-threaded op).
_THREADS_AT_IMPORT = _os_thread_count()


class JobLockError(RuntimeError):
    """The output folder belongs to another job (a different spec), or one is still running there."""


def sample_stem(index: int) -> str:
    return f"{index:0{STEM_DIGITS}d}"


@dataclass(frozen=True)
class ProcessTimes:
    """When one process of a run started, was ready to generate, and was done (Unix times, seconds)."""

    rank: int
    pid: int
    started: float  # the process was created (a forked worker: the fork; then imports if any, model load)
    ready: float  # its model is loaded (or it had nothing to do): from here on it only generates and writes
    done: float  # its last shard is written
    written: int  # samples it wrote


@dataclass(frozen=True)
class JobSummary:
    num_samples: int
    num_shards: int
    spec_sha256: str
    written_by_this_process: int
    processes: tuple[ProcessTimes, ...] = ()  # every process of the run, by rank
    finished: float | None = None  # manifest and index written (on rank 0)


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
    """Run (or resume) ``spec`` into ``out`` on this process's share of the shards (``pipe``: a loaded model).
    The rank and the number of processes come from the environment (``accelerate launch``, :func:`launch_job`)."""
    started = _process_start_time()
    # The processes only meet at barriers and to gather their times: gloo (cpu=True) does that on any machine, and
    # leaves each process's GPU to its spec's device (resolve_device), also when processes outnumber GPUs.
    state = PartialState(cpu=True)
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
        written, ready = _run_shards(spec, task, out, rank, world, pipe)
    except BaseException:
        if state.is_main_process and fresh and not _any_sample(spec, task, out):
            shutil.rmtree(out, ignore_errors=True)  # no sample was complete: free the folder for a corrected command
        raise
    finally:
        torch.set_num_threads(threads)
    times = ProcessTimes(rank, os.getpid(), started, ready, time.time(), written)
    state.wait_for_everyone()
    every = _gather_times(times, world)
    summary = JobSummary(spec.num_samples, spec.num_shards, spec_digest(spec), written, every)
    if state.is_main_process:
        summary = _finish(spec, out, summary)
    return summary


def _gather_times(times: ProcessTimes, world: int) -> tuple[ProcessTimes, ...]:
    """Every process's times, by rank (a collective: every rank calls it)."""
    if world == 1 or not torch.distributed.is_initialized():
        return (times,)
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, times)
    return tuple(sorted(gathered, key=lambda t: t.rank))


def launch_job(spec: Any, out: str | os.PathLike, processes: int, *, start_method: str | None = None) -> JobSummary:
    """Run (or resume) ``spec`` into ``out`` on ``processes`` local worker processes (1: in this process) and
    wait for them; returns rank 0's summary (with the times of every process). ``start_method``: ``fork`` or
    ``spawn``; by default fork where it is safe (:func:`fork_is_safe`), else spawn. The first error a worker
    reports stops the others and is raised here, with the worker's traceback as a note."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"num_processes={processes!r}: expected an integer >= 1 (the number of local processes)")
    if processes == 1:
        return run_job(spec, out)
    if torch.distributed.is_initialized():
        raise RuntimeError("launch_job: this process is already part of a distributed run; call run_job in it")
    method = start_method or ("fork" if fork_is_safe() else "spawn")
    if method not in ("fork", "spawn"):
        raise ValueError(f"start_method={method!r}: expected 'fork' or 'spawn'")
    context = multiprocessing.get_context(method)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(processes),
           "LOCAL_WORLD_SIZE": str(processes), "OMP_NUM_THREADS": str(spec.threads or default_threads())}  # fmt: skip
    log_level = logging.getLogger().getEffectiveLevel()
    workers: list[tuple[Any, Connection]] = []
    try:
        with _terminate_raises(), warnings.catch_warnings():
            # Python >= 3.12 warns about fork in a process with threads: here they are numpy's and OpenCV's idle
            # pools (fork-safe); fork_is_safe() refused torch's.
            warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
            for rank in range(processes):
                receiver, sender = context.Pipe(duplex=False)
                worker = context.Process(target=_worker, args=(spec, str(out), rank, env, log_level, sender),
                                         name=f"rsgen-rank-{rank}")  # fmt: skip
                worker.start()
                sender.close()  # the worker holds the only sending end: EOF once it exits
                workers.append((worker, receiver))
            logger.info("started %d %s worker(s) for %s", processes, method, out)
            return _collect(workers)
    finally:
        _stop(worker for worker, _ in workers)


@contextmanager
def _terminate_raises() -> Iterator[None]:
    """Within: SIGTERM (``kill``, a scheduler's stop) raises SystemExit(143) in the main thread, so that the caller
    stops its workers before it exits instead of leaving them running (off the main thread: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        logger.error("terminated (SIGTERM): stopping the workers; samples already written are complete")
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fork_is_safe() -> bool:
    """Whether workers may be forked from this process: Linux, a CPU-only torch build (a CUDA build may have
    initialised the driver, which a forked child cannot use), and no thread started since this module was
    imported (torch's OpenMP pool, once started, hangs a forked child's first multi-threaded op)."""
    if not hasattr(os, "fork") or torch.version.cuda is not None or torch.version.hip is not None:
        return False
    threads = _os_thread_count()
    return threads is not None and _THREADS_AT_IMPORT is not None and threads <= _THREADS_AT_IMPORT


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(spec: Any, out: str, rank: int, env: dict[str, str], log_level: int, result: Connection) -> None:
    """One process of :func:`launch_job`: run the job as ``rank`` and send back its summary or its error."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker inherits the caller's handler: stop at once
    os.environ.update(env, RANK=str(rank), LOCAL_RANK=str(rank))
    if not logging.getLogger().handlers:  # spawned: a fresh interpreter (a forked worker keeps the caller's)
        logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    PartialState._reset_state()  # a forked worker inherits the caller's (single-process) state: read the new rank
    try:
        message: tuple[str, Any] = ("ok", run_job(spec, out))
    except BaseException as err:  # noqa: BLE001 - every error goes back to the caller, which raises it
        message = ("error", _portable_error(err))
    result.send(message)
    result.close()
    if message[0] == "error":
        raise SystemExit(1)


def _portable_error(err: BaseException) -> tuple[type, tuple, dict, str]:
    """``err`` as (class, args, attributes, traceback text), rebuilt by :func:`_rebuilt_error` without calling
    its ``__init__`` (which may take other arguments than ``args``, as ``FieldError`` does)."""
    text = "".join(traceback.format_exception(err))
    payload = (type(err), err.args, dict(vars(err)), text)
    try:
        pickle.dumps(payload)
    except Exception:  # noqa: BLE001 - an unpicklable class or attribute: keep its message
        return RuntimeError, (f"{type(err).__name__}: {err}",), {}, text
    return payload


def _rebuilt_error(payload: tuple[type, tuple, dict, str], rank: int) -> BaseException:
    cls, args, attributes, text = payload
    err = cls.__new__(cls)
    err.args = args
    vars(err).update(attributes)
    err.add_note(f"raised by rank {rank}:\n{text.rstrip()}")
    return err


def _collect(workers: list[tuple[Any, Connection]]) -> JobSummary:
    """Wait for every worker; rank 0's summary, or raise the first error a worker reports."""
    summaries: dict[int, JobSummary] = {}
    pending = {receiver: rank for rank, (_, receiver) in enumerate(workers)}
    while pending:
        for receiver in wait(list(pending)):
            rank = pending.pop(receiver)
            worker = workers[rank][0]
            try:
                status, value = receiver.recv()
            except EOFError:  # it died without a word (killed, out of memory)
                worker.join()
                raise RuntimeError(
                    f"rank {rank} (pid {worker.pid}) exited with code {worker.exitcode} before it finished; "
                    "samples already written are complete, rerun the same command to resume"
                ) from None
            if status == "error":
                raise _rebuilt_error(value, rank)
            summaries[rank] = value
    for worker, _ in workers:
        worker.join()
    return summaries[0]


def _stop(workers: Any) -> None:
    """Stop the workers still running (a failed or interrupted launch): SIGTERM, then SIGKILL after a grace."""
    workers = list(workers)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            worker.kill()
            worker.join()


def _run_shards(spec: Any, task: Any, out: Path, rank: int, world: int, pipe: Any) -> tuple[int, float]:
    """Generate and write this process's missing samples, shard by shard; returns how many it wrote and when
    it was ready to generate (its model loaded)."""
    mine = [k for k in range(spec.num_shards) if k % world == rank]
    todo = [k for k in mine if not (out / "shards" / f"{k:05d}.jsonl").exists()]
    done = task.layout.done_file
    missing_total = sum(not done(out, sample_stem(i)).exists() for k in todo for i in spec.shard_indices(k))
    logger.info("rank %d/%d: %d shard(s) to do, %d sample(s) missing", rank, world, len(todo), missing_total)
    if missing_total:  # a finished job resumes without loading its model
        task.load_model(pipe)
    ready = time.time()
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
    return written, ready


def _any_sample(spec: Any, task: Any, out: Path) -> bool:
    return any(task.layout.done_file(out, sample_stem(i)).exists() for i in range(spec.num_samples))


def _finish(spec: Any, out: Path, summary: JobSummary) -> JobSummary:
    """Join the shard manifests, write the index (with this run's times), run the export writers, release the
    lock; returns ``summary`` with its ``finished`` time."""
    manifest = "".join((out / "shards" / f"{k:05d}.jsonl").read_text() for k in range(spec.num_shards))
    atomic_write_text(out / "manifest.jsonl", manifest)
    summary = replace(summary, finished=time.time())
    last_run = {"processes": [asdict(times) for times in summary.processes], "finished": summary.finished}
    index = {"num_samples": summary.num_samples, "num_shards": summary.num_shards,
             "spec_sha256": summary.spec_sha256, "task": spec.task, "last_run": last_run}  # fmt: skip
    atomic_write_text(out / "index.json", json.dumps(index, indent=2) + "\n")
    if spec.writers:
        from synth_datasets.exporters import export
        from synth_datasets.reader import load_dataset

        dataset = load_dataset(out)
        for fmt in spec.writers:
            export(dataset, fmt, out / "export" / fmt)
            logger.info("exported %s to %s", fmt, out / "export" / fmt)
    _release_lock(out, spec)
    return summary
