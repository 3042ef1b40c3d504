"""Side-by-side timing for benchmarks: candidates run interleaved in one process, medians and ratios printed.

These machines are noisy, so no absolute threshold is asserted anywhere; ratios measured in the
same run are what the scripts report.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def interleaved_times(
    candidates: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, sync: Callable[[], None] = lambda: None
) -> dict[str, list[float]]:
    """Run each candidate `repeats` times, rotating the order every round; seconds per call."""
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            sync()
            start = time.perf_counter()
            candidates[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], baseline: str) -> dict[str, float]:
    """Print each candidate's median time and its paired ratio to `baseline`; return the ratios.

    The paired ratio is the median over rounds of (candidate / baseline) within the same round,
    which cancels slow drifts of the machine better than a ratio of medians.
    """
    ratios = {}
    for name, samples in times.items():
        paired = statistics.median(a / b for a, b in zip(samples, times[baseline]))
        ratios[name] = paired
        print(
            f"  {name:<28} median {statistics.median(samples) * 1000:9.1f} ms  "
            f"(min {min(samples) * 1000:9.1f})  paired ratio {paired:.3f}"
        )
    return ratios


def common_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    return parser


def setup_runtime(args) -> tuple[torch.device, torch.dtype, Callable[[], None]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    print(f"device {device}, dtype {dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    return device, dtype, sync
