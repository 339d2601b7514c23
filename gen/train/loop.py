"""The training loop shared by every ``rsgen train`` task: accelerate, EMA, checkpoints, resume, logs.

A task supplies an *objective*: one ``nn.Module`` whose ``forward(step)`` returns the loss of one
micro-batch and whose trainable children are the models being trained (frozen parts, e.g. the VAE,
have ``requires_grad=False``). Wrapping the whole objective lets accelerate put one DDP wrapper
around it, so multi-process runs synchronise every trained model's gradients. An objective with state
that is not trained by the optimizer (task distill's target network) may define
``after_optimizer_step(step)`` (called after every update and the EMA), ``checkpoint_state()`` (tensors
saved in every checkpoint as ``extra.safetensors``) and ``load_checkpoint_state(tensors)``.

Output folder::

    train_config.json            the config and its digest (a different config is refused)
    log.jsonl                    step, loss, lr, seconds per step (main process)
    checkpoints/step_000500/     weights.safetensors, ema.safetensors, optimizer.pt, state.json
                                 (extra.safetensors: an objective's checkpoint_state())
    samples/step_000500.png      sample grids made with the EMA weights
    export/                      the final model (a bundle, or a VAE folder for task 'autoencoder')

Checkpoints are written to a temporary folder and renamed, so a killed run resumes from the last
complete one. Batches are drawn from ``(seed, process, step)``, so a resumed run sees the same data.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from core.atomic import atomic_dir, atomic_write_text
from core.errors import InputError
from core.progress import progress
from gen.train.config import TrainConfig

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step_"


class TrainTask(Protocol):
    """What a task gives the loop (see gen/train/autoencoder.py, denoiser.py, sr.py)."""

    objective: nn.Module

    def sample_grid(self, objective: nn.Module, step: int) -> Image.Image: ...

    def export(self, objective: nn.Module, out_dir: Path, summary: dict[str, Any]) -> None: ...


class TrainError(InputError):
    """A training run cannot start or resume (config clash, bad checkpoint)."""


# ------------------------------------------------------------------ EMA
class EMA:
    """Exponential moving average of the trainable parameters (float32 shadows), with warm-up."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), 1 - decay)

    @torch.no_grad()
    def swap_into(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Copy the EMA weights into ``module``; returns the raw weights for :meth:`restore`."""
        raw = {}
        for name, param in module.named_parameters():
            if name in self.shadow:
                raw[name] = param.detach().clone()
                param.copy_(self.shadow[name].to(param.dtype))
        return raw

    @staticmethod
    @torch.no_grad()
    def restore(module: nn.Module, raw: dict[str, torch.Tensor]) -> None:
        for name, param in module.named_parameters():
            if name in raw:
                param.copy_(raw[name])


# ------------------------------------------------------------------ checkpoints
def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines of steps after ``step`` (written by a run killed after its last checkpoint),
    so that a resumed run does not log those steps twice."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        logger.info("log.jsonl: dropped %d line(s) after step %d", len(lines) - len(kept), step)


def list_checkpoints(out_dir: Path) -> list[Path]:
    folder = out_dir / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.iterdir() if p.name.startswith(CHECKPOINT_PREFIX) and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(
    out_dir: Path, step: int, module: nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer,
    state: dict[str, Any], keep: int,
) -> Path:  # fmt: skip
    final = out_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"
    with atomic_dir(final) as staging:
        save_file(trainable_state(module), str(staging / "weights.safetensors"))
        if ema is not None:
            save_file({n: t.contiguous() for n, t in ema.shadow.items()}, str(staging / "ema.safetensors"))
        if hasattr(module, "checkpoint_state"):
            extra = {n: t.detach().cpu().contiguous() for n, t in module.checkpoint_state().items()}
            save_file(extra, str(staging / "extra.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps({**state, "step": step}, indent=1), encoding="utf-8")
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    folder: Path, module: nn.Module, ema: EMA | None, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    weights = load_file(str(folder / "weights.safetensors"))
    expected = set(trainable_state(module))
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights))[:5], sorted(set(weights) - expected)[:5]
        raise TrainError(
            f"checkpoint {folder}: its tensors do not match the model (missing {missing}, unexpected {extra}); "
            "it was written by a different architecture: use a new output_dir"
        )
    module.load_state_dict(weights, strict=False)
    if ema is not None and (folder / "ema.safetensors").is_file():
        ema.shadow = {k: v.float() for k, v in load_file(str(folder / "ema.safetensors")).items()}
    if hasattr(module, "load_checkpoint_state"):
        if not (folder / "extra.safetensors").is_file():
            raise TrainError(f"checkpoint {folder}: extra.safetensors is missing (this task keeps state beside the "
                             "weights); it was written by another task: use a new output_dir")  # fmt: skip
        module.load_checkpoint_state(load_file(str(folder / "extra.safetensors")))
    # Our own optimizer state (tensors and numbers only): weights_only refuses anything executable.
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return json.loads((folder / "state.json").read_text(encoding="utf-8"))


def _check_output_dir(config: TrainConfig) -> None:
    path = config.output_dir / "train_config.json"
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous.get("digest") != config.digest():
            raise TrainError(
                f"output_dir={str(config.output_dir)!r} holds a run with a different config (digest "
                f"{previous.get('digest')} vs {config.digest()}); only {list(_resumable())} may change on resume. "
                "Use a new output_dir, or delete the old run"
            )


def _resumable() -> tuple[str, ...]:
    from gen.train.config import RESUMABLE_KEYS

    return RESUMABLE_KEYS


def lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda step: min(1.0, (step + 1) / max(1, warmup))


# ------------------------------------------------------------------ loop
def run_training(
    config: TrainConfig, build_task: Callable[[TrainConfig, Accelerator], TrainTask], *, export: bool = True
) -> Path:
    """Train (or resume) ``config`` to ``max_steps``; returns the export folder (or output_dir)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        cpu=not torch.cuda.is_available(),
    )
    out = config.output_dir
    _check_output_dir(config)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            out / "train_config.json",
            json.dumps({"digest": config.digest(), "config": config.raw}, indent=1, default=str) + "\n",
        )
    run = TrainingRun.start(config, accelerator, build_task(config, accelerator))
    run.train()
    if run.start_step >= config.max_steps:
        logger.info("already trained to step %d (max_steps=%d)", run.start_step, config.max_steps)
    if not export:
        return out
    return run.export()


