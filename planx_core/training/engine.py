"""The training engine: one trainer for every stage, on torchrun + FSDP2 + torch.distributed.checkpoint.

`Trainer(args, ranks, stage_class)` builds the stage (`stages.Stage`: the contract), applies
`--init-from` (on a resume too: frozen parts come from their files), shards the module with FSDP2
(`engine_dist.shard`: the stage's blocks as units, mixed precision, activation checkpointing),
makes AdamW, and resumes from the newest complete DCP checkpoint (`checkpoint`): trained weights,
optimizer, EMA, each rank's RNG, and the step (the data cursor and the learning-rate position),
on any number of ranks with the same global batch. Settings that would change the run are refused
before the stage is built (stage, seed, global batch) or right after (the stage's fingerprint).

The loop: a step is the stage's batch -> loss -> backward (FSDP reduce-scatters the averaged
gradients) -> `after_backward` -> gradient clipping -> AdamW -> EMA; one all-reduce per step carries
the loss for the log, a stop request (SIGINT/SIGTERM: the step finishes, a checkpoint is written,
exit 130) and rank 0's "a checkpoint is due" (every `--save-every-min` minutes), so every rank
agrees. Evaluations (`--eval-every`), the loss at fixed noise levels (`--eval-loss-every`, flow
stages) and previews (`--preview-every`) use the EMA weights when `--ema` is on, and never touch
the training RNG. Each checkpoint also writes the stage's runtime export from a full state dict.
"""

from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method
from torch.distributed.tensor import DTensor, distribute_tensor

from ..files.safetensors import CheckpointError
from . import checkpoint
from .engine_dist import Ranks, agree, barrier, full_state, full_tensors, gather, shard, state_sha
from .engine_eval import SIGMAS
from .engine_report import Log, Progress, plot_curves
from .stages import StageContext, StageError, clip_seeds

TRAINED = StateDictOptions(ignore_frozen_params=True)
BASE_KEYS = ("stage", "seed", "global_batch")  # checked before the stage is built


def flat(state: dict, prefix: str = "") -> set[str]:
    """DCP's flattened names of a nested state dict."""
    out = set()
    for key, value in state.items():
        name = f"{prefix}{key}"
        out |= flat(value, name + ".") if isinstance(value, dict) else {name}
    return out


