"""The DiT's training objective: flow matching with per-frame timesteps, TI2V pinning and dropout.

Sources: Wan 2.1/2.2 (rectified flow: x_t = (1 - sigma) x0 + sigma * noise, the model predicts
the velocity noise - x0, t = 1000 sigma, sigmas shifted as at sampling); Wan 2.2 TI2V (the first
latent frame kept clean at timestep 0 when an image conditions the video); Plan-X (staged text
dropout, so the plan alone can drive the video, and a plan that can be dropped, so both
unconditional branches of `sampling.guided_velocity` exist).

Text is dropped per sample (its context replaced by the empty prompt's); the plan is dropped per
batch (a PlanConditioning is one plan pass for the whole batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..diffusion.sampling import shift_sigma


@dataclass(frozen=True)
class Dropout:
    """Probabilities of training without text (per sample), without plan (per step), and of
    pinning the first frame (TI2V, per sample)."""

    text: float = 0.1
    plan: float = 0.1
    first_frame: float = 0.0


@dataclass
class FlowSample:
    """One training step's noised input, its timesteps and the velocity target."""

    x_t: torch.Tensor  # [B, C, F, H, W]
    t: torch.Tensor  # [B, F], sigma * 1000 per latent frame (0 on a pinned first frame)
    target: torch.Tensor  # [B, C, F, H, W], noise - x0
    weight: torch.Tensor  # [B, 1, F, 1, 1], 0 where the frame was pinned (not predicted)


def noise_latents(
    x0: torch.Tensor,
    generator: torch.Generator,
    *,
    shift: float = 5.0,
    pin_first: torch.Tensor | None = None,
    prefix: int = 0,
) -> FlowSample:
    """Draw sigma ~ shift(U(0, 1)) per sample and noise `x0` [B, C, F, H, W]; `pin_first` [B] bool
    keeps those samples' frame 0 clean at timestep 0; `prefix` keeps every sample's first `prefix` frames so
    (SemanticGen's sequential stage 1: the keyframes before the one it writes are given)."""
    b, f = x0.shape[0], x0.shape[2]
    sigma = shift_sigma(torch.rand(b, generator=generator), shift).to(x0)  # [B]
    noise = torch.randn(x0.shape, generator=generator).to(x0)  # [B, C, F, H, W]
    s = sigma.view(b, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise  # [B, C, F, H, W]
    t = (sigma * 1000).view(b, 1).expand(b, f).clone()  # [B, F]
    weight = torch.ones(b, 1, f, 1, 1, dtype=x0.dtype, device=x0.device)  # [B, 1, F, 1, 1]
    if pin_first is not None and pin_first.any():
        rows = pin_first.to(x0.device)
        x_t[rows, :, 0] = x0[rows, :, 0]
        t[rows, 0] = 0.0
        weight[rows, :, 0] = 0.0
    if prefix:
        x_t[:, :, :prefix] = x0[:, :, :prefix]
        t[:, :prefix] = 0.0
        weight[:, :, :prefix] = 0.0
    return FlowSample(x_t, t, noise - x0, weight)


def object_emphasis(x0: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-position loss weights `[B, 1, F, H, W]` that favour what stands out from a clip's background.

    A position's distance from the clip's per-channel median latent (the plain background dominates the
    median), divided by its mean over the clip, times `strength`, plus 1: a clip of plain background
    weighs 1 everywhere; objects (about a tenth of the positions in the toy world) weigh several times
    more. Training then spends more of the loss on the objects' pixels (their colours), which uniform
    weights leave to the background that fills most of a frame.
    """
    median = x0.flatten(2).median(dim=-1).values[..., None, None, None]  # [B, C, 1, 1, 1]
    distance = (x0 - median).float().norm(dim=1, keepdim=True)  # [B, 1, F, H, W]
    scale = distance.mean(dim=(2, 3, 4), keepdim=True).clamp_min(1e-6)  # [B, 1, 1, 1, 1]
    return (1.0 + strength * distance / scale).to(x0.dtype)  # [B, 1, F, H, W]


def drop_text(context: torch.Tensor, empty: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Replace each sample's text context [B, L, D] (or per frame [B, F, L, D]) by the empty prompt's [1, ...]
    with probability p."""
    keep = (torch.rand(context.shape[0], generator=generator) >= p).to(context.device)  # [B]
    return torch.where(keep.view(-1, *[1] * (context.dim() - 1)), context, empty.to(context))  # as context


def flow_loss(
    model,
    x0: torch.Tensor,
    context: torch.Tensor,
    empty: torch.Tensor,
    plan,
    generator: torch.Generator,
    *,
    dropout: Dropout = Dropout(),
    shift: float = 5.0,
    prefix: int = 0,
    emphasis: float = 0.0,
    **model_options,
) -> torch.Tensor:
    """Mean squared velocity error of `model(x_t, t, context, plan=..., **model_options)` on the frames it predicts.

    `plan` is a PlanConditioning for the batch (or None); `empty` is the empty prompt's context; the first
    `prefix` frames are given clean (`noise_latents`) and not predicted; `emphasis` > 0 weighs the positions
    by `object_emphasis` (a weighted mean, so the loss keeps its scale);
    `model_options` go to the model unchanged (e.g. `window` for shifted-window attention).
    """
    pin = torch.rand(x0.shape[0], generator=generator) < dropout.first_frame  # [B]
    sample = noise_latents(x0, generator, shift=shift, pin_first=pin, prefix=prefix)
    text = drop_text(context, empty, dropout.text, generator)  # [B, L, D]
    use_plan = plan is not None and float(torch.rand(1, generator=generator)) >= dropout.plan
    velocity = model(sample.x_t, sample.t, text, plan=plan if use_plan else None, **model_options)  # [B, C, F, H, W]
    weight = sample.weight * object_emphasis(x0, emphasis) if emphasis > 0 else sample.weight  # [B, 1, F, H, W]
    err = (velocity.float() - sample.target.float()) ** 2 * weight  # [B, C, F, H, W]
    counted = weight.expand_as(err).sum().clamp_min(1.0)
    return err.sum() / counted


def add_flow_arguments(parser) -> None:
    """The flow-matching options the dit and branch stages share (one declaration, one meaning)."""
    parser.add_argument("--text-dropout-early", type=float, default=0.5, help="dit/branch: text dropout, phase 1")
    parser.add_argument("--text-dropout-late", type=float, default=0.1, help="dit/branch: text dropout, phase 2")
    parser.add_argument("--switch", type=int, default=2000, help="dit/branch: global step where phase 2 begins")
    parser.add_argument("--plan-dropout", type=float, default=0.1, help="dit/branch: steps trained without the plan")
    parser.add_argument("--first-frame", type=float, default=0.25, help="dit/branch: samples with frame 0 pinned")
    parser.add_argument(
        "--train-shift",
        type=float,
        default=5.0,
        help="dit/branch: timestep shift of the training noise levels, sigma = shift(U(0, 1)) "
        "(5.0 is what the shipped DiT was trained with; --shift is the evaluation sampler's)",
    )
