"""`rsgen train`: config errors, the training pool from real data, and smoke runs of every task
(loss goes down on a fixed evaluation batch, checkpoints resume bit-identically, the export loads
and generates)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conditions.masks import IGNORE
from conditions.palettes import CANONICAL
from core.config_file import ConfigError
from gen.train import parse_train_config, train
from gen.train.autoencoder import build_autoencoder
from gen.train.config import AutoencoderArch
from gen.train.data import DataSource, TrainDataError, build_pool
from gen.train.loop import TrainError, list_checkpoints
from pipelines import RSText2ImagePipeline
from pipelines.controlled import RSControlledPipeline
from pipelines.super_resolution import RSSuperResolutionPipeline
from tests.conftest import SHARED_DATA, shared_file

LOVEDA = {"kind": "masks", "images": "seg/loveda/images", "masks": "seg/loveda/masks", "palette": "loveda",
          "gsd": 0.3, "sensor": "aerial", "caption": "aerial image"}  # fmt: skip


def config(task: str, out: Path, **overrides) -> dict:
    shared_file("seg/loveda/images/0.png")
    base = {
        "task": task, "output_dir": str(out), "data_root": str(SHARED_DATA), "resolution": 32, "pool_size": 8,
        "batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1, "max_steps": 6, "checkpoint_every": 3,
        "sample_every": 100, "log_every": 1, "ema_decay": 0.9, "threads": 1, "data": [LOVEDA],
    }  # fmt: skip
    if task == "autoencoder":
        base["model"] = {"channels": [16, 16, 32, 32]}
    elif task == "denoiser":
        base["model"] = {"unet_channels": [32, 64], "attention": [False, True], "text_hidden": 32, "text_layers": 1}
    else:
        base["model"] = {"unet_channels": [32, 64], "attention": [False, True], "text_hidden": 32, "text_layers": 1,
                         "scale": 2}  # fmt: skip
    base.update(overrides)
    return base


@pytest.fixture(scope="module")
def random_vae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small untrained VAE folder (the denoiser and SR smoke tests need *a* VAE, not a good one)."""
    path = tmp_path_factory.mktemp("vae") / "vae"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        build_autoencoder(AutoencoderArch(channels=(16, 16, 32, 32), latent_channels=8), 32).save_pretrained(path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"task": "gan"}, r"task: 'gan': expected one of"),
        ({"colour": 1}, r"config: unknown key\(s\) \['colour'\]"),
        ({"data": []}, r"data: required: a non-empty list"),
        ({"data": [{"kind": "tiles"}]}, r"data\[0\]\.kind: 'tiles': expected one of"),
        ({"data": [{**LOVEDA, "scales": [0]}]}, r"data\[0\]\.scales: expected a list of integers >= 1"),
        ({"resolution": 40}, r"resolution: 40: expected a multiple of 16"),
        ({"batch_size": 0}, r"batch_size: expected >= 1, got 0"),
        ({"ema_decay": 1.0}, r"ema_decay: 1.0: expected in \[0, 1\)"),
        ({"model": {"channels": [16, 20, 32, 32]}}, r"model: channels \[16, 20, 32, 32\]: expected multiples of 8"),
    ],
)
def test_config_errors_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        parse_train_config({**config("autoencoder", tmp_path), **change})


def test_denoiser_config_needs_an_autoencoder(tmp_path):
    with pytest.raises(ConfigError, match=r"autoencoder: task 'denoiser' needs a trained VAE"):
        parse_train_config(config("denoiser", tmp_path))
    bad = config("denoiser", tmp_path, autoencoder="x", model={"unet_channels": [32, 64], "attention": [True]})
    with pytest.raises(ConfigError, match=r"model.attention: \[True\]: expected one flag per level"):
        parse_train_config(bad)


