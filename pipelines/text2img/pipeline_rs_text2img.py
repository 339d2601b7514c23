"""Text + metadata conditioned text-to-image for remote sensing.

Components: ``vae`` (AutoencoderKL or AutoencoderTiny), ``text_encoder`` + ``tokenizer`` (CLIP), ``unet``
(UNet2DConditionModel), ``scheduler`` (any diffusers scheduler) and, optionally,
``metadata_encoder`` (:class:`conditions.MetadataEncoder`). With a metadata encoder the UNet has
``class_embed_type="identity"`` and the metadata embedding is added to its time embedding.
Without one the pipeline runs plain Stable-Diffusion-style bundles. DiffusionSat bundles carry a
:class:`conditions.metadata_encoder.DiffusionSatMetadataEncoder` on the same path.

A UNet whose own class embedding takes labels (``class_embed_type="timestep"``) is driven by the card's
``class_labels``: ``"text2earth_level"`` passes the Google zoom level nearest each sample's GSD (Text2Earth),
the null level 0 in the unconditional half of guidance and for a sample without a GSD.

Classifier-free guidance is joint over text and metadata: the unconditional branch uses the
negative prompt and the all-unknown (null) metadata.

Reproducibility: pass one ``torch.Generator`` per output image (a list). Image ``i`` then depends
only on its generator's seed and its inputs, not on the batch it was generated in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from conditions.metadata import Metadata
from conditions.metadata_adapters import gsd_to_text2earth_level
from conditions.metadata_encoder import DiffusionSatMetadataEncoder, MetadataEncoder
from pipelines.bundle import ModelCard, load_bundle, resolve_bundle
from pipelines.conditioning import (
    CLASS_LABEL_KINDS,
    TextMetadataConditioningMixin,
    check_metadata_components,
    class_labels_from_metadata,
    scheduler_step_kwargs,
    vae_scale_factor,
)
from pipelines.vae_decode import decode_latents

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


@dataclass
class RSText2ImagePipelineOutput(BaseOutput):
    """``images``: list of PIL images, (N, H, W, 3) float array in [0, 1], (N, 3, H, W) tensor in
    [0, 1], or (N, C, h, w) latents, by ``output_type``. ``metadata``: the record used per image."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    metadata: list[Metadata]


