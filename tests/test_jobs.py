"""YAML job specs and the sharded, resumable, multi-process job runner."""

import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from core.config_file import ConfigError, apply_overrides
from gen.cli import main
from gen.runner import LOCK_FILE, JobLockError, _portable_error, _rebuilt_error, launch_job, run_job
from gen.spec import FieldError, SpecError
from gen.tasks import open_task, spec_from_mapping
from tests.conftest import shared_file

REPO = Path(__file__).resolve().parents[1]


def spec_dict(model, **kw):
    base = {
        "task": "txt2img", "model": str(model), "num_samples": 12, "seed": 3, "batch_size": 2, "shard_size": 4,
        "steps": 3, "threads": 1, "prompt": ["a river", "houses"], "gsd": {"loguniform": [0.5, 2.0]},
        "date": {"range": ["2019-01-01", "2020-12-31"]}, "cloud": {"uniform": [0, 0.3]},
        "sensor": {"choice": ["aerial", "naip"]},
    }  # fmt: skip
    base.update(kw)
    return base


def rsgen(*args, check=True, **popen):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "gen", *args], capture_output=True, text=True, env=env, check=check,
                          cwd=REPO, timeout=600, **popen)  # fmt: skip


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every image and label file (sidecars and manifests carry timestamps)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.suffix in (".png", ".tif")}  # fmt: skip


def manifest(folder: Path) -> list[dict]:
    entries = []
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        entry = json.loads(line)
        entry["provenance"].pop("created")
        entries.append(entry)
    return entries


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"task": "draw"}, r"task: expected one of txt2img, .*change_pairs, time_series, sr, got 'draw'"),
        ({"colour": 1}, r"colour: not used by task 'txt2img'; it uses: .*\bcloud\b"),
        ({"num_samples": 0}, r"num_samples: expected an integer >= 1, got 0"),
        ({"cloud": {"uniform": [0, 1.7]}}, r"cloud: uniform: expected fractions in \[0, 1\]"),
        ({"gsd": {"loguniform": [0, 2]}}, r"gsd: loguniform: expected min <= max and min > 0"),
        ({"gsd": {"normal": [1, 2]}}, r"gsd: unknown distribution 'normal'"),
        ({"date": {"range": ["2020-01-01", "2019-01-01"]}}, r"date: range: start 2020-01-01 is after"),
        ({"location": {"box": [10, 50, 5, 55]}}, r"location: box: expected \[lon_min"),
        ({"cloud": 3}, r"cloud: metadata\.cloud=3 is outside its valid range \[0\.0, 1\.0\]"),
        ({"metadata": {"height": 3}}, r"metadata: not used by task 'txt2img'"),
        ({"format": "geotiff"}, r"format: geotiff needs gsd and a location"),
        ({"task": "generate"}, r"masks: give a layout: masks \(a file or folder\), vectors \(layers\) or a control"),
        ({"prompt": []}, r"prompt: expected at least one entry"),
        ({"cog": True}, r"cog: Cloud-Optimized GeoTIFFs need format geotiff"),
        ({"task": "sr"}, r"lr: required by task 'sr'"),
        (
            {"task": "generate", "layout_strength": 0, "control": ["canny:x"]},
            r"layout_strength: expected a number in \(0, 1\]",
        ),
        ({"task": "generate", "vectors": ["a.geojson"]}, r"gsd: vector layouts are rasterised at the ground sample"),
    ],
)
def test_spec_validation_names_the_key(change, match, tmp_path):
    data = spec_dict("m", **change)
    if data["task"] != "txt2img":  # keep only the keys every task has
        data = {k: v for k, v in data.items() if k in ("task", "model", "num_samples", "seed", "shard_size")} | change
    with pytest.raises(SpecError, match=match):
        spec_from_mapping(data)


