"""Our WanModel against diffusers' WanTransformer3DModel: same config, same weights, same inputs.

Prints the max abs output difference (parity, goal <= 1e-4 in fp32) and the forward time ratio
ours / diffusers measured interleaved in one run (goal <= 1.0).
Default: a mid config (dim 512, 8 layers, 4 heads of 128, 2,304 video tokens, 512 text tokens).
`--preset wan2.2-ti2v-5b --device cuda --dtype bfloat16` runs the real 5B shape with random weights.
"""

from __future__ import annotations

import torch
from common import common_args, interleaved_times, report, setup_runtime

from planx_core.wan.configs import DiTConfig, get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.dit_files import to_official

MID = DiTConfig(dim=512, ffn_dim=2048, num_heads=4, num_layers=8, in_dim=48, out_dim=48, name="mid")


def build_pair(cfg: DiTConfig, device, dtype):
    from diffusers import WanTransformer3DModel

    ref = WanTransformer3DModel(
        patch_size=cfg.patch_size,
        num_attention_heads=cfg.num_heads,
        attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim,
        out_channels=cfg.out_dim,
        text_dim=cfg.text_dim,
        freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim,
        num_layers=cfg.num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        eps=cfg.eps,
    )
    ours = WanModel(cfg)
    ours.load_state_dict(to_official(ref.state_dict()), strict=True)
    return ours.to(device, dtype).eval(), ref.to(device, dtype).eval()


def main():
    parser = common_args(__doc__)
    parser.add_argument("--preset", default=None, help="a planx_core preset instead of the mid config")
    parser.add_argument("--latent", default="6x64x48", help="latent frames x height x width (48 channels)")
    args = parser.parse_args()
    device, dtype, sync = setup_runtime(args)
    cfg = get_preset(args.preset) if args.preset else MID
    ours, ref = build_pair(cfg, device, dtype)
    f, h, w = (int(v) for v in args.latent.split("x"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, f, h, w, generator=gen).to(device, dtype)
    context = torch.randn(1, cfg.text_len, cfg.text_dim, generator=gen).to(device, dtype)
    t = torch.tensor([700.0], device=device)
    tokens = f * (h // 2) * (w // 2)
    print(
        f"config {cfg.name}: dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads; "
        f"{tokens} video tokens, {cfg.text_len} text tokens"
    )
    with torch.inference_mode():
        diff = (ours(x, t, context).float() - ref(x, t, context, return_dict=False)[0].float()).abs().max().item()
        print(f"parity: max abs difference {diff:.2e}")
        times = interleaved_times(
            {"diffusers": lambda: ref(x, t, context, return_dict=False), "planx_core": lambda: ours(x, t, context)},
            args.repeats,
            sync=sync,
        )
    ratios = report(times, "diffusers")
    print(f"RESULT forward time ratio ours/diffusers = {ratios['planx_core']:.3f} (goal <= 1.0); parity {diff:.2e}")


if __name__ == "__main__":
    main()
