"""bench/bench_usefulness.py --quick: the usefulness benchmark runs end to end on the real change data, its split is
tile-disjoint (printed, recorded and on disk), the synthetic pairs come from train tiles only, and it prints the
table with finite metrics."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
FOLDS = ("LEVIR-CD", "WHU-CD", "DSIFN-CD")
SPLIT = re.compile(r"^split (\S+): train tiles (.+) \((\d+) crops\); test tiles (.+) \((\d+) crops\)$")
TABLE_HEADER = "| configuration | texture ratio | LEVIR-CD F1 |"


def table_rows(lines: list[str]) -> dict[str, list[str]]:
    """The final table's rows, by configuration: its cells after the name."""
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
def test_quick_run_is_tile_disjoint_and_prints_a_finite_table(tmp_path: Path) -> None:
    shared_file("change/levir_cd_1024/A/test_7.png")
    out = tmp_path / "usefulness"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "bench/bench_usefulness.py", "--quick", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()

    splits = {m.group(1): m for m in map(SPLIT.match, lines) if m}
    assert sorted(splits) == sorted(FOLDS)
    test_tiles = {}
    for dataset, match in splits.items():
        train, test = set(match.group(2).split(", ")), set(match.group(4).split(", "))
        assert train and test and not train & test, (dataset, train, test)
        assert int(match.group(3)) > 0 and int(match.group(5)) > 0
        test_tiles[dataset] = test
    assert splits["LEVIR-CD"].group(2) == "test_102, test_7"  # the 1024 tiles and their levir_like crops train
    assert splits["LEVIR-CD"].group(4) == "test_121, test_2, test_55, test_77"
    assert int(splits["LEVIR-CD"].group(3)) == 32 and int(splits["WHU-CD"].group(3)) == 16

    record = json.loads((out / "results.json").read_text())
    assert not set(record["split"]["train"]) & set(record["split"]["test"])
    # the t1 images of the synthetic pairs and the banks' sources come from train tiles only
    sources = [p.stem for folder in ("sources", "banks") for p in (out / folder).glob("*/images/*.png")]
    assert sources
    for stem in sources:
        assert not any(stem == tile or stem.startswith(f"{tile}_") for tiles in test_tiles.values() for tile in tiles)

    rows = table_rows(lines)
    assert list(rows) == ["real-only", "diffusion+distractors", "exemplar+distractors"]
    for name, cells in rows.items():
        assert len(cells) == 10, (name, cells)
        texture, metrics = cells[0], [cells[i] for i in (1, 2, 3, 4, 6, 7, 8, 9)]
        assert 0 < float(texture) < 10, (name, texture)  # every set, the real pairs included, has a texture ratio
        for value in metrics:  # one seed: plain numbers
            assert math.isfinite(float(value)) and 0 <= float(value) <= 1, (name, value)
        if name != "real-only":
            assert math.isfinite(float(cells[5])) and -1 <= float(cells[5]) <= 1
            assert len(list((out / "pairs" / name).glob("*/label/*.png"))) == 8  # --quick: 8 pairs per set
    assert {(r["configuration"], r["seed"]) for r in record["runs"]} == {(name, 0) for name in rows}
    overall = next(r for r in record["runs"] if r["configuration"] == "real-only")["metrics"]["overall"]
    assert f"{overall['f1']:.3f}" == rows["real-only"][8]  # the table prints what was measured
