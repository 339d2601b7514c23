"""Exemplar synthesis: real bank objects and real texture in the changed pixels, labels exact by construction."""

import math

import cv2
import numpy as np
import pytest
import rasterio
import torch
from rasterio import features
from shapely.geometry import shape

from conditions.change_events import ChangeConfig, simulate_change
from conditions.exemplar_synthesis import (
    COPY_PASTE,
    TEXTURE_SOURCES,
    ExemplarFootprints,
    ExemplarSynthesis,
    image_patch,
    long_axis_angle,
    poisson_paste,
    warp_object,
)
from conditions.object_bank import ObjectBank, build_bank
from conditions.palettes import CANONICAL, get_palette
from gen.runner import run_job
from gen.spec import FieldError, SpecError, build_spec
from gen.tasks.change_pairs import ChangePairsSpec
from gen.tasks.time_series import TimeSeriesSpec
from synth_datasets.change_writer import read_change_pair
from synth_datasets.sequence_writer import read_sequence
from tests.conftest import LEVIR_T1_NAMES, shared_file

NAMES = LEVIR_T1_NAMES


@pytest.fixture(scope="module")
def bank_file(tmp_path_factory):
    """A bank of the real buildings of the two 1024² LEVIR-CD tiles (t2 images, change labels as building masks)."""
    tiles = shared_file("change/levir_cd_1024")
    path = tmp_path_factory.mktemp("bank") / "levir.safetensors"
    build_bank(tiles / "B", tiles / "label", "levir", gsd=0.5).save(path)
    return path


def _pairs(ctrl, levir_t1, bank_file, out, synthesis, **keys):
    model, pipe = ctrl
    spec = {"model": str(model), "mode": "hybrid", "images": str(levir_t1 / "A"), "masks": str(levir_t1 / "label"),
            "palette": "levir", "gsd": 0.5, "num_samples": 2, "steps": 2,
            "events": {"add_building": 0.7, "remove_building": 0.3}, "synthesis": synthesis, **keys}  # fmt: skip
    if synthesis != "diffusion":
        spec["bank"] = str(bank_file)
    run_job(build_spec(ChangePairsSpec, spec), out, pipe=pipe)
    pairs = [read_change_pair(out, f"{i:08d}") for i in range(2)]
    for i, pair in enumerate(pairs):  # the canonical layouts of both dates
        for key in ("semantic1", "semantic2"):
            with rasterio.open(out / key / f"{i:08d}.png") as src:
                pair[key] = src.read(1)
    return pairs


def _t1(levir_t1, name):
    with rasterio.open(levir_t1 / "A" / name) as src:
        return np.moveaxis(src.read(), 0, -1)


def _event_mask(event, hw):
    return features.rasterize([(shape(event["geometry"]), 1)], out_shape=hw).astype(bool)


@pytest.mark.parametrize("synthesis", ["exemplar", "copy-paste"])
def test_exemplar_pairs_have_exact_labels(ctrl, levir_t1, bank_file, tmp_path, synthesis):
    bank = ObjectBank.load(bank_file)
    objects = {obj.id: obj for obj in bank.objects}
    for name, pair in zip(NAMES, _pairs(ctrl, levir_t1, bank_file, tmp_path / "out", synthesis), strict=True):
        t1 = _t1(levir_t1, name)
        hw = t1.shape[:2]
        assert np.array_equal(pair["A"], t1)
        outside = ~pair["change"]
        assert np.array_equal(pair["B"][outside], t1[outside])  # bit-identical outside the change
        union = np.zeros(hw, bool)
        for e in pair["events"]:
            pixels = _event_mask(e, hw)
            union |= pixels
            to, src = CANONICAL.class_by_name(e["to"]).id, CANONICAL.class_by_name(e["from"]).id
            assert (pair["semantic2"][pixels] == to).all() and (pair["semantic1"][pixels] == src).all()
        assert np.array_equal(union, pair["change"]) and pair["change"].any()
        assert np.array_equal(pair["semantic1"] != pair["semantic2"], pair["change"])
        record = pair["synthesis"]
        assert record["method"] == synthesis and record["bank_sha256"] == bank.sha256
        added = [e for e in pair["events"] if e["type"] == "add_building"]
        assert added and all(e["exemplar"]["bank_id"] in objects for e in added)
        assert {f["bank_id"] for f in record["fills"] if f["fill"] == "exemplar"} == {
            e["exemplar"]["bank_id"] for e in added
        }
        for e in added:  # the footprint is the bank object's own (resampled) pixels
            placed = warp_object(objects[e["exemplar"]["bank_id"]], np.array(e["exemplar"]["matrix"]), hw)
            inside = np.zeros(hw, bool)
            inside[placed.window.slices] = placed.window.mask
            pixels = _event_mask(e, hw)
            assert not (pixels & ~inside).any()
            if synthesis == "copy-paste":  # pasted as they are
                b = np.zeros_like(t1)
                b[placed.window.slices] = placed.pixels
                assert np.array_equal(pair["B"][pixels], b[pixels])


