"""Golden outputs: the pixels (and label/event records) every task produced before the task-layer redesign.

The hashes below were recorded on ``main`` at 4870573, before any code of the redesign changed, by running
each task through its CLI command and through ``rsgen run`` on tiny random bundles (and one quickstart pair on
the built-in model), with the option names of that time; ``_run_all`` runs the same jobs with today's names.
They cover decoded pixels, not file bytes: GeoTIFFs embed the provenance, whose fields may change; pixels may
not. The recording ran every case in one process, and the old job runner's ``torch.set_num_threads(1)`` (its
default) stayed in force after the first job: so the first CLI case ran on 2 threads (this machine's default)
and every later case on 1, as the ``threads`` options below say. (``rsgen sr`` alone changed: tile k of sample
i is now seeded by ``sample_seed(sample_seed(seed, i), k)`` as ``rsgen run`` always did, so only the job path
is pinned.)

Object records are hashed with each layer's file name in place of its path, so the hashes hold in any
checkout (the two affected values were re-recorded on 4870573 with that rule). The canonical layouts
``semantic1/``/``semantic2/`` that change pairs gained later are not part of the recording. The change
captions were rewritten later too (issue #16): change records are hashed without them (events, QA,
distractors, changed fraction), values computed on 9d0cad0, whose full records still matched 4870573's.
Event geometries became shapely-normalized later (issue #17): the five hybrid/vector pair records were
re-recorded then, after checking that every event of every record, geometry normalized, equals c5351c7's.
The image hashes need torch's AVX2 kernels on x86-64 (tests/conftest.py pins them): AVX-512 rounds otherwise.
"""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from tests.conftest import shared_file

GOLDEN = {
    "cli_generate_mask": {
        "0/image": "3edbdceb85e099f2",
        "0/semantic": "323fafda12478425",
        "1/image": "a7fb7f2c6bcd599e",
        "1/semantic": "323fafda12478425",
    },
    "cli_generate_vectors": {
        "0/image": "8d5b33be554b666b",
        "0/instances": "872b1fc587d81097",
        "0/objects": "2c4869d0d79fc796",
        "0/semantic": "5773559642e15698",
        "1/image": "69d7922e5799a858",
        "1/instances": "872b1fc587d81097",
        "1/objects": "2c4869d0d79fc796",
        "1/semantic": "5773559642e15698",
    },
    "cli_inpaint": {
        "0/image": "81c608f0574a468b",
        "1/image": "d52e95b65df75397",
    },
    "cli_pairs_full_second": {
        "0/events": "4f4bcff8b99e1bd8",
        "0/im1": "b0baa81fcf13c245",
        "0/im2": "b0baa81fcf13c245",
        "0/label1": "4124bbcc598666bb",
        "0/label2": "9564a1c0237f2de4",
        "1/events": "1aead237a3f20413",
        "1/im1": "fd604fb613185fd8",
        "1/im2": "fd604fb613185fd8",
        "1/label1": "62abebe6d71f9de8",
        "1/label2": "523334be81ea7ffa",
    },
    "cli_pairs_hybrid": {
        "0/A": "b5812e6c4943e48d",
        "0/B": "aed6c12ada4b8142",
        "0/events": "10d9a5fdf941260f",
        "0/label": "73132e59c3a7788d",
        "1/A": "9c662ac787d8909e",
        "1/B": "5ba030bd6605f7a3",
        "1/events": "b445eca0da5a092d",
        "1/label": "41cc8035442821fb",
        "2/A": "b5812e6c4943e48d",
        "2/B": "bf0f7803f6150cd8",
        "2/events": "020e32e2f6d32276",
        "2/label": "35e4063b1f52d401",
    },
    "cli_pairs_vectors": {
        "0/A": "8d5b33be554b666b",
        "0/B": "8d5b33be554b666b",
        "0/events": "fba6486a0c25cd9c",
        "0/label": "660ad0ccc2f10b6c",
        "1/A": "69d7922e5799a858",
        "1/B": "69d7922e5799a858",
        "1/events": "fba6486a0c25cd9c",
        "1/label": "660ad0ccc2f10b6c",
    },
    "cli_txt2img": {
        "0/image": "9bcb3876b919a376",
        "1/image": "a247e66eef3c3f56",
        "2/image": "d8b65e25998cdc6f",
    },
    "job_generate_masks": {
        "0/image": "95ce0be785c5f097",
        "0/semantic": "19f3ea9e27162874",
        "1/image": "f8537466948e8e39",
        "1/semantic": "323fafda12478425",
        "2/image": "2f0c83e4e3f1cca4",
        "2/semantic": "03b9f031cfc89b45",
        "3/image": "72f4fc07ba9b84ff",
        "3/semantic": "19f3ea9e27162874",
    },
    "job_layout": {
        "0/image": "2952ba6945bd3498",
        "0/instances": "4d84f89447ab1641",
        "0/objects": "4f53cda18c2baa0c",
        "0/semantic": "84f9a9037eedef71",
        "1/image": "0e0100e2be9b7b10",
        "1/instances": "4d84f89447ab1641",
        "1/objects": "4f53cda18c2baa0c",
        "1/semantic": "84f9a9037eedef71",
        "2/image": "bc9c0b56e141f80a",
        "2/instances": "4d84f89447ab1641",
        "2/objects": "4f53cda18c2baa0c",
        "2/semantic": "d4b6a59170a1adc9",
    },
    "job_sr": {
        "0/image": "1687d54d0984f7b5",
        "1/image": "32642dbb56b94e68",
    },
    "job_txt2img": {
        "0/image": "8bfac25cf2c2eed8",
        "1/image": "233ebfd0a1d6a072",
        "2/image": "a0f8fc255c14ad19",
        "3/image": "161c385b6b1e3d33",
        "4/image": "c4fabdec8743b01e",
        "5/image": "874b34577089971a",
    },
    "quickstart_default_model": {
        "0/A": "1d9c08e72685fa48",
        "0/B": "94e20228717234c4",
        "0/events": "7559083f9c7a61a5",
        "0/label": "a9839e56466d3342",
    },
}
GOLDEN["job_pairs_hybrid"] = dict(GOLDEN["cli_pairs_hybrid"])  # recorded separately: the two paths agreed


