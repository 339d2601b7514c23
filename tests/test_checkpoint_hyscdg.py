"""Import kind ``hyscdg``: a config-exact tiny replica of the Yanis236/HySCDG snapshot (SD-2 inpainting + FLAIR
label-map ControlNet) becomes an RSControlledPipeline bundle whose soft masks reach the UNet as given, whose
ControlNet sees FLAIR colours and the 4-channel latent, and which makes hybrid change pairs from the CLI."""

import json

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from conditions.palettes import PALETTES
from gen.cli import main
from gen.tasks.change_pairs import synthesise
from pipelines.checkpoints import import_checkpoint
from pipelines.checkpoints.common import CheckpointError
from pipelines.conditioning import encode_latents
from pipelines.controlled import RSControlledPipeline
from synth_datasets.change_writer import read_change_pair
from tests.replica_hyscdg import write_hyscdg_snapshot
from tests.replica_sd_inpaint import levir_crops

FLAIR_COLOURS = {c.color for c in PALETTES["flair"].classes}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("hyscdg")
    models = write_hyscdg_snapshot(root / "snapshot")
    dest = import_checkpoint("hyscdg", root / "snapshot", root / "bundle")
    pipe = RSControlledPipeline.from_bundle(dest)
    pipe.set_progress_bar_config(disable=True)
    return dest, models, pipe


@pytest.fixture(scope="module")
def levir(tmp_path_factory):
    return levir_crops(tmp_path_factory.mktemp("levir64"))


def _t1(levir, name="test_2_0000_0000.png"):
    with rasterio.open(levir / "A" / name) as src:
        return torch.from_numpy(src.read()).float()[None] / 255.0  # (1, 3, 64, 64)


def test_card_and_weights(bundle):
    dest, models, pipe = bundle
    card = json.loads((dest / "rsgen_model.json").read_text())
    assert card["kind"] == "hyscdg" and card["source"] == "Yanis236/HySCDG" and card["controls"] == ["mask"]
    assert card["soft_mask"] and card["masked_image"] == "diffusers" and card["palette"]["name"] == "flair"
    assert card["gsd_range"] == [0.2, 0.2] and card["inpainting"] and card["license"].startswith("unknown")
    assert pipe.soft_mask and pipe.control_names == ["mask"] and pipe.control_nets[0].config.in_channels == 4
    for name, module in (("unet", pipe.unet), ("controlnet", pipe.control_nets[0])):
        mine = module.state_dict()
        assert all(torch.equal(mine[k], v) for k, v in models[name].state_dict().items()), name


def test_soft_mask_reaches_the_unet_unbinarised(bundle, levir):
    _, _, pipe = bundle
    image = _t1(levir)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 0:32, 0:32] = 0.25
    mask[..., 32:64, 16:48] = 1.0
    label = torch.zeros(1, 3, 64, 64)
    label[:, :, 32:, 16:48] = torch.tensor([219, 14, 154]).view(1, 3, 1, 1) / 255  # FLAIR building
    unet_in, net_in = [], []
    net = pipe.control_nets[0]
    hooks = [pipe.unet.register_forward_pre_hook(lambda m, args: unet_in.append(args[0].clone())),
             net.register_forward_pre_hook(lambda m, args: net_in.append(args[0].clone()))]  # fmt: skip
    try:
        out = pipe(prompt="aerial view of building", controls={"mask": label}, image=image, mask_image=mask,
                   num_inference_steps=1, guidance_scale=1.0, generator=torch.Generator().manual_seed(0),
                   output_type="pt")  # fmt: skip
    finally:
        for hook in hooks:
            hook.remove()
    (sample,), (latent,) = unet_in, net_in
    assert torch.equal(sample[:, 4:5], F.interpolate(mask, size=(8, 8))) and (sample[:, 4] == 0.25).any()
    expected = encode_latents(pipe.vae, (image * 2 - 1) * (1 - mask))  # image x (1 - mask), not thresholded
    assert torch.allclose(sample[:, 5:], expected, atol=1e-5)
    assert latent.shape[1] == 4 and torch.equal(latent, sample[:, :4])  # the ControlNet sees the latent only
    assert torch.equal(out.blend_weights, mask)  # cross-faded by the soft value
    outside = (mask == 0).expand_as(image)
    assert torch.equal(out.images[outside], image[outside])
    with pytest.raises(ValueError, match=r"soft mask takes values in \[0, 1\]"):
        pipe(prompt="x", controls={"mask": label}, image=image, mask_image=mask * 2, num_inference_steps=1)


