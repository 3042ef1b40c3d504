"""Tests for planx_core.sampling: schedule, solvers (UniPC against diffusers), guidance, sample()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from planx_core.diffusion.sampling import (
    Guidance,
    SamplingInterrupted,
    flow_sigmas,
    guided_velocity,
    initial_noise,
    sample,
    shift_sigma,
)
from planx_core.diffusion.solvers import EulerSolver, UniPCSolver, make_solver

SHAPE = (1, 4, 3, 2, 2)  # [B, C, F, H, W]


# ----------------------------------------------------------------------------- helpers


def _field(seed: int = 0):
    """A fixed nonlinear velocity field v(x, sigma) over the channel axis of [B, C, F, H, W]."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(4, 4, generator=g, dtype=torch.float64) * 0.2

    def v(x: torch.Tensor, sigma: float) -> torch.Tensor:
        ax = torch.einsum("oc,bcfhw->bofhw", a.to(x.dtype), x)
        bx = torch.einsum("oc,bcfhw->bofhw", b.to(x.dtype), x)
        return torch.tanh(ax) * (1 + sigma) + bx * sigma + 0.3 * x

    return v


MU, STD = 0.7, 0.5  # Gaussian target x0 ~ N(MU, STD^2) per element


def _gauss_velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Exact flow velocity E[noise - x0 | x_sigma] for the Gaussian target; its ODE maps n to MU + STD * n."""
    alpha = 1.0 - sigma
    var = alpha**2 * STD**2 + sigma**2
    centred = x - alpha * MU
    e_x0 = MU + alpha * STD**2 / var * centred
    e_noise = sigma / var * centred
    return e_noise - e_x0


def _integrate(solver, x: torch.Tensor, field) -> torch.Tensor:
    for i in range(solver.sigmas.numel() - 1):
        x = solver.step(x, field(x, float(solver.sigmas[i])), i)
    return x


def _diffusers_unipc(steps: int, shift: float, order: int = 2, sigmas=None):
    UniPCMultistepScheduler = pytest.importorskip("diffusers").UniPCMultistepScheduler  # noqa: N806

    sched = UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=shift,
        solver_order=order,
        solver_type="bh2",
        predict_x0=True,
        lower_order_final=True,
    )
    if sigmas is None:
        sched.set_timesteps(steps)
    else:
        sched.set_timesteps(sigmas=sigmas)
    return sched


def _run_pair(sched, field, x: torch.Tensor, order: int = 2) -> float:
    """Step diffusers' scheduler and our UniPCSolver side by side; return the largest deviation."""
    ours = UniPCSolver(sched.sigmas, order=order)
    y, worst = x.clone(), 0.0
    for i, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[i])
        x = sched.step(field(x, sigma), t, x).prev_sample
        y = ours.step(y, field(y, sigma), i)
        worst = max(worst, (x - y).abs().max().item())
    return worst


# ----------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("steps", [1, 2, 7, 50])
@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0, 0.5])
def test_flow_sigmas_endpoints_monotone_and_formula(steps, shift):
    s = flow_sigmas(steps, shift)
    assert s.dtype == torch.float64 and s.shape == (steps + 1,)
    assert s[0].item() == 1.0 and s[-1].item() == 0.0
    assert bool((s[1:] < s[:-1]).all())
    t = np.linspace(1.0, 0.0, steps + 1)
    expected = shift * t / (1 + (shift - 1) * t)
    np.testing.assert_allclose(s.numpy(), expected, rtol=0, atol=1e-15)


def test_shift_sigma_on_floats_and_tensors():
    assert shift_sigma(0.5, 5.0) == pytest.approx(2.5 / 3.0)
    assert shift_sigma(0.5, 1.0) == 0.5
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    torch.testing.assert_close(shift_sigma(t, 3.0), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert flow_sigmas(4, 1.0).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]  # shift 1 is the linear grid


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10"])
def test_flow_sigmas_rejects_bad_steps(steps):
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(steps, 5.0)


@pytest.mark.parametrize("shift", [0.0, -1.0, math.nan, math.inf])
def test_flow_sigmas_rejects_bad_shift(shift):
    with pytest.raises(ValueError, match="shift"):
        flow_sigmas(10, shift)


