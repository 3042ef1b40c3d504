"""The Plan-X Sampler's recipe on ComfyUI's sampler stack: shift, latent, start image, plan guidance.

Guidance (docs/design.md section 5): v = v(-,-) + s_plan (v(-,plan) - v(-,-)) + s_text (v(text,plan) - v(-,plan)).
With s_plan = 1 that is ordinary text CFG with the plan on in both branches, what the stock
KSampler does with a patched MODEL; s_plan != 1 adds a pass with the plan off (`PLAN_OFF_KEY`).
ComfyUI guides denoised predictions, which are affine in v with weights summing to one, so the
same combination holds for them.

Image-to-video follows Wan 2.2 TI2V as ComfyUI runs it (docs/comfyui-host.md 5b, 5c): the start image's
latent is written into latent frame 0 and a noise mask keeps it, so that frame gets timestep 0.
"""

from __future__ import annotations

import math

import comfy.model_management
import comfy.model_sampling
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch

from .flow_samplers import FLOW_SOLVERS, sampler_for, sigmas_for, table_shift
from .wan_plan_patch import PLAN_OFF_KEY, with_window

PLAN_VIDEO = "planx_video"  # MODEL option set by Inject 3D RoPE Guidance: the plan's width, height, length, fps
COMFY_SOLVERS = {"unipc": "uni_pc", "euler": "euler", "dpmpp_2m": "dpmpp_2m", "res_multistep": "res_multistep"}
SOLVERS = [*COMFY_SOLVERS, *FLOW_SOLVERS]  # the node's options, new ones appended; old workflows keep theirs
_SPATIAL_BY_CHANNELS = {48: 16, 16: 8}


