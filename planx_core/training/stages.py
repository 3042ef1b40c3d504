"""Training stages of the tiny Plan-X: the stage contract, shared helpers, and the TA-Tok stage.

This project's own training recipe for the synthetic world, staged as in Plan-X (arXiv
2511.17986): first the text-aligned tokenizer, then the semantic planner on plans encoded from
clips (`train_planner`); the VAE, DiT and end-to-end stages plug in the same way.

A stage is a class registered in `main.STAGES`, built as `Stage(ctx)` (`StageContext`: args,
device, rank, world size), and trained by the engine (`engine.Trainer`: torchrun + FSDP2 + DCP).
It provides:

* `module`: the nn.Module to optimise; `module(**inputs)` returns this rank's loss, the mean over
  its share of the global batch (FSDP averages gradients over ranks). Trained = `requires_grad`;
  frozen parameters are sharded with the rest but never checkpointed (they come from their files
  or the seed, through the constructor and `init_from`, on every start and resume),
* `shard_blocks(module) -> [submodule or [submodules], ...]`: the FSDP units of `module` (each DiT
  block, each decoder layer; a list puts several modules in one unit); default none: the whole
  module is one unit. `--checkpointing` recomputes each unit's first module in the backward pass,
* `fp32_modules(module)`: modules that keep float32 weights under bf16 (a plain `nn.LayerNorm` fed
  float32 on purpose; default: each semantic branch's input norm),
* `forward_methods`: names of `module` methods that evaluation calls instead of forward (e.g. a
  velocity without the loss); FSDP gathers the root's weights for them as for forward,
* `find_unused_parameters`: some trained parameters may get no gradient on a rank in a step (a
  dropped plan): zeros are reduced for them. Every rank must still run every FSDP unit's forward
  and backward each step (draw a decision that skips a unit from the step, not the rank),
* `batch(step) -> (inputs, seeds)`: this rank's share of global step `step`, drawn from the seeded
  world (`clip_seeds`: clip seeds depend on seed, stage, step, rank and batch only, and global
  item `(step * world + rank) * batch + i`, so a resumed run, on any number of ranks with the
  same global batch, sees the data it would have seen),
* `after_backward(module)`: gradient edits before clipping (`zero_grad_rows`), e.g. frozen rows,
* `evaluate() -> dict`, `eval_losses(sigmas) -> dict | None` (flow stages: the loss at fixed noise
  levels, `engine_eval.flow_losses`), `preview(out, step)` (optional renders),
* `export(out)`: the runtime files; `init_from(path)`; `fingerprint()`: settings that must match
  to resume; `add_arguments(parser)`: its own options; `check_args(args, world)` (a classmethod):
  refusals of impossible options before anything is loaded.

`replica` (default True) says where evaluation and export run: the engine trains a sharded copy
of `module` and, before `evaluate`, `eval_losses`, `preview` and `export`, loads the trained (or
EMA) weights into `module` itself on rank 0, so those methods use plain modules. A stage with a
large frozen base sets `replica = False`: `module` itself is sharded, `evaluate`, `eval_losses`
and `preview` run on every rank (FSDP gathers weights inside forward: take the same calls on
every rank; write files on rank 0 only), and `export_state(out, state)` gets the full trainable
state on rank 0.

TA-Tok stage. There is no SigLIP2 teacher in this world, so TA-Tok is not distilled as in Tar:
each pooled 9x9 cell of a keyframe is taught the word it shows (`cell_labels`: a colour, "wall"
or "background"). Loss = cross-entropy of cos(z_cell, codebook) / tau over the codes, where
z_cell is the pooled, task-layer, `in_linear` output and codebook = normalize(W E + b) with E the
frozen planner word rows (`tiny`). So the deterministic cosine-nearest lookup of `TATok.encode`
returns the label word's code. Trained: patch/position embeddings, the encoder layers that are
run, the task layer, `in_linear`, W and b. Frozen: E, the post-layernorm and `out_linear` (not
used by encoding, so they would get no gradient).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from .. import world
from ..semantic_branch import SemanticBranch
from ..tatok.files import load_tatok, save_tatok
from ..tatok.model import TATok
from ..world import tiny
from ..world.labels import BACKGROUND_CODE, clip_images, clip_labels

_TRAIN_STREAM = {"tatok": 101, "planner": 102}  # clip_seed streams; eval sets use the world's 0, 1 (pairs: 7)


class StageError(ValueError):
    """A stage cannot run with the given options; the message says which option to change."""


@dataclass
class StageContext:
    """What a stage is built with: parsed options, its device, its rank and the number of ranks."""

    args: argparse.Namespace
    device: torch.device
    rank: int = 0
    world_size: int = 1


def clip_seeds(seed: int, stage: str, step: int, rank: int, world_size: int, batch: int) -> list[int]:
    """Seeds of this rank's clips at a global step: item i is global index (step * world + rank) * batch + i.

    Each stage has its own stream (unlisted stages: 100 + the sum of the name's character codes).
    """
    stream = _TRAIN_STREAM.get(stage, 100 + sum(map(ord, stage)))
    first = (step * world_size + rank) * batch
    return [world.clip_seed(seed, stream, first + i) for i in range(batch)]


def eval_clips(split: str, count: int, seed: int) -> list[world.Clip]:
    """A fixed evaluation set: the world's own `split` stream, never drawn by training."""
    return world.dataset(split, count, seed=seed)


def decay_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: matrices decay, vectors and embeddings do not; each group keeps its parameter names."""
    decay = [(n, p) for n, p in named if p.ndim >= 2 and "embed" not in n]
    rest = [(n, p) for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    return [
        {"params": [p for _, p in g], "names": [n for n, _ in g], "weight_decay": wd}
        for g, wd in ((decay, weight_decay), (rest, 0.0))
        if g
    ]


def run_file(path: str | Path, name: str) -> Path:
    """A file given directly, or the run folder that exported it as `name`."""
    path = Path(path)
    found = path / name if path.is_dir() else path
    if not found.is_file():
        raise StageError(f"{path}: no {name}; pass the file or the --out folder of the run that exported it")
    return found


def resolve_tatok_file(path: str | Path) -> Path:
    """A TA-Tok .safetensors file, or a run folder (tatok or planner stage) holding `ta_tok.safetensors`."""
    return run_file(path, "ta_tok.safetensors")


class Stage:
    """Base class of a training stage; see the module docstring for the contract."""

    name = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this stage's own options. Options shared by stages (--tatok) live in `train.parse_args`;
        a re-declared option replaces the earlier one (the parser resolves conflicts), so keep meanings equal."""

    @classmethod
    def check_args(cls, args: argparse.Namespace, world_size: int) -> None:
        """Refuse impossible options before anything is loaded (raise StageError naming the option to change):
        e.g. frames that are not 4n+1, a size the model cannot take, a cache built for another model."""

    def __init__(self, ctx: StageContext):
        self.ctx, self.args = ctx, ctx.args

    replica = True
    find_unused_parameters = False
    forward_methods: tuple[str, ...] = ()  # methods of `module` that run like forward (FSDP gathers for them)

    def init_from(self, path: Path) -> None:
        raise StageError(f"--init-from is not supported by the {self.name} stage")

    def shard_blocks(self, module: nn.Module) -> list:
        return []

    def fp32_modules(self, module: nn.Module) -> list:
        """Modules of `module` that must keep float32 weights under `--precision bf16`, each a small float32
        unit; default: the input LayerNorm of every semantic branch (`SemanticBranch.embed` feeds it float32)."""
        return [m.proj[0] for m in module.modules() if isinstance(m, SemanticBranch)]

    def after_backward(self, module: nn.Module) -> None:
        """Edit the (sharded) gradients of `module` after each backward pass, before clipping."""

    def evaluate(self) -> dict:
        return {}

    def eval_losses(self, sigmas: tuple[float, ...]) -> dict[str, float] | None:
        """Loss at each fixed noise level on a fixed batch with fixed noise (flow stages); None: no such loss."""
        return None

    preview = None  # optional: preview(out, step) writes renders of fixed clips under out/previews/

    def export_state(self, out: Path, state: dict[str, torch.Tensor]) -> None:
        raise StageError(f"the {self.name} stage has no export of a trained state (replica = False stages do)")

    def param_groups(self, module: nn.Module | None = None) -> list[dict]:
        module = self.module if module is None else module
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        return decay_groups(named, self.args.weight_decay)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything the stage's modules hold (the legacy safetensors checkpoints held this)."""
        return dict(self.module.state_dict())

    def load_state_tensors(self, sd: dict[str, torch.Tensor]) -> None:
        """Load a legacy checkpoint's tensors (`state_tensors`) into the stage's modules."""
        self.module.load_state_dict(sd, strict=True)

    def fingerprint(self) -> dict:
        a, c = self.args, self.ctx
        return {"stage": self.name, "seed": a.seed, "global_batch": a.batch * c.world_size}


def zero_grad_rows(param: torch.Tensor, rows: list[int] | torch.Tensor) -> None:
    """Zero the gradient rows `rows` of `param` (dim 0), plain or FSDP-sharded (a DTensor sharded on dim 0)."""
    grad = param.grad
    if grad is None:
        return
    mask = torch.ones(param.shape[0], *([1] * (param.dim() - 1)), dtype=grad.dtype, device=grad.device)
    mask[torch.as_tensor(rows, dtype=torch.long)] = 0
    if isinstance(grad, DTensor):  # every rank holds the whole mask: keep the local rows, no communication
        mask = distribute_tensor(mask, grad.device_mesh, grad.placements, src_data_rank=None)
    grad.mul_(mask)


# ----------------------------------------------------------------------------- TA-Tok


class TATokObjective(nn.Module):
    """Cell-word cross-entropy of a TA-Tok: `forward(images [B,3,H,W], labels [B, g*g]) -> loss`."""

    def __init__(self, tatok: TATok, tau: float, grid: int):
        super().__init__()
        self.tatok, self.tau, self.grid = tatok, tau, grid

    def codebook(self) -> torch.Tensor:
        """normalize(W E + b) with gradients (TATok.codebook() is the cached no-grad copy): `[N, D]`."""
        reg = self.tatok.bottleneck.regularizer
        return F.normalize(reg.embedding_proj(reg.embedding.weight), dim=-1)  # [N, D]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        z = self.tatok.project(self.tatok.features(images), self.grid)  # [B, g*g, D]
        return F.normalize(z, dim=-1) @ self.codebook().T / self.tau  # [B, g*g, N]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.logits(images)  # [B, g*g, N]
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


def set_tatok_trainable(tatok: TATok) -> None:
    """Train only what `encode` uses, except the frozen anchors E."""
    tatok.requires_grad_(False)
    enc = tatok.encoder
    parts = [
        enc.embeddings,
        *enc.encoder.layers[: tatok.config.layers_run],
        tatok.encode_task_layer,
        tatok.bottleneck.in_linear,
        tatok.bottleneck.regularizer.embedding_proj,
    ]
    for part in parts:
        part.requires_grad_(True)


def keyframe_batch(clips: list[world.Clip], threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keyframe images `[B*K, 3, H, W]` and their cell codes `[B*K, g*g]`."""
    keys = tiny.VIDEO.keyframes
    images = torch.cat([clip_images(c, keys) for c in clips])  # [B*K, 3, H, W]
    labels = torch.cat([clip_labels(c, keys, tiny.VIDEO.grid, threshold) for c in clips])  # [B*K, g*g]
    return images, labels


class TATokStage(Stage):
    name = "tatok"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--tau", type=float, default=0.07, help="tatok: cosine temperature of the cell loss")
        parser.add_argument(
            "--label-threshold",
            type=float,
            default=0.25,
            help="tatok/planner: cover fraction that makes a cell show an object or the wall",
        )

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        model, tokenizer, _ = tiny.build_planner(self.args.seed)
        self.anchors = tiny.anchor_rows(model, tokenizer)  # [N, D]: the planner's word rows, frozen
        self.tatok = tiny.build_tatok(self.anchors, self.args.seed)
        set_tatok_trainable(self.tatok)
        self.module = TATokObjective(self.tatok, self.args.tau, tiny.VIDEO.grid).to(ctx.device)
        self._eval: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    def init_from(self, path: Path) -> None:
        source = load_tatok(resolve_tatok_file(path))
        self.tatok.load_state_dict(source.state_dict())
        self.anchors = self.tatok.bottleneck.regularizer.embedding.weight.detach().cpu().clone()  # [N, D]

    def batch(self, step: int):
        a, c = self.args, self.ctx
        seeds = clip_seeds(a.seed, self.name, step, c.rank, c.world_size, a.batch)
        images, labels = keyframe_batch([world.make_clip(s) for s in seeds], a.label_threshold)
        return {"images": images.to(c.device), "labels": labels.to(c.device)}, seeds

    def _eval_sets(self):
        if self._eval is None:
            n, seed, thr = self.args.eval_clips, self.args.seed, self.args.label_threshold
            self._eval = {s: keyframe_batch(eval_clips(s, n, seed), thr) for s in ("train", "heldout")}
        return self._eval

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Cell accuracy of `TATok.encode` (the runtime lookup) on unseen clips, and the code-word check."""
        self.tatok.eval()
        out, used = {}, set()
        for split, (images, labels) in self._eval_sets().items():
            codes = torch.cat(
                [
                    self.tatok.encode(images[i : i + 40].to(self.ctx.device), grid=tiny.VIDEO.grid).cpu()
                    for i in range(0, len(images), 40)
                ]
            )  # [M, g*g]
            fore = labels != BACKGROUND_CODE
            prefix = "" if split == "train" else "heldout_"
            out[f"{prefix}cell_acc"] = round(float((codes == labels).float().mean()), 4)
            out[f"{prefix}object_acc"] = round(float((codes == labels)[fore].float().mean()), 4)
            used |= set(codes.unique().tolist())
        check = tiny.code_word_check(self.tatok.codebook().cpu(), self.anchors, sorted(used))
        out["code_word_match"] = round(sum(r["nearest"] == r["word"] for r in check) / max(len(check), 1), 4)
        out["used_codes"] = {r["word"]: f"{r['nearest']} {r['cos']:.3f}" for r in check}
        self.tatok.train()
        return out

    def export(self, out: Path) -> None:
        source = {"stage": self.name, "seed": self.args.seed, "anchors": "tiny planner word rows (world.WORDS)"}
        save_tatok(self.tatok, Path(out) / "ta_tok.safetensors", source=source)