def test_pool_from_real_loveda_masks_is_seeded_and_exact():
    source = DataSource(kind="masks", images=shared_file("seg/loveda/images"), masks=SHARED_DATA / "seg/loveda/masks",
                        palette="loveda", gsd=0.3, sensor="aerial", caption="aerial image", scales=[1, 2])  # fmt: skip
    pool = build_pool([source], 64, 12, seed=3)
    again = build_pool([source], 64, 12, seed=3)
    assert pool.images.shape == (12, 64, 64, 3) and pool.images.dtype == np.uint8
    assert pool.masks.shape == (12, 64, 64) and pool.has_mask.all()
    np.testing.assert_array_equal(pool.images, again.images)
    np.testing.assert_array_equal(pool.masks, again.masks)
    assert pool.captions == again.captions
    # LoveDA ids map onto canonical ids only (255 = LoveDA's no-data).
    valid = {c.id for c in CANONICAL.classes} | {IGNORE}
    assert set(np.unique(pool.masks)) <= valid
    assert {m.gsd for m in pool.metadata} <= {0.3, 0.6} and all(m.sensor == "aerial" for m in pool.metadata)
    # Captions name the crop's main classes, largest first.
    for caption, mask in zip(pool.captions, pool.masks):
        counts = np.bincount(mask.ravel(), minlength=256)[: len(CANONICAL.classes)]
        top = CANONICAL.by_id()[int(np.argmax(counts))].name.replace("_", " ")
        assert caption.startswith("aerial image") and (top in caption or top == "background")


def test_pool_errors_name_the_source(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.ones((32, 32), np.uint8)).save(tmp_path / "masks" / "a.png")
    source = DataSource(
        kind="masks", images=tmp_path / "images", masks=tmp_path / "masks", palette="loveda", name="mine"
    )
    with pytest.raises(TrainDataError, match=r"mine: mask 'a.png' is \(32, 32\) but its image is \(64, 64\)"):
        build_pool([source], 32, 2, seed=0)
    empty = DataSource(kind="images", path=tmp_path / "masks" / "none", name="void")
    with pytest.raises(TrainDataError, match=r"void.path=.*no such folder"):
        build_pool([empty], 32, 2, seed=0)
    small = DataSource(kind="images", path=tmp_path / "images", name="small", scales=[4])
    with pytest.raises(TrainDataError, match=r"data source 'small': no image is at least 32×scale px"):
        build_pool([small], 32, 2, seed=0)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "weights.safetensors"))


