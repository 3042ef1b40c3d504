"""Per-token targets of the planner stage's losses, read off a batch's labels and the plans they spell.

This project's own: `motion_weights` (the plan codes whose cell changes weigh more, `--motion-weight`, and those
of objects that stay, `--still-weight`), `move_targets` (each object's move into every keyframe, for
`--move-weight`'s auxiliary head; the moves are `planner.moves.code_moves`) and `pad` (a batch of sequences and
their labels). Sequences come from `planner_prompt.plan_ids`; codes are found by their labels, so keyframe cues
between the blocks do not shift them.
"""

from __future__ import annotations

import torch

from ..planner.moves import MOVES, code_moves
from ..world import tiny
from ..world.labels import BACKGROUND_CODE
from ..world.tiny import NUM_CODES

IGNORE = -100  # the label of a position without a loss (PyTorch's cross-entropy default)


def motion_weights(
    labels: torch.Tensor, codes: torch.Tensor, code_range: range, weight: float, still: float = 1.0
) -> torch.Tensor:
    """Per-token loss weights `[B, S]`: `weight` on the plan codes whose cell changes from the previous keyframe
    (keyframe 0 against an empty grid of background), `still` on the object and wall cells that stay as they
    were, 1 elsewhere. `labels` `[B, S]` (IGNORE on the prompt), `codes` `[B, K, g*g]` the plan they spell. Most
    cells repeat the previous keyframe, so under a plain mean the few tokens that say where an object moves weigh
    almost nothing; this is the motion they carry. Weighing only those makes a missed move cost `weight` times a
    spurious one, so a planner learns to move objects the text keeps still; `still` evens that out."""
    before = torch.cat([torch.full_like(codes[:, :1], BACKGROUND_CODE), codes[:, :-1]], dim=1)  # [B, K, g*g]
    moved = (codes != before).flatten(1)  # [B, K*g*g], in plan order
    kept = ((codes == before) & (codes != BACKGROUND_CODE)).flatten(1)  # [B, K*g*g]: objects that stay
    per_cell = torch.where(moved, weight, torch.where(kept, still, 1.0))  # [B, K*g*g]
    is_code = (labels >= code_range.start) & (labels < code_range.stop)  # [B, S]
    weights = torch.ones(labels.shape, dtype=torch.float32)  # [B, S]
    for b in range(labels.shape[0]):
        weights[b, is_code[b]] = per_cell[b]
    return weights


def move_targets(labels: torch.Tensor, codes: torch.Tensor, code_range: range) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets of `PlannerObjective.move_loss`: each code's move into keyframes 1.. (`planner.moves.code_moves`,
    as indices of `MOVES`; IGNORE for codes not in keyframe 0) `[B, K-1, NUM_CODES]`, and the position before
    each of those keyframes' first cell `[B, K-1]`. `labels` `[B, S]`, `codes` `[B, K, g*g]` the plan they spell."""
    batch, keyframes, cells = codes.shape
    moves = torch.full((batch, keyframes - 1, NUM_CODES), IGNORE, dtype=torch.long)  # [B, K-1, NUM_CODES]
    at = torch.zeros((batch, keyframes - 1), dtype=torch.long)  # [B, K-1]
    is_code = (labels >= code_range.start) & (labels < code_range.stop)  # [B, S]
    for b in range(batch):
        for code, steps in code_moves(codes[b], tiny.VIDEO.grid, BACKGROUND_CODE).items():
            moves[b, :, code] = torch.tensor([MOVES.index(m) for m in steps])
        first = is_code[b].nonzero().flatten()[cells::cells]  # [K-1]: the first cell of keyframes 1..
        at[b] = first - 1  # the state that predicts that cell
    return moves, at


def pad(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (ids, labels) pairs: input_ids, attention_mask, labels, each `[B, S]`."""
    length = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)  # [B, S]
    labels = torch.full((len(sequences), length), IGNORE, dtype=torch.long)  # [B, S]
    mask = torch.zeros((len(sequences), length), dtype=torch.long)  # [B, S]
    for b, (seq, lab) in enumerate(sequences):
        ids[b, : len(seq)], labels[b, : len(lab)], mask[b, : len(seq)] = torch.tensor(seq), torch.tensor(lab), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
