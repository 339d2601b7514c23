"""Task ``distill``: latent consistency distillation (LCM, Luo et al. 2023) of a controlled bundle.

The teacher is the ``init_from`` bundle (an ``RSControlledPipeline`` with a ``mask`` ControlNet). Its UNet
and ControlNet are frozen; the student is a copy of its UNet and is the only model trained. The ControlNet
is shared: the student sees the same mask residuals as the teacher, so at sampling the exported bundle
pairs the distilled UNet with the teacher's ControlNet, unchanged.

One step, per sample: a DDIM timestep ``t_n`` of the ``num_ddim_timesteps`` grid (19, 39, ..., 999 for
50) and ``t_{n-k} = t_n - 1000 / num_ddim_timesteps`` (0 at the first). The latent is noised to ``t_n``;
the teacher, guided with classifier-free guidance as rsgen samples (``uncond + guidance · (cond − uncond)``;
the unconditional branch has the empty caption, the unknown metadata record and — for a teacher whose card
sets ``guide_controls`` — no ControlNet residuals), takes one DDIM step to ``t_{n-k}``. The student's
consistency function ``f(x, t) = c_skip(t) · x + c_out(t) · x̂0(x, t)`` at ``(x_{t_n}, t_n)`` is pulled
towards the target network's ``f`` at ``(x_{t_{n-k}}, t_{n-k})`` with a pseudo-Huber loss. ``c_skip`` and
``c_out`` are the LCM boundary scalings at ``t · timestep_scaling`` (σ_data = 0.5), the same that
``LCMScheduler`` applies when sampling. The target network is an EMA of the student with its own decay
(``model.target_decay``, 0.95), updated after every optimizer step and saved in every checkpoint; the
loop's ``ema_decay`` is, as for every task, the EMA of the student that is exported.

Crops without a mask (e.g. unlabelled change-pair dates) are distilled without the ControlNet, so the
student also serves text-to-image. Data sources and the latent cache are task ``denoiser``'s.

The export has the teacher's layout (every component but ``unet`` and ``scheduler`` saved unchanged), an
``LCMScheduler`` with the teacher's betas and prediction type, and the teacher's card with
``default_steps`` (``model.student_steps``) and ``default_guidance`` 1 (the guidance is in the weights).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from diffusers import DDPMScheduler, LCMScheduler, UNet2DConditionModel
from PIL import Image
from torch import nn

from conditions.palettes import CANONICAL
from gen.train.autoencoder import to_uint8
from gen.train.config import DistillArch, TrainConfig
from gen.train.data import TrainingPool, build_pool
from gen.train.denoiser import caption_tokens, control_images, pool_latents, preview_indices
from gen.train.loop import TrainError, image_grid, step_generator, step_rng
from pipelines.bundle import ModelCard
from pipelines.controlled.pipeline_rs_controlled import RSControlledPipeline

logger = logging.getLogger(__name__)

SIGMA_DATA = 0.5  # the LCM boundary scalings' data standard deviation (LCMScheduler's too)
TEACHER_STEPS = 14  # sample grids: the teacher's column (the quickstart's steps before distillation)


def boundary_scalings(
    timesteps: torch.Tensor, timestep_scaling: float, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor]:
    """LCM's ``(c_skip, c_out)`` at integer timesteps: ``c_skip = σ² / ((s·t)² + σ²)``,
    ``c_out = s·t / sqrt((s·t)² + σ²)``; ``(1, 0)`` at t = 0, so ``f(x, 0) = x``."""
    scaled = timesteps.double() * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip.float(), c_out.float()


def predicted_x0(eps: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x̂0 of an ε-prediction: ``(x − sqrt(1 − ᾱ) ε) / sqrt(ᾱ)``; ``alpha_bar`` broadcasts (B, 1, 1, 1)."""
    return (sample - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


class DDIMSolver:
    """The teacher's ODE solver: deterministic DDIM steps between the ``num_ddim`` grid timesteps
    ``(1..num_ddim) · k − 1`` (``k = T / num_ddim``), each to ``t − k`` (the first one to 0)."""

    def __init__(self, alphas_cumprod: torch.Tensor, num_ddim: int) -> None:
        total = len(alphas_cumprod)
        skip = total // num_ddim
        self.timesteps = torch.arange(1, num_ddim + 1) * skip - 1  # (N,): 19, 39, ..., 999 for 50 of 1000
        self.prev_timesteps = (self.timesteps - skip).clamp(min=0)  # (N,): 0, 19, ..., 979
        self.alpha_bar = alphas_cumprod[self.timesteps].float()  # (N,)
        self.alpha_bar_prev = alphas_cumprod[self.prev_timesteps].float()  # (N,)

    def step(self, x0: torch.Tensor, eps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One DDIM step from grid timestep ``timesteps[index]`` to ``prev_timesteps[index]`` (B, C, h, w)."""
        alpha_prev = self.alpha_bar_prev[index].to(x0.device)[:, None, None, None]  # (B, 1, 1, 1)
        return alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps


def huber_loss(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """Pseudo-Huber loss ``mean(sqrt((pred − target)² + c²) − c)`` (a scalar)."""
    return (((pred.float() - target.float()) ** 2 + c**2).sqrt() - c).mean()


def lcm_scheduler(teacher_config: Any, arch: DistillArch) -> LCMScheduler:
    """An ``LCMScheduler`` on the teacher's noise schedule (betas, prediction type) and the distillation grid."""
    accepted = set(inspect.signature(LCMScheduler.__init__).parameters) - {"self"}
    shared = {key: value for key, value in teacher_config.items() if key in accepted}  # the DPM-only keys dropped
    return LCMScheduler(
        **{**shared, "original_inference_steps": arch.num_ddim_timesteps, "timestep_scaling": arch.timestep_scaling}
    )


class DistillObjective(nn.Module):
    def __init__(
        self, teacher: RSControlledPipeline, pool: TrainingPool, latents: tuple[torch.Tensor, torch.Tensor],
        tokens: torch.Tensor, empty_tokens: torch.Tensor, config: TrainConfig,
    ) -> None:  # fmt: skip
        super().__init__()
        self.arch: DistillArch = config.model  # type: ignore[assignment]
        self.student = copy.deepcopy(teacher.unet).requires_grad_(True).train()
        self.teacher = teacher.unet.requires_grad_(False).eval()
        self.target = copy.deepcopy(teacher.unet).requires_grad_(False).eval()
        self.controlnet = teacher.control_nets[teacher.control_names.index("mask")].requires_grad_(False).eval()
        self.text_encoder = teacher.text_encoder.requires_grad_(False).eval()
        self.metadata_encoder = teacher.metadata_encoder
        if self.metadata_encoder is not None:
            self.metadata_encoder.requires_grad_(False).eval()
        self.guide_controls = bool(teacher.guide_controls)
        self.pool, self.scaling = pool, float(teacher.vae.config.scaling_factor)
        self.register_buffer("latent_mean", latents[0], persistent=False)  # (N, C, h, w)
        self.register_buffer("latent_std", latents[1], persistent=False)
        self.register_buffer("tokens", tokens, persistent=False)  # (N, L)
        self.register_buffer("empty_tokens", empty_tokens, persistent=False)  # (L,)
        self.prepared = self.metadata_encoder.prepare(pool.metadata) if self.metadata_encoder is not None else None
        self.null_record = self.metadata_encoder.prepare([None]) if self.metadata_encoder is not None else None
        self.batch_size, self.seed = config.batch_size, config.seed
        schedule = DDPMScheduler.from_config(teacher.scheduler.config)
        self.solver = DDIMSolver(schedule.alphas_cumprod, self.arch.num_ddim_timesteps)

    def train(self, mode: bool = True) -> DistillObjective:
        """Only the student switches modes; the frozen networks stay in eval mode."""
        self.training = mode
        self.student.train(mode)
        return self

    # ------------------------------------------------------------------ conditions
    def conditions(
        self, index: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Text (B, L, D) and metadata (B, E) embeddings of the crops, and of the unconditional branch."""
        batch = len(index)
        text = self.text_encoder(self.tokens[index])[0]  # (B, L, D)
        null_text = self.text_encoder(self.empty_tokens[None])[0].expand(batch, -1, -1)  # (B, L, D)
        if self.metadata_encoder is None:
            return text, null_text, None, None
        p, q = self.prepared, self.null_record
        metadata = self.metadata_encoder(p.values[index], p.known[index], p.sensor_ids[index])  # (B, E)
        null = self.metadata_encoder(q.values, q.known, q.sensor_ids).expand(batch, -1)  # (B, E)
        return text, null_text, metadata, null

    def residuals(
        self, sample: torch.Tensor, t: torch.Tensor, text: torch.Tensor, metadata: torch.Tensor | None,
        cond: torch.Tensor, gate: torch.Tensor,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:  # fmt: skip
        """The mask ControlNet's residuals, zeroed for the crops without a mask (``gate`` (B, 1, 1, 1))."""
        down, mid = self.controlnet(
            sample, t, encoder_hidden_states=text, controlnet_cond=cond, class_labels=metadata, return_dict=False
        )
        return [d * gate for d in down], mid * gate

    @staticmethod
    def unet_eps(
        unet: UNet2DConditionModel, sample: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
        metadata: torch.Tensor | None, residuals: tuple[list[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:  # fmt: skip
        down, mid = residuals
        return unet(
            sample,
            t,
            encoder_hidden_states=text,
            class_labels=metadata,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample  # fmt: skip (B, C, h, w)

    @torch.no_grad()
    def teacher_eps(
        self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, null_text: torch.Tensor,
        metadata: torch.Tensor | None, null_metadata: torch.Tensor | None, cond: torch.Tensor, gate: torch.Tensor,
        residuals: tuple[list[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:  # fmt: skip
        """The teacher's guided ε (B, C, h, w): both branches in one batch of 2B, as the pipeline runs them."""
        if self.guide_controls:  # the unconditional branch gets no residuals: guidance amplifies the control
            uncond = ([torch.zeros_like(d) for d in residuals[0]], torch.zeros_like(residuals[1]))
        else:
            uncond = self.residuals(x_t, t, null_text, null_metadata, cond, gate)
        both = ([torch.cat([u, c]) for u, c in zip(uncond[0], residuals[0])], torch.cat([uncond[1], residuals[1]]))
        meta = None if metadata is None else torch.cat([null_metadata, metadata])  # (2B, E)
        eps = self.unet_eps(
            self.teacher, torch.cat([x_t] * 2), torch.cat([t] * 2), torch.cat([null_text, text]), meta, both
        )  # fmt: skip (2B, C, h, w)
        eps_uncond, eps_cond = eps.chunk(2)
        return eps_uncond + self.arch.guidance * (eps_cond - eps_uncond)

    # ------------------------------------------------------------------ loss
    def forward(self, step: int, process: int) -> torch.Tensor:
        arch, batch = self.arch, self.batch_size
        rng = step_rng(self.seed, process, step)
        index = rng.integers(0, len(self.pool), batch)
        device = self.latent_mean.device
        gen = step_generator(self.seed, process, step)
        eps = torch.randn(self.latent_mean[index].shape, generator=gen).to(device)
        latents = (self.latent_mean[index] + self.latent_std[index] * eps) * self.scaling  # (B, C, h, w)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        grid = torch.randint(0, arch.num_ddim_timesteps, (batch,), generator=gen)  # (B,) index into the DDIM grid
        t, t_prev = self.solver.timesteps[grid].to(device), self.solver.prev_timesteps[grid].to(device)
        alpha = self.solver.alpha_bar[grid].to(device)[:, None, None, None]  # (B, 1, 1, 1)
        alpha_prev = self.solver.alpha_bar_prev[grid].to(device)[:, None, None, None]
        x_t = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise  # (B, C, h, w)

        gate = torch.from_numpy(self.pool.has_mask[index]).to(device, x_t.dtype)[:, None, None, None]  # (B, 1, 1, 1)
        cond = control_images(self.pool.masks[index]).to(device)  # (B, 3, H, W)
        with torch.no_grad():
            text, null_text, metadata, null_metadata = self.conditions(index)
            residuals = self.residuals(x_t, t, text, metadata, cond, gate)
            guided = self.teacher_eps(x_t, t, text, null_text, metadata, null_metadata, cond, gate, residuals)
            x_prev = self.solver.step(predicted_x0(guided, x_t, alpha), guided, grid)  # (B, C, h, w)
            target_eps = self.unet_eps(self.target, x_prev, t_prev, text, metadata,
                                       self.residuals(x_prev, t_prev, text, metadata, cond, gate))  # fmt: skip
            skip_prev, out_prev = (c[:, None, None, None] for c in boundary_scalings(t_prev, arch.timestep_scaling))
            target = skip_prev * x_prev + out_prev * predicted_x0(target_eps, x_prev, alpha_prev)

        student_eps = self.unet_eps(self.student, x_t, t, text, metadata, residuals)  # (B, C, h, w)
        skip, out = (c[:, None, None, None] for c in boundary_scalings(t, arch.timestep_scaling))
        consistency = skip * x_t + out * predicted_x0(student_eps, x_t, alpha)
        return huber_loss(consistency, target, arch.huber_c)

    # ------------------------------------------------------------------ loop hooks
    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """The target network follows the student: ``target ← decay · target + (1 − decay) · student``."""
        for target, online in zip(self.target.parameters(), self.student.parameters()):
            target.lerp_(online.detach(), 1 - self.arch.target_decay)

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return {f"target.{name}": tensor for name, tensor in self.target.state_dict().items()}

    def load_checkpoint_state(self, tensors: dict[str, torch.Tensor]) -> None:
        state = {name.removeprefix("target."): tensor for name, tensor in tensors.items()}
        self.target.load_state_dict(state, strict=True)


def load_teacher(path: Path) -> RSControlledPipeline:
    """The ``init_from`` bundle as a pipeline; it must be an ε-prediction controlled bundle with a mask control."""
    card = ModelCard.read(path)
    if card.pipeline != "RSControlledPipeline" or "mask" not in card.controls or card.inpainting:
        raise TrainError(
            f"init_from={str(path)!r}: a {card.pipeline} with controls {card.controls}"
            f"{' (inpainting)' if card.inpainting else ''}; task 'distill' needs a controlled bundle with a 'mask' "
            "control (e.g. pipelines/default_model/controlled)"
        )
    teacher = RSControlledPipeline.from_bundle(path)
    prediction = teacher.scheduler.config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise TrainError(f"init_from={str(path)!r}: prediction_type={prediction!r}; task 'distill' supports 'epsilon'")
    return teacher


class DistillTask:
    def __init__(self, config: TrainConfig, accelerator: Accelerator) -> None:
        self.config = config
        self.arch: DistillArch = config.model  # type: ignore[assignment]
        pool = build_pool(config.data, config.resolution, config.pool_size, config.seed)
        self.teacher = load_teacher(config.init_from)
        self.teacher.set_progress_bar_config(disable=True)
        latents = pool_latents(config, self.teacher.vae, pool)
        tokens, empty = caption_tokens(self.teacher.tokenizer, pool.captions, self.teacher.tokenizer.model_max_length)
        self.objective = DistillObjective(self.teacher, pool, latents, tokens, empty, config)
        self.preview = preview_indices(pool)
        self.card = self.student_card(self.teacher.model_card)

    def student_card(self, teacher: ModelCard) -> ModelCard:
        """The teacher's card with the student's sampling defaults (and name, licence, description if given)."""
        config, raw = self.config, self.config.raw
        return dataclasses.replace(
            teacher,
            name=config.name if "name" in raw else f"{teacher.name}-lcm",
            license=config.license if "license" in raw else teacher.license,
            native_size=(config.native_size,) * 2 if config.native_size else teacher.native_size,
            layout_strength=config.layout_strength if "layout_strength" in raw else teacher.layout_strength,
            default_steps=self.arch.student_steps,
            default_guidance=1.0,
            description=config.description
            or f"{teacher.name} distilled by `rsgen train` task distill (latent consistency, teacher guidance "
            f"{self.arch.guidance:g}, {config.max_steps} steps): samples in {self.arch.student_steps} steps without "
            "guidance.",
        )

    def pipeline(self, objective: nn.Module) -> RSControlledPipeline:
        """The teacher's pipeline with the student UNet and an ``LCMScheduler``, configured from the new card."""
        components = {**self.teacher.components, "unet": objective.student,
                      "scheduler": lcm_scheduler(self.teacher.scheduler.config, self.arch)}  # fmt: skip
        pipe = RSControlledPipeline(**components)
        pipe.model_card = self.card
        pipe.control_names = list(self.teacher.control_names)
        pipe.guide_controls = self.teacher.guide_controls
        pipe.soft_mask, pipe.masked_image = self.teacher.soft_mask, self.teacher.masked_image
        pipe.layout_strength = float(self.card.layout_strength)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def sample_grid(self, objective: nn.Module, step: int) -> Image.Image:
        """Rows: mask | teacher (14 steps, guidance) | student (student_steps, no guidance) | real crop."""
        objective.eval()
        pool, student = objective.pool, self.pipeline(objective)
        teacher = self.teacher
        rows = []
        for i in self.preview or [0]:
            common = dict(prompt=pool.captions[i], metadata=pool.metadata[i], output_type="pt",
                          controls={"mask": control_images(pool.masks[i : i + 1])})  # fmt: skip
            slow = teacher(
                **common,
                num_inference_steps=TEACHER_STEPS,
                guidance_scale=self.arch.guidance,
                generator=torch.Generator().manual_seed(i),
            ).images  # fmt: skip (1, 3, H, W) in [0, 1]
            fast = student(**common, num_inference_steps=self.arch.student_steps, guidance_scale=1.0,
                           generator=torch.Generator().manual_seed(i)).images  # fmt: skip
            rows.append([CANONICAL.colorize(pool.masks[i]), to_uint8(slow * 2 - 1)[0], to_uint8(fast * 2 - 1)[0],
                         pool.images[i]])  # fmt: skip
        objective.train()
        return image_grid(rows)

    def export(self, objective: nn.Module, out_dir: Path, summary: dict[str, Any]) -> None:
        pipe = self.pipeline(objective)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        self.card.write(out_dir)
        summary["teacher"] = str(self.config.init_from)
        summary["distill"] = dataclasses.asdict(self.arch)
        summary["data"] = sorted({s.split("/")[0] for s in objective.pool.sources})
        summary["pool_crops_with_mask"] = int(objective.pool.has_mask.sum())


__all__ = [
    "DDIMSolver",
    "DistillObjective",
    "DistillTask",
    "boundary_scalings",
    "huber_loss",
    "lcm_scheduler",
    "predicted_x0",
]
