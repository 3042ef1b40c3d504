"""Training entry point of the tiny Plan-X: `python -m planx_core train --stage {vae,tatok,planner,dit} ...`.

This project's own loop (stages after Plan-X, arXiv 2511.17986; costs after docs/planshapes.md
section 4). Runs as one process, or under `torchrun --nproc_per_node N` with DDP (gloo on CPU,
NCCL on CUDA; `torch.distributed` set up from torchrun's environment variables). Each rank draws
its own clips of the seeded world: global step s, rank r take clip seeds from global indices
(s * world + r) * batch + i, so a resumed run sees the data it would have seen.

    python -m planx_core train --stage tatok --out runs/tatok --steps 3000
    python -m planx_core train --stage planner --out runs/planner --steps 3000 --tatok runs/tatok
    torchrun --standalone --nproc_per_node 2 -m planx_core train --stage planner --out runs/p2 --steps 100

Checkpoints (`train_checkpoint`: safetensors + JSON, nothing pickled) are written by rank 0
every `--save-every-min` minutes and at the end, together with the stage's runtime export
(`ta_tok.safetensors`; `planner/` + its tied `ta_tok.safetensors`). A run whose `--out` holds a
checkpoint resumes from it (unless `--no-resume`); its settings must match (seed, global batch,
...). The learning rate warms up linearly over `--warmup` steps and then stays constant, so a
run may be extended with a larger `--steps` and follow the same trajectory; `--cooldown N` decays
it linearly over the last N steps before `--steps` (warm-up, stable, decay: extend a run before its
cooldown starts). `--ema D` keeps an exponential moving average of the trained weights (in the
checkpoint as `ema::NAME`); exports and evaluations use the average.

Logging: a JSON line per event in `<out>/log.jsonl` (rank 0) and a short line on stdout:
"start" (settings, the command line, clip seeds and a parameter sha256 of each rank), "step"
every `--log-every` steps (loss averaged over ranks, s/step, lr), "eval" every `--eval-every` steps and at the end (the
stage's metrics), "checkpoint", "end" (each rank's parameter sha256: equal under DDP). Ctrl-C or
SIGTERM stops after the current step with a checkpoint (exit code 130); run again to go on.

SemanticGen: `--stage semgen-latent` (stage 2 + compressor), then `--stage semgen-semantic` (stage 1).

Adding a stage (vae, dit, e2e): subclass `train_stages.Stage`, register it in `STAGES`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..files.safetensors import CheckpointError
from .checkpoint import (
    check_fingerprint,
    checkpoint_dir,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from .dit import DiTStage
from .e2e import E2EStage
from .planner import PlannerStage
from .semanticgen import SemLatentStage, SemSemanticStage
from .stages import Stage, StageContext, StageError, TATokStage, clip_seeds
from .vae import VAEStage

STAGES: dict[str, type[Stage]] = {
    "vae": VAEStage,
    "tatok": TATokStage,
    "planner": PlannerStage,
    "dit": DiTStage,
    "e2e": E2EStage,
    "semgen-latent": SemLatentStage,
    "semgen-semantic": SemSemanticStage,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # "resolve": a stage may re-declare a shared option (e.g. --tatok) without crashing the parser
    p = argparse.ArgumentParser(
        prog="python -m planx_core train", description=__doc__.split("\n\n")[0], conflict_handler="resolve"
    )
    p.add_argument("--stage", required=True, choices=sorted(STAGES))
    p.add_argument("--out", required=True, help="run folder: checkpoint/, log.jsonl and the exported model")
    p.add_argument("--steps", type=int, required=True, help="train until this global step")
    p.add_argument("--batch", type=int, default=4, help="clips per rank per step")
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
    p.add_argument("--init-from", default=None, help="start from the export of an earlier run (ignored on resume)")
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
    for stage in STAGES.values():
        stage.add_arguments(p)
    args = p.parse_args(argv)
    if args.steps < 0 or args.batch < 1:
        p.error("--steps must be >= 0 and --batch >= 1")
    return args


# ----------------------------------------------------------------------------- processes


@dataclass
class Ranks:
    rank: int
    world: int
    device: torch.device
    active: bool  # torch.distributed initialised by us

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(args) -> Ranks:
    """Join torchrun's process group when launched by it (WORLD_SIZE set); pick device and threads."""
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device.startswith("cuda")
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // local_world) if launched else 0)
    if threads:
        torch.set_num_threads(threads)
    if not launched:
        return Ranks(0, 1, device, False)
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
    return Ranks(dist.get_rank(), dist.get_world_size(), device, True)


