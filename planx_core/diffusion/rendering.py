"""Render a video latent with the DiT: text contexts and a plan bound to the flow-matching sampler.

Source: the Wan 2.2 TI2V generation loop (`wan/textimage2video.py`): text features zero-padded
to `text_len`, a negative prompt for the unconditional pass, the latent grid of the Wan 2.2 VAE
(4x in time, 16x16 in space; 4n+1 frames). Plan guidance follows `sampling.Guidance`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..wan.dit import WanModel
from .sampling import Guidance, sample

if TYPE_CHECKING:  # the plan's type only: semantic_branch imports the schedule from this package
    from ..semantic_branch import PlanConditioning


def latent_shape(
    width: int, height: int, frames: int, channels: int = 48, spatial: int = 16, temporal: int = 4, patch: int = 2
) -> tuple[int, int, int, int, int]:
    """`[1, C, F_lat, H_lat, W_lat]` of a video; refuses sizes the VAE and the DiT patch cannot take."""
    if (frames - 1) % temporal:
        raise ValueError(
            f"{frames} frames: the VAE needs {temporal}n+1 frames; use {frames - (frames - 1) % temporal} "
            f"or {frames - (frames - 1) % temporal + temporal}"
        )
    step = spatial * patch
    if width % step or height % step:
        raise ValueError(
            f"{width}x{height}: width and height must be multiples of {step}; "
            f"try {width // step * step}x{height // step * step}"
        )
    return 1, channels, 1 + (frames - 1) // temporal, height // spatial, width // spatial


def pad_text_context(context: torch.Tensor, text_len: int) -> torch.Tensor:
    """Text features `[B, L, D]` (or per frame `[B, F, L, D]`) zero-padded to `text_len` tokens, as the reference
    pads them."""
    if context.shape[-2] > text_len:
        raise ValueError(
            f"text context has {context.shape[-2]} tokens, more than the model's {text_len}; shorten the prompt"
        )
    return torch.nn.functional.pad(context, (0, 0, 0, text_len - context.shape[-2]))


def make_denoiser(
    model: WanModel,
    positive: torch.Tensor,
    negative: torch.Tensor,
    conditioning: PlanConditioning | None = None,
    **model_options,
) -> Callable[..., torch.Tensor]:
    """The sampler's `denoise(x, t, *, text, plan)` for this model, prompt pair and plan;
    `model_options` (e.g. `window`) go to every model call."""

    def denoise(x: torch.Tensor, t: torch.Tensor, *, text: bool, plan: bool) -> torch.Tensor:
        return model(x, t, positive if text else negative, plan=conditioning if plan else None, **model_options)

    return denoise


@torch.inference_mode()
def render(
    model: WanModel,
    noise: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    plan: PlanConditioning | None = None,
    steps: int = 50,
    shift: float = 5.0,
    solver: str = "unipc",
    guidance: Guidance = Guidance(),
    first_frame_latent: torch.Tensor | None = None,
    callback=None,
    interrupt=None,
    window: int | None = None,
    schedule: str = "flow",
    init: torch.Tensor | None = None,
    init_sigma: float = 1.0,
) -> torch.Tensor:
    """Denoise `noise` `[B, C, F, H, W]` into a clean latent, guided by text and (optionally) a plan.

    `window`: shifted-window attention over the latent frames (`WanModel.forward`); None = full.
    `schedule`: the sigma schedule, "flow" or "wan" (`sampling.schedule_sigmas`); `init`, `init_sigma`: an SDEdit
    start (`sampling.sample`)."""
    text_len = model.config.text_len
    positive, negative = pad_text_context(positive, text_len), pad_text_context(negative, text_len)
    options = {} if window is None else {"window": window}
    return sample(
        make_denoiser(model, positive, negative, plan, **options),
        noise,
        steps=steps,
        shift=shift,
        solver=solver,
        guidance=guidance,
        use_plan=plan is not None,
        plan_active=None if plan is None else (lambda sigma: plan.active(sigma, shift)),
        first_frame_latent=first_frame_latent,
        callback=callback,
        interrupt=interrupt,
        schedule=schedule,
        init=init,
        init_sigma=init_sigma,
    )
