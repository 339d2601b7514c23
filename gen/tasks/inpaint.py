"""Task ``inpaint``: regenerate the non-zero pixels of ``region`` in ``image``; every pixel outside the
region and its ``feather`` margin is written back bit-identical to the input."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rasterio.errors import NotGeoreferencedWarning

from conditions.raster_input import open_raster, read_uint8_rgb, read_whole
from core.hashing import sha256_file
from core.seeding import sample_generators
from gen.spec import MISSING, FieldError, integer, option, path, string_list
from gen.tasks import common
from gen.tasks.controls import load_controls
from synth_datasets.geotiff import GeoReference
from synth_datasets.output_layouts import ImageFolder
from synth_datasets.samples import ImageSample


@dataclass(frozen=True, kw_only=True)
class InpaintSpec(common.GenerationOptions):
    task = "inpaint"
    image: str = option(MISSING, "8-bit RGB image (PNG/GeoTIFF) to inpaint", path("file"))
    region: str = option(MISSING, "mask of the same size: non-zero pixels are regenerated", path("file"))
    feather: int = option(0, "cross-fade margin in pixels outside the region", integer(0), cli=int)
    control: tuple[str, ...] = option([], "image control, repeatable: canny:PATH, depth:DSM[,DTM], image:PATH",
                                      string_list(), repeat="list")  # fmt: skip

    def validate(self) -> None:
        super().validate()
        if self.location == "layers":
            raise FieldError("location", "'layers' draws inside vector layers; inpaint has none: give a box")


def _pad_tensor(control: torch.Tensor, multiple: int) -> torch.Tensor:
    """A (1, C, H, W) control padded at the bottom/right with its edge pixels to a multiple of ``multiple``."""
    pad_h, pad_w = -control.shape[-2] % multiple, -control.shape[-1] % multiple
    if not (pad_h or pad_w):
        return control
    return torch.nn.functional.pad(control, (0, pad_w, 0, pad_h), mode="replicate")


class InpaintTask(common.TaskBase):
    def __init__(self, spec: InpaintSpec) -> None:
        super().__init__(spec, ImageFolder(), spec.batch_size)
        self.input = read_uint8_rgb(spec.image, argument="image")
        with warnings.catch_warnings(), open_raster(spec.region, argument="region") as src:
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            region = read_whole(src, "region", 1) > 0  # (H, W)
        if region.shape != self.input.pixels.shape[:2]:
            raise FieldError("region", f"{spec.region!r}: size {region.shape} does not match the image "
                             f"{self.input.pixels.shape[:2]}")  # fmt: skip
        if not region.any():
            raise FieldError("region", f"{spec.region!r}: no pixel is marked for regeneration (all zero)")
        self.region = region
        self.controls = load_controls(spec.control, region.shape, vectors=False)
        self.georef = GeoReference(self.input.crs, self.input.transform) if self.input.crs is not None else None

    def load_model(self, pipe: Any = None) -> None:
        from pipelines.controlled import RSControlledPipeline

        self.attach(RSControlledPipeline, pipe)

    def describe(self, index: int) -> dict[str, Any]:
        text = common.draw_text_conditions(self.spec, index)[0]
        return {"prompt": text.prompt, "metadata": text.metadata.to_dict(), "image": self.spec.image}

    def samples(self, indices: list[int]) -> list[ImageSample]:
        spec, pipe, n = self.spec, self.pipe, len(indices)
        texts = [common.draw_text_conditions(spec, i)[0] for i in indices]
        image = self.input.pixels
        height, width = image.shape[:2]
        m = pipe.size_multiple  # any size: padded (edge pixels, kept region) and cropped back
        padded = common.pad_to_multiple(image, m, mode="edge")
        image_t = torch.from_numpy(padded).permute(2, 0, 1)[None].float() / 255.0  # (1, 3, H', W')
        region_t = torch.from_numpy(common.pad_to_multiple(self.region, m))[None, None].float()  # (1, 1, H', W')
        controls = {k: _pad_tensor(v, m).expand(n, -1, -1, -1) for k, v in self.controls.tensors.items()}
        result = pipe(
            prompt=[t.prompt for t in texts], negative_prompt=spec.negative_prompt, controls=controls,
            image=image_t.expand(n, -1, -1, -1), mask_image=region_t.expand(n, -1, -1, -1), feather_px=spec.feather,
            metadata=[t.metadata for t in texts] if pipe.has_metadata else None, num_inference_steps=spec.steps,
            guidance_scale=spec.guidance, generator=sample_generators(spec.seed, indices), output_type="pt",
        )  # fmt: skip
        sources = [{"kind": "image", "source": spec.image, "sha256": self.input.sha256},
                   {"kind": "region", "source": spec.region, "sha256": sha256_file(spec.region)},
                   *self.controls.sources]  # fmt: skip
        samples = []
        for k, (index, text) in enumerate(zip(indices, texts)):
            pixels = (result.images[k].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)  # (H', W', 3)
            pixels = pixels[:height, :width]  # (H, W, 3)
            keep = (result.blend_weights[k, 0] == 0).numpy()[:height, :width]
            pixels[keep] = image[keep]  # bit-identical outside the blended region, by construction
            rec = common.record(spec, pipe, index, text, conditions=sources, feather_px=spec.feather,
                         changed_pixels=int((~keep).sum()))  # fmt: skip
            rec["sampling"]["layout_strength"] = pipe.check_layout_strength(
                None, self.controls.tensors, spec.steps
            )  # 1
            samples.append(ImageSample(pixels, rec, self.georef))
        return samples
