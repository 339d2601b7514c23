"""Shared fixtures: tiny random bundles saved and loaded through the real bundle path."""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path


def _pin_cpu_kernels() -> None:
    """On x86-64, run torch's (and oneDNN's, MKL's) AVX2 kernels even where AVX-512 is there: the golden and
    known-answer hashes of float outputs were recorded on an AVX2 machine, and kernels of another vector width
    round differently (every image hash of tests/test_golden_outputs.py changes on an AVX-512 CPU otherwise).
    Must run before torch is imported; a value already in the environment wins."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    for name, value in (("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                        ("MKL_ENABLE_INSTRUCTIONS", "AVX2")):  # fmt: skip
        os.environ.setdefault(name, value)


_pin_cpu_kernels()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import rasterio  # noqa: E402
import torch  # noqa: E402
from rasterio.transform import Affine  # noqa: E402
from rasterio.windows import Window  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RSGEN_NO_PROGRESS", "1")
_OMP = os.environ.get("OMP_NUM_THREADS", "")
torch.set_num_threads(int(_OMP) if _OMP.isdigit() and int(_OMP) > 0 else min(2, os.cpu_count() or 1))  # OMP=1: one

from pipelines import RSText2ImagePipeline  # noqa: E402
from pipelines.controlled import RSControlledPipeline  # noqa: E402
from pipelines.tiny_bundle import TinyBundleConfig, TinyControlledBundleConfig, build_tiny_bundle  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEST_SIZE = 64  # tiny bundles' native size in tests: 8×8 latents


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test when the shared data is not beside the repo."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny", TinyBundleConfig(image_size=TEST_SIZE))


@pytest.fixture(scope="session")
def tiny_bundle_nometa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = TinyBundleConfig(image_size=TEST_SIZE, metadata=False)
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-nometa", config)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_bundle: Path) -> RSText2ImagePipeline:
    pipe = RSText2ImagePipeline.from_bundle(tiny_bundle)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipe_nometa(tiny_bundle_nometa: Path) -> RSText2ImagePipeline:
    pipe = RSText2ImagePipeline.from_bundle(tiny_bundle_nometa)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def ctrl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, RSControlledPipeline]:
    """A tiny random controlled bundle with a 'mask' ControlNet (change pairs), and its pipeline."""
    path = build_tiny_bundle(tmp_path_factory.mktemp("cp") / "ctrl", TinyControlledBundleConfig(TEST_SIZE, ("mask",)))
    pipe = RSControlledPipeline.from_bundle(path)
    pipe.set_progress_bar_config(disable=True)
    return path, pipe


def crop(src_path: Path, out: Path, window: Window, *, transform_shift: float = 0.0, **update) -> Path:
    """Write a crop of a real raster, keeping its CRS, window transform, nodata and descriptions."""
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        profile = src.profile.copy()
        transform = src.window_transform(window)
        profile.update(width=data.shape[2], height=data.shape[1], transform=transform * Affine.translation(0, 0))
        if transform_shift:
            profile["transform"] = Affine.translation(transform_shift, 0) * transform
        profile.update(blockxsize=None, blockysize=None, tiled=False)
        profile = {k: v for k, v in profile.items() if v is not None}
        profile.update(update)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(data.astype(profile["dtype"]))
            dst.descriptions = src.descriptions
    return out


LEVIR_T1_NAMES = ("test_2_0000_0000.png", "test_7_0256_0512.png")


@pytest.fixture(scope="session")
def levir_t1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real LEVIR-CD t1 images (``A/``) with their building masks (``label/``), named ``LEVIR_T1_NAMES``."""
    root = tmp_path_factory.mktemp("levir-t1")
    for folder in ("A", "label"):
        (root / folder).mkdir()
        for name in LEVIR_T1_NAMES:
            shutil.copy(shared_file(f"change/levir_like/{folder}/{name}"), root / folder / name)
    return root


@pytest.fixture(scope="session")
def alexandria_image(tmp_path_factory) -> Path:
    """A real georeferenced 8-bit RGB raster of Alexandria: the lidar DSM (283x259 px, EPSG:26918, 2 m) shaded
    as grey — the grid the footprints are rasterised on (its size is not a multiple of 8)."""
    with rasterio.open(shared_file("geotiff/elevation_alexandria/dsm.tif")) as src:
        dsm, profile = src.read(1), src.profile
    grey = np.clip((dsm - 5.0) / 35.0 * 255, 0, 255).astype(np.uint8)
    profile.update(dtype="uint8", count=3, nodata=None, blockxsize=None, blockysize=None, tiled=False)
    path = tmp_path_factory.mktemp("alexandria") / "t1.tif"
    with rasterio.open(path, "w", **{k: v for k, v in profile.items() if v is not None}) as dst:
        dst.write(np.stack([grey] * 3))
    return path
