"""Reference-guided super-resolution (CRefDiff / DiffusionSat style), on tensors.

Inputs are already on the output grid: ``image`` is the LR resampled (e.g. bicubic) to the HR
size, ``reference`` the HR reference warped to the same grid. The pipeline

* encodes ``image`` with the VAE and concatenates that latent to the noisy latent at every step
  (UNet ``in_channels = 2 × latent_channels``), as Stable Diffusion's ×4 upscaler conditions on its
  LR input;
* runs the reference through a ControlNet whose residuals are multiplied by the reference
  strength — a scalar or a per-pixel map resized to each residual's resolution. Strength 0 (or no
  reference) skips the ControlNet entirely, so the output does not depend on the reference;
* guides over text and metadata only (the LR latent is in both branches).

Upscaler bundles (Stable Diffusion's ×4 upscaler, ``rsgen model import sd-upscaler``) have a
``low_res_scheduler`` and no ControlNet, and condition the other way, as diffusers'
``StableDiffusionUpscalePipeline`` does: the LR image itself (in [-1, 1], at the latent's size, so the
VAE decodes ``vae_scale_factor``× up) is noised by ``low_res_scheduler`` to ``noise_level`` and
concatenated to the noisy latent (UNet ``in_channels = latent_channels + bands``), and ``noise_level``
reaches the UNet's class embedding as ``class_labels``. ``image`` stays the LR on the output grid (used
by ``strength`` < 1 and LR consistency); ``low_res`` passes the LR at its own resolution (default:
``image`` area-averaged by ``vae_scale_factor``).

Band count is the bundle's: the VAE's in/out channels and the ControlNet's conditioning channels
equal ``len(model_card.bands)``. File I/O, tiling and georeferencing live in ``gen.tasks.sr``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    ControlNetModel,
    DDPMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from conditions.metadata import Metadata
from conditions.metadata_encoder import MetadataEncoder
from pipelines.bundle import load_bundle
from pipelines.conditioning import (
    TextMetadataConditioningMixin,
    check_metadata_components,
    scheduler_step_kwargs,
    tail_timesteps,
    vae_scale_factor,
)
from pipelines.vae_decode import decode_latents, encode_images, vae_compute_dtype

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("np", "pt", "pil", "latent")
DEFAULT_NOISE_LEVEL = 20  # upscaler bundles: diffusers' StableDiffusionUpscalePipeline default


@dataclass
class RSSuperResolutionPipelineOutput(BaseOutput):
    """``images``: (B, H, W, C) float array in [0, 1] (``np``), (B, C, H, W) tensor (``pt``), PIL
    images (3-band bundles only) or latents."""

    images: np.ndarray | torch.Tensor | list[PIL.Image.Image]


def lr_consistent(x: torch.Tensor, image: torch.Tensor, lr_scale: float) -> torch.Tensor:
    """(B, bands, H, W) model output ``x`` and up-sampled LR ``image`` in [0, 1] → ``x`` with its
    content below the LR's resolution replaced by ``image``'s: ``image + x − up(down(x))``."""
    height, width = x.shape[-2:]
    low_size = (max(1, round(height / lr_scale)), max(1, round(width / lr_scale)))
    low = F.interpolate(x, size=low_size, mode="area")  # (B, bands, H/s, W/s)
    low = F.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)  # (B, bands, H, W)
    return (image + x - low).clamp(0, 1)


class RSSuperResolutionPipeline(TextMetadataConditioningMixin, DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->metadata_encoder->vae->controlnet->unet->vae"
    _optional_components = ["metadata_encoder", "controlnet", "low_res_scheduler"]

    def __init__(
        self,
        vae: AutoencoderKL | AutoencoderTiny,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel | None,
        scheduler: KarrasDiffusionSchedulers,
        metadata_encoder: MetadataEncoder | None = None,
        low_res_scheduler: DDPMScheduler | None = None,
        max_noise_level: int = 350,
    ) -> None:
        super().__init__()
        latent, bands = vae.config.latent_channels, vae.config.in_channels
        if low_res_scheduler is not None:  # an upscaler: noised LR image concatenated, noise level as class label
            if metadata_encoder is not None:
                raise ValueError("an upscaler bundle (low_res_scheduler) takes the noise level, not metadata")
            if not unet.config.num_class_embeds or unet.config.class_embed_type is not None:
                raise ValueError(
                    "an upscaler bundle (low_res_scheduler) needs a unet with num_class_embeds (the noise level "
                    f"embedding), got class_embed_type={unet.config.class_embed_type!r}, "
                    f"num_class_embeds={unet.config.num_class_embeds!r}"
                )
            if not 0 <= max_noise_level < unet.config.num_class_embeds:
                raise ValueError(
                    f"max_noise_level={max_noise_level}: expected 0..{unet.config.num_class_embeds - 1} "
                    "(the unet's num_class_embeds)"
                )
            cond_channels, cond_name = bands, f"the noised LR image ({bands} bands)"
        else:
            check_metadata_components(unet, metadata_encoder)
            cond_channels, cond_name = latent, f"the LR latent ({latent})"
        if unet.config.in_channels != latent + cond_channels or unet.config.out_channels != latent:
            raise ValueError(
                f"unet in/out channels {unet.config.in_channels}/{unet.config.out_channels}: an SR unet takes the "
                f"noisy latent ({latent}) plus {cond_name} = {latent + cond_channels} and predicts {latent} channels"
            )
        if controlnet is not None and controlnet.config.conditioning_channels != vae.config.in_channels:
            raise ValueError(
                f"controlnet.conditioning_channels={controlnet.config.conditioning_channels} must equal the "
                f"number of bands {vae.config.in_channels}"
            )
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            metadata_encoder=metadata_encoder,
            low_res_scheduler=low_res_scheduler,
        )
        self.register_to_config(max_noise_level=max_noise_level)
        self.vae_scale_factor = vae_scale_factor(self.vae)

    @classmethod
    def from_bundle(
        cls, model: str | os.PathLike, *, allow_pickle: bool = False, torch_dtype: torch.dtype | None = None
    ) -> RSSuperResolutionPipeline:
        pipe = load_bundle(cls, model, allow_pickle=allow_pickle, torch_dtype=torch_dtype)
        if len(pipe.model_card.bands) != pipe.num_bands:
            raise ValueError(
                f"{model}: rsgen_model.json lists {len(pipe.model_card.bands)} bands but the VAE takes {pipe.num_bands}"
            )
        return pipe

    @property
    def num_bands(self) -> int:
        return self.vae.config.in_channels

    @property
    def is_upscaler(self) -> bool:
        """An upscaler bundle: the LR image (not its latent) conditions the UNet, with a noise level."""
        return self.low_res_scheduler is not None

    @property
    def fixed_scale(self) -> int | None:
        """The only LR → output factor an upscaler bundle runs at (its VAE's); ``None``: any factor."""
        return self.vae_scale_factor if self.is_upscaler else None

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ 1. check inputs
    def check_inputs(
        self,
        image: torch.Tensor,
        reference: torch.Tensor | None,
        reference_strength: float | torch.Tensor,
        prompt: str | list[str],
        metadata: Metadata | Sequence[Metadata | None] | None,
        num_inference_steps: int,
        guidance_scale: float,
        output_type: str,
        generator: torch.Generator | list[torch.Generator] | None,
        strength: float = 1.0,
        lr_scale: float | None = None,
        noise_level: int | None = None,
        low_res: torch.Tensor | None = None,
    ) -> None:
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise ValueError(f"image: expected a (B, bands, H, W) tensor, got {getattr(image, 'shape', type(image))}")
        batch, bands, height, width = image.shape
        if bands != self.num_bands:
            raise ValueError(
                f"image: has {bands} band(s) but this model takes {self.num_bands}; map bands with --bands"
            )
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(
                f"image: size {height}x{width} must be a multiple of {self.size_multiple}; tile or pad the input"
            )
        if not torch.isfinite(image).all():
            raise ValueError("image: contains NaN or infinite values; fill nodata before calling the pipeline")
        if reference is not None and self.controlnet is None:
            raise ValueError("reference: this model has no reference ControlNet; drop the reference (--ref)")
        if reference is not None and tuple(reference.shape) != tuple(image.shape):
            raise ValueError(
                f"reference: shape {tuple(reference.shape)} must equal the image's {tuple(image.shape)} "
                "(warp the reference to the output grid first)"
            )
        if isinstance(reference_strength, torch.Tensor):
            if tuple(reference_strength.shape) != (batch, 1, height, width):
                raise ValueError(
                    f"reference_strength: a map must have shape {(batch, 1, height, width)}, "
                    f"got {tuple(reference_strength.shape)}"
                )
            if not torch.isfinite(reference_strength).all() or (reference_strength < 0).any():
                raise ValueError("reference_strength: the map must be finite and >= 0")
        elif not isinstance(reference_strength, int | float) or not reference_strength >= 0:
            raise ValueError(f"reference_strength={reference_strength!r}: expected a number >= 0 (0 = ignore)")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or len(prompts) not in (1, batch):
            raise ValueError(f"prompt: expected a string or one per image ({batch}), got {prompt!r}")
        records = metadata if isinstance(metadata, Sequence) else [metadata]
        if not self.has_metadata and any(m is not None and not m.is_unknown for m in records):
            raise ValueError("metadata: this model has no metadata conditioning; drop it")
        if self.has_metadata:
            self.metadata_encoder.prepare(list(records))
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r}: expected an integer >= 1")
        if not isinstance(guidance_scale, int | float) or guidance_scale < 0:
            raise ValueError(f"guidance_scale={guidance_scale!r}: expected a number >= 0 (1 disables guidance)")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}: expected one of {OUTPUT_TYPES}")
        if output_type == "pil" and bands != 3:
            raise ValueError(f"output_type='pil' needs 3 bands, this model has {bands}; use 'np'")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator: got {len(generator)} generators for {batch} images; pass one per image")
        if not isinstance(strength, int | float) or not 0 < strength <= 1:
            raise ValueError(f"strength={strength!r}: expected a number in (0, 1] (1 = start from pure noise)")
        if int(num_inference_steps * strength) < 1:
            raise ValueError(
                f"strength={strength} × num_inference_steps={num_inference_steps} runs no denoising step; "
                "raise either so that their product is >= 1"
            )
        if lr_scale is not None and (not isinstance(lr_scale, int | float) or not 1 <= lr_scale < width):
            raise ValueError(
                f"lr_scale={lr_scale!r}: expected the LR → output factor, >= 1 (None disables LR consistency)"
            )
        self._check_upscaler_inputs(image, noise_level, low_res)

    def _check_upscaler_inputs(
        self, image: torch.Tensor, noise_level: int | None, low_res: torch.Tensor | None
    ) -> None:
        if not self.is_upscaler:
            for name, value in (("noise_level", noise_level), ("low_res", low_res)):
                if value is not None:
                    raise ValueError(f"{name}: only upscaler bundles (sd-upscaler) take it; drop it")
            return
        high = self.config.max_noise_level
        if noise_level is not None and (
            isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level <= high
        ):
            raise ValueError(f"noise_level={noise_level!r}: expected an integer in 0..{high} (max_noise_level)")
        if low_res is not None:
            batch, bands, height, width = image.shape
            f = self.vae_scale_factor
            expected = (batch, bands, height // f, width // f)
            if not isinstance(low_res, torch.Tensor) or tuple(low_res.shape) != expected:
                raise ValueError(
                    f"low_res: expected the LR at 1/{f} of the image's size, shape {expected}, "
                    f"got {tuple(getattr(low_res, 'shape', ()))}"
                )
            if not torch.isfinite(low_res).all():
                raise ValueError("low_res: contains NaN or infinite values; fill nodata before calling the pipeline")

    def _noised_low_res(
        self,
        image: torch.Tensor,
        low_res: torch.Tensor | None,
        noise_level: int | None,
        generator: torch.Generator | list[torch.Generator] | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """An upscaler's conditioning: the LR in [-1, 1] noised by ``low_res_scheduler`` to ``noise_level``
        (B, bands, h, w), and the noise level per image (B,) for the UNet's class embedding. The noise is
        drawn before the initial latents, as in diffusers' ``StableDiffusionUpscalePipeline``."""
        if low_res is None:
            size = (image.shape[-2] // self.vae_scale_factor, image.shape[-1] // self.vae_scale_factor)
            low_res = F.interpolate(image.float(), size=size, mode="area")  # (B, bands, h, w)
        low = low_res.to(device=device, dtype=dtype) * 2 - 1  # (B, bands, h, w) in [-1, 1]
        level = DEFAULT_NOISE_LEVEL if noise_level is None else noise_level
        levels = torch.full((low.shape[0],), level, dtype=torch.long, device=device)  # (B,)
        noise = randn_tensor(low.shape, generator=generator, device=device, dtype=dtype)  # (B, bands, h, w)
        return self.low_res_scheduler.add_noise(low, noise, levels), levels

    def _scaled_residual(self, residual: torch.Tensor, strength: float | torch.Tensor) -> torch.Tensor:
        if isinstance(strength, torch.Tensor):
            resized = F.interpolate(strength, size=residual.shape[-2:], mode="area")  # (nB, 1, h, w)
            return residual * resized.to(residual.dtype)
        return residual * strength

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        reference: torch.Tensor | None = None,
        reference_strength: float | torch.Tensor = 0.5,
        prompt: str | list[str] = "",
        negative_prompt: str | list[str] | None = None,
        metadata: Metadata | Sequence[Metadata | None] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        strength: float = 1.0,
        lr_scale: float | None = None,
        noise_level: int | None = None,
        low_res: torch.Tensor | None = None,
    ) -> RSSuperResolutionPipelineOutput | tuple:
        """``strength`` < 1 starts from the up-sampled LR latent noised to that share of the schedule
        (as diffusers' img2img does) and runs only the last ``int(num_inference_steps * strength)``
        steps: outputs stay closer to the LR image, and a weak model cannot drift far from it.

        ``lr_scale`` (the LR → output factor of ``image``) turns on LR consistency: the output keeps
        ``image`` below the LR's resolution and takes only the finer detail from the model,
        ``out = image + x − up(down(x))`` with ``down`` = area averaging by ``lr_scale`` and ``up`` =
        bicubic (a range/null-space split, as in DDNM). Area-averaging the output by ``lr_scale`` then
        gives back (close to) the LR: the model cannot shift radiometry, only add detail.

        Upscaler bundles only: ``noise_level`` (0..``max_noise_level``, default 20) is how much noise
        ``low_res_scheduler`` adds to the LR before the UNet sees it (more = more invented detail), and
        ``low_res`` (B, bands, H/f, W/f) in [0, 1] is the LR at its own resolution, f = ``vae_scale_factor``
        (default: ``image`` area-averaged by f)."""
        # 1. Check inputs
        self.check_inputs(
            image, reference, reference_strength, prompt, metadata, num_inference_steps, guidance_scale,
            output_type, generator, strength=strength, lr_scale=lr_scale, noise_level=noise_level, low_res=low_res,
        )  # fmt: skip
        batch = image.shape[0]
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if negative_prompt is None or isinstance(negative_prompt, str):
            negatives = [negative_prompt or ""] * batch
        else:
            negatives = list(negative_prompt)
        records = list(metadata) if isinstance(metadata, Sequence) else [metadata] * batch
        if isinstance(reference_strength, torch.Tensor):
            use_reference = reference is not None and bool((reference_strength > 0).any())
        else:
            use_reference = reference is not None and reference_strength > 0

        # 2. Encode conditions: text, metadata (or an upscaler's noise level), the LR latent (or noised LR image)
        text_embeds = self.encode_prompt(prompts, negatives, device, do_cfg)  # (nB, L, D)
        class_labels = self.encode_metadata(records, device, do_cfg)  # (nB, E) or None
        dtype = self.unet.dtype
        lr = image.to(device=device, dtype=vae_compute_dtype(self.vae)) * 2 - 1  # (B, bands, H, W) in [-1, 1]
        if self.is_upscaler:
            lr_cond, class_labels = self._noised_low_res(image, low_res, noise_level, generator, device, dtype)
            start_latent = encode_images(self.vae, lr) if strength < 1 else None
        else:
            lr_cond = encode_images(self.vae, lr)  # (B, C, h, w)
            start_latent = lr_cond
        lr_cond = torch.cat([lr_cond] * 2) if do_cfg else lr_cond  # (nB, C or bands, h, w)
        if self.is_upscaler and do_cfg:
            class_labels = torch.cat([class_labels] * 2)  # (nB,)
        if use_reference:
            ref = reference.to(device=device, dtype=dtype)  # (B, bands, H, W) in [0, 1]
            ref = torch.cat([ref] * 2) if do_cfg else ref
            ref_strength = reference_strength
            if isinstance(ref_strength, torch.Tensor):
                ref_strength = ref_strength.to(device)
                ref_strength = torch.cat([ref_strength] * 2) if do_cfg else ref_strength  # (nB, 1, H, W)

        # 3. Timesteps (the last int(steps · strength) of them)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, _ = tail_timesteps(self.scheduler, num_inference_steps, strength)

        # 4. Latents: pure noise, or the LR latent noised to the first kept timestep
        shape = (batch, self.vae.config.latent_channels, lr_cond.shape[-2], lr_cond.shape[-1])
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, C, h, w)
        if strength < 1:
            start = timesteps[:1].repeat(batch)  # (B,)
            latents = self.scheduler.add_noise(start_latent.to(dtype), latents, start)  # (B, C, h, w)
        else:
            latents = latents * self.scheduler.init_noise_sigma

        # 5. Denoise
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)
        with self.progress_bar(total=len(timesteps)) as progress:
            for t in timesteps:
                model_in = torch.cat([latents] * 2) if do_cfg else latents  # (nB, C, h, w)
                model_in = self.scheduler.scale_model_input(model_in, t)
                model_in = torch.cat([model_in, lr_cond.to(dtype)], dim=1)  # (nB, 2C or C + bands, h, w)
                down, mid = None, None
                if use_reference:
                    down, mid = self.controlnet(
                        model_in, t, encoder_hidden_states=text_embeds, controlnet_cond=ref,
                        class_labels=class_labels, return_dict=False,
                    )  # fmt: skip
                    down = [self._scaled_residual(r, ref_strength) for r in down]
                    mid = self._scaled_residual(mid, ref_strength)
                noise = self.unet(
                    model_in, t, encoder_hidden_states=text_embeds, class_labels=class_labels,
                    down_block_additional_residuals=down, mid_block_additional_residual=mid,
                ).sample  # fmt: skip
                if do_cfg:
                    noise_uncond, noise_cond = noise.chunk(2)
                    noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise, t, latents, **step_kwargs).prev_sample
                progress.update()

        # 6. Decode
        if output_type == "latent":
            images = latents
        else:
            decoded = decode_latents(self.vae, latents)  # (B, bands, H, W)
            decoded = ((decoded.float() + 1) / 2).clamp(0, 1)  # (B, bands, H, W)
            if lr_scale is not None:
                decoded = lr_consistent(decoded, image.to(decoded.device, torch.float32), lr_scale)
            if output_type == "pt":
                images = decoded
            else:
                images = decoded.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, bands)
                if output_type == "pil":
                    images = [PIL.Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return RSSuperResolutionPipelineOutput(images=images)