# ----------------------------------------------------------------------------- UniPC vs diffusers


@pytest.mark.parametrize("steps", [1, 4, 10, 25])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_unipc_matches_diffusers_float64(steps, shift):
    """diffusers with its sigmas promoted to float64 computes every coefficient in float64: near-exact match."""
    sched = _diffusers_unipc(steps, shift)
    sched.sigmas = sched.sigmas.double()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    assert _run_pair(sched, _field(), x) < 1e-10


@pytest.mark.parametrize("steps", [4, 10, 25])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_unipc_matches_diffusers_stock(steps, shift):
    """Stock diffusers keeps float32 sigmas; our float64 coefficients differ only by that rounding."""
    sched = _diffusers_unipc(steps, shift)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert _run_pair(sched, _field(1), x) < 1e-6


@pytest.mark.parametrize("order", [1, 3])
def test_unipc_other_orders_match_diffusers(order):
    sched = _diffusers_unipc(12, 5.0, order=order)
    sched.sigmas = sched.sigmas.double()
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert _run_pair(sched, _field(2), x, order=order) < 1e-10


@pytest.mark.parametrize("steps,shift", [(10, 1.0), (30, 5.0)])
def test_unipc_on_flow_sigmas_matches_diffusers_given_the_same_grid(steps, shift):
    """Our schedule starts at exactly sigma = 1; diffusers nudges that to 1 - 1e-6, as our coefficients do."""
    grid = np.linspace(1.0, 0.0, steps + 1)[:-1]
    sched = _diffusers_unipc(steps, shift, sigmas=grid)
    ours_sigmas = flow_sigmas(steps, shift)
    torch.testing.assert_close(sched.sigmas.double(), ours_sigmas, rtol=0, atol=2e-6)
    field = _field(3)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = x.clone()
    for i, t in enumerate(sched.timesteps):
        ref = sched.step(field(ref, float(sched.sigmas[i])), t, ref).prev_sample
    ours = _integrate(UniPCSolver(ours_sigmas), x.clone(), field)
    assert (ours - ref).abs().max().item() < 2e-5


def test_unipc_step_orders_warm_up_and_final():
    assert [UniPCSolver(flow_sigmas(5, 5.0)).step_order(i) for i in range(5)] == [1, 2, 2, 2, 1]
    assert [UniPCSolver(flow_sigmas(6, 5.0), order=3).step_order(i) for i in range(6)] == [1, 2, 3, 3, 2, 1]
    assert UniPCSolver(flow_sigmas(1, 5.0)).step_order(0) == 1


def test_unipc_last_step_returns_x0_prediction():
    solver = UniPCSolver(flow_sigmas(3, 5.0))
    field = _field()
    x = torch.randn(SHAPE, dtype=torch.float64)
    for i in range(2):
        x = solver.step(x, field(x, float(solver.sigmas[i])), i)
    v = field(x, float(solver.sigmas[2]))
    torch.testing.assert_close(solver.step(x, v, 2), x - float(solver.sigmas[2]) * v, rtol=0, atol=1e-15)


def test_unipc_is_ordered_and_restarts_at_zero():
    sigmas = flow_sigmas(6, 5.0)
    field = _field()
    x = torch.randn(SHAPE, dtype=torch.float64)
    solver = UniPCSolver(sigmas)
    first = _integrate(solver, x.clone(), field)
    assert torch.equal(_integrate(solver, x.clone(), field), first)  # i = 0 starts afresh
    solver.step(x, field(x, 1.0), 0)
    with pytest.raises(RuntimeError, match="expected step 1"):
        solver.step(x, field(x, 1.0), 2)
    with pytest.raises(IndexError):
        solver.step(x, field(x, 1.0), 6)