def test_autoencoder_trains_resumes_bit_identically_and_exports(tmp_path):
    straight = parse_train_config(config("autoencoder", tmp_path / "a"))
    export = train(straight)
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and log[-1]["loss"] < log[0]["loss"]
    assert (export / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    summary = json.loads((export / "training.json").read_text())
    assert summary["steps"] == 6 and 0 < summary["latent_std"] and summary["reconstruction_psnr_db"] > 0
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(export / "vae")
    assert vae.config.scaling_factor == pytest.approx(1 / summary["latent_std"])
    assert (tmp_path / "a" / "samples" / "step_000006.png").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "a")] == ["step_000003", "step_000006"]

    # Stop at step 3 (as if killed after that checkpoint), then resume to 6: same weights, bit for bit.
    train(parse_train_config(config("autoencoder", tmp_path / "b", max_steps=3)), export=False)
    with open(tmp_path / "b" / "log.jsonl", "a", encoding="utf-8") as log_file:  # logged, then killed before step 6
        log_file.write('{"step": 4, "loss": 9.0}\n{"step": 5, "loss": 9.0}\n')
    train(parse_train_config(config("autoencoder", tmp_path / "b", max_steps=6)), export=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the killed run's lines after its checkpoint are dropped, not repeated
    a, b = _weights(list_checkpoints(tmp_path / "a")[-1]), _weights(list_checkpoints(tmp_path / "b")[-1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # Another config in the same folder is refused.
    with pytest.raises(TrainError, match=r"holds a run with a different config"):
        train(parse_train_config(config("autoencoder", tmp_path / "a", learning_rate=5e-4)))


def test_decoder_only_fine_tuning_keeps_the_latent_space(tmp_path, random_vae):
    """model.train_encoder: false trains the decoder from init_from and leaves encoder, quant_conv and
    scaling_factor exactly as they were, so denoisers trained on that VAE stay valid."""
    from diffusers import AutoencoderKL

    before = AutoencoderKL.from_pretrained(random_vae)
    cfg = config("autoencoder", tmp_path / "dec", init_from=str(random_vae), max_steps=3,
                 model={"channels": [16, 16, 32, 32], "latent_channels": 8, "train_encoder": False})  # fmt: skip
    after = AutoencoderKL.from_pretrained(train(parse_train_config(cfg)) / "vae")
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in old if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained and all(torch.equal(old[k], new[k]) for k in frozen)
    assert any(not torch.equal(old[k], new[k]) for k in trained)
    assert after.config.scaling_factor == before.config.scaling_factor
    with pytest.raises(ConfigError, match=r"model\.train_encoder: false \(decoder-only fine-tuning\) needs init_from"):
        parse_train_config(config("autoencoder", tmp_path / "x", model={"channels": [16, 16, 32, 32],
                                                                         "train_encoder": False}))  # fmt: skip


@torch.no_grad()
def _eval_loss(objective: torch.nn.Module) -> float:
    """The loss on one fixed batch (step 10**6: same crops, noise and timesteps every call)."""
    return float(np.mean([objective(10**6 + i, 0).item() for i in range(3)]))


def test_denoiser_learns_and_exports_a_controlled_bundle(tmp_path, random_vae):
    from accelerate import Accelerator

    from gen.train.denoiser import DenoiserTask

    cfg = parse_train_config(config("denoiser", tmp_path / "d", autoencoder=str(random_vae), max_steps=12,
                                    ema_decay=0.0))  # fmt: skip
    task = DenoiserTask(cfg, Accelerator(cpu=True))
    before = _eval_loss(task.objective)
    export = train(cfg)
    from gen.train.loop import load_checkpoint

    optimizer = torch.optim.AdamW([p for p in task.objective.parameters() if p.requires_grad])
    load_checkpoint(list_checkpoints(tmp_path / "d")[-1], task.objective, None, optimizer)
    after = _eval_loss(task.objective)
    assert after < before

    card = json.loads((export / "rsgen_model.json").read_text())
    assert card["pipeline"] == "RSControlledPipeline" and card["controls"] == ["mask"]
    assert card["palette"] == {"name": "canonical", "encoding": "color"} and card["gsd_range"] == [0.3, 0.3]
    # class_colors: the mean RGB of each class's labelled pool pixels, checked against a direct masked mean.
    pool = task.objective.pool
    ids, rgb = pool.masks[pool.has_mask], pool.images[pool.has_mask]  # (n, S, S), (n, S, S, 3)
    counts = {c.name: int((ids == c.id).sum()) for c in CANONICAL.classes}
    assert set(card["class_colors"]) == {name for name, n in counts.items() if n >= 1000}  # rare classes left out
    assert len(card["class_colors"]) >= 2 and card["layout_strength"] == 1.0
    for name, color in card["class_colors"].items():
        assert color == pytest.approx(rgb[ids == CANONICAL.class_by_name(name).id].mean(axis=0), abs=0.051)
    pipe = RSControlledPipeline.from_bundle(export)
    pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 3, 32, 32)
    out = pipe("aerial image", controls={"mask": mask}, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    # The same bundle serves text-to-image (its UNet without the ControlNet).
    t2i = RSText2ImagePipeline.from_bundle(export)
    t2i.set_progress_bar_config(disable=True)
    image = t2i("aerial image", num_inference_steps=2, output_type="np", height=32, width=32).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


def test_denoiser_and_sr_on_a_given_tiny_autoencoder(tmp_path):
    """A diffusers AutoencoderTiny (TAESD layout) can be reused as the frozen VAE: its deterministic
    latents train a denoiser and an SR model whose bundles load and generate with it."""
    from diffusers import AutoencoderTiny

    with torch.random.fork_rng():
        torch.manual_seed(0)
        widths, blocks = (16, 16, 16, 16), (1, 1, 1, 1)
        tiny = AutoencoderTiny(encoder_block_out_channels=widths, decoder_block_out_channels=widths,
                               num_encoder_blocks=blocks, num_decoder_blocks=blocks, latent_channels=4)  # fmt: skip
    tiny.save_pretrained(tmp_path / "taesd")
    export = train(parse_train_config(config("denoiser", tmp_path / "d", autoencoder=str(tmp_path / "taesd"),
                                             max_steps=2)))  # fmt: skip
    assert json.loads((export / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderTiny"]
    pipe = RSControlledPipeline.from_bundle(export)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor == 8
    out = pipe("aerial image", controls={"mask": torch.zeros(1, 3, 32, 32)}, num_inference_steps=2).images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    sr_export = train(parse_train_config(config("sr", tmp_path / "s", autoencoder=str(tmp_path / "taesd"),
                                                max_steps=2)))  # fmt: skip
    sr = RSSuperResolutionPipeline.from_bundle(sr_export)
    sr.set_progress_bar_config(disable=True)
    hr = sr(torch.rand(1, 3, 32, 32), num_inference_steps=2, strength=0.5, lr_scale=2).images
    assert hr.shape == (1, 32, 32, 3) and np.isfinite(hr).all()
    with pytest.raises(ValueError, match=r"a 'AutoencoderTiny'; expected one of \['AutoencoderKL'\]"):
        train(parse_train_config(config("autoencoder", tmp_path / "a", init_from=str(tmp_path / "taesd"))))


def test_sr_learns_and_exports(tmp_path, random_vae):
    from accelerate import Accelerator

    from gen.train.loop import load_checkpoint
    from gen.train.sr import SRTask

    cfg = parse_train_config(config("sr", tmp_path / "s", autoencoder=str(random_vae), max_steps=12, ema_decay=0.0,
                                    sample_every=12))  # fmt: skip
    task = SRTask(cfg, Accelerator(cpu=True))
    before = _eval_loss(task.objective)
    export = train(cfg)
    optimizer = torch.optim.AdamW([p for p in task.objective.parameters() if p.requires_grad])
    load_checkpoint(list_checkpoints(tmp_path / "s")[-1], task.objective, None, optimizer)
    assert _eval_loss(task.objective) < before
    card = json.loads((export / "rsgen_model.json").read_text())
    assert card["pipeline"] == "RSSuperResolutionPipeline" and card["controls"] == ["reference"]
    pipe = RSSuperResolutionPipeline.from_bundle(export)
    pipe.set_progress_bar_config(disable=True)
    lr = torch.rand(1, 3, 32, 32)
    out = pipe(image=lr, reference=lr, reference_strength=1.0, num_inference_steps=2, output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()
    assert (tmp_path / "s" / "samples" / "step_000012.png").is_file()


def test_cli_train_dry_run(tmp_path, capsys):
    from gen.cli import main

    path = tmp_path / "ae.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config("autoencoder", tmp_path / "run")))
    assert main(["train", str(path), "--dry-run", "--set", "max_steps=9"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["max_steps"] == 9 and len(printed["digest"]) == 16
    assert not (tmp_path / "run").exists()


def test_two_process_training_through_accelerate(tmp_path):
    """`rsgen train --num-processes 2` runs DDP over gloo on CPU and exports once."""
    import os
    import subprocess
    import sys

    import yaml

    path = tmp_path / "ae.yaml"
    path.write_text(yaml.safe_dump(config("autoencoder", tmp_path / "run", max_steps=2, checkpoint_every=2)))
    proc = subprocess.run(
        [sys.executable, "-m", "gen", "train", str(path), "--num-processes", "2"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "export" / "vae" / "config.json").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_000002"]
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == 2  # the main process logs once per step


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    """With gradient_accumulation_steps=2 a 'step' is one optimizer update over two micro-batches."""
    cfg = parse_train_config(config("autoencoder", tmp_path / "acc", max_steps=2, gradient_accumulation_steps=2))
    train(cfg, export=False)
    log = [json.loads(line) for line in (tmp_path / "acc" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]
    state = json.loads((list_checkpoints(tmp_path / "acc")[-1] / "state.json").read_text())
    assert state["step"] == 2
