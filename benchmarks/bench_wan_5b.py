"""One Wan 2.2 TI2V-5B denoising step and VAE decode: our models against ComfyUI's native Wan, same weights and inputs.

What it measures (issue 15, "On a GPU"): a sampler's step of the DiT with text CFG (a positive and a
negative prompt) at a TI2V latent with per-frame timesteps (latent frame 0 holds the start image:
timestep 0, the rest sigma * 1000), then the Wan 2.2 VAE decode of a latent of that shape. For each
candidate: median seconds (interleaved, paired ratio ours / ComfyUI, as `common.py`), the CUDA peak
memory it needs alone (its weights + `torch.cuda.max_memory_allocated` above what was resident before
the call, reset between candidates) and the max |diff| of the outputs (parity). Nothing is asserted.

Candidates. DiT: `planx_core.wan.WanModel` against ComfyUI's `comfy.ldm.wan.model.WanModel` built the
way `nodes/comfy_models.py` does (`supported_models.WAN22_T2V` -> `get_model` -> `load_model_weights`,
here directly on `--device` in `--dtype`), called through `model_base.WAN22.apply_model` with a
`denoise_mask` as ComfyUI's sampler calls it (its `process_timestep` turns the mask into per-frame
timesteps). The guided denoised latent x0 = x - sigma * v is compared (ComfyUI's CFG combines x0;
ours combines velocities; the two are equal in exact arithmetic). `--cfg native` (default) runs each
as its sampler does: ours two forwards (`diffusion.sampling.guided_velocity`), ComfyUI one batch of 2
(`samplers.calc_cond_batch` when memory allows); `batch` / `two` force one way on both.
VAE: `planx_core.wan.WanVAE` against ComfyUI's `comfy.ldm.wan.vae2_2.WanVAE` (the class `comfy.sd.VAE`
builds for `wan2.2_vae.safetensors`); ComfyUI gets the latent de-normalised (its `Wan22` latent format's
`process_out`), its output is clamped to [-1, 1] for parity as `comfy.sd.VAE.decode` does.

Weights: random (seeded, fan-in scaled), made once in ours directly on the device (meta device, then
`to_empty` and an init on the device; no host copy), copied into ComfyUI's modules (official key names
are ComfyUI's: the key sets are checked equal). ComfyUI: `$COMFYUI_PATH`, else `~/ComfyUI` (0.3.64);
without one (or `--no-comfyui`) only ours runs and the RESULT lines say why.

Default: a small Wan-architecture DiT (dim 256, 4 layers, heads of 128 as the 5B) and the Wan 2.2 VAE
at widths 16 / 24 (`tiny2.2`; `--vae-preset small2.2`: 32 / 48) on a 5x128x128 clip, CPU-sized.
The real run (needs a GPU; refused on CPU):
  python benchmarks/bench_wan_5b.py --preset wan2.2-ti2v-5b --device cuda --dtype bfloat16 \
      --video 121x704x1280 --repeats 3
-> latent [48, 31, 44, 80], 27,280 video tokens, the 705M-parameter VAE (`--vae-preset` overrides).

Sources: Wan-Video/Wan2.2 `wan/textimage2video.py` (TI2V per-frame timesteps, guide scale 5.0) and
`wan/configs/wan_ti2v_5B.py`; ComfyUI 0.3.64 `comfy/model_base.py` (`WAN22`, `_apply_model`),
`comfy/samplers.py` (`cfg_function`, `calc_cond_batch`), `comfy/sd.py` (the Wan 2.2 VAE), `comfy/ldm/wan/`.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import sys
import traceback
from pathlib import Path

import torch
from common import common_args, interleaved_times, report, setup_runtime

from planx_core.wan.attention import BACKENDS, use_backend
from planx_core.wan.configs import PRESETS, DiTConfig, get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.dit_files import comfyui_unet_config
from planx_core.wan.vae import VAE_PRESETS, VAEConfig, WanVAE, get_vae_preset

# Wan architecture at CPU size: heads of 128 as the 5B, its text width (umT5 4096, 512 tokens), 48 channels.
SMALL = DiTConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=4, in_dim=48, out_dim=48, name="small")
# Wan 2.2's VAE (levels, 2x2 patchify, z 48, time steps) at bench_vae's widths 32 / 48.
SMALL_VAE = get_vae_preset("tiny2.2").with_(dim=32, dec_dim=48, name="small2.2")
GiB = 2**30
CPU_MAX_PARAMS, CPU_MAX_TOKENS = 1.5e9, 8192  # beyond these, a CPU run would take hours or all the memory


# ----------------------------------------------------------------------------- ComfyUI


def comfyui_path() -> Path | None:
    """A ComfyUI checkout: $COMFYUI_PATH, else ~/ComfyUI (as tests/conftest.py); None when neither holds comfy/."""
    for candidate in (os.environ.get("COMFYUI_PATH"), str(Path.home() / "ComfyUI")):
        if candidate and (Path(candidate) / "comfy").is_dir():
            return Path(candidate)
    return None


def import_comfyui(device: torch.device):
    """(comfy modules namespace, None) or (None, why not)."""
    path = comfyui_path()
    if path is None:
        return None, "no ComfyUI checkout (set COMFYUI_PATH or put one at ~/ComfyUI)"
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    try:
        from comfy.cli_args import args

        if device.type == "cpu":
            args.cpu = True  # must precede comfy.model_management's import (it picks the device then)
        import comfy.ldm.modules.attention
        import comfy.ldm.wan.vae2_2
        import comfy.model_management
        import comfy.supported_models
        import comfyui_version
    except Exception as err:  # a checkout whose requirements are missing here: run ours alone, say why
        return None, f"ComfyUI at {path} does not import: {type(err).__name__}: {err}"
    attention = comfy.ldm.modules.attention.optimized_attention.__name__
    print(f"ComfyUI {comfyui_version.__version__} at {path}; its attention: {attention}")
    return comfy, None


def check_same_keys(ours: torch.nn.Module, theirs: torch.nn.Module, what: str) -> None:
    a, b = ours.state_dict(), theirs.state_dict()
    if set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        only_a, only_b = sorted(set(a) - set(b))[:5], sorted(set(b) - set(a))[:5]
        raise SystemExit(f"{what}: key sets differ (ours only {only_a}, ComfyUI only {only_b}); not the same model")


def comfy_dit(comfy, cfg: DiTConfig, ours: WanModel, device: torch.device, dtype: torch.dtype):
    """ComfyUI's WAN22 model on `device` in `dtype` (no init: its ops skip it), loaded with our weights."""
    config = comfy.supported_models.WAN22_T2V(comfyui_unet_config(cfg))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "", device=device)
    model.load_model_weights(dict(ours.state_dict()), "")  # copies; the dict is consumed
    check_same_keys(ours, model.diffusion_model, "DiT")
    return model.eval()


