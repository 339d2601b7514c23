"""The object bank: exact instance crops, geometry, textures, the bank file and `rsgen bank`, on real LEVIR and
LoveDA crops."""

import json
import logging
import math
import warnings
from dataclasses import fields
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from safetensors.numpy import save_file

from conditions.change_events import building_instances
from conditions.masks import read_mask
from conditions.object_bank import (
    BANK_FORMAT_VERSION,
    BankError,
    ObjectBank,
    build_bank,
    describe_bank,
    footprint_geometry,
)
from conditions.palettes import CANONICAL
from core.hashing import sha256_file
from gen.cli import main
from tests.conftest import shared_file

LEVIR_CROPS = {"a.png": (256, 0), "b.png": (512, 256)}  # name -> (row, col) of a 256 x 256 crop of test_7
LOVEDA_CROP = (0, 0)
SIZE = 256


def _write_rgb(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path)


def _crop(path: Path, origin: tuple[int, int], band: int | None = None, size: int = SIZE) -> np.ndarray:
    window = ((origin[0], origin[0] + size), (origin[1], origin[1] + size))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if band is not None:
                return src.read(band, window=window)  # (H, W)
            return np.moveaxis(src.read([1, 2, 3], window=window), 0, -1)  # (H, W, 3)


@pytest.fixture(scope="module")
def levir(tmp_path_factory) -> Path:
    """images/ and masks/ with two 256 x 256 crops of LEVIR-CD test_7 (B and its label: 255 = building)."""
    root = tmp_path_factory.mktemp("levir")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    image = shared_file("change/levir_cd_1024/B/test_7.png")
    label = shared_file("change/levir_cd_1024/label/test_7.png")
    for name, origin in LEVIR_CROPS.items():
        _write_rgb(root / "images" / name, _crop(image, origin))
        Image.fromarray(_crop(label, origin, 1)).save(root / "masks" / name)
    return root


@pytest.fixture(scope="module")
def loveda(tmp_path_factory) -> Path:
    """A 256 x 256 LoveDA crop (0.3 m) with a 24 x 24 block of no-data (0) written into its mask."""
    root = tmp_path_factory.mktemp("loveda")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    _write_rgb(root / "images" / "0.png", _crop(shared_file("seg/loveda/images/0.png"), LOVEDA_CROP))
    mask = _crop(shared_file("seg/loveda/masks/0.png"), LOVEDA_CROP, 1).copy()
    mask[100:124, 40:64] = 0  # no-data
    Image.fromarray(mask).save(root / "masks" / "0.png")
    return root


@pytest.fixture(scope="module")
def loveda_two_classes(tmp_path_factory) -> Path:
    """A 512 x 512 LoveDA crop with whole buildings and a whole agriculture field."""
    root = tmp_path_factory.mktemp("loveda2")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    origin = (512, 256)
    _write_rgb(root / "images" / "1.png", _crop(shared_file("seg/loveda/images/1.png"), origin, size=512))
    Image.fromarray(_crop(shared_file("seg/loveda/masks/1.png"), origin, 1, size=512)).save(root / "masks" / "1.png")
    return root


@pytest.fixture(scope="module")
def levir_bank(levir) -> ObjectBank:
    return build_bank(levir / "images", levir / "masks", "levir", gsd=0.5, licence="research only")


def _semantic(mask_path: Path, palette: str) -> np.ndarray:
    mask = read_mask(mask_path, palette)
    return mask.palette.to_canonical(mask.ids)


def _corner_rect(mask: np.ndarray) -> tuple[tuple[float, float], tuple[float, float], float]:
    """cv2.minAreaRect of the four corners of every mask pixel (independent of the bank's contour shortcut)."""
    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], axis=1) for dx in (0, 1) for dy in (0, 1)])  # (4N, 2)
    return cv2.minAreaRect(corners.astype(np.float32))


