"""Time and peak memory of one denoising step as the video grows: shifted windows (local or global
semantics) vs full attention.

One step = one WanModel forward with in-context semantic tokens at about 1/16 of the video tokens,
SemanticGen's ratio (arXiv 2512.20619), laid out here as one keyframe of about H'W'/16 cells per
latent frame (`--semantic-ratio`). Three modes side by side: `windowed-local` (each window sees the
semantic tokens of its own span, `--margin` latent frames wider: `wan.windows`, the default),
`windowed-global` (every window sees all semantic tokens) and `full` attention. The video grows 1x,
2x, 4x, 8x and 16x a base length; ratios are to the 1x row. Goal: windowed-local 8x <= 9x time
(linear); windowed-global's semantic term and full attention grow quadratically.

Default (CPU, about ten minutes on 2 cores): dim 256, 4 heads, 2 layers, 16x16 tokens per latent
frame, base 8 latent frames, window Tw = 4, one torch thread (on a shared 2-core machine thread
hand-offs make the timings of the small rows erratic); `--semantic-ratio 0` drops the semantic
tokens; `--full-scales` limits full attention to the scales it can run in memory.
GPU: `--device cuda --shape 5b` (Wan 2.2 TI2V-5B: dim 3072, 24 heads, 30 layers or `--layers N`,
22x40 tokens per latent frame, bfloat16).
Time: all configurations interleaved in one process, medians; a second table times the
self-attention alone (one odd block's q/k/v through `windowed_attention` or full `attention`), which
separates the attention's growth from the rest of the step (on a CPU the linear layers also slow
down per token once the activations leave the caches). Peak memory: on CUDA
`torch.cuda.max_memory_allocated` above what was allocated before the forward; on CPU each
configuration runs in a fresh subprocess and reports its peak RSS growth over one forward.
The last line: `RESULT windowed-local 8x/1x time <ratio> (goal <= 9)`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import resource
import statistics
import subprocess
import sys

import torch
from common import common_args, interleaved_times, setup_runtime

from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.wan.attention import attention
from planx_core.wan.configs import DiTConfig, get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.windows import WindowSpec, windowed_attention

SHAPES = {  # config, tokens per latent frame (H' x W'), default dtype
    "cpu": (
        DiTConfig(
            dim=256,
            ffn_dim=1024,
            num_heads=4,
            num_layers=2,
            in_dim=16,
            out_dim=16,
            text_dim=64,
            freq_dim=64,
            text_len=64,
            name="bench-256",
        ),
        (16, 16),
        "float32",
    ),
    "5b": (get_preset("wan2.2-ti2v-5b"), (22, 40), "bfloat16"),
}
MODES = ("windowed-local", "windowed-global", "full")


def parse_args():
    parser = common_args(__doc__)
    parser.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, default=None, help="DiT blocks (default: the shape's)")
    parser.add_argument("--frames", type=int, default=8, help="latent frames of the 1x video")
    parser.add_argument("--window", type=int, default=4, help="Tw, latent frames per window")
    parser.add_argument("--scales", default="1,2,4,8,16")
    parser.add_argument("--full-scales", default=None, help="scales full attention runs at (default: all)")
    parser.add_argument("--margin", type=int, default=0, help="windowed-local: latent frames past each window end")
    parser.add_argument("--semantic-ratio", type=int, default=16, help="video tokens per semantic token (0: none)")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)  # internal: "mode:scale"
    parser.set_defaults(repeats=3, dtype=None, threads=None)
    args = parser.parse_args()
    args.dtype = args.dtype or SHAPES[args.shape][2]
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    return args


def semantic_grid(h: int, w: int, ratio: int) -> tuple[int, int]:
    """Cells of the one semantic keyframe per latent frame: about h * w / ratio, shaped like the frame."""
    if not ratio:
        return (0, 0)
    cells = h * w / ratio
    gh = max(1, round(math.sqrt(cells * h / w)))
    return gh, max(1, round(cells / gh))


class Step:
    """A model and the inputs of every video length; `run(mode, scale)` is one denoising step."""

    def __init__(self, args, device, dtype):
        cfg, (self.h, self.w), _ = SHAPES[args.shape]
        self.cfg = cfg.with_(num_layers=args.layers) if args.layers else cfg
        self.args, self.device, self.dtype = args, device, dtype
        with torch.device(device):
            self.model = WanModel(self.cfg).to(dtype).eval()
            self.branch = SemanticBranch(
                BranchConfig(
                    code_dim=64,
                    dim=self.cfg.dim,
                    num_heads=self.cfg.num_heads,
                    num_layers=self.cfg.num_layers,
                    mode="in_context",
                )
            ).eval()
        self.grid = semantic_grid(self.h, self.w, args.semantic_ratio)
        self.inputs = {}

    def frames(self, scale: int) -> int:
        return self.args.frames * scale

    def tokens(self, scale: int) -> tuple[int, int]:
        """(video tokens, semantic tokens) of the video at `scale`."""
        return self.frames(scale) * self.h * self.w, self.frames(scale) * math.prod(self.grid)

    def prepare(self, scale: int):
        gen, f, (ph, pw) = torch.Generator().manual_seed(scale), self.frames(scale), self.cfg.patch_size[1:]
        x = torch.randn(1, self.cfg.in_dim, f, self.h * ph, self.w * pw, generator=gen).to(self.device, self.dtype)
        context = torch.randn(1, self.cfg.text_len, self.cfg.text_dim, generator=gen).to(self.device, self.dtype)
        plan = None
        if math.prod(self.grid):
            vectors = torch.randn(1, f * math.prod(self.grid), 64, generator=gen).to(self.device)
            with torch.inference_mode():
                plan = self.branch.condition(vectors, [float(k) for k in range(f)], self.grid)
        self.inputs[scale] = (x, torch.tensor([700.0], device=self.device), context, plan)

    def spec(self, mode: str) -> WindowSpec | None:
        """The window of a mode (None: full attention)."""
        if mode == "full":
            return None
        return WindowSpec(self.args.window, mode.removeprefix("windowed-"), self.args.margin)

    def run_attention(self, mode: str, scale: int):
        """Self-attention alone on random q/k/v of this video's length, as in an odd (shifted) block."""
        if ("qkv", scale) not in self.inputs:
            video, sem = self.tokens(scale)
            shape = (1, video + sem, self.cfg.num_heads, self.cfg.head_dim)
            self.inputs[("qkv", scale)] = [torch.randn(shape, device=self.device, dtype=self.dtype) for _ in range(3)]
        q, k, v = self.inputs[("qkv", scale)]  # [1, Lv + G, H, D]
        spec = self.spec(mode)
        if spec is None:
            return attention(q, k, v)
        grid, sem = (self.frames(scale), self.h, self.w), self.tokens(scale)[1]
        layout = spec.layout(grid, 1, sem, [float(f) for f in range(self.frames(scale))] if sem else ())
        return windowed_attention(q, k, v, layout)

    def run(self, mode: str, scale: int):
        x, t, context, plan = self.inputs[scale]
        with torch.inference_mode():
            return self.model(x, t, context, plan=plan, window=self.spec(mode))


