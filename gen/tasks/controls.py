"""Helpers of the controlled tasks: image controls read once, and tiled scenes as streamed images."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from conditions.image_controls import control_from_spec
from conditions.metadata import Metadata
from core.seeding import sample_generators
from synth_datasets.samples import RowSink, StreamedImage


@dataclass
class PreparedControls:
    """Image controls shared by every sample: name -> (1, 3, H, W) in [0, 1], and their provenance."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)


def load_controls(specs: tuple[str, ...], target_shape: tuple[int, int] | None, *, vectors: bool) -> PreparedControls:
    """Read each ``canny:PATH``-style control at ``target_shape`` (the layout's size) when given."""
    prepared = PreparedControls()
    target = target_shape
    for spec in specs:
        try:
            control = control_from_spec(spec, target_shape=target)
        except ValueError as err:
            hint = (
                " (georeferenced controls are not resampled to a layout's grid yet: crop/resample the raster to "
                f"{target[0]}x{target[1]} pixels on that grid first)"
                if vectors and target is not None and "does not match" in str(err)
                else ""
            )
            raise ValueError(f"control {spec!r}: {err}{hint}") from None
        prepared.tensors[control.name] = control.tensor[None]  # (1, 3, H, W)
        target = tuple(control.tensor.shape[-2:])
        prepared.sources.append({"kind": control.name, "source": control.source, "sha256": control.sha256,
                                 "params": control.params})  # fmt: skip
    return prepared


def scene_sample(
    pipe: Any,
    spec: Any,
    index: int,
    prompt: str,
    metadata: Metadata | None,
    controls: dict[str, torch.Tensor],
    tile: int,
    overlap: int,
    layout_strength: float,
) -> tuple[StreamedImage, dict[str, Any]]:
    """Denoise sample ``index`` as a tiled scene now; its image is decoded tile by tile when written."""
    from pipelines.controlled.scene import check_scene, decode_scene, scene_latents

    height, width = next(iter(controls.values())).shape[-2:]
    try:
        check_scene(pipe, height, width, tile, overlap)
    except ValueError as err:
        raise ValueError(f"tile {tile} / overlap {overlap}: {err}") from None
    controls_u8 = {k: (v * 255).round().to(torch.uint8) for k, v in controls.items()}  # compact canvas
    latents = scene_latents(
        pipe, prompt, controls_u8, tile=tile, overlap=overlap, control_scales=spec.control_scale,
        control_guidance=spec.control_guidance, negative_prompt=spec.negative_prompt, metadata=metadata,
        num_inference_steps=spec.steps, guidance_scale=spec.guidance, layout_strength=layout_strength,
        generator=sample_generators(spec.seed, [index])[0],
    )  # fmt: skip

    def produce(sink: RowSink) -> None:
        def write(rows: np.ndarray, valid: np.ndarray, row_off: int) -> None:
            sink((rows * 255).round().astype(np.uint8), row_off)  # (3, n, W)

        decode_scene(pipe, latents, tile=tile, overlap=overlap, write=write)

    image = StreamedImage(height, width, 3, "uint8", produce, descriptions=["red", "green", "blue"])
    return image, {"tile": tile, "overlap": overlap, "height": height, "width": width}