def test_unipc_beats_euler_on_gaussian_target():
    """UniPC is far more accurate than Euler and converges at second order (its last step, order 1
    into sigma = 0, returns the x0 prediction, whose error is O(sigma_{N-1}^2))."""
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = MU + STD * noise

    def error(solver_cls, steps):
        return (_integrate(solver_cls(flow_sigmas(steps, 1.0)), noise, _gauss_velocity) - exact).abs().max().item()

    err_unipc, err_euler = error(UniPCSolver, 40), error(EulerSolver, 40)
    assert err_unipc < 5e-3
    assert err_unipc < err_euler / 5
    assert error(UniPCSolver, 160) < err_unipc / 10  # 4x the steps: >10x smaller error


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_solvers_keep_dtype(name, dtype):
    solver = make_solver(name, flow_sigmas(4, 5.0))
    x = torch.randn(SHAPE).to(dtype)
    for i in range(4):
        x = solver.step(x, -x, i)
        assert x.dtype == dtype


# ----------------------------------------------------------------------------- Euler, make_solver


def test_euler_step_formula():
    solver = EulerSolver([1.0, 0.6, 0.0])
    x, v = torch.ones(2), torch.full((2,), 2.0)
    torch.testing.assert_close(solver.step(x, v, 0), torch.full((2,), 1.0 - 0.4 * 2.0))


def test_euler_converges_with_first_order():
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = MU + STD * noise
    errors = [
        (_integrate(EulerSolver(flow_sigmas(n, 1.0)), noise, _gauss_velocity) - exact).abs().max().item()
        for n in (10, 20, 40, 80)
    ]
    assert errors[0] > 1e-3  # the test field is not trivially solved by one Euler step
    for coarse, fine in zip(errors, errors[1:]):
        assert 1.6 < coarse / fine < 2.6  # error halves with the step: first order


def test_make_solver_names():
    sigmas = flow_sigmas(5, 5.0)
    assert isinstance(make_solver("euler", sigmas), EulerSolver)
    unipc = make_solver("unipc", sigmas)
    assert isinstance(unipc, UniPCSolver) and unipc.order == 2
    with pytest.raises(ValueError, match="euler.*unipc"):
        make_solver("dpm++", sigmas)


@pytest.mark.parametrize(
    "bad", [[0.0, 1.0], [1.0, 1.0, 0.0], [1.5, 0.0], [1.0], [[1.0, 0.0]], [1.0, -0.1], [1.0, math.nan]]
)
def test_solvers_reject_bad_schedules(bad):
    for cls in (EulerSolver, UniPCSolver):
        with pytest.raises(ValueError, match="sigmas"):
            cls(bad)


def test_unipc_rejects_bad_order():
    with pytest.raises(ValueError, match="order"):
        UniPCSolver(flow_sigmas(4, 5.0), order=0)


# ----------------------------------------------------------------------------- guidance