def rss_kib() -> tuple[int, int]:
    """(current, peak) resident set size in KiB from /proc/self/status."""
    status = open("/proc/self/status").read()
    return tuple(int(re.search(rf"{key}:\s+(\d+)", status).group(1)) for key in ("VmRSS", "VmHWM"))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_peak_growth(step: Step, mode: str, scale: int) -> tuple[float, str]:
    """Peak RSS growth (MiB) over one forward in this (fresh) process, and the method used."""
    if reset_peak_rss():
        before = rss_kib()[0]
        step.run(mode, scale)
        return (rss_kib()[1] - before) / 1024, "peak RSS growth (VmHWM reset via /proc/self/clear_refs)"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step.run(mode, scale)
    growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return growth / 1024, "ru_maxrss growth (a lower bound where setup peaked higher)"


def cuda_peak_growth(step: Step, mode: str, scale: int) -> tuple[float, str]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step.run(mode, scale)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20, "torch.cuda.max_memory_allocated growth"


def memory_in_subprocess(mode: str, scale: int) -> tuple[float, str]:
    """Run this script for one configuration in a fresh interpreter; read back its memory line."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-of", f"{mode}:{scale}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["mib"], result["method"] + ", fresh subprocess per configuration"


def child(args):
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    mode, scale = args.memory_of.split(":")
    step = Step(args, device, dtype)
    step.prepare(int(scale))
    mib, method = cpu_peak_growth(step, mode, int(scale))
    print(json.dumps({"mib": mib, "method": method}))


def print_table(step: Step, keys: list[tuple[str, int]], times: dict, memory: dict, method: str):
    ms = {key: statistics.median(samples) * 1000 for key, samples in times.items()}
    base = min(s for _, s in keys)
    print(f"\npeak memory: {method}")
    head = f"{'mode':>15} {'scale':>5} {'frames':>6} {'video':>7} {'sem':>5}"
    print(f"{head} | {'ms/step':>9} {'x1':>6} | {'MiB':>8} {'x1':>6}")
    for mode, s in keys:
        video, sem = step.tokens(s)
        t, m = ms[(mode, s)], memory[(mode, s)]
        t1, m1 = ms[(mode, base)], memory[(mode, base)]
        print(
            f"{mode:>15} {s:>4}x {step.frames(s):>6} {video:>7} {sem:>5} | {t:>9.1f} {t / t1:>6.2f} | "
            f"{m:>8.1f} {m / m1 if m1 > 0 else float('nan'):>6.2f}"
        )
    return ms, base


def print_attention_table(keys: list[tuple[str, int]], times: dict):
    ms = {key: statistics.median(samples) * 1000 for key, samples in times.items()}
    base = min(s for _, s in keys)
    print("\nself-attention alone (one shifted block's q/k/v, video + semantic tokens):")
    print(f"{'mode':>15} {'scale':>5} | {'ms':>9} {'x1':>6}")
    for mode, s in keys:
        print(f"{mode:>15} {s:>4}x | {ms[(mode, s)]:>9.1f} {ms[(mode, s)] / ms[(mode, base)]:>6.2f}")


def print_result(ms: dict, scales: list[int], base: int):
    """The summary lines; the last is the goal's: windowed-local at 8x the base length."""
    for mode in MODES:
        grown = [f"{s // base}x {ms[(mode, s)] / ms[(mode, base)]:.2f}" for s in scales if (mode, s) in ms]
        print(f"{mode}: time per step vs 1x: " + ", ".join(grown))
    if ("windowed-local", 8 * base) in ms:
        ratio = ms[("windowed-local", 8 * base)] / ms[("windowed-local", base)]
        print(f"RESULT windowed-local 8x/1x time {ratio:.2f} (goal <= 9)")


