"""The checkpoint import framework: safe weight reading, every key matched or named, atomic bundles, and the
errors of `rsgen model import` and `--model hub:` (the kinds themselves are tested in test_checkpoint_*.py)."""

import pytest
import torch
from diffusers import AutoencoderKL

from gen.cli import main
from pipelines.bundle import resolve_bundle
from pipelines.checkpoints import import_checkpoint, import_from_hub, importer
from pipelines.checkpoints.common import CheckpointError, check_keys, load_exact, read_weights


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=4)  # fmt: skip


def test_pickled_weights_are_refused_unless_allowed(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae", safe_serialization=False)  # diffusion_pytorch_model.bin only
    with pytest.raises(CheckpointError, match=r"only pickled weights \(diffusion_pytorch_model\.bin\).*--allow-pickle"):
        read_weights(tmp_path / "vae", allow_pickle=False)
    loaded = load_exact(AutoencoderKL, tmp_path / "vae", allow_pickle=True)  # torch.load(weights_only=True)
    for name, value in vae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_every_key_must_match_and_is_named(tmp_path):
    vae = _tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    state = read_weights(tmp_path / "vae", allow_pickle=False)
    extra = {**state, "encoder.metadata_embedding.0.weight": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"1 unmatched: encoder\.metadata_embedding\.0\.weight"):
        load_exact(AutoencoderKL, tmp_path / "vae", allow_pickle=False, state=extra)
    with pytest.raises(CheckpointError, match=r"1 missing: decoder\.conv_out\.bias"):
        load_exact(AutoencoderKL, tmp_path / "vae", allow_pickle=False,
                   state={k: v for k, v in state.items() if k != "decoder.conv_out.bias"})  # fmt: skip
    renamed = load_exact(AutoencoderKL, tmp_path / "vae", allow_pickle=False,
                         state={"old." + k: v for k, v in state.items()}, rename=lambda k: k[4:])  # fmt: skip
    assert torch.equal(renamed.decoder.conv_out.bias, vae.decoder.conv_out.bias)
    wrong = {**state, "decoder.conv_out.bias": torch.zeros(7)}
    with pytest.raises(CheckpointError, match=r"vae \(AutoencoderKL\): Error\(s\) in loading state_dict|size"):
        load_exact(AutoencoderKL, tmp_path / "vae", allow_pickle=False, state=wrong)
    keys = [f"k{i}" for i in range(20)]
    with pytest.raises(CheckpointError, match=r"20 missing: k0, k1, .* and 8 more"):
        check_keys("unet", keys, [])


def test_import_errors_name_the_argument(tmp_path, caplog):
    with pytest.raises(CheckpointError, match=r"kind='ldm': expected one of hyscdg, text2earth, geosynth"):
        importer("ldm")
    with pytest.raises(CheckpointError, match=r"SRC='.*nowhere': no such file or folder"):
        import_checkpoint("sd-inpaint", tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"DEST='.*out' exists and is not empty; pass --overwrite"):
        import_checkpoint("sd-inpaint", tmp_path, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    assert main(["model", "import", "sd-inpaint", str(tmp_path / "nowhere"), str(tmp_path / "o2")]) == 2
    assert "SRC=" in caplog.text and not (tmp_path / "o2").exists()


def test_hub_models_that_rsgen_cannot_import_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RSGEN_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"--model hub:someone/sd-remix: not a checkpoint rsgen knows"):
        resolve_bundle("hub:someone/sd-remix")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the download fails with the way out
    with pytest.raises(CheckpointError, match=r"hub:lcybuaa/Text2Earth: could not download it .*rsgen model import"):
        import_from_hub("lcybuaa/Text2Earth")
    assert not (tmp_path / "imported" / "lcybuaa--Text2Earth").exists()


def test_hub_import_puts_a_controlnet_beside_its_base(tmp_path, monkeypatch):
    """`--model hub:MVRL/GeoSynth-OSM` downloads the ControlNet and the SD-2.1 base it runs on and imports them in
    the layout `rsgen model import geosynth` expects, once (the downloads are replaced by local replica folders:
    no network here; the replicas are real tiny models)."""
    import pipelines.checkpoints as checkpoints
    from pipelines.bundle import ModelCard
    from tests.replica_geosynth import build_base, build_controlnet

    snapshots = {"MVRL/GeoSynth-OSM": build_controlnet(tmp_path / "snap" / "c", "osm"),
                 "stabilityai/stable-diffusion-2-1-base": build_base(tmp_path / "snap" / "b")}  # fmt: skip
    calls = []

    def download(repo, allow_pickle):
        calls.append(repo)
        return snapshots[repo]

    monkeypatch.setattr(checkpoints, "_download", download)
    monkeypatch.setenv("RSGEN_CACHE", str(tmp_path / "cache"))
    bundle = resolve_bundle("hub:MVRL/GeoSynth-OSM")
    assert bundle == tmp_path / "cache" / "imported" / "MVRL--GeoSynth-OSM"
    card = ModelCard.read(bundle)
    assert card.kind == "geosynth" and card.controls == ["osm"]
    assert calls == ["MVRL/GeoSynth-OSM", "stabilityai/stable-diffusion-2-1-base"]
    assert resolve_bundle("hub:MVRL/GeoSynth-OSM") == bundle and len(calls) == 2  # imported once