def test_change_pairs_colour_the_mask_control_in_flair(bundle, levir):
    _, _, pipe = bundle
    image = (_t1(levir)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    semantic = np.zeros((64, 64), np.uint8)  # canonical background
    semantic[10:30, 10:40] = 1  # building
    region = np.zeros((64, 64), bool)
    region[8:32, 8:42] = True
    seen, noise = [], []
    hooks = [pipe.control_nets[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["controlnet_cond"].clone()), with_kwargs=True),
        pipe.unet.register_forward_hook(lambda m, args, out: noise.append(out.sample.clone()))]  # fmt: skip
    common = {"prompt": "aerial view", "num_inference_steps": 1, "guidance_scale": 1.0, "output_type": "pt"}
    try:
        building = synthesise(pipe, semantic, 3, common, image, region)
        semantic[10:30, 10:40] = 4  # water instead: a different label map changes the UNet's prediction
        water = synthesise(pipe, semantic, 3, common, image, region)
        semantic[10:30, 10:40] = 1
        synthesise(pipe, semantic, 3, common, image, region)  # the building map again: the same prediction
    finally:
        for hook in hooks:
            hook.remove()
    colours = {tuple(c) for c in (seen[0][0].permute(1, 2, 0) * 255).round().int().reshape(-1, 3).tolist()}
    assert colours == {(219, 14, 154), (0, 0, 0)} and colours <= FLAIR_COLOURS  # building, FLAIR 'other'
    assert (seen[1][0, :, 15, 15] * 255).round().tolist() == [21, 83, 174]  # FLAIR water
    assert torch.equal(noise[0], noise[2]) and (noise[0] - noise[1]).abs().max() > 1e-4  # the map reaches the UNet
    assert np.array_equal(building[~region], image[~region]) and np.array_equal(water[~region], image[~region])


def test_hybrid_change_pairs_cli_keeps_t1_outside_the_change(bundle, levir, tmp_path):
    dest, _, _ = bundle
    args = ["change-pairs", "--model", str(dest), "--mode", "hybrid", "--images", str(levir / "A"), "--masks",
            str(levir / "label"), "--palette", "levir", "--change-fraction", "0.05", "-n", "2", "--steps", "1",
            "--guidance", "1", "--out", str(tmp_path / "pairs")]  # fmt: skip
    assert main(args) == 0
    for index, name in enumerate(["test_2_0000_0000.png", "test_7_0256_0512.png"]):
        pair = read_change_pair(tmp_path / "pairs", f"{index:08d}")
        with rasterio.open(levir / "A" / name) as src:
            t1 = np.moveaxis(src.read(), 0, -1)
        outside = ~pair["change"]
        assert np.array_equal(pair["A"], t1) and np.array_equal(pair["B"][outside], t1[outside])
        assert pair["change"].any() and (pair["B"][pair["change"]] != t1[pair["change"]]).any()


def test_import_errors_and_pickles(tmp_path, caplog):
    write_hyscdg_snapshot(tmp_path / "snap", seed=1)
    net_file = tmp_path / "snap" / "HySCDG_ControlNet" / "diffusion_pytorch_model.safetensors"
    save_file({**load_file(net_file), "controlnet_cond_embedding.extra.weight": torch.zeros(3)}, net_file)
    with pytest.raises(
        CheckpointError, match=r"HySCDG_ControlNet \(ControlNetModel\).*controlnet_cond_embedding\.extra"
    ):
        import_checkpoint("hyscdg", tmp_path / "snap", tmp_path / "bad")
    with pytest.raises(
        CheckpointError, match=r"no HySCDG_Inpainting or HySCDG_ControlNet folder; pass the snapshot of Yanis236/HySCDG"
    ):
        import_checkpoint("hyscdg", tmp_path / "snap" / "HySCDG_Inpainting", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    models = write_hyscdg_snapshot(tmp_path / "pickled", seed=2, pickled=True)
    assert main(["model", "import", "hyscdg", str(tmp_path / "pickled"), str(tmp_path / "p1")]) == 2
    assert "--allow-pickle" in caplog.text and not (tmp_path / "p1").exists()
    assert main(["model", "import", "hyscdg", str(tmp_path / "pickled"), str(tmp_path / "p2"), "--allow-pickle"]) == 0
    net = load_file(tmp_path / "p2" / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(net[k], v) for k, v in models["controlnet"].state_dict().items())
