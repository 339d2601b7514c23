"""Benchmark: does pretraining on rsgen's change pairs help a change detector on real pairs it never saw?

The question every user of synthetic change data asks (issue #14), answered in one command on a CPU:

- **Data**: ``../shared/data/change/`` (LEVIR-CD, WHU-CD, DSIFN-CD), worked on as 256×256 crops (the 1024×1024
  tiles are cut into 16 each), split **by source tile** into a train and a test fold: LEVIR-CD trains on tiles
  ``test_7`` and ``test_102`` (the 1024 tiles; the ``levir_like`` crops of those tiles are pixel-identical to grid
  crops of them and are dropped as duplicates) and tests on the ``levir_like`` crops of tiles 2, 55, 77 and 121;
  WHU-CD trains on tile ``000213`` (its changes are two new buildings, which fits the assumption below; in
  ``000121`` one of the two changes is a demolition) and tests on ``000121``; DSIFN-CD trains on images 0–2 and
  tests on 3–6. The split is printed and checked tile-disjoint: no test crop's tile is used for training, for
  making pairs or for the object bank.
- **Synthetic pairs** (hybrid mode, made through the ``rsgen`` CLI so that this measures what users run): t1 is
  the *B* image (date 2) of a LEVIR-CD or WHU-CD train crop and its layout is that crop's change label read as
  a building mask (palette ``levir``, 255 = building). This **assumes** that the changed pixels of LEVIR-CD and
  WHU-CD are (mostly) buildings that are new in B, so the label marks B's new buildings; B's older buildings
  are not in the layout (they count as background, and a simulated event may be placed on them), and a
  demolition in the label would be a "building" of bare ground. DSIFN-CD's labels are general land-cover
  change, not buildings, so DSIFN-CD serves only as real pairs. Pairs are split between LEVIR-CD and WHU-CD in
  proportion to their train crops, each at its GSD (0.5 m, 0.3 m). The object bank of the exemplar and
  copy-paste backends is built (``rsgen bank build``) from the same train B images and labels, uncut (the
  1024² tiles: fewer buildings cut by a border); WHU-CD's train tile holds one whole building, so its pairs use
  the LEVIR-CD bank (rsgen resamples 0.5 m objects to 0.3 m).
- **Model**: a small Siamese change detector (plain PyTorch, fixed architecture, 1.38 M parameters): a shared
  4-stage conv encoder (strides 2–16) on both dates, the two dates' features and their absolute difference
  fused at every stage, an FPN-like decoder to one logit per pixel; BCE + soft dice, Adam (lr 1e-3), batches
  of 8 random 128² crops with the same random rot90 + flip for both dates and the label.
- **Protocol**: for each seed, (a) *real-only*: ``--pretrain-steps`` then ``--finetune-steps`` steps on the real
  train pairs (LEVIR-CD, WHU-CD and DSIFN-CD train crops); (b) for each synthetic configuration:
  ``--pretrain-steps`` on its pairs, then the same ``--finetune-steps`` on the real train pairs. Within a seed
  every configuration starts from the same initial weights and sees the same real batches; each phase gets a
  fresh Adam state. Evaluated on each test fold and overall (pixels pooled over all 25 test crops, 16 of them
  WHU-CD's) and as the mean F1 of the three folds: precision / recall / F1 / IoU of the change class at
  threshold 0.5; mean ± sample standard deviation over seeds. The synthetic pairs are made once (job seed 0)
  and shared by the seeds.
- **Configurations**: real-only; + diffusion (today's hybrid), + exemplar, + exemplar+harmonise, + copy-paste
  (the naive baseline), each without and with distractors (``--distractors``, default
  illumination,colour,haze,blur,misregistration: every one on every pair). Configurations whose
  ``--synthesis`` value or ``rsgen bank`` this rsgen lacks are listed as n/a. The *texture ratio* of every
  set is printed: mean |Laplacian| of B's grey levels inside the change mask eroded by 3 px ÷ the same over the
  unchanged pixels, mean over pairs (the real train pairs: 0.80). Blur and misregistration smooth the
  unchanged pixels too, which raises the ratio: compare texture between the rows without distractors.

Run from the repository root (defaults: about 40 min on 2 quiet CPU cores; ``--quick``: about 1.5 min)::

    python bench/bench_usefulness.py [--seeds 2] [--pairs 48] [--pretrain-steps 300] [--finetune-steps 300]
        [--configs exemplar,exemplar+distractors] [--out bench-out/usefulness] [--quick]

With ``--out`` the sources, banks and pairs are kept (a rerun with the same options reuses them: rsgen resumes
its jobs) and ``results.json`` records every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
CHANGE_DATA = REPO.parent / "shared" / "data" / "change"
CROP = 256  # side of the pairs the benchmark works on
FOLDS = ("LEVIR-CD", "WHU-CD", "DSIFN-CD")
TRAIN_TILES = {"LEVIR-CD": {"test_7", "test_102"}, "WHU-CD": {"000213"}, "DSIFN-CD": {"0", "1", "2"}}
MIN_BANK_OBJECTS = 10  # a dataset's own bank with fewer buildings is replaced by the LEVIR-CD bank


@dataclass(frozen=True)
class SynthSource:
    """A dataset whose train crops make synthetic pairs: its short name, folder of 1024² tiles, GSD, terms."""

    name: str
    tiles: str
    gsd: float
    licence: str


SYNTH_SOURCES = {
    "LEVIR-CD": SynthSource("levir", "levir_cd_1024", 0.5, "LEVIR-CD: academic research use only; (c) Google Earth"),
    "WHU-CD": SynthSource("whu", "whu_cd", 0.3, "WHU-CD: free for academic use; imagery LINZ, CC BY 4.0"),
}
SYNTHESES = ("diffusion", "exemplar", "exemplar+harmonise", "copy-paste")
NEEDS_BANK = {"exemplar", "exemplar+harmonise", "copy-paste"}
DEFAULT_DISTRACTORS = "illumination,colour,haze,blur,misregistration"
TEXTURE_ERODE_PX = 3
QUICK = {
    "seeds": 1,
    "pairs": 8,
    "pretrain_steps": 25,
    "finetune_steps": 25,
    "configs": "diffusion+distractors,exemplar+distractors",
}
DEFAULTS = {"seeds": 2, "pairs": 48, "pretrain_steps": 300, "finetune_steps": 300, "configs": "all"}


# ----------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Pair:
    """One 256² change pair: t1, t2 (H, W, 3) uint8 and the change mask (H, W) bool, with its source tile."""

    dataset: str
    tile: str
    name: str
    a: np.ndarray
    b: np.ndarray
    label: np.ndarray


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def read_label(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) > 127


def grid_crops(dataset: str, folder: Path, tile: str) -> list[Pair]:
    """The 16 grid crops of one 1024² tile, named ``<tile>_<y>_<x>`` like LEVIR-CD-256."""
    a, b = read_rgb(folder / "A" / f"{tile}.png"), read_rgb(folder / "B" / f"{tile}.png")
    label = read_label(folder / "label" / f"{tile}.png")
    pairs = []
    for y in range(0, label.shape[0] - CROP + 1, CROP):
        for x in range(0, label.shape[1] - CROP + 1, CROP):
            window = np.s_[y : y + CROP, x : x + CROP]
            pairs.append(Pair(dataset, tile, f"{tile}_{y:04d}_{x:04d}", a[window], b[window], label[window]))
    return pairs


def crop_files(dataset: str, folder: Path, tile_of: re.Pattern[str]) -> list[Pair]:
    """The 256² crops of a folder; ``tile_of`` captures the source tile from the file stem."""
    pairs = []
    for path in sorted((folder / "label").glob("*.png")):
        match = tile_of.fullmatch(path.stem)
        if match is None:
            sys.exit(f"{path}: name does not match {tile_of.pattern!r}; the benchmark cannot tell its source tile")
        a, b, label = read_rgb(folder / "A" / path.name), read_rgb(folder / "B" / path.name), read_label(path)
        pairs.append(Pair(dataset, match.group(1), path.stem, a, b, label))
    return pairs


def load_real_pairs(data: Path) -> tuple[list[Pair], list[str]]:
    """Every real 256² pair of the three datasets, and the names of the crops dropped as duplicates."""
    if not (data / "levir_cd_1024").is_dir():
        sys.exit(f"real change data not found in {data} (expected levir_cd_1024/, levir_like/, whu_cd/, dsifn_cd/)")
    pairs: list[Pair] = []
    for tile in ("test_7", "test_102"):
        pairs += grid_crops("LEVIR-CD", data / "levir_cd_1024", tile)
    known = {pair.name: pair for pair in pairs}
    duplicates = []
    for pair in crop_files("LEVIR-CD", data / "levir_like", re.compile(r"(test_\d+)_\d{4}_\d{4}")):
        twin = known.get(pair.name)
        if twin is not None and np.array_equal(twin.b, pair.b) and np.array_equal(twin.label, pair.label):
            duplicates.append(pair.name)  # the same pixels as a grid crop of the 1024 tile
        else:
            pairs.append(pair)
    for tile in ("000121", "000213"):
        pairs += grid_crops("WHU-CD", data / "whu_cd", tile)
    pairs += crop_files("DSIFN-CD", data / "dsifn_cd", re.compile(r"(\d+)_\d+"))
    return pairs, duplicates


def split_by_tile(pairs: Sequence[Pair]) -> tuple[list[Pair], list[Pair]]:
    """(train, test): a pair trains iff its source tile is one of TRAIN_TILES; checked tile-disjoint."""
    train = [p for p in pairs if p.tile in TRAIN_TILES[p.dataset]]
    test = [p for p in pairs if p.tile not in TRAIN_TILES[p.dataset]]
    shared = {(p.dataset, p.tile) for p in train} & {(p.dataset, p.tile) for p in test}
    if shared:
        raise AssertionError(f"train and test folds share source tiles {sorted(shared)}")
    return train, test


def print_split(train: Sequence[Pair], test: Sequence[Pair], duplicates: Sequence[str]) -> None:
    for dataset in FOLDS:
        tiles = {
            name: sorted({p.tile for p in fold if p.dataset == dataset})
            for name, fold in (("train", train), ("test", test))
        }
        counts = {name: sum(p.dataset == dataset for p in fold) for name, fold in (("train", train), ("test", test))}
        print(
            f"split {dataset}: train tiles {', '.join(tiles['train'])} ({counts['train']} crops); "
            f"test tiles {', '.join(tiles['test'])} ({counts['test']} crops)",
        )
    if duplicates:
        print(f"  dropped as duplicates of 1024-tile grid crops (same pixels): {', '.join(duplicates)}")


# ----------------------------------------------------------------------------------------------- synthesis


@dataclass(frozen=True)
class Configuration:
    """A row of the table: real-only (``synthesis`` None) or pretraining on one synthetic set."""

    name: str
    synthesis: str | None = None
    distractors: bool = False


def all_configurations() -> list[Configuration]:
    rows = [Configuration("real-only")]
    for synthesis in SYNTHESES:
        rows += [Configuration(synthesis, synthesis), Configuration(f"{synthesis}+distractors", synthesis, True)]
    return rows


def select_configurations(spec: str) -> list[Configuration]:
    """real-only plus the comma-separated names of ``--configs`` (or every configuration for ``all``)."""
    rows = all_configurations()
    if spec == "all":
        return rows
    by_name = {row.name: row for row in rows}
    names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in by_name]
    if unknown:
        sys.exit(f"--configs: unknown {unknown}; choose from {', '.join(by_name)} (comma-separated) or 'all'")
    return [rows[0], *(by_name[name] for name in dict.fromkeys(names) if name != "real-only")]


def rsgen_env() -> dict[str, str]:
    # COLUMNS: argparse wraps --help at the terminal width and breaks words at hyphens ("copy-" / "paste")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RSGEN_NO_PROGRESS": "1", "COLUMNS": "10000"}


def run_rsgen(args: Sequence[str]) -> str:
    """Run ``python -m gen ARGS`` (the rsgen CLI) in the repository; exit with its output when it fails."""
    command = [sys.executable, "-m", "gen", *args]
    proc = subprocess.run(command, cwd=REPO, env=rsgen_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(
            f"rsgen failed (rc {proc.returncode}): {' '.join(command)}\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
        )
    return proc.stdout + proc.stderr


@dataclass(frozen=True)
class Capabilities:
    """What this rsgen's CLI offers: the ``--synthesis`` values of change-pairs, the option itself, ``rsgen bank``."""

    syntheses: frozenset[str]
    explicit_synthesis: bool
    has_bank: bool