class FakeDenoiser:
    """Returns a different fixed random tensor per (text, plan) pass and records the passes."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.outputs = {(tx, pl): torch.randn(SHAPE, generator=g) for tx in (False, True) for pl in (False, True)}
        self.calls: list[tuple[bool, bool]] = []
        self.ts: list[torch.Tensor] = []
        self.xs: list[torch.Tensor] = []

    def __call__(self, x, t, *, text: bool, plan: bool):
        self.calls.append((text, plan))
        self.ts.append(t.clone())
        self.xs.append(x.clone())
        return self.outputs[(text, plan)] + 0.1 * x


GUIDANCE_CASES = [
    # text_scale, plan_scale, use_plan, passes
    (1.0, 1.0, False, {(True, False)}),
    (5.0, 1.0, False, {(True, False), (False, False)}),
    (5.0, 3.0, False, {(True, False), (False, False)}),  # plan_scale unused without a plan
    (1.0, 1.0, True, {(True, True)}),
    (5.0, 1.0, True, {(True, True), (False, True)}),
    (1.0, 2.0, True, {(True, True), (False, True), (False, False)}),
    (5.0, 0.0, True, {(True, True), (False, True), (False, False)}),
    (4.5, 2.5, True, {(True, True), (False, True), (False, False)}),
]


@pytest.mark.parametrize("s_text,s_plan,use_plan,passes", GUIDANCE_CASES)
def test_guidance_passes_and_formula(s_text, s_plan, use_plan, passes):
    fake = FakeDenoiser()
    x, t = torch.zeros(SHAPE), torch.full((1, 3), 500.0)
    v = guided_velocity(fake, x, t, Guidance(text_scale=s_text, plan_scale=s_plan), use_plan=use_plan)
    assert len(fake.calls) == len(passes) and set(fake.calls) == passes
    o = fake.outputs
    if use_plan:
        expected = (
            o[False, False] + s_plan * (o[False, True] - o[False, False]) + s_text * (o[True, True] - o[False, True])
        )
    else:
        expected = o[False, False] + s_text * (o[True, False] - o[False, False])
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-5)


def test_guidance_defaults():
    assert Guidance() == Guidance(text_scale=5.0, plan_scale=1.0)


def test_sample_never_passes_plan_without_a_plan():
    fake = FakeDenoiser()
    sample(fake, torch.zeros(SHAPE), steps=3, guidance=Guidance(5.0, 2.0), plan_active=lambda s: True)
    assert fake.calls and not any(plan for _, plan in fake.calls)


def test_plan_active_false_skips_plan_passes():
    fake = FakeDenoiser()
    steps = 6
    sigmas = flow_sigmas(steps, 5.0)
    seen = []

    def plan_active(sigma: float) -> bool:
        seen.append(sigma)
        return sigma > 0.9

    guidance = Guidance(5.0, 2.0)
    sample(fake, torch.zeros(SHAPE), steps=steps, guidance=guidance, use_plan=True, plan_active=plan_active)
    assert seen == pytest.approx(sigmas[:-1].tolist())
    by_sigma: dict[float, list] = {}  # passes grouped by the step's sigma
    for t, call in zip(fake.ts, fake.calls):
        by_sigma.setdefault(float(t[0, 0]) / 1000, []).append(call)
    assert len(by_sigma) == steps
    for sigma, calls in by_sigma.items():
        if sigma > 0.9:
            assert sorted(calls) == [(False, False), (False, True), (True, True)]
        else:
            assert sorted(calls) == [(False, False), (True, False)]
    assert any(s > 0.9 for s in by_sigma) and any(s <= 0.9 for s in by_sigma)


# ----------------------------------------------------------------------------- sample()


@pytest.mark.parametrize("solver,tol", [("euler", 0.1), ("unipc", 1e-2)])
def test_sample_reaches_gaussian_target(solver, tol):
    """With the exact velocity (sigma read back from t), sample() equals stepping the solver by hand
    and lands near MU + STD * noise."""

    def denoise(x, t, *, text, plan):
        return _gauss_velocity(x, float(t[0, 0]) / 1000)

    noise = initial_noise(SHAPE, seed=7, dtype=torch.float64)
    out = sample(denoise, noise, steps=40, shift=1.0, solver=solver, guidance=Guidance(1.0, 1.0))
    by_hand = _integrate(make_solver(solver, flow_sigmas(40, 1.0)), noise, _gauss_velocity)
    torch.testing.assert_close(out, by_hand, rtol=0, atol=1e-5)  # t is float32: sigma read back to ~1e-7
    assert (out - (MU + STD * noise)).abs().max().item() < tol


def test_ti2v_first_frame_and_timesteps():
    fake = FakeDenoiser()
    steps, shift = 5, 5.0
    noise = initial_noise(SHAPE, seed=1)
    image = torch.randn(SHAPE[0], SHAPE[1], 1, *SHAPE[3:], generator=torch.Generator().manual_seed(9))
    out = sample(fake, noise, steps=steps, shift=shift, guidance=Guidance(5.0, 1.0), first_frame_latent=image)
    assert torch.equal(out[:, :, :1], image)
    assert not torch.equal(out[:, :, 1:], noise[:, :, 1:])
    sigmas = flow_sigmas(steps, shift)
    assert len(fake.ts) == 2 * steps
    for k, (t, x) in enumerate(zip(fake.ts, fake.xs)):
        sigma = float(sigmas[k // 2])
        assert t.shape == (SHAPE[0], SHAPE[2])
        assert torch.all(t[:, 0] == 0)
        torch.testing.assert_close(t[:, 1:], torch.full_like(t[:, 1:], sigma * 1000))
        assert torch.equal(x[:, :, :1], image)  # the model always sees the image as frame 0


def test_a_clean_prefix_of_frames_is_pinned_at_timestep_0():
    """`first_frame_latent` of P frames (SemanticGen's sequential stage 1: the keyframes written so far) stays
    as given and reads timestep 0; the frames after it are sampled; a prefix longer than the video is refused."""
    fake = FakeDenoiser()
    prefix = torch.randn(SHAPE[0], SHAPE[1], 2, *SHAPE[3:], generator=torch.Generator().manual_seed(3))
    out = sample(fake, initial_noise(SHAPE, seed=1), steps=3, guidance=Guidance(1.0, 1.0), first_frame_latent=prefix)
    assert torch.equal(out[:, :, :2], prefix) and not torch.equal(out[:, :, 2:], torch.zeros_like(out[:, :, 2:]))
    assert all(torch.all(t[:, :2] == 0) and torch.all(t[:, 2:] > 0) for t in fake.ts)
    assert all(torch.equal(x[:, :, :2], prefix) for x in fake.xs)
    too_long = torch.zeros(SHAPE[0], SHAPE[1], SHAPE[2] + 1, *SHAPE[3:])
    with pytest.raises(ValueError, match="1 <= P <= 3"):
        sample(FakeDenoiser(), torch.zeros(SHAPE), steps=2, first_frame_latent=too_long)


def test_timesteps_without_first_frame_are_uniform():
    fake = FakeDenoiser()
    sample(fake, torch.zeros(SHAPE), steps=4, guidance=Guidance(1.0, 1.0))
    sigmas = flow_sigmas(4, 5.0)
    assert [float(t[0, 0]) for t in fake.ts] == pytest.approx((sigmas[:-1] * 1000).tolist())
    assert float(fake.ts[0][0, 0]) == 1000.0
    assert all(torch.all(t == t[0, 0]) for t in fake.ts)


def test_first_frame_shape_is_validated():
    bad = torch.zeros(1, 4, 1, 3, 2)
    with pytest.raises(ValueError, match="first_frame_latent"):
        sample(FakeDenoiser(), torch.zeros(SHAPE), steps=2, first_frame_latent=bad)


def test_sample_validates_noise_and_solver():
    with pytest.raises(ValueError, match="noise"):
        sample(FakeDenoiser(), torch.zeros(4, 3, 2, 2), steps=2)
    with pytest.raises(ValueError, match="unipc"):
        sample(FakeDenoiser(), torch.zeros(SHAPE), steps=2, solver="heun")


def test_initial_noise_reproducible():
    a = initial_noise(SHAPE, seed=123)
    assert torch.equal(a, initial_noise(SHAPE, seed=123))
    assert not torch.equal(a, initial_noise(SHAPE, seed=124))
    assert a.dtype == torch.float32 and a.shape == SHAPE
    assert torch.equal(initial_noise(SHAPE, seed=123, dtype=torch.bfloat16), a.to(torch.bfloat16))
    initial_noise((2,), seed=2**64 - 1)
    for bad in (-1, 2**64, 1.5):
        with pytest.raises(ValueError, match="seed"):
            initial_noise((2,), seed=bad)


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_sample_is_bitwise_deterministic(solver):
    def run():
        noise = initial_noise(SHAPE, seed=42)
        return sample(FakeDenoiser(), noise, steps=8, solver=solver, guidance=Guidance(4.0, 2.0), use_plan=True)

    assert torch.equal(run(), run())


def test_interrupt_raises_at_the_right_step():
    fake = FakeDenoiser()
    checks = []

    def interrupt() -> bool:
        checks.append(len(fake.calls))
        return len(checks) == 4  # fourth check, i.e. before step 3

    done = []
    with pytest.raises(SamplingInterrupted, match="step 3 of 8") as info:
        sample(
            fake,
            torch.zeros(SHAPE),
            steps=8,
            guidance=Guidance(1.0, 1.0),
            interrupt=interrupt,
            callback=lambda i, n, x, x0: done.append(i),
        )
    assert isinstance(info.value, RuntimeError)
    assert info.value.step == 3 and info.value.total == 8
    assert done == [0, 1, 2] and len(fake.calls) == 3


@pytest.mark.parametrize("solver", ["euler", "unipc"])
def test_callback_every_step(solver):
    records = []
    steps = 7
    out = sample(
        FakeDenoiser(),
        initial_noise(SHAPE, seed=3),
        steps=steps,
        solver=solver,
        callback=lambda i, n, x, x0: records.append((i, n, x.clone(), x0.clone())),
    )
    assert [r[0] for r in records] == list(range(steps))
    assert all(r[1] == steps for r in records)
    assert torch.equal(records[-1][2], out)
    torch.testing.assert_close(records[-1][3], out)  # the last step lands on its x0 prediction
    assert not torch.allclose(records[0][2], records[0][3])


def test_wan_schedule_starts_at_0_999_and_ends_at_zero():
    """Wan's sampler: linspace(0.999, 0) without its last point, shifted, then 0; `flow_sigmas` starts at 1."""
    from planx_core.diffusion import schedule_sigmas, shift_sigma, wan_sigmas

    sigmas = wan_sigmas(50, 5.0)
    assert sigmas.shape == (51,) and sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all())
    assert abs(float(sigmas[0]) - float(shift_sigma(0.999, 5.0))) < 1e-12
    assert abs(float(sigmas[1]) - float(shift_sigma(0.999 * 49 / 50, 5.0))) < 1e-12
    assert abs(float(flow_sigmas(50, 5.0)[0]) - float(sigmas[0])) < 3e-4  # the two schedules differ at the start
    assert torch.equal(schedule_sigmas("wan", 50, 5.0), sigmas)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_sigmas("karras", 50, 5.0)


