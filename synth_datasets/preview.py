"""``rsgen preview``: a self-contained HTML page and a PNG contact sheet of an rsgen dataset.

Images and masks are embedded as PNG data URIs (the page has no links that can break); masks are
shown beside the image and as an overlay in the canonical palette, with a legend of the classes
present; captions (prompts) sit under the images. A change pair shows t1, t2 and the change mask; a
time series shows every date (what changed since the previous date outlined) and the change from the first
date to the last.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import PIL.ImageDraw

from conditions.palettes import CANONICAL
from core.atomic import atomic_write_bytes, atomic_write_text
from synth_datasets.reader import RsgenDataset

THUMB = 192


def _thumb(array: np.ndarray, size: int = THUMB, nearest: bool = False) -> PIL.Image.Image:
    image = PIL.Image.fromarray(array)
    scale = size / max(image.size)  # small images are enlarged too, so every panel has the same size
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(shape, PIL.Image.NEAREST if nearest else PIL.Image.BILINEAR)


def _uri(image: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    array = array[..., :3]
    if array.dtype != np.uint8:
        low, high = np.percentile(array, (2, 98))
        array = np.clip((array - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    return array


def sample_panels(sample) -> list[tuple[str, PIL.Image.Image]]:
    """(title, thumbnail) panels of one sample: image, mask colours, overlay — or, for a change pair,
    t1 and t2 side by side with the change mask outlined in red, and the mask."""
    if sample.is_sequence:
        return sequence_panels(sample)
    if sample.is_change_pair:
        t1, t2, change = sample.pair()
        mask = np.repeat((change * 255).astype(np.uint8)[..., None], 3, axis=-1)
        return [("t1", _thumb(_outlined(t1, change))), ("t2", _thumb(_outlined(t2, change))),
                ("change", _thumb(mask, nearest=True))]  # fmt: skip
    image = _to_uint8_rgb(sample.image(verify=False))
    panels = [("image", _thumb(image))]
    semantic = sample.label("semantic")
    if semantic is not None:
        colours = CANONICAL.colorize(semantic)
        panels.append(("mask", _thumb(colours, nearest=True)))
        overlay = (0.55 * image + 0.45 * colours).astype(np.uint8)
        panels.append(("overlay", _thumb(overlay)))
    return panels


def _outlined(image: np.ndarray, change: np.ndarray) -> np.ndarray:
    """``image`` as uint8 RGB with the outline of ``change`` drawn in red."""
    edge = change & ~cv2.erode(change.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    image = _to_uint8_rgb(image).copy()
    image[edge] = (255, 0, 0)
    return image


def sequence_panels(sample) -> list[tuple[str, PIL.Image.Image]]:
    """A time series: every date (outlined: what changed since the previous date), then the change mask from the
    first date to the last."""
    record = sample.record()
    dates = sample.dates()
    panels = [(f"date 0 {record['dates'][0] or ''}".strip(), _thumb(_to_uint8_rgb(dates[0])))]
    for t in range(1, len(dates)):
        change = sample.label(f"label{t - 1:03d}_{t:03d}") > 0
        panels.append((f"date {t} {record['dates'][t] or ''}".strip(), _thumb(_outlined(dates[t], change))))
    last = len(dates) - 1
    total = (sample.label(f"label000_{last:03d}") > 0).astype(np.uint8) * 255
    panels.append((f"change 0-{last}", _thumb(np.repeat(total[..., None], 3, axis=-1), nearest=True)))
    return panels


def write_preview(ds: RsgenDataset, out_html: str | os.PathLike, *, limit: int = 48) -> tuple[Path, Path]:
    """Write ``out_html`` and a contact sheet PNG beside it (same stem); returns both paths."""
    out_html = Path(out_html)
    samples = ds.samples[:limit]
    present: set[int] = set()
    cards, sheet_rows = [], []
    for sample in samples:
        panels = sample_panels(sample)
        semantic = sample.label("semantic")
        if semantic is not None:
            present |= {int(v) for v in np.unique(semantic)}
        figures = "".join(
            f'<figure><img src="{_uri(img)}" alt="{html.escape(title)} {sample.id}">'
            f"<figcaption>{title}</figcaption></figure>"
            for title, img in panels
        )
        caption = html.escape(sample.caption or "(no prompt)")
        cards.append(f'<div class="card"><div class="row">{figures}</div><p><b>{sample.id}</b> {caption}</p></div>')
        sheet_rows.append([img for _, img in panels])
    legend = "".join(
        f'<span class="key"><i style="background:rgb{c.color}"></i>{c.id} {c.name}</span>'
        for c in CANONICAL.classes
        if c.id in present
    )
    root = html.escape(str(ds.root))
    panels_per_card = max((len(row) for row in sheet_rows), default=3)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>rsgen preview: {root}</title>
<style>body{{font-family:sans-serif;margin:1em}} .card{{display:inline-block;margin:.5em;vertical-align:top;
max-width:{panels_per_card * (THUMB + 4) + 40}px}} .row{{display:flex;gap:4px}} figure{{margin:0}}
figcaption{{font-size:.7em;color:#555}}
.key{{margin-right:1em;font-size:.85em}} .key i{{display:inline-block;width:1em;height:1em;margin-right:.3em;
vertical-align:middle;border:1px solid #333}}</style></head><body>
<h1>rsgen dataset preview</h1><p>{len(ds)} samples in <code>{root}</code>; showing {len(samples)}.</p>
<p>{legend}</p>{"".join(cards)}</body></html>
"""
    atomic_write_text(out_html, page)
    sheet = out_html.with_suffix(".png")
    atomic_write_bytes(sheet, _contact_sheet(sheet_rows, columns=max(1, 12 // panels_per_card)))
    return out_html, sheet


def _contact_sheet(rows: list[list[PIL.Image.Image]], columns: int = 4) -> bytes:
    cell_w = max((sum(i.width for i in row) + 4 * len(row) for row in rows), default=THUMB)
    cell_h = max((max(i.height for i in row) for row in rows), default=THUMB) + 4
    n_rows = max(1, -(-len(rows) // columns))
    sheet = PIL.Image.new("RGB", (cell_w * min(columns, max(len(rows), 1)), cell_h * n_rows), "white")
    draw = PIL.ImageDraw.Draw(sheet)
    for k, row in enumerate(rows):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        for image in row:
            sheet.paste(image, (x, y))
            x += image.width + 4
        draw.rectangle([x - 2, y, x - 1, y + cell_h - 4], fill="white")
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
