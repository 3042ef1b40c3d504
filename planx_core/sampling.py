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
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

__all__ = [
    "SOLVERS",
    "EulerSolver",
    "Guidance",
    "SamplingInterrupted",
    "Solver",
    "UniPCSolver",
    "flow_sigmas",
    "guided_velocity",
    "initial_noise",
    "make_solver",
    "sample",
    "shift_sigma",
]

NUM_TRAIN_TIMESTEPS = 1000  # the DiT's timestep is sigma * 1000
_SIGMA_CEIL = 1.0 - 1e-6  # sigma used for UniPC coefficients where sigma == 1 (lambda would be -inf)

# denoise(x [B, C, F, H, W], t [B, F], *, text, plan) -> velocity [B, C, F, H, W]
Denoiser = Callable[..., Tensor]


class SamplingInterrupted(RuntimeError):
    """Raised by `sample` when its `interrupt()` callable returns True before a step."""

    def __init__(self, step: int, total: int):
        super().__init__(
            f"sampling was interrupted at step {step} of {total} (0-based; {step} steps had completed)"
        )
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


def _check_sigmas(sigmas: Tensor | Sequence[float]) -> Tensor:
    """Validate a schedule (1-D, >= 2 entries, strictly decreasing, within [0, 1]); return it as float64."""
    s = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64)  # [N + 1]
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D schedule with at least 2 entries, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise ValueError("sigmas must be finite and within [0, 1]; build them with flow_sigmas(steps, shift)")
    if not (s[1:] < s[:-1]).all():
        raise ValueError("sigmas must be strictly decreasing (noise to data); build them with flow_sigmas")
    return s


# ----------------------------------------------------------------------------- solvers


class Solver(Protocol):
    sigmas: Tensor

    def step(self, x: Tensor, velocity: Tensor, i: int) -> Tensor: ...


class EulerSolver:
    """First-order flow ODE step: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v."""

    def __init__(self, sigmas: Tensor | Sequence[float]):
        self.sigmas = _check_sigmas(sigmas)  # [N + 1] float64

    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    def step(self, x: Tensor, velocity: Tensor, i: int) -> Tensor:
        _check_index(i, self.steps)
        dt = float(self.sigmas[i + 1] - self.sigmas[i])
        return (x + dt * velocity).to(x.dtype)  # [B, C, F, H, W]


def _check_index(i: int, steps: int) -> None:
    if not 0 <= i < steps:
        raise IndexError(f"step index {i} is outside the schedule's {steps} steps")


def _bh2_terms(h: float, order: int) -> tuple[float, float, list[float]]:
    """UniPC coefficients for data prediction with B(h) = expm1(-h).

    Returns (h*phi_1 with hh = -h, B(h), b_1..b_order) where b_k = k! * phi_{k+1}(hh) / B(h)
    (phi_k of the exponential integrator, evaluated on hh = -h)."""
    hh = -h
    h_phi_1 = math.expm1(hh)  # e^hh - 1
    b_h = math.expm1(hh)  # the "bh2" choice of B(h)
    h_phi_k, factorial, b = h_phi_1 / hh - 1.0, 1, []
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, b


def _solve_rhos(rks: list[float], b: list[float]) -> list[float]:
    """Solve the Vandermonde system sum_j rks[j]^(k-1) * rho_j = b_k, k = 1..len(rks)."""
    r = torch.tensor(rks, dtype=torch.float64)  # [K]
    powers = torch.stack([r**k for k in range(len(rks))])  # [K, K]
    return torch.linalg.solve(powers, torch.tensor(b, dtype=torch.float64)).tolist()


