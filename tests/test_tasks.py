"""The task layer: every CLI command equals `rsgen run` with the same spec, keys a task does not use are
refused, CLI defaults are the spec defaults, and sample seeds are pinned."""

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.windows import Window

from core.seeding import sample_seed
from gen.cli import COMMANDS, build_parser, main
from gen.spec import MISSING, SpecError, build_spec, flag_name, mapping_from_args, spec_options
from gen.tasks import TASKS, spec_class, spec_from_mapping
from tests.conftest import crop, shared_file

OSM = "vector/osm_west_oakland"


def test_sample_seed_known_answers():
    """sample_seed is sha256("rsgen:{seed}:{index}")[:8] little-endian, top bit cleared: pinned forever."""
    assert sample_seed(0, 0) == 6709833241821259538
    assert sample_seed(0, 1) == 6482123339222728695
    assert sample_seed(3, 5) == 8398879045318673376
    assert sample_seed(12345, 999999) == 4693535059413958273
    with pytest.raises(ValueError, match=r"index=-1: sample indices start at 0"):
        sample_seed(0, -1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_bundle, ctrl):
    from pipelines.tiny_bundle import TinySRBundleConfig, build_tiny_bundle

    root = tmp_path_factory.mktemp("task-inputs")
    for folder in ("A", "label"):
        (root / folder).mkdir()
        shutil.copy(shared_file(f"change/levir_like/{folder}/test_2_0000_0000.png"), root / folder / "p.png")
    with rasterio.open(root / "A" / "p.png") as src:
        rgb = src.read(window=Window(0, 0, 64, 64))
    with rasterio.open(root / "image.png", "w", driver="PNG", width=64, height=64, count=3, dtype="uint8") as dst:
        dst.write(rgb)
    region = np.zeros((1, 64, 64), np.uint8)
    region[:, 10:30, 12:40] = 1
    with rasterio.open(root / "region.png", "w", driver="PNG", width=64, height=64, count=1, dtype="uint8") as dst:
        dst.write(region)
    with rasterio.open(shared_file("seg/loveda/masks/1.png")) as src:
        ids = src.read(1, window=Window(0, 0, 64, 64))
    (root / "masks").mkdir()
    with rasterio.open(root / "masks" / "m.png", "w", driver="PNG", width=64, height=64, count=1,
                       dtype="uint8") as dst:  # fmt: skip
        dst.write(ids[None])
    crop(
        shared_file("geotiff/naip_timeseries_nd/m_4709963_se_14_1_20200831.tif"), root / "lr.tif", Window(0, 0, 16, 16)
    )
    sr = build_tiny_bundle(root / "sr", TinySRBundleConfig(tile_size=64))
    layers = {name: str(shared_file(f"{OSM}/{name}.geojson")) for name in ("buildings", "roads")}
    return {"t2i": str(tiny_bundle), "ctrl": str(ctrl[0]), "sr": str(sr), "root": root, **layers}


