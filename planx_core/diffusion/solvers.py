"""Flow-matching ODE solvers: Euler, and UniPC as Wan 2.2 runs it (bh2, data prediction, order 2).

Source: behaviour of Wan-Video/Wan2.2 `wan/utils/fm_solvers_unipc.py` (flow-matching UniPC,
"bh2" variant, lower order at the start and on the final step); the method is UniPC (Zhao et al.
2023). Written from those descriptions; the schedule and the sampling loop are in `sampling`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

_SIGMA_CEIL = 1.0 - 1e-6  # sigma used for UniPC coefficients where sigma == 1 (lambda would be -inf)


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