class PlanGuider(comfy.samplers.CFGGuider):
    """CFG with separate text and plan scales."""

    def __init__(self, model_patcher, text_cfg: float, plan_cfg: float):
        super().__init__(model_patcher)
        self.set_cfg(text_cfg)
        self.plan_cfg = plan_cfg

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (ComfyUI's own signature)
        if math.isclose(self.plan_cfg, 1.0):
            return super().predict_noise(x, timestep, model_options, seed)
        positive, negative = self.conds.get("positive"), self.conds.get("negative")
        text_plan, plan = comfy.samplers.calc_cond_batch(
            self.inner_model, [positive, negative], x, timestep, model_options
        )
        options = {
            **model_options,
            "transformer_options": {**model_options.get("transformer_options", {}), PLAN_OFF_KEY: True},
        }
        (bare,) = comfy.samplers.calc_cond_batch(self.inner_model, [negative], x, timestep, options)
        return bare + self.plan_cfg * (plan - bare) + self.cfg * (text_plan - plan)


class _FlowShift(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
    pass


def with_shift(model, shift: float):
    """A clone of the MODEL sampling with this flow shift; 0: planx_core's default for the model's preset
    (`planx_core.wan.SAMPLING`, e.g. 5.0 for Wan 2.2 TI2V-5B), else the model's own."""
    if shift <= 0:
        shift = table_shift(model) or 0.0
    if shift <= 0:
        return model
    sampling = _FlowShift(model.model.model_config)
    sampling.set_parameters(shift=shift, multiplier=1000)
    shifted = model.clone()
    shifted.add_object_patch("model_sampling", sampling)
    return shifted


def _spatial(model, vae=None) -> int:
    """Pixels per latent cell: the VAE's, else the latent format's (16 for Wan 2.2's 48 channels, else 8)."""
    if vae is not None:
        return vae.spacial_compression_encode()
    fmt = model.get_model_object("latent_format")
    return getattr(fmt, "spatial_factor", _SPATIAL_BY_CHANNELS.get(fmt.latent_channels, 8))


def video_size(model, planned: dict | None, widgets: tuple[int, int, int], from_plan: bool, latent=None, vae=None):
    """(width, height, length) to render. With a plan on the MODEL (`planned`, from Inject 3D RoPE Guidance) and
    `from_plan`, the plan's; otherwise the widgets'. A connected latent fixes the size. Whatever overrides the
    plan must fit it: a length other than the plan's, or another shape (a plan's layout is resolution-free
    but not stretchable), raises naming both values and the fixes."""
    if latent is not None:
        frames, height, width = latent["samples"].shape[-3:]
        spatial = _spatial(model, vae)
        size, what = (width * spatial, height * spatial, (frames - 1) * 4 + 1), "the connected latent"
    elif planned is None or from_plan:
        return (planned["width"], planned["height"], planned["length"]) if planned else widgets
    else:
        size, what = widgets, "the sampler's width, height and length, with size_from_plan off"
    if planned is None:
        return size
    width, height, length = size
    pw, ph, pl, fps = planned["width"], planned["height"], planned["length"], planned["fps"]
    fix = "disconnect the latent" if latent is not None else "turn size_from_plan on"
    if length != pl:
        raise ValueError(
            f"the plan covers {pl} frames ({(pl - 1) / fps:g} s at {fps:g} fps) but the video would have {length} "
            f"(from {what}); "
            f"{fix}, set length to {pl}, or plan {length} frames on Generate Semantic Plan"
        )
    if width * ph != height * pw:
        raise ValueError(
            f"the plan was made for a {pw}x{ph} video but the video would be {width}x{height} (from {what}): "
            f"its layout would be stretched; {fix}, use {pw}x{ph} (or the same shape at another size, e.g. "
            f"{2 * pw}x{2 * ph}), or plan at {width}x{height} on Generate Semantic Plan"
        )
    return size


def empty_latent(model, size: tuple[int, int, int], vae=None) -> dict:
    """A zero latent `[1, C, 1 + (length - 1) / 4, H / s, W / s]` for the MODEL's latent format."""
    width, height, length = size
    channels = model.get_model_object("latent_format").latent_channels
    spatial = _spatial(model, vae)
    if width % spatial or height % spatial:
        raise ValueError(
            f"{width}x{height} is not a multiple of the VAE's {spatial}x{spatial} pixels per latent "
            f"cell; use {width // spatial * spatial}x{height // spatial * spatial}"
        )
    shape = (1, channels, (length - 1) // 4 + 1, height // spatial, width // spatial)
    return {"samples": torch.zeros(shape)}


def add_start_image(latent: dict, model, start_image: torch.Tensor, vae) -> dict:
    """Latent frame 0 = the encoded start image, kept by a noise mask (TI2V); other frames the format's zero."""
    if vae is None:
        raise ValueError("a start_image needs the VAE that matches the MODEL (connect the vae input)")
    samples = latent["samples"]
    height, width = samples.shape[-2:]
    spatial = vae.spacial_compression_encode()
    image = comfy.utils.common_upscale(
        start_image[:1, :, :, :3].movedim(-1, 1), width * spatial, height * spatial, "bilinear", "center"
    ).movedim(1, -1)  # [1, H, W, 3]
    encoded = vae.encode(image)[:, :, :1]  # [1, C, 1, h, w]
    fmt = model.get_model_object("latent_format")
    out = fmt.process_out(torch.zeros_like(samples))  # [1, C, F, h, w]
    out[:, :, :1] = encoded.to(out)
    mask = torch.ones(1, 1, samples.shape[2], height, width)
    mask[:, :, :1] = 0.0
    return {**latent, "samples": out, "noise_mask": mask}


def sample_with_plan(
    model,
    positive,
    negative,
    *,
    seed: int,
    steps: int,
    text_cfg: float,
    plan_cfg: float,
    shift: float,
    solver: str,
    size: tuple[int, int, int],
    latent=None,
    start_image=None,
    vae=None,
    window: int = 0,
    scheduler: str = "simple",
    window_semantics: str = "global",
    window_margin: int = 0,
) -> dict:
    """Sample a video latent; progress, latent previews and ComfyUI's cancel come from the callback.
    `window`: self-attention in shifted windows of that many latent frames (0: full attention), each seeing
    its own span's plan tokens (`window_semantics` "local", `window_margin` latent frames wider) or all;
    `scheduler`: ComfyUI's "simple" sigmas or Wan's own ("wan")."""
    model = with_window(with_shift(model, shift), window, window_semantics, window_margin)
    latent = dict(latent) if latent is not None else empty_latent(model, size, vae)
    if start_image is not None:
        latent = add_start_image(latent, model, start_image, vae)
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    guider = PlanGuider(model, text_cfg, plan_cfg)
    guider.set_conds(positive, negative)
    sigmas = sigmas_for(model, scheduler, steps)
    callback = latent_preview.prepare_callback(model, steps)
    samples = guider.sample(
        noise,
        latent_image,
        sampler_for(solver, COMFY_SOLVERS, scheduler),
        sigmas,
        denoise_mask=latent.get("noise_mask"),
        callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
        seed=seed,
    )
    out = {k: v for k, v in latent.items() if k != "noise_mask"}
    out["samples"] = samples.to(comfy.model_management.intermediate_device())
    return out