def test_overrides_and_deterministic_conditions():
    data = apply_overrides(spec_dict("m"), ["num_samples=5", "cloud={uniform: [0, 0.1]}", "model=other"])
    spec = spec_from_mapping(data)
    assert spec.num_samples == 5 and spec.model == "other" and spec.cloud == {"uniform": [0, 0.1]}
    task = open_task(spec)
    assert task.conditions(3) == open_task(spec_from_mapping(data)).conditions(3)
    conds = [task.conditions(i) for i in range(5)]
    assert all(0.5 <= c.metadata.gsd <= 2.0 and 0 <= c.metadata.cloud <= 0.1 for c in conds)
    assert len({c.metadata.gsd for c in conds}) == 5
    with pytest.raises(ConfigError, match=r"--set 'oops': expected KEY=VALUE"):
        apply_overrides({}, ["oops"])


@pytest.fixture(scope="module")
def job_model(tmp_path_factory):
    from pipelines.tiny_bundle import TinyBundleConfig, build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("jobs") / "m", TinyBundleConfig(image_size=64))


@pytest.fixture(scope="module")
def reference_run(job_model, tmp_path_factory):
    """An uninterrupted single-process run of the job, in this process."""
    folder = tmp_path_factory.mktemp("jobs") / "ref"
    summary = run_job(spec_from_mapping(spec_dict(job_model)), folder)
    assert summary.written_by_this_process == 12
    return folder


def test_outputs_manifest_and_lock(reference_run, job_model):
    assert sorted(p.name for p in (reference_run / "shards").iterdir()) == [
        "00000.jsonl",
        "00001.jsonl",
        "00002.jsonl",
    ]
    entries = manifest(reference_run)
    assert [e["index"] for e in entries] == list(range(12))
    for e in entries:
        image = reference_run / e["files"]["image"]
        assert hashlib.sha256(image.read_bytes()).hexdigest() == e["sha256"]
        assert e["provenance"]["sample_index"] == e["index"]
    assert [e["files"]["image"] for e in entries[:2]] == ["00000000.png", "00000001.png"]  # one folder, 8 digits
    resolved = yaml.safe_load((reference_run / "spec.yaml").read_text())
    assert resolved["seed"] == 3 and resolved["shard_size"] == 4 and resolved["negative_prompt"] is None  # defaults too
    # The same spec again is a resume with nothing to do; another spec is refused.
    assert run_job(spec_from_mapping(spec_dict(job_model)), reference_run).written_by_this_process == 0
    with pytest.raises(JobLockError, match=r"holds another job .* use a new --out folder"):
        run_job(spec_from_mapping(spec_dict(job_model, seed=4)), reference_run)


def test_two_processes_give_the_same_dataset(reference_run, job_model, tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec_dict(job_model)))
    rsgen("run", str(spec_file), "--out", str(tmp_path / "two"), "--num-processes", "2")
    assert tree(tmp_path / "two") == tree(reference_run)
    assert manifest(tmp_path / "two") == manifest(reference_run)
    processes = check_last_run(tmp_path / "two", ranks=2, written=12)
    assert [p["written"] for p in processes] == [8, 4]  # shards 0 and 2 on rank 0, shard 1 on rank 1


