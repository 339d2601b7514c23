"""`rsgen model import text2earth`: a config-exact tiny replica of lcybuaa/Text2Earth is imported, loads, generates
through `rsgen txt2img` / `rsgen run`, and its resolution level (from --gsd) reaches the UNet as class_labels."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conditions.metadata import Metadata, MetadataError
from gen.cli import main
from pipelines import RSText2ImagePipeline
from pipelines.bundle import ModelCard
from pipelines.checkpoints import import_checkpoint
from pipelines.checkpoints.common import CheckpointError
from tests.replica_text2earth import SCHEDULER_CONFIG, build_text2earth_replica

SIZE = 32  # 4×4 latents


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return build_text2earth_replica(tmp_path_factory.mktemp("t2e") / "Text2Earth")


@pytest.fixture(scope="module")
def bundle(replica, tmp_path_factory):
    return import_checkpoint("text2earth", replica, tmp_path_factory.mktemp("t2e-bundle") / "text2earth")


@pytest.fixture(scope="module")
def pipe(bundle):
    pipe = RSText2ImagePipeline.from_bundle(bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_import_writes_a_safe_bundle_with_the_card(replica, bundle, pipe):
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert not any(f.endswith((".py", ".bin")) for f in files), files  # their pipeline file is never copied
    assert "feature_extractor" not in {f.split("/")[0] for f in files}
    card = ModelCard.read(bundle)
    assert (card.kind, card.source, card.class_labels, card.license) == (
        "text2earth", "lcybuaa/Text2Earth", "text2earth_level", "apache-2.0")  # fmt: skip
    assert card.native_size == (256, 256) and card.gsd_range == (0.5, 128.0) and card.metadata is None
    assert pipe.default_size == (256, 256) and pipe.has_metadata and pipe.metadata_encoder is None
    # The scheduler diffusers would build: model_index's class with scheduler_config's values (prediction type).
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.scheduler.config.prediction_type == SCHEDULER_CONFIG["prediction_type"] == "epsilon"
    source = load_file(str(replica / "unet" / "diffusion_pytorch_model.safetensors"))
    assert pipe.unet.config.class_embed_type == "timestep"
    for key in ("class_embedding.linear_1.weight", "conv_in.weight"):
        assert torch.equal(pipe.unet.state_dict()[key], source[key]), key


def _unet_class_labels(pipe, **kwargs):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["class_labels"].clone()), with_kwargs=True)  # fmt: skip
    try:
        out = pipe("farmland with a river", height=SIZE, width=SIZE, num_inference_steps=1, output_type="latent",
                   generator=torch.Generator().manual_seed(3), **kwargs).images  # fmt: skip
    finally:
        hook.remove()
    return seen, out


def test_gsd_reaches_the_unet_as_the_text2earth_level(pipe, caplog):
    seen, fine = _unet_class_labels(pipe, metadata=Metadata(gsd=0.5, lat=52.0, lon=5.0), guidance_scale=3.5)
    assert [s.tolist() for s in seen] == [[0, 18]]  # [unconditional null level; level of 0.5 m]
    seen, coarse = _unet_class_labels(pipe, metadata=Metadata(gsd=2.0), guidance_scale=3.5)
    assert [s.tolist() for s in seen] == [[0, 16]]
    assert not torch.allclose(fine, coarse)  # the level changes the denoiser's output
    seen, _ = _unet_class_labels(pipe, metadata=[Metadata(gsd=128.0), Metadata(gsd=1.0)], guidance_scale=1.0)
    assert [s.tolist() for s in seen] == [[10, 17]]  # no guidance: conditional labels only
    with caplog.at_level(logging.WARNING):
        seen, _ = _unet_class_labels(pipe, metadata=None, guidance_scale=3.5)
    assert [s.tolist() for s in seen] == [[0, 0]] and "null resolution level 0" in caplog.text


def test_bad_resolution_inputs_are_refused(pipe):
    with pytest.raises(ValueError, match=r"drop the '\{level\}_GOOGLE_LEVEL_' prefix"):
        pipe("16_GOOGLE_LEVEL_farmland", metadata=Metadata(gsd=2.0), height=SIZE, width=SIZE, num_inference_steps=1)
    with pytest.raises(MetadataError, match=r"gsd=500 m/px maps to Google level 8, outside Text2Earth's 10\.\.18"):
        pipe("farmland", metadata=Metadata(gsd=500.0), height=SIZE, width=SIZE, num_inference_steps=1)


def test_cli_import_then_txt2img_and_run(replica, tmp_path):
    dest = tmp_path / "t2e"
    assert main(["model", "import", "text2earth", str(replica), str(dest)]) == 0
    flags = ["--prompt", "farmland", "--gsd", "2", "--lat", "52.1", "--lon", "5.1", "--date", "2021-06-01",
             "--height", str(SIZE), "--width", str(SIZE), "--steps", "1", "--threads", "1"]  # fmt: skip
    assert main(["txt2img", "--model", str(dest), *flags, "--out", str(tmp_path / "cli")]) == 0
    sidecar = json.loads((tmp_path / "cli" / "00000000.json").read_text())
    assert sidecar["metadata"]["gsd"] == 2.0
    spec = {"task": "txt2img", "model": str(dest), "prompt": ["farmland"], "gsd": 2.0, "lat": 52.1, "lon": 5.1,
            "date": "2021-06-01", "height": SIZE, "width": SIZE, "steps": 1, "threads": 1}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "cli" / "00000000.png").read_bytes() == (tmp_path / "run" / "00000000.png").read_bytes()


def test_unmatched_key_fails_the_import(tmp_path):
    src = build_text2earth_replica(tmp_path / "Text2Earth")
    weights = src / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(str(weights)), "class_embedding.linear_3.weight": torch.zeros(2)}, str(weights))
    with pytest.raises(CheckpointError, match=r"1 unmatched: class_embedding\.linear_3\.weight"):
        import_checkpoint("text2earth", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pickled_weights_need_allow_pickle(tmp_path):
    src = build_text2earth_replica(tmp_path / "Text2Earth", safe=False)
    assert (src / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(CheckpointError, match=r"only pickled weights .*--allow-pickle"):
        import_checkpoint("text2earth", src, tmp_path / "out")
    out = import_checkpoint("text2earth", src, tmp_path / "out", allow_pickle=True)  # torch.load(weights_only=True)
    assert not any(p.suffix == ".bin" for p in out.rglob("*"))


def test_the_inpainting_variant_is_refused_by_name(tmp_path):
    src = build_text2earth_replica(tmp_path / "Text2Earth-inpainting")
    config = json.loads((src / "unet" / "config.json").read_text())
    (src / "unet" / "config.json").write_text(json.dumps({**config, "in_channels": 9}))
    with pytest.raises(CheckpointError, match=r"in_channels=9; this looks like Text2Earth-inpainting"):
        import_checkpoint("text2earth", src, tmp_path / "out")