def test_harmonise_changes_only_the_changed_pixels(ctrl, levir_t1, bank_file, tmp_path):
    plain = _pairs(ctrl, levir_t1, bank_file, tmp_path / "ex", "exemplar")
    harmonised = _pairs(ctrl, levir_t1, bank_file, tmp_path / "hm", "exemplar+harmonise", harmonise_strength=0.5)
    for name, a, b in zip(NAMES, plain, harmonised, strict=True):
        t1 = _t1(levir_t1, name)
        assert np.array_equal(a["change"], b["change"])  # the same events: the diffusion pass adds no randomness
        assert np.array_equal(b["B"][~b["change"]], t1[~b["change"]])
        assert (a["B"][a["change"]] != b["B"][b["change"]]).any()
        assert b["synthesis"]["method"] == "exemplar+harmonise"


def test_exemplar_time_series_changes_each_date_only_where_it_changed(ctrl, levir_t1, bank_file, tmp_path):
    model, pipe = ctrl
    spec = build_spec(TimeSeriesSpec, {"model": str(model), "mode": "hybrid", "images": str(levir_t1 / "A"),
                                       "masks": str(levir_t1 / "label"), "num_dates": 3, "change_fraction": 0.04,
                                       "steps": 2, "num_samples": 1, "synthesis": "exemplar",
                                       "bank": str(bank_file)})  # fmt: skip
    run_job(spec, tmp_path / "ts", pipe=pipe)
    seq = read_sequence(tmp_path / "ts", "00000000")
    assert np.array_equal(seq["images"][0], _t1(levir_t1, NAMES[0]))
    for t in (1, 2):
        step = seq["changes"][(t - 1, t)]
        assert step.any() and np.array_equal(seq["images"][t][~step], seq["images"][t - 1][~step])
        assert np.array_equal(step, seq["semantics"][t - 1] != seq["semantics"][t])
    fills = seq["synthesis"]["fills"]
    assert {f["date"] for f in fills} == {1, 2} and any(f["fill"] == "exemplar" for f in fills)


def test_footprints_are_bank_objects_turned_to_the_plan(bank_file):
    bank = ObjectBank.load(bank_file)
    source = ExemplarFootprints(bank, 0.5)
    rng = np.random.default_rng(0)
    for angle in (0.0, 0.6, -1.2):
        window, placed = source.place(rng, 128.0, 128.0, 30.0, 16.0, angle, (256, 256))
        obj = next(o for o in bank.objects if o.id == placed["bank_id"])
        assert 0.8**2 * 0.9 <= window.count() / obj.mask.sum() <= 1.25**2 * 1.1  # same GSD, area within the fit
        turned = long_axis_angle(window.mask)
        assert abs((turned - angle + math.pi / 2) % math.pi - math.pi / 2) < math.radians(8)
    with pytest.raises(ValueError, match=r"bank: object .* is at 0.5 m/px and the layout at 0.05 m/px"):
        ExemplarFootprints(bank, 0.05)


