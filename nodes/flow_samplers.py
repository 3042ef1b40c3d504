"""planx_core's flow-matching solvers as ComfyUI samplers, Wan's sigma schedule, and the shift of a MODEL.

ComfyUI's `uni_pc` is UniPC bh1 in an eps parametrisation, far from the flow UniPC (bh2, data
prediction) that Wan 2.2's official sampler runs; `flow_unipc` and `flow_euler` run planx_core's
own solvers (`planx_core.diffusion.solvers`) on ComfyUI's denoised predictions: a flow MODEL
(ComfyUI's CONST sampling) gives x0, so the velocity is (x - x0) / sigma. `wan` is Wan's own sigma
schedule (`planx_core.diffusion.wan_sigmas`). The default shift of a MODEL comes from planx_core's
one table (`planx_core.wan.SAMPLING`), so Wan 2.2 TI2V-5B samples at its config's 5.0.
"""

from __future__ import annotations

import comfy.samplers
import torch
from tqdm.auto import trange

from planx_core.diffusion import make_solver, wan_sigmas
from planx_core.wan import default_shift, preset_named

FLOW_SOLVERS = {"flow_unipc": "unipc", "flow_euler": "euler"}  # node option -> planx_core solver
SCHEDULERS = ("simple", "wan")


def flow_sampler(solver: str, pure_noise: bool = False) -> comfy.samplers.KSAMPLER:
    """A ComfyUI sampler running planx_core's `solver` ("unipc" or "euler") along ComfyUI's sigmas. With
    `pure_noise` (a full denoise on Wan's schedule) the first sample is the noise itself, as Wan's sampler starts
    at sigma 0.999 from pure noise; ComfyUI would scale it by that first sigma."""

    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        noise = getattr(model, "noise", None)  # KSAMPLER hands the unscaled noise to its model wrapper
        if pure_noise and isinstance(noise, torch.Tensor) and noise.shape == x.shape:
            x = noise.to(x)
        stepper = make_solver(solver, sigmas)
        ones = x.new_ones([x.shape[0]])  # [B]
        for i in trange(len(sigmas) - 1, disable=disable):
            sigma = sigmas[i]
            denoised = model(x, sigma * ones, **extra_args)  # x0 [B, C, F, H, W]
            if callback is not None:
                callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
            x = stepper.step(x, (x - denoised) / sigma, i)  # velocity = (x - x0) / sigma
        return x

    return comfy.samplers.KSAMPLER(sample)


def sampler_for(name: str, comfy_names: dict[str, str], scheduler: str = "simple"):
    """The sampler object of a Plan-X Sampler `solver` option: planx_core's flow solvers (from pure noise on
    Wan's schedule), or ComfyUI's."""
    if name in FLOW_SOLVERS:
        return flow_sampler(FLOW_SOLVERS[name], pure_noise=scheduler == "wan")
    return comfy.samplers.sampler_object(comfy_names[name])


def sigmas_for(model, scheduler: str, steps: int) -> torch.Tensor:
    """`steps + 1` sigmas of the MODEL's sampling: ComfyUI's `simple` scheduler, or Wan's own schedule at the
    model's shift."""
    sampling = model.get_model_object("model_sampling")
    if scheduler == "wan":
        return wan_sigmas(steps, float(sampling.shift)).float()
    return comfy.samplers.calculate_sigmas(sampling, "simple", steps)


def table_shift(model) -> float | None:
    """planx_core's default shift for the MODEL's DiT when its sizes are a known preset, else None."""
    dm = model.get_model_object("diffusion_model")
    sizes = (getattr(dm, "dim", None), len(getattr(dm, "blocks", ())), getattr(dm, "num_heads", None))
    in_dim = getattr(getattr(dm, "patch_embedding", None), "in_channels", None)
    return default_shift(preset_named(*sizes, in_dim))
