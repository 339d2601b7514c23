"""Contact sheet and texture ratio: diffusion-hybrid vs exemplar change pairs on real LEVIR-CD and WHU-CD crops.

For a few 256² crops of the real t2 images of LEVIR-CD (``test_7``, 0.5 m) and WHU-CD (``000121``, 0.3 m) —
their change labels read as building masks — it runs ``rsgen change-pairs --mode hybrid`` once per synthesis
method on the same seeds (the object bank is built from the *other* tile of each data set, so no crop shows its
own buildings), writes one contact sheet (rows: crops; columns: t1, then t2 and label per method) and prints
the texture ratio of every method (``bench_usefulness.pair_texture_ratio``: mean |Laplacian| of t2's grey levels
inside the change mask eroded by 3 px over the same on the unchanged pixels; real change ≈ 1, a smooth fill ≈ 0).

The sheet shows research-only imagery: it is written under ``bench-out/`` (not tracked) and must not be
committed.

    python bench/exemplar_sheet.py [--out bench-out/exemplar_sheet.png] [--methods diffusion,exemplar,...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import rasterio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_usefulness import pair_texture_ratio  # noqa: E402 - the benchmark's definition, one for both

CHANGE = REPO.parent / "shared" / "data" / "change"
SETS = {  # name: (folder, crops' tile, bank's tile, gsd)
    "levir": ("levir_cd_1024", "test_7", "test_102", 0.5),
    "whu": ("whu_cd", "000121", "000213", 0.3),
}
CROPS = ((0, 256), (512, 512))  # (row, col) of the 256² crops of each tile


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        data = src.read()
    return data[0] if data.shape[0] == 1 else np.moveaxis(data, 0, -1)


def write(path: Path, array: np.ndarray) -> None:
    bands = array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
    with rasterio.open(path, "w", driver="PNG", width=array.shape[1], height=array.shape[0], count=bands.shape[0],
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(bands)


def rsgen(*args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1"}
    subprocess.run([sys.executable, "-m", "gen", *args], cwd=REPO, env=env, check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "exemplar_sheet.png")
    parser.add_argument("--methods", default="diffusion,exemplar,exemplar+harmonise,copy-paste")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    methods = args.methods.split(",")
    rows: list[np.ndarray] = []
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, (folder, tile, bank_tile, gsd) in SETS.items():
            root = CHANGE / folder
            images, masks, bank_in = tmp / name / "images", tmp / name / "masks", tmp / name / "bank"
            for d in (images, masks, bank_in / "B", bank_in / "label"):
                d.mkdir(parents=True)
            for sub in ("B", "label"):
                os.symlink(root / sub / f"{bank_tile}.png", bank_in / sub / f"{bank_tile}.png")
            image, label = read(root / "B" / f"{tile}.png"), read(root / "label" / f"{tile}.png")
            for r, c in CROPS:
                write(images / f"{tile}_{r}_{c}.png", image[r : r + 256, c : c + 256])
                write(masks / f"{tile}_{r}_{c}.png", label[r : r + 256, c : c + 256])
            bank = tmp / name / "bank.safetensors"
            rsgen("bank", "build", "--images", str(bank_in / "B"), "--masks", str(bank_in / "label"), "--palette",
                  "levir", "--gsd", str(gsd), "--out", str(bank))  # fmt: skip
            outputs = {}
            for method in methods:
                out = tmp / name / method.replace("+", "_")
                extra = [] if method == "diffusion" else ["--synthesis", method, "--bank", str(bank)]
                rsgen("change-pairs", "--mode", "hybrid", "--images", str(images), "--masks", str(masks), "--palette",
                      "levir", "--gsd", str(gsd), "-n", str(len(CROPS)), "--seed", str(args.seed), "--steps",
                      str(args.steps), "--out", str(out), *extra)  # fmt: skip
                outputs[method] = out
            for k in range(len(CROPS)):
                stem = f"{k:08d}.png"
                row = [read(outputs[methods[0]] / "A" / stem)]
                for method in methods:
                    b, label = read(outputs[method] / "B" / stem), read(outputs[method] / "label" / stem)
                    row += [b, np.repeat(label[..., None], 3, axis=2)]
                    ratio = pair_texture_ratio(b, label > 0)
                    if ratio is not None:
                        ratios[method].append(ratio)
                rows.append(np.concatenate(row, axis=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet = np.concatenate(rows, axis=0)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"contact sheet ({len(rows)} crops; columns: t1, then t2 | label of {', '.join(methods)}): {args.out}")
    for method, values in ratios.items():
        print(f"texture ratio {method:20s} {np.mean(values):.2f} (over {len(values)} pairs)")


if __name__ == "__main__":
    main()
