"""Ulysses sequence parallelism for `WanModel`: one video's token sequence split across N ranks.

Source: the idea of DeepSpeed-Ulysses (arXiv 2309.14509) as Wan 2.2 uses it (`wan/distributed/`):
every rank holds L/N tokens with all their heads; around each self-attention one all-to-all turns
q, k, v `[B, L/N, H, D]` into `[B, L, H/N, D]` (all tokens, H/N heads), attention runs on the whole
sequence of those heads, and a second all-to-all brings `[B, L, H/N, D]` back to `[B, L/N, H, D]`.
Everything else of a block (modulation, text cross-attention, FFN) is per token and runs on the local
tokens. Written here from that description, for planx_core's own DiT.

Decisions (this module's rules):
- The sequence is the one `WanModel.forward` builds: video tokens, then in-context plan tokens (their
  3D-RoPE rows and timestep-0 rows with them). It is cut into N equal chunks after padding L up to a
  multiple of N; rank r holds tokens [r * L/N, (r + 1) * L/N). In-context plan tokens are split with the
  sequence like any token (not replicated): the all-to-all reassembles the exact single-process sequence.
- Padding tokens are dropped before attention (only the first L tokens of the gathered q, k, v enter
  it), so they change nothing; their outputs are discarded by `Shard.gather`.
- Self-attention after the all-to-all sees the whole sequence, so full attention (with the in-context
  key-bias mask) and windowed attention (`windows.py`) run unchanged on the rank's heads.
- A cross-attention plan's keys and values and the text context are replicated (every rank computes
  them); the queries are local and rotated by their own rows of the video RoPE.
- The head's output is all-gathered: every rank returns the full velocity, so the sampler runs
  identically (and redundantly) on every rank.
- Guidance passes: by default every rank takes part in each pass, one after another. `GuidanceSplit`
  (installed with `diffusion.guidance_runner`) spreads the P passes of a step over P groups of N/P ranks
  when P divides N: each group runs its pass sequence-parallel over its own ranks, and the velocities
  are all-gathered between the groups' ranks of the same position. Otherwise the passes run as by default.
- Inference only: the collectives are not differentiable.

Use: `with sequence_parallel(model):` (under torchrun, after `init_from_torchrun`) or
`model(x, t, context, parallel=SequenceParallel())`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .attention import attention
from .rope import Rope

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def check_split(heads: int, ranks: int, length: int | None = None) -> None:
    """Refuse a split Ulysses cannot do: heads not divisible by the ranks, or fewer tokens than ranks."""
    if ranks < 1:
        raise ValueError(f"sequence parallelism needs at least 1 rank, got {ranks}")
    if heads % ranks:
        valid = ", ".join(str(n) for n in range(1, heads + 1) if heads % n == 0)
        raise ValueError(
            f"sequence parallelism over {ranks} ranks splits the attention heads among the ranks, but the "
            f"model has {heads} heads; use a number of ranks that divides {heads}: {valid}"
        )
    if length is not None and length < ranks:
        raise ValueError(
            f"the token sequence ({length} tokens) is shorter than the {ranks} ranks of sequence "
            f"parallelism; render a longer or larger video, or use at most {length} ranks"
        )


class SequenceParallel:
    """The ranks of a torch.distributed process group that share one video's sequence."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "sequence parallelism needs an initialised torch.distributed process group; launch with "
                "torchrun and call planx_core.wan.parallel.init_from_torchrun first"
            )
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def shard(self, length: int, heads: int) -> Shard:
        """This rank's share of a sequence of `length` tokens of a model with `heads` heads."""
        check_split(heads, self.size, length)
        return Shard(self.group, self.rank, self.size, length, -(-length // self.size))


@dataclass(frozen=True)
class Shard:
    """One forward's split: rank `rank` of `size` holds tokens [rank * chunk, (rank + 1) * chunk) of `length`."""

    group: dist.ProcessGroup | None
    rank: int
    size: int
    length: int  # L, real tokens
    chunk: int  # tokens per rank, ceil(L / N)

    @property
    def start(self) -> int:
        return self.rank * self.chunk

    @property
    def padded(self) -> int:
        return self.chunk * self.size

    def split(self, tokens: torch.Tensor, rows: torch.Tensor, layout, rope: Rope, video_rope: Rope):
        """`WanModel.forward`'s sequence -> this rank's part: tokens `[B, L/N, C]`, their timestep rows and
        layout, their RoPE rows, and their rows of the video RoPE (for the cross-attention plan's queries)."""
        index, part = local_layout(layout, self.start, self.start + self.chunk)
        local_rows = rows[:, index.to(rows.device)]  # [B, S_local]
        return self.tokens(tokens), local_rows, part, self.rope(rope), self.rope(video_rope)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, L, ...]` -> this rank's `[B, L/N, ...]`, zero-padded past L."""
        local = x[:, self.start : self.start + self.chunk]
        pad = self.chunk - local.shape[1]
        if not pad:
            return local
        return torch.cat([local, local.new_zeros(local.shape[0], pad, *local.shape[2:])], dim=1)

    def rope(self, rope: Rope) -> Rope:
        """This rank's rows of a RoPE table `[..., L', D/2]`, identity rotations past its end."""
        local = Rope(*(part[..., self.start : self.start + self.chunk, :] for part in rope))
        pad = self.chunk - local.cos.shape[-2]
        if not pad:
            return local
        zeros = local.cos.new_zeros(*local.cos.shape[:-2], pad, local.cos.shape[-1])  # [..., pad, D/2]
        return local.cat(Rope.from_angles(zeros))

    def attend(self, inner=None, attn_mask: torch.Tensor | None = None):
        """The self-attention `attend(q, k, v)` on local q, k, v `[B, L/N, H, D]`: all-to-all to `[B, L, H/N, D]`,
        `inner` (windowed attention; full attention with `attn_mask` when None), all-to-all back."""
        core = inner if inner is not None else functools.partial(attention, attn_mask=attn_mask)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            qkv = self.to_heads(torch.stack((q, k, v)))[:, :, : self.length]  # [3, B, L, H/N, D]
            out = core(*qkv.unbind(0))  # [B, L, H/N, D]
            out = F.pad(out, (0, 0, 0, 0, 0, self.padded - self.length))  # [B, L_pad, H/N, D]
            return self.to_tokens(out)  # [B, L/N, H, D]

        return attend

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """All-to-all: `[K, B, L/N, H, D]` (local tokens, all heads) -> `[K, B, L_pad, H/N, D]` (all tokens)."""
        send = x.unflatten(3, (self.size, -1)).permute(3, 0, 1, 2, 4, 5).contiguous()  # [N, K, B, L/N, H/N, D]
        recv = torch.empty_like(send)  # recv[i]: rank i's tokens, this rank's heads
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 2, 0, 3, 4, 5).flatten(2, 3)  # [K, B, L_pad, H/N, D]

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All-to-all: `[B, L_pad, H/N, D]` (all tokens, local heads) -> `[B, L/N, H, D]` (local tokens)."""
        send = x.unflatten(1, (self.size, self.chunk)).movedim(1, 0).contiguous()  # [N, B, L/N, H/N, D]
        recv = torch.empty_like(send)  # recv[i]: this rank's tokens, rank i's heads
        dist.all_to_all_single(recv, send, group=self.group)
        return recv.permute(1, 2, 0, 3, 4).flatten(2, 3)  # [B, L/N, H, D]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's `[B, L/N, ...]` -> the whole `[B, L, ...]` on every rank."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, : self.length]  # [B, L, ...]


def local_layout(layout, start: int, stop: int):
    """The timestep rows of tokens [start, stop) of a `dit.TokenLayout`: (row index `[S_local]`, their layout).

    A group of n rows of m tokens is cut into a partial first row, whole rows and a partial last row;
    adjacent pieces of one shape are merged back, so a uniform timestep stays one group (the fast path).
    Tokens past the layout's end (padding) take the last row."""
    pieces: list[tuple[int, int, int]] = []  # (first row, rows, tokens per row)
    token = row = 0
    for n, m in layout.groups:
        lo, hi = max(start, token), min(stop, token + n * m)
        if lo < hi:
            first, last = (lo - token) // m, (hi - 1 - token) // m  # rows of the group touched
            head = min(hi, token + (first + 1) * m) - lo
            _add(pieces, row + first, 1, head)
            if last > first:
                _add(pieces, row + first + 1, last - first - 1, m)
                _add(pieces, row + last, 1, hi - token - last * m)
        token, row = token + n * m, row + n
    pad = stop - max(start, min(stop, token))
    _add(pieces, pieces[-1][0] + pieces[-1][1] - 1 if pieces else 0, 1, pad)
    index = torch.cat([torch.arange(r, r + n) for r, n, _ in pieces])
    return index, type(layout)(tuple((n, m) for _, n, m in pieces))


def _add(pieces: list[tuple[int, int, int]], row: int, rows: int, per_row: int) -> None:
    """Append rows `row..row + rows - 1` of `per_row` tokens, merged into the last piece when they continue it."""
    if rows < 1 or per_row < 1:
        return
    if pieces:
        last_row, last_rows, last_per = pieces[-1]
        if last_per == per_row and last_row + last_rows == row:  # the next rows, same width
            pieces[-1] = (last_row, last_rows + rows, per_row)
            return
        if last_rows == rows == 1 and last_row == row:  # more tokens of the same row
            pieces[-1] = (row, 1, last_per + per_row)
            return
    pieces.append((row, rows, per_row))


@contextlib.contextmanager
def sequence_parallel(model, parallel: SequenceParallel | None = None):
    """Run `model` (a `WanModel`) sequence-parallel inside the block: every forward splits its sequence over
    `parallel`'s ranks (default: the whole world). Refuses a model whose heads the ranks do not divide."""
    parallel = parallel or SequenceParallel()
    check_split(model.config.num_heads, parallel.size)
    previous, model.parallel = model.parallel, parallel
    try:
        yield model
    finally:
        model.parallel = previous


class GuidanceSplit:
    """A `diffusion.guidance_runner` that spreads a step's guidance passes over groups of ranks (see the module).

    Every rank calls it with the same passes (they all run the same sampler), so the groups, made once per
    pass count, are created in the same order everywhere, as `dist.new_group` requires."""

    def __init__(self, model, parallel: SequenceParallel | None = None):
        self.model, self.world = model, parallel or SequenceParallel()
        self.ranks = (
            list(range(self.world.size)) if self.world.group is None else dist.get_process_group_ranks(self.world.group)
        )
        self._groups: dict[int, tuple[SequenceParallel, dist.ProcessGroup, int] | None] = {}

    def groups(self, passes: int) -> tuple[SequenceParallel, dist.ProcessGroup, int] | None:
        """(this rank's pass group, its peers in the other groups, its pass), or None when P does not split N."""
        n = self.world.size
        if passes < 2 or n % passes or self.model.config.num_heads % (n // passes):
            return None
        if passes not in self._groups:
            per = n // passes
            teams = [dist.new_group(self.ranks[p * per : (p + 1) * per]) for p in range(passes)]
            peers = [dist.new_group(self.ranks[i::per]) for i in range(per)]
            me = self.world.rank
            self._groups[passes] = (SequenceParallel(teams[me // per]), peers[me % per], me // per)
        return self._groups[passes]

    def __call__(self, passes: list, evaluate) -> list[torch.Tensor]:
        split = self.groups(len(passes))
        if split is None:
            return [evaluate(which) for which in passes]
        team, peers, mine = split
        with sequence_parallel(self.model, team):
            out = evaluate(passes[mine]).contiguous()  # [B, C, F, H, W], the whole velocity on every team rank
        velocities = [torch.empty_like(out) for _ in passes]
        dist.all_gather(velocities, out, group=peers)  # peers are ordered by pass
        return velocities


def init_from_torchrun(ranks: int, device: str = "cpu") -> tuple[SequenceParallel | None, str]:
    """The process group of a `--sequence-parallel N` run under torchrun: (its SequenceParallel, this rank's
    device). N = 1 without torchrun is a plain run (None). Refuses N that is not torchrun's world size."""
    launched = all(name in os.environ for name in TORCHRUN_ENV)
    if ranks == 1 and not launched:
        return None, device
    if not launched:
        raise ValueError(
            f"--sequence-parallel {ranks} needs one process per rank: launch with "
            f"torchrun --nproc_per_node {ranks} -m planx_core ... --sequence-parallel {ranks}"
        )
    world = int(os.environ["WORLD_SIZE"])
    if world != ranks:
        raise ValueError(
            f"--sequence-parallel {ranks} but torchrun started {world} processes; pass "
            f"--nproc_per_node {ranks} to torchrun, or --sequence-parallel {world}"
        )
    if torch.device(device).type == "cuda":
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return SequenceParallel(), device


def is_writer() -> bool:
    """Does this process write the outputs (rank 0, or a run without torch.distributed)?"""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def finish() -> None:
    """Tear down the process group of a `--sequence-parallel` run (nothing otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
