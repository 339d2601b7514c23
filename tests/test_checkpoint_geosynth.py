"""`rsgen model import geosynth`: a config-exact tiny replica of GeoSynth-OSM + SD-2.1-base, imported, loaded and
run through `rsgen generate --vectors`, with the rendered OSM map reaching the ControlNet."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
import torch
from diffusers import AutoencoderKL, ControlNetModel
from safetensors.torch import load_file, save_file

from conditions.osm_render import osm_control, render_osm
from conditions.vector_layouts import layers_centre, load_layer_rules, rasterize_on, utm_grid_at
from gen.cli import main
from gen.runner import run_job
from gen.spec import build_spec
from gen.tasks.generate import GenerateSpec
from pipelines.checkpoints import CheckpointError, import_checkpoint
from pipelines.checkpoints.geosynth import control_name
from pipelines.controlled import RSControlledPipeline
from tests.conftest import shared_file
from tests.replica_geosynth import build_controlnet, build_replica

GSD, SIZE = 8.0, 32


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return build_replica(tmp_path_factory.mktemp("geosynth") / "hub")  # .../hub/GeoSynth-OSM


@pytest.fixture(scope="module")
def bundle(replica, tmp_path_factory):
    return import_checkpoint("geosynth", replica, tmp_path_factory.mktemp("imported") / "geosynth-osm")


@pytest.fixture(scope="module")
def pipe(bundle):
    pipe = RSControlledPipeline.from_bundle(bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _beside_base(replica, folder):
    """``folder``'s parent gets the replica's SD-2.1-base beside it (a symlink)."""
    (folder.parent / "stable-diffusion-2-1-base").symlink_to(replica.parent / "stable-diffusion-2-1-base")
    return folder


def _layers():
    return [f"buildings:{shared_file('vector/osm_west_oakland/buildings.geojson')}",
            f"roads:{shared_file('vector/osm_west_oakland/roads.geojson')}"]  # fmt: skip


def test_import_writes_a_controlled_bundle_with_the_same_weights(replica, bundle, pipe):
    card = json.loads((bundle / "rsgen_model.json").read_text())
    assert card["kind"] == "geosynth" and card["controls"] == ["osm"] and card["pipeline"] == "RSControlledPipeline"
    assert card["native_size"] == [32, 32] and card["source"].startswith("MVRL/GeoSynth-OSM")
    assert "Apache-2.0" in card["license"]
    index = json.loads((bundle / "model_index.json").read_text())
    assert index["controlnet"] == ["diffusers", "MultiControlNetModel"] and index["scheduler"][1] == "PNDMScheduler"
    assert pipe.control_names == ["osm"] and not pipe.is_inpainting_model
    source = ControlNetModel.from_pretrained(replica)
    for key, value in source.state_dict().items():
        assert torch.equal(pipe.controlnet.nets[0].state_dict()[key], value), key
    # The VAE file's pre-0.14 attention names (query/key/value/proj_attn) are mapped as diffusers maps them.
    old = load_file(str(replica.parent / "stable-diffusion-2-1-base/vae/diffusion_pytorch_model.safetensors"))
    assert "encoder.mid_block.attentions.0.query.weight" in old
    reference = AutoencoderKL.from_pretrained(replica.parent / "stable-diffusion-2-1-base", subfolder="vae")
    for key, value in reference.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[key], value), key


def test_cli_import_of_the_folder_layout_reads_the_control_from_the_readme(replica, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(replica, src / "controlnet")
    (src / "base").symlink_to(replica.parent / "stable-diffusion-2-1-base")
    assert main(["model", "import", "geosynth", str(src), str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "rsgen_model.json").read_text())["controls"] == ["osm"]


def test_variants_and_missing_base(tmp_path):
    for name, control in (("GeoSynth-Canny", "canny"), ("GeoSynth-SAM", "sam")):
        assert control_name(build_controlnet(tmp_path / name, control)) == control
    with pytest.raises(CheckpointError, match="SD-2.1-base pipeline it runs on was not found"):
        import_checkpoint("geosynth", tmp_path / "GeoSynth-SAM", tmp_path / "out")


def test_an_unmatched_key_fails_the_import_by_name(replica, tmp_path):
    src = _beside_base(replica, tmp_path / "GeoSynth-OSM")
    shutil.copytree(replica, src)
    weights = src / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["controlnet_down_blocks.99.weight"] = torch.zeros(1)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"controlnet_down_blocks\.99\.weight"):
        import_checkpoint("geosynth", src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_pickled_weights_need_allow_pickle(replica, tmp_path):
    src = _beside_base(replica, build_controlnet(tmp_path / "GeoSynth-OSM", "osm", pickled=True))
    assert (src / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(CheckpointError, match="allow-pickle"):
        import_checkpoint("geosynth", src, tmp_path / "out")
    out = import_checkpoint("geosynth", src, tmp_path / "out", allow_pickle=True)
    assert (out / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(out.rglob("*.bin"))


def test_generate_from_vectors_on_the_cli(bundle, tmp_path):
    out = tmp_path / "o"
    args = ["generate", "--model", str(bundle), *sum((["--vectors", v] for v in _layers()), []), "--gsd", str(GSD),
            "--size", str(SIZE), "--tile", str(SIZE), "--steps", "1", "--num-samples", "1", "--prompt",
            "Satellite image features a city neighborhood", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    sidecar = json.loads((out / "00000000.json").read_text())
    assert [c["kind"] for c in sidecar["conditions"]] == ["buildings", "roads", "osm"]
    rules = load_layer_rules(_layers())
    lat, lon = layers_centre(rules)
    labels = rasterize_on(rules, utm_grid_at(lat, lon, GSD, SIZE))
    with rasterio.open(out / "00000000_semantic.tif") as src:  # the labels are rsgen's exact masks
        np.testing.assert_array_equal(src.read(1), labels.semantic)
    with rasterio.open(out / "00000000.tif") as src:
        assert src.read().shape == (3, SIZE, SIZE)


def test_the_rendered_map_reaches_the_controlnet(pipe, tmp_path):
    rules = load_layer_rules(_layers())
    lat, lon = layers_centre(rules)
    expected = osm_control(render_osm(rules, utm_grid_at(lat, lon, GSD, SIZE)))  # (1, 3, H, W) in [0, 1]
    seen = []
    hook = pipe.controlnet.nets[0].controlnet_cond_embedding.register_forward_pre_hook(
        lambda _module, args: seen.append(args[0].detach().clone())
    )
    try:
        values = {"model": "unused", "prompt": "city", "vectors": _layers(), "gsd": GSD, "size": SIZE, "tile": SIZE,
                  "num_samples": 1, "steps": 1, "guidance": 7.5}  # fmt: skip
        spec = build_spec(GenerateSpec, values)
        run_job(spec, tmp_path / "job", pipe=pipe)
    finally:
        hook.remove()
    assert len(seen) == 1 and seen[0].shape == (2, 3, SIZE, SIZE)  # conditional + unconditional halves
    for half in seen[0]:
        assert torch.equal(half[None], expected)
    # ... and it matters: another map gives another image from the same noise.
    outputs = [
        pipe("city", controls={"osm": hint}, num_inference_steps=2, guidance_scale=1.0,
             generator=torch.Generator().manual_seed(0),
             output_type="latent").images
        for hint in (expected, torch.ones_like(expected))
    ]  # fmt: skip
    assert (outputs[0] - outputs[1]).abs().mean() > 1e-4
