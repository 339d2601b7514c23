"""Import kind ``sd-inpaint``: a config-exact tiny replica of stabilityai/stable-diffusion-2-inpainting becomes an
RSControlledPipeline bundle without a ControlNet that inpaints (`rsgen inpaint`) and fills hybrid change pairs."""

import json
import logging

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from gen.cli import main
from pipelines.checkpoints import import_checkpoint
from pipelines.checkpoints.common import CheckpointError
from pipelines.conditioning import encode_latents
from pipelines.controlled import RSControlledPipeline
from synth_datasets.change_writer import read_change_pair
from tests.replica_sd_inpaint import levir_crops, write_inpainting_folder

FAST = ["--steps", "1", "--guidance", "1"]


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    """The replica (weights returned for comparison) and its bundle imported with `import_checkpoint`."""
    root = tmp_path_factory.mktemp("sd2inp")
    models = write_inpainting_folder(root / "src")
    dest = import_checkpoint("sd-inpaint", root / "src", root / "bundle")
    return root, models, dest


@pytest.fixture(scope="module")
def levir(tmp_path_factory):
    return levir_crops(tmp_path_factory.mktemp("levir64"))


def test_bundle_layout_card_and_weights(replica):
    root, models, dest = replica
    index = json.loads((dest / "model_index.json").read_text())
    assert index["controlnet"] == [None, None] and index["scheduler"] == ["diffusers", "PNDMScheduler"]
    card = json.loads((dest / "rsgen_model.json").read_text())
    assert card["kind"] == "sd-inpaint" and card["source"] == "stabilityai/stable-diffusion-2-inpainting"
    assert card["inpainting"] and card["controls"] == [] and card["masked_image"] == "diffusers"
    assert card["native_size"] == [64, 64] and card["license"] == "openrail++"  # the replica's 8-latent UNet
    pipe = RSControlledPipeline.from_bundle(dest)
    assert pipe.controlnet is None and pipe.control_names == [] and pipe.is_inpainting_model
    for name in ("unet", "vae"):  # the VAE's diffusers-0.8 attention names were mapped, values unchanged
        mine = getattr(pipe, name).state_dict()
        assert all(torch.equal(mine[k], v) for k, v in models[name].state_dict().items()), name
    text = pipe.text_encoder.state_dict()  # transformers-4 'text_model.' names mapped, position_ids dropped
    assert all(torch.equal(text[k], v) for k, v in models["text_encoder"].state_dict().items())
    with pytest.raises(ValueError, match=r"no ControlNet; it only inpaints: pass image and mask_image"):
        pipe(prompt="x", controls={}, num_inference_steps=1)


def test_unet_sees_the_mask_and_the_diffusers_masked_image(replica, levir):
    _, _, dest = replica
    pipe = RSControlledPipeline.from_bundle(dest)
    pipe.set_progress_bar_config(disable=True)
    with rasterio.open(levir / "A" / "test_2_0000_0000.png") as src:
        image = torch.from_numpy(src.read()).float()[None] / 255.0  # (1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 8:40] = 1.0
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        out = pipe(prompt="aerial view", controls={}, image=image, mask_image=mask, num_inference_steps=1,
                   guidance_scale=1.0, generator=torch.Generator().manual_seed(0), output_type="pt")  # fmt: skip
    finally:
        handle.remove()
    (sample,) = seen  # (1, 9, 8, 8)
    assert torch.equal(sample[:, 4:5], F.interpolate(mask, size=(8, 8)))
    expected = encode_latents(pipe.vae, (image * 2 - 1) * (1 - mask))  # masked pixels 0 in [-1, 1], as SD trained
    assert torch.allclose(sample[:, 5:], expected, atol=1e-5)
    outside = (mask == 0).expand_as(image)
    assert torch.equal(out.images[outside], image[outside])  # bit-identical outside the region


def test_inpaint_and_hybrid_change_pairs_cli(replica, levir, tmp_path, caplog):
    _, _, dest = replica
    name = "test_7_0256_0512.png"
    inpaint = ["inpaint", "--model", str(dest), "--image", str(levir / "A" / name), "--region",
               str(levir / "label" / name), "--prompt", "aerial view of houses", *FAST,
               "--out", str(tmp_path / "inp")]  # fmt: skip
    assert main(inpaint) == 0
    with rasterio.open(levir / "A" / name) as src, rasterio.open(levir / "label" / name) as lab:
        t1, region = np.moveaxis(src.read(), 0, -1), lab.read(1) > 0
    with rasterio.open(tmp_path / "inp" / "00000000.png") as out:
        result = np.moveaxis(out.read(), 0, -1)
    assert np.array_equal(result[~region], t1[~region]) and (result[region] != t1[region]).any()

    caplog.set_level(logging.WARNING)
    pairs = ["change-pairs", "--model", str(dest), "--mode", "hybrid", "--images", str(levir / "A"), "--masks",
             str(levir / "label"), "--palette", "levir", "--change-fraction", "0.05", "-n", "2", *FAST, "--out",
             str(tmp_path / "pairs")]  # fmt: skip
    assert main(pairs) == 0
    assert "has no 'mask' control: hybrid pairs inpaint the changed regions from the prompt alone" in caplog.text
    for index in range(2):
        pair = read_change_pair(tmp_path / "pairs", f"{index:08d}")
        outside = ~pair["change"]
        assert pair["change"].any() and np.array_equal(pair["B"][outside], pair["A"][outside])
    full = ["change-pairs", "--model", str(dest), "--masks", str(levir / "label"), "--palette", "levir", *FAST,
            "--out", str(tmp_path / "full")]  # fmt: skip
    assert main(full) == 2 and "is an inpainting model (9-channel UNet), which needs a real t1 image" in caplog.text


def test_unmatched_keys_are_named_and_pickles_need_allow_pickle(tmp_path, caplog):
    write_inpainting_folder(tmp_path / "src", seed=1)
    unet_file = tmp_path / "src" / "unet" / "diffusion_pytorch_model.safetensors"
    original = load_file(unet_file)
    save_file({**original, "conv_in.lora_up.weight": torch.zeros(2)}, unet_file)
    with pytest.raises(CheckpointError, match=r"unet \(UNet2DConditionModel\).*1 unmatched: conv_in\.lora_up\.weight"):
        import_checkpoint("sd-inpaint", tmp_path / "src", tmp_path / "bad")
    save_file(original, unet_file)
    text_file = tmp_path / "src" / "text_encoder" / "model.safetensors"
    state = load_file(text_file)
    state["text_model.final_layer_norm.gamma"] = state.pop("text_model.final_layer_norm.weight")
    save_file(state, text_file)
    with pytest.raises(
        CheckpointError,
        match=r"missing: text_model\.final_layer_norm\.weight.*unmatched: text_model\.final_layer_norm\.gamma",
    ):
        import_checkpoint("sd-inpaint", tmp_path / "src", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    models = write_inpainting_folder(tmp_path / "pickled", seed=2, pickled=True)
    assert main(["model", "import", "sd-inpaint", str(tmp_path / "pickled"), str(tmp_path / "p1")]) == 2
    assert "--allow-pickle" in caplog.text and not (tmp_path / "p1").exists()
    args = ["model", "import", "sd-inpaint", str(tmp_path / "pickled"), str(tmp_path / "p2"), "--allow-pickle"]
    assert main(args) == 0
    unet = load_file(tmp_path / "p2" / "unet" / "diffusion_pytorch_model.safetensors")  # written as safetensors
    assert all(torch.equal(unet[k], v) for k, v in models["unet"].state_dict().items())
