"""Reading rsgen datasets back, exporting them (HF parquet, WebDataset, COCO, STAC) and previewing."""

import json

import numpy as np
import pytest

from conditions.palettes import CANONICAL
from gen.cli import main
from gen.runner import run_job
from gen.spec import build_spec
from gen.tasks.generate import GenerateSpec
from synth_datasets.exporters import export_coco, export_hf, export_stac, export_webdataset
from synth_datasets.preview import write_preview
from synth_datasets.reader import DatasetError, load_dataset
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def layout_dataset(tmp_path_factory):
    """Two georeferenced samples from the real OSM layout, with semantic, instance and object labels."""
    from pipelines.tiny_bundle import TinyControlledBundleConfig, build_tiny_bundle

    root = tmp_path_factory.mktemp("export")
    model = build_tiny_bundle(root / "ctrl", TinyControlledBundleConfig(image_size=64, controls=("mask",)))
    spec = build_spec(GenerateSpec, {
        "model": str(model), "prompt": "houses and streets",
        "vectors": [f"buildings:{shared_file('vector/osm_west_oakland/buildings.geojson')}",
                    f"roads:{shared_file('vector/osm_west_oakland/roads.geojson')}"],
        "gsd": 3.0, "date": "2021-05-04", "size": 64, "num_samples": 2, "steps": 1,
    })  # fmt: skip
    summary = run_job(spec, root / "ds")
    assert summary.written_by_this_process == summary.num_samples == 2
    return root / "ds"


def test_reader_loads_and_verifies(layout_dataset, tmp_path):
    ds = load_dataset(layout_dataset)
    assert len(ds) == 2 and ds[0].image().shape == (64, 64, 3)
    assert ds[0].label("semantic").shape == (64, 64) and ds[0].objects()
    assert ds[0].caption == "houses and streets"
    import shutil

    copy = shutil.copytree(layout_dataset, tmp_path / "copy")
    image = copy / load_dataset(copy)[0].files["image"]
    image.write_bytes(image.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(DatasetError, match=r"sha256 does not match the manifest"):
        load_dataset(copy)[0].image()
    with pytest.raises(DatasetError, match=r"no manifest\.jsonl or sample sidecars; is it an rsgen output\?"):
        load_dataset(tmp_path / "copy" / "..")


def test_hf_parquet_loads_with_datasets(layout_dataset, tmp_path):
    import datasets

    export_hf(load_dataset(layout_dataset), tmp_path / "hf")
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "hf" / "data" / "*.parquet"), split="train")
    assert len(loaded) == 2 and isinstance(loaded.features["image"], datasets.Image)
    row = loaded[0]
    assert np.array_equal(np.asarray(row["image"]), load_dataset(layout_dataset)[0].image())
    assert np.array_equal(np.asarray(row["semantic"]), load_dataset(layout_dataset)[0].label("semantic"))
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "images are noise" in card and "Licence of inputs" in card and "buildings.geojson" in card


def test_webdataset_shards_load_with_webdataset(layout_dataset, tmp_path):
    import webdataset as wds

    (shard,) = export_webdataset(load_dataset(layout_dataset), tmp_path / "wds")
    samples = list(wds.WebDataset(str(shard), shardshuffle=False))
    assert len(samples) == 2
    first = samples[0]
    assert {"tif", "json", "semantic.tif", "instances.tif", "objects.json"} <= set(first)
    assert json.loads(first["json"])["task"] == "generate"


COCO_SCHEMA = {  # the parts of the COCO instances format that loaders (pycocotools, detectron2) rely on
    "type": "object",
    "required": ["images", "annotations", "categories"],
    "properties": {
        "images": {"type": "array", "items": {"type": "object", "required": ["id", "file_name", "width", "height"],
                   "properties": {"id": {"type": "integer"}, "width": {"type": "integer"},
                                  "height": {"type": "integer"}, "file_name": {"type": "string"}}}},
        "annotations": {"type": "array", "items": {
            "type": "object", "required": ["id", "image_id", "category_id", "bbox", "area", "segmentation", "iscrowd"],
            "properties": {"bbox": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
                           "segmentation": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                           "iscrowd": {"enum": [0, 1]}, "area": {"type": "number", "exclusiveMinimum": 0}}}},
        "categories": {"type": "array", "items": {"type": "object", "required": ["id", "name"]}},
    },
}  # fmt: skip


