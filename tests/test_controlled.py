"""Controlled generation (multi-ControlNet), inpainting, and the generate/inpaint jobs on real layouts."""

import json

import numpy as np
import pytest
import rasterio
import torch

from conditions.palettes import CANONICAL
from conditions.vector_layouts import parse_layer_spec
from core.seeding import sample_generators
from gen.cli import main
from gen.runner import run_job
from gen.spec import SpecError, build_spec
from gen.tasks.generate import GenerateSpec
from gen.tasks.inpaint import InpaintSpec
from pipelines.controlled import RSControlledPipeline, feather_weights
from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle
from tests.conftest import shared_file

STEPS = 3


@pytest.fixture(scope="module")
def ctrl_bundle(tmp_path_factory):
    config = TinyControlledBundleConfig(image_size=64, controls=("mask", "canny"))
    return build_tiny_bundle(tmp_path_factory.mktemp("ctrl") / "ctrl", config)


@pytest.fixture(scope="module")
def ctrl_pipe(ctrl_bundle):
    pipe = RSControlledPipeline.from_bundle(ctrl_bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe, controls, n=1, seed=0, **kwargs):
    return pipe("buildings and roads", controls=controls, num_inference_steps=STEPS,
                generator=sample_generators(seed, range(n)), **kwargs).images  # fmt: skip


def test_controls_scales_and_schedules(ctrl_pipe):
    g = torch.Generator().manual_seed(0)
    mask, canny = torch.rand(2, 1, 3, 64, 64, generator=g)
    only_mask = _call(ctrl_pipe, {"mask": mask})
    both = _call(ctrl_pipe, {"mask": mask, "canny": canny})
    assert only_mask.shape == (1, 64, 64, 3) and np.isfinite(only_mask).all()
    assert np.abs(both - only_mask).max() > 1e-3
    assert np.array_equal(_call(ctrl_pipe, {"mask": mask, "canny": canny}, control_scales={"canny": 0.0}), only_mask)
    late = _call(ctrl_pipe, {"mask": mask, "canny": canny}, control_guidance={"canny": (0.5, 1.0)})
    assert 0 < np.abs(late - only_mask).max() < np.abs(both - only_mask).max() + 1e-6
    batch = _call(ctrl_pipe, {"mask": mask.expand(3, -1, -1, -1)}, n=3)
    single = _call(ctrl_pipe, {"mask": mask}, n=1)
    assert np.abs(batch[0] - single[0]).max() < 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"controls": {"depth": torch.rand(1, 3, 64, 64)}},
            r"\['depth'\] not in this model; it was trained with \['mask', 'canny'\]",
        ),
        ({"controls": {}}, r"give at least one of this model's controls"),
        ({"controls": {"mask": torch.rand(1, 3, 60, 64)}}, r"size 60x64 must be a multiple of 16"),
        ({"control_guidance": {"mask": (0.8, 0.2)}}, r"control_guidance\['mask'\]=\(0\.8, 0\.2\)"),
        ({"control_scales": {"canny": 1.0}}, r"'canny' is not among the given controls"),
        ({"image": torch.rand(1, 3, 64, 64)}, r"image and mask_image go together"),
        ({"image": torch.rand(1, 3, 64, 64), "mask_image": torch.full((1, 1, 64, 64), 0.5)}, r"must be binary"),
    ],
)
def test_check_inputs(ctrl_pipe, kwargs, match):
    call = {"prompt": "x", "controls": {"mask": torch.rand(1, 3, 64, 64)}, "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        ctrl_pipe(**call)


def test_feather_weights_stop_at_the_margin():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 10:20, 10:20] = 1
    w = feather_weights(mask, 3)
    assert (w[mask > 0] == 1).all()
    assert (w[..., 7:23, 7:23] > 0).all() and w[..., 6, :].max() == 0 and w[..., :, 23].max() == 0
    assert w[0, 0, 15, 9].item() == pytest.approx(0.75) and w[0, 0, 15, 7].item() == pytest.approx(0.25)
    assert torch.equal(feather_weights(mask, 0), mask)


