"""`rsgen model import diffusionsat`: a config-exact tiny replica of a DiffusionSat checkpoint (SatUNet with 7
metadata embeddings, pickled .bin weights) is imported with its metadata weights carried into rsgen's metadata
path, loads, generates through `rsgen txt2img` / `rsgen run`, and its metadata reaches the UNet."""

from __future__ import annotations

import json
import re
import shutil
import zipfile

import pytest
import torch
import yaml
from diffusers.models.embeddings import TimestepEmbedding

from conditions.metadata import Metadata, MetadataError
from conditions.metadata_adapters import to_diffusionsat
from gen.cli import main
from pipelines import RSText2ImagePipeline
from pipelines.bundle import ModelCard
from pipelines.checkpoints import import_checkpoint
from pipelines.checkpoints.common import CheckpointError
from tests.replica_diffusionsat import NAME, STEP, build_diffusionsat_replica

SIZE = 32
MD = Metadata(gsd=0.5, lat=-33.86, lon=151.2, date="2020-02-03", cloud=0.1)


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return build_diffusionsat_replica(tmp_path_factory.mktemp("ds"))


@pytest.fixture(scope="module")
def bundle(replica, tmp_path_factory):
    return import_checkpoint("diffusionsat", replica, tmp_path_factory.mktemp("ds-b") / "ds", allow_pickle=True)


