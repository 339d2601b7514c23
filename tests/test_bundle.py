import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines import BundleError, ModelCard, RSText2ImagePipeline
from pipelines.bundle import check_weight_files, weights_sha256
from pipelines.tiny_bundle import TinyBundleConfig, build_tiny_bundle, build_tiny_pipeline
from pipelines.tiny_tokenizer import build_tiny_clip_tokenizer

COMPONENTS = ("unet", "vae", "text_encoder", "metadata_encoder")


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


def test_round_trip_preserves_every_weight_and_the_card(tmp_path):
    config = TinyBundleConfig(image_size=64, seed=3)
    built = build_tiny_pipeline(config)
    folder = build_tiny_bundle(tmp_path / "b", config)
    loaded = RSText2ImagePipeline.from_bundle(folder)
    for name in COMPONENTS:
        original, restored = getattr(built, name).state_dict(), getattr(loaded, name).state_dict()
        assert original.keys() == restored.keys(), name
        assert all(torch.equal(original[k], restored[k]) for k in original), name
    assert loaded.model_card == built.model_card
    assert loaded.model_card.smoke_test is True
    assert loaded.model_card.metadata == loaded.metadata_encoder.schema()
    assert type(loaded.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert loaded.scheduler.config.algorithm_type == "dpmsolver++"
    text = "sparse residential buildings near a lake"
    assert loaded.tokenizer(text).input_ids == built.tokenizer(text).input_ids
    assert len(loaded.weights_sha256) == 64
    # Same seed, same weights: the bundle build is deterministic.
    again = build_tiny_bundle(tmp_path / "c", config)
    files = check_weight_files(again)
    assert weights_sha256(again, files) == loaded.weights_sha256


def test_tokenizer_has_every_byte_and_no_unknowns():
    tokenizer = build_tiny_clip_tokenizer()
    ids = tokenizer("Ölhafen près de Zürich — 港口").input_ids
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "ölhafenprèsdezürich—港口"
    words = tokenizer.convert_ids_to_tokens(tokenizer("dense residential buildings").input_ids)
    assert words == ["<|startoftext|>", "dense</w>", "residential</w>", "buildings</w>", "<|endoftext|>"]


def test_pickled_weights_are_refused_unless_allowed(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    safetensors = bundle / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(safetensors)
    torch.save(state, bundle / "unet" / "diffusion_pytorch_model.bin")
    safetensors.unlink()
    with pytest.raises(BundleError, match=r"only pickled weights \(diffusion_pytorch_model\.bin\).*allow_pickle=True"):
        RSText2ImagePipeline.from_bundle(bundle)
    pipe = RSText2ImagePipeline.from_bundle(bundle, allow_pickle=True)
    restored = pipe.unet.state_dict()
    assert all(torch.equal(state[k], restored[k]) for k in state)


def test_corrupt_safetensors_is_named(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    weights = bundle / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BundleError, match=r"vae/diffusion_pytorch_model\.safetensors: corrupt or not a safetensors"):
        RSText2ImagePipeline.from_bundle(bundle)


def test_missing_or_bad_model_card(tiny_bundle, tmp_path):
    bundle = _copy(tiny_bundle, tmp_path)
    card = bundle / "rsgen_model.json"
    data = json.loads(card.read_text())
    card.write_text(json.dumps({**data, "resolution": 3}))
    with pytest.raises(BundleError, match=r"unknown key\(s\) \['resolution'\]"):
        RSText2ImagePipeline.from_bundle(bundle)
    card.write_text(json.dumps({**data, "metadata": None}))
    with pytest.raises(ValueError, match=r"disagrees with the metadata_encoder config"):
        RSText2ImagePipeline.from_bundle(bundle)
    for bad, message in (
        ({"layout_strength": 0.5}, r"layout_strength < 1 needs class_colors"),
        ({"layout_strength": 0.0, "class_colors": {"water": [0, 0, 255]}}, r"layout_strength=0\.0: expected in"),
        ({"class_colors": {"water": [0, 300, 0]}}, r"class_colors\['water'\]=\[0, 300, 0\]: expected \[r, g, b\]"),
        ({"sr_strength": 2}, r"sr_strength=2: expected a number in \(0, 1\]"),
    ):
        card.write_text(json.dumps({**data, **bad}))
        with pytest.raises(BundleError, match=message):
            ModelCard.read(bundle)
    card.write_text("{not json")
    with pytest.raises(BundleError, match=r"not valid JSON"):
        ModelCard.read(bundle)
    card.unlink()
    with pytest.raises(BundleError, match=r"rsgen_model\.json not found"):
        RSText2ImagePipeline.from_bundle(bundle)


def test_missing_folder_and_bad_ids(tmp_path):
    with pytest.raises(BundleError, match=r"no such folder, and it is not a hub id"):
        RSText2ImagePipeline.from_bundle(tmp_path / "nope" / "deeper")
    (tmp_path / "file.safetensors").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"is a file; pass the bundle folder"):
        RSText2ImagePipeline.from_bundle(tmp_path / "file.safetensors")


def test_hub_id_without_network_gives_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BundleError, match=r"could not fetch it from the hub.*pass a local bundle folder"):
        RSText2ImagePipeline.from_bundle("rsgen-test/does-not-exist")


def test_init_tiny_refuses_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(BundleError, match=r"exists and is not empty"):
        build_tiny_bundle(tmp_path / "x", TinyBundleConfig(image_size=64))
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
