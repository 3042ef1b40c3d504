"""The `--stage branch` training step at the real Wan 2.2 TI2V-5B shapes: seconds per step and CUDA peak memory.

What it measures (issue 16, "a benchmark script for the real 5B shapes"): the step `python -m planx_core train
--stage branch` takes, on random weights and random clips, so no file is needed. For each case (a clip size,
with and without `--checkpointing`): a fresh run of the engine (`engine.Trainer`: the branch stage's FSDP2
units, mixed precision, activation checkpointing per DiT block, AdamW on the branch's fp32 master weights)
around the stage's own objective (`branch.branch_objective`: the frozen DiT, root parts in float32, and a
fresh semantic branch; `BranchObjective.forward`: flow-matching noise, text dropout, TI2V first-frame pinning,
the plan of keyframe vectors through the branch, the weighted loss), and `Trainer.train_step` timed: batch ->
forward -> backward -> gradient clipping -> AdamW -> the loss all-reduce. Reported per case: the median
seconds per step after `--warmup` steps (of `--repeats`), `torch.cuda.max_memory_allocated` (weights,
AdamW state, activations: the whole peak of the case, reset before it is built) and
`max_memory_reserved` (what the allocator held, nearer what `nvidia-smi` shows); an out-of-memory case
is reported as OOM with the peak reached before the failed allocation. A table, then one RESULT line.

The DiT: the 5B preset (`wan.configs`, `wan2.2-ti2v-5b`) built on the meta device, materialised in
`--dtype` on the device and filled with seeded random weights there (`bench_wan_5b.random_init_`); the
branch is built on the device in float32. The clip: its Wan 2.2 VAE latent (4x temporal, 16x spatial,
48 channels: `VAEConfig.latent_shape`), the first-frame latent, umT5-sized text features (512 x 4096),
and the plan: keyframes every 1 / `--keyframe-rate` s at `--fps` (`plan.timing.keyframe_frames`), each
9 x 9 TA-Tok cells of `--code-dim` vectors. Every step keeps the plan (the dearer case of plan dropout).

    python benchmarks/bench_train_branch_5b.py              # on CUDA: the 5B, 81x480x832 and 121x704x1280
        # (latents [48, 21, 30, 52] and [48, 31, 44, 80]: 8,190 and 27,280 tokens), bf16, checkpointing on
        # and off (4 cases), 1 warm-up + 3 timed steps each
    python benchmarks/bench_train_branch_5b.py --dry        # CPU: a 2-block Wan-architecture DiT, clips of
        # 9x64x64 and 17x64x96, float32 (or --dtype bfloat16), 1 warm-up + 1 timed step per case, ~20 s

`--video` takes frames x height x width (as `bench_wan_5b.py`); the table names cases height x width x
frames, as the README's memory table. `--budget-s` stops starting steps (and cases) that would not end
in time, so the RESULT line is printed before a time box kills the process (`scripts/gpu_checks.sh`).
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import sys
import tempfile
import time

import torch
from bench_wan_5b import GiB, parse_video, random_init_
from common import common_args

from planx_core.plan.timing import keyframe_frames, keyframe_latent_frames
from planx_core.training import engine
from planx_core.training.branch import BranchStage, base_dtype, branch_objective
from planx_core.training.engine_dist import setup, teardown
from planx_core.training.main import parse_args as train_arguments
from planx_core.training.stages import Stage, StageContext
from planx_core.wan.configs import DiTConfig, get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.vae import get_vae_preset

# Wan architecture at CPU size: 48 latent channels, heads of 64, a short narrow text.
DRY = DiTConfig(
    dim=128,
    ffn_dim=256,
    num_heads=2,
    num_layers=2,
    in_dim=48,
    out_dim=48,
    text_dim=64,
    freq_dim=32,
    text_len=32,
    name="dry",
)
REAL_VIDEOS, DRY_VIDEOS = "81x480x832,121x704x1280", "9x64x64,17x64x96"
GRID = 9  # TA-Tok cells per keyframe side (the bundles' grid)
DTYPES = {"bfloat16": ("bf16", "bfloat16"), "float32": ("fp32", "float32")}  # --dtype -> --precision, --base-dtype


class RandomBranchStage(BranchStage):
    """The branch stage on a random-weight DiT and one random clip size: its objective, FSDP units, unused-
    parameter handling and AdamW groups as `BranchStage`; the DiT made on the device, no cache or files."""

    def __init__(self, ctx: StageContext, config: DiTConfig, latent: tuple[int, ...], frames: list[float], code_dim):
        Stage.__init__(self, ctx)
        a, device = self.args, ctx.device
        with torch.device("meta"):
            dit = WanModel(config)
        dit = dit.to(base_dtype(a.precision, a.base_dtype, device)).to_empty(device=device)
        random_init_(dit, a.seed, device)
        with torch.device(device):  # the branch's fp32 master weights made where they train
            self.module, self.branch_config = branch_objective(dit, code_dim, a)
        self.ti2v, self.frames, self.grid = self.module.ti2v, frames, (GRID, GRID)
        gen = torch.Generator(device=device).manual_seed(a.seed)
        b, (c, f, h, w), plan = a.batch, latent, len(frames) * GRID * GRID

        def randn(*shape):
            return torch.randn(*shape, generator=gen, device=device)

        self.inputs = {
            "x0": randn(b, c, f, h, w),  # [B, C, F, H, W] the clips' latents
            "first": randn(b, c, 1, h, w),  # [B, C, 1, H, W] their first frames' latents
            "context": randn(b, config.text_len, config.text_dim),  # [B, text_len, D] umT5 features
            "empty": randn(1, config.text_len, config.text_dim),  # [1, text_len, D] the empty prompt's
            "vectors": randn(b, plan, code_dim),  # [B, K * g*g, code_dim] codebook vectors of the plan
        }

    def batch(self, step: int):
        a = self.args
        seeds = [self._seed(3, step, item) for item in range(step * a.batch, (step + 1) * a.batch)]
        extra = {"keep_plan": True, "text_p": a.text_dropout_early, "first_p": a.first_frame}
        return {**self.inputs, "seeds": seeds, "frames": self.frames, "grid": self.grid, **extra}, []


def train_args(args, out: str, checkpointing: bool) -> argparse.Namespace:
    """The options `python -m planx_core train --stage branch` would parse for this case."""
    precision, base = DTYPES[args.dtype]
    argv = ["--stage", "branch", "--out", out, "--steps", str(args.warmup + args.repeats), "--batch", str(args.batch)]
    argv += ["--precision", precision, "--base-dtype", base, "--seed", str(args.seed), "--lr", "1e-4"]
    argv += ["--branch-mode", args.branch_mode, "--no-resume", "--no-progress", "--device", args.device]
    argv += ["--branch-blocks", args.branch_blocks] if args.branch_blocks else []
    return train_arguments(argv + (["--checkpointing"] if checkpointing else []))


def is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


def case_row(config: DiTConfig, video: tuple[int, int, int], checkpointing: bool, args) -> dict:
    """A case's sizes: the Wan 2.2 VAE latent of the clip, its video tokens, the plan's keyframes."""
    f, h, w = video
    latent = get_vae_preset("wan2.2").latent_shape(f, h, w)  # (48, F, H / 16, W / 16)
    times_s, _ = keyframe_frames(f, args.fps, args.keyframe_rate)
    frames = keyframe_latent_frames(times_s, args.fps)  # latent frame of each keyframe
    tokens = latent[1] * (latent[2] // config.patch_size[1]) * (latent[3] // config.patch_size[2])
    row = {"case": f"{h}x{w}x{f}", "ckpt": "on" if checkpointing else "off", "latent": list(latent)}
    return {**row, "tokens": tokens, "frames": frames, "times": [], "status": "ok"}


def start_cost(rows: list[dict], tokens: int) -> float:
    """Seconds a case of `tokens` needs to build and take its first step, guessed from the cases run so far
    (scaled by the token count); 20 s before any has run."""
    done = [
        (r["build_s"] + (r.get("warmup_s") or r["times"])[0], r["tokens"])
        for r in rows
        if r.get("warmup_s") or r["times"]
    ]
    return 20 + max([seconds * tokens / size for seconds, size in done], default=0.0)


def run_case(args, ranks, config, row: dict, checkpointing: bool, deadline: float) -> dict:
    """One case: build, `--warmup` + `--repeats` engine steps (fewer when the deadline nears); its row."""
    latent, frames = tuple(row["latent"]), row.pop("frames")
    cuda = ranks.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = None
    with tempfile.TemporaryDirectory() as out:
        try:
            stage = functools.partial(
                RandomBranchStage, config=config, latent=latent, frames=frames, code_dim=args.code_dim
            )
            t0 = time.perf_counter()
            trainer = engine.Trainer(train_args(args, out, checkpointing), ranks, stage)
            row["build_s"] = time.perf_counter() - t0
            for step in range(args.warmup + args.repeats):
                last = max(row["times"] or row.get("warmup_s", [0.0]))
                if step > 0 and time.monotonic() + 1.5 * last + 5 > deadline:
                    row["status"] = "ok (cut short by --budget-s)"
                    break
                sync()
                t0 = time.perf_counter()
                row["loss"] = trainer.train_step(step)
                sync()
                key = "times" if step >= args.warmup else "warmup_s"
                row.setdefault(key, []).append(time.perf_counter() - t0)
        except Exception as err:  # out of memory (or a failure): this case's row says so, the others still run
            row["status"] = (
                "OOM" if is_oom(err) else f"ERROR {type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}"
            )
        finally:
            if cuda:
                row["peak"] = torch.cuda.max_memory_allocated() / GiB
                row["reserved"] = torch.cuda.max_memory_reserved() / GiB
            del trainer
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    return row


def cells(row: dict) -> list[str]:
    times = row["times"] or row.get("warmup_s", [])  # warm-up only: said in the n column
    speed = f"{statistics.median(times):.3f}" if times and row["status"].startswith("ok") else "-"
    warm = len(row.get("warmup_s", []))
    n = str(len(row["times"])) if row["times"] else (f"0 (+{warm} warm-up)" if warm else "-")
    peak = f"{row['peak']:.2f}" if "peak" in row else "n/a"
    reserved = f"{row['reserved']:.2f}" if "reserved" in row else "n/a"
    status = row["status"] + (f" (loss {row['loss']:.3f})" if "loss" in row and row["status"] == "ok" else "")
    latent = "[" + ", ".join(map(str, row["latent"])) + "]"
    return [row["case"], row["ckpt"], latent, f"{row['tokens']:,}", speed, n, peak, reserved, status]


HEAD = ["case (HxWxF)", "ckpt", "latent", "tokens", "s/step", "n", "peak GiB", "reserved GiB", "status"]
WIDTHS = [14, 4, 18, 7, 7, 12, 8, 12, 0]


def print_row(values: list[str]) -> None:
    print("  ".join(v.ljust(w) for v, w in zip(values, WIDTHS)).rstrip(), flush=True)


def result_line(name: str, rows: list[dict]) -> str:
    parts = []
    for row in rows:
        what = f"{row['case']}/ckpt-{row['ckpt']}"
        if row["status"].startswith("ok") and (row["times"] or row.get("warmup_s")):
            speed = statistics.median(row["times"] or row["warmup_s"])
            peak = f" peak {row['peak']:.2f} GiB" if "peak" in row else " peak n/a (CPU)"
            parts.append(f"{what} {speed:.3f} s/step{peak}")
        elif row["status"] == "OOM":
            peak = f" (peak {row['peak']:.2f} GiB before the failed allocation)" if "peak" in row else ""
            parts.append(f"{what} OOM{peak}")
        else:
            parts.append(f"{what} {row['status'].split(':')[0]}")
    return f"RESULT train_branch {name}: " + "; ".join(parts)


def main() -> int:
    parser = common_args(__doc__.split("\n\n")[0])
    parser.set_defaults(dtype=None, repeats=3)
    parser.add_argument("--dry", action="store_true", help="CPU-sized: a 2-block DiT, tiny clips, 1 + 1 steps")
    parser.add_argument("--preset", default="wan2.2-ti2v-5b", help="the DiT preset (ignored with --dry)")
    parser.add_argument("--video", default=None, help=f"FxHxW clips, comma-separated (default {REAL_VIDEOS})")
    parser.add_argument("--checkpointing", choices=("both", "on", "off"), default="both")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per case")
    parser.add_argument("--batch", type=int, default=1, help="clips per step")
    parser.add_argument("--branch-mode", default="cross_attn")
    parser.add_argument("--branch-blocks", default=None, help="e.g. 0,3,6 (default: every block)")
    parser.add_argument("--code-dim", type=int, default=None, help="plan vector width (default TA-Tok's 1536)")
    parser.add_argument("--fps", type=float, default=24.0, help="the clip's fps (TI2V-5B: 24)")
    parser.add_argument("--keyframe-rate", type=float, default=2.0, help="plan keyframes per second")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=0, help="stop starting steps past this (0 = no limit)")
    args = parser.parse_args()
    if args.dry:
        args.device = "cpu" if "--device" not in sys.argv else args.device
        args.video, args.repeats = args.video or DRY_VIDEOS, 1 if "--repeats" not in sys.argv else args.repeats
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.code_dim = args.code_dim or (64 if args.dry else 1536)
    if args.dtype not in DTYPES:
        raise SystemExit(f"--dtype {args.dtype}: the branch stage trains in bfloat16 or float32")
    config = DRY if args.dry else get_preset(args.preset)
    if not cuda and not args.dry:
        raise SystemExit("bench_train_branch_5b: the 5B needs a CUDA device; on CPU run it with --dry")
    videos = [parse_video(v, get_vae_preset("wan2.2")) for v in (args.video or REAL_VIDEOS).split(",")]
    modes = {"both": [True, False], "on": [True], "off": [False]}[args.checkpointing]
    ranks = setup(argparse.Namespace(device=args.device, threads=args.threads))  # the engine's one-rank group
    name = f"{config.name} {args.dtype} batch {args.batch}" + (" DRY" if args.dry else "")
    print(f"{name} on {ranks.device} ({torch.cuda.get_device_name() if cuda else 'CPU'}), torch {torch.__version__}")
    print(
        f"DiT {config.dim} wide, {config.num_layers} blocks; branch {args.branch_mode} on blocks "
        f"{args.branch_blocks or 'all'}, plan vectors {args.code_dim} wide, {GRID}x{GRID} cells per keyframe; "
        f"{args.warmup} warm-up + {args.repeats} timed steps per case"
    )
    deadline = time.monotonic() + (args.budget_s or 1e9)
    print_row(HEAD)
    rows = []
    for video in videos:  # per clip size: checkpointed first (likelier to fit), then without
        for checkpointing in modes:
            row = case_row(config, video, checkpointing, args)
            if time.monotonic() + start_cost(rows, row["tokens"]) > deadline:
                row.update(status="SKIPPED (--budget-s spent)", frames=None)
            else:
                row = run_case(args, ranks, config, row, checkpointing, deadline)
            rows.append(row)
            print_row(cells(row))
    print(result_line(name, rows), flush=True)
    teardown(ranks)
    return 1 if any(r["status"].startswith("ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