@pytest.fixture(scope="module")
def pipe(bundle):
    pipe = RSText2ImagePipeline.from_bundle(bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _satunet_state(replica):
    return torch.load(replica / f"checkpoint-{STEP}" / "unet" / "diffusion_pytorch_model.bin", weights_only=True)


def test_pickles_are_refused_without_allow_pickle(replica, tmp_path):
    with pytest.raises(CheckpointError, match=r"only pickled weights \(diffusion_pytorch_model\.bin\).*--allow-pickle"):
        import_checkpoint("diffusionsat", replica, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_satunet_weight_lands_in_the_bundle(replica, bundle, pipe):
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert not any(f.endswith((".bin", ".pkl", ".pt", ".py")) for f in files), files
    card = ModelCard.read(bundle)
    assert (card.kind, card.source, card.native_size, card.license) == (
        "diffusionsat", "samar-khanna/DiffusionSat", (512, 512), "apache-2.0")  # fmt: skip
    assert card.metadata == pipe.metadata_encoder.schema() and card.metadata["fields"][:3] == ["lon", "lat", "gsd"]
    assert pipe.unet.config.class_embed_type == "identity"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler" and pipe.scheduler.config.prediction_type == "v_prediction"
    source = _satunet_state(replica)
    merged = {**pipe.unet.state_dict(), **pipe.metadata_encoder.state_dict()}
    assert sorted(merged) == sorted(source)  # nothing dropped, nothing invented
    for key, value in source.items():
        assert torch.equal(merged[key], value), key


def _reference_embedding(replica, unet, values: list[float]) -> torch.Tensor:
    """SatUNet's metadata term computed independently: the UNet's own time_proj, then the 7 raw embeddings."""
    state, channels = _satunet_state(replica), unet.config.block_out_channels[0]
    sinus = unet.time_proj(torch.tensor(values))  # (7, C)
    total = torch.zeros(channels * 4)
    for i in range(7):
        embed = TimestepEmbedding(channels, channels * 4)
        embed.load_state_dict(
            {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith(f"metadata_embedding.{i}.")}
        )
        total = total + embed(sinus[i : i + 1])[0]
    return total


def _run(pipe, metadata, guidance=2.0):
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda _m, _a, kw: seen.append(kw["class_labels"].clone()), with_kwargs=True)  # fmt: skip
    try:
        generator = torch.Generator().manual_seed(5)
        out = pipe("an airport", metadata=metadata, height=SIZE, width=SIZE, num_inference_steps=1,
                   guidance_scale=guidance, output_type="latent", generator=generator).images  # fmt: skip
    finally:
        hook.remove()
    return seen[0], out


def test_metadata_reaches_the_unet_and_the_null_branch_is_all_zero(replica, pipe):
    labels, out = _run(pipe, MD)  # (2, E): [unconditional; conditional]
    with torch.no_grad():
        null = _reference_embedding(replica, pipe.unet, [0.0] * 7)
        cond = _reference_embedding(replica, pipe.unet, to_diffusionsat(MD))
    torch.testing.assert_close(labels[0], null, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(labels[1], cond, rtol=1e-4, atol=1e-5)
    moved = Metadata(gsd=0.5, lat=48.85, lon=2.35, date="2020-02-03", cloud=0.1)
    moved_labels, moved_out = _run(pipe, moved)
    torch.testing.assert_close(moved_labels[0], labels[0])  # the null branch does not depend on the metadata
    assert not torch.allclose(moved_labels[1], labels[1]) and not torch.allclose(moved_out, out)
    prepared = pipe.metadata_encoder.prepare([None, MD])
    assert prepared.values[0].abs().sum() == 0 and prepared.values[1].tolist() == pytest.approx(to_diffusionsat(MD))


def test_a_sensor_is_refused(pipe):
    with pytest.raises(MetadataError, match=r"metadata.sensor='aerial': DiffusionSat has no sensor input"):
        pipe("an airport", metadata=Metadata(gsd=0.5, sensor="aerial"), height=SIZE, width=SIZE, num_inference_steps=1)


def test_cli_import_from_the_zip_then_txt2img_and_run(replica, tmp_path):
    archive = tmp_path / f"{NAME}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(replica.rglob("*")):
            zf.write(path, path.relative_to(replica.parent).as_posix())
    dest = tmp_path / "ds"
    assert main(["model", "import", "diffusionsat", str(archive), str(dest), "--allow-pickle"]) == 0
    assert not any(p.name.startswith(".rsgen-extract-") for p in tmp_path.iterdir())  # extraction cleaned up
    flags = ["--prompt", "an airport", "--gsd", "0.5", "--lat", "-33.86", "--lon", "151.2", "--date", "2020-02-03",
             "--height", str(SIZE), "--width", str(SIZE), "--steps", "1", "--threads", "1"]  # fmt: skip
    assert main(["txt2img", "--model", str(dest), *flags, "--out", str(tmp_path / "cli")]) == 0
    assert json.loads((tmp_path / "cli" / "00000000.json").read_text())["metadata"]["lat"] == -33.86
    spec = {"task": "txt2img", "model": str(dest), "prompt": ["an airport"], "gsd": 0.5, "lat": -33.86, "lon": 151.2,
            "date": "2020-02-03", "height": SIZE, "width": SIZE, "steps": 1, "threads": 1}  # fmt: skip
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "job.yaml"), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "cli" / "00000000.png").read_bytes() == (tmp_path / "run" / "00000000.png").read_bytes()


@pytest.mark.parametrize(
    "key", ["metadata_embedding.7.linear_1.weight", "time_embedding.cond_proj.weight"], ids=["md8", "backbone"]
)
def test_unmatched_key_fails_the_import(key, tmp_path):
    src = build_diffusionsat_replica(tmp_path, extra={key: torch.zeros(2)})
    with pytest.raises(CheckpointError, match="1 unmatched: " + re.escape(key)):
        import_checkpoint("diffusionsat", src, tmp_path / "out", allow_pickle=True)
    assert not (tmp_path / "out").exists()


def test_a_stock_unet_is_not_taken_for_a_satunet(replica, tmp_path):
    src = shutil.copytree(replica, tmp_path / NAME)
    config_file = src / f"checkpoint-{STEP}" / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(CheckpointError, match=r"not 'SatUNet': this UNet has no DiffusionSat metadata embedding"):
        import_checkpoint("diffusionsat", src, tmp_path / "out", allow_pickle=True)
