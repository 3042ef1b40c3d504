"""Resumable training checkpoints with `torch.distributed.checkpoint` (DCP): sharded, reshardable, atomic.

A checkpoint is the folder `<out>/checkpoint/`:

* DCP files (`.metadata`, one `.distcp` per rank) of the nested state `{"model": the trained
  parameters and the buffers (frozen parameters are left out: they come from their files), "optim":
  AdamW's moments and step counts by parameter name, "ema": the moving average when on}`; the
  tensors are FSDP shards, so a checkpoint written by N ranks loads on M (DCP reads each rank's
  slices),
* `rng_rank{R}.safetensors`: each rank's torch RNG states (CPU, CUDA),
* `state.json`, written last (a folder without it is incomplete): {"step" (the data cursor: every
  batch is a function of the global step), "world", "fingerprint" (what must match to resume),
  "ema", "args", "time", "format": "dcp"}. The learning-rate schedule is a function of the step.

Every rank writes its shards into `checkpoint.tmp/`; rank 0 then writes state.json and swaps the
folders (`checkpoint` -> `checkpoint.old`, `checkpoint.tmp` -> `checkpoint`, the old one removed),
so the last good checkpoint stays until the new one is complete and fsynced, and `newest` picks the
complete folder with the highest step of the three. A run killed between the two renames resumes
from `checkpoint.tmp`; its next save first moves that copy back to `checkpoint` (`settle`). DCP's
`.metadata` is a pickle: load only run folders you made. Checkpoints of earlier versions
(`model.safetensors` + `optim.safetensors`, all tensors whole) still resume (`read_legacy`).
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from ..files.atomic import fsync_dir, fsync_file, signals_held
from ..files.atomic import write_text as write_text_atomic
from ..files.safetensors import CheckpointError, read_safetensors, save_safetensors

FOLDER = "checkpoint"
_ORDER = (f"{FOLDER}", f"{FOLDER}.tmp", f"{FOLDER}.old")  # equal steps: the first wins


def read_state(folder: Path) -> dict | None:
    """state.json of a complete checkpoint folder (DCP or legacy), else None."""
    folder = Path(folder)
    has_data = (folder / ".metadata").is_file() or (folder / "model.safetensors").is_file()
    if not has_data or not (folder / "state.json").is_file():
        return None
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, ValueError):
        return None


def newest(out: Path) -> Path | None:
    """The complete checkpoint folder of a run with the highest step (None when there is none)."""
    found = [(s["step"], -i, Path(out) / n) for i, n in enumerate(_ORDER) if (s := read_state(Path(out) / n))]
    return max(found)[2] if found else None


checkpoint_dir = newest  # the name earlier versions used


def is_legacy(folder: Path) -> bool:
    return not (Path(folder) / ".metadata").is_file()


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def settle(out: Path) -> None:
    """After a run killed mid-swap, make `checkpoint/` the newest complete copy again (rank 0, before a save):
    a save removes `checkpoint.tmp` and `checkpoint.old` first, so neither may hold the only good copy."""
    out = Path(out)
    best, final = newest(out), out / FOLDER
    if best is None or best == final:
        return
    with signals_held():
        if final.exists():
            final.rename(out / f"{FOLDER}.stale")
        best.rename(final)
        shutil.rmtree(out / f"{FOLDER}.stale", ignore_errors=True)
    fsync_dir(out)


def save(out: Path, state: dict, info: dict, *, rank: int, device: torch.device) -> Path:
    """Write `<out>/checkpoint/` from every rank (a collective); `info` goes into state.json. Every file is
    fsynced before the swap; the previous checkpoint is removed only after the new one is in place."""
    out = Path(out)
    tmp, final, old = (out / n for n in (f"{FOLDER}.tmp", FOLDER, f"{FOLDER}.old"))
    if rank == 0:
        settle(out)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(state, checkpoint_id=tmp)
    save_safetensors(rng_states(device), tmp / f"rng_rank{rank}.safetensors")
    dist.barrier()
    if rank == 0:
        for file in tmp.iterdir():
            fsync_file(file)
        record = {**info, "format": "dcp", "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text_atomic(tmp / "state.json", json.dumps(record, indent=1, default=str))
        with signals_held():  # a checkpoint named `checkpoint` exists at every moment but between these two
            if final.exists():
                final.rename(old)
            tmp.rename(final)
        fsync_dir(out)
        shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def saved_keys(folder: Path) -> set[str]:
    """Flattened names of every tensor in a DCP checkpoint ("model.dit.blocks.0...", "optim.NAME.exp_avg", ...)."""
    meta = dcp.FileSystemReader(str(folder)).read_metadata()
    return {k for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def load(folder: Path, state: dict, *, rank: int, device: torch.device) -> None:
    """Fill `state` (nested dicts of sharded tensors, any world size) in place; restore this rank's RNG."""
    dcp.load(state, checkpoint_id=Path(folder))
    rng = Path(folder) / f"rng_rank{rank}.safetensors"
    if rng.is_file():  # ranks beyond the saved world size keep their fresh generators
        set_rng_states(read_safetensors(rng), device)


def read_tensors(folder: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a DCP checkpoint whose flattened name starts with `prefix`, whole, on the CPU,
    without a process group (for tests and tools): {"model.NAME": tensor, "ema.NAME": tensor, ...}."""
    meta = dcp.FileSystemReader(str(folder)).read_metadata()
    state = {
        k: torch.empty(tuple(v.size), dtype=v.properties.dtype)
        for k, v in meta.state_dict_metadata.items()
        if isinstance(v, TensorStorageMetadata) and k.startswith(prefix)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process": it is
        dcp.load(state, checkpoint_id=Path(folder), no_dist=True)
    return state


def read_legacy(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(model tensors incl. "ema::NAME", optimizer state by name {NAME: {slot: tensor}}) of a legacy checkpoint."""
    tensors = read_safetensors(Path(folder) / "model.safetensors")
    optim: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in read_safetensors(Path(folder) / "optim.safetensors").items():
        name, slot = key.rsplit("::", 1)
        optim.setdefault(name, {})[slot] = value
    return tensors, optim


def check_fingerprint(saved: dict, current: dict, folder: Path, keys=None) -> None:
    """Refuse to resume a run whose data order or tied partners would differ (only `keys` when given)."""
    names = set(saved) | set(current) if keys is None else set(keys)
    diff = {k: (saved.get(k), current.get(k)) for k in names if saved.get(k) != current.get(k)}
    if diff:
        listed = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CheckpointError(
            f"{folder}: cannot resume, the run settings differ ({listed}); pass the same "
            f"settings, start a new run with another --out, or start over here with --no-resume "
            f"(the checkpoint is replaced at the next save)"
        )


def check_keys(saved: set[str], wanted: set[str], folder: Path, what: str) -> None:
    """Refuse a checkpoint that lacks tensors this run needs (another stage or model)."""
    missing = sorted(wanted - saved)
    if missing:
        raise CheckpointError(
            f"{folder}: the checkpoint has no {what} {missing[:5]}{' ...' if len(missing) > 5 else ''}; "
            f"it belongs to another stage or model: start a new --out, or start over with --no-resume"
        )
