"""Run a job spec: deterministic, sharded, resumable, multi-process through accelerate.

Layout of an output folder::

    OUT/.rsgen-job.json          lock: spec digest, state, pid of the running main process
    OUT/spec.yaml                the resolved spec
    OUT/shards/00000/00000000.png + .json (+ labels)   samples of shard 0
    OUT/shards/00000.jsonl       shard manifest, written when the shard is complete
    OUT/manifest.jsonl           all shard manifests in order (written by rank 0 at the end)
    OUT/index.json               counts and digest

* Sample ``i`` belongs to shard ``i // shard_size``; rank ``r`` of ``W`` processes takes the shards
  ``k ≡ r (mod W)``. Samples are generated in fixed chunks of ``batch_size`` counted from the shard's
  start, each with its own generator, and ``torch.set_num_threads(spec.threads)``: so the bytes of
  every image are the same for any number of processes, and after any interruption.
* Every file is written atomically; a sample is complete once its sidecar exists, a shard once its
  manifest exists. A restarted job (after ``kill -9`` too) skips complete shards, regenerates only
  chunks with missing samples, writes only the missing ones, and clears stale temporaries.
* A folder holding a different spec's job is refused; the same spec resumes.
* Writes run on a background thread while the model computes the next chunk.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from conditions.masks import SemanticMask, encode_color, read_mask
from conditions.metadata import Metadata
from conditions.palettes import CANONICAL
from core.atomic import atomic_write_text, remove_stale_temporaries
from core.device import resolve_device
from core.hashing import sha256_file
from core.progress import progress
from core.seeding import sample_generators, sample_seed
from gen.job_spec import JobSpec
from gen.provenance import sample_record
from gen.sr_job import run_sr
from synth_datasets.geotiff import GeoReference, georeference_from_point
from synth_datasets.layout_writer import write_layout_sample
from synth_datasets.sample_writer import write_image_sample

logger = logging.getLogger(__name__)

LOCK_FILE = ".rsgen-job.json"


class JobLockError(RuntimeError):
    """The output folder belongs to another job (a different spec), or one is still running there."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(out: Path, spec: JobSpec) -> None:
    """Claim ``out`` for ``spec`` (main process only); refuse another spec or a live concurrent run."""
    lock = out / LOCK_FILE
    digest = spec.digest()
    if lock.exists():
        held = json.loads(lock.read_text())
        if held.get("spec_sha256") != digest:
            raise JobLockError(
                f"out={str(out)!r} holds another job (spec sha256 {held.get('spec_sha256', '?')[:12]}…, this spec "
                f"{digest[:12]}…); use a new --out folder, or rerun that job's exact spec to resume it"
            )
        pid, host = held.get("pid"), held.get("host")
        if held.get("state") == "running" and host == socket.gethostname() and pid and pid != os.getpid():
            if _pid_alive(pid):
                raise JobLockError(f"out={str(out)!r}: the same job is already running (pid {pid}); wait for it")
    record = {"spec_sha256": digest, "state": "running", "pid": os.getpid(), "host": socket.gethostname()}
    atomic_write_text(lock, json.dumps(record, indent=2) + "\n")
    spec_file = out / "spec.yaml"
    if not spec_file.exists():
        atomic_write_text(spec_file, yaml.safe_dump(spec.raw, sort_keys=True))


def _release_lock(out: Path, spec: JobSpec) -> None:
    record = {"spec_sha256": spec.digest(), "state": "done", "pid": None, "host": socket.gethostname()}
    atomic_write_text(out / LOCK_FILE, json.dumps(record, indent=2) + "\n")