def gather(obj, ranks: Ranks) -> list:
    """`obj` of every rank (a one-item list when not distributed)."""
    if not ranks.active:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def reduce_step(loss: torch.Tensor, stop: bool, ranks: Ranks) -> tuple[float, bool]:
    """(loss averaged over ranks, whether any rank was asked to stop): one all-reduce per step."""
    value = torch.stack([loss.detach().float().reshape(()), torch.tensor(float(stop), device=loss.device)])  # [2]
    if ranks.active:
        dist.all_reduce(value)
    return float(value[0]) / ranks.world, bool(value[1] > 0)


def params_sha(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in module.named_parameters():
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class Log:
    """JSON lines in <out>/log.jsonl and a short stdout line; rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.path, self.enabled = out / "log.jsonl", enabled

    def __call__(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 1), **fields}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
        shown = {k: v for k, v in fields.items() if not isinstance(v, (dict, list)) or event == "end"}
        print(f"[{event}] " + " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)


# ----------------------------------------------------------------------------- the loop


class Trainer:
    """One stage's run: resume or initialise, wrap in DDP, AdamW, the step loop, checkpoints, logs."""

    def __init__(self, args, ranks: Ranks):
        self.args, self.ranks, self.out = args, ranks, Path(args.out)
        self.stage = STAGES[args.stage](StageContext(args, ranks.device, ranks.rank, ranks.world))
        self.log = Log(self.out, ranks.main)
        self.step = self._restore_or_init()
        self.stop_requested = self.stopping = False
        module = self.stage.module
        ids = [ranks.device] if ranks.device.type == "cuda" else None
        unused = getattr(self.stage, "find_unused_parameters", False)  # e.g. a step trained without the plan
        self.model = (
            DistributedDataParallel(module, device_ids=ids, find_unused_parameters=unused) if ranks.active else module
        )
        self.optimizer = torch.optim.AdamW(self.stage.param_groups(), lr=args.lr, weight_decay=args.weight_decay)
        self.names = {id(p): n for g in self.optimizer.param_groups for n, p in zip(g["names"], g["params"])}
        if self._resume_optim is not None:
            restore_optimizer(self.optimizer, self.names, self._resume_optim, self.out)
        self.ema = self._ema_init() if args.ema > 0 else None

    # -- exponential moving average of the trained weights (checkpointed as "ema::NAME" tensors)
    def _ema_init(self) -> dict[str, torch.Tensor]:
        trained = {n: p for n, p in self.stage.module.named_parameters() if p.requires_grad}
        saved = self._resume_ema or {}
        return {
            n: (saved[n] if n in saved else p.detach()).to(p.device, torch.float32).clone() for n, p in trained.items()
        }

    @torch.no_grad()
    def _ema_update(self) -> None:
        params = dict(self.stage.module.named_parameters())
        for name, avg in self.ema.items():
            avg.lerp_(params[name].detach().float(), 1.0 - self.args.ema)

    def _swap_ema(self) -> None:
        """Exchange the live weights with the averaged ones (call twice to undo)."""
        if self.ema is None:
            return
        params = dict(self.stage.module.named_parameters())
        with torch.no_grad():
            for name, avg in self.ema.items():
                live = params[name].detach().clone()
                params[name].copy_(avg.to(params[name].dtype))
                avg.copy_(live.float())

    def _restore_or_init(self) -> int:
        self._resume_optim = self._resume_ema = None
        folder = checkpoint_dir(self.out) if self.args.resume else None
        if folder is None:
            if self.args.init_from:
                self.stage.init_from(Path(self.args.init_from))
            return 0
        state, tensors, self._resume_optim = load_checkpoint(folder)
        check_fingerprint(state["fingerprint"], self.stage.fingerprint(), folder)
        self._resume_ema = {k[len("ema::") :]: v for k, v in tensors.items() if k.startswith("ema::")}
        tensors = {k: v for k, v in tensors.items() if not k.startswith("ema::")}
        self.stage.load_state_tensors({k: v.to(self.ranks.device) for k, v in tensors.items()})
        return int(state["step"])

    def lr(self, step: int) -> float:
        a = self.args
        rate = a.lr * min(1.0, (step + 1) / max(a.warmup, 1))
        if a.cooldown > 0 and step >= a.steps - a.cooldown:
            left = max(a.steps - step - 1, 0) / a.cooldown  # 1 -> 0 over the last `cooldown` steps
            rate *= a.min_lr_ratio + (1.0 - a.min_lr_ratio) * left
        return rate

    def train_step(self, step: int) -> float:
        inputs, _ = self.stage.batch(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(step)
        loss = self.model(**inputs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.stage.module.parameters(), self.args.clip_grad)
        self.optimizer.step()
        if self.ema is not None:
            self._ema_update()
        value, self.stopping = reduce_step(loss, self.stop_requested, self.ranks)
        return value

    def request_stop(self, signum, _frame) -> None:
        """SIGINT / SIGTERM: finish the current step, then checkpoint and exit (all ranks agree via the all-reduce)."""
        self.stop_requested = True
        print(f"signal {signum}: stopping after this step and writing a checkpoint", file=sys.stderr, flush=True)

    def save(self) -> None:
        if self.ranks.main:
            tensors = self.stage.state_tensors()
            if self.ema is not None:
                tensors.update({f"ema::{n}": v.detach().cpu() for n, v in self.ema.items()})
            save_checkpoint(
                self.out, self.step, tensors, self.optimizer, self.names, self.stage.fingerprint(), vars(self.args)
            )
            self._swap_ema()
            try:
                self.stage.export(self.out)
            finally:
                self._swap_ema()
            self.log("checkpoint", step=self.step)

    def evaluate(self) -> dict:
        if self.args.eval_clips <= 0:
            return {}
        self._swap_ema()
        try:
            metrics = self.stage.evaluate() if self.ranks.main else {}
        finally:
            self._swap_ema()
        self.log("eval", step=self.step, **metrics)
        return metrics

    def run(self) -> None:
        a = self.args
        seeds = clip_seeds(a.seed, a.stage, self.step, self.ranks.rank, self.ranks.world, a.batch)
        self.log(
            "start",
            stage=a.stage,
            step=self.step,
            steps=a.steps,
            world=self.ranks.world,
            threads=torch.get_num_threads(),
            device=str(self.ranks.device),
            rank_seeds=gather(seeds[:2], self.ranks),
            param_sha=gather(params_sha(self.stage.module), self.ranks),
            fingerprint=self.stage.fingerprint(),
            argv=getattr(self.args, "argv", sys.argv[1:]),
        )
        saved, tick, losses = time.monotonic(), time.monotonic(), []
        while self.step < a.steps and not self.stopping:
            losses.append(self.train_step(self.step))
            self.step += 1
            if self.step % a.log_every == 0 or self.step == a.steps or self.stopping:
                now = time.monotonic()
                self.log(
                    "step",
                    step=self.step,
                    loss=round(sum(losses) / len(losses), 5),
                    last_loss=losses[-1],
                    lr=round(self.lr(self.step - 1), 8),
                    s_per_step=round((now - tick) / len(losses), 3),
                )
                tick, losses = now, []
            if a.eval_every and self.step % a.eval_every == 0 and self.step < a.steps:
                self.evaluate()
            if time.monotonic() - saved > a.save_every_min * 60:
                self.save()
                saved = time.monotonic()
        self.finish()

    def finish(self) -> None:
        shas = gather(params_sha(self.stage.module), self.ranks)
        metrics = {} if self.stopping else self.evaluate()
        self.save()
        self.log(
            "end",
            step=self.step,
            stopped=self.stopping,
            param_sha=shas,
            **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
        )
        if self.ranks.active:
            dist.barrier()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the stage's own arguments, for the log
    Path(args.out).mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars on every export
    ranks = setup(args)
    code = run(args, ranks)
    if ranks.active:
        leave(code)
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
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 130 if trainer.stopping else 0


def leave(code: int) -> None:
    """End a DDP rank without tearing down the gloo process group, which can deadlock (torch 2.13:
    the main thread joins gloo's run-loop thread while holding the GIL that thread waits for; seen
    as a rank hanging after its last log line). Logs and checkpoints are already written and
    flushed; torchrun gets the exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
