"""Flow-matching sampling for Wan 2.2: sigma schedule, Euler and UniPC solvers, plan guidance.

Source: behaviour of Wan-Video/Wan2.2 `wan/utils/fm_solvers_unipc.py` (flow-matching UniPC,
"bh2" variant, data prediction, lower order at the start and on the final step) and the TI2V
first-frame replacement of `wan/textimage2video.py`; the method is UniPC (Zhao et al. 2023,
"UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models").

Convention (rectified flow): x_sigma = (1 - sigma) * x0 + sigma * noise, the model predicts the
velocity v = noise - x0, hence x0 = x - sigma * v. Sampling runs sigma from 1 down to 0 and the
model sees the timestep sigma * 1000 per latent frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor

from .solvers import make_solver

__all__ = [
    "Guidance",
    "SamplingInterrupted",
    "flow_sigmas",
    "combine_passes",
    "guidance_passes",
    "guidance_runner",
    "guided_velocity",
    "initial_noise",
    "sample",
    "shift_sigma",
]

NUM_TRAIN_TIMESTEPS = 1000  # the DiT's timestep is sigma * 1000

# denoise(x [B, C, F, H, W], t [B, F], *, text, plan) -> velocity [B, C, F, H, W]
Denoiser = Callable[..., Tensor]


class SamplingInterrupted(RuntimeError):
    """Raised by `sample` when its `interrupt()` callable returns True before a step."""

    def __init__(self, step: int, total: int):
        super().__init__(f"sampling was interrupted at step {step} of {total} (0-based; {step} steps had completed)")
        self.step = step
        self.total = total


# ----------------------------------------------------------------------------- schedule


def shift_sigma(sigma: float | Tensor, shift: float) -> float | Tensor:
    """Timestep shift of SD3/Wan: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(steps: int, shift: float) -> Tensor:
    """Float64 schedule of `steps + 1` sigmas from 1.0 to 0.0: linspace(1, 0) passed through the shift."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}; pass e.g. steps=50")
    if not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}; Wan 2.2 TI2V uses shift=5.0")
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)  # [steps + 1]
    return shift_sigma(t, float(shift))  # [steps + 1]


def schedule_sigmas(schedule: str, steps: int, shift: float) -> Tensor:
    """The sigmas of a named schedule: "flow" (`flow_sigmas`) or "wan" (`wan_sigmas`)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    return flow_sigmas(steps, shift) if schedule == "flow" else wan_sigmas(steps, shift)


SCHEDULES = ("flow", "wan")
WAN_SIGMA_MAX = 0.999  # the official sampler's first sigma: 1 - 1/num_train_timesteps


def wan_sigmas(steps: int, shift: float) -> Tensor:
    """Wan 2.2's own schedule (`FlowUniPCMultistepScheduler.set_timesteps`): `steps` sigmas linspace(0.999, 0)
    without the last, shifted, then a final 0. It differs from `flow_sigmas` by about 3e-4 at the first step."""
    flow_sigmas(steps, shift)  # the same argument checks
    t = torch.linspace(WAN_SIGMA_MAX, 0.0, steps + 1, dtype=torch.float64)[:-1]  # [steps]
    return torch.cat([shift_sigma(t, float(shift)), t.new_zeros(1)])  # [steps + 1]


# ----------------------------------------------------------------------------- solvers


# ----------------------------------------------------------------------------- guidance


@dataclass(frozen=True)
class Guidance:
    """Text and plan guidance scales.

    v = v(-,-) + plan_scale * (v(-,plan) - v(-,-)) + text_scale * (v(text,plan) - v(-,plan)),
    where v(text?, plan?) is the velocity with or without the text prompt and the plan."""

    text_scale: float = 5.0
    plan_scale: float = 1.0