def test_texture_fills_take_real_pixels(bank_file):
    with rasterio.open(shared_file("seg/loveda/images/1.png")) as src:
        image = np.moveaxis(src.read(), 0, -1)[:256, :256].copy()
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        semantic = get_palette("loveda").to_canonical(src.read(1)[:256, :256])
    result = simulate_change(semantic, 0.3, ChangeConfig(events={"transition": 1.0}), np.random.default_rng(2))
    out, fills = ExemplarSynthesis(ObjectBank.load(bank_file))(image, semantic, result.change_mask, result.events,
                                                               np.random.default_rng(0))  # fmt: skip
    assert np.array_equal(out[~result.change_mask], image[~result.change_mask])
    assert fills and {f["fill"] for f in fills} <= {"nearby", "image_texture", "bank_texture", "inpaint"}
    for f in fills:
        if f["fill"] == "nearby":  # a region of the same shape elsewhere: unchanged pixels of a class it may take
            ys, xs = np.nonzero(_event_mask(result.events[f["event"]].to_dict(), (256, 256)))
            dy, dx = f["offset"]
            to = CANONICAL.class_by_name(f["class"]).id
            assert np.isin(semantic[ys + dy, xs + dx], (to, *TEXTURE_SOURCES.get(to, ()))).all()
            assert not result.change_mask[ys + dy, xs + dx].any()
    copied, records = ExemplarSynthesis(None, COPY_PASTE)(image, semantic, result.change_mask, result.events,
                                                           np.random.default_rng(0))  # fmt: skip
    assert {r["fill"] for r in records} == {"inpaint"}
    first = _event_mask(result.events[0].to_dict(), (256, 256))  # filled first: from the t1 image alone
    telea = cv2.inpaint(image, first.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    assert np.array_equal(copied[first], telea[first])


def test_poisson_paste_and_image_patches():
    rng = np.random.default_rng(0)
    dst = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    region = np.zeros((64, 64), bool)
    region[20:40, 10:30] = True
    out = poisson_paste(dst, dst, region)
    assert np.array_equal(out[~region], dst[~region])
    assert np.abs(out.astype(int) - dst).max() <= 2  # the image's own gradients and boundary: itself again
    allowed = np.zeros((64, 64), bool)
    allowed[5:30, 30:60] = True
    patch = image_patch(dst, allowed, np.random.default_rng(1))
    assert patch.shape == (25, 25, 3)  # the largest odd square inside the 25 x 30 allowed block
    assert any(np.array_equal(patch, dst[5:30, x : x + 25]) for x in range(30, 36))
    assert image_patch(dst, np.zeros((64, 64), bool), rng) is None


def test_pipeline_strength_starts_from_the_image(ctrl):
    _, pipe = ctrl
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    kwargs = {"prompt": "houses", "controls": {"mask": torch.rand(1, 3, 64, 64)}, "image": image, "mask_image": mask,
              "num_inference_steps": 4, "output_type": "pt"}  # fmt: skip
    outs = [pipe(**kwargs, strength=s, generator=torch.Generator().manual_seed(1)).images for s in (0.5, 0.5, 1.0)]
    assert torch.equal(outs[0], outs[1])  # seeded
    assert torch.equal(outs[0][..., mask[0, 0] == 0], image[..., mask[0, 0] == 0])  # outside: the input, exactly
    assert not torch.equal(outs[0], outs[2])
    with pytest.raises(ValueError, match=r"strength=0.5: starts from the input image; pass image="):
        pipe(**{**kwargs, "image": None, "mask_image": None}, strength=0.5)
    with pytest.raises(ValueError, match=r"strength=0.5 and layout_strength=0.7: both set the starting point"):
        pipe(**kwargs, strength=0.5, layout_strength=0.7)
    with pytest.raises(ValueError, match=r"strength=1.5: expected a number in \(0, 1\]"):
        pipe(**kwargs, strength=1.5)


def test_synthesis_errors(ctrl, levir_t1, bank_file, tmp_path):
    base = {"model": "x", "mode": "hybrid", "images": str(levir_t1 / "A"), "masks": str(levir_t1 / "label"),
            "palette": "levir"}  # fmt: skip
    with pytest.raises(SpecError, match=r"^synthesis: exemplar fills the changes of a real t1 image; use --mode"):
        build_spec(ChangePairsSpec, {**base, "mode": "full", "images": None, "synthesis": "exemplar",
                                     "bank": str(bank_file)})  # fmt: skip
    with pytest.raises(SpecError, match=r"^bank: synthesis copy-paste takes its buildings from an object bank"):
        build_spec(ChangePairsSpec, {**base, "synthesis": "copy-paste"})
    with pytest.raises(SpecError, match=r"^bank: only used with synthesis exemplar"):
        build_spec(ChangePairsSpec, {**base, "bank": str(bank_file)})
    with pytest.raises(SpecError, match=r"synthesis: expected one of diffusion, exemplar"):
        build_spec(ChangePairsSpec, {**base, "synthesis": "poisson"})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a bank")
    with pytest.raises(FieldError, match=r"^bank: "):
        _pairs(ctrl, levir_t1, bad, tmp_path / "o", "exemplar", bank=str(bad))
    coarse = tmp_path / "coarse.safetensors"
    tiles = shared_file("change/levir_cd_1024")
    build_bank(tiles / "B", tiles / "label", "levir", gsd=5.0).save(coarse)
    with pytest.raises(FieldError, match=r"^bank: object .* is at 5.0 m/px and the layout at 0.5 m/px"):
        _pairs(ctrl, levir_t1, coarse, tmp_path / "o2", "exemplar", bank=str(coarse))