def test_objects_are_the_exact_interior_instances(levir, levir_bank):
    margin = 6  # 3 m at 0.5 m
    assert [s.file for s in levir_bank.sources] == ["a.png", "b.png"]
    seen = 0
    for name in LEVIR_CROPS:
        semantic = _semantic(levir / "masks" / name, "levir")
        image = np.asarray(Image.open(levir / "images" / name))
        instances = building_instances(semantic)
        expected = []  # every instance the border does not cut, of at least 20 m2 = 80 px
        for label in range(1, int(instances.max()) + 1):
            ys, xs = np.nonzero(instances == label)
            if ys.min() > 0 and xs.min() > 0 and ys.max() < SIZE - 1 and xs.max() < SIZE - 1 and ys.size >= 80:
                expected.append(label)
        objects = [o for o in levir_bank.objects if o.source == name]
        assert [o.id for o in objects] == [f"{Path(name).stem}/building/{k}" for k in expected]
        assert len(expected) >= 3
        for obj in objects:
            label = int(obj.id.rsplit("/", 1)[1])
            ys, xs = np.nonzero(instances == label)
            r0, c0 = max(0, ys.min() - margin), max(0, xs.min() - margin)
            r1, c1 = min(SIZE, ys.max() + 1 + margin), min(SIZE, xs.max() + 1 + margin)
            assert obj.origin == (r0, c0) and obj.mask.shape == (r1 - r0, c1 - c0)
            assert np.array_equal(obj.mask, instances[r0:r1, c0:c1] == label)
            assert np.array_equal(obj.pixels, image[r0:r1, c0:c1])
            assert np.array_equal(obj.context, semantic[r0:r1, c0:c1] == 0)  # LEVIR: the ground is background
            assert obj.class_name == "building" and obj.gsd == 0.5 and obj.area_m2 == ys.size * 0.25
            seen += 1
    assert seen == len(levir_bank.objects) == len(levir_bank.of_class("building"))


def test_geometry_and_colour_match_opencv(levir_bank):
    for obj in levir_bank.objects:
        (_, _), (w, h), _ = rect = _corner_rect(obj.mask)
        assert obj.length_m == pytest.approx(max(w, h) * 0.5, abs=1e-3)
        assert obj.width_m == pytest.approx(min(w, h) * 0.5, abs=1e-3)
        assert obj.length_m >= obj.width_m and 0 <= obj.orientation_deg < 180
        box = cv2.boxPoints(rect)  # (4, 2)
        long_edge = max((box[(i + 1) % 4] - box[i] for i in range(2)), key=lambda e: math.hypot(*e))
        expected = math.degrees(math.atan2(long_edge[1], long_edge[0])) % 180
        if obj.length_m > 1.05 * obj.width_m:  # a square's long side is either side
            diff = abs(obj.orientation_deg - expected) % 180
            assert min(diff, 180 - diff) < 1e-3
        lab = cv2.cvtColor(obj.pixels, cv2.COLOR_RGB2LAB)[obj.mask].astype(np.float64)  # (N, 3)
        assert obj.lab_mean == pytest.approx(tuple(lab.mean(axis=0)), abs=1e-9)
        assert obj.lab_std == pytest.approx(tuple(lab.std(axis=0)), abs=1e-9)
        ground = cv2.cvtColor(obj.pixels, cv2.COLOR_RGB2LAB)[obj.context].astype(np.float64)
        assert obj.context_lab_mean == pytest.approx(tuple(ground.mean(axis=0)), abs=1e-9)


def test_footprint_geometry_of_known_shapes():
    block = np.zeros((30, 40), bool)
    block[5:15, 8:28] = True  # 20 wide, 10 tall: long side along x
    assert footprint_geometry(block) == pytest.approx((0.0, 20.0, 10.0), abs=1e-4)
    assert footprint_geometry(block.T)[1:] == pytest.approx((20.0, 10.0), abs=1e-4)
    assert footprint_geometry(block.T)[0] == pytest.approx(90.0, abs=1e-4)
    diagonal = np.zeros((60, 60), np.uint8)
    cv2.fillPoly(diagonal, [np.array([[10, 10], [40, 40], [35, 45], [5, 15]], np.int32)], 1)  # long side at +45
    angle, length, width = footprint_geometry(diagonal.astype(bool))
    assert abs(angle - 45) < 3 and length > 2.5 * width