def comfy_vae(comfy, cfg: VAEConfig, ours: WanVAE, device: torch.device, dtype: torch.dtype):
    """ComfyUI's Wan 2.2 VAE class at our config, on `device` in `dtype`, loaded with our weights."""
    with torch.device("meta"):
        model = comfy.ldm.wan.vae2_2.WanVAE(
            dim=cfg.dim,
            dec_dim=cfg.decoder_dim,
            z_dim=cfg.z_dim,
            dim_mult=list(cfg.dim_mult),
            num_res_blocks=cfg.num_res_blocks,
            attn_scales=[],
            temperal_downsample=list(cfg.temperal_downsample),
        )
    model = model.to(dtype).to_empty(device=device)
    check_same_keys(ours, model, "VAE")
    model.load_state_dict(ours.state_dict(), strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- our models, on the device


@torch.no_grad()
def random_init_(module: torch.nn.Module, seed: int, device: torch.device) -> None:
    """Seeded random weights drawn on `device`: fan-in scaled matrices and kernels, norm scales near 1,
    small biases, Wan's modulation scale (randn / sqrt(dim)). Same seed and device -> same weights."""
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        noise = torch.randn(p.shape, generator=gen, device=device)  # float32, then cast by copy_
        if leaf == "modulation":
            p.copy_(noise * p.shape[-1] ** -0.5)
        elif leaf == "gamma" or (leaf == "weight" and p.ndim == 1):
            p.copy_(1 + 0.05 * noise)  # RMS / layer norm scales
        elif leaf == "bias":
            p.copy_(0.02 * noise)
        else:
            p.copy_(noise * p[0].numel() ** -0.5)  # fan in: in_features (x kernel volume)


def on_device(make, seed: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Build a module on the meta device, allocate it on `device` in `dtype`, fill it with seeded weights."""
    with torch.device("meta"):
        module = make()
    module = module.to(dtype).to_empty(device=device)
    random_init_(module, seed, device)
    return module.eval()


def count_params(make) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in make().parameters())


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ----------------------------------------------------------------------------- measuring


def measured(fn, device: torch.device, weights: int):
    """Run `fn` once (it doubles as the warm-up); returns (its output, GiB it needs alone or None on CPU):
    its weights + the peak allocated above what was resident before the call."""
    if device.type != "cuda":
        return fn(), None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    print(f"  (max_memory_allocated {peak / GiB:.2f} GiB, resident before {before / GiB:.2f} GiB)")
    return out, (weights + peak - before) / GiB


def compare(name: str, times: dict, peaks: dict, parity: float | None, scale: float) -> str:
    """One RESULT line: medians, paired ratio ours / ComfyUI, peaks, parity (absolute, and relative to scale)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    if "comfyui" not in times:
        peak = f"{peaks['ours']:.2f} GiB" if peaks.get("ours") is not None else "n/a (CPU)"
        return f"RESULT {name} ours {med['ours']:.3f} s comfyui n/a peak {peak} parity n/a"
    ratio = statistics.median(a / b for a, b in zip(times["ours"], times["comfyui"]))
    if peaks.get("ours") is None:
        peak = "n/a (CPU)"
    else:
        peak = f"{peaks['ours']:.2f}/{peaks['comfyui']:.2f} GiB"
    return (
        f"RESULT {name} ours {med['ours']:.3f} s comfyui {med['comfyui']:.3f} s ratio {ratio:.3f} "
        f"peak {peak} parity {parity:.2e} (rel {parity / max(scale, 1e-12):.1e})"
    )


def parse_video(text: str, vae: VAEConfig) -> tuple[int, int, int]:
    f, h, w = (int(v) for v in text.lower().split("x"))
    k, s = vae.temporal_factor, vae.spatial_factor * 2  # the DiT's 2x2 patch on top of the VAE's 16x
    if f < 1 or (f - 1) % k or h % s or w % s:
        raise SystemExit(
            f"--video {text}: frames must be 1 + {k}n and height / width multiples of {s} (e.g. 121x704x1280)"
        )
    return f, h, w


# ----------------------------------------------------------------------------- the two stages


def dit_stage(args, comfy, cfg, device, dtype, sync, x: torch.Tensor) -> str:
    """x: the sampler's latent `[1, C, F, h, w]` float32 on the device."""
    print(f"\n== DiT step: {cfg.name} (dim {cfg.dim}, {cfg.num_layers} layers, {cfg.num_heads} heads)")
    ours = on_device(lambda: WanModel(cfg), args.seed, device, dtype)
    params = sum(p.numel() for p in ours.parameters())
    theirs = comfy_dit(comfy, cfg, ours, device, dtype) if comfy else None
    latent_shape = tuple(x.shape[1:])  # (C, F, h, w)
    grid = ours.token_grid(latent_shape)
    tokens = math.prod(grid)
    print(f"{params / 1e9:.3f} B parameters; latent {list(latent_shape)} -> {tokens} video tokens, {cfg.text_len} text")

    gen = torch.Generator().manual_seed(args.seed + 1)
    context = torch.zeros(2, cfg.text_len, cfg.text_dim)  # [2, Lt, text_dim]: umT5 features, zero padded
    context[0, : min(96, cfg.text_len)] = torch.randn(min(96, cfg.text_len), cfg.text_dim, generator=gen)
    context[1, : min(32, cfg.text_len)] = torch.randn(min(32, cfg.text_len), cfg.text_dim, generator=gen)
    pos, neg = context.to(device, dtype).unbind(0)  # [Lt, text_dim] each
    pos, neg = pos[None], neg[None]  # [1, Lt, text_dim]
    sigma, scale = args.sigma, args.cfg_scale
    t_frames = torch.full((1, grid[0]), sigma * 1000.0, device=device)  # [1, F']: per-frame timesteps
    t_frames[:, 0] = 0.0  # TI2V: latent frame 0 is the clean start image
    mask = torch.ones(1, 1, *latent_shape[1:], device=device)  # [1, 1, F, h, w]: ComfyUI's denoise mask
    mask[:, :, 0] = 0.0
    sigmas = torch.full((1,), sigma, device=device)  # [1]
    ours_batch = args.cfg == "batch"
    comfy_batch = args.cfg in ("batch", "native")
    print(
        f"CFG scale {scale}, sigma {sigma}: ours {'one batch of 2' if ours_batch else 'two forwards'}, "
        f"ComfyUI {'one batch of 2' if comfy_batch else 'two forwards'}; our attention {args.attention}"
    )

    def our_step(model: WanModel, dtype: torch.dtype):
        def step() -> torch.Tensor:
            xd, p, n = x.to(dtype), pos.to(dtype), neg.to(dtype)  # [1, C, F, h, w], [1, Lt, text_dim] x 2
            with use_backend(args.attention):
                if ours_batch:
                    both = model(xd.expand(2, -1, -1, -1, -1), t_frames.expand(2, -1), torch.cat([p, n]))
                    v_pos, v_neg = both.chunk(2)  # [1, C, F, h, w] each
                else:
                    v_pos, v_neg = model(xd, t_frames, p), model(xd, t_frames, n)  # [1, C, F, h, w] each
            v = v_neg.float() + scale * (v_pos.float() - v_neg.float())  # guided velocity
            return x - sigma * v  # [1, C, F, h, w] denoised x0

        return step

    def comfy_step() -> torch.Tensor:
        if comfy_batch:
            d = theirs.apply_model(
                x.expand(2, -1, -1, -1, -1),
                sigmas.expand(2),
                c_crossattn=torch.cat([pos, neg]),
                denoise_mask=mask.expand(2, -1, -1, -1, -1),
            )  # [2, C, F, h, w] denoised, float32
            d_pos, d_neg = d.chunk(2)
        else:
            d_pos = theirs.apply_model(x, sigmas, c_crossattn=pos, denoise_mask=mask)
            d_neg = theirs.apply_model(x, sigmas, c_crossattn=neg, denoise_mask=mask)
        return d_neg + scale * (d_pos - d_neg)  # ComfyUI's cfg_function

    candidates = {"ours": our_step(ours, dtype)}
    if theirs is not None:
        candidates["comfyui"] = comfy_step
    weights = {"ours": weight_bytes(ours), "comfyui": weight_bytes(theirs.diffusion_model) if theirs else 0}
    outs, peaks = {}, {}
    with torch.inference_mode():
        for name, fn in candidates.items():  # first call of each: warm-up, peak memory, output for parity
            print(f"  peak memory run: {name}")
            outs[name], peaks[name] = measured(fn, device, weights[name])
        parity = (outs["ours"] - outs["comfyui"]).abs().max().item() if theirs else None
        ref_scale = outs["comfyui" if theirs else "ours"].abs().max().item()
        times = interleaved_times(candidates, args.repeats, warmup=0, sync=sync)
    report(times, "comfyui" if theirs else "ours")
    if parity is not None:
        print(f"parity: max |x0 ours - x0 ComfyUI| {parity:.3e} (max |x0| {ref_scale:.2f})")
    line = compare("dit_step", times, peaks, parity, ref_scale)
    if args.fp32_reference and dtype != torch.float32:
        with torch.device("meta"):
            ref = WanModel(cfg)
        ref = ref.to_empty(device=device)
        ref.load_state_dict(ours.state_dict())  # the same (rounded) weights, upcast exactly
        with torch.inference_mode():
            exact = our_step(ref.eval(), torch.float32)()  # [1, C, F, h, w]
        errors = {name: (out - exact).abs().max().item() for name, out in outs.items()}
        print("against our float32 step on the same weights: " + ", ".join(f"{k} {v:.3e}" for k, v in errors.items()))
        line += " vs_fp32 " + " ".join(f"{k} {v:.2e}" for k, v in errors.items())
    return line


def vae_stage(args, comfy, vae_cfg, device, dtype, sync, latent: torch.Tensor) -> str:
    params = count_params(lambda: WanVAE(vae_cfg))
    widths = f"dim {vae_cfg.dim}, decoder {vae_cfg.decoder_dim}"
    print(f"\n== VAE decode: {vae_cfg.name} ({widths}, {params / 1e6:.1f} M parameters)")
    ours = on_device(lambda: WanVAE(vae_cfg), args.seed + 2, device, dtype)
    theirs = comfy_vae(comfy, vae_cfg, ours, device, dtype) if comfy else None
    print(
        f"latent {list(latent.shape)} -> video [1, 3, {1 + 4 * (latent.shape[2] - 1)}, "
        f"{latent.shape[3] * vae_cfg.spatial_factor}, {latent.shape[4] * vae_cfg.spatial_factor}] in {dtype}"
    )

    def ours_decode() -> torch.Tensor:
        return ours.decode(latent)  # [1, 3, T, H, W] float32, clamped

    def comfy_decode() -> torch.Tensor:
        video = theirs.decode(ours.denormalize(latent.float()).to(dtype))  # [1, 3, T, H, W] in dtype, unclamped
        return video.float()  # as comfy.sd.VAE.decode (which also moves it to the CPU: not timed here)

    candidates = {"ours": ours_decode}
    if theirs is not None:
        candidates["comfyui"] = comfy_decode
    weights = {"ours": weight_bytes(ours), "comfyui": weight_bytes(theirs) if theirs else 0}
    outs, peaks = {}, {}
    with torch.inference_mode():
        for name, fn in candidates.items():
            print(f"  peak memory run: {name}")
            outs[name], peaks[name] = measured(fn, device, weights[name])
        parity = None
        if theirs is not None:
            parity = (outs["ours"] - outs["comfyui"].clamp(-1, 1)).abs().max().item()
            print(f"parity: max |video ours - video ComfyUI| {parity:.3e} (values in [-1, 1])")
        del outs
        times = interleaved_times(candidates, args.vae_repeats or args.repeats, warmup=0, sync=sync)
    report(times, "comfyui" if theirs else "ours")
    return compare("vae_decode", times, peaks, parity, 1.0)


def main():
    parser = common_args(__doc__)
    parser.add_argument("--preset", default=None, help=f"a DiT preset ({', '.join(PRESETS)}) instead of the small one")
    parser.add_argument("--video", default="5x128x128", help="frames x height x width of the clip (1 + 4n frames)")
    parser.add_argument(
        "--vae-preset",
        default=None,
        help="wan2.2, tiny2.2 or small2.2 (default: wan2.2 with a real --preset, else tiny2.2)",
    )
    parser.add_argument(
        "--vae-dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: --dtype"
    )
    parser.add_argument("--vae-repeats", type=int, default=0, help="timed VAE decodes per candidate (0 = --repeats)")
    parser.add_argument("--cfg", default="native", choices=["native", "batch", "two"], help="how the CFG pair runs")
    parser.add_argument("--cfg-scale", type=float, default=5.0, help="text guidance (TI2V-5B: 5.0)")
    parser.add_argument("--sigma", type=float, default=0.9, help="the step's noise level (timestep sigma * 1000)")
    parser.add_argument("--attention", default="sdpa", choices=BACKENDS, help="our attention backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fp32-reference",
        action="store_true",
        help="also run our DiT in float32 on the same weights: each one's error",
    )
    parser.add_argument("--no-comfyui", action="store_true", help="time ours alone")
    parser.add_argument("--skip-vae", action="store_true", help="the DiT step only")
    args = parser.parse_args()
    device, dtype, sync = setup_runtime(args)
    vae_dtype = getattr(torch, args.vae_dtype) if args.vae_dtype else dtype
    cfg = get_preset(args.preset) if args.preset else SMALL
    vae_name = args.vae_preset or ("wan2.2" if args.preset and not args.preset.startswith("tiny") else "tiny2.2")
    if vae_name not in (*VAE_PRESETS, "small2.2"):
        raise SystemExit(f"--vae-preset {vae_name}: choose wan2.2, tiny2.2 or small2.2")
    vae_cfg = SMALL_VAE if vae_name == "small2.2" else get_vae_preset(vae_name)
    if vae_cfg.version != "2.2" or vae_cfg.z_dim != cfg.in_dim:
        raise SystemExit(f"VAE {vae_name} (z {vae_cfg.z_dim}) does not fit the DiT {cfg.name} ({cfg.in_dim} channels)")
    f, h, w = parse_video(args.video, vae_cfg)
    latent_shape = vae_cfg.latent_shape(f, h, w)  # (48, F, h, w)
    tokens = latent_shape[1] * (latent_shape[2] // 2) * (latent_shape[3] // 2)
    params = count_params(lambda: WanModel(cfg))
    if device.type == "cpu" and (params > CPU_MAX_PARAMS or tokens > CPU_MAX_TOKENS):
        raise SystemExit(
            f"bench_wan_5b: {cfg.name} ({params / 1e9:.1f} B parameters) at {args.video} ({tokens} video tokens) "
            f"needs a GPU: run it with --device cuda on a CUDA machine. On CPU run the default small size "
            f"(no --preset / --video), which has the same architecture."
        )
    comfy, why = (None, "--no-comfyui") if args.no_comfyui else import_comfyui(device)
    if comfy is None:
        print(f"ComfyUI: not compared ({why})")
    print(f"clip {f}x{h}x{w} -> latent {list(latent_shape)}")
    gen = torch.Generator().manual_seed(args.seed)
    latent = torch.randn(1, *latent_shape, generator=gen).to(device)  # [1, C, F, h, w]: the step's x, then decoded
    lines = [f"RESULT comfyui not compared: {why}"] if comfy is None else []
    stages = [("dit_step", lambda: dit_stage(args, comfy, cfg, device, dtype, sync, latent))]
    if not args.skip_vae:
        stages.append(("vae_decode", lambda: vae_stage(args, comfy, vae_cfg, device, vae_dtype, sync, latent)))
    for name, run in stages:
        try:
            line = run()
        except Exception as err:  # out of memory, a ComfyUI API change...: say so, keep the other stage's result
            traceback.print_exc()
            line = f"RESULT {name} FAILED {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
        print(line, flush=True)  # at once: a run cut short by a timeout keeps what it measured
        lines.append(line)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\n== summary (times: median s per step / decode; ratio: paired ours / ComfyUI; peak: GiB each needs alone)")
    for line in lines:
        print(line)
    return 1 if any("FAILED" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