def test_an_init_starts_the_schedule_at_its_noise_level():
    """SDEdit: with `init`, sampling starts at the first scheduled sigma at or below `init_sigma` from `init` noised
    to it, runs the schedule's steps from there (the callback numbers them as in the whole schedule), and keeps a
    pinned prefix; `init_sigma` 1 is the plain start; a level outside (0, 1] or an init of another shape is refused."""
    steps, shift = 10, 3.0
    sigmas = flow_sigmas(steps, shift)
    noise = initial_noise(SHAPE, seed=1)
    init = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    prefix = torch.randn(SHAPE[0], SHAPE[1], 1, *SHAPE[3:], generator=torch.Generator().manual_seed(6))
    fake, seen = FakeDenoiser(), []
    kwargs = {"steps": steps, "shift": shift, "solver": "euler", "guidance": Guidance(1.0, 1.0)}
    sample(
        fake,
        noise,
        init=init,
        init_sigma=0.6,
        first_frame_latent=prefix,
        callback=lambda i, n, *_: seen.append((i, n)),
        **kwargs,
    )
    skipped = int((sigmas[:-1] > 0.6).sum())
    start = float(sigmas[skipped])
    assert 0 < skipped < steps and start <= 0.6 < float(sigmas[skipped - 1])
    assert len(fake.ts) == steps - skipped and seen == [(i, steps) for i in range(skipped, steps)]
    assert float(fake.ts[0][0, 1]) == pytest.approx(start * 1000) and torch.all(fake.ts[0][:, 0] == 0)
    expected = (1 - start) * init + start * noise  # [B, C, F, H, W]
    torch.testing.assert_close(fake.xs[0][:, :, 1:], expected[:, :, 1:])
    assert torch.equal(fake.xs[0][:, :, :1], prefix)
    plain = sample(FakeDenoiser(), noise, **kwargs)
    assert torch.equal(sample(FakeDenoiser(), noise, init=init, init_sigma=1.0, **kwargs), plain)
    for level in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"init_sigma .* in \(0, 1\]"):
            sample(FakeDenoiser(), noise, init=init, init_sigma=level, **kwargs)
    with pytest.raises(ValueError, match="init must have the noise's shape"):
        sample(FakeDenoiser(), noise, init=init[:, :, :1], init_sigma=0.5, **kwargs)