class RSText2ImagePipeline(TextMetadataConditioningMixin, DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->metadata_encoder->unet->vae"
    _optional_components = ["metadata_encoder"]

    def __init__(
        self,
        vae: AutoencoderKL | AutoencoderTiny,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        metadata_encoder: MetadataEncoder | DiffusionSatMetadataEncoder | None = None,
    ) -> None:
        super().__init__()
        check_metadata_components(unet, metadata_encoder, class_labels=True)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            metadata_encoder=metadata_encoder,
        )
        self.vae_scale_factor = vae_scale_factor(self.vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_bundle(
        cls, model: str | os.PathLike, *, allow_pickle: bool = False, torch_dtype: torch.dtype | None = None
    ) -> RSText2ImagePipeline:
        """Load from an rsgen bundle folder or hub id (safetensors only unless ``allow_pickle``). A controlled
        bundle (``RSControlledPipeline``, e.g. the built-in default) also works: its UNet, text and metadata
        encoders and VAE are used without the ControlNets."""
        folder = resolve_bundle(model, allow_pickle=allow_pickle, pipeline=cls.__name__)
        if ModelCard.read(folder).pipeline == "RSControlledPipeline":
            from pipelines.controlled.pipeline_rs_controlled import RSControlledPipeline

            controlled = RSControlledPipeline.from_bundle(model, allow_pickle=allow_pickle, torch_dtype=torch_dtype)
            if controlled.is_inpainting_model:
                raise ValueError(f"model={model}: an inpainting bundle cannot generate text-to-image; pass another")
            pipe = cls(
                vae=controlled.vae, text_encoder=controlled.text_encoder, tokenizer=controlled.tokenizer,
                unet=controlled.unet, scheduler=controlled.scheduler, metadata_encoder=controlled.metadata_encoder,
            )  # fmt: skip
            for attr in ("model_card", "model_source", "weights_sha256"):
                setattr(pipe, attr, getattr(controlled, attr))
            return pipe
        pipe = load_bundle(cls, model, allow_pickle=allow_pickle, torch_dtype=torch_dtype)
        card_schema = pipe.model_card.metadata
        encoder_schema = pipe.metadata_encoder.schema() if pipe.metadata_encoder is not None else None
        if card_schema != encoder_schema:
            raise ValueError(
                f"{model}: rsgen_model.json 'metadata' ({card_schema}) disagrees with the metadata_encoder "
                f"config ({encoder_schema}); regenerate rsgen_model.json from the encoder"
            )
        kind, embed_type = pipe.model_card.class_labels, pipe.unet.config.class_embed_type
        if kind is not None and (kind not in CLASS_LABEL_KINDS or embed_type != "timestep"):
            raise ValueError(
                f"{model}: rsgen_model.json class_labels={kind!r} needs one of {CLASS_LABEL_KINDS} and a UNet with "
                f"class_embed_type='timestep' (this one has {embed_type!r})"
            )
        if kind is None and embed_type == "timestep":
            raise ValueError(
                f"{model}: the UNet takes class_labels (class_embed_type='timestep') but rsgen_model.json says "
                f"nothing about them; set its 'class_labels' to one of {CLASS_LABEL_KINDS}"
            )
        return pipe

    # ------------------------------------------------------------------ properties
    @property
    def class_labels_kind(self) -> str | None:
        """What the UNet's own class embedding takes (rsgen_model.json 'class_labels'), or None."""
        card = getattr(self, "model_card", None)
        return card.class_labels if card is not None else None

    @property
    def has_metadata(self) -> bool:
        """The model is conditioned on metadata: through a metadata encoder, or its GSD as class labels."""
        return self.metadata_encoder is not None or self.class_labels_kind is not None

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (VAE factor × UNet down-sampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def default_size(self) -> tuple[int, int]:
        card = getattr(self, "model_card", None)
        if card is not None:
            return card.native_size
        side = self.unet.config.sample_size * self.vae_scale_factor
        return side, side

    # ------------------------------------------------------------------ 1. check inputs
    def check_inputs(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None,
        metadata: Metadata | Sequence[Metadata | None] | None,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        output_type: str,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> None:
        if isinstance(prompt, str):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            prompts = prompt
        else:
            raise ValueError(f"prompt: expected a string or a non-empty list of strings, got {prompt!r}")
        batch = len(prompts)
        if isinstance(metadata, Sequence) and not isinstance(metadata, Metadata):
            if not all(m is None or isinstance(m, Metadata) for m in metadata):
                raise TypeError("metadata: expected Metadata records (conditions.Metadata) or None entries")
            if len(metadata) != batch and batch != 1:
                raise ValueError(
                    f"metadata: got {len(metadata)} records for {batch} prompts; pass one record per prompt"
                )
            batch = max(batch, len(metadata))
            records = list(metadata)
        elif metadata is None or isinstance(metadata, Metadata):
            records = [metadata]
        else:
            raise TypeError(f"metadata: expected conditions.Metadata, a list of them or None, got {type(metadata)}")
        if not self.has_metadata and any(m is not None and not m.is_unknown for m in records):
            raise ValueError(
                "metadata: this model has no metadata conditioning (no metadata_encoder in the bundle), so the "
                "metadata would be ignored; drop it or use a metadata-conditioned bundle"
            )
        if self.metadata_encoder is not None:
            self.metadata_encoder.prepare(records)  # raises MetadataError on out-of-schema values
        if self.class_labels_kind is None and self.unet.config.class_embed_type == "timestep":
            raise ValueError(
                "this UNet takes class_labels (class_embed_type='timestep') but the pipeline has no model card saying "
                f"what they are; load it with from_bundle, or set pipe.model_card.class_labels to one of "
                f"{CLASS_LABEL_KINDS}"
            )
        if self.class_labels_kind is not None:
            self._check_class_label_inputs(prompts, records)
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, list) or not all(isinstance(n, str) for n in negatives):
                raise ValueError(f"negative_prompt: expected a string or list of strings, got {negative_prompt!r}")
            if len(negatives) not in (1, batch):
                raise ValueError(f"negative_prompt: got {len(negatives)} for a batch of {batch} prompts")
        multiple = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % multiple:
                raise ValueError(
                    f"{name}={value!r}: must be a positive multiple of {multiple} for this model "
                    f"(e.g. {max(multiple, (int(value) // multiple) * multiple) if isinstance(value, int) else 256})"
                )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r}: expected an integer >= 1")
        if not isinstance(guidance_scale, int | float) or guidance_scale < 0:
            raise ValueError(f"guidance_scale={guidance_scale!r}: expected a number >= 0 (1 disables guidance)")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt={num_images_per_prompt!r}: expected an integer >= 1")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}: expected one of {OUTPUT_TYPES}")
        total = batch * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(
                f"generator: got a list of {len(generator)} generators for {total} images; pass one per image "
                "(batch size × num_images_per_prompt) or a single generator"
            )
        if latents is not None:
            shape = (
                total,
                self.unet.config.in_channels,
                height // self.vae_scale_factor,
                width // self.vae_scale_factor,
            )
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents: shape {tuple(latents.shape)} does not match the expected {shape}")

    def _check_class_label_inputs(self, prompts: list[str], records: list[Metadata | None]) -> None:
        """Text2Earth: the GSD maps to a level 10..18; its text tag must not reach the text encoder."""
        if self.class_labels_kind not in CLASS_LABEL_KINDS:
            raise ValueError(
                f"rsgen_model.json class_labels={self.class_labels_kind!r}: expected one of {CLASS_LABEL_KINDS}"
            )
        tagged = [p for p in prompts if "_GOOGLE_LEVEL_" in p]
        if tagged:
            raise ValueError(
                f"prompt {tagged[0]!r}: rsgen sets Text2Earth's resolution level from the GSD (--gsd / metadata.gsd); "
                "drop the '{level}_GOOGLE_LEVEL_' prefix from the prompt"
            )
        for record in records:
            if record is not None and record.gsd is not None:
                gsd_to_text2earth_level(record.gsd)  # raises MetadataError outside 0.35..181 m/px
        if any(r is None or r.gsd is None for r in records):
            logger.warning(
                "Text2Earth: no GSD for some samples; they get the null resolution level 0 (resolution unspecified, "
                "as in Text2Earth's own pipeline without a level prefix); pass --gsd to choose a resolution"
            )
        given = {k for r in records if r is not None for k, v in r.numeric_fields().items() if v is not None}
        given |= {"sensor"} if any(r is not None and r.sensor for r in records) else set()
        ignored = sorted(given - {"gsd"})
        if ignored:
            logger.info("Text2Earth is conditioned on the GSD only; %s are recorded, not used", ", ".join(ignored))

    # ------------------------------------------------------------------ 2. encode conditions

    # ------------------------------------------------------------------ 4. latents
    def prepare_latents(
        self,
        batch: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (N, C, h, w)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        metadata: Metadata | Sequence[Metadata | None] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> RSText2ImagePipelineOutput | tuple:
        default_h, default_w = self.default_size
        height = default_h if height is None else height
        width = default_w if width is None else width

        # 1. Check inputs
        self.check_inputs(
            prompt, negative_prompt, metadata, height, width, num_inference_steps, guidance_scale,
            num_images_per_prompt, output_type, generator, latents,
        )  # fmt: skip
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(metadata, Metadata) or metadata is None:
            records: list[Metadata | None] = [metadata] * len(prompts)
        else:
            records = list(metadata)
            if len(prompts) == 1:
                prompts = prompts * len(records)
        negatives = (
            [""]
            if negative_prompt is None
            else [negative_prompt]
            if isinstance(negative_prompt, str)
            else list(negative_prompt)
        )
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        # Repeat per image: prompt i's images are consecutive.
        n = num_images_per_prompt
        prompts = [p for p in prompts for _ in range(n)]
        negatives = [p for p in negatives for _ in range(n)]
        records = [r for r in records for _ in range(n)]
        total = len(prompts)
        device = self._execution_device
        do_cfg = guidance_scale > 1.0

        # 2. Encode conditions
        text_embeds = self.encode_prompt(prompts, negatives, device, do_cfg)  # (nB, L, D)
        metadata_embeds = self.encode_metadata(records, device, do_cfg)  # (nB, E) or None
        if self.class_labels_kind is not None:  # the UNet's own class embedding (Text2Earth: level, 0 = null)
            metadata_embeds = class_labels_from_metadata(self.class_labels_kind, records, device, do_cfg)  # (nB,)

        # 3. Timesteps
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps

        # 4. Latents
        latents = self.prepare_latents(total, height, width, text_embeds.dtype, device, generator, latents)
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator, eta)

        # 5. Denoise
        with self.progress_bar(total=len(timesteps)) as progress:
            for t in timesteps:
                model_in = torch.cat([latents] * 2) if do_cfg else latents  # (nB, C, h, w)
                model_in = self.scheduler.scale_model_input(model_in, t)
                noise = self.unet(
                    model_in, t, encoder_hidden_states=text_embeds, class_labels=metadata_embeds
                ).sample  # (nB, C, h, w)
                if do_cfg:
                    noise_uncond, noise_cond = noise.chunk(2)  # 2 × (B, C, h, w)
                    noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
                progress.update()

        # 6. Decode
        final_records = [r if r is not None else Metadata.unknown() for r in records]
        if output_type == "latent":
            images: Any = latents
        else:
            decoded = decode_latents(self.vae, latents)  # (B, 3, H, W) in [-1, 1]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, final_records
        return RSText2ImagePipelineOutput(images=images, metadata=final_records)
