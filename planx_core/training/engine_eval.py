"""The engine's evaluation loss for flow stages: the velocity error at fixed noise levels with fixed noise.

A training loss jumps with the noise level each step draws; the loss of one fixed batch at fixed
sigmas (0.1 .. 0.9, as diffusion-pipe's timestep quantiles) with noise drawn once from the seed
moves only when the model does, so its curve shows progress and overfitting. Noised as in
training (`flow`: x_t = (1 - sigma) x0 + sigma noise, target noise - x0, t = 1000 sigma on every
latent frame); no dropout, no pinned frame.
"""

from __future__ import annotations

import torch

SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def flow_losses(
    model,
    x0: torch.Tensor,
    context: torch.Tensor,
    *,
    plan=None,
    seed: int = 0,
    sigmas=SIGMAS,
    prefix: int = 0,
    **options,
) -> dict[str, float]:
    """{sigma: mean squared velocity error of `model(x_t, t, context, plan=plan, **options)`}; x0 `[B, C, F, H, W]`;
    the first `prefix` frames are given clean at timestep 0 and not scored."""
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0)  # [B, C, F, H, W]
    target = (noise - x0).float()[:, :, prefix:]  # [B, C, F - prefix, H, W]
    out = {}
    for sigma in sigmas:
        x_t = torch.cat([x0[:, :, :prefix], ((1 - sigma) * x0 + sigma * noise)[:, :, prefix:]], dim=2)
        t = torch.full((x0.shape[0], x0.shape[2]), 1000.0 * sigma, device=x0.device)  # [B, F]
        t[:, :prefix] = 0.0
        velocity = model(x_t, t, context, plan=plan, **options)[:, :, prefix:]  # [B, C, F - prefix, H, W]
        out[f"{sigma:g}"] = round(float(((velocity.float() - target) ** 2).mean()), 6)
    return out