class UniPCSolver:
    """Multistep UniPC ("bh2", data prediction) on a flow-matching schedule.

    Per step i: the UniC corrector refines the current sample with the current model output
    (no extra model call), then the UniP predictor of order min(order, i + 1, steps - i) moves
    to sigma_{i+1} (lower order while warming up and on the final step). A step into sigma = 0
    returns the x0 prediction. Flow matching gives alpha = 1 - sigma and lambda = log(alpha / sigma);
    a sigma of exactly 1 is taken as 1 - 1e-6 for the coefficients so lambda stays finite.
    Steps must be called in order i = 0, 1, 2, ...; i = 0 starts a fresh run.
    """

    def __init__(self, sigmas: Tensor | Sequence[float], order: int = 2):
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}; Wan 2.2 uses order=2")
        self.sigmas = _check_sigmas(sigmas)  # [N + 1] float64
        self.order = order
        self._coef_sigmas = self.sigmas.clamp(max=_SIGMA_CEIL).tolist()
        self._lambdas = [math.log1p(-s) - math.log(s) if s > 0 else math.inf for s in self._coef_sigmas]
        self._start()

    @property
    def steps(self) -> int:
        return self.sigmas.numel() - 1

    def step_order(self, i: int) -> int:
        """Order of the predictor at step i (warm-up at the start, order 1 on the final step)."""
        return min(self.order, i + 1, self.steps - i)

    def _start(self) -> None:
        self._x0s: list[Tensor] = []  # x0 predictions of the latest steps, oldest first
        self._last_x: Tensor | None = None  # sample the previous predictor started from
        self._last_order = 0
        self._next = 0

    def step(self, x: Tensor, velocity: Tensor, i: int) -> Tensor:
        _check_index(i, self.steps)
        if i == 0:
            self._start()
        elif i != self._next:
            raise RuntimeError(
                f"UniPCSolver is multistep: expected step {self._next}, got {i}; call steps in order from 0"
            )
        work = torch.promote_types(x.dtype, torch.float32)
        xw = x.to(work)  # [B, C, F, H, W]
        x0 = xw - float(self.sigmas[i]) * velocity.to(work)  # [B, C, F, H, W]
        if self._last_x is not None:  # UniC: correct x with this step's model output
            xw = self._update(self._last_x, i - 1, self._x0s, self._last_order, model_t=x0)
        self._x0s = (self._x0s + [x0])[-self.order :]
        order = self.step_order(i)
        self._last_x, self._last_order, self._next = xw, order, i + 1
        if float(self.sigmas[i + 1]) == 0.0:  # lambda = +inf: the step lands on the x0 prediction
            return x0.to(x.dtype)
        return self._update(xw, i, self._x0s, order).to(x.dtype)  # [B, C, F, H, W]

    def _update(self, x: Tensor, a: int, x0s: list[Tensor], order: int, model_t: Tensor | None = None) -> Tensor:
        """UniP (model_t None) or UniC (model_t = x0 at sigma_{a+1}) from sigma_a to sigma_{a+1}.

        x0s[-1] is the x0 prediction at step a, x0s[-1 - k] the one at step a - k."""
        lam, sig = self._lambdas, self._coef_sigmas
        h = lam[a + 1] - lam[a]
        m0 = x0s[-1]  # [B, C, F, H, W]
        rks = [(lam[a - k] - lam[a]) / h for k in range(1, order)]
        d1s = [(x0s[-1 - k] - m0) / rk for k, rk in enumerate(rks, start=1)]  # each [B, C, F, H, W]
        h_phi_1, b_h, b = _bh2_terms(h, order)
        if model_t is None:  # predictor: order 2 uses the fixed rho = 1/2
            rhos = [] if order == 1 else [0.5] if order == 2 else _solve_rhos(rks, b[:-1])
        else:  # corrector: one more difference, towards this step's own x0
            rhos = [0.5] if order == 1 else _solve_rhos(rks + [1.0], b)
            d1s.append(model_t - m0)
        alpha_t, sigma_t = 1.0 - sig[a + 1], sig[a + 1]
        x_t = (sigma_t / sig[a]) * x - (alpha_t * h_phi_1) * m0  # [B, C, F, H, W]
        for rho, d1 in zip(rhos, d1s):
            x_t = x_t - (alpha_t * b_h * rho) * d1
        return x_t


SOLVERS = ("euler", "unipc")


def make_solver(name: str, sigmas: Tensor | Sequence[float]) -> Solver:
    """Solver by name: "euler" or "unipc" (order 2, as Wan 2.2)."""
    if name == "euler":
        return EulerSolver(sigmas)
    if name == "unipc":
        return UniPCSolver(sigmas, order=2)
    raise ValueError(f"unknown solver {name!r}; choose one of {', '.join(SOLVERS)}")


# ----------------------------------------------------------------------------- guidance


@dataclass(frozen=True)
class Guidance:
    """Text and plan guidance scales.

    v = v(-,-) + plan_scale * (v(-,plan) - v(-,-)) + text_scale * (v(text,plan) - v(-,plan)),
    where v(text?, plan?) is the velocity with or without the text prompt and the plan."""

    text_scale: float = 5.0
    plan_scale: float = 1.0