def test_coco_annotations_are_exact(layout_dataset, tmp_path):
    import jsonschema

    ds = load_dataset(layout_dataset)
    coco = json.loads(export_coco(ds, tmp_path / "coco").read_text())
    jsonschema.validate(coco, COCO_SCHEMA)
    assert {"images", "annotations", "categories", "info"} <= set(coco)
    assert {c["name"] for c in coco["categories"]} == set(CANONICAL.names)
    instances = ds[0].label("instances")
    annotations = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert len(annotations) == len([v for v in np.unique(instances) if v])
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64 and ann["iscrowd"] == 0
        assert ann["segmentation"] and all(len(poly) % 2 == 0 for poly in ann["segmentation"])
    assert sum(a["area"] for a in annotations) == int((instances > 0).sum())


def test_stac_catalog_reads_back(layout_dataset, tmp_path):
    import pystac

    catalog = pystac.Catalog.from_file(str(export_stac(load_dataset(layout_dataset), tmp_path / "stac")))
    items = list(catalog.get_items())
    assert len(items) == 2
    west, south, east, north = items[0].bbox
    assert west < -122.29 < east + 0.01 and south < 37.81 < north + 0.01
    assert items[0].datetime.date().isoformat() == "2021-05-04"
    assert items[0].properties["proj:code"].startswith("EPSG:326")
    assert pystac.Item.from_dict(items[0].to_dict()).id == items[0].id


def test_preview_html_and_contact_sheet(layout_dataset, tmp_path, capsys):
    assert main(["preview", str(layout_dataset), "--out", str(tmp_path / "p.html")]) == 0
    page = (tmp_path / "p.html").read_text()
    assert page.count('src="data:image/png;base64,') == 6  # image, mask, overlay for each of 2 samples
    assert "houses and streets" in page and "building" in page
    import PIL.Image

    sheet = PIL.Image.open(tmp_path / "p.png")
    assert sheet.size[0] > 64 and np.asarray(sheet).std() > 0


def test_captions_export(layout_dataset, tmp_path):
    assert main(["export", str(layout_dataset), "--format", "captions", "--out", str(tmp_path / "cap")]) == 0
    records = json.loads((tmp_path / "cap" / "captions.json").read_text())
    assert [r["caption"] for r in records] == ["houses and streets"] * 2 and records[0]["metadata"]["gsd"] == 3.0


def test_cloud_optimized_geotiff(tmp_path):
    import rasterio

    from synth_datasets.geotiff import georeference_from_point, write_geotiff

    image = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    path = write_geotiff(tmp_path / "c.tif", image, georeference_from_point(10, 10, 1, 1024, 1024), cog=True)
    with rasterio.open(path) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and src.overviews(1)
        assert np.array_equal(np.moveaxis(src.read(), 0, -1), image) and src.crs.to_epsg() == 32632
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif"]


def test_export_cli_and_errors(layout_dataset, tmp_path, caplog):
    assert main(["export", str(layout_dataset), "--format", "coco", "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "annotations.json").is_file()
    assert main(["export", str(tmp_path / "nothing"), "--format", "coco", "--out", str(tmp_path / "x")]) == 2
    assert "no such folder" in caplog.text


@pytest.mark.slow
def test_preview_renders_in_headless_chromium(layout_dataset, tmp_path):
    """Opens the preview in Debian's chromium (apt-get install chromium) and checks the screenshot
    shows the embedded images, not broken-image icons on a blank page."""
    import shutil
    import subprocess

    import PIL.Image

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page, _ = write_preview(load_dataset(layout_dataset), tmp_path / "p.html")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,700", f"--screenshot={shot}"]  # fmt: skip
    subprocess.run([browser, *flags, page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(PIL.Image.open(shot).convert("RGB")).astype(int)
    coloured = (np.abs(pixels - 255).sum(axis=-1) > 60).mean()
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert coloured > 0.1, f"only {coloured:.1%} of the screenshot is non-white: images did not render"
    assert colours > 1000, f"{colours} distinct colours: the generated images are not on the page"