class Trainer:
    """One stage's run: resume or initialise, shard, AdamW, the step loop, checkpoints, evaluation, logs."""

    def __init__(self, args, ranks: Ranks, stage_class):
        self.args, self.ranks, self.out = args, ranks, Path(args.out)
        self.log = Log(self.out, ranks.main)
        self.stop_requested = self.stopping = self.save_due = False
        self.live_sha, self._synced, self.saved_at = None, None, time.monotonic()
        self.folder = checkpoint.newest(self.out) if args.resume else None
        saved = checkpoint.read_state(self.folder) if self.folder else None
        if saved:
            base = {"stage": stage_class.name, "seed": args.seed, "global_batch": args.batch * ranks.world}
            checkpoint.check_fingerprint(saved["fingerprint"], base, self.folder, keys=BASE_KEYS)
        self.stage = stage_class(StageContext(args, ranks.device, ranks.rank, ranks.world))
        init_from = args.init_from or (saved or {}).get("args", {}).get("init_from")
        if init_from:
            self.stage.init_from(Path(init_from))
        legacy = None
        if saved:
            checkpoint.check_fingerprint(saved["fingerprint"], self.stage.fingerprint(), self.folder)
            if checkpoint.is_legacy(self.folder):
                legacy = checkpoint.read_legacy(self.folder)
                model_tensors = {k: v for k, v in legacy[0].items() if not k.startswith("ema::")}
                self.stage.load_state_tensors({k: v.to(ranks.device) for k, v in model_tensors.items()})
        self.model = self._shard()
        groups = [{k: v for k, v in g.items() if k != "names"} for g in self.stage.param_groups(self.model)]
        self.optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)
        self.trained = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.ema = {n: p.detach().float().clone() for n, p in self.trained.items()} if args.ema > 0 else None
        self.step = 0
        if saved:
            self._restore_legacy(*legacy) if legacy else self._restore(saved)
            self.step = int(saved["step"])

    # -- building and resuming -------------------------------------------------------------
    def _shard(self) -> torch.nn.Module:
        stage, a = self.stage, self.args
        model = copy.deepcopy(stage.module) if stage.replica else stage.module
        units = stage.shard_blocks(model)
        if a.checkpointing and not units:
            raise StageError(f"--checkpointing: the {stage.name} stage names no blocks to recompute (shard_blocks)")
        shard(
            model,
            units,
            device=self.ranks.device,
            precision=a.precision,
            checkpointing=a.checkpointing,
            unused_parameters=stage.find_unused_parameters,
            fp32_modules=stage.fp32_modules(model),
        )
        for name in stage.forward_methods:  # methods that gather the root's weights as forward does
            register_fsdp_forward_method(model, name)
        return model

    def _state(self, with_ema: bool) -> dict:
        """The nested state a checkpoint holds: trained weights and buffers, AdamW state, EMA."""
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=TRAINED)
        state = {"model": get_model_state_dict(self.model, options=TRAINED), "optim": optim["state"]}
        if with_ema and self.ema is not None:
            state["ema"] = self.ema
        return state

    def _restore(self, saved: dict) -> None:
        state = self._state(with_ema=bool(saved.get("ema")))
        stored = checkpoint.saved_keys(self.folder)
        checkpoint.check_keys(stored, flat({"model": state["model"]}), self.folder, "trained tensors")
        checkpoint.check_keys(stored, flat({"optim": state["optim"]}), self.folder, "optimizer state")
        checkpoint.load(self.folder, state, rank=self.ranks.rank, device=self.ranks.device)
        set_model_state_dict(
            self.model, state["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False)
        )
        groups = get_optimizer_state_dict(self.model, self.optimizer, options=TRAINED)["param_groups"]
        set_optimizer_state_dict(
            self.model, self.optimizer, {"state": state["optim"], "param_groups": groups}, options=TRAINED
        )

    def _restore_legacy(self, tensors: dict, optim: dict) -> None:
        """A checkpoint of the earlier safetensors format: the weights are in place already (before sharding)."""
        full = get_optimizer_state_dict(self.model, self.optimizer, options=StateDictOptions(full_state_dict=True))
        stray = sorted(set(optim) - set(full["state"]))
        if stray:
            raise CheckpointError(
                f"{self.folder}: optimizer state for parameters this stage does not train: {stray[:5]}; "
                f"the checkpoint belongs to another stage or model, start a new --out"
            )
        for name, slots in full["state"].items():
            for slot in slots:
                if slot in optim.get(name, {}):
                    slots[slot] = optim[name][slot].to(slots[slot].device, slots[slot].dtype)
        set_optimizer_state_dict(self.model, self.optimizer, full, options=StateDictOptions(full_state_dict=True))
        for name, avg in (self.ema or {}).items():
            if f"ema::{name}" in tensors:
                whole = tensors[f"ema::{name}"].to(self.ranks.device, torch.float32)
                if isinstance(avg, DTensor):
                    whole = distribute_tensor(whole, avg.device_mesh, avg.placements, src_data_rank=None)
                avg.copy_(whole)

    # -- one step --------------------------------------------------------------------------
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
        loss.backward()
        self.stage.after_backward(self.model)
        if self.args.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(list(self.trained.values()), self.args.clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for name, avg in self.ema.items():
                    avg.lerp_(self.trained[name].detach().float(), 1.0 - self.args.ema)
        due = self.ranks.main and time.monotonic() - self.saved_at > self.args.save_every_min * 60
        total, stop, save = agree([float(loss.detach()), float(self.stop_requested), float(due)], self.ranks.device)
        self.stopping, self.save_due = stop > 0, save > 0
        return total / self.ranks.world

    def request_stop(self, signum, _frame) -> None:
        """SIGINT / SIGTERM: finish the step, then checkpoint and exit (the ranks agree in the step's all-reduce)."""
        self.stop_requested = True
        print(f"signal {signum}: stopping after this step and writing a checkpoint", file=sys.stderr, flush=True)

    # -- evaluation weights ----------------------------------------------------------------
    def sync(self) -> None:
        """Rank 0's `stage.module` := the trained weights (the EMA when on); every rank takes part."""
        if self._synced == self.step:
            return
        full = full_state(self.model)
        ema = full_tensors(self.ema, self.ranks.main) if self.ema is not None else {}
        if self.ranks.main:
            self.live_sha = state_sha(full)
            self.stage.module.load_state_dict({**full, **ema}, strict=True)
        self._synced = self.step

    def _swap_ema(self) -> None:
        """Exchange the sharded live weights with the EMA (local shards, no communication; twice undoes it)."""
        with torch.no_grad():
            for name, avg in (self.ema or {}).items():
                live = self.trained[name].detach().clone()
                self.trained[name].detach().copy_(avg.to(live.dtype))
                avg.copy_(live.float())

    def on_eval_weights(self, fn):
        """`fn()` with the evaluation weights: on rank 0 with the synced replica (others get None), or on every
        rank with the sharded module (replica = False). The training RNG is left as it was."""
        devices = [self.ranks.device.index or 0] if self.ranks.device.type == "cuda" else []
        if self.stage.replica:
            self.sync()
            if not self.ranks.main:
                return None
            with torch.random.fork_rng(devices=devices):
                return fn()
        self._swap_ema()
        try:
            with torch.random.fork_rng(devices=devices):
                return fn()
        finally:
            for module in self.model.modules():  # the root stays gathered after a forward without backward
                if isinstance(module, FSDPModule):
                    module.reshard()
            self._swap_ema()

    def param_sha(self) -> str | None:
        if self.stage.replica:
            self.sync()
        else:
            state = full_state(self.model, trainable_only=True)
            self.live_sha = state_sha(state) if self.ranks.main else None
        return self.live_sha

    # -- evaluation, previews, checkpoints, exports ----------------------------------------
    def evaluate(self) -> dict:
        if self.args.eval_clips <= 0:
            return {}
        metrics = self.on_eval_weights(self.stage.evaluate) or {}
        self.log("eval", step=self.step, **metrics)
        return metrics

    def eval_loss(self) -> dict | None:
        losses = self.on_eval_weights(lambda: self.stage.eval_losses(SIGMAS))
        if losses and self.ranks.main:
            self.log("eval_loss", step=self.step, sigma=losses, mean=round(sum(losses.values()) / len(losses), 6))
            self.plot()
        return losses

    def preview(self) -> None:
        if self.stage.preview is None:
            return
        files = self.on_eval_weights(lambda: self.stage.preview(self.out, self.step))
        self.log("preview", step=self.step, files=[str(f) for f in files or []])

    def plot(self) -> None:
        if self.ranks.main and self.log.path.is_file():
            plot_curves(self.log.path, self.out / "curves.png", f"{self.args.out}: {self.stage.name}")

    def export(self) -> None:
        if self.stage.replica:
            self.on_eval_weights(lambda: self.stage.export(self.out))
            return
        state = full_state(self.model, trainable_only=True)
        ema = full_tensors(self.ema, self.ranks.main) if self.ema is not None else {}
        if self.ranks.main:
            self.live_sha = state_sha(state)
            self.stage.export_state(self.out, {**state, **ema})

    def save(self) -> None:
        a, r = self.args, self.ranks
        info = {
            "step": self.step,
            "world": r.world,
            "fingerprint": self.stage.fingerprint(),
            "ema": self.ema is not None,
            "lr": self.lr(max(self.step - 1, 0)),
            "engine": {"precision": a.precision, "checkpointing": a.checkpointing},
            "args": {k: v for k, v in vars(a).items() if k != "argv"},
        }
        checkpoint.save(self.out, self._state(with_ema=True), info, rank=r.rank, device=r.device)
        self.export()
        self.saved_at = time.monotonic()
        self.log("checkpoint", step=self.step)

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> None:
        a, r = self.args, self.ranks
        seeds = clip_seeds(a.seed, a.stage, self.step, r.rank, r.world, a.batch)
        self.log(
            "start",
            stage=a.stage,
            step=self.step,
            steps=a.steps,
            world=r.world,
            global_batch=a.batch * r.world,
            threads=torch.get_num_threads(),
            device=str(r.device.type if r.device.type == "cpu" else r.device),
            engine={"fsdp2": True, "precision": a.precision, "checkpointing": a.checkpointing},
            rank_seeds=gather(seeds[:2]),
            param_sha=self.param_sha(),
            fingerprint=self.stage.fingerprint(),
            resumed_from=str(self.folder) if self.folder else None,
            argv=getattr(a, "argv", sys.argv[1:]),
        )
        if a.eval_loss_every and self.step < a.steps:
            self.eval_loss()  # where this segment starts from
        self.saved_at = tick = time.monotonic()
        losses: list[float] = []
        bar = Progress(self.step, a.steps, r.main and a.progress, a.stage)
        try:
            while self.step < a.steps and not self.stopping:
                losses.append(self.train_step(self.step))
                self.step += 1
                bar.update(losses[-1], self.lr(self.step - 1))
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
                if self.step >= a.steps or self.stopping:
                    break
                if a.eval_loss_every and self.step % a.eval_loss_every == 0:
                    self.eval_loss()
                if a.eval_every and self.step % a.eval_every == 0:
                    self.evaluate()
                if a.preview_every and self.step % a.preview_every == 0:
                    self.preview()
                if self.save_due:
                    self.save()
        finally:
            bar.close()
        self.finish()

    def finish(self) -> None:
        a = self.args
        metrics = {}
        if not self.stopping:
            metrics = self.evaluate()
            self.eval_loss()
            if a.preview_every:
                self.preview()
        self.save()
        self.log(
            "end",
            step=self.step,
            stopped=self.stopping,
            param_sha=self.live_sha,
            **{k: v for k, v in metrics.items() if not isinstance(v, dict)},
        )
        self.plot()
        barrier()
