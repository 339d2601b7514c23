"""Task ``txt2img``: images from a prompt and acquisition metadata (each may be drawn per sample)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.seeding import sample_generators
from gen.spec import FieldError, boolean, choice, integer, option, optional
from gen.tasks import common
from synth_datasets.geotiff import georeference_from_point
from synth_datasets.output_layouts import ImageFolder
from synth_datasets.samples import ImageSample


@dataclass(frozen=True, kw_only=True)
class Txt2ImgSpec(common.GenerationOptions):
    task = "txt2img"
    height: int | None = option(None, "image height in pixels (default: the model's native size)",
                                optional(integer(8)), cli=int)  # fmt: skip
    width: int | None = option(None, "image width in pixels (default: the model's native size)",
                               optional(integer(8)), cli=int)  # fmt: skip
    format: str = option("png", "png, or geotiff placed in the local UTM zone (needs gsd and lat/lon or location)",
                         choice("png", "geotiff"))  # fmt: skip
    cog: bool = option(False, "write Cloud-Optimized GeoTIFFs (with format geotiff)", boolean, boolean=True)

    def validate(self) -> None:
        super().validate()
        placed = self.gsd is not None and (self.lat is not None or self.location not in (None, "layers"))
        if self.format == "geotiff" and not placed:
            raise FieldError("format", "geotiff needs gsd and a location (lat/lon or location) to place each image")
        if self.location == "layers":
            raise FieldError("location", "'layers' draws inside vector layers; txt2img has none: give a box")
        if self.cog and self.format != "geotiff":
            raise FieldError("cog", "Cloud-Optimized GeoTIFFs need format geotiff")
        if "stac" in self.writers and self.format != "geotiff":
            raise FieldError("writers", "stac needs georeferenced samples: set format geotiff")


class Txt2ImgTask(common.TaskBase):
    """Batches of samples through ``RSText2ImagePipeline``; sample i's image does not depend on the batch."""

    def __init__(self, spec: Txt2ImgSpec) -> None:
        super().__init__(spec, ImageFolder(), spec.batch_size)

    def load_model(self, pipe: Any = None) -> None:
        from pipelines.text2img import RSText2ImagePipeline

        self.attach(RSText2ImagePipeline, pipe)

    def conditions(self, index: int) -> common.TextConditions:
        return common.draw_text_conditions(self.spec, index)[0]

    def describe(self, index: int) -> dict[str, Any]:
        text = self.conditions(index)
        return {"prompt": text.prompt, "metadata": text.metadata.to_dict()}

    def samples(self, indices: list[int]) -> list[ImageSample]:
        spec, pipe = self.spec, self.pipe
        texts = [self.conditions(i) for i in indices]
        height, width = pipe.default_size
        height, width = spec.height or height, spec.width or width
        result = pipe(
            prompt=[t.prompt for t in texts], negative_prompt=spec.negative_prompt,
            metadata=[t.metadata for t in texts] if pipe.has_metadata else None, height=height, width=width,
            num_inference_steps=spec.steps, guidance_scale=spec.guidance,
            generator=sample_generators(spec.seed, indices), output_type="np",
        )  # fmt: skip
        samples = []
        for index, image, text in zip(indices, result.images, texts):
            md = text.metadata
            georef = None
            if spec.format == "geotiff":
                georef = georeference_from_point(md.lat, md.lon, md.gsd, height, width)
            extra = {"metadata_conditioned": pipe.has_metadata, "height": height, "width": width}
            samples.append(
                ImageSample(image, common.record(spec, pipe, index, text, **extra), georef=georef, cog=spec.cog)
            )
        return samples