def guided_velocity(denoise: Denoiser, x: Tensor, t: Tensor, guidance: Guidance, *, use_plan: bool) -> Tensor:
    """Guided velocity, evaluating only the passes the scales need (called in the order listed):

    - no plan, text_scale == 1: v(text)                         1 pass
    - no plan:                  v(text), v(-)                   2 passes: v(-) + s_text (v(text) - v(-))
    - plan, both scales == 1:   v(text,plan)                    1 pass
    - plan, plan_scale == 1:    v(text,plan), v(-,plan)         2 passes: the v(-,-) terms cancel
    - plan otherwise:           v(text,plan), v(-,plan), v(-,-) 3 passes: the full formula
    Without a plan every pass gets plan=False.
    """
    s_text, s_plan = guidance.text_scale, guidance.plan_scale
    if not use_plan:
        v_text = denoise(x, t, text=True, plan=False)  # [B, C, F, H, W]
        if s_text == 1:
            return v_text
        v_none = denoise(x, t, text=False, plan=False)
        return v_none + s_text * (v_text - v_none)
    v_text_plan = denoise(x, t, text=True, plan=True)  # [B, C, F, H, W]
    if s_plan == 1 and s_text == 1:
        return v_text_plan
    v_plan = denoise(x, t, text=False, plan=True)
    if s_plan == 1:
        return v_plan + s_text * (v_text_plan - v_plan)
    v_none = denoise(x, t, text=False, plan=False)
    return v_none + s_plan * (v_plan - v_none) + s_text * (v_text_plan - v_plan)


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
    b, c, _, h, w = noise.shape
    if tuple(first_frame_latent.shape) != (b, c, 1, h, w):
        raise ValueError(
            f"first_frame_latent must have shape [B, C, 1, H, W] = {[b, c, 1, h, w]} to match noise "
            f"{list(noise.shape)}, got {list(first_frame_latent.shape)}; encode the image at the video's size"
        )
    return first_frame_latent.to(device=noise.device, dtype=noise.dtype)  # [B, C, 1, H, W]


def _pin_first_frame(x: Tensor, first_frame: Tensor | None) -> Tensor:
    """TI2V: latent frame 0 is the encoded image, not a sample."""
    if first_frame is None:
        return x
    return torch.cat([first_frame, x[:, :, 1:]], dim=2)  # [B, C, F, H, W]


def _frame_timesteps(sigma: float, noise: Tensor, pinned: bool) -> Tensor:
    """Per-frame timestep sigma * 1000, [B, F]; column 0 is 0 when frame 0 is the given image."""
    b, f = noise.shape[0], noise.shape[2]
    t = torch.full((b, f), sigma * NUM_TRAIN_TIMESTEPS, dtype=torch.float32, device=noise.device)  # [B, F]
    if pinned:
        t[:, 0] = 0.0
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
) -> Tensor:
    """Integrate the flow ODE from `noise` (sigma = 1) to a clean latent (sigma = 0).

    denoise(x [B, C, F, H, W], t [B, F], *, text, plan) returns the velocity; t is sigma * 1000
    per latent frame. With `first_frame_latent` [B, C, 1, H, W] (TI2V), frame 0 is that latent at
    the start and after every step, and its timestep is 0. `plan_active(sigma)` returning False
    drops the plan passes for that step. `callback(i, steps, x, x0)` runs after step i (0-based)
    with the new sample and that step's x0 prediction; `interrupt()` is checked before each step.
    """
    if noise.ndim != 5:
        raise ValueError(f"noise must be a latent [B, C, F, H, W], got shape {list(noise.shape)}")
    sigmas = flow_sigmas(steps, shift)  # [steps + 1]
    stepper = make_solver(solver, sigmas)
    first_frame = _check_first_frame(noise, first_frame_latent)  # [B, C, 1, H, W] or None
    x = _pin_first_frame(noise, first_frame)  # [B, C, F, H, W]
    for i in range(steps):
        if interrupt is not None and interrupt():
            raise SamplingInterrupted(i, steps)
        sigma = float(sigmas[i])
        t = _frame_timesteps(sigma, noise, pinned=first_frame is not None)  # [B, F]
        plan_now = use_plan and (plan_active is None or bool(plan_active(sigma)))
        v = guided_velocity(denoise, x, t, guidance, use_plan=plan_now)  # [B, C, F, H, W]
        x0 = _pin_first_frame((x - sigma * v).to(x.dtype), first_frame)  # [B, C, F, H, W]
        x = _pin_first_frame(stepper.step(x, v, i), first_frame)  # [B, C, F, H, W]
        if callback is not None:
            callback(i, steps, x, x0)
    return x
