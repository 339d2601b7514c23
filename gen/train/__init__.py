"""``rsgen train``: train or fine-tune the autoencoder, the latent denoiser (+ mask ControlNet) and the SR model,
and distil a controlled bundle into a few-step (LCM) one."""

from __future__ import annotations

from pathlib import Path

from gen.train.config import TrainConfig, load_train_config, parse_train_config


def train(config: TrainConfig, *, export: bool = True) -> Path:
    """Run (or resume) one training config; returns the export folder."""
    from gen.train.loop import run_training

    if config.task == "autoencoder":
        from gen.train.autoencoder import AutoencoderTask as task
    elif config.task == "denoiser":
        from gen.train.denoiser import DenoiserTask as task
    elif config.task == "distill":
        from gen.train.distill import DistillTask as task
    else:
        from gen.train.sr import SRTask as task
    return run_training(config, task, export=export)


__all__ = ["TrainConfig", "load_train_config", "parse_train_config", "train"]
