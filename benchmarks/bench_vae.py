"""Our Wan 2.2 VAE against diffusers' AutoencoderKLWan(is_residual=True): same weights, same clip.

Prints the max abs difference of the encoded mean and of the decoded video (parity, goal <= 1e-4 in
fp32), encode and decode times measured interleaved in one run with the ratio ours / diffusers
(goal <= 1.0), and on CUDA the peak memory of each. Weights are diffusers' random initialisation,
loaded into ours through `diffusers_to_official` (the loader's key conversion).
Default: Wan 2.2's architecture at widths 32 / 48 on a 9-frame 128x128 clip (CPU-sized).
`--preset wan2.2 --device cuda --dtype bfloat16 --video 121x704x1280` runs the real TI2V-5B VAE
(705M parameters) at the 5B's video size; `--skip-encode` times decoding alone.
"""

from __future__ import annotations

import torch
from common import common_args, interleaved_times, report, setup_runtime

from planx_core.wan.vae import VAEConfig, WanVAE, get_vae_preset
from planx_core.wan.vae_files import diffusers_to_official

MID = get_vae_preset("tiny2.2").with_(dim=32, dec_dim=48, name="mid2.2")


def build_pair(cfg: VAEConfig, device, dtype):
    from diffusers import AutoencoderKLWan

    ref = AutoencoderKLWan(
        base_dim=cfg.dim,
        decoder_base_dim=cfg.decoder_dim,
        z_dim=cfg.z_dim,
        dim_mult=list(cfg.dim_mult),
        num_res_blocks=cfg.num_res_blocks,
        temperal_downsample=list(cfg.temperal_downsample),
        is_residual=True,
        in_channels=cfg.video_channels,
        out_channels=cfg.video_channels,
        patch_size=cfg.patch_size,
        scale_factor_spatial=cfg.spatial_factor,
        latents_mean=[0.0] * cfg.z_dim,
        latents_std=[1.0] * cfg.z_dim,
    )
    ours = WanVAE(cfg.with_(latents_mean=None, latents_std=None))
    ours.load_state_dict(diffusers_to_official(ref.state_dict()), strict=True)
    return ours.to(device, dtype).eval(), ref.to(device, dtype).eval()


def peak_memory(fn, device) -> str:
    if device.type != "cuda":
        return "n/a (CPU)"
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"


def main():
    parser = common_args(__doc__)
    parser.add_argument("--preset", default=None, help="a planx_core VAE preset (wan2.2, tiny2.2) instead of mid2.2")
    parser.add_argument("--video", default="9x128x128", help="frames x height x width (1 + 4n frames, sides / 16)")
    parser.add_argument("--skip-encode", action="store_true", help="time decoding only")
    args = parser.parse_args()
    device, dtype, sync = setup_runtime(args)
    cfg = get_vae_preset(args.preset) if args.preset else MID
    ours, ref = build_pair(cfg, device, dtype)
    f, h, w = (int(v) for v in args.video.split("x"))
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"config {cfg.name}: dim {cfg.dim}, decoder {cfg.decoder_dim}, z {cfg.z_dim}, {params / 1e6:.1f} M parameters"
    )
    gen = torch.Generator().manual_seed(0)
    video = (torch.rand(1, 3, f, h, w, generator=gen) * 2 - 1).to(device, dtype)  # [B, 3, T, H, W]
    latent = torch.randn(1, *cfg.latent_shape(f, h, w), generator=gen).to(device, dtype)  # [B, z, t, h, w]
    print(f"video {list(video.shape)} <-> latent {list(latent.shape)}")
    with torch.inference_mode():
        out, ref_out = ours.decode(latent), ref.decode(latent).sample.float()
        diffs = {"decode": (out - ref_out).abs().max().item()}
        candidates = {"diffusers decode": lambda: ref.decode(latent), "planx_core decode": lambda: ours.decode(latent)}
        if not args.skip_encode:
            mean = ours.posterior(video)[0]
            diffs["encode"] = (mean - ref.encode(video).latent_dist.mean.float()).abs().max().item()
            candidates["diffusers encode"] = lambda: ref.encode(video)
            candidates["planx_core encode"] = lambda: ours.posterior(video)
        print("parity: max abs difference " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
        for name, fn in candidates.items():
            print(f"  peak memory {name:<20} {peak_memory(fn, device)}")
        times = interleaved_times(candidates, args.repeats, sync=sync)
    decode = report({k: v for k, v in times.items() if "decode" in k}, "diffusers decode")
    ratios = f"decode {decode['planx_core decode']:.3f}"
    if not args.skip_encode:
        encode = report({k: v for k, v in times.items() if "encode" in k}, "diffusers encode")
        ratios += f", encode {encode['planx_core encode']:.3f}"
    print(
        f"RESULT time ratio ours/diffusers: {ratios} (goal <= 1.0); parity "
        + ", ".join(f"{v:.2e}" for v in diffs.values())
    )


if __name__ == "__main__":
    main()