@pytest.mark.parametrize("feather", [0, 4])
def test_inpainting_keeps_every_outside_pixel_exactly(ctrl_pipe, feather):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 64, 64, generator=g)
    region = torch.zeros(2, 1, 64, 64)
    region[0, :, 8:30, 20:50] = 1
    region[1, :, 40:60, 0:16] = 1
    out = ctrl_pipe("x", controls={"mask": torch.rand(2, 3, 64, 64, generator=g)}, image=image, mask_image=region,
                    feather_px=feather, num_inference_steps=STEPS, generator=sample_generators(0, range(2)),
                    output_type="pt")  # fmt: skip
    outside = (out.blend_weights == 0).expand_as(image)
    assert torch.equal(out.images[outside], image[outside])  # bit-identical
    assert (out.blend_weights > 0).sum() == region.sum() + (
        0 if feather == 0 else out.blend_weights[region == 0].gt(0).sum()
    )
    inside = (region > 0).expand_as(image)
    assert (out.images[inside] - image[inside]).abs().mean() > 0.01


def _image_files(folder):
    """The image files of a job folder (not the label rasters), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".tif") and "_" not in p.stem)


def test_generate_from_real_osm_layout(ctrl_bundle, ctrl_pipe, tmp_path):
    spec = build_spec(GenerateSpec, {
        "model": str(ctrl_bundle), "prompt": "residential blocks",
        "vectors": [f"buildings:{shared_file('vector/osm_west_oakland/buildings.geojson')}",
                    str(shared_file("vector/osm_west_oakland/roads.geojson"))],
        "gsd": 4.0, "size": 64, "num_samples": 2, "batch_size": 2, "steps": STEPS,
    })  # fmt: skip
    summary = run_job(spec, tmp_path / "out", pipe=ctrl_pipe)
    assert summary.written_by_this_process == 2 and summary.num_samples == 2
    assert _image_files(tmp_path / "out") == ["00000000.tif", "00000001.tif"]
    sidecar = json.loads((tmp_path / "out" / "00000000.json").read_text())
    assert sidecar["crs"] == "EPSG:32610" and sidecar["task"] == "generate"
    kinds = [c["kind"] for c in sidecar["conditions"]]
    assert kinds == ["buildings", "roads"] and all(len(c["sha256"]) == 64 for c in sidecar["conditions"])
    with rasterio.open(tmp_path / "out" / "00000000_semantic.tif") as src:
        semantic = src.read(1)
        assert src.crs.to_epsg() == 32610 and src.res == (4.0, 4.0)
    with rasterio.open(tmp_path / "out" / "00000000_instances.tif") as src:
        instances = src.read(1)
    objects = json.loads((tmp_path / "out" / "00000000_objects.json").read_text())
    assert len(objects) == instances.max() >= 3
    building = CANONICAL.class_by_name("building").id
    assert set(np.unique(semantic[instances > 0])) == {building}
    assert (semantic == CANONICAL.class_by_name("road").id).sum() > 50
    for obj in objects:  # boxes are exact: they enclose the instance's pixels
        rows, cols = np.nonzero(instances == obj["instance_id"])
        xmin, ymin, xmax, ymax = obj["bbox"]
        assert xmin - 1 <= cols.min() and cols.max() <= xmax and ymin - 1 <= rows.min() and rows.max() <= ymax


def test_generate_from_real_mask_and_errors(ctrl_bundle, ctrl_pipe, tmp_path, caplog):
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        crop = src.read(1, window=((0, 64), (0, 64)))
    mask = tmp_path / "mask.png"
    with rasterio.open(mask, "w", driver="PNG", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(crop[None])
    spec = build_spec(GenerateSpec, {"model": str(ctrl_bundle), "masks": str(mask), "palette": "loveda",
                                     "steps": STEPS})  # fmt: skip
    run_job(spec, tmp_path / "o", pipe=ctrl_pipe)
    with rasterio.open(tmp_path / "o" / "00000000_semantic.png") as src:
        assert np.array_equal(
            src.read(1), __import__("conditions.palettes").palettes.get_palette("loveda").to_canonical(crop)
        )
    assert not (tmp_path / "o" / "00000000_instances.png").exists()
    with pytest.raises(SpecError, match=r"^palette: masks need their scheme \(e\.g\. loveda"):
        build_spec(GenerateSpec, {"model": str(ctrl_bundle), "masks": str(mask)})
    with pytest.raises(SpecError, match=r"^gsd: vector layouts are rasterised at the ground sample distance: give gsd"):
        build_spec(GenerateSpec, {"model": str(ctrl_bundle), "vectors": ["a.geojson"]})
    with pytest.raises(SpecError, match=r"^--gsd: vector layouts are rasterised"):  # the CLI names the flag
        build_spec(GenerateSpec, {"model": str(ctrl_bundle), "vectors": ["a.geojson"]}, source="cli")
    with pytest.raises(ValueError, match=r"vectors 'lakes:x\.geojson': unknown layer kind 'lakes'"):
        parse_layer_spec("lakes:x.geojson")
    args = [
        "generate",
        "--model",
        str(ctrl_bundle),
        "--masks",
        str(mask),
        "--palette",
        "levir",
        "--out",
        str(tmp_path / "y"),
    ]
    assert main(args) == 2 and "unknown class id(s)" in caplog.text


@pytest.mark.parametrize("bundle", ["ctrl", "prior"])
def test_inpaint_job_on_a_real_image(bundle, request, tmp_path):
    """Also with a card that sets a layout prior: inpainting has no mask control to paint, so it samples
    from noise and records layout_strength 1."""
    model, pipe = request.getfixturevalue(f"{bundle}_bundle"), request.getfixturevalue(f"{bundle}_pipe")
    with rasterio.open(shared_file("change/levir_like/A/test_2_0000_0000.png")) as src:
        rgb = src.read(window=((0, 64), (0, 64)))
    image, region = tmp_path / "a.png", tmp_path / "r.png"
    with rasterio.open(image, "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(rgb)
    hole = np.zeros((1, 64, 64), np.uint8)
    hole[0, 16:40, 24:56] = 255
    with rasterio.open(region, "w", driver="PNG", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(hole)
    spec = build_spec(InpaintSpec, {"model": str(model), "image": str(image), "region": str(region), "feather": 2,
                                    "steps": STEPS})  # fmt: skip
    assert run_job(spec, tmp_path / "o", pipe=pipe).written_by_this_process == 1
    with rasterio.open(tmp_path / "o" / "00000000.png") as src:
        out = src.read()
    far = np.ones((64, 64), bool)
    far[14:42, 22:58] = False  # region grown by the 2-pixel feather
    assert np.array_equal(out[:, far], rgb[:, far])
    assert (out[:, 16:40, 24:56] != rgb[:, 16:40, 24:56]).mean() > 0.5
    sidecar = json.loads((tmp_path / "o" / "00000000.json").read_text())
    assert sidecar["changed_pixels"] == 28 * 36 and sidecar["feather_px"] == 2
    assert sidecar["sampling"]["layout_strength"] == 1.0


def test_scene_that_fits_one_tile_equals_a_single_call(ctrl_pipe):
    from pipelines.controlled.scene import decode_scene, scene_latents

    mask = (torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    single = ctrl_pipe("x", controls={"mask": mask.float() / 255}, num_inference_steps=STEPS,
                       generator=sample_generators(0, [0]), output_type="pt").images[0]  # fmt: skip
    latents = scene_latents(ctrl_pipe, "x", {"mask": mask}, tile=64, overlap=16, num_inference_steps=STEPS,
                            generator=sample_generators(0, [0])[0])  # fmt: skip
    rows = []
    decode_scene(ctrl_pipe, latents, tile=64, overlap=16, write=lambda r, v, off: rows.append((off, r)))
    assert [off for off, _ in rows] == [0]
    assert torch.equal(torch.from_numpy(rows[0][1]), single)


def test_large_scene_from_real_osm_layout(ctrl_bundle, ctrl_pipe, tmp_path):
    spec = build_spec(GenerateSpec, {
        "model": str(ctrl_bundle), "prompt": "neighbourhood",
        "vectors": [f"buildings:{shared_file('vector/osm_west_oakland/buildings.geojson')}",
                    f"roads:{shared_file('vector/osm_west_oakland/roads.geojson')}"],
        "gsd": 2.0, "size": 192, "tile": 64, "overlap": 16, "steps": 2,
    })  # fmt: skip
    run_job(spec, tmp_path / "scene", pipe=ctrl_pipe)
    assert _image_files(tmp_path / "scene") == ["00000000.tif"]
    path = tmp_path / "scene" / "00000000.tif"
    sidecar = json.loads((tmp_path / "scene" / "00000000.json").read_text())
    with rasterio.open(path) as src, rasterio.open(tmp_path / "scene" / "00000000_semantic.tif") as sem:
        assert (src.width, src.height, src.count) == (192, 192, 3) and src.res == (2.0, 2.0)
        assert src.crs == sem.crs and src.transform == sem.transform and src.crs.to_epsg() == 32610
        image = src.read()
        assert list(src.bounds) == pytest.approx(sidecar["bounds"])
    assert sidecar["scene"] == {"tile": 64, "overlap": 16, "height": 192, "width": 192}
    assert image.std() > 0 and sidecar["sha256"] and sidecar["labels"]["objects"]["count"]


def test_polygon_attribute_rules_in_a_job(ctrl_bundle, ctrl_pipe, tmp_path):
    lon, lat = -122.300, 37.8076
    square = [[lon, lat], [lon + 0.0004, lat], [lon + 0.0004, lat + 0.0004], [lon, lat + 0.0004], [lon, lat]]
    features = [{"type": "Feature", "properties": {"natural": "water"},
                 "geometry": {"type": "Polygon", "coordinates": [square]}}]  # fmt: skip
    path = tmp_path / "lake.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    spec = build_spec(GenerateSpec, {"model": str(ctrl_bundle), "vectors": [f"polygons:{path}"], "steps": 1,
                                     "polygon_class": ["natural=water:water"], "gsd": 1.0, "size": 64})  # fmt: skip
    run_job(spec, tmp_path / "o", pipe=ctrl_pipe)
    with rasterio.open(tmp_path / "o" / "00000000_semantic.tif") as src:
        water = (src.read(1) == CANONICAL.class_by_name("water").id).sum()
    assert abs(water - 35.2 * 44.4) < 0.1 * 35.2 * 44.4  # ~0.0004 deg lon x lat at 37.8 N, 1 m pixels
    no_rules = build_spec(GenerateSpec, {"model": str(ctrl_bundle), "vectors": [f"polygons:{path}"], "gsd": 1.0})
    with pytest.raises(
        ValueError, match=r"vectors: 'polygons:[^']*lake\.geojson': polygons need a class \(polygons=water:PATH\)"
    ):
        run_job(no_rules, tmp_path / "p", pipe=ctrl_pipe)
    assert not (tmp_path / "p").exists()  # the layers are read before the folder is claimed


def _cli(args, caplog, capsys):
    """(exit code, messages) of ``rsgen ARGS``: spec and domain errors are logged and return 2; a value that
    a flag's own parser rejects (e.g. ``--control-scale canny=abc``) is an argparse error: SystemExit(2), on stderr."""
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    return code, caplog.text + capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "0"], "--size: expected an integer >= 8, got 0"),
        (["--size", "60"], "--size: 60: must be a multiple of 16 for this model"),
        (["--control-scale", "canny=abc"], "argument --control-scale: 'canny=abc': bad value 'abc', e.g. canny=0.5"),
        (
            ["--control-scale", "canny=0.5"],
            "--control-scale: canny=...: no such control in this job (controls: ['mask'])",
        ),
        (
            ["--control-guidance", "mask=0.8:0.2"],
            "--control-guidance: mask: expected [START, END] with 0 <= START < END <= 1, got [0.8, 0.2]",
        ),
    ],
)
def test_generate_cli_errors_name_the_option(ctrl_bundle, tmp_path, caplog, capsys, extra, message):
    layout = str(shared_file("vector/osm_west_oakland/buildings.geojson"))
    args = ["generate", "--model", str(ctrl_bundle), "--vectors", layout, "--gsd", "2", "--out", str(tmp_path / "o")]
    code, text = _cli([*args, *extra], caplog, capsys)
    assert code == 2
    assert message in text
    assert not (tmp_path / "o").exists()


