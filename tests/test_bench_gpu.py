"""bench/bench_gpu.py --dry-run: the GPU benchmark's whole matrix runs on the CPU at tiny width, one step each, and
prints every row of its table."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    *[("sd15", config, batch) for config in ("fp32", "fp16", "fp16+compile", "fp16+xformers") for batch in (1, 8)],
    *[(model, "fp16", batch) for model in ("sd21", "sd2-inpaint-cn") for batch in (1, 8)],
]
NUMBER = r"\d+\.\d\d"


@pytest.mark.slow
def test_dry_run_prints_every_row_of_the_table():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "bench/bench_gpu.py", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("model ") and "diffusers img/s" in line and "rsgen img/s" in line for line in lines)
    for title in ("SD-1.5", "SD-2.1", "SD-2-inpainting + ControlNet"):
        assert any(line.startswith(f"{title}: built, saved and loaded in ") for line in lines), title
    table = [line for line in lines if re.match(r"^(sd15|sd21|sd2-inpaint-cn) ", line)]
    assert [tuple(line.split()[:3]) for line in table] == [(m, c, str(b)) for m, c, b in ROWS]
    for line, (_, config, _) in zip(table, ROWS):
        if "xformers" in config:
            assert line.endswith("skipped: xformers needs CUDA"), line
        else:  # diffusers img/s, rsgen img/s and their ratio were measured
            assert re.match(rf"^\S+\s+\S+\s+\d+\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s", line), line
    ratios = [line.split()[:2] for line in lines if line.startswith("  sd15 ")]
    assert ratios == [["sd15", c] for c in ("fp32", "fp16+compile", "fp16+xformers") for _ in (1, 8)]