def rsgen_capabilities() -> Capabilities:
    """Read from ``rsgen change-pairs --help`` and ``rsgen bank --help``."""
    change_help = run_rsgen(["change-pairs", "--help"])
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "bank", "--help"], cwd=REPO, env=rsgen_env(), capture_output=True, text=True
    )
    has_bank = proc.returncode == 0
    if "--synthesis" not in change_help:  # before --synthesis existed, hybrid mode was diffusion inpainting
        return Capabilities(frozenset({"diffusion"}), False, has_bank)
    flat = " ".join(change_help.split())
    found = {name for name in SYNTHESES if re.search(rf"(?<![\w+-]){re.escape(name)}(?![\w+-])", flat)}
    return Capabilities(frozenset(found), True, has_bank)


def unavailable_reason(row: Configuration, capabilities: Capabilities) -> str | None:
    if row.synthesis is None:
        return None
    if row.synthesis not in capabilities.syntheses:
        return f"this rsgen's change-pairs has no --synthesis {row.synthesis}"
    if row.synthesis in NEEDS_BANK and not capabilities.has_bank:
        return "this rsgen has no 'rsgen bank' command"
    return None


def write_sources(train: Sequence[Pair], dataset: str, folder: Path) -> int:
    """The t1 images (train B) and layouts (train labels, 0/255) of one dataset's synthetic pairs."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    sources = [p for p in train if p.dataset == dataset]
    for pair in sources:
        Image.fromarray(pair.b).save(folder / "images" / f"{pair.name}.png")
        Image.fromarray(pair.label.astype(np.uint8) * 255).save(folder / "masks" / f"{pair.name}.png")
    return len(sources)


def build_bank(dataset: str, folder: Path) -> tuple[Path, int]:
    """``rsgen bank build`` from one dataset's whole 1024² train tiles (B and label: fewer objects cut by a
    border than in the crops); (bank file, building count). An existing bank file is reused."""
    source = SYNTH_SOURCES[dataset]
    bank = folder / f"{source.name}.safetensors"
    if not bank.exists():
        for kind, sub in (("images", "B"), ("masks", "label")):
            (folder / source.name / kind).mkdir(parents=True, exist_ok=True)
            for tile in sorted(TRAIN_TILES[dataset]):
                shutil.copyfile(
                    CHANGE_DATA / source.tiles / sub / f"{tile}.png", folder / source.name / kind / f"{tile}.png"
                )
        args = ["bank", "build", "--images", str(folder / source.name / "images"), "--palette", "levir"]
        args += ["--masks", str(folder / source.name / "masks"), "--gsd", str(source.gsd), "--licence", source.licence]
        run_rsgen([*args, "--out", str(bank)])
    match = re.search(r"^objects: (\d+)", run_rsgen(["bank", "info", str(bank)]), re.MULTILINE)
    return bank, int(match.group(1)) if match else 0


def build_banks(folder: Path) -> dict[str, Path]:
    """The bank each synthesis dataset's pairs use: its own, or LEVIR-CD's (resampled by rsgen) when its own
    train tiles hold fewer than MIN_BANK_OBJECTS whole buildings (WHU-CD's train tile holds one)."""
    banks = {}
    for dataset in SYNTH_SOURCES:
        bank, objects = build_bank(dataset, folder)
        print(f"  bank {dataset}: {objects} building(s) from train tiles {', '.join(sorted(TRAIN_TILES[dataset]))}")
        banks[dataset] = bank
        if objects < MIN_BANK_OBJECTS and dataset != "LEVIR-CD":
            banks[dataset] = banks["LEVIR-CD"]
            print(f"  bank {dataset}: fewer than {MIN_BANK_OBJECTS} buildings: its pairs use the LEVIR-CD bank")
    return banks


@dataclass(frozen=True)
class SynthesisOptions:
    distractors: str
    diffusion_steps: int
    threads: int
    explicit_synthesis: bool  # this rsgen has --synthesis (else leave it out: diffusion)


def make_pairs(
    row: Configuration, source: Path, gsd: float, count: int, bank: Path | None, out: Path, options: SynthesisOptions
) -> None:
    """``count`` hybrid pairs of one configuration from one dataset's sources, in the LEVIR layout in ``out``."""
    args = ["change-pairs", "--mode", "hybrid", "--model", "default", "--palette", "levir", "--gsd", str(gsd)]
    args += ["--images", str(source / "images"), "--masks", str(source / "masks"), "--dataset-format", "levir"]
    args += [
        "--steps",
        str(options.diffusion_steps),
        "-n",
        str(count),
        "--seed",
        "0",
        "--threads",
        str(options.threads),
    ]
    args += ["--out", str(out)]
    if options.explicit_synthesis:
        args += ["--synthesis", str(row.synthesis)]
    if row.synthesis in NEEDS_BANK:
        args += ["--bank", str(bank)]
    if row.distractors:
        args += ["--distractors", options.distractors]
    run_rsgen(args)


def read_pairs(folder: Path, dataset: str) -> list[Pair]:
    """The pairs an ``rsgen change-pairs --dataset-format levir`` job wrote."""
    return [
        Pair(
            dataset,
            "synthetic",
            p.stem,
            read_rgb(folder / "A" / p.name),
            read_rgb(folder / "B" / p.name),
            read_label(p),
        )
        for p in sorted((folder / "label").glob("*.png"))
    ]


def pair_texture_ratio(b: np.ndarray, change: np.ndarray) -> float | None:
    """Mean |Laplacian| of ``b``'s grey levels inside the (eroded) ``change`` mask ÷ over the unchanged pixels; None
    when either is empty (or the unchanged pixels are flat)."""
    grey = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float32)
    laplacian = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    inside = cv2.erode(change.astype(np.uint8), np.ones((2 * TEXTURE_ERODE_PX + 1,) * 2, np.uint8)) > 0
    outside = ~change
    if not (inside.any() and outside.any() and laplacian[outside].mean() > 0):
        return None
    return float(laplacian[inside].mean() / laplacian[outside].mean())