def load_task_pipeline(spec: JobSpec) -> Any:
    if spec.task == "txt2img":
        from pipelines.text2img import RSText2ImagePipeline

        pipe = RSText2ImagePipeline.from_bundle(spec.model)
    elif spec.task == "sr":
        from pipelines.super_resolution import RSSuperResolutionPipeline

        pipe = RSSuperResolutionPipeline.from_bundle(spec.model)
    else:
        from pipelines.controlled import RSControlledPipeline

        pipe = RSControlledPipeline.from_bundle(spec.model)
        if spec.raw.get("layout_strength") is not None:
            pipe.set_layout_strength(float(spec.raw["layout_strength"]), "layout_strength")
    pipe.to(resolve_device("auto"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _record(spec: JobSpec, pipe: Any, index: int, conditions: dict[str, Any]) -> dict[str, Any]:
    record = sample_record(
        spec.task, pipe, spec.model, job_seed=spec.seed, index=index, steps=spec.steps, guidance=spec.guidance,
        prompt=conditions["prompt"], negative_prompt=spec.negative_prompt, metadata=conditions["metadata"],
    )  # fmt: skip
    record["spec_sha256"] = spec.digest()
    return record


class TaskContext:
    """What a task reads once per process: the pipeline and, for layout jobs, the vector layers."""

    def __init__(self, spec: JobSpec) -> None:
        self.pipe = load_task_pipeline(spec)
        self.rules = None
        self.bounds = None
        self.change_job = None
        if spec.task == "change_pairs":
            from conditions.change_events import ChangeConfig
            from gen.change_job import ChangePairJob

            c = spec.change
            config = ChangeConfig(change_fraction=float(c.get("change_fraction", 0.1)),
                                  **({"events": c["events"]} if c.get("events") else {}))  # fmt: skip
            self.change_job = ChangePairJob(
                model=spec.model, out=Path("."), mode=c.get("mode", "full"),
                layouts=Path(c["layouts"]) if c.get("layouts") else None,
                images=Path(c["images"]) if c.get("images") else None,
                masks=Path(c["masks"]) if c.get("masks") else None, palette=c.get("palette", "levir"),
                vectors=list(c.get("vectors") or []), polygon_classes=dict(c.get("polygon_classes") or {}),
                size=c.get("size"), metadata=Metadata(lat=c.get("lat"), lon=c.get("lon")),
                change=config, no_change_fraction=float(c.get("no_change_fraction", 0.0)),
                distractors=list(c.get("distractors", [])), gsd=float(c.get("gsd", 0.5)), prompt=spec.prompts[0],
                seed=spec.seed, steps=spec.steps, guidance=spec.guidance, layout=c.get("layout", "levir"),
            )  # fmt: skip
            self.change_job.validate()
            self.sources = self.change_job.sources()
        if spec.task == "layout":
            from gen.controlled_job import layout_bounds_lonlat, load_layout_rules

            self.rules = load_layout_rules(list(spec.layouts["files"]), spec.layouts.get("polygon_classes"))
            self.bounds = layout_bounds_lonlat(self.rules)

    def conditions(self, spec: JobSpec, index: int) -> dict[str, Any]:
        return spec.sample_conditions(index, self.bounds)


def generate_chunk(spec: JobSpec, ctx: TaskContext, chunk: list[int]) -> list[tuple[int, np.ndarray, dict, Any]]:
    """Images of the samples in ``chunk`` (one pipeline call) with their conditions and labels."""
    pipe = ctx.pipe
    conditions = [ctx.conditions(spec, i) for i in chunk]
    common = {
        "prompt": [c["prompt"] for c in conditions],
        "negative_prompt": spec.negative_prompt,
        "metadata": [c["metadata"] for c in conditions] if pipe.has_metadata else None,
        "num_inference_steps": spec.steps,
        "guidance_scale": spec.guidance,
        "generator": sample_generators(spec.seed, chunk),
        "output_type": "np",
    }
    semantics = []
    if spec.task == "txt2img":
        images = pipe(**common).images
    elif spec.task == "layout":
        from gen.controlled_job import layout_labels_at

        size = spec.layouts.get("size") or pipe.model_card.native_size[0]
        semantics = [  # random crops may fall on empty ground: background-only labels are valid samples
            layout_labels_at(ctx.rules, c["metadata"].lat, c["metadata"].lon, c["metadata"].gsd, size, allow_empty=True)
            for c in conditions
        ]
        control = torch.stack([encode_color(SemanticMask(lab.semantic, CANONICAL)) for lab in semantics])
        images = pipe(controls={"mask": control}, **common).images
    else:
        masks = [read_mask(c["mask"], spec.masks["palette"]) for c in conditions]
        shapes = {m.shape for m in masks}
        if len(shapes) != 1:
            raise ValueError(f"masks.dir: masks in one batch differ in size {sorted(shapes)}; use equal-size masks")
        semantics = [m.palette.to_canonical(m.ids) for m in masks]
        control = torch.stack([encode_color(SemanticMask(s, CANONICAL)) for s in semantics])  # (B, 3, H, W)
        images = pipe(controls={"mask": control}, **common).images
    out = []
    for k, (index, image, cond) in enumerate(zip(chunk, images, conditions)):
        out.append((index, image, cond, semantics[k] if semantics else None))
    return out


def write_sample(spec: JobSpec, ctx: TaskContext, shard_dir: Path, index: int, image: np.ndarray, cond: dict,
                 semantic: Any) -> None:  # fmt: skip
    pipe = ctx.pipe
    stem = f"{index:08d}"
    record = _record(spec, pipe, index, cond)
    georef = None
    if spec.task == "layout":  # semantic is the LayoutLabels: exact grid, instances and objects
        labels = semantic
        georef = GeoReference(crs=labels.grid.crs, transform=labels.grid.transform)
        record["conditions"] = [{"kind": r.kind, "source": r.layer.source, "sha256": r.layer.sha256}
                                for r in ctx.rules]  # fmt: skip
        write_layout_sample(shard_dir, stem, image, labels.semantic, record, instances=labels.instances,
                            objects=labels.objects, georef=georef, cog=spec.cog)  # fmt: skip
        return
    if spec.format == "geotiff":
        md = cond["metadata"]
        georef = georeference_from_point(md.lat, md.lon, md.gsd, image.shape[0], image.shape[1])
    if semantic is not None:
        record["conditions"] = [{"kind": "mask", "source": str(cond["mask"]), "palette": spec.masks["palette"]}]
        write_layout_sample(shard_dir, stem, image, semantic, record, georef=georef, cog=spec.cog)
    else:
        write_image_sample(shard_dir, stem, image, record, fmt=spec.format, georef=georef, cog=spec.cog)


def _sr_job(spec: JobSpec, ctx: TaskContext, index: int, shard_dir: Path) -> Any:
    from gen.sr_job import SRJob

    lr = spec.lr
    cond = ctx.conditions(spec, index)
    return SRJob(
        model=spec.model, lr=cond["lr"], out=shard_dir / f"{index:08d}.tif", scale=float(lr["scale"]),
        bands=lr.get("bands"), ref=Path(lr["ref"]) if lr.get("ref") else None,
        ref_strength=float(lr.get("ref_strength", 0.5)),
        strength=float(lr["strength"]) if lr.get("strength") is not None else None,
        lr_consistency=bool(lr.get("lr_consistency", True)), tile=lr.get("tile"), overlap=int(lr.get("overlap", 32)),
        prompt=cond["prompt"], steps=spec.steps, guidance=float(spec.raw.get("guidance", 1.0)),
        seed=sample_seed(spec.seed, index),
        overwrite=True,
    )  # fmt: skip


def sample_done(spec: JobSpec, shard_dir: Path, index: int) -> Path:
    """The file whose presence marks sample ``index`` complete (written last)."""
    if spec.task == "change_pairs":
        return shard_dir / "changes" / f"{index:08d}.json"
    return shard_dir / f"{index:08d}.json"


def _change_manifest(shard_dir: Path, indices: range) -> str:
    lines = []
    for index in indices:
        record = json.loads((shard_dir / "changes" / f"{index:08d}.json").read_text())
        folders = ("A", "B", "label") if record["layout"] == "levir" else ("im1", "im2", "label1", "label2")
        suffix = record.get("suffix", ".png")
        files = {f: f"shards/{shard_dir.name}/{f}/{index:08d}{suffix}" for f in folders}
        files["changes"] = f"shards/{shard_dir.name}/changes/{index:08d}.json"
        entry = {"id": f"{index:08d}", "index": index, "shard": shard_dir.name, "files": files,
                 "sha256": sha256_file(shard_dir / folders[1] / f"{index:08d}{suffix}"),
                 "provenance": record["provenance"], "captions": record["captions"]}  # fmt: skip
        lines.append(json.dumps(entry, sort_keys=True))
    return "\n".join(lines) + "\n"


def _shard_manifest(shard_dir: Path, indices: range) -> str:
    if (shard_dir / "changes").is_dir():
        return _change_manifest(shard_dir, indices)
    lines = []
    for index in indices:
        sidecar = json.loads((shard_dir / f"{index:08d}.json").read_text())
        files = {
            "image": f"shards/{shard_dir.name}/{sidecar['file']}",
            "sidecar": f"shards/{shard_dir.name}/{index:08d}.json",
        }
        for name, label in sidecar.get("labels", {}).items():
            files[name] = f"shards/{shard_dir.name}/{label['file']}"
        entry = {"id": f"{index:08d}", "index": index, "shard": shard_dir.name, "files": files,
                 "sha256": sidecar["sha256"], "provenance": sidecar}  # fmt: skip
        lines.append(json.dumps(entry, sort_keys=True))
    return "\n".join(lines) + "\n"


def run_job(spec: JobSpec, out: str | os.PathLike) -> dict[str, Any]:
    """Run (or resume) ``spec`` into ``out`` on this process's share of the shards."""
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    rank, world = state.process_index, state.num_processes
    out = Path(out)
    torch.set_num_threads(spec.threads)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        acquire_lock(out, spec)
    state.wait_for_everyone()
    held = json.loads((out / LOCK_FILE).read_text())
    if held["spec_sha256"] != spec.digest():
        raise JobLockError(f"rank {rank}: the lock in {out} names another spec")
    ctx = TaskContext(spec)
    mine = [k for k in range(spec.num_shards) if k % world == rank]
    todo = [k for k in mine if not (out / "shards" / f"{k:05d}.jsonl").exists()]
    missing_total = sum(
        sum(not sample_done(spec, out / "shards" / f"{k:05d}", i).exists() for i in spec.shard_indices(k)) for k in todo
    )
    logger.info("rank %d/%d: %d shard(s) to do, %d sample(s) missing", rank, world, len(todo), missing_total)
    bar = progress(total=missing_total, desc=f"{spec.task} job", unit="img")
    written = 0
    with ThreadPoolExecutor(max_workers=1) as writer:
        for k in todo:
            shard_dir = out / "shards" / f"{k:05d}"
            shard_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(shard_dir)
            indices = spec.shard_indices(k)
            pending: list[Future] = []
            for start in range(indices.start, indices.stop, spec.batch_size):
                chunk = list(range(start, min(start + spec.batch_size, indices.stop)))
                missing = {i for i in chunk if not sample_done(spec, shard_dir, i).exists()}
                if not missing:
                    continue
                if spec.task == "change_pairs":  # each pair: simulation, two syntheses, its own writer
                    from gen.change_job import make_pair
                    from synth_datasets.change_writer import write_change_pair

                    job = ctx.change_job
                    for index in sorted(missing):
                        pair = make_pair(job, ctx.pipe, index, ctx.sources[index % len(ctx.sources)])
                        pair["record"]["provenance"]["spec_sha256"] = spec.digest()
                        write_change_pair(shard_dir, f"{index:08d}", pair["A"], pair["B"], pair["sem_a"],
                                          pair["sem_b"], pair["change"], pair["record"], layout=job.layout,
                                          georef=pair["georef"])  # fmt: skip
                    bar.update(len(missing))
                    written += len(missing)
                    continue
                if spec.task == "sr":  # SR tiles, blends and writes each raster itself
                    for index in sorted(missing):
                        run_sr(_sr_job(spec, ctx, index, shard_dir), ctx.pipe)
                    bar.update(len(missing))
                    written += len(missing)
                    continue
                results = generate_chunk(spec, ctx, chunk)  # the whole chunk, so the bytes never change
                for future in pending:  # the previous chunk's writes ran while this chunk computed
                    future.result()
                pending = [
                    writer.submit(write_sample, spec, ctx, shard_dir, index, image, cond, semantic)
                    for index, image, cond, semantic in results
                    if index in missing
                ]
                bar.update(len(missing))
                written += len(missing)
            for future in pending:
                future.result()
            atomic_write_text(out / "shards" / f"{k:05d}.jsonl", _shard_manifest(shard_dir, indices))
    bar.close()
    state.wait_for_everyone()
    summary = {"num_samples": spec.num_samples, "num_shards": spec.num_shards, "spec_sha256": spec.digest()}
    if state.is_main_process:
        manifest = "".join((out / "shards" / f"{k:05d}.jsonl").read_text() for k in range(spec.num_shards))
        atomic_write_text(out / "manifest.jsonl", manifest)
        atomic_write_text(out / "index.json", json.dumps({**summary, "task": spec.task}, indent=2) + "\n")
        if spec.writers:
            from synth_datasets.exporters import export
            from synth_datasets.reader import load_dataset

            dataset = load_dataset(out)
            for fmt in spec.writers:
                export(dataset, fmt, out / "export" / fmt)
                logger.info("exported %s to %s", fmt, out / "export" / fmt)
        _release_lock(out, spec)
    summary["written_by_this_process"] = written
    return summary