def test_kill_9_then_resume_equals_an_uninterrupted_run(reference_run, job_model, tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec_dict(job_model)))
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "gen", "run", str(spec_file), "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("0*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list(out.glob("0*.json"))
    assert 3 <= len(done) < 12, "the job should have been killed part-way"
    for sidecar in done:  # everything under a final name is complete
        entry = json.loads(sidecar.read_text())
        assert hashlib.sha256((sidecar.parent / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
    assert not (out / "manifest.jsonl").exists()
    rsgen("run", str(spec_file), "--out", str(out))
    assert tree(out) == tree(reference_run)
    assert manifest(out) == manifest(reference_run)
    assert not list(out.rglob(".rsgen-tmp-*"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie has exited (nobody reaped it yet)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_sigterm_to_a_two_process_run_stops_its_workers(reference_run, job_model, tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec_dict(job_model)))
    out = tmp_path / "terminated"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "gen", "run", str(spec_file), "--out", str(out), "--num-processes", "2"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("0*.json")):
        time.sleep(0.05)
    children = [int(pid) for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert len(children) == 2, children
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "terminated (SIGTERM): stopping the workers" in stderr, stderr
    assert not [pid for pid in children if _alive(pid)]
    assert not (out / "manifest.jsonl").exists()
    rsgen("run", str(spec_file), "--out", str(out))  # resumes: the samples written before are complete
    assert tree(out) == tree(reference_run)
    assert manifest(out) == manifest(reference_run)


def test_generate_job_from_a_mask_folder(tmp_path, capsys):
    from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle

    model = build_tiny_bundle(tmp_path / "ctrl", TinyControlledBundleConfig(image_size=64, controls=("mask",)))
    masks = tmp_path / "masks"
    masks.mkdir()
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        full = src.read(1)
    for k, (r, c) in enumerate([(0, 0), (512, 512), (256, 768)]):
        with rasterio.open(masks / f"m{k}.png", "w", driver="PNG", width=64, height=64, count=1, dtype="uint8") as dst:
            dst.write(full[None, r : r + 64, c : c + 64])
    spec = {"task": "generate", "model": str(model), "num_samples": 4, "batch_size": 2, "shard_size": 4, "steps": 2,
            "masks": str(masks), "palette": "loveda", "prompt": ["fields"]}  # fmt: skip
    spec_file = tmp_path / "gen.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    assert main(["run", str(spec_file), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["first_samples"][1]["mask"].endswith("m1.png")
    assert main(["run", str(spec_file), "--out", str(tmp_path / "out")]) == 0
    entries = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 4 and all("semantic" in e["files"] for e in entries)
    with rasterio.open(tmp_path / "out" / entries[3]["files"]["semantic"]) as src:  # sample 3 uses mask 0 again
        from conditions.palettes import get_palette

        assert np.array_equal(src.read(1), get_palette("loveda").to_canonical(full[:64, :64]))


def test_spec_writers_export_at_the_end(job_model, tmp_path):
    spec = spec_from_mapping(spec_dict(job_model, num_samples=4, writers=["hf", "webdataset"]))
    run_job(spec, tmp_path / "w")
    assert list((tmp_path / "w" / "export" / "hf" / "data").glob("*.parquet"))
    assert (tmp_path / "w" / "export" / "webdataset" / "shard-00000.tar").is_file()
    with pytest.raises(SpecError, match=r"writers: 'tfrecord' is not one of hf, webdataset"):
        spec_from_mapping(spec_dict(job_model, writers=["tfrecord"]))
    with pytest.raises(SpecError, match=r"writers: stac needs georeferenced samples: set format geotiff"):
        spec_from_mapping(spec_dict(job_model, writers=["stac"]))


def test_layout_and_sr_jobs_on_real_data(tmp_path):
    from rasterio.windows import Window

    from pipelines.tiny_bundle import TinyControlledBundleConfig, TinySRBundleConfig, build_tiny_bundle
    from tests.conftest import crop

    ctrl = build_tiny_bundle(tmp_path / "ctrl", TinyControlledBundleConfig(image_size=64, controls=("mask",)))
    osm = "vector/osm_west_oakland"
    layout = {"task": "generate", "model": str(ctrl), "num_samples": 3, "batch_size": 2, "shard_size": 3,
              "steps": 1, "vectors": [f"buildings:{shared_file(osm + '/buildings.geojson')}",
                                      f"roads:{shared_file(osm + '/roads.geojson')}"], "gsd": 2.0, "size": 64,
              "location": "layers", "writers": ["coco", "stac"]}  # fmt: skip
    run_job(spec_from_mapping(layout), tmp_path / "layout")
    entries = [json.loads(line) for line in (tmp_path / "layout" / "manifest.jsonl").read_text().splitlines()]
    assert len(entries) == 3 and all({"semantic", "instances", "objects"} <= set(e["files"]) for e in entries)
    centres = {tuple(e["provenance"]["bounds"][:2]) for e in entries}
    assert len(centres) == 3  # each sample is a different crop
    assert (tmp_path / "layout" / "export" / "stac" / "catalog.json").is_file()

    sr = build_tiny_bundle(tmp_path / "sr", TinySRBundleConfig(tile_size=64))
    lr = crop(shared_file("geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif"), tmp_path / "lr.tif",
              Window(0, 0, 16, 16))  # fmt: skip
    spec = {"task": "sr", "model": str(sr), "num_samples": 2, "shard_size": 2, "steps": 1, "lr": [str(lr)],
            "scale": 2, "tile": 64}  # fmt: skip
    run_job(spec_from_mapping(spec), tmp_path / "sr_out")
    entries = [json.loads(line) for line in (tmp_path / "sr_out" / "manifest.jsonl").read_text().splitlines()]
    assert [e["files"]["image"] for e in entries] == ["00000000.tif", "00000001.tif"]
    assert entries[0]["sha256"] != entries[1]["sha256"]  # different per-sample seeds
    with pytest.raises(SpecError, match=r"^scale: expected a number >= 1, got 0\.5"):
        spec_from_mapping({**spec, "scale": 0.5})
    with pytest.raises(SpecError, match=r"^strength: expected a number in \(0, 1\], got 0"):
        spec_from_mapping({**spec, "strength": 0})
    with pytest.raises(SpecError, match=r"^strenght: not used by task 'sr'; it uses: .*\bstrength\b"):
        spec_from_mapping({**spec, "strenght": 0.5})
    with pytest.raises(SpecError, match=r"^gsd: metadata\.gsd=0 is outside its valid range"):
        spec_from_mapping({**layout, "gsd": 0})


def test_change_pairs_job_resumes_and_indexes(tmp_path):
    import shutil

    from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle

    ctrl = build_tiny_bundle(tmp_path / "ctrl", TinyControlledBundleConfig(image_size=64, controls=("mask",)))
    for folder in ("A", "label"):
        (tmp_path / folder).mkdir()
        shutil.copy(shared_file(f"change/levir_like/{folder}/test_2_0000_0000.png"), tmp_path / folder / "p.png")
    spec = {"task": "change_pairs", "model": str(ctrl), "num_samples": 3, "shard_size": 2, "steps": 1,
            "mode": "hybrid", "images": str(tmp_path / "A"), "masks": str(tmp_path / "label"), "palette": "levir",
            "change_fraction": 0.05}  # fmt: skip
    run_job(spec_from_mapping(spec), tmp_path / "out")
    entries = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    files = {"A", "B", "label", "semantic1", "semantic2", "changes"}
    assert [e["index"] for e in entries] == [0, 1, 2] and set(entries[0]["files"]) == files
    from synth_datasets.change_writer import read_change_pair

    pair = read_change_pair(tmp_path / "out", "00000001")
    assert np.array_equal(pair["A"][~pair["change"]], pair["B"][~pair["change"]]) and pair["change"].any()
    assert np.array_equal(pair["semantic1"] != pair["semantic2"], pair["change"])  # the layouts of both dates
    # Killed after the first shard: a rerun writes only the missing pair, the same bytes.
    first = (tmp_path / "out" / "B" / "00000002.png").read_bytes()
    for path in (tmp_path / "out").glob("*/00000002.*"):
        path.unlink()
    (tmp_path / "out" / "shards" / "00001.jsonl").unlink()
    assert run_job(spec_from_mapping(spec), tmp_path / "out").written_by_this_process == 1
    assert (tmp_path / "out" / "B" / "00000002.png").read_bytes() == first
    with pytest.raises(SpecError, match=r"^change_fraction: expected a number in \(0, 1\], got 1\.5"):
        spec_from_mapping({**spec, "change_fraction": 1.5})
    with pytest.raises(SpecError, match=r"^events: add_building: expected a number in \[0, 1\], got 1\.7"):
        spec_from_mapping({**spec, "events": {"add_building": 1.7}})


def test_preview_of_a_change_pair_dataset(tmp_path):
    from synth_datasets.preview import write_preview
    from synth_datasets.reader import load_dataset

    test_change_pairs_job_resumes_and_indexes(tmp_path)
    ds = load_dataset(tmp_path / "out")
    assert ds[0].is_change_pair and ds[0].caption
    t1, t2, change = ds[1].pair()
    assert t1.shape == t2.shape and change.shape == t1.shape[:2] and change.any()
    page, sheet = write_preview(ds, tmp_path / "preview.html")
    assert page.read_text().count('src="data:image/png;base64,') == 9 and sheet.is_file()


def check_last_run(folder: Path, ranks: int, written: int) -> list[dict]:
    """``index.json``'s ``last_run``: one record per rank, each started <= ready <= done <= finished."""
    last_run = json.loads((folder / "index.json").read_text())["last_run"]
    processes = last_run["processes"]
    assert [p["rank"] for p in processes] == list(range(ranks))
    assert sum(p["written"] for p in processes) == written
    assert len({p["pid"] for p in processes}) == ranks
    for p in processes:
        assert p["started"] <= p["ready"] <= p["done"] <= last_run["finished"]
    return processes


def test_run_records_process_times(job_model, tmp_path):
    spec = spec_from_mapping(spec_dict(job_model, num_samples=4))
    before = time.time()
    summary = run_job(spec, tmp_path / "t")
    assert summary.finished is not None and before <= summary.processes[0].ready <= summary.finished <= time.time()
    (p,) = check_last_run(tmp_path / "t", ranks=1, written=4)
    assert p["pid"] == os.getpid() and p["ready"] == summary.processes[0].ready
    resumed = run_job(spec, tmp_path / "t")  # nothing to do: no model loaded, the times of this run recorded
    (p,) = check_last_run(tmp_path / "t", ranks=1, written=0)
    assert p["ready"] == resumed.processes[0].ready > summary.finished


def test_a_worker_error_is_reported_once(reference_run, job_model, tmp_path):
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec_dict(job_model, seed=4)))
    lock = (reference_run / LOCK_FILE).read_text()
    # Rank 0 refuses the folder of another job: rank 1 is stopped, the command reports the error once.
    other = rsgen("run", str(spec_file), "--out", str(reference_run), "--num-processes", "2", check=False)
    assert other.returncode == 2 and other.stderr.count("holds another job") == 1, other.stderr
    assert (reference_run / LOCK_FILE).read_text() == lock


def test_launch_job_checks_its_arguments_and_rebuilds_worker_errors(job_model, tmp_path):
    spec = spec_from_mapping(spec_dict(job_model))
    with pytest.raises(ValueError, match=r"^num_processes=0: expected an integer >= 1"):
        launch_job(spec, tmp_path / "x", 0)
    with pytest.raises(ValueError, match=r"^start_method='thread': expected 'fork' or 'spawn'"):
        launch_job(spec, tmp_path / "x", 2, start_method="thread")
    assert not (tmp_path / "x").exists()
    # A FieldError (whose __init__ takes other arguments than its args) comes back whole from a worker.
    err = _rebuilt_error(pickle.loads(pickle.dumps(_portable_error(FieldError("steps", "expected >= 1")))), 1)
    assert type(err) is FieldError and (err.name, err.message) == ("steps", "expected >= 1")
    assert str(err) == "steps: expected >= 1"
    assert err.__notes__[0].startswith("raised by rank 1:\n")


@pytest.mark.slow
def test_spawned_workers_give_the_same_dataset(reference_run, job_model, tmp_path):
    summary = launch_job(spec_from_mapping(spec_dict(job_model)), tmp_path / "spawned", 2, start_method="spawn")
    assert tree(tmp_path / "spawned") == tree(reference_run)
    assert manifest(tmp_path / "spawned") == manifest(reference_run)
    assert [p.rank for p in summary.processes] == [0, 1] and summary.written_by_this_process == 8
    check_last_run(tmp_path / "spawned", ranks=2, written=12)