def test_inpainting_unet_bundle(tmp_path):
    config = TinyControlledBundleConfig(image_size=64, controls=("mask",), inpainting=True)
    pipe = RSControlledPipeline.from_bundle(build_tiny_bundle(tmp_path / "inp", config))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.is_inpainting_model and pipe.unet.config.in_channels == 9 and pipe.model_card.inpainting
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    region = torch.zeros(1, 1, 64, 64)
    region[..., 20:44, 8:40] = 1
    control = {"mask": torch.rand(1, 3, 64, 64)}
    out = pipe("x", controls=control, image=image, mask_image=region, num_inference_steps=STEPS,
               generator=sample_generators(0, [0]), output_type="pt")  # fmt: skip
    keep = (region == 0).expand_as(image)
    assert torch.equal(out.images[keep], image[keep])
    assert (out.images[~keep] - image[~keep]).abs().mean() > 0.01
    with pytest.raises(ValueError, match=r"this is an inpainting model \(9-channel UNet\)"):
        pipe("x", controls=control, num_inference_steps=1)


def test_guidance_over_controls(ctrl_pipe):
    """guide_controls: the unconditional branch runs without ControlNets, so guidance amplifies the control;
    without guidance (scale 1) there is no unconditional branch and nothing changes."""
    cond = {"mask": torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))}
    plain_g = _call(ctrl_pipe, cond, guidance_scale=3.0)
    plain_1 = _call(ctrl_pipe, cond, guidance_scale=1.0)
    ctrl_pipe.guide_controls = True
    try:
        guided_g = _call(ctrl_pipe, cond, guidance_scale=3.0)
        guided_1 = _call(ctrl_pipe, cond, guidance_scale=1.0)
    finally:
        ctrl_pipe.guide_controls = False
    assert np.isfinite(guided_g).all() and guided_g.shape == plain_g.shape
    np.testing.assert_array_equal(guided_1, plain_1)
    assert np.abs(guided_g - plain_g).max() > 1e-3


