"""Export an rsgen dataset to the formats training code loads: HF ``datasets`` parquet, WebDataset
tar shards, COCO JSON, a STAC catalog, and (change pairs and time series) the public change-captioning
and change-QA formats of ``caption_exports`` and ``qa_exports``. Exporters read through :mod:`synth_datasets.reader` and
never call a model; every file appears atomically.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
from rasterio import features
from rasterio.warp import transform_bounds

from conditions.palettes import CANONICAL
from core.atomic import atomic_path, atomic_write_text
from core.errors import InputError
from synth_datasets.geotiff import read_raster
from synth_datasets.reader import RsgenDataset

logger = logging.getLogger(__name__)

# The public change-captioning and change-QA formats are in caption_exports / qa_exports.
CHANGE_FORMATS = ("levir-cc", "levir-mci", "second-cc", "changechat", "rsvqa")
EXPORT_FORMATS = ("hf", "webdataset", "coco", "stac", "captions", *CHANGE_FORMATS)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb(array: np.ndarray) -> np.ndarray:
    return array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=-1)


# ---------------------------------------------------------------------- Hugging Face datasets
def export_hf(ds: RsgenDataset, out: str | os.PathLike, *, shard_size: int = 500) -> list[Path]:
    """Parquet shards with ``image`` (and ``semantic``) as ``datasets.Image`` features, plus a card."""
    import datasets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if all(s.is_sequence for s in ds):
        return _export_hf_sequences(ds, out, shard_size)
    has_semantic = all("semantic" in s.files for s in ds)
    feats = {"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string"),
             "provenance": datasets.Value("string")}  # fmt: skip
    if has_semantic:
        feats["semantic"] = datasets.Image()
    features_ = datasets.Features(feats)
    paths = []
    for k, start in enumerate(range(0, len(ds), shard_size)):
        rows: dict[str, list[Any]] = {name: [] for name in feats}
        for sample in ds.samples[start : start + shard_size]:
            rows["id"].append(sample.id)
            rows["image"].append({"bytes": _png_bytes(_rgb(sample.image())), "path": None})
            rows["caption"].append(sample.caption)
            rows["provenance"].append(json.dumps(sample.provenance, sort_keys=True))
            if has_semantic:
                rows["semantic"].append({"bytes": _png_bytes(sample.label("semantic").astype(np.uint8)), "path": None})
        path = out / "data" / f"train-{k:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            datasets.Dataset.from_dict(rows, features=features_).to_parquet(str(tmp))
        paths.append(path)
    columns = "`id`, `image`, `caption`, `provenance` (JSON)" + (
        ", `semantic` (canonical class ids)" if has_semantic else ""
    )
    atomic_write_text(out / "README.md", _dataset_card(ds, columns))
    return paths


def _export_hf_sequences(ds: RsgenDataset, out: Path, shard_size: int) -> list[Path]:
    """Time series: one row per sequence, its dates' images, layouts and change masks as lists of images (in
    the order of ``dates`` and ``pairs``), the events and per-pair captions/QA as JSON."""
    import datasets

    image_list = datasets.Sequence(datasets.Image())
    strings = datasets.Value("string")
    feats = datasets.Features({"id": strings, "dates": datasets.Sequence(strings), "images": image_list,
                               "semantic": image_list, "changes": image_list, "pairs": strings, "events": strings,
                               "caption": strings, "provenance": strings})  # fmt: skip
    paths = []
    for k, start in enumerate(range(0, len(ds), shard_size)):
        rows: dict[str, list[Any]] = {name: [] for name in feats}
        for sample in ds.samples[start : start + shard_size]:
            record = sample.record()

            def png(role: str, sample=sample) -> dict[str, Any]:
                return {"bytes": _png_bytes(read_raster(sample.path(role))), "path": None}

            rows["id"].append(sample.id)
            rows["dates"].append([d or "" for d in record["dates"]])
            rows["images"].append([png(f"date{t:03d}") for t in range(record["num_dates"])])
            rows["semantic"].append([png(f"semantic{t:03d}") for t in range(record["num_dates"])])
            rows["changes"].append([png(f"label{p['from']:03d}_{p['to']:03d}") for p in record["pairs"]])
            rows["pairs"].append(json.dumps(record["pairs"]))
            rows["events"].append(json.dumps(record["events"]))
            rows["caption"].append((record["pairs"][-1]["captions"] or [""])[0])  # sample.caption, the record read once
            rows["provenance"].append(json.dumps(record["provenance"], sort_keys=True))
        path = out / "data" / f"train-{k:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(tmp))
        paths.append(path)
    columns = (
        "(one row per time series) `id`, `dates`, `images`, `semantic` (canonical class ids), `changes` (0/255 "
        "masks, in the order of `pairs`), `pairs` (JSON: from/to date, captions, qa), `events` (JSON, each with its "
        "`date` index), `caption`, `provenance` (JSON)"
    )
    atomic_write_text(out / "README.md", _dataset_card(ds, columns))
    return paths


def _dataset_card(ds: RsgenDataset, columns: str) -> str:
    first = ds.samples[0].provenance
    model = first.get("model", {})
    sources = sorted({c.get("source") for s in ds for c in s.provenance.get("conditions", []) if c.get("source")})
    spec = (ds.root / "spec.yaml").read_text() if (ds.root / "spec.yaml").is_file() else "(no job spec)"
    warning = (
        "\n**The model had random weights (smoke test): the images are noise.**\n" if model.get("smoke_test") else ""
    )
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
---
# rsgen synthetic dataset

{len(ds)} samples generated by rsgen {first.get("rsgen_version", "?")} (task `{first.get("task", "?")}`).
{warning}
- model: `{model.get("name", "?")}` from `{model.get("source", "?")}`
- weights sha256: `{model.get("weights_sha256", "?")}`
- columns: {columns}
- semantic classes: {", ".join(f"{c.id} {c.name}" for c in CANONICAL.classes)}; 255 = ignore

## Licence of inputs
Synthetic images inherit the terms of the model and of every conditioning input. Inputs used:
{chr(10).join(f"- `{s}`" for s in sources) or "- none beyond the prompts and metadata"}
Check each input's licence (several remote-sensing datasets are research/non-commercial only).

## Job spec
```yaml
{spec.strip()}
```
"""


