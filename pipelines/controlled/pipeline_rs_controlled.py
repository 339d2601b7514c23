"""Controlled text + metadata generation with one or several ControlNets, and inpainting.

Components: those of the text-to-image pipeline plus ``controlnet`` (a ``MultiControlNetModel``
whose nets are listed, in order, by ``rsgen_model.json`` ``controls``, e.g. ``["mask", "canny"]``).
Every control has its own conditioning scale and active fraction of the schedule
(``control_guidance={"canny": (0.0, 0.6)}``). Asking for a control the bundle lacks is an error.
``controlnet`` is optional (``[null, null]`` in model_index.json, no ``controls``): such a bundle is an
inpainting model driven by the prompt alone (e.g. an imported SD-2 inpainting checkpoint). A ControlNet
takes the UNet's input as its own when its ``in_channels`` match it (rsgen's inpainting bundles), else
the noisy latent alone, as diffusers' ControlNet inpainting pipeline does for 9-channel UNets.

Inpainting (``image`` + ``mask_image``) works with any of these UNets: at every step the latent
outside the mask is replaced by the input's latent noised to that step, and after decoding the
result is blended in pixel space, so every pixel outside the mask (and beyond ``feather_px``) is
returned **bit-identical** to the input. Inside a feathering margin of ``feather_px`` pixels around
the mask, generated and input pixels are cross-faded; no pixel further away is touched.

Soft masks (``soft_mask``, from the card: HySCDG): ``mask_image`` may take any value in [0, 1]; an
inpainting UNet sees it as given (no binarisation), its masked image is image × (1 − mask), and the
output cross-fades generated and input pixels by the mask value (0 = input kept bit-exact). The card's
``masked_image`` says in which range the masked image is formed (see :class:`pipelines.bundle.ModelCard`).

Layout prior (``layout_strength`` < 1, for bundles whose card lists ``class_colors``): the ``mask``
control is painted in each class's mean colour from the training data, VAE-encoded, noised to
that share of the schedule and only the remaining steps are run (SDEdit-style). Small models then
keep each region's typical colour and the ControlNet adds texture; 1 samples from pure noise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    ControlNetModel,
    DiffusionPipeline,
    MultiControlNetModel,
    UNet2DConditionModel,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from conditions.metadata import Metadata
from conditions.metadata_encoder import MetadataEncoder
from conditions.palettes import CANONICAL
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

OUTPUT_TYPES = ("np", "pt", "latent")


@dataclass
class RSControlledPipelineOutput(BaseOutput):
    """``images``: (B, H, W, 3) float array in [0, 1] (``np``), (B, 3, H, W) tensor (``pt``) or latents.
    ``blend_weights``: (B, 1, H, W) weight of generated pixels when inpainting (0 = input kept bit-exact)."""

    images: np.ndarray | torch.Tensor
    blend_weights: torch.Tensor | None = None


def feather_weights(mask: torch.Tensor, feather_px: int) -> torch.Tensor:
    """(B, 1, H, W) weights: 1 inside ``mask``, falling linearly to 0 over ``feather_px`` pixels outside
    (chessboard distance), exactly 0 beyond."""
    weights = (mask > 0.5).float()
    if feather_px <= 0:
        return weights
    grown = weights
    for ring in range(1, feather_px + 1):
        dilated = F.max_pool2d(grown, kernel_size=3, stride=1, padding=1)
        new = (dilated > 0) & (grown == 0)
        weights = torch.where(new, torch.full_like(weights, 1 - ring / (feather_px + 1)), weights)
        grown = dilated
    return weights


class RSControlledPipeline(TextMetadataConditioningMixin, DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->metadata_encoder->controlnet->unet->vae"
    _optional_components = ["metadata_encoder", "controlnet"]

    def __init__(
        self,
        vae: AutoencoderKL | AutoencoderTiny,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: MultiControlNetModel | ControlNetModel | None,
        scheduler: KarrasDiffusionSchedulers,
        metadata_encoder: MetadataEncoder | None = None,
    ) -> None:
        super().__init__()
        check_metadata_components(unet, metadata_encoder)
        latent = vae.config.latent_channels
        if unet.config.in_channels not in (latent, 2 * latent + 1):
            raise ValueError(
                f"unet.in_channels={unet.config.in_channels}: expected {latent} (generation) or {2 * latent + 1} "
                "(an inpainting UNet: latent + mask + masked-image latent)"
            )
        if controlnet is not None and not isinstance(controlnet, MultiControlNetModel):
            controlnet = MultiControlNetModel([controlnet])
        for index, net in enumerate(controlnet.nets if controlnet is not None else []):
            if net.config.in_channels not in (latent, unet.config.in_channels):
                raise ValueError(
                    f"controlnet {index}: in_channels={net.config.in_channels}; expected {latent} (the noisy latent) "
                    f"or the UNet's {unet.config.in_channels}"
                )
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
            scheduler=scheduler, metadata_encoder=metadata_encoder,
        )  # fmt: skip
        self.vae_scale_factor = vae_scale_factor(self.vae)
        self.control_names: list[str] = [f"control_{i}" for i in range(len(self.control_nets))]
        self.guide_controls = False  # set from rsgen_model.json by from_bundle
        self.soft_mask = False  # masks in [0, 1] reach an inpainting UNet as given (card 'soft_mask')
        self.masked_image = "rsgen"  # card 'masked_image': the range the masked image is formed in
        self.layout_strength = 1.0  # default of __call__'s layout_strength; from_bundle sets the card's

    @classmethod
    def from_bundle(
        cls, model: str | os.PathLike, *, allow_pickle: bool = False, torch_dtype: torch.dtype | None = None
    ) -> RSControlledPipeline:
        pipe = load_bundle(cls, model, allow_pickle=allow_pickle, torch_dtype=torch_dtype)
        names = list(pipe.model_card.controls)
        if len(names) != len(pipe.control_nets):
            raise ValueError(
                f"{model}: rsgen_model.json lists controls {names} but the bundle has {len(pipe.control_nets)} "
                "ControlNet(s); list one name per ControlNet, in order"
            )
        pipe.control_names = names
        pipe.guide_controls = bool(pipe.model_card.guide_controls)
        pipe.soft_mask = bool(pipe.model_card.soft_mask)
        pipe.masked_image = pipe.model_card.masked_image
        pipe.layout_strength = float(pipe.model_card.layout_strength)
        return pipe

    @property
    def control_nets(self) -> list[ControlNetModel]:
        """The ControlNets, in the order of ``control_names`` (none for a bundle without ``controlnet``)."""
        return list(self.controlnet.nets) if self.controlnet is not None else []

    @property
    def is_inpainting_model(self) -> bool:
        """A 9-channel (SD-inpainting style) UNet that sees the mask and the masked image."""
        return self.unet.config.in_channels == 2 * self.vae.config.latent_channels + 1

    @property
    def size_multiple(self) -> int:
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    # ------------------------------------------------------------------ 1. check inputs
    def check_inputs(
        self,
        prompt: str | list[str],
        controls: Mapping[str, torch.Tensor],
        control_scales: Mapping[str, float],
        control_guidance: Mapping[str, tuple[float, float]],
        metadata: Metadata | Sequence[Metadata | None] | None,
        image: torch.Tensor | None,
        mask_image: torch.Tensor | None,
        feather_px: int,
        num_inference_steps: int,
        guidance_scale: float,
        output_type: str,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> tuple[int, int, int]:
        if not controls and image is None:
            if not self.control_names:
                raise ValueError("controls: this model has no ControlNet; it only inpaints: pass image and mask_image")
            raise ValueError(f"controls: give at least one of this model's controls {self.control_names}")
        unknown = sorted(set(controls) - set(self.control_names))
        if unknown:
            raise ValueError(
                f"controls: {unknown} not in this model; it was trained with {self.control_names} "
                "(see rsgen_model.json 'controls')"
            )
        for name in list(control_scales) + list(control_guidance):
            if name not in controls:
                raise ValueError(f"control_scales/control_guidance: {name!r} is not among the given controls")
        shapes = {tuple(t.shape) for t in controls.values()} or {tuple(image.shape)}
        if len(shapes) != 1:
            raise ValueError(f"controls: all control images must share one shape, got {sorted(shapes)}")
        shape = shapes.pop()
        if len(shape) != 4 or shape[1] != 3:
            raise ValueError(f"controls: expected (B, 3, H, W) tensors in [0, 1], got {shape}")
        batch, _, height, width = shape
        if height % self.size_multiple or width % self.size_multiple:
            raise ValueError(f"controls: size {height}x{width} must be a multiple of {self.size_multiple}")
        for name, (start, end) in control_guidance.items():
            if not 0.0 <= start < end <= 1.0:
                raise ValueError(f"control_guidance[{name!r}]=({start}, {end}): expected 0 <= start < end <= 1")
        for name, scale in control_scales.items():
            if not scale >= 0:
                raise ValueError(f"control_scales[{name!r}]={scale}: expected >= 0")
        if (image is None) != (mask_image is None):
            raise ValueError("image and mask_image go together: inpainting needs both")
        if self.is_inpainting_model and image is None:
            raise ValueError("this is an inpainting model (9-channel UNet): pass image and mask_image (rsgen inpaint)")
        if image is not None:
            if tuple(image.shape) != (batch, 3, height, width):
                raise ValueError(f"image: shape {tuple(image.shape)} must be {(batch, 3, height, width)}")
            if tuple(mask_image.shape) != (batch, 1, height, width):
                raise ValueError(f"mask_image: shape {tuple(mask_image.shape)} must be {(batch, 1, height, width)}")
            if self.soft_mask:
                if not ((mask_image >= 0) & (mask_image <= 1)).all():
                    raise ValueError("mask_image: a soft mask takes values in [0, 1] (1 = regenerate, 0 = keep)")
            elif not ((mask_image == 0) | (mask_image == 1)).all():
                raise ValueError("mask_image: must be binary (1 = regenerate, 0 = keep)")
        if not isinstance(feather_px, int) or feather_px < 0:
            raise ValueError(f"feather_px={feather_px!r}: expected an integer >= 0")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if len(prompts) not in (1, batch):
            raise ValueError(f"prompt: got {len(prompts)} prompts for a batch of {batch}")
        records = list(metadata) if isinstance(metadata, Sequence) else [metadata]
        if not self.has_metadata and any(m is not None and not m.is_unknown for m in records):
            raise ValueError("metadata: this model has no metadata conditioning; drop it")
        if self.has_metadata:
            self.metadata_encoder.prepare(records)
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r}: expected an integer >= 1")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale={guidance_scale!r}: expected >= 0")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}: expected one of {OUTPUT_TYPES}")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator: got {len(generator)} generators for {batch} images; pass one per image")
        return batch, height, width

    def check_layout_strength(
        self, layout_strength: float | None, controls: Mapping[str, torch.Tensor], num_inference_steps: int
    ) -> float:
        """The layout strength of a call, checked against its inputs. ``None`` takes ``self.layout_strength``
        (the card's) for calls with a ``mask`` control and 1 for the others (e.g. inpainting with an edge
        control only); an explicit value < 1 without a mask is an error."""
        if layout_strength is None:
            value = self.layout_strength if "mask" in controls else 1.0
        else:
            value = layout_strength
        problem = self._layout_strength_problem(value)
        if problem:
            raise ValueError(f"layout_strength={value!r}: {problem}")
        if value < 1:
            if "mask" not in controls:
                raise ValueError("layout_strength < 1 paints the 'mask' control; pass controls={'mask': ...} or use 1")
            if int(num_inference_steps * value) < 1:
                raise ValueError(
                    f"layout_strength={value} × num_inference_steps={num_inference_steps} runs no "
                    "denoising step; raise either so that their product is >= 1"
                )
        return float(value)

    @staticmethod
    def check_strength(
        strength: float, image: torch.Tensor | None, layout_strength: float | None, num_inference_steps: int
    ) -> None:
        """A ``strength`` < 1 needs an input image, excludes a layout prior and must leave a step to run."""
        if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0 < strength <= 1:
            raise ValueError(f"strength={strength!r}: expected a number in (0, 1] (1 = start from noise)")
        if image is None:
            raise ValueError(f"strength={strength}: starts from the input image; pass image= and mask_image=")
        if layout_strength is not None and layout_strength < 1:
            raise ValueError(f"strength={strength} and layout_strength={layout_strength}: both set the starting "
                             "point; give one of them (< 1) and leave the other at 1")  # fmt: skip
        if int(num_inference_steps * strength) < 1:
            raise ValueError(f"strength={strength} × num_inference_steps={num_inference_steps} runs no denoising "
                             "step; raise either so that their product is >= 1")  # fmt: skip

    def set_layout_strength(self, value: float, argument: str = "layout_strength") -> None:
        """Set the default ``layout_strength`` (e.g. from a job option named ``argument``), checked now."""
        problem = self._layout_strength_problem(value)
        if problem:
            raise ValueError(f"{argument} {value!r}: {problem}")
        self.layout_strength = float(value)

    def _layout_strength_problem(self, value: object) -> str | None:
        if not isinstance(value, int | float) or not 0 < value <= 1:
            return "expected a number in (0, 1] (1 = sample from pure noise)"
        card = getattr(self, "model_card", None)
        if value < 1 and (card is None or not card.class_colors):
            return "this model's card has no class_colors to paint the layout with (`rsgen train` writes them); use 1"
        return None

    def paint_layout(self, mask_control: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) canonical colour mask in [0, 1] (or uint8) → (B, 3, H, W) in [0, 1]: every class
        region filled with the model card's mean colour of that class; pixels of classes the card does
        not list (and ignore pixels) get the mean of the listed colours."""
        colors = self.model_card.class_colors or {}
        codes = mask_control.float() * (255.0 if mask_control.dtype != torch.uint8 else 1.0)
        codes = codes.round().to(torch.int64)  # (B, 3, H, W)
        fallback = torch.tensor(np.mean(list(colors.values()), axis=0), dtype=torch.float32) / 255.0
        painted = fallback.view(1, 3, 1, 1).expand(codes.shape).to(codes.device).clone()  # (B, 3, H, W)
        for cls in CANONICAL.classes:
            if cls.name not in colors:
                continue
            key = torch.tensor(cls.color, dtype=torch.int64, device=codes.device).view(1, 3, 1, 1)
            where = (codes == key).all(dim=1, keepdim=True)  # (B, 1, H, W)
            value = torch.tensor(colors[cls.name], dtype=torch.float32, device=codes.device).view(1, 3, 1, 1)
            painted = torch.where(where, value / 255.0, painted)
        return painted

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> scaled latent (B, C, h, w) (distribution mode: deterministic)."""
        return encode_images(self.vae, image.to(vae_compute_dtype(self.vae)) * 2 - 1)

    def encode_masked_image(self, image: torch.Tensor, mask_image: torch.Tensor) -> torch.Tensor:
        """Latent (B, C, h, w) of the masked image an inpainting UNet sees: image × (1 − mask), formed in [0, 1]
        (``masked_image="rsgen"``: masked pixels black) or in [-1, 1] (``"diffusers"``: mid-grey, as Stable
        Diffusion inpainting was trained). Soft masks scale the image, they are not thresholded."""
        keep = 1 - mask_image.to(image.dtype)  # (B, 1, H, W)
        if self.masked_image == "diffusers":
            return encode_images(self.vae, (image * 2 - 1) * keep)
        return self.encode_image(image * keep)

    def blend_weights(self, mask_image: torch.Tensor, feather_px: int) -> torch.Tensor:
        """(B, 1, H, W) weight of the generated pixels in the output: :func:`feather_weights` of a binary mask;
        a soft mask's own value where it is > 0, and the feathering ring around that support."""
        if not self.soft_mask:
            return feather_weights(mask_image, feather_px)
        mask = mask_image.float()
        support = (mask > 0).float()
        return torch.where(support > 0, mask, feather_weights(support, feather_px))

    def prepare_controls(
        self, controls: Mapping[str, torch.Tensor], device: torch.device, do_cfg: bool
    ) -> dict[str, torch.Tensor]:
        """Controls as model-dtype tensors in [0, 1] (uint8 inputs are divided by 255), doubled for guidance."""
        prepared = {}
        for name, cond in controls.items():
            cond = cond.to(device)
            cond = cond.float() / 255.0 if cond.dtype == torch.uint8 else cond  # (B, 3, H, W)
            cond = cond.to(self.unet.dtype)
            prepared[name] = torch.cat([cond] * 2) if do_cfg else cond
        return prepared

    def guided_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        fraction: float,
        text_embeds: torch.Tensor,
        metadata_embeds: torch.Tensor | None,
        cond_images: Mapping[str, torch.Tensor],
        control_scales: Mapping[str, float],
        control_guidance: Mapping[str, tuple[float, float]],
        guidance_scale: float,
        inpaint_channels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Classifier-free-guided noise prediction (B, C, h, w) with every active ControlNet's residuals.
        ``inpaint_channels`` (nB, 1 + C, h, w): mask and masked-image latent for an inpainting UNet."""
        do_cfg = guidance_scale > 1.0
        model_in = torch.cat([latents] * 2) if do_cfg else latents  # (nB, C, h, w)
        model_in = latent_in = self.scheduler.scale_model_input(model_in, t)
        if inpaint_channels is not None:
            model_in = torch.cat([model_in, inpaint_channels], dim=1)  # (nB, 2C + 1, h, w)
        down, mid = None, None
        for index, name in enumerate(self.control_names):
            if name not in cond_images:
                continue
            start, end = control_guidance.get(name, (0.0, 1.0))
            if not start <= fraction < end:
                continue
            guided = do_cfg and self.guide_controls
            half = slice(model_in.shape[0] // 2, None) if guided else slice(None)  # guided: conditional half only
            net = self.controlnet.nets[index]
            net_in = model_in if net.config.in_channels == model_in.shape[1] else latent_in  # (nB, C or 2C + 1, h, w)
            d, m = net(
                net_in[half], t, encoder_hidden_states=text_embeds[half], controlnet_cond=cond_images[name][half],
                conditioning_scale=float(control_scales.get(name, 1.0)),
                class_labels=None if metadata_embeds is None else metadata_embeds[half], return_dict=False,
            )  # fmt: skip
            if guided:  # the unconditional half gets no control residuals: guidance amplifies the control
                d = [torch.cat([torch.zeros_like(r), r]) for r in d]
                m = torch.cat([torch.zeros_like(m), m])
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        pred = self.unet(
            model_in,
            t,
            encoder_hidden_states=text_embeds,
            class_labels=metadata_embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample  # fmt: skip (nB, C, h, w)
        if do_cfg:
            pred_uncond, pred_cond = pred.chunk(2)
            pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
        return pred

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, 8h, 8w) float32 in [0, 1]."""
        decoded = decode_latents(self.vae, latents)  # (B, 3, 8h, 8w)
        return ((decoded.float() + 1) / 2).clamp(0, 1)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        controls: Mapping[str, torch.Tensor],
        control_scales: Mapping[str, float] | None = None,
        control_guidance: Mapping[str, tuple[float, float]] | None = None,
        negative_prompt: str | list[str] | None = None,
        metadata: Metadata | Sequence[Metadata | None] | None = None,
        image: torch.Tensor | None = None,
        mask_image: torch.Tensor | None = None,
        feather_px: int = 0,
        num_inference_steps: int = 20,
        guidance_scale: float = 7.5,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        layout_strength: float | None = None,
        strength: float = 1.0,
    ) -> RSControlledPipelineOutput | tuple:
        """``layout_strength`` (default: ``self.layout_strength``, the model card's): < 1 starts from the
        mask painted in the card's class colours, noised to that share of the schedule (see module doc).
        ``strength`` < 1 (inpainting only, diffusers' img2img ``strength``): start from the input ``image``
        itself noised to that share of the schedule instead, e.g. to harmonise pasted content (SDEdit); the
        layout prior is then off."""
        control_scales = dict(control_scales or {})
        control_guidance = dict(control_guidance or {})
        # 1. Check inputs
        batch, height, width = self.check_inputs(
            prompt, controls, control_scales, control_guidance, metadata, image, mask_image, feather_px,
            num_inference_steps, guidance_scale, output_type, generator,
        )  # fmt: skip
        if strength != 1.0:
            self.check_strength(strength, image, layout_strength, num_inference_steps)
            layout_strength = 1.0
        layout_strength = self.check_layout_strength(layout_strength, controls, num_inference_steps)
        start_strength = min(strength, layout_strength)  # at most one of them is < 1
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        prompts = [prompt] * batch if isinstance(prompt, str) else list(prompt)
        if len(prompts) == 1:
            prompts = prompts * batch
        negatives = [negative_prompt or ""] * batch if not isinstance(negative_prompt, list) else negative_prompt
        records = list(metadata) if isinstance(metadata, Sequence) else [metadata] * batch

        # 2. Encode conditions
        text_embeds = self.encode_prompt(prompts, negatives, device, do_cfg)  # (nB, L, D)
        metadata_embeds = self.encode_metadata(records, device, do_cfg)  # (nB, E) or None
        dtype = self.unet.dtype
        cond_images = self.prepare_controls(controls, device, do_cfg)  # name -> (nB, 3, H, W)
        known_latent = inpaint_channels = None
        if image is not None and self.is_inpainting_model:  # the UNet itself sees mask + masked image
            masked_latent = self.encode_masked_image(image.to(device), mask_image.to(device))  # (B, C, h, w)
            small_mask = F.interpolate(mask_image.to(device, dtype), size=masked_latent.shape[-2:])  # (B, 1, h, w)
            inpaint_channels = torch.cat([small_mask, masked_latent.to(dtype)], dim=1)  # (B, 1 + C, h, w)
            inpaint_channels = torch.cat([inpaint_channels] * 2) if do_cfg else inpaint_channels
        elif image is not None:  # any UNet: keep the known region on the input's noisy trajectory
            known_latent = self.encode_image(image.to(device)).to(dtype)  # (B, C, h, w)
            latent_mask = F.interpolate(mask_image.to(device, dtype), size=known_latent.shape[-2:], mode="area")
            latent_mask = (latent_mask > 0).to(dtype)  # (B, 1, h, w): 1 wherever any regenerated pixel lies

        # 3. Timesteps (with a layout prior: the last int(steps · layout_strength) of them)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps, skip = tail_timesteps(self.scheduler, num_inference_steps, start_strength)

        # 4. Latents
        shape = (
            batch,
            self.vae.config.latent_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)  # (B, C, h, w)
        noise = latents.clone()
        if strength < 1:  # start from the input image itself (SDEdit)
            start = timesteps[:1].repeat(batch)  # (B,)
            latents = self.scheduler.add_noise(self.encode_image(image.to(device)).to(dtype), noise.to(device, dtype),
                                               start)  # fmt: skip
        elif layout_strength < 1:  # start from the painted mask (inside the region, when inpainting)
            prior = self.paint_layout(controls["mask"].to(device))  # (B, 3, H, W)
            if image is not None:
                region = mask_image.to(device, prior.dtype)  # (B, 1, H, W), 1 = regenerate
                prior = region * prior + (1 - region) * image.to(device, prior.dtype)
            start = timesteps[:1].repeat(batch)  # (B,)
            latents = self.scheduler.add_noise(self.encode_image(prior).to(dtype), noise.to(device, dtype), start)
        else:
            latents = latents.to(device, dtype) * self.scheduler.init_noise_sigma
        step_kwargs = scheduler_step_kwargs(self.scheduler, generator)

        # 5. Denoise
        with self.progress_bar(total=len(timesteps)) as progress:
            for step, t in enumerate(timesteps):
                fraction = (skip + step) / (skip + len(timesteps))  # share of the full schedule
                pred = self.guided_noise(
                    latents, t, fraction, text_embeds, metadata_embeds, cond_images, control_scales,
                    control_guidance, guidance_scale, inpaint_channels,
                )  # fmt: skip
                latents = self.scheduler.step(pred, t, latents, **step_kwargs).prev_sample
                if known_latent is not None:  # keep the known region on the input's noisy trajectory
                    if step + 1 < len(timesteps):
                        known = self.scheduler.add_noise(known_latent, noise, timesteps[step + 1 : step + 2])
                    else:
                        known = known_latent
                    latents = latent_mask * latents + (1 - latent_mask) * known
                progress.update()

        # 6. Decode (and blend in pixel space when inpainting)
        weights = None
        if output_type == "latent":
            images = latents
        else:
            decoded = self.decode_latents(latents)  # (B, 3, H, W)
            if image is not None:
                original = image.to(decoded.device, torch.float32)
                weights = self.blend_weights(mask_image.to(decoded.device), feather_px)  # (B, 1, H, W)
                blended = weights * decoded + (1 - weights) * original
                decoded = torch.where(weights > 0, blended, original)  # exact input outside the blend
            images = decoded if output_type == "pt" else decoded.permute(0, 2, 3, 1).cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, weights
        return RSControlledPipelineOutput(images=images, blend_weights=weights)