def test_textures_lie_inside_their_class(loveda):
    bank = build_bank(loveda / "images", loveda / "masks", "loveda", gsd=0.3, texture_size_m=6)
    semantic = _semantic(loveda / "masks" / "0.png", "loveda")
    image = np.asarray(Image.open(loveda / "images" / "0.png"))
    side = round(6 / 0.3)
    present = {CANONICAL.by_id()[i].name for i in np.unique(semantic) if i != 255}
    assert present == {"background", "building", "road", "agriculture"}
    assert {t.class_name for t in bank.textures} == present and len(bank.textures_of("agriculture")) == 4
    coarse = build_bank(loveda / "images", loveda / "masks", "loveda", gsd=0.3)  # 53 px fit only in agriculture
    assert [t.id for t in coarse.textures] == [f"0/agriculture/texture-{j}" for j in range(4)]
    for name in present:
        patches = bank.textures_of(name)
        assert len(patches) <= 4
        occupied = np.zeros(semantic.shape, np.int32)
        for patch in patches:
            (r, c), cid = patch.origin, CANONICAL.class_by_name(name).id
            assert patch.pixels.shape == (side, side, 3) and patch.gsd == 0.3 and patch.source == "0.png"
            assert (semantic[r : r + side, c : c + side] == cid).all()
            assert np.array_equal(patch.pixels, image[r : r + side, c : c + side])
            occupied[r : r + side, c : c + side] += 1
        assert occupied.max() <= 1  # patches of one class do not overlap
    for obj in bank.objects:  # no-data (255 in canonical ids) is never context
        r, c = obj.origin
        h, w = obj.mask.shape
        assert not (obj.context & (semantic[r : r + h, c : c + w] == 255)).any()
        assert np.array_equal(obj.context, np.isin(semantic[r : r + h, c : c + w], [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]))


def test_more_classes_and_max_objects(loveda_two_classes):
    root = loveda_two_classes
    both = build_bank(root / "images", root / "masks", "loveda", gsd=0.3, classes=("agriculture", "building"))
    names = [o.class_name for o in both.objects]
    assert names == sorted(names) and set(names) == {"agriculture", "building"}  # class order as asked, then label
    semantic = _semantic(root / "masks" / "1.png", "loveda")
    for obj in both.objects:  # context: no pixel of either harvested class
        r, c = obj.origin
        h, w = obj.mask.shape
        assert not (obj.context & np.isin(semantic[r : r + h, c : c + w], [1, 8])).any()
    few = build_bank(root / "images", root / "masks", "loveda", gsd=0.3, classes=("agriculture", "building"),
                     max_objects_per_image=2, seed=3)  # fmt: skip
    kept = {o.id for o in few.objects}
    assert len(both.objects) > 2 and len(kept) == 2
    assert [o.id for o in few.objects] == [o.id for o in both.objects if o.id in kept]  # a subset, in bank order


def test_save_load_round_trip(levir_bank, tmp_path):
    content_sha = levir_bank.sha256  # of the bytes save writes, before any file exists
    path = tmp_path / "bank.safetensors"
    levir_bank.save(path)
    assert sha256_file(path) == content_sha == levir_bank.sha256
    loaded = ObjectBank.load(path)
    assert loaded.sha256 == content_sha
    assert (loaded.licence, loaded.palette, loaded.sources) == ("research only", "levir", levir_bank.sources)
    assert loaded.parameters == levir_bank.parameters and loaded.parameters["margin_m"] == 3.0
    for group in ("objects", "textures"):
        assert len(getattr(loaded, group)) == len(getattr(levir_bank, group)) > 0
        for a, b in zip(getattr(levir_bank, group), getattr(loaded, group), strict=True):
            for f in fields(a):
                x, y = getattr(a, f.name), getattr(b, f.name)
                if isinstance(x, np.ndarray):
                    assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
                else:
                    assert x == y and type(x) is type(y), f.name
    assert loaded.to_bytes() == path.read_bytes()
    with open(path, "rb") as handle:  # the index is plain JSON in the header
        header = handle.read(int.from_bytes(handle.read(8), "little"))
    assert json.loads(json.loads(header)["__metadata__"]["rsgen_bank"])["format_version"] == BANK_FORMAT_VERSION


def test_deterministic(levir, levir_bank, tmp_path):
    again = build_bank(levir / "images", levir / "masks", "levir", gsd=0.5, licence="research only")
    assert again.sha256 == levir_bank.sha256
    other = build_bank(levir / "images", levir / "masks", "levir", gsd=0.5, licence="research only", seed=1)
    assert other.sha256 != levir_bank.sha256
    assert [o.id for o in other.objects] == [o.id for o in levir_bank.objects]  # the seed draws textures only
    assert [t.origin for t in other.textures] != [t.origin for t in levir_bank.textures]