def _cases(i):
    """(command, CLI flags, the equivalent YAML spec) for every task."""
    r = i["root"]
    return {
        "txt2img": ("txt2img", ["--model", i["t2i"], "--prompt", "a river", "--prompt", "fields", "--gsd", "0.5",
                                "--lat", "52.3", "--lon", "4.9", "--format", "geotiff", "-n", "3", "--batch-size", "2"],
                    {"model": i["t2i"], "prompt": ["a river", "fields"], "gsd": 0.5, "lat": 52.3, "lon": 4.9,
                     "format": "geotiff", "num_samples": 3, "batch_size": 2}),
        "generate_masks": ("generate", ["--model", i["ctrl"], "--masks", str(r / "masks"), "--palette", "loveda",
                                        "-n", "2", "--seed", "4"],
                           {"model": i["ctrl"], "masks": str(r / "masks"), "palette": "loveda", "num_samples": 2,
                            "seed": 4}),
        "generate_vectors": ("generate", ["--model", i["ctrl"], "--vectors", f"buildings:{i['buildings']}",
                                          "--vectors", f"roads:{i['roads']}", "--gsd", "2", "--size", "64",
                                          "--location", "layers", "-n", "2", "--writers", "coco"],
                             {"model": i["ctrl"], "vectors": [f"buildings:{i['buildings']}", f"roads:{i['roads']}"],
                              "gsd": 2, "size": 64, "location": "layers", "num_samples": 2, "writers": ["coco"]}),
        "inpaint": ("inpaint", ["--model", i["ctrl"], "--image", str(r / "image.png"), "--region",
                                str(r / "region.png"), "--feather", "2", "-n", "2"],
                    {"model": i["ctrl"], "image": str(r / "image.png"), "region": str(r / "region.png"), "feather": 2,
                     "num_samples": 2}),
        "change_pairs": ("change-pairs", ["--model", i["ctrl"], "--mode", "hybrid", "--images", str(r / "A"),
                                          "--masks", str(r / "label"), "--events", "add_building=0.7,transition=0.3",
                                          "--distractors", "illumination", "--dataset-format", "second", "-n", "2"],
                         {"model": i["ctrl"], "mode": "hybrid", "images": str(r / "A"), "masks": str(r / "label"),
                          "events": {"add_building": 0.7, "transition": 0.3}, "distractors": ["illumination"],
                          "dataset_format": "second", "num_samples": 2}),
        "time_series": ("time-series", ["--model", i["ctrl"], "--mode", "hybrid", "--images", str(r / "A"),
                                        "--masks", str(r / "label"), "--num-dates", "3", "--date", "2019-05-01",
                                        "--interval-days", "30", "--distractors", "seasonal", "--stack", "-n", "2"],
                        {"model": i["ctrl"], "mode": "hybrid", "images": str(r / "A"), "masks": str(r / "label"),
                         "num_dates": 3, "date": "2019-05-01", "interval_days": 30, "distractors": ["seasonal"],
                         "stack": True, "num_samples": 2}),
        "sr": ("sr", ["--model", i["sr"], "--lr", str(r / "lr.tif"), "--scale", "2", "--tile", "64", "-n", "2"],
               {"model": i["sr"], "lr": [str(r / "lr.tif")], "scale": 2, "tile": 64, "num_samples": 2}),
    }  # fmt: skip


