"""`rsgen train` task distill: latent consistency distillation of a tiny random controlled bundle on real LoveDA
crops. Config errors, the LCM boundary scalings and DDIM solver step against hand-computed values, the exported
bundle (teacher layout, LCMScheduler, card defaults, only the UNet changed), resume with the target network, and
sampling with the distilled bundle (seeded, layout prior, no CFG at guidance 1); the quickstart takes the card's
sampling defaults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, LCMScheduler
from safetensors.torch import load_file

from core.config_file import ConfigError
from gen.train import parse_train_config, train
from gen.train.distill import DDIMSolver, boundary_scalings, huber_loss, predicted_x0
from gen.train.loop import list_checkpoints
from pipelines.bundle import BundleError, ModelCard
from pipelines.conditioning import tail_timesteps
from pipelines.controlled import RSControlledPipeline
from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle
from tests.conftest import SHARED_DATA, TEST_SIZE, shared_file

LOVEDA = {"kind": "masks", "images": "seg/loveda/images", "masks": "seg/loveda/masks", "palette": "loveda",
          "gsd": 0.3, "sensor": "aerial", "caption": "aerial image"}  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random controlled bundle (mask ControlNet) whose card has class colours (for the layout prior)."""
    path = build_tiny_bundle(tmp_path_factory.mktemp("teacher") / "b", TinyControlledBundleConfig(TEST_SIZE, ("mask",)))
    card = json.loads((path / "rsgen_model.json").read_text())
    card.update(class_colors={"building": [200.0, 40.0, 40.0], "water": [20.0, 40.0, 200.0]}, guide_controls=True)
    (path / "rsgen_model.json").write_text(json.dumps(card))
    return path


def config(out: Path, teacher: Path | None, **overrides) -> dict:
    shared_file("seg/loveda/images/0.png")
    base = {
        "task": "distill", "output_dir": str(out), "data_root": str(SHARED_DATA), "resolution": 32, "pool_size": 8,
        "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1, "max_steps": 3, "checkpoint_every": 1,
        "sample_every": 100, "log_every": 1, "ema_decay": 0.0, "threads": 1, "data": [LOVEDA],
        "model": {"student_steps": 2},
    }  # fmt: skip
    if teacher is not None:
        base["init_from"] = str(teacher)
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory, teacher: Path) -> Path:
    return train(parse_train_config(config(tmp_path_factory.mktemp("distill") / "run", teacher)))


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"init_from": None}, r"init_from: task 'distill' needs the teacher: set init_from=BUNDLE"),
        ({"autoencoder": "vae"}, r"autoencoder: 'vae': task 'distill' uses the VAE of the teacher"),
        ({"model": {"num_ddim_timesteps": 30}}, r"model.num_ddim_timesteps: 30: expected a divisor of the 1000"),
        ({"model": {"student_steps": 60}}, r"model.student_steps: 60: expected <= num_ddim_timesteps \(50\)"),
        ({"model": {"student_steps": 0}}, r"model.student_steps: expected an integer >= 1, got 0"),
        ({"model": {"guidance": 0.5}}, r"model.guidance: 0.5: expected >= 1"),
        ({"model": {"target_decay": 1.0}}, r"model.target_decay: 1.0: expected in \[0, 1\)"),
        ({"model": {"unet_channels": [32]}}, r"model: unknown key\(s\) \['unet_channels'\] for task 'distill'"),
    ],
)
def test_config_errors_name_the_key(tmp_path, change, message):
    data = {**config(tmp_path / "run", tmp_path / "teacher"), **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        parse_train_config(data)


def test_teacher_must_be_a_controlled_bundle_with_a_mask(tmp_path, tiny_bundle):
    with pytest.raises(
        ValueError, match=r"init_from=.*a RSText2ImagePipeline with controls \[\]; task 'distill' needs"
    ):
        train(parse_train_config(config(tmp_path / "run", tiny_bundle)))


# ------------------------------------------------------------------ known values
def test_boundary_scalings_known_values_and_lcm_scheduler_agrees():
    c_skip, c_out = boundary_scalings(torch.tensor([0, 1, 19]), timestep_scaling=10.0)
    # t = 0: f(x, 0) = x. t = 1: s·t = 10, c_skip = 0.25 / 100.25, c_out = 10 / sqrt(100.25).
    assert c_skip.tolist() == pytest.approx([1.0, 0.25 / 100.25, 0.25 / 36100.25], rel=1e-6)
    assert c_out.tolist() == pytest.approx([0.0, 10 / math.sqrt(100.25), 190 / math.sqrt(36100.25)], rel=1e-6)
    assert c_skip[1].item() == pytest.approx(0.0024937656, rel=1e-6) and c_out[1].item() == pytest.approx(0.9987523389)
    lcm = LCMScheduler(timestep_scaling=10.0)
    for i, t in enumerate((0, 1, 19)):
        assert lcm.get_scalings_for_boundary_condition_discrete(t) == pytest.approx(
            (c_skip[i].item(), c_out[i].item()), rel=1e-6
        )


def test_ddim_solver_grid_and_step_known_values():
    schedule = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )
    solver = DDIMSolver(schedule.alphas_cumprod, 50)
    assert solver.timesteps[:3].tolist() == [19, 39, 59] and solver.timesteps[-1].item() == 999
    assert solver.prev_timesteps[:3].tolist() == [0, 19, 39] and solver.prev_timesteps[-1].item() == 979
    # From t = 19 to t = 0, where ᾱ_0 = 1 − β_0 = 1 − 0.00085: x_prev = sqrt(0.99915)·x0 + sqrt(0.00085)·ε.
    x0, eps, first = torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.tensor([0])
    assert solver.step(x0, 0 * eps, first).item() == pytest.approx(math.sqrt(0.99915), rel=1e-6)
    # (1 − ᾱ_0 of a float32 ᾱ_0 is 0.00085 to 2e-5 relative)
    assert solver.step(0 * x0, eps, first).item() == pytest.approx(math.sqrt(0.00085), rel=1e-4)
    # A DDIM step with the true (x0, ε) lands on the forward process at the previous timestep, for every grid step.
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(50, 4, 2, 2, generator=gen), torch.randn(50, 4, 2, 2, generator=gen)
    index = torch.arange(50)
    expected = schedule.add_noise(x0, eps, solver.prev_timesteps)
    torch.testing.assert_close(solver.step(x0, eps, index), expected, rtol=1e-5, atol=1e-5)
    noisy = schedule.add_noise(x0, eps, solver.timesteps)
    torch.testing.assert_close(predicted_x0(eps, noisy, solver.alpha_bar[:, None, None, None]), x0, rtol=1e-4,
                               atol=1e-4)  # fmt: skip