def texture_ratio(pairs: Sequence[Pair]) -> float:
    """Mean over pairs of :func:`pair_texture_ratio`."""
    ratios = [r for pair in pairs if (r := pair_texture_ratio(pair.b, pair.label)) is not None]
    return statistics.fmean(ratios) if ratios else math.nan


# ------------------------------------------------------------------------------------------------- model


def conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SiameseChangeNet(nn.Module):
    """Shared encoder on both dates (strides 2, 4, 8, 16); per stage (t1, t2, |t1 − t2|) fused to ``2·width``
    channels; top-down decoder to stride 2, one logit per pixel upsampled to the input size."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        channels = [width, 2 * width, 4 * width, 8 * width]
        decoder = 2 * width
        self.encoder = nn.ModuleList(conv_block(c_in, c_out, 2) for c_in, c_out in zip([3, *channels], channels))
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv2d(3 * c, decoder, 1, bias=False), nn.BatchNorm2d(decoder), nn.ReLU(inplace=True))
            for c in channels
        )
        self.decoder = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(decoder, decoder, 3, 1, 1, bias=False), nn.BatchNorm2d(decoder), nn.ReLU(inplace=True)
            )
            for _ in channels[:-1]
        )
        self.head = nn.Conv2d(decoder, 1, 1)

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        n = t1.shape[0]
        x = torch.cat([t1, t2])  # (2N, 3, H, W): both dates through the shared encoder at once
        fused = []
        for stage, fuse in zip(self.encoder, self.fuse):
            x = stage(x)
            f1, f2 = x[:n], x[n:]
            fused.append(fuse(torch.cat([f1, f2, (f1 - f2).abs()], dim=1)))
        y = fused[-1]
        for level in reversed(range(len(self.decoder))):
            y = F.interpolate(y, size=fused[level].shape[-2:], mode="bilinear", align_corners=False)
            y = self.decoder[level](y + fused[level])
        return F.interpolate(self.head(y), size=t1.shape[-2:], mode="bilinear", align_corners=False)  # (N, 1, H, W)


@dataclass(frozen=True)
class TrainSettings:
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    width: int = 32


@dataclass
class PairTensors:
    """Pairs stacked as uint8 tensors: t1, t2 (N, 3, H, W), label (N, 1, H, W)."""

    t1: torch.Tensor
    t2: torch.Tensor
    label: torch.Tensor

    @classmethod
    def of(cls, pairs: Sequence[Pair]) -> PairTensors:
        def images(arrays: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (N, H, W, 3) -> (N, 3, H, W)

        label = torch.from_numpy(np.stack([p.label for p in pairs]).astype(np.uint8))[:, None]  # (N, 1, H, W)
        return cls(images([p.a for p in pairs]), images([p.b for p in pairs]), label)


def normalise(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1.0


def random_batch(
    data: PairTensors, rng: np.random.Generator, settings: TrainSettings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of random crops, each with one random rot90 + flip applied to both dates and its label."""
    size = settings.crop
    t1s, t2s, labels = [], [], []
    for index in rng.integers(0, data.t1.shape[0], settings.batch_size):
        y, x = rng.integers(0, data.t1.shape[-2] - size + 1), rng.integers(0, data.t1.shape[-1] - size + 1)
        k, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
        crops = [tensor[index, :, y : y + size, x : x + size] for tensor in (data.t1, data.t2, data.label)]
        crops = [torch.rot90(c, k, dims=(1, 2)) for c in crops]
        crops = [c.flip(2) if flip else c for c in crops]
        for out, crop in zip((t1s, t2s, labels), crops):
            out.append(crop)
    return normalise(torch.stack(t1s)), normalise(torch.stack(t2s)), torch.stack(labels).float()


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft dice of the change class over the batch."""
    probabilities = torch.sigmoid(logits)
    dice = 1 - (2 * (probabilities * target).sum() + 1) / (probabilities.sum() + target.sum() + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice


def train_phase(
    model: nn.Module, data: PairTensors, steps: int, rng: np.random.Generator, settings: TrainSettings
) -> float:
    """``steps`` Adam steps (a fresh optimiser) on random batches of ``data``; returns the mean loss."""
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    total = 0.0
    for _ in range(steps):
        t1, t2, target = random_batch(data, rng, settings)
        loss = loss_fn(model(t1, t2), target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        total += loss.item()
    return total / max(steps, 1)


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    def metrics(self) -> dict[str, float]:
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        iou = self.tp / (self.tp + self.fp + self.fn) if self.tp + self.fp + self.fn else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


@torch.no_grad()
def evaluate(model: nn.Module, test: Sequence[Pair], batch_size: int = 4) -> dict[str, dict[str, float]]:
    """P / R / F1 / IoU of the change class (logit > 0, i.e. probability > 0.5) per test fold and pooled."""
    model.eval()
    counts = {fold: Counts() for fold in (*FOLDS, "overall")}
    for start in range(0, len(test), batch_size):
        chunk = test[start : start + batch_size]
        data = PairTensors.of(chunk)
        predicted = (model(normalise(data.t1), normalise(data.t2)) > 0)[:, 0].numpy()  # (N, H, W) bool
        for pair, prediction in zip(chunk, predicted):
            pair_counts = Counts(
                int((prediction & pair.label).sum()),
                int((prediction & ~pair.label).sum()),
                int((~prediction & pair.label).sum()),
            )
            counts[pair.dataset].add(pair_counts)
            counts["overall"].add(pair_counts)
    return {fold: c.metrics() for fold, c in counts.items()}


@dataclass
class RunResult:
    configuration: str
    seed: int
    metrics: dict[str, dict[str, float]]
    seconds: dict[str, float] = field(default_factory=dict)


def train_and_evaluate(
    row: Configuration,
    seed: int,
    pretrain: PairTensors,
    real: PairTensors,
    test: Sequence[Pair],
    steps: tuple[int, int],
    settings: TrainSettings,
) -> RunResult:
    """One seed of one configuration: pretrain on ``pretrain`` (real for real-only), fine-tune on real, test."""
    torch.manual_seed(seed)  # the same initial weights for every configuration of this seed
    model = SiameseChangeNet(settings.width)
    seconds = {}
    clock = time.perf_counter()
    pretrain_loss = train_phase(model, pretrain, steps[0], np.random.default_rng([seed, 0]), settings)
    seconds["pretrain"] = time.perf_counter() - clock
    clock = time.perf_counter()
    finetune_loss = train_phase(model, real, steps[1], np.random.default_rng([seed, 1]), settings)
    seconds["finetune"] = time.perf_counter() - clock
    clock = time.perf_counter()
    metrics = evaluate(model, test)
    seconds["eval"] = time.perf_counter() - clock
    per_step = 1000 * (seconds["pretrain"] + seconds["finetune"]) / max(sum(steps), 1)
    print(
        f"  train {row.name} seed {seed}: pretrain {steps[0]} steps {seconds['pretrain']:.1f} s (loss "
        f"{pretrain_loss:.3f}), finetune {steps[1]} steps {seconds['finetune']:.1f} s (loss {finetune_loss:.3f}), "
        f"{per_step:.0f} ms/step, eval {seconds['eval']:.1f} s: overall F1 {metrics['overall']['f1']:.3f}",
    )
    return RunResult(row.name, seed, metrics, seconds)


# ---------------------------------------------------------------------------------------------- reporting


def mean_spread(values: Sequence[float]) -> str:
    """``mean ± sd`` over seeds (sample standard deviation; the mean alone for one seed)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def fold_mean_f1(metrics: dict[str, dict[str, float]]) -> float:
    return statistics.fmean(metrics[fold]["f1"] for fold in FOLDS)