@pytest.fixture(scope="module")
def prior_bundle(ctrl_bundle, tmp_path_factory):
    """The tiny controlled bundle with class colours (and a default layout strength) in its card."""
    import shutil

    folder = tmp_path_factory.mktemp("prior") / "ctrl"
    shutil.copytree(ctrl_bundle, folder)
    card = json.loads((folder / "rsgen_model.json").read_text())
    card["class_colors"] = {"building": [200.0, 60.0, 40.0], "water": [20.0, 40.0, 120.0], "tree": [30.0, 90.0, 30.0]}
    card["layout_strength"] = 0.5
    (folder / "rsgen_model.json").write_text(json.dumps(card))
    return folder


@pytest.fixture(scope="module")
def prior_pipe(prior_bundle):
    pipe = RSControlledPipeline.from_bundle(prior_bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _layout() -> torch.Tensor:
    """(1, 3, 64, 64) canonical colour mask: building top-left, water right half, road bottom-left."""
    ids = np.full((64, 64), CANONICAL.class_by_name("road").id, np.uint8)
    ids[:32, :32] = CANONICAL.class_by_name("building").id
    ids[:, 32:] = CANONICAL.class_by_name("water").id
    return torch.from_numpy(CANONICAL.colorize(ids)).permute(2, 0, 1)[None].float() / 255  # (1, 3, 64, 64)


def test_paint_layout_fills_each_class_with_its_card_colour(prior_pipe):
    painted = prior_pipe.paint_layout(_layout())[0] * 255  # (3, 64, 64)
    assert torch.allclose(painted[:, :32, :32], torch.tensor([200.0, 60.0, 40.0]).view(3, 1, 1), atol=1e-3)
    assert torch.allclose(painted[:, :, 32:], torch.tensor([20.0, 40.0, 120.0]).view(3, 1, 1), atol=1e-3)
    mean = torch.tensor([250.0, 190.0, 190.0]) / 3  # road is not in the card: the mean of its colours
    assert torch.allclose(painted[:, 32:, :32], mean.view(3, 1, 1), atol=1e-3)
    assert torch.equal(prior_pipe.paint_layout((_layout() * 255).round().to(torch.uint8)), painted[None] / 255)


def test_layout_strength_starts_from_the_painted_mask(prior_pipe, ctrl_pipe):
    """The card's layout_strength is the default; it is deterministic, differs from sampling from noise,
    and ends closer to the painted mask's latent the lower it is (random weights: checked in latent space)."""
    run = lambda **kw: prior_pipe("x", controls={"mask": _layout()}, num_inference_steps=10,  # noqa: E731
                                  generator=sample_generators(0, [0]), output_type="latent", **kw).images  # fmt: skip
    default, half, free = run(), run(layout_strength=0.5), run(layout_strength=1.0)
    assert torch.equal(default, half) and not torch.allclose(half, free)
    painted = prior_pipe.encode_image(prior_pipe.paint_layout(_layout()))  # (1, C, 8, 8)
    distance = [float((x - painted).abs().mean()) for x in (free, half, run(layout_strength=0.1))]
    assert distance[2] < distance[1] < distance[0]
    with pytest.raises(ValueError, match=r"layout_strength=0\.5: this model's card has no class_colors"):
        ctrl_pipe("x", controls={"mask": _layout()}, num_inference_steps=2, layout_strength=0.5)
    with pytest.raises(ValueError, match=r"layout_strength < 1 paints the 'mask' control"):
        prior_pipe("x", controls={"canny": _layout()}, num_inference_steps=2, layout_strength=0.5)
    # The card's default applies only where there is a mask to paint: an edge control alone samples as before.
    edges = prior_pipe("x", controls={"canny": _layout()}, num_inference_steps=2, generator=sample_generators(0, [0]))
    assert np.array_equal(
        edges.images,
        prior_pipe(
            "x",
            controls={"canny": _layout()},
            num_inference_steps=2,
            generator=sample_generators(0, [0]),
            layout_strength=1.0,
        ).images,
    )
    with pytest.raises(ValueError, match=r"layout_strength=0: expected a number in \(0, 1\]"):
        prior_pipe("x", controls={"mask": _layout()}, num_inference_steps=2, layout_strength=0)
    with pytest.raises(ValueError, match=r"layout_strength=0\.5 × num_inference_steps=1 runs no denoising step"):
        prior_pipe("x", controls={"mask": _layout()}, num_inference_steps=1)


def test_layout_prior_inpainting_keeps_every_outside_pixel(prior_pipe):
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    region = torch.zeros(1, 1, 64, 64)
    region[..., 8:40, 16:48] = 1
    out = prior_pipe("x", controls={"mask": _layout()}, image=image, mask_image=region, num_inference_steps=4,
                     generator=sample_generators(0, [0]), output_type="pt")  # fmt: skip
    outside = (region == 0).expand_as(image)
    assert torch.equal(out.images[outside], image[outside])
    assert (out.images[~outside] - image[~outside]).abs().mean() > 0.01


def test_layout_strength_in_jobs_is_applied_and_recorded(prior_bundle, ctrl_bundle, tmp_path, caplog):
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        crop = src.read(1, window=((0, 64), (0, 64)))
    mask = tmp_path / "mask.png"
    with rasterio.open(mask, "w", driver="PNG", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(crop[None])
    images = {}
    for name, strength in (("card", None), ("off", 1.0)):
        spec = build_spec(GenerateSpec, {"model": str(prior_bundle), "masks": str(mask), "palette": "loveda",
                                         "steps": 4, "layout_strength": strength})  # fmt: skip
        # No pipe=: a job's layout_strength becomes the default of the pipeline it runs on (load_model), so
        # each job loads its own copy rather than changing the module's prior_pipe for the tests after it.
        run_job(spec, tmp_path / name)
        record = json.loads((tmp_path / name / "00000000.json").read_text())
        assert record["sampling"]["layout_strength"] == (0.5 if strength is None else 1.0)
        with rasterio.open(tmp_path / name / "00000000.png") as src:
            images[name] = src.read()
    assert not np.array_equal(images["card"], images["off"])
    args = ["generate", "--model", str(ctrl_bundle), "--masks", str(mask), "--palette", "loveda",
            "--layout-strength", "0.6", "--out", str(tmp_path / "z")]  # fmt: skip
    assert main(args) == 2 and "--layout-strength: 0.6: this model's card has no class_colors" in caplog.text


def test_scene_with_layout_prior_that_fits_one_tile_equals_a_single_call(prior_pipe):
    from pipelines.controlled.scene import decode_scene, scene_latents

    mask = (_layout() * 255).round().to(torch.uint8)  # (1, 3, 64, 64)
    single = prior_pipe("x", controls={"mask": mask.float() / 255}, num_inference_steps=4,
                        generator=sample_generators(0, [0]), output_type="pt").images[0]  # fmt: skip
    latents = scene_latents(prior_pipe, "x", {"mask": mask}, tile=64, overlap=16, num_inference_steps=4,
                            generator=sample_generators(0, [0])[0])  # fmt: skip
    rows = []
    decode_scene(prior_pipe, latents, tile=64, overlap=16, write=lambda r, v, off: rows.append((off, r)))
    assert torch.equal(torch.from_numpy(rows[0][1]), single)
    free = scene_latents(prior_pipe, "x", {"mask": mask}, tile=64, overlap=16, num_inference_steps=4,
                         generator=sample_generators(0, [0])[0], layout_strength=1.0)  # fmt: skip
    assert not torch.allclose(free, latents)