@dataclass
class TrainingRun:
    """One training run's state: the wrapped objective, optimizer, LR schedule, EMA and loss history."""

    config: TrainConfig
    accelerator: Accelerator
    task: TrainTask
    wrapped: Any
    optimizer: Any
    scheduler: Any
    ema: EMA | None
    params: list[nn.Parameter]
    start_step: int
    history: list[dict[str, Any]]

    @classmethod
    def start(cls, config: TrainConfig, accelerator: Accelerator, task: TrainTask) -> TrainingRun:
        """Build the optimizer and EMA, and resume from the newest complete checkpoint if there is one."""
        out, objective = config.output_dir, task.objective
        params = [p for p in objective.parameters() if p.requires_grad]
        logger.info("task %s: %.2fM trainable parameters", config.task, sum(p.numel() for p in params) / 1e6)
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        ema = EMA(objective, config.ema_decay) if config.ema_decay > 0 else None
        start, history = 0, []
        checkpoints = list_checkpoints(out)
        if checkpoints:
            state = load_checkpoint(checkpoints[-1], objective, ema, optimizer)
            start, history = int(state["step"]), list(state.get("history", []))
            logger.info("resumed from %s (step %d)", checkpoints[-1], start)
            if accelerator.is_main_process:
                _truncate_log(out / "log.jsonl", start)
        warm = lr_lambda(config.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warm(s + start))
        # The LR schedule is stepped by hand once per optimizer update (accelerate would step it once per process).
        wrapped, optimizer = accelerator.prepare(objective, optimizer)
        return cls(config, accelerator, task, wrapped, optimizer, scheduler, ema, params, start, history)

    def checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            optimizer = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
            save_checkpoint(self.config.output_dir, step, self.accelerator.unwrap_model(self.wrapped), self.ema,
                            optimizer, {"history": self.history, "digest": self.config.digest()},
                            self.config.keep_checkpoints)  # fmt: skip

    def sample(self, step: int) -> None:
        if not self.accelerator.is_main_process:
            return
        module = self.accelerator.unwrap_model(self.wrapped)
        raw = self.ema.swap_into(module) if self.ema is not None else {}
        try:
            grid = self.task.sample_grid(module, step)
        finally:
            if self.ema is not None:
                EMA.restore(module, raw)
        path = self.config.output_dir / "samples" / f"{CHECKPOINT_PREFIX}{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        logger.info("sample grid: %s", path)

    def optimizer_step(self, step: int) -> list[float]:
        """One optimizer update over ``gradient_accumulation_steps`` micro-batches; returns their losses."""
        config, accelerator, losses = self.config, self.accelerator, []
        for micro in range(config.gradient_accumulation_steps):
            with accelerator.accumulate(self.wrapped):
                loss = self.wrapped(step * config.gradient_accumulation_steps + micro, accelerator.process_index)
                if not torch.isfinite(loss):
                    raise TrainError(f"step {step}: loss is {loss.item()}; lower learning_rate or check the data")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(self.params, 1.0)
                self.optimizer.step()
                if accelerator.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        module = accelerator.unwrap_model(self.wrapped)
        if self.ema is not None:
            self.ema.update(module, step)
        if hasattr(module, "after_optimizer_step"):
            module.after_optimizer_step(step)
        return losses

    def log(self, done: int, window: list[float], seconds: float, bar: Any) -> None:
        record = {"step": done, "loss": float(np.mean(window)), "lr": self.scheduler.get_last_lr()[0],
                  "s_per_step": round(seconds, 3)}  # fmt: skip
        self.history.append(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}")
        if self.accelerator.is_main_process:
            with open(self.config.output_dir / "log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        logger.info("step %d loss %.5f (%.2f s/step)", done, record["loss"], seconds)

    def train(self) -> None:
        """Steps from ``start_step`` to ``max_steps``, with logs, checkpoints and sample grids on their cadence."""
        config = self.config
        self.wrapped.train()
        window: list[float] = []
        tick = time.perf_counter()
        bar = progress(total=config.max_steps, desc=f"train {config.task}", unit="step")
        bar.update(self.start_step)
        for step in range(self.start_step, config.max_steps):
            window += self.optimizer_step(step)
            done = step + 1
            bar.update()
            if done % config.log_every == 0 or done == config.max_steps:
                seconds = (time.perf_counter() - tick) / max(1, len(window) / config.gradient_accumulation_steps)
                self.log(done, window, seconds, bar)
                window, tick = [], time.perf_counter()
            if done % config.checkpoint_every == 0 or done == config.max_steps:
                self.checkpoint(done)
            if done % config.sample_every == 0:
                self.sample(done)
        bar.close()

    def export(self) -> Path:
        """The EMA model as an rsgen bundle in ``output_dir/export``, with ``training.json``."""
        config, accelerator = self.config, self.accelerator
        accelerator.wait_for_everyone()
        out = config.output_dir
        export_dir = out / "export"
        if accelerator.is_main_process:
            module = accelerator.unwrap_model(self.wrapped)
            if self.ema is not None:
                self.ema.swap_into(module)
            path = out / "samples" / f"{CHECKPOINT_PREFIX}{config.max_steps:06d}.png"
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                self.task.sample_grid(module, config.max_steps).save(path)
            history = self.history
            summary = {
                "task": config.task, "steps": config.max_steps,
                "trainable_parameters": sum(p.numel() for p in self.params),
                "final_loss": history[-1]["loss"] if history else None, "ema_decay": config.ema_decay,
                "batch_size": config.batch_size, "resolution": config.resolution, "history": history,
                "config": config.raw,
            }  # fmt: skip
            with atomic_dir(export_dir) as staging:
                self.task.export(module, staging, summary)
                atomic_write_text(staging / "training.json", json.dumps(summary, indent=1, default=str) + "\n")
            logger.info("exported %s", export_dir)
        accelerator.wait_for_everyone()
        return export_dir


def step_generator(seed: int, process: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The torch generator of one micro-batch: a function of (seed, process, step) only."""
    mixed = np.random.SeedSequence([seed, process, step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device).manual_seed(int(mixed % (2**63)))


def step_rng(seed: int, process: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed, process, step, 1])


def image_grid(rows: list[list[np.ndarray]]) -> Image.Image:
    """Rows of equally sized (H, W, 3) uint8 tiles → one PIL image with 2-px gutters."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + 2), cols * (w + 2), 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            canvas[i * (h + 2) : i * (h + 2) + h, j * (w + 2) : j * (w + 2) + w] = tile
    return Image.fromarray(canvas)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weights for ε-prediction (Hang et al. 2023); ones when ``gamma`` is 0."""
    if gamma <= 0:
        return torch.ones(len(timesteps))
    alpha = alphas_cumprod[timesteps]
    snr = alpha / (1 - alpha)
    return torch.clamp(snr, max=gamma) / snr


__all__ = [
    "EMA", "TrainError", "TrainTask", "image_grid", "list_checkpoints", "load_checkpoint", "min_snr_weights",
    "run_training", "save_checkpoint", "step_generator", "step_rng",
]  # fmt: skip