# ---------------------------------------------------------------------- WebDataset
def export_webdataset(ds: RsgenDataset, out: str | os.PathLike, *, shard_size: int = 1000) -> list[Path]:
    """``shard-NNNNN.tar`` files; each sample is ``{id}.{png|tif}``, ``{id}.json`` and its label files."""
    out = Path(out)
    paths = []
    for k, start in enumerate(range(0, len(ds), shard_size)):
        path = out / f"shard-{k:05d}.tar"
        with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
            for sample in ds.samples[start : start + shard_size]:
                for role, rel in sorted(sample.files.items()):
                    source = ds.root / rel
                    suffix = source.suffix  # ".png", ".tif", ".json"
                    if role == "sidecar":
                        name = f"{sample.id}.json"
                    elif role == "image":
                        name = f"{sample.id}{suffix}"
                    else:
                        name = f"{sample.id}.{role}{suffix}"  # e.g. 00000012.semantic.png
                    info = tar.gettarinfo(str(source), arcname=name)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""  # reproducible
                    with open(source, "rb") as handle:
                        tar.addfile(info, handle)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------- COCO
def export_coco(ds: RsgenDataset, out: str | os.PathLike) -> Path:
    """COCO instances JSON: images, canonical categories, one annotation per instance (bbox from the
    instance mask's pixels, polygon segmentation traced from the mask, pixel area)."""
    images, annotations = [], []
    for image_id, sample in enumerate(ds, start=1):
        height, width = sample.image(verify=False).shape[:2]
        images.append({"id": image_id, "file_name": sample.files["image"], "width": width, "height": height})
        instances = sample.label("instances")
        if instances is None:
            continue
        classes = {o["instance_id"]: o["class_name"] for o in sample.objects()}
        for instance_id in sorted(int(v) for v in np.unique(instances) if v):
            mask = instances == instance_id
            rows, cols = np.nonzero(mask)
            x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
            polygons = [
                [float(v) for xy in geom["coordinates"][0] for v in xy]
                for geom, value in features.shapes(mask.astype(np.uint8), mask=mask)
                if value == 1
            ]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CANONICAL.class_by_name(classes.get(instance_id, "building")).id,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum()), "segmentation": polygons, "iscrowd": 0,
            })  # fmt: skip
    coco = {
        "info": {"description": "rsgen synthetic dataset", "date_created": dt.date.today().isoformat()},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c.id, "name": c.name, "supercategory": "land_cover"} for c in CANONICAL.classes],
    }
    path = Path(out) / "annotations.json"
    atomic_write_text(path, json.dumps(coco) + "\n")
    return path