def print_details(rows: Sequence[Configuration], results: dict[str, list[RunResult]]) -> None:
    print("\nper test fold (pixels pooled over the fold's crops), mean ± sd over seeds:\n")
    print("| configuration | fold | precision | recall | F1 | IoU |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        for fold in (*FOLDS, "overall"):
            cells = [
                mean_spread([r.metrics[fold][m] for r in results[row.name]])
                for m in ("precision", "recall", "f1", "iou")
            ]
            print(f"| {row.name} | {fold} | {' | '.join(cells)} |")


def print_table(
    rows: Sequence[Configuration],
    results: dict[str, list[RunResult]],
    textures: dict[str, float],
    unavailable: dict[str, str],
    header: str,
) -> None:
    """The one table the closing note pastes: texture ratio, F1 per fold, their mean, overall P / R / F1 / IoU."""
    print(f"\n## Usefulness of synthetic change pairs\n\n{header}\n")
    print(
        "| configuration | texture ratio | LEVIR-CD F1 | WHU-CD F1 | DSIFN-CD F1 | mean F1 (folds) | Δ mean F1 "
        "vs real-only | overall P | overall R | overall F1 | overall IoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    baseline = [fold_mean_f1(r.metrics) for r in results.get("real-only", [])]
    for row in rows:
        if row.name in unavailable:
            print(f"| {row.name} | n/a | {' | '.join(['n/a'] * 9)} |")
            continue
        runs = results[row.name]
        texture = f"{textures[row.name]:.2f}" if row.name in textures else "—"
        folds = [mean_spread([r.metrics[fold]["f1"] for r in runs]) for fold in FOLDS]
        mean_f1 = [fold_mean_f1(r.metrics) for r in runs]
        delta = mean_spread([m - b for m, b in zip(mean_f1, baseline)]) if row.name != "real-only" else "—"
        overall = [mean_spread([r.metrics["overall"][m] for r in runs]) for m in ("precision", "recall", "f1", "iou")]
        print(
            f"| {row.name} | {texture} | {' | '.join(folds)} | {mean_spread(mean_f1)} | {delta} | "
            f"{' | '.join(overall)} |"
        )
    for name, reason in unavailable.items():
        print(f"\nn/a {name}: {reason}")


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, help=f"training seeds (default {DEFAULTS['seeds']})")
    parser.add_argument("--pairs", type=int, help=f"synthetic pairs per configuration (default {DEFAULTS['pairs']})")
    parser.add_argument("--pretrain-steps", type=int, help="steps on a configuration's synthetic pairs (real-only: "
                        f"on the real ones) (default {DEFAULTS['pretrain_steps']})")  # fmt: skip
    parser.add_argument(
        "--finetune-steps", type=int, help=f"then on the real pairs (default {DEFAULTS['finetune_steps']})"
    )
    parser.add_argument(
        "--configs",
        help="comma-separated synthetic configurations, or 'all' (the default); "
        "real-only always runs: " + ", ".join(r.name for r in all_configurations()),
    )
    parser.add_argument("--distractors", default=DEFAULT_DISTRACTORS, help="of the +distractors configurations")
    parser.add_argument("--diffusion-steps", type=int, default=4, help="denoising steps of rsgen (default 4)")
    parser.add_argument("--batch-size", type=int, default=TrainSettings.batch_size, help="training batch (default 8)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: cores)")
    parser.add_argument("--out", type=Path, help="keep sources, banks and pairs here (default: a temporary folder)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()) + " (options given explicitly win)",
    )
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("seeds", "pairs", "batch_size", "threads", "diffusion_steps"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')}: {getattr(args, key)} must be at least 1")
    for key in ("pretrain_steps", "finetune_steps"):
        if getattr(args, key) < 0:
            parser.error(f"--{key.replace('_', '-')}: {getattr(args, key)} must be 0 or more")
    return args


def synth_counts(train: Sequence[Pair], pairs: int) -> dict[str, int]:
    """Pairs per synthesis dataset, in proportion to its train crops (at least one each)."""
    sizes = {dataset: sum(p.dataset == dataset for p in train) for dataset in SYNTH_SOURCES}
    total = sum(sizes.values())
    levir = min(max(1, round(pairs * sizes["LEVIR-CD"] / total)), pairs - 1) if pairs > 1 else 1
    return {"LEVIR-CD": levir, "WHU-CD": max(1, pairs - levir)}


def synthesise(
    rows: Sequence[Configuration],
    train: Sequence[Pair],
    args: argparse.Namespace,
    work: Path,
    explicit_synthesis: bool,
) -> tuple[dict[str, list[Pair]], dict[str, float]]:
    """Sources, banks and pairs of every synthetic configuration; (pairs, seconds) per configuration."""
    clock = time.perf_counter()
    sources = {dataset: work / "sources" / source.name for dataset, source in SYNTH_SOURCES.items()}
    for dataset, folder in sources.items():
        write_sources(train, dataset, folder)
    banks = build_banks(work / "banks") if any(row.synthesis in NEEDS_BANK for row in rows) else {}
    print(f"phase sources + banks: {time.perf_counter() - clock:.1f} s")
    counts = synth_counts(train, args.pairs)
    options = SynthesisOptions(args.distractors, args.diffusion_steps, args.threads, explicit_synthesis)
    synthetic, seconds = {}, {}
    for row in rows:
        if row.synthesis is None:
            continue
        clock = time.perf_counter()
        synthetic[row.name] = []
        for dataset, source in SYNTH_SOURCES.items():
            out = work / "pairs" / row.name / f"{source.name}-n{counts[dataset]}"
            make_pairs(row, sources[dataset], source.gsd, counts[dataset], banks.get(dataset), out, options)
            synthetic[row.name] += read_pairs(out, dataset)
        seconds[row.name] = time.perf_counter() - clock
        print(
            f"phase synthesis {row.name}: {len(synthetic[row.name])} pairs "
            f"({', '.join(f'{d} {n}' for d, n in counts.items())}) in {seconds[row.name]:.1f} s",
        )
    return synthetic, seconds


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines appear as they happen, also in a pipe
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    settings = TrainSettings(batch_size=args.batch_size)
    rows = select_configurations(args.configs)

    clock = time.perf_counter()
    pairs, duplicates = load_real_pairs(CHANGE_DATA)
    train, test = split_by_tile(pairs)
    print_split(train, test, duplicates)
    print(f"phase data: {len(train)} train + {len(test)} test real 256² pairs in {time.perf_counter() - clock:.1f} s")

    capabilities = rsgen_capabilities()
    unavailable = {r.name: why for r in rows if (why := unavailable_reason(r, capabilities)) is not None}
    runnable = [r for r in rows if r.name not in unavailable]
    print(
        f"configurations: {', '.join(r.name for r in runnable)}"
        + (f"; unavailable: {', '.join(unavailable)}" if unavailable else "")
    )
    print(f"distractors of the +distractors configurations: {args.distractors}")

    work = args.out if args.out is not None else Path(tempfile.mkdtemp(prefix="rsgen-usefulness-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        synthetic, _ = synthesise(runnable, train, args, work, capabilities.explicit_synthesis)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    textures = {"real-only": texture_ratio(train)}
    textures |= {name: texture_ratio(synthetic_pairs) for name, synthetic_pairs in synthetic.items()}
    print(
        "texture ratio (mean |Laplacian| of B in the eroded change ÷ unchanged): "
        + ", ".join(f"{name} {value:.2f}" for name, value in textures.items())
        + " (real-only: the real train pairs)"
    )

    real = PairTensors.of(train)
    model_size = sum(p.numel() for p in SiameseChangeNet(settings.width).parameters())
    steps = (args.pretrain_steps, args.finetune_steps)
    print(
        f"model: Siamese change detector, {model_size / 1e6:.2f} M parameters; batch {settings.batch_size} of "
        f"{settings.crop}² crops, Adam lr {settings.lr}, {args.threads} torch threads; steps {steps[0]} + {steps[1]}"
    )
    results: dict[str, list[RunResult]] = {r.name: [] for r in runnable}
    for row in runnable:
        clock = time.perf_counter()
        pretrain = real if row.synthesis is None else PairTensors.of(synthetic[row.name])
        for seed in range(args.seeds):
            results[row.name].append(train_and_evaluate(row, seed, pretrain, real, test, steps, settings))
        print(f"phase training {row.name}: {time.perf_counter() - clock:.1f} s")

    header = (
        f"{args.seeds} seed(s), mean ± sd; {args.pairs} synthetic pairs per configuration (hybrid, built-in model,"
        f" {args.diffusion_steps} steps; distractors: {args.distractors}); pretrain {steps[0]} + finetune "
        f"{steps[1]} steps (real-only: {sum(steps)} real steps); test: {len(test)} real crops of unseen tiles; "
        f"threshold 0.5"
    )
    print_details(runnable, results)
    print_table(rows, results, textures, unavailable, header)
    total = time.perf_counter() - started
    print(f"\ntotal: {total:.1f} s")
    if args.out is not None:
        record = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "textures": textures,
            "unavailable": unavailable,
            "split": {
                "train": sorted({f"{p.dataset}/{p.tile}" for p in train}),
                "test": sorted({f"{p.dataset}/{p.tile}" for p in test}),
            },
            "runs": [asdict(r) for runs in results.values() for r in runs],
            "seconds": total,
        }
        (args.out / "results.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
