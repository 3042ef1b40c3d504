"""Added cost of the Plan-X semantic branch per DiT forward, at the real plan-to-video token ratio.

The reference video (1280x704, 121 frames) has 27,280 video tokens and 11 keyframes x 81 = 891
plan tokens (1 : 30.6). The default here scales both down evenly: 2,480 video tokens
(4 latent frames of 20 x 31 tokens) against one 9x9 keyframe (81 tokens), with 512 text tokens,
at the mid config (dim 512, 8 layers). Goal: the branch adds <= 5% to a step.
On a GPU: `--preset wan2.2-ti2v-5b --latent 31x44x80 --keyframes 11 --dtype bfloat16`.
"""

from __future__ import annotations

import torch
from bench_dit_vs_diffusers import MID
from common import common_args, interleaved_times, report, setup_runtime

from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.wan.configs import get_preset
from planx_core.wan.dit import WanModel


def branch_for(cfg, mode: str, device, dtype) -> SemanticBranch:
    branch = SemanticBranch(
        BranchConfig(code_dim=1536, dim=cfg.dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, mode=mode)
    )
    for module in branch.attn.values():  # trained-like weights: a zero value projection would be free
        torch.nn.init.normal_(module.v.weight, std=0.02)
    return branch.to(device, dtype).eval()


def main():
    parser = common_args(__doc__)
    parser.add_argument("--preset", default=None)
    parser.add_argument("--latent", default="4x40x62", help="latent frames x height x width")
    parser.add_argument("--keyframes", type=int, default=1)
    args = parser.parse_args()
    device, dtype, sync = setup_runtime(args)
    cfg = get_preset(args.preset) if args.preset else MID
    model = WanModel(cfg).to(device, dtype).eval()
    f, h, w = (int(v) for v in args.latent.split("x"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, f, h, w, generator=gen).to(device, dtype)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen).to(device, dtype)
    t = torch.tensor([700.0], device=device)
    frames = [k * (f - 1) / max(args.keyframes - 1, 1) for k in range(args.keyframes)]
    vectors = torch.randn(1, args.keyframes * 81, 1536, generator=gen).to(device, dtype)
    plans = {
        mode: branch_for(cfg, mode, device, dtype).condition(vectors, frames, (9, 9))
        for mode in ("cross_attn", "in_context")
    }
    video_tokens = f * (h // 2) * (w // 2)
    print(
        f"config {cfg.name}: dim {cfg.dim}, {cfg.num_layers} layers; {video_tokens} video tokens, "
        f"{args.keyframes * 81} plan tokens (ratio 1:{video_tokens / (args.keyframes * 81):.1f}), "
        f"{cfg.text_len} text tokens"
    )
    with torch.inference_mode():
        times = interleaved_times(
            {
                "no plan": lambda: model(x, t, context),
                "cross_attn (all blocks)": lambda: model(x, t, context, plan=plans["cross_attn"]),
                "in_context": lambda: model(x, t, context, plan=plans["in_context"]),
            },
            args.repeats,
            sync=sync,
        )
    ratios = report(times, "no plan")
    for mode in ("cross_attn (all blocks)", "in_context"):
        print(f"RESULT {mode}: +{(ratios[mode] - 1) * 100:.1f}% per forward (goal <= 5%)")


if __name__ == "__main__":
    main()