def main():
    args = parse_args()
    if args.memory_of:
        return child(args)
    device, dtype, sync = setup_runtime(args)
    scales = [int(s) for s in args.scales.split(",")]
    step = Step(args, device, dtype)
    cfg = step.cfg
    semantic = (
        f"in-context semantic grid {step.grid[0]}x{step.grid[1]} per latent frame "
        f"(1:{step.h * step.w / math.prod(step.grid):.1f})"
        if math.prod(step.grid)
        else "no semantic tokens"
    )
    print(
        f"config {cfg.name}: dim {cfg.dim}, {cfg.num_heads} heads, {cfg.num_layers} layers, {cfg.text_len} text "
        f"tokens; {step.h}x{step.w} tokens per latent frame, {semantic}; window {args.window} frames, "
        f"shift {args.window // 2} on odd blocks, local margin {args.margin}; {args.repeats} timed repeats"
    )
    for s in scales:
        step.prepare(s)
    full_scales = scales if args.full_scales is None else [int(s) for s in args.full_scales.split(",")]
    keys = [(mode, s) for mode in MODES for s in scales if mode != "full" or s in full_scales]
    candidates = {key: (lambda key=key: step.run(*key)) for key in keys}
    times = interleaved_times(candidates, args.repeats, sync=sync)
    with torch.inference_mode():
        attn_times = interleaved_times(
            {key: (lambda key=key: step.run_attention(*key)) for key in keys}, args.repeats, sync=sync
        )
    for s in scales:
        step.inputs.pop(("qkv", s))
    memory, method = {}, ""
    for key in keys:
        if device.type == "cuda":
            memory[key], method = cuda_peak_growth(step, *key)
        else:
            memory[key], method = memory_in_subprocess(*key)
    ms, base = print_table(step, keys, times, memory, method)
    print_attention_table(keys, attn_times)
    print_result(ms, scales, base)


if __name__ == "__main__":
    main()