def guidance_passes(guidance: Guidance, *, use_plan: bool) -> list[tuple[bool, bool]]:
    """The (text, plan) passes the scales need, in order:

    - no plan, text_scale == 1: v(text)                         1 pass
    - no plan:                  v(text), v(-)                   2 passes: v(-) + s_text (v(text) - v(-))
    - plan, both scales == 1:   v(text,plan)                    1 pass
    - plan, plan_scale == 1:    v(text,plan), v(-,plan)         2 passes: the v(-,-) terms cancel
    - plan otherwise:           v(text,plan), v(-,plan), v(-,-) 3 passes: the full formula
    Without a plan every pass gets plan=False.
    """
    s_text, s_plan = guidance.text_scale, guidance.plan_scale
    if not use_plan:
        return [(True, False)] if s_text == 1 else [(True, False), (False, False)]
    if s_plan == 1 and s_text == 1:
        return [(True, True)]
    return [(True, True), (False, True)] if s_plan == 1 else [(True, True), (False, True), (False, False)]


def combine_passes(v: list[Tensor], guidance: Guidance, *, use_plan: bool) -> Tensor:
    """The guided velocity from the velocities of `guidance_passes`, in their order."""
    s_text, s_plan = guidance.text_scale, guidance.plan_scale
    if len(v) == 1:
        return v[0]
    if not use_plan:
        return v[1] + s_text * (v[0] - v[1])
    if len(v) == 2:
        return v[1] + s_text * (v[0] - v[1])
    return v[2] + s_plan * (v[1] - v[2]) + s_text * (v[0] - v[1])


PassRunner = Callable[[list[tuple[bool, bool]], Callable[[tuple[bool, bool]], Tensor]], list[Tensor]]
_PASS_RUNNER: ContextVar[PassRunner | None] = ContextVar("planx_guidance_pass_runner", default=None)


@contextmanager
def guidance_runner(runner: PassRunner | None):
    """Inside the block, `guided_velocity` hands its passes to `runner(passes, evaluate) -> velocities` (e.g.
    `wan.parallel.GuidanceSplit`, which spreads them over groups of ranks) instead of evaluating them one
    after another."""
    token = _PASS_RUNNER.set(runner)
    try:
        yield runner
    finally:
        _PASS_RUNNER.reset(token)


def guided_velocity(denoise: Denoiser, x: Tensor, t: Tensor, guidance: Guidance, *, use_plan: bool) -> Tensor:
    """Guided velocity, evaluating only the passes the scales need (`guidance_passes`, called in that order
    unless a `guidance_runner` is active)."""
    passes = guidance_passes(guidance, use_plan=use_plan)
    runner = _PASS_RUNNER.get()

    def evaluate(which: tuple[bool, bool]) -> Tensor:
        return denoise(x, t, text=which[0], plan=which[1])  # [B, C, F, H, W]

    velocities = [evaluate(which) for which in passes] if runner is None else runner(passes, evaluate)
    return combine_passes(velocities, guidance, use_plan=use_plan)


# ----------------------------------------------------------------------------- sampling


