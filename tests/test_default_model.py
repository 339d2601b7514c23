"""The built-in default model: it ships with the package, loads with no --model, and its images follow
the mask — the colour of a pixel predicts its class from the layout far better than chance, and the
colour contrasts between classes point the same way as in real imagery (LoveDA)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conditions.masks import SemanticMask, encode_color
from conditions.metadata import Metadata
from conditions.palettes import CANONICAL, get_palette
from gen.assets import EXAMPLE_LAYOUTS
from pipelines import RSText2ImagePipeline
from pipelines.bundle import DEFAULT_MODEL_ROOT, ModelCard, check_weight_files
from pipelines.controlled import RSControlledPipeline
from pipelines.super_resolution import RSSuperResolutionPipeline
from tests.conftest import shared_file

ID = {c.name: c.id for c in CANONICAL.classes}
# Classes compared: vegetation merges the green classes (the model and LoveDA both mix them at 256 px).
GROUPS = {"building": [ID["building"]], "road": [ID["road"]], "water": [ID["water"]],
          "vegetation": [ID["tree"], ID["low_vegetation"]], "agriculture": [ID["agriculture"]]}  # fmt: skip


def grouped(mask: np.ndarray) -> np.ndarray:
    out = np.full(mask.shape, -1, np.int64)
    for k, ids in enumerate(GROUPS.values()):
        out[np.isin(mask, ids)] = k
    return out


def nearest_mean_accuracy(image: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy of classifying each pixel by the nearest class-mean colour, with the means
    taken from this image under ``labels``: high when the colours separate the labelled regions."""
    pixels, y = image.reshape(-1, 3).astype(np.float64), labels.ravel()
    classes = [k for k in np.unique(y) if k >= 0 and (y == k).sum() > 50]
    means = np.stack([pixels[y == k].mean(0) for k in classes])  # (K, 3)
    pred = np.asarray(classes)[np.argmin(((pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    return float(np.mean([(pred[y == k] == k).mean() for k in classes]))


@pytest.fixture(scope="module")
def default_pipe() -> RSControlledPipeline:
    pipe = RSControlledPipeline.from_bundle(None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_default_model_ships_safely_and_small():
    total = 0
    for kind in ("controlled", "sr"):
        folder = DEFAULT_MODEL_ROOT / kind
        card = ModelCard.read(folder)
        assert not card.smoke_test and card.native_size[0] >= 128
        files = check_weight_files(folder)
        assert files and all(p.suffix == ".safetensors" for p in files)
        total += sum(p.stat().st_size for p in files)
        training = json.loads((folder / "training.json").read_text())
        assert training["steps"] > 0 and training["final_loss"] < 1.0
    assert total < 100 * 2**20
    text = (DEFAULT_MODEL_ROOT / "README.md").read_text()
    for needed in ("LoveDA", "CC BY-NC-SA", "non-commercial", "rsgen train", "Known limits"):
        assert needed in text


def test_default_model_follows_the_mask(default_pipe):
    layout = np.asarray(Image.open(EXAMPLE_LAYOUTS / "town_0.png"))  # (256, 256) canonical ids
    control = encode_color(SemanticMask(layout, CANONICAL))[None]  # (1, 3, 256, 256)
    out = default_pipe(
        "aerial image of a suburb",
        controls={"mask": control},
        metadata=Metadata(gsd=0.5, sensor="aerial"),
        num_inference_steps=20,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images[0]  # fmt: skip (256, 256, 3) in [0, 1]
    assert out.shape == (256, 256, 3) and np.isfinite(out).all()
    image = (out * 255).round().astype(np.uint8)
    labels = grouped(layout)
    with_mask = nearest_mean_accuracy(image, labels)
    # Chance level: the same measure with the layout rotated by 90° and 180° (same class areas, wrong places).
    chance = max(nearest_mean_accuracy(image, np.rot90(labels, k)) for k in (1, 2))
    assert with_mask > chance + 0.15, (with_mask, chance)

    # The colour contrasts between classes point the same way as in real imagery (LoveDA, same groups).
    real = np.asarray(Image.open(shared_file("seg/loveda/images/1.png")).convert("RGB")).astype(np.float64)
    real_labels = grouped(
        get_palette("loveda").to_canonical(np.asarray(Image.open(shared_file("seg/loveda/masks/1.png"))))
    )

    def stats(img: np.ndarray, lab: np.ndarray, group: str) -> np.ndarray:
        return img.reshape(-1, 3)[lab.ravel() == list(GROUPS).index(group)].mean(0)

    gen = image.astype(np.float64)
    for a, b in (("vegetation", "building"), ("vegetation", "road"), ("vegetation", "water")):
        green = lambda c: c[1] - (c[0] + c[2]) / 2  # noqa: E731 (greenness of a mean colour)
        real_sign = np.sign(green(stats(real, real_labels, a)) - green(stats(real, real_labels, b)))
        gen_sign = np.sign(green(stats(gen, labels, a)) - green(stats(gen, labels, b)))
        assert gen_sign == real_sign, (a, b)


def test_default_model_serves_text_to_image_and_sr():
    t2i = RSText2ImagePipeline.from_bundle("default")
    t2i.set_progress_bar_config(disable=True)
    image = t2i("aerial image of farmland", num_inference_steps=4, guidance_scale=3.0, height=128, width=128,
                generator=torch.Generator().manual_seed(0), output_type="np").images  # fmt: skip
    assert image.shape == (1, 128, 128, 3) and np.isfinite(image).all() and image.std() > 0.01
    sr = RSSuperResolutionPipeline.from_bundle(None)
    sr.set_progress_bar_config(disable=True)
    lr = torch.rand(1, 3, 64, 64)
    out = sr(image=lr, reference=lr, reference_strength=0.5, num_inference_steps=4, output_type="np").images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()