# ---------------------------------------------------------------------- STAC
def export_stac(ds: RsgenDataset, out: str | os.PathLike) -> Path:
    """A self-contained STAC catalog: one item per georeferenced sample (bbox, geometry, datetime,
    projection, provenance) with the image as an asset."""
    import pystac

    out = Path(out)
    catalog = pystac.Catalog(id="rsgen", description=f"rsgen synthetic dataset ({len(ds)} samples)")
    skipped = 0
    for sample in ds:
        record = sample.provenance
        if not record.get("crs"):
            skipped += 1
            continue
        west, south, east, north = transform_bounds(record["crs"], "EPSG:4326", *record["bounds"])
        date = (record.get("metadata") or {}).get("date")
        when = (
            dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC)
            if date
            else dt.datetime.fromisoformat(record["created"])
        )
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        item = pystac.Item(
            id=sample.id, geometry={"type": "Polygon", "coordinates": [ring]}, bbox=[west, south, east, north],
            datetime=when, properties={"proj:code": record["crs"], "rsgen:provenance": record},
        )  # fmt: skip
        item.add_asset("image", pystac.Asset(href=str((ds.root / sample.files["image"]).resolve()),
                                             media_type=pystac.MediaType.GEOTIFF, roles=["data"]))  # fmt: skip
        catalog.add_item(item)
    if skipped:
        logger.warning("STAC export: %d sample(s) without CRS were left out", skipped)
    if not list(catalog.get_items()):
        raise ValueError("STAC export: no georeferenced samples (generate with format geotiff)")
    catalog.normalize_hrefs(str(out))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return out / "catalog.json"


def export_captions(ds: RsgenDataset, out: str | os.PathLike) -> Path:
    """Caption JSON (``[{"id", "image", "caption", "metadata"}]``), the layout captioning datasets use."""
    records = [
        {"id": s.id, "image": s.files["image"], "caption": s.caption, "metadata": s.provenance.get("metadata")}
        for s in ds
    ]
    path = Path(out) / "captions.json"
    atomic_write_text(path, json.dumps(records, indent=1) + "\n")
    return path


def export(ds: RsgenDataset, fmt: str, out: str | os.PathLike, *, split: str | None = None) -> Path | list[Path]:
    """Export ``ds`` as ``fmt`` into ``out``; ``split`` (train|val|test|auto) only for the captioning formats."""
    from synth_datasets.caption_exports import CAPTION_EXPORTERS
    from synth_datasets.qa_exports import QA_EXPORTERS

    exporters = {
        "hf": export_hf, "webdataset": export_webdataset, "coco": export_coco, "stac": export_stac,
        "captions": export_captions, **CAPTION_EXPORTERS, **QA_EXPORTERS,
    }  # fmt: skip
    if fmt not in exporters:
        raise ValueError(f"--format {fmt!r}: expected one of {EXPORT_FORMATS}")
    if split is None:
        return exporters[fmt](ds, out)
    if fmt not in CAPTION_EXPORTERS:
        formats = ", ".join(CAPTION_EXPORTERS)
        raise InputError(f"--split {split!r}: only the formats {formats} have splits; leave it out for {fmt}")
    return exporters[fmt](ds, out, split=split)