def initial_noise(shape: Sequence[int], seed: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise from a CPU generator seeded with `seed`; drawn in float32, then cast."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32).to(dtype)


def _check_first_frame(noise: Tensor, first_frame_latent: Tensor | None) -> Tensor | None:
    if first_frame_latent is None:
        return None
    b, c, f, h, w = noise.shape
    shape = tuple(first_frame_latent.shape)
    if len(shape) != 5 or shape[:2] != (b, c) or shape[3:] != (h, w) or not 1 <= shape[2] <= f:
        raise ValueError(
            f"first_frame_latent must have shape [B, C, P, H, W] = {[b, c, 'P', h, w]} with 1 <= P <= {f} (the clean "
            f"leading frames) to match noise {list(noise.shape)}, got {list(first_frame_latent.shape)}; encode the "
            f"image at the video's size"
        )
    return first_frame_latent.to(device=noise.device, dtype=noise.dtype)  # [B, C, P, H, W]


def _pin_first_frame(x: Tensor, first_frame: Tensor | None) -> Tensor:
    """TI2V: latent frame 0 is the encoded image, not a sample (or the P leading frames are a given clean prefix,
    as when SemanticGen's sequential stage 1 writes one keyframe after the ones before)."""
    if first_frame is None:
        return x
    return torch.cat([first_frame, x[:, :, first_frame.shape[2] :]], dim=2)  # [B, C, F, H, W]


def _frame_timesteps(sigma: float, noise: Tensor, pinned: int) -> Tensor:
    """Per-frame timestep sigma * 1000, [B, F]; the first `pinned` columns are 0 (the given frames)."""
    b, f = noise.shape[0], noise.shape[2]
    t = torch.full((b, f), sigma * NUM_TRAIN_TIMESTEPS, dtype=torch.float32, device=noise.device)  # [B, F]
    t[:, :pinned] = 0.0
    return t


def sample(
    denoise: Denoiser,
    noise: Tensor,
    *,
    steps: int = 50,
    shift: float = 5.0,
    solver: str = "unipc",
    guidance: Guidance = Guidance(),
    use_plan: bool = False,
    plan_active: Callable[[float], bool] | None = None,
    first_frame_latent: Tensor | None = None,
    callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
    interrupt: Callable[[], bool] | None = None,
    schedule: str = "flow",
    init: Tensor | None = None,
    init_sigma: float = 1.0,
) -> Tensor:
    """Integrate the flow ODE from `noise` (sigma = 1) to a clean latent (sigma = 0).

    `init` (SDEdit, the shape of `noise`): start from `init` noised to the first scheduled sigma at or below
    `init_sigma` (0 < init_sigma <= 1) and run the schedule's steps from there (1: from pure `noise`).

    `schedule`: "flow" (`flow_sigmas`, from sigma 1) or "wan" (`wan_sigmas`, Wan's own, from 0.999).

    denoise(x [B, C, F, H, W], t [B, F], *, text, plan) returns the velocity; t is sigma * 1000
    per latent frame. With `first_frame_latent` [B, C, 1, H, W] (TI2V), frame 0 is that latent at
    the start and after every step, and its timestep is 0 (`[B, C, P, H, W]`: the P leading frames,
    likewise). `plan_active(sigma)` returning False drops the plan passes for that step.
    `callback(i, steps, x, x0)` runs after step i (0-based) with the new sample and that step's x0
    prediction; `interrupt()` is checked before each step.
    """
    if noise.ndim != 5:
        raise ValueError(f"noise must be a latent [B, C, F, H, W], got shape {list(noise.shape)}")
    sigmas = schedule_sigmas(schedule, steps, shift)  # [steps + 1]
    skipped, x = _start_sample(sigmas, noise, init, init_sigma)  # x: [B, C, F, H, W]
    sigmas = sigmas[skipped:]  # [steps - skipped + 1]
    stepper = make_solver(solver, sigmas)
    first_frame = _check_first_frame(noise, first_frame_latent)  # [B, C, 1, H, W] or None
    x = _pin_first_frame(x, first_frame)  # [B, C, F, H, W]
    for i in range(steps - skipped):
        if interrupt is not None and interrupt():
            raise SamplingInterrupted(skipped + i, steps)
        sigma = float(sigmas[i])
        t = _frame_timesteps(sigma, noise, pinned=0 if first_frame is None else first_frame.shape[2])  # [B, F]
        plan_now = use_plan and (plan_active is None or bool(plan_active(sigma)))
        v = guided_velocity(denoise, x, t, guidance, use_plan=plan_now)  # [B, C, F, H, W]
        x0 = _pin_first_frame((x - sigma * v).to(x.dtype), first_frame)  # [B, C, F, H, W]
        x = _pin_first_frame(stepper.step(x, v, i), first_frame)  # [B, C, F, H, W]
        if callback is not None:
            callback(skipped + i, steps, x, x0)
    return x


def _start_sample(sigmas: Tensor, noise: Tensor, init: Tensor | None, init_sigma: float) -> tuple[int, Tensor]:
    """The steps an SDEdit start skips (those above `init_sigma`) and the sample it starts from: `init` noised
    to the first sigma left; without `init`, none and `noise`."""
    if init is None:
        return 0, noise
    if not 0.0 < init_sigma <= 1.0:
        raise ValueError(f"init_sigma is the noise level an init starts from, in (0, 1]; got {init_sigma!r}")
    if tuple(init.shape) != tuple(noise.shape):
        raise ValueError(f"init must have the noise's shape {list(noise.shape)}, got {list(init.shape)}")
    if init_sigma == 1.0:  # pure noise, whatever the schedule's first sigma
        return 0, noise
    skipped = min(int((sigmas[:-1] > init_sigma + 1e-9).sum()), sigmas.numel() - 2)
    sigma = float(sigmas[skipped])
    return skipped, (1.0 - sigma) * init.to(noise) + sigma * noise  # [B, C, F, H, W]