def _build_inputs(root: Path) -> dict[str, str]:
    from pipelines.tiny_bundle import (
        TinyBundleConfig,
        TinyControlledBundleConfig,
        TinySRBundleConfig,
        build_tiny_bundle,
    )

    inputs = {
        "t2i": build_tiny_bundle(root / "t2i", TinyBundleConfig(image_size=64)),
        "ctrl": build_tiny_bundle(root / "ctrl", TinyControlledBundleConfig(image_size=64, controls=("mask",))),
        "sr": build_tiny_bundle(root / "srm", TinySRBundleConfig(tile_size=64)),
    }
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        full = src.read(1)
    (root / "masks").mkdir()
    for k, (r, c) in enumerate([(0, 0), (512, 512), (256, 768)]):
        _png(root / "masks" / f"m{k}.png", full[None, r : r + 64, c : c + 64])
    (root / "layouts").mkdir()
    _png(root / "layouts" / "m.png", full[None, :128, :128])
    for folder in ("A", "label"):
        (root / folder).mkdir()
        for name in ("test_2_0000_0000.png", "test_7_0256_0512.png"):
            shutil.copy(shared_file(f"change/levir_like/{folder}/{name}"), root / folder / name)
    with rasterio.open(root / "A" / "test_2_0000_0000.png") as src:
        _png(root / "image.png", src.read(window=Window(0, 0, 64, 64)))
    region = np.zeros((1, 64, 64), np.uint8)
    region[:, 16:40, 20:48] = 1
    _png(root / "region.png", region)
    with rasterio.open(shared_file("geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif")) as src:
        profile = src.profile
        profile.update(width=16, height=16, transform=src.window_transform(Window(0, 0, 16, 16)), driver="GTiff")
        for key in ("blockxsize", "blockysize", "tiled"):
            profile.pop(key, None)
        data = src.read(window=Window(0, 0, 16, 16))
    with rasterio.open(root / "lr.tif", "w", **profile) as dst:
        dst.write(data)
    osm = "vector/osm_west_oakland"
    inputs.update(
        masks=root / "masks", layouts=root / "layouts", A=root / "A", label=root / "label", image=root / "image.png",
        region=root / "region.png", lr=root / "lr.tif", buildings=shared_file(f"{osm}/buildings.geojson"),
        roads=shared_file(f"{osm}/roads.geojson"),
    )  # fmt: skip
    return {k: str(v) for k, v in inputs.items()}


def _png(path: Path, array: np.ndarray) -> None:
    count, height, width = array.shape
    with rasterio.open(path, "w", driver="PNG", width=width, height=height, count=count, dtype="uint8") as dst:
        dst.write(array)


def _pixels_sha(path: Path) -> str:
    with rasterio.open(path) as src:
        data = src.read()
    return hashlib.sha256(f"{data.shape}{data.dtype}".encode() + data.tobytes()).hexdigest()[:16]