def _files(folder: Path) -> dict[str, object]:
    """Every file's content; JSON without its creation time and index.json's run timings, the lock without its pid."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if path.name == ".rsgen-job.json":
            out[rel] = json.loads(path.read_text())["spec_sha256"]
        elif path.suffix == ".json":
            out[rel] = _drop_created(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            out[rel] = [_drop_created(json.loads(line)) for line in path.read_text().splitlines()]
        else:
            out[rel] = path.read_bytes()
    return out


def _drop_created(value):
    if isinstance(value, dict):
        return {k: _drop_created(v) for k, v in value.items() if k not in ("created", "last_run")}
    if isinstance(value, list):
        return [_drop_created(v) for v in value]
    return value


@pytest.mark.parametrize(
    "case", ["txt2img", "generate_masks", "generate_vectors", "inpaint", "change_pairs", "time_series", "sr"]
)
def test_cli_command_equals_rsgen_run(case, inputs, tmp_path):
    command, flags, spec = _cases(inputs)[case]
    task = COMMANDS[command].task
    common = ["--steps", "1", "--threads", "1"]
    assert main([command, *flags, *common, "--out", str(tmp_path / "cli")]) == 0
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump({"task": task, **spec, "steps": 1, "threads": 1}))
    assert main(["run", str(spec_file), "--out", str(tmp_path / "run")]) == 0
    cli, run = _files(tmp_path / "cli"), _files(tmp_path / "run")
    assert sorted(cli) == sorted(run)
    assert any(k.endswith((".png", ".tif")) for k in cli)
    for name in cli:
        assert cli[name] == run[name], name
    first = json.loads((tmp_path / "cli" / "manifest.jsonl").read_text().splitlines()[0])
    assert first["id"] == "00000000" and first["provenance"]["task"] == task
    # Re-running the same command resumes and writes nothing.
    assert main([command, *flags, *common, "--out", str(tmp_path / "cli")]) == 0
    assert _files(tmp_path / "cli") == cli


@pytest.mark.parametrize(
    ("task", "key", "value"),
    [
        ("change_pairs", "negative_prompt", "clouds"),
        ("change_pairs", "batch_size", 4),
        ("txt2img", "masks", "m/"),
        ("sr", "metadata", {"gsd": 1}),
        ("inpaint", "vectors", ["a.geojson"]),
        ("generate", "layouts", {"files": []}),
    ],
)
def test_keys_a_task_does_not_use_are_refused(task, key, value):
    with pytest.raises(SpecError, match=rf"^{key}: not used by task '{task}'; it uses: .*\bmodel\b"):
        spec_from_mapping({"task": task, key: value})


def test_unused_and_invalid_values_are_refused_the_same_way_on_the_cli(caplog, tmp_path):
    with pytest.raises(SpecError, match=r"events: add_building: expected a number in \[0, 1\], got 1\.7"):
        spec_from_mapping({"task": "change_pairs", "masks": str(tmp_path), "events": {"add_building": 1.7}})
    argv = ["change-pairs", "--masks", str(tmp_path), "--events", "add_building=1.7", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--events: add_building: expected a number in [0, 1], got 1.7" in caplog.text
    with pytest.raises(SpecError, match=r"lat: expected a fixed value for this task, got the distribution"):
        spec_from_mapping({"task": "change_pairs", "vectors": ["x"], "lat": {"uniform": [0, 1]}, "lon": 0})
    with pytest.raises(
        SpecError, match=r"^task: expected one of txt2img, generate, inpaint, change_pairs, time_series, sr"
    ):
        spec_from_mapping({"task": "layout"})
    with pytest.raises(SpecError, match=r"^image: required by task 'inpaint'"):
        spec_from_mapping({"task": "inpaint"})
    assert main(["inpaint", "--region", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--image: required by task 'inpaint'" in caplog.text
    assert not (tmp_path / "o").exists()


def _required(cls) -> dict:
    """The smallest valid mapping of a task (its required keys and the inputs its checks need)."""
    here = str(Path(__file__))
    minimal = {"generate": {"control": ["canny:x.png"]}, "inpaint": {"image": here, "region": here},
               "change_pairs": {"masks": str(Path(here).parent)}, "time_series": {"masks": str(Path(here).parent)},
               "sr": {"lr": [here], "scale": 2}}  # fmt: skip
    return minimal.get(cls.task, {})


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_defaults_are_the_spec_defaults(command):
    """One source of defaults: parsing only the required flags gives the spec built from the same keys,
    and every field of the spec is a flag of its command."""
    cls = spec_class(COMMANDS[command].task)
    required = _required(cls)
    argv = [command, "--out", "o"]
    for key, value in required.items():
        for item in value if isinstance(value, list) else [value]:
            argv += [flag_name(key), str(item)]
    args = build_parser().parse_args(argv)
    from_cli = build_spec(cls, mapping_from_args(cls, args), source="cli")
    assert from_cli == build_spec(cls, required)
    for f, opt in spec_options(cls):
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING
                                                              else MISSING)  # fmt: skip
        if f.name not in required:
            assert getattr(from_cli, f.name) == (opt.check(default) if default is not None else None), f.name
    helps = {a.dest for a in build_parser()._subparsers._group_actions[0].choices[command]._actions}
    assert {f.name for f, opt in spec_options(cls) if opt.on_cli} <= helps


def test_every_task_is_a_cli_command_and_a_spec():
    assert {c.task for c in COMMANDS.values()} == set(TASKS)
    for spec_cls, _ in TASKS.values():
        assert dataclasses.is_dataclass(spec_cls) and spec_cls.__dataclass_params__.frozen


def test_dry_run_prints_only_what_the_task_uses(inputs, capsys, tmp_path):
    r = inputs["root"]
    argv = ["change-pairs", "--model", inputs["ctrl"], "--mode", "hybrid", "--images", str(r / "A"), "--masks",
            str(r / "label"), "--prompt", "town", "-n", "2", "--out", str(tmp_path / "o"), "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["task"] == "change_pairs" and plan["num_samples"] == 2
    assert plan["first_samples"] == [{"index": i, "prompt": "town", "source": str(r / "label" / "p.png")}
                                     for i in range(2)]  # fmt: skip
    assert not (tmp_path / "o").exists()
    assert isinstance(build_parser(), argparse.ArgumentParser)


def _png(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read().astype(int)


def test_bf16_stays_within_a_stated_tolerance_of_fp32_and_fp16_needs_cuda(tiny_bundle, tmp_path, caplog):
    """bf16 on CPU: every pixel within 16 levels of fp32 and the mean within 2 (measured: 5 and 0.8)."""
    base = ["txt2img", "--model", str(tiny_bundle), "--prompt", "a river", "--gsd", "1", "--steps", "4", "-n", "2"]
    for dtype in ("fp32", "bf16"):
        assert main([*base, "--dtype", dtype, "--out", str(tmp_path / dtype)]) == 0
    for i in range(2):
        fp32, bf16 = (_png(tmp_path / d / f"{i:08d}.png") for d in ("fp32", "bf16"))
        diff = np.abs(fp32 - bf16)
        assert diff.max() <= 16 and diff.mean() <= 2 and diff.max() > 0  # bf16 really ran
    sidecar = json.loads((tmp_path / "bf16" / "00000000.json").read_text())
    assert sidecar["dtype"] == "bfloat16" and json.loads((tmp_path / "fp32" / "00000000.json").read_text())[
        "dtype"] == "float32"  # fmt: skip
    assert main([*base, "--dtype", "fp16", "--out", str(tmp_path / "fp16")]) == 2
    assert "--dtype: fp16 runs on CUDA only; on a CPU use bf16 or fp32" in caplog.text


@pytest.mark.slow
def test_compiled_unet_gives_the_eager_images(tiny_bundle, tmp_path):
    base = ["txt2img", "--model", str(tiny_bundle), "--prompt", "a river", "--steps", "2"]
    assert main([*base, "--out", str(tmp_path / "eager")]) == 0
    assert main([*base, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    diff = np.abs(_png(tmp_path / "eager" / "00000000.png") - _png(tmp_path / "compiled" / "00000000.png"))
    assert diff.max() <= 2


def test_a_cards_default_steps_and_guidance_are_the_defaults_of_every_job(tiny_bundle, tmp_path, caplog):
    """A distilled bundle's card (default_steps, default_guidance) sets the steps and guidance a job leaves out."""
    distilled = tmp_path / "distilled"
    shutil.copytree(tiny_bundle, distilled)
    card = json.loads((distilled / "rsgen_model.json").read_text())
    (distilled / "rsgen_model.json").write_text(json.dumps({**card, "default_steps": 3, "default_guidance": 1.0}))
    base = {"task": "txt2img", "prompt": ["a river"]}
    spec = spec_from_mapping({**base, "model": str(distilled)})
    assert (spec.steps, spec.guidance) == (3, 1.0)
    assert (spec_from_mapping({**base, "model": str(distilled), "steps": 5}).steps) == 5  # given: kept
    assert (spec_from_mapping({**base, "model": str(tiny_bundle)}).steps) == 20  # a card without them
    assert (spec_from_mapping({**base, "model": "default"}).steps) == 20
    args = build_parser().parse_args(["txt2img", "--model", str(distilled), "--prompt", "a river", "--out", "x"])
    assert build_spec(spec_class("txt2img"), mapping_from_args(spec_class("txt2img"), args), source="cli").steps == 3
    (distilled / "rsgen_model.json").write_text(json.dumps({**card, "default_steps": 0}))
    with pytest.raises(SpecError, match=r"^model: .*default_steps=0: expected an integer >= 1 or null"):
        spec_from_mapping({**base, "model": str(distilled)})