def test_pseudo_huber_loss_known_values():
    pred, target = torch.tensor([0.0, 3.0]), torch.tensor([4.0, 3.0])
    # sqrt(16 + 1) − 1 and 0, averaged; with c → 0 it tends to the mean absolute error.
    assert huber_loss(pred, target, 1.0).item() == pytest.approx((math.sqrt(17) - 1) / 2)
    assert huber_loss(pred, target, 1e-6).item() == pytest.approx(2.0, rel=1e-5)


def test_lcm_tail_timesteps_run_every_step_below_the_layout_strength():
    lcm = LCMScheduler(original_inference_steps=50)
    lcm.set_timesteps(4)
    assert lcm.timesteps.tolist() == [999, 759, 499, 259]
    timesteps, skip = tail_timesteps(lcm, 4, 0.7)
    # LCM img2img: 4 steps on the grid below 0.7 · 1000 (19, 39, ..., 699); skip ≈ the steps above at that spacing.
    assert timesteps.tolist() == [699, 539, 359, 179] and skip == 2
    dpm = DPMSolverMultistepScheduler(steps_offset=1)
    dpm.set_timesteps(10)
    timesteps, skip = tail_timesteps(dpm, 10, 0.7)  # other schedulers: the last int(10 · 0.7) timesteps
    assert skip == 3 and timesteps.tolist() == dpm.timesteps[3:].tolist()


# ------------------------------------------------------------------ the run and its export
def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for path in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(path)).items()}