def test_gsd_from_a_georeferenced_image(levir, tmp_path):
    (tmp_path / "images").mkdir()
    pixels = np.asarray(Image.open(levir / "images" / "a.png"))
    profile = {"driver": "GTiff", "width": SIZE, "height": SIZE, "count": 3, "dtype": "uint8",
               "crs": CRS.from_epsg(32633), "transform": Affine(0.5, 0, 400000, 0, -0.5, 5000000)}  # fmt: skip
    with rasterio.open(tmp_path / "images" / "a.tif", "w", **profile) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))
    (tmp_path / "masks").mkdir()
    Image.open(levir / "masks" / "a.png").save(tmp_path / "masks" / "a.tif")
    bank = build_bank(tmp_path / "images", tmp_path / "masks", "levir")
    assert {o.gsd for o in bank.objects} == {0.5} and bank.sources[0].gsd == 0.5
    reference = build_bank(levir / "images" / "a.png", levir / "masks" / "a.png", "levir", gsd=0.5)
    assert [o.area_m2 for o in bank.objects] == [o.area_m2 for o in reference.objects]
    with pytest.raises(BankError, match=r"^gsd: the images are not georeferenced .*pass their pixel size in metres"):
        build_bank(levir / "images", levir / "masks", "levir")


def test_input_errors(levir, tmp_path):
    images, masks = levir / "images", levir / "masks"
    (tmp_path / "one").mkdir()
    Image.open(masks / "a.png").save(tmp_path / "one" / "a.png")
    with pytest.raises(BankError, match=r"^masks '.*one': no mask for image\(s\) \['b.png'\]; .*add the masks"):
        build_bank(images, tmp_path / "one", "levir", gsd=0.5)
    with pytest.raises(BankError, match=r"^images '.*one': no image for mask\(s\) \['b.png'\]"):
        build_bank(tmp_path / "one", masks, "levir", gsd=0.5)
    small = tmp_path / "small"
    small.mkdir()
    for name in LEVIR_CROPS:
        Image.fromarray(np.asarray(Image.open(masks / name))[:128]).save(small / name)
    with pytest.raises(BankError, match=r"^masks '.*a.png': size 128x256 does not match its image 'a.png' \(256x256\)"):
        build_bank(images, small, "levir", gsd=0.5)
    with pytest.raises(BankError, match=r"^palette 'nope': unknown scheme; choose one of \['canonical',"):
        build_bank(images, masks, "nope", gsd=0.5)
    with pytest.raises(BankError, match=r"^classes 'house': not a canonical class; choose from \['background'"):
        build_bank(images, masks, "levir", gsd=0.5, classes=("house",))
    with pytest.raises(BankError, match=r"^classes 'tree': the 'levir' palette has no class that maps to it"):
        build_bank(images, masks, "levir", gsd=0.5, classes=("tree",))
    with pytest.raises(BankError, match=r"^masks .*: no instance of \['building'\] of at least 100000.0 m2 that"):
        build_bank(images, masks, "levir", gsd=0.5, min_area_m2=1e5)
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(BankError, match=r"^gsd=.*: the pixel size must be a positive number of metres"):
            build_bank(images, masks, "levir", gsd=bad)
    with pytest.raises(BankError, match=r"^margin_m=-1: must be a finite number of metres >= 0"):
        build_bank(images, masks, "levir", gsd=0.5, margin_m=-1)
    with pytest.raises(BankError, match=r"^masks '.*': unknown class id\(s\) \[255\] for the 'loveda' scheme"):
        build_bank(images, masks, "loveda", gsd=0.5)
    with pytest.raises(BankError, match=r"^images '.*nothing': no such file or folder"):
        build_bank(tmp_path / "nothing", masks, "levir", gsd=0.5)
    with pytest.raises(BankError, match=r"^max_objects_per_image=0: must be at least 1, or unset"):
        build_bank(images, masks, "levir", gsd=0.5, max_objects_per_image=0)
    with pytest.raises(BankError, match=r"^textures_per_class=-1: must be >= 0"):
        build_bank(images, masks, "levir", gsd=0.5, textures_per_class=-1)
    twins = tmp_path / "twins"
    twins.mkdir()
    for name in ("a.png", "a.tif"):
        Image.open(images / "a.png").save(twins / name)
    with pytest.raises(BankError, match=r"^images '.*twins': 'a.png' and 'a.tif' share the name 'a', which names"):
        build_bank(twins, twins, "levir", gsd=0.5)


