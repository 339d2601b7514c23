"""How well a controlled model follows its mask: nearest-class-mean pixel accuracy against chance.

For each layout, the model generates an image from the mask (canonical colours). Each pixel is then
classified by the nearest class-mean colour, with the means taken from the generated image under the
mask; the balanced accuracy is high when the colours separate the labelled regions. "Chance" is the
same measure with the mask rotated by 90° and 180° (same class areas, wrong places). Layouts: the
example layouts shipped with rsgen and, if ../shared/data is present, 256² crops of the real LoveDA
masks. Also prints per-class mean colours of the generated images next to the real LoveDA ones.

    python bench/eval_mask_following.py --model default --steps 20 --scales 1,2 [--layout-strength 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conditions.masks import SemanticMask, encode_color
from conditions.metadata import Metadata
from conditions.palettes import CANONICAL, get_palette
from gen.assets import EXAMPLE_LAYOUTS
from gen.train.evaluate import mask_following
from pipelines.controlled import RSControlledPipeline

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def layouts() -> list[tuple[str, np.ndarray]]:
    out = [(p.name, np.asarray(Image.open(p))) for p in sorted(EXAMPLE_LAYOUTS.glob("*.png"))]
    masks = SHARED / "seg" / "loveda" / "masks"
    if masks.is_dir():
        palette = get_palette("loveda")
        for path in sorted(masks.glob("*.png")):
            canonical = palette.to_canonical(np.asarray(Image.open(path)))
            for y, x in ((0, 0), (512, 512)):
                out.append((f"loveda/{path.name}@{y},{x}", canonical[y : y + 256, x : x + 256]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scales", default="1", help="ControlNet conditioning scales to compare")
    parser.add_argument("--layout-strength", type=float, help="layout prior strength (default: the model card's)")
    parser.add_argument("--save", type=Path, help="write a contact sheet PNG here")
    args = parser.parse_args()
    pipe = RSControlledPipeline.from_bundle(args.model)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for scale in [float(s) for s in args.scales.split(",")]:
        accs, chances = [], []
        for name, mask in layouts():
            control = encode_color(SemanticMask(mask, CANONICAL))[None]  # (1, 3, 256, 256)
            out = pipe("aerial image", controls={"mask": control}, control_scales={"mask": scale},
                       metadata=Metadata(gsd=0.5, sensor="aerial"), num_inference_steps=args.steps,
                       guidance_scale=args.guidance, generator=torch.Generator().manual_seed(0),
                       layout_strength=args.layout_strength,
                       output_type="np").images[0]  # fmt: skip
            image = (out * 255).round().astype(np.uint8)
            acc, chance = mask_following(image, mask)
            accs.append(acc)
            chances.append(chance)
            print(f"scale {scale:g}  {name:28s} accuracy {acc:.3f}  chance {chance:.3f}")
            rows.append(np.concatenate([CANONICAL.colorize(mask), image], axis=1))
        print(f"scale {scale:g}: mean accuracy {np.mean(accs):.3f} vs chance {np.mean(chances):.3f} "
              f"({sum(a > c for a, c in zip(accs, chances))}/{len(accs)} layouts above chance)")  # fmt: skip
    if args.save:
        Image.fromarray(np.concatenate(rows[:8], axis=0)).save(args.save)
        print(f"wrote {args.save}")


if __name__ == "__main__":
    main()