def test_export_is_the_teacher_with_a_distilled_unet_and_an_lcm_scheduler(distilled, teacher):
    assert sorted(p.name for p in distilled.iterdir()) == sorted(
        [p.name for p in teacher.iterdir() if p.name != "README.md"] + ["training.json"]
    )
    index = json.loads((distilled / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "LCMScheduler"] and index["unet"] == [
        "diffusers",
        "UNet2DConditionModel",
    ]
    for component in ("vae", "text_encoder", "controlnet", "metadata_encoder"):
        ours, theirs = _tensors(distilled / component), _tensors(teacher / component)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), component
    student, original = _tensors(distilled / "unet"), _tensors(teacher / "unet")
    assert student.keys() == original.keys() and any(not torch.equal(student[k], original[k]) for k in original)

    scheduler = json.loads((distilled / "scheduler" / "scheduler_config.json").read_text())
    base = json.loads((teacher / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["original_inference_steps"] == 50
    assert scheduler["timestep_scaling"] == 10.0 and "solver_order" not in scheduler
    for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type"):
        assert scheduler[key] == base[key], key

    card, old = ModelCard.read(distilled), ModelCard.read(teacher)
    assert card.default_steps == 2 and card.default_guidance == 1.0
    assert card.name == f"{old.name}-lcm" and card.class_colors == old.class_colors and card.controls == ["mask"]
    assert card.guide_controls and card.license == old.license and "distilled" in card.description
    summary = json.loads((distilled / "training.json").read_text())
    assert summary["task"] == "distill" and summary["steps"] == 3 and summary["teacher"] == str(teacher)
    assert summary["distill"]["guidance"] == 3.0 and (distilled.parent / "samples" / "step_000003.png").is_file()


def test_resume_restores_the_target_network(tmp_path, teacher, distilled):
    from accelerate import Accelerator

    from gen.train.distill import DistillTask
    from gen.train.loop import load_checkpoint

    cfg = config(tmp_path / "run", teacher)
    train(parse_train_config({**cfg, "max_steps": 2}), export=False)
    saved = list_checkpoints(tmp_path / "run")[-1]
    task = DistillTask(parse_train_config(cfg), Accelerator(cpu=True))
    optimizer = torch.optim.AdamW([p for p in task.objective.parameters() if p.requires_grad])
    load_checkpoint(saved, task.objective, None, optimizer)
    extra = load_file(str(saved / "extra.safetensors"))
    restored = task.objective.checkpoint_state()
    assert extra.keys() == restored.keys() and all(torch.equal(extra[k], restored[k]) for k in extra)
    train(parse_train_config(cfg), export=False)
    straight, resumed = list_checkpoints(distilled.parent)[-1], list_checkpoints(tmp_path / "run")[-1]
    assert straight.name == resumed.name == "step_000003"
    # Step 3 of the resumed run sees the restored student, target and data: its loss is the straight run's up to
    # float32 round-off (a fresh process's CPU kernels may sum in another order; Adam then amplifies it in the
    # weights, so those are not compared bit for bit).
    losses = [[json.loads(line)["loss"] for line in (folder.parent.parent / "log.jsonl").read_text().splitlines()]
              for folder in (straight, resumed)]  # fmt: skip
    assert losses[0][:2] == losses[1][:2] and losses[1][2] == pytest.approx(losses[0][2], rel=1e-5)
    # The target network is the EMA of the student, not the student itself.
    target, student = load_file(str(straight / "extra.safetensors")), load_file(str(straight / "weights.safetensors"))
    name = next(k for k in student if k.endswith("conv_in.weight"))
    assert not torch.equal(target[name.replace("student.", "target.")], student[name])


def test_distilled_bundle_samples_deterministically_in_two_steps(distilled):
    pipe = RSControlledPipeline.from_bundle(distilled)
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.layout_strength == 1.0
    mask = torch.zeros(1, 3, TEST_SIZE, TEST_SIZE)
    mask[:, 0, :, : TEST_SIZE // 2] = 1.0

    def sample(seed: int, **kwargs) -> np.ndarray:
        return pipe("aerial image", controls={"mask": mask}, num_inference_steps=2, guidance_scale=1.0,
                    generator=torch.Generator().manual_seed(seed), **kwargs).images  # fmt: skip

    batches: list[int] = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    try:
        first, again, other = sample(3), sample(3), sample(4)
    finally:
        hook.remove()
    assert first.shape == (1, TEST_SIZE, TEST_SIZE, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)  # LCM's noise between the steps comes from the generator
    assert batches == [1] * 6  # guidance 1: one UNet call per step, no unconditional branch
    prior = sample(3, layout_strength=0.7)
    np.testing.assert_array_equal(prior, sample(3, layout_strength=0.7))
    assert not np.array_equal(prior, first) and pipe.scheduler.timesteps.tolist() == [699, 359]


# ------------------------------------------------------------------ model card and quickstart
def test_card_sampling_defaults_are_optional_and_checked(tmp_path, teacher):
    assert ModelCard.read(teacher).default_steps is None and ModelCard.read(teacher).default_guidance is None
    card = json.loads((teacher / "rsgen_model.json").read_text())
    for key, value, message in (("default_steps", 0, "expected an integer >= 1 or null"),
                                ("default_guidance", -1, "expected a number >= 0 or null")):  # fmt: skip
        (tmp_path / "rsgen_model.json").write_text(json.dumps({**card, key: value}))
        with pytest.raises(BundleError, match=rf"{key}={value}: {message}"):
            ModelCard.read(tmp_path)


def test_quickstart_takes_the_cards_sampling_defaults(distilled, teacher):
    from gen.cli import QUICKSTART_GUIDANCE, QUICKSTART_STEPS, quickstart_spec

    spec = quickstart_spec(2, None, str(distilled))
    assert (spec.steps, spec.guidance) == (2, 1.0)
    assert quickstart_spec(2, 6, str(distilled)).steps == 6  # --steps wins; the guidance stays the card's
    spec = quickstart_spec(2, None, str(teacher))
    assert (spec.steps, spec.guidance) == (QUICKSTART_STEPS, QUICKSTART_GUIDANCE) == (4, 3.0)
