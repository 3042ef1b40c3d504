"""Training entry point of Plan-X: `python -m planx_core train --stage {vae,tatok,planner,dit,...} ...`.

This project's own loop (stages after Plan-X, arXiv 2511.17986; costs after docs/planshapes.md
section 4) on one engine (`engine`): torchrun + FSDP2 (`fully_shard`) + torch.distributed.checkpoint.
The same code runs as one process (a one-rank group), under `torchrun --nproc_per_node N` on N
GPUs (NCCL) or N nodes, and on CPUs with gloo. Each rank draws its own share of the global batch
of the seeded world: global step s, rank r take clip seeds from global indices
(s * world + r) * batch + i, so a resumed run sees the data it would have seen.

    python -m planx_core train --stage tatok --out runs/tatok --steps 3000
    python -m planx_core train --stage planner --out runs/planner --steps 3000 --tatok runs/tatok
    torchrun --standalone --nproc_per_node 2 -m planx_core train --stage planner --out runs/p2 --steps 100

`--batch` is per rank; `--global-batch N` sets it to N / ranks (refused when that does not divide).
Checkpoints (`checkpoint`: DCP, sharded; the trained state, optimizer, EMA, RNG and step) are
written every `--save-every-min` minutes, at the end and on Ctrl-C/SIGTERM, together with the
stage's runtime export (`ta_tok.safetensors`; `planner/` + its tied `ta_tok.safetensors`, ...).
A run whose `--out` holds a checkpoint resumes from it (unless `--no-resume`), also on another
number of ranks with the same global batch; its settings must match (seed, global batch, ...).
The learning rate warms up linearly over `--warmup` steps and then stays constant, so a run may
be extended with a larger `--steps` and follow the same trajectory; `--cooldown N` decays it
linearly over the last N steps before `--steps` (warm-up, stable, decay: extend a run before its
cooldown starts). `--ema D` keeps an exponential moving average of the trained weights (in the
checkpoint); exports and evaluations use the average. `--precision` (auto: bf16 on CUDA with
fp32 master weights and gradient reduction, fp32 on CPU) and `--checkpointing` (recompute each
block in the backward pass) are FSDP's options.

What a run shows: a progress bar (rank 0: steps, it/s, ETA, loss), a JSON line per event in
`<out>/log.jsonl` (rank 0) and a short line on stdout: "start" (settings, the command line, clip
seeds of each rank, a parameter sha256), "step" every `--log-every` steps (loss averaged over
ranks, s/step, lr), "eval" every `--eval-every` steps and at the end (the stage's metrics),
"eval_loss" every `--eval-loss-every` steps and at the end (flow stages: the loss at sigma 0.1 ..
0.9 with fixed noise), "preview" every `--preview-every` steps (the stage's renders under
`<out>/previews/`), "checkpoint", "end"; `<out>/curves.png` plots the losses. Ctrl-C or SIGTERM
stops after the current step with a checkpoint (exit code 130); run again to go on.

SemanticGen: `--stage semgen-latent` (stage 2 + compressor), then `--stage semgen-semantic` (stage 1).

Adding a stage: subclass `stages.Stage` (the contract is in its docstring), register it in `STAGES`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from ..files.safetensors import CheckpointError
from . import engine
from .branch import BranchStage
from .dit import DiTStage
from .e2e import E2EStage
from .engine_dist import Ranks, leave, setup, teardown
from .planner import PlannerStage
from .planner_sft import PlannerSFTStage
from .semanticgen import SemLatentStage
from .semanticgen_semantic import SemSemanticStage
from .stages import Stage, StageError, TATokStage
from .vae import VAEStage

STAGES: dict[str, type[Stage]] = {
    "vae": VAEStage,
    "tatok": TATokStage,
    "planner": PlannerStage,
    "dit": DiTStage,
    "e2e": E2EStage,
    "semgen-latent": SemLatentStage,
    "semgen-semantic": SemSemanticStage,
    "branch": BranchStage,
    "planner-sft": PlannerSFTStage,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # "resolve": a stage may re-declare a shared option (e.g. --tatok) without crashing the parser
    p = argparse.ArgumentParser(
        prog="python -m planx_core train", description=__doc__.split("\n\n")[0], conflict_handler="resolve"
    )
    p.add_argument("--stage", required=True, choices=sorted(STAGES))
    p.add_argument("--out", required=True, help="run folder: checkpoint/, log.jsonl and the exported model")
    p.add_argument("--steps", type=int, required=True, help="train until this global step")
    p.add_argument("--batch", type=int, default=None, help="clips per rank per step (default 4)")
    p.add_argument("--global-batch", type=int, default=None, help="clips per step, all ranks (batch = this / ranks)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100, help="linear warm-up steps, then a constant rate")
    p.add_argument(
        "--cooldown",
        type=int,
        default=0,
        help="the last N steps before --steps decay the rate linearly "
        "to --min-lr-ratio x --lr (warm-up, stable, decay; 0 = constant to the end)",
    )
    p.add_argument("--min-lr-ratio", type=float, default=0.0, help="rate at the end of --cooldown, as a share of --lr")
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        help="decay of an exponential moving average of the trained "
        "weights (e.g. 0.999; 0 = off); exports and evaluations then use the averaged weights",
    )
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip-grad", type=float, default=1.0, help="gradient-norm clip (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every-min", type=float, default=5.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0 = only at the end)")
    p.add_argument("--eval-clips", type=int, default=16, help="clips per evaluation split")
    p.add_argument(
        "--init-from",
        default=None,
        help="start from the export of an earlier run (on resume only its frozen parts matter; the trained "
        "ones come from the checkpoint; a resume without it uses the one the run started with)",
    )
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from <out>/checkpoint when there is one (default on)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per rank (0 = cores / local ranks)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument(
        "--tatok",
        default=None,
        help="TA-Tok file or finished `--stage tatok` run folder, shared by the "
        "stages that need one (planner: the tokenizer to tie to; default a fresh one from the seed)",
    )
    add_engine_arguments(p)
    for stage in STAGES.values():
        stage.add_arguments(p)
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error("--steps must be >= 0")
    return args


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="FSDP mixed precision: bf16 parameters and compute with fp32 gradient reduction and fp32 "
        "master weights, or fp32 (auto: bf16 on CUDA, fp32 on CPU)",
    )
    p.add_argument(
        "--checkpointing",
        action="store_true",
        help="activation checkpointing: recompute each sharded block (DiT block, decoder layer) in the backward pass",
    )
    p.add_argument(
        "--eval-loss-every",
        type=int,
        default=50,
        help="steps between evaluation losses at fixed noise levels (flow stages; 0 = only at the end)",
    )
    p.add_argument(
        "--preview-every", type=int, default=0, help="steps between preview renders (stages that have them; 0 = off)"
    )
    p.add_argument(
        "--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar on rank 0 (stderr)"
    )


# ----------------------------------------------------------------------------- settings


def check_settings(args, world: int) -> None:
    """Resolve the per-rank batch and refuse impossible settings before any work (StageError)."""
    if args.global_batch is not None:
        if args.global_batch < 1 or args.global_batch % world:
            raise StageError(
                f"--global-batch {args.global_batch} does not divide over {world} ranks; pass a multiple of "
                f"{world}, or --batch (clips per rank)"
            )
        if args.batch is not None and args.batch * world != args.global_batch:
            raise StageError(
                f"--batch {args.batch} x {world} ranks is not --global-batch {args.global_batch}; pass one of them"
            )
        args.batch = args.global_batch // world
    elif args.batch is None:
        args.batch = 4
    if args.batch < 1:
        raise StageError("--batch must be >= 1")
    STAGES[args.stage].check_args(args, world)
    if args.preview_every and STAGES[args.stage].preview is None:
        raise StageError(f"--preview-every: the {args.stage} stage has no preview renders")
    for name in ("log_every", "eval_every", "eval_loss_every", "preview_every"):
        if getattr(args, name) < 0:
            raise StageError(f"--{name.replace('_', '-')} must be >= 0")
    args.log_every = max(args.log_every, 1)


class Trainer(engine.Trainer):
    """The engine's trainer for `args.stage` (see `engine.Trainer`)."""

    def __init__(self, args, ranks: Ranks):
        check_settings(args, ranks.world)
        super().__init__(args, ranks, STAGES[args.stage])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the stage's own arguments, for the log
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars on every export
    try:
        ranks = setup(args)
    except StageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    code = run(args, ranks)
    if ranks.launched:
        leave(code)
    teardown(ranks)
    return code


def run(args, ranks: Ranks) -> int:
    """Train; 0 when done, 130 when stopped by a signal, 2 on a refused input."""
    previous = {}
    try:
        trainer = Trainer(args, ranks)
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, trainer.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        trainer.run()
    except (CheckpointError, StageError, FileNotFoundError) as err:
        if ranks.main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 130 if trainer.stopping else 0


if __name__ == "__main__":
    sys.exit(main())