def test_bank_file_errors(levir_bank, tmp_path):
    with pytest.raises(BankError, match=r"^out '.*bank.npz': a bank is one .safetensors file; name it e.g. 'bank.s"):
        levir_bank.save(tmp_path / "bank.npz")
    with pytest.raises(BankError, match=r"^bank '.*missing.safetensors': no such file; build one with `rsgen bank"):
        ObjectBank.load(tmp_path / "missing.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(BankError, match=r"^bank '.*corrupt.safetensors': not a readable bank file"):
        ObjectBank.load(tmp_path / "corrupt.safetensors")
    save_file({"x": np.zeros(3, np.uint8)}, tmp_path / "plain.safetensors")
    with pytest.raises(BankError, match=r"without an rsgen bank index \(metadata key 'rsgen_bank'\)"):
        ObjectBank.load(tmp_path / "plain.safetensors")
    index = {**levir_bank.index(), "format_version": 99}
    save_file(levir_bank.tensors(), tmp_path / "v99.safetensors", metadata={"rsgen_bank": json.dumps(index)})
    with pytest.raises(BankError, match=r"bank format version 99, this rsgen reads version 1; rebuild it"):
        ObjectBank.load(tmp_path / "v99.safetensors")
    tensors = levir_bank.tensors()
    del tensors["objects.3.mask"]
    save_file(tensors, tmp_path / "cut.safetensors", metadata={"rsgen_bank": json.dumps(levir_bank.index())})
    with pytest.raises(BankError, match=r"corrupt bank index \(KeyError: 'objects.3.mask'\)"):
        ObjectBank.load(tmp_path / "cut.safetensors")
    with pytest.raises(BankError, match=r"^class 'house': not a canonical class"):
        levir_bank.of_class("house")


def test_cli_build_and_info(levir, levir_bank, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="rsgen")
    out = tmp_path / "cli.safetensors"
    base = ["bank", "build", "--images", str(levir / "images"), "--masks", str(levir / "masks"), "--palette", "levir",
            "--gsd", "0.5", "--licence", "research only"]  # fmt: skip
    assert main([*base, "--out", str(out)]) == 0
    assert sha256_file(out) == levir_bank.sha256  # the CLI writes what the API builds
    assert f"bank: {len(levir_bank.objects)} objects and {len(levir_bank.textures)} textures" in capsys.readouterr().out
    assert "objects per class {'building': " in caplog.text
    assert main(["bank", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == f"bank {out}\n" + describe_bank(levir_bank)
    n = len(levir_bank.objects)
    areas = [o.area_m2 for o in levir_bank.objects]
    assert f"objects: {n} (gsd 0.5-0.5 m, area {min(areas):.4g}-{max(areas):.4g} m2)\n  building: {n} " in printed
    assert "licence: research only\n" in printed and "sources: 2\n  a.png (sha256 " in printed
    assert f"{levir_bank.sha256}" in printed
    caplog.clear()
    assert main([*base, "--out", str(out)]) == 2
    assert "--out '" in caplog.text and "exists; pass --overwrite" in caplog.text
    assert main([*base, "--out", str(out), "--overwrite", "--seed", "1"]) == 0 and sha256_file(out) != levir_bank.sha256


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--min-area-m2", "-1"], "--min-area-m2=-1.0: must be a finite number of square metres >= 0"),
        (["--classes", "building,house"], "--classes 'house': not a canonical class"),
        (["--palette", "nope"], "--palette 'nope': unknown scheme; choose one of"),
        (["--gsd", "0"], "--gsd=0.0: the pixel size must be a positive number"),
        (["--out", "b.npz"], "--out 'b.npz': a bank is one .safetensors file"),
    ],
)
def test_cli_errors_exit_2(levir, tmp_path, caplog, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    args = {"--images": str(levir / "images"), "--masks": str(levir / "masks"), "--palette": "levir", "--gsd": "0.5",
            "--out": "b.safetensors"}  # fmt: skip
    args.update(dict(zip(extra[::2], extra[1::2], strict=True)))
    assert main(["bank", "build", *[x for item in args.items() for x in item]]) == 2
    assert message in caplog.text
    assert not (tmp_path / "b.safetensors").exists()


def test_cli_gsd_and_info_errors(levir, tmp_path, caplog):
    args = ["bank", "build", "--images", str(levir / "images"), "--masks", str(levir / "masks"), "--palette", "levir"]
    assert main([*args, "--out", str(tmp_path / "b.safetensors")]) == 2
    assert "--gsd: the images are not georeferenced" in caplog.text
    assert main(["bank", "info", str(tmp_path / "none.safetensors")]) == 2
    assert "bank '" in caplog.text and "no such file" in caplog.text
    assert main(["bank"]) == 2


@pytest.fixture(scope="module")
def alexandria(alexandria_image) -> tuple[Path, str]:
    """The shaded Alexandria DSM (EPSG:26918, 2 m) and the building footprints over it."""
    return alexandria_image, f"buildings:{shared_file('vector/buildings_alexandria/buildings.geojson')}"


def test_objects_from_vector_footprints(alexandria, tmp_path, levir):
    from conditions import vector_layouts
    from conditions.vectors import TargetGrid

    image, layer = alexandria
    bank = build_bank(image, None, None, vectors=[layer], min_area_m2=0)
    with rasterio.open(image) as src:
        grid, pixels = TargetGrid(src.crs, src.transform, src.width, src.height), np.moveaxis(src.read(), 0, -1)
    labels = vector_layouts.rasterize_on(vector_layouts.load_layer_rules([layer]), grid)
    footprints = np.where(labels.semantic == 1, labels.instances, 0)
    assert bank.palette == "canonical" and bank.sources[0].mask_file == "buildings.geojson"
    assert bank.sources[0].mask_sha256 == sha256_file(layer.split(":", 1)[1]) and bank.sources[0].gsd == 2.0
    for obj in bank.objects:  # each object is exactly one footprint
        label = int(obj.id.rsplit("/", 1)[1])
        (r, c), (h, w) = obj.origin, obj.mask.shape
        assert np.array_equal(obj.mask, footprints[r : r + h, c : c + w] == label)
        assert obj.mask.sum() == (footprints == label).sum()
        assert np.array_equal(obj.pixels, pixels[r : r + h, c : c + w])
        assert obj.gsd == 2.0 and obj.area_m2 == obj.mask.sum() * 4.0
    count, _, stats, _ = cv2.connectedComponentsWithStats((labels.semantic == 1).astype(np.uint8),
                                                                   connectivity=4)  # fmt: skip
    interior = [k for k in range(1, count) if min(stats[k][:2]) > 0 and stats[k][0] + stats[k][2] < grid.width
                and stats[k][1] + stats[k][3] < grid.height]  # fmt: skip
    assert len(bank.objects) > len(interior)  # touching footprints stay apart (connected regions would merge them)
    out = tmp_path / "v.safetensors"
    args = ["bank", "build", "--images", str(image), "--vectors", layer, "--min-area-m2", "0", "--out", str(out)]
    assert main(args) == 0
    assert sha256_file(out) == bank.sha256
    with pytest.raises(BankError, match=r"^images '.*a.png': not georeferenced; vectors are rasterised on the image"):
        build_bank(levir / "images" / "a.png", None, None, vectors=[layer])
    with pytest.raises(BankError, match=r"^vectors \[.*\]: the layout comes from the vectors; leave masks and palette"):
        build_bank(image, levir / "masks", "levir", vectors=[layer])
    with pytest.raises(BankError, match=r"^gsd=0.5: images '.*t1.tif' have 2.0 m pixels"):
        build_bank(image, None, None, vectors=[layer], gsd=0.5)
    with pytest.raises(BankError, match=r"^masks: none given; pass masks \(with their palette\), or vectors"):
        build_bank(image, None, None)
    with pytest.raises(BankError, match=r"^palette: masks '.*' need their label scheme; pass one of \['canonical'"):
        build_bank(levir / "images", levir / "masks", None, gsd=0.5)
