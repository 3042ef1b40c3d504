"""Time of one denoising step (one WanModel forward) on 1 rank against N ranks of sequence parallelism.

`planx_core.wan.parallel` (Ulysses): the token sequence split over the ranks, an all-to-all around every
self-attention, the head's output all-gathered. Reported, never asserted: on a CPU the ranks share the
machine's cores, so the fair comparison is the same cores either way (1 rank x T threads against
T ranks x 1 thread); on GPUs each rank has its own device.

CPU (default, about a minute on 2 cores): the script spawns its own gloo ranks, 1 then each of
`--ranks` (default 2), the 1-rank row as a plain forward (no parallel hooks) and as a 1-rank "parallel"
forward (the hooks' own cost), each rank with `--threads` threads (default 1), plus one row of 1 rank
with as many threads as the largest N (the same cores as N ranks). Default shape: dim 256, 4 heads,
2 layers, 16x16 tokens per latent frame, 8 latent frames (2,048 tokens), float32.

N GPUs (nccl; one process per GPU, launched by torchrun; rank 0 prints):
    torchrun --nproc_per_node N benchmarks/bench_sequence_parallel.py --device cuda --shape 5b
(Wan 2.2 TI2V-5B, 24 heads: N in 1, 2, 3, 4, 6, 8; 22x40 tokens per latent frame, 31 latent frames =
27,280 tokens, 720p x 121 frames, bfloat16; `--layers` fewer blocks for a quick look). Run it once with
`--nproc_per_node 1` too: the 1-GPU baseline.
Last line: `RESULT sequence-parallel <N> ranks/1 rank time <ratio>`.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import common_args

from planx_core.wan.configs import DiTConfig, get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.parallel import SequenceParallel, check_split

SHAPES = {  # config, latent frames x tokens per frame (H' x W'), default dtype
    "cpu": (
        DiTConfig(256, 1024, 4, 2, 16, 16, text_dim=64, freq_dim=64, text_len=64, name="bench-256"),
        (8, 16, 16),
        "float32",
    ),
    "5b": (get_preset("wan2.2-ti2v-5b"), (31, 22, 40), "bfloat16"),
}


def parse_args():
    parser = common_args(__doc__)
    parser.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
    parser.add_argument("--layers", type=int, help="DiT blocks (default: the shape's)")
    parser.add_argument("--frames", type=int, help="latent frames (default: the shape's)")
    parser.add_argument("--ranks", default="2", help="CPU: rank counts to spawn besides 1, e.g. 2,4")
    parser.add_argument("--window", type=int, default=0, help="attention window in latent frames (0: full)")
    parser.set_defaults(threads=1, dtype=None)
    return parser.parse_args()


def build(args, device: torch.device):
    """The model and one step's inputs, the same on every rank (seeded)."""
    config, (frames, h, w), dtype = SHAPES[args.shape]
    config = replace(config, num_layers=args.layers or config.num_layers)
    dtype = getattr(torch, args.dtype or dtype)
    torch.manual_seed(0)
    with torch.device(device):
        model = WanModel(config).to(dtype).eval()
    gen = torch.Generator().manual_seed(1)
    pt, ph, pw = config.patch_size
    x = torch.randn(1, config.in_dim, (args.frames or frames) * pt, h * ph, w * pw, generator=gen)
    context = torch.randn(1, 32, config.text_dim, generator=gen)
    return model, (x.to(device, dtype), torch.tensor([500.0], device=device), context.to(device, dtype))


def step_times(args, parallel: SequenceParallel | None, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` forwards (after one warm-up), every rank in step."""
    model, inputs = build(args, device)
    options = {"window": args.window or None, "parallel": parallel}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for repeat in range(args.repeats + 1):
            if parallel is not None:
                dist.barrier()
            sync()
            start = time.perf_counter()
            model(*inputs, **options)
            sync()
            if repeat:
                times.append(time.perf_counter() - start)
    return times


def spawned_rank(rank: int, world: int, port: int, args, threads: int, plain: bool, queue) -> None:
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    times = step_times(args, None if plain else SequenceParallel(), torch.device("cpu"))
    if rank == 0:
        queue.put(statistics.median(times))
    dist.destroy_process_group()


def spawn(args, world: int, threads: int, plain: bool = False) -> float:
    """Median step time of `world` gloo ranks of `threads` threads each (rank 0's clock)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(spawned_rank, args=(world, port, args, threads, plain, queue), nprocs=world)
    return queue.get()


def describe(args) -> str:
    config, (frames, h, w), _ = SHAPES[args.shape]
    frames = args.frames or frames
    return (
        f"shape {args.shape}: dim {config.dim}, {config.num_heads} heads, {args.layers or config.num_layers} "
        f"layers, {frames}x{h}x{w} = {frames * h * w} tokens, window {args.window or 'full'}, "
        f"{args.repeats} repeats, median per step"
    )


def cpu_main(args) -> None:
    ranks = [int(n) for n in args.ranks.split(",")]
    for n in ranks:
        check_split(SHAPES[args.shape][0].num_heads, n)
    print(f"device cpu, dtype {args.dtype or SHAPES[args.shape][2]}, torch {torch.__version__}, gloo ranks")
    print(describe(args))
    rows = {
        f"1 rank x {args.threads} thr, plain": spawn(args, 1, args.threads, plain=True),
        f"1 rank x {args.threads} thr, parallel": spawn(args, 1, args.threads),
        f"1 rank x {args.threads * max(ranks)} thr, plain": spawn(args, 1, args.threads * max(ranks), plain=True),
    }
    for n in ranks:
        rows[f"{n} ranks x {args.threads} thr"] = spawn(args, n, args.threads)
    base = rows[f"1 rank x {args.threads} thr, plain"]
    for name, seconds in rows.items():
        print(f"  {name:<32} {seconds * 1000:9.1f} ms  ratio {seconds / base:.3f}")
    same_cores = (
        rows[f"{max(ranks)} ranks x {args.threads} thr"] / rows[f"1 rank x {args.threads * max(ranks)} thr, plain"]
    )
    print(f"  {max(ranks)} ranks against 1 rank on the same cores: {same_cores:.3f}")
    ratio = rows[f"{max(ranks)} ranks x {args.threads} thr"] / base
    print(f"RESULT sequence-parallel {max(ranks)} ranks/1 rank time {ratio:.3f}")


def torchrun_main(args) -> None:
    """One rank of a torchrun launch (nccl on CUDA, gloo on CPU)."""
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    world = dist.get_world_size()
    times = step_times(args, SequenceParallel(), device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    if dist.get_rank() == 0:
        dtype = args.dtype or SHAPES[args.shape][2]
        print(f"device {device}, dtype {dtype}, torch {torch.__version__}, {world} ranks (torchrun)")
        print(describe(args))
        median = statistics.median(times)
        fastest = min(times) * 1000
        print(f"  {world} ranks: {median * 1000:9.1f} ms per step (min {fastest:.1f}), peak {peak:.1f} GiB on rank 0")
        print(f"RESULT sequence-parallel {world} ranks step {median:.3f} s")
    dist.destroy_process_group()


if __name__ == "__main__":
    arguments = parse_args()
    if "LOCAL_RANK" in os.environ:
        torchrun_main(arguments)
    else:
        cpu_main(arguments)