def _json_sha(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


PAIR_FOLDERS = ("A", "B", "label", "im1", "im2", "label1", "label2")


def output_hashes(folder: Path) -> dict[str, str]:
    """``{'<index>/<role>': sha}`` of every raster's pixels, objects file and change record under ``folder``."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        match = re.match(r"^0*(\d+)(.*)$", path.stem)
        if not path.is_file() or "export" in path.parts or not match or path.parent.name.startswith("semantic"):
            continue
        index, rest, parent = int(match.group(1)), match.group(2), path.parent.name
        if path.suffix in (".png", ".tif"):
            role = parent if parent in PAIR_FOLDERS else (rest.lstrip("_") or "image")
            out[f"{index}/{role}"] = _pixels_sha(path)
        elif rest == "_objects":
            objects = json.loads(path.read_text())
            for o in objects:  # the layer's file name, not its path: the hashes hold in any checkout
                o["source"] = Path(o["source"]).name if o.get("source") else o.get("source")
            out[f"{index}/objects"] = _json_sha(objects)
        elif parent == "changes":
            record = json.loads(path.read_text())
            keys = ("events", "qa", "distractors", "changed_fraction")  # captions: rewritten later (see above)
            out[f"{index}/events"] = _json_sha({k: record[k] for k in keys})
    return out


def _run_all(root: Path) -> dict[str, dict[str, str]]:
    from gen.cli import main
    from gen.runner import run_job
    from gen.tasks import spec_from_mapping

    i = _build_inputs(root / "in")
    out = root / "out"
    results = {}

    def cli(name: str, *args: str, threads: str = "1") -> None:
        assert main([*args, "--threads", threads, "--out", str(out / name)]) == 0, name
        results[name] = output_hashes(out / name)

    def job(name: str, spec: dict) -> None:
        run_job(spec_from_mapping({"threads": 1, **spec}), out / name)
        results[name] = output_hashes(out / name)

    md = ["--gsd", "0.5", "--lat", "52.37", "--lon", "4.89", "--date", "2021-06-01", "--sensor", "aerial"]
    cli("cli_txt2img", "txt2img", "--model", i["t2i"], "--prompt", "a river", *md, "--seed", "3", "--steps", "3",
        "-n", "3", "--batch-size", "2", threads="2")  # fmt: skip
    job("job_txt2img", {"task": "txt2img", "model": i["t2i"], "num_samples": 6, "seed": 3, "batch_size": 2,
        "shard_size": 4, "steps": 3, "prompt": ["a river", "houses"], "negative_prompt": "clouds",
        "gsd": {"loguniform": [0.5, 2.0]}, "date": {"range": ["2019-01-01", "2020-12-31"]},
        "cloud": {"uniform": [0, 0.3]}, "sensor": {"choice": ["aerial", "naip"]}})  # fmt: skip
    cli("cli_generate_mask", "generate", "--model", i["ctrl"], "--masks", i["masks"] + "/m1.png", "--palette",
        "loveda", "--prompt", "fields", "--seed", "1", "--steps", "2", "-n", "2", "--batch-size", "2")  # fmt: skip
    job("job_generate_masks", {"task": "generate", "model": i["ctrl"], "num_samples": 4, "batch_size": 2,
        "shard_size": 4, "steps": 2, "masks": i["masks"], "palette": "loveda", "prompt": ["fields"]})  # fmt: skip
    cli("cli_generate_vectors", "generate", "--model", i["ctrl"], "--vectors", "buildings:" + i["buildings"],
        "--vectors", "roads:" + i["roads"], "--gsd", "2", "--size", "64", "--steps", "1", "-n", "2")  # fmt: skip
    job("job_layout", {"task": "generate", "model": i["ctrl"], "num_samples": 3, "batch_size": 2, "shard_size": 3,
        "steps": 1, "vectors": ["buildings:" + i["buildings"], "roads:" + i["roads"]], "gsd": 2.0, "size": 64,
        "location": "layers"})  # fmt: skip
    cli("cli_inpaint", "inpaint", "--model", i["ctrl"], "--image", i["image"], "--region", i["region"], "--feather",
        "2", "--steps", "2", "-n", "2", "--seed", "5")  # fmt: skip
    cli("cli_pairs_hybrid", "change-pairs", "--model", i["ctrl"], "--mode", "hybrid", "--images", i["A"], "--masks",
        i["label"], "--palette", "levir", "--change-fraction", "0.05", "--distractors", "illumination,misregistration",
        "-n", "3", "--steps", "2")  # fmt: skip
    job("job_pairs_hybrid", {"task": "change_pairs", "model": i["ctrl"], "num_samples": 3, "shard_size": 2,
        "steps": 2, "mode": "hybrid", "images": i["A"], "masks": i["label"], "palette": "levir",
        "change_fraction": 0.05, "distractors": ["illumination", "misregistration"]})  # fmt: skip
    cli("cli_pairs_full_second", "change-pairs", "--model", i["ctrl"], "--masks", i["layouts"], "--palette",
        "loveda", "--gsd", "0.3", "--dataset-format", "second", "--steps", "1", "-n", "2",
        "--no-change-fraction", "0.3")  # fmt: skip
    cli("cli_pairs_vectors", "change-pairs", "--model", i["ctrl"], "--vectors", "buildings:" + i["buildings"],
        "--vectors", "roads:" + i["roads"], "--gsd", "2", "--size", "64", "--steps", "1", "-n", "2")  # fmt: skip
    job("job_sr", {"task": "sr", "model": i["sr"], "num_samples": 2, "shard_size": 2, "steps": 1, "lr": [i["lr"]],
        "scale": 2, "tile": 64})  # fmt: skip
    assert main(["quickstart", "-n", "1", "--steps", "10", "--threads", "1", "--out", str(out / "quick")]) == 0
    results["quickstart_default_model"] = output_hashes(out / "quick" / "change-pairs")
    return results


@pytest.fixture(scope="module")
def golden_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    return _run_all(tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_outputs_equal_the_recorded_golden_hashes(golden_runs, case):
    assert golden_runs[case] == GOLDEN[case]
