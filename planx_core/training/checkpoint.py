"""Resumable training checkpoints: weights and AdamW state in safetensors, scalars in JSON.

This project's own format (nothing is pickled, so loading runs no code). A checkpoint is a folder
`<out>/checkpoint/` with:

* `model.safetensors`: every tensor the stage needs to continue (`Stage.state_tensors()`),
* `optim.safetensors`: per trained parameter `NAME::exp_avg`, `NAME::exp_avg_sq`, `NAME::step`,
* `state.json`: {"step", "fingerprint" (what must match to resume: stage, seed, global batch, ...),
  "args", "time"}.

A new checkpoint is written to `checkpoint.tmp/` and swapped in with renames, so an interrupted
write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ..files.safetensors import CheckpointError, read_safetensors, save_safetensors

FOLDER = "checkpoint"
_SLOTS = ("exp_avg", "exp_avg_sq", "step")


def checkpoint_dir(out: Path) -> Path | None:
    """The checkpoint folder of a run's output folder, or None when there is none yet."""
    folder = Path(out) / FOLDER
    return folder if (folder / "state.json").is_file() else None


def optimizer_tensors(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    """AdamW moments and step counts keyed `NAME::slot`; `names` maps id(param) -> name."""
    out = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for slot in _SLOTS:
                if slot in state:
                    out[f"{names[id(param)]}::{slot}"] = torch.as_tensor(state[slot]).detach().cpu()
    return out


def restore_optimizer(
    optimizer: torch.optim.Optimizer, names: dict[int, str], tensors: dict[str, torch.Tensor], source: Path
) -> None:
    """Put saved moments back into a freshly built optimizer (its hyper-parameters stay as built)."""
    known = set(names.values())
    stray = sorted({k.split("::")[0] for k in tensors} - known)
    if stray:
        raise CheckpointError(
            f"{source}: optimizer state for parameters this stage does not train: {stray[:5]}; "
            f"the checkpoint belongs to another stage or model, start a new --out"
        )
    state, index = {}, 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            slots = {s: tensors[f"{names[id(param)]}::{s}"] for s in _SLOTS if f"{names[id(param)]}::{s}" in tensors}
            if slots:
                state[index] = {s: v.to(param.device) if s != "step" else v for s, v in slots.items()}
            index += 1
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def save_checkpoint(
    out: Path,
    step: int,
    tensors: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    names: dict[int, str],
    fingerprint: dict,
    args: dict,
) -> Path:
    """Write `<out>/checkpoint/` atomically (rank 0 only); return its path."""
    out = Path(out)
    tmp, final, old = out / f"{FOLDER}.tmp", out / FOLDER, out / f"{FOLDER}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(tensors, tmp / "model.safetensors")
    save_safetensors(optimizer_tensors(optimizer, names), tmp / "optim.safetensors")
    state = {"step": step, "fingerprint": fingerprint, "args": args, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(state.json, model tensors, optimizer tensors) of a checkpoint folder."""
    try:
        state = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"{folder}/state.json cannot be read ({err}); delete that folder, or start over with --no-resume"
        ) from None
    return state, read_safetensors(folder / "model.safetensors"), read_safetensors(folder / "optim.safetensors")


def check_fingerprint(saved: dict, current: dict, folder: Path) -> None:
    """Refuse to resume a run whose data order or tied partners would differ."""
    diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current) if saved.get(k) != current.get(k)}
    if diff:
        listed = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(
            f"{folder}: cannot resume, the run settings differ ({listed}); pass the same "
            f"settings, start a new run with another --out, or start over here with --no-resume "
            f"(the checkpoint is replaced at the next save)"
        )
