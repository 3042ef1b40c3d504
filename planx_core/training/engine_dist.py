"""Processes and sharding of the training engine: torchrun's process group, FSDP2 and full states.

One code path for every launch: under `torchrun` the process joins its group (NCCL for CUDA
tensors and gloo for CPU ones on GPUs, gloo on CPU); a plain `python -m planx_core train` makes
a one-rank gloo group in memory (`HashStore`), so FSDP2 (`fully_shard`) and
`torch.distributed.checkpoint` run the same way on 1 process, N GPUs, N nodes and in the tests.
Gradients are averaged by FSDP's reduce-scatter; nothing here reduces gradients by hand.

Sharding (`shard`): each unit a stage names (`Stage.shard_blocks`: a DiT block, a decoder layer,
or a list of modules that form one unit) gets `fully_shard`, then the whole module does (the
parameters no unit took: embeddings, heads, a small branch). Frozen and trained parameters are
sharded together. `MixedPrecisionPolicy`: "bf16" gathers bf16 parameters and computes in bf16,
reduces gradients in fp32 and keeps fp32 master weights for the optimizer; "fp32" changes
nothing. Activation checkpointing (`torch.distributed._composable.checkpoint`, which keeps the
parameter names) recomputes each unit's first module in the backward pass.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._composable import checkpoint as checkpoint_activations
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from .stages import StageError


@dataclass
class Ranks:
    rank: int
    world: int
    device: torch.device
    launched: bool  # started by torchrun (RANK and WORLD_SIZE set)
    owned: bool = False  # the process group was made here (a one-rank group), and is destroyed at the end

    @property
    def main(self) -> bool:
        return self.rank == 0


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA when there is one), `cpu` or `cuda`; refuses CUDA on a machine without it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StageError("--device cuda: this machine has no CUDA device (torch.cuda.is_available() is False)")
    if name != "cpu" and not name.startswith("cuda"):
        raise StageError(f"--device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def setup(args) -> Ranks:
    """Join torchrun's process group, or make a one-rank group; pick the device and the thread count."""
    device = pick_device(args.device)
    launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if device.type == "cuda":
        gpus = torch.cuda.device_count()
        if local_rank >= gpus:
            raise StageError(
                f"local rank {local_rank} of {local_world} has no GPU: this machine has {gpus} CUDA device(s); "
                f"launch torchrun --nproc_per_node {gpus} (or fewer), or train on the CPU with --device cpu"
            )
        device = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(device)
    threads = args.threads or (max(1, (os.cpu_count() or 1) // local_world) if launched else 0)
    if threads:
        torch.set_num_threads(threads)
    owned = False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if launched:  # ranks wait in a collective while rank 0 evaluates: allow an hour
            dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(minutes=60))
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owned = True
    return Ranks(dist.get_rank(), dist.get_world_size(), device, launched, owned)


def teardown(ranks: Ranks) -> None:
    """Destroy a one-rank group made by `setup` (torchrun ranks leave through `main.leave`)."""
    if ranks.owned and not ranks.launched and dist.is_initialized():
        dist.destroy_process_group()


def gather(obj) -> list:
    """`obj` of every rank, in rank order."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    dist.barrier()


def agree(values: list[float], device: torch.device) -> list[float]:
    """Sum of `values` over ranks: one small all-reduce (step loss, stop and save requests)."""
    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    dist.all_reduce(t)
    return t.tolist()


def precision_policy(precision: str, device: torch.device) -> MixedPrecisionPolicy:
    """bf16 parameters and compute with fp32 gradient reduction (auto on CUDA), or plain fp32 (auto on CPU)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(
    module: nn.Module,
    units: list,
    *,
    device: torch.device,
    precision: str = "auto",
    checkpointing: bool = False,
    unused_parameters: bool = False,
    fp32_modules: list | None = None,
) -> nn.Module:
    """`fully_shard` each unit (a module or a list of modules), then the whole module, in place; returns it.
    `fp32_modules` (e.g. a plain LayerNorm fed float32 on purpose) become units that stay in float32 under bf16."""
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = precision_policy(precision, device)
    module.to(device)
    if policy.param_dtype is not None:
        for small in fp32_modules or []:
            fully_shard(small, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32))
    for unit in units:
        modules = list(unit) if isinstance(unit, (list, tuple)) else [unit]
        if checkpointing:
            checkpoint_activations(modules[0])
        fully_shard(modules if len(modules) > 1 else modules[0], mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    if unused_parameters:
        reduce_unused(module)
    return module


def reduces_unused() -> bool:
    """Whether this torch's FSDP2 can reduce-scatter parameters a step left without gradients (newer torch)."""
    return hasattr(FSDPModule, "set_reduce_scatter_unused_params")


def reduce_unused(module: nn.Module) -> None:
    """Let FSDP2 reduce-scatter parameters that got no gradient this step (so ranks whose steps use different
    parameters do not wait on each other). Older torch lacks the switch: one rank needs none, several are refused."""
    if reduces_unused():
        module.set_reduce_scatter_unused_params(True)
    elif dist.get_world_size() > 1:
        raise StageError(
            f"torch {torch.__version__}'s FSDP2 cannot reduce parameters unused in a step "
            "(no set_reduce_scatter_unused_params), which this stage needs on several ranks: install a newer "
            "torch (the one in pyproject's tested range) or train on one rank"
        )


def full_state(module: nn.Module, *, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0, on the CPU (other ranks get {}); every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
    return get_model_state_dict(module, options=options)


def full_tensors(tensors: dict[str, torch.Tensor], main: bool) -> dict[str, torch.Tensor]:
    """Sharded tensors (e.g. the EMA) gathered whole to the CPU of rank 0; every rank must call it."""
    out = {}
    for name, t in tensors.items():
        whole = t.full_tensor() if isinstance(t, DTensor) else t
        if main:
            out[name] = whole.detach().cpu()
    return out


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def state_sha(state: dict[str, torch.Tensor]) -> str:
    """A short sha256 of a state dict's names and float32 values (for the log: did training change it?)."""
    h = hashlib.sha256()
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def leave(code: int) -> None:
    """End a torchrun rank without tearing down the gloo process group, which can deadlock (torch 2.13:
    the main thread joins gloo's run-loop thread while holding the GIL that thread waits for; seen
    as a rank hanging after its last log line, or "terminate called without an active exception").
    Logs and checkpoints are already written and flushed; torchrun gets the exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
