"""The rsgen command line: in a subprocess end to end, in-process for argument errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import CRS

from core.hashing import sha256_file
from core.seeding import sample_seed
from gen.cli import main

REPO = Path(__file__).resolve().parents[1]


def rsgen(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "gen", *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=300
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"rsgen {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_texts():
    top = rsgen("--help").stdout
    assert "txt2img" in top and "model" in top and "quickstart" in top
    sub = rsgen("txt2img", "--help").stdout
    for flag in ("--gsd", "--lat", "--date", "--cloud", "--sensor", "--batch-size", "--format", "--allow-pickle"):
        assert flag in sub
    assert "noise" in rsgen("model", "init-tiny", "--help").stdout


def test_txt2img_end_to_end_geotiff(tmp_path):
    model = tmp_path / "model"
    rsgen("model", "init-tiny", str(model), "--size", "64")
    assert json.loads(rsgen("model", "info", str(model)).stdout)["smoke_test"] is True
    common = ["txt2img", "--model", str(model), "--prompt", "a harbour with ships", "--gsd", "0.5", "--lat", "-33.86",
              "--lon", "151.2", "--date", "2020-02-03", "--cloud", "0.2", "--sensor", "aerial", "--seed", "11",
              "--steps", "3", "--format", "geotiff"]  # fmt: skip
    proc = rsgen(*common, "-n", "3", "--batch-size", "2", "--out", str(tmp_path / "a"))
    assert "txt2img: 3 sample(s)" in proc.stdout and "(3 written now)" in proc.stdout
    assert "images are noise" in proc.stderr
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    samples = [f"{i:08d}.{ext}" for i in range(3) for ext in ("json", "tif")]
    assert files == sorted([".rsgen-job.json", "index.json", "manifest.jsonl", "shards", "spec.yaml", *samples])
    for i in range(3):
        sidecar = json.loads((tmp_path / "a" / f"{i:08d}.json").read_text())
        assert sidecar["sample_index"] == i and sidecar["sample_seed"] == sample_seed(11, i)
        assert sidecar["prompt"] == "a harbour with ships" and sidecar["steps"] == 3
        assert sidecar["guidance_scale"] == 7.5 and sidecar["scheduler"]["_class_name"] == "DPMSolverMultistepScheduler"
        expected = {"gsd": 0.5, "lat": -33.86, "lon": 151.2, "date": "2020-02-03", "cloud": 0.2, "sensor": "aerial"}
        assert sidecar["metadata"] == {**expected, "extra": {}}
        assert sidecar["model"]["source"] == str(model) and len(sidecar["model"]["weights_sha256"]) == 64
        assert sidecar["rsgen_version"] and sidecar["versions"]["diffusers"]
        assert sidecar["sha256"] == sha256_file(tmp_path / "a" / sidecar["file"])
        with rasterio.open(tmp_path / "a" / f"{i:08d}.tif") as src:
            assert src.crs == CRS.from_epsg(32756) and src.res == (0.5, 0.5) and src.count == 3
            assert src.bounds == pytest.approx(sidecar["bounds"])
    # Batch size does not change the images: a run with batch size 1 gives the same pixels.
    rsgen(*common, "-n", "3", "--batch-size", "1", "--out", str(tmp_path / "b"))
    for i in range(3):
        with rasterio.open(tmp_path / "a" / f"{i:08d}.tif") as a, rasterio.open(tmp_path / "b" / f"{i:08d}.tif") as b:
            diff = np.abs(a.read().astype(int) - b.read().astype(int))
            assert diff.max() <= 1
    # The same command again resumes (nothing to do); another command into the same folder is refused.
    assert "(0 written now)" in rsgen(*common, "-n", "3", "--batch-size", "2", "--out", str(tmp_path / "a")).stdout
    proc = rsgen(*common, "--out", str(tmp_path / "a"), check=False)
    assert proc.returncode == 2 and "holds another job" in proc.stderr and "use a new --out folder" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["txt2img", "--model", "m", "--prompt", "x", "--out", "o", "--date", "June"],
            "--date: expected an ISO date such as 2021-06-01, got 'June'",
        ),
        (
            ["txt2img", "--model", "m", "--prompt", "x", "--out", "o", "--cloud", "3"],
            "--cloud: metadata.cloud=3 is outside its valid range [0.0, 1.0]",
        ),
        (["generate", "--masks", ".", "--out", "o"], "--palette: masks need their scheme"),
        (["change-pairs", "--mode", "hybrid", "--masks", ".", "--out", "o"], "--images: mode hybrid needs images"),
        (["txt2img", "--model", "nope/does/not", "--prompt", "x", "--out", "o"], "no such folder"),
    ],
)
def test_cli_errors_are_clear(args, message, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    assert message in caplog.text


def test_geotiff_needs_location(tiny_bundle, tmp_path, caplog):
    args = ["txt2img", "--model", str(tiny_bundle), "--prompt", "x", "--out", str(tmp_path), "--format", "geotiff"]
    assert main([*args, "--gsd", "1"]) == 2
    assert "--format: geotiff needs gsd and a location" in caplog.text
    assert not list(tmp_path.iterdir())
