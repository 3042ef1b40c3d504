"""The planner stage's objective: plan-token cross-entropy of a causal LM, optionally weighted per token, with
parallel scheduled sampling (`--self-feed`), the training-only move head (`--move-weight`) and the contrast of
minimal pairs (`--pair-contrast`: a text's own plan against its partner's, a sequence-level margin in the manner of
DPO's -log sigmoid without a reference model).

This project's own (issue 14's recipe changes); the scheduled sampling follows Duckworth et al. 2019 (parallel
scheduled sampling), the weights and move targets come from `planner_targets`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..planner.moves import MOVES
from ..world.tiny import NUM_CODES
from .planner_targets import IGNORE


class PlannerObjective(nn.Module):
    """Plan-token cross-entropy of a causal LM; the trainer zeroes the gradient rows of `frozen_rows`
    (`PlannerStage.after_backward`, on the FSDP-sharded gradient)."""

    def __init__(
        self,
        model: nn.Module,
        frozen_rows: list[int],
        codes: range = range(0),
        self_feed: float = 0.0,
        move_weight: float = 0.0,
        pair_contrast: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.frozen_rows = list(frozen_rows)
        self.codes, self.self_feed, self.move_weight = codes, self_feed, move_weight
        self.pair_contrast = pair_contrast
        # training only (not exported): each keyframe's move of every code, read from the state before its cells
        self.move_head = nn.Linear(model.config.hidden_size, NUM_CODES * len(MOVES)) if move_weight else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        moves: torch.Tensor | None = None,
        move_at: torch.Tensor | None = None,
        rivals: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of a batch `[B, S]`; with `rivals` `[R]` its last R rows are rival rows (item rivals[j]'s text
        with its pair partner's plan), which only the pair contrast reads."""
        items = len(labels) - (0 if rivals is None else len(rivals))  # the batch's own rows come first
        own = labels.clone()  # [B, S]
        own[items:] = IGNORE  # the plan loss never learns a partner's plan
        if self.training and self.self_feed > 0:
            input_ids = self.fed_own_codes(input_ids, attention_mask, own)
        wanted = self.move_head is not None and moves is not None
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=wanted)
        loss = self.plan_loss(out.logits, own, weights)  # logits [B, S, V]
        if wanted:
            hidden = out.hidden_states[-1][:items]  # [B, S, H] of the batch's own rows
            loss = loss + self.move_weight * self.move_loss(hidden, moves[:items], move_at[:items])
        if rivals is not None and self.pair_contrast:
            loss = loss + self.pair_contrast * self.contrast_loss(out.logits, labels, rivals)
        return loss

    @staticmethod
    def contrast_loss(logits: torch.Tensor, labels: torch.Tensor, rivals: torch.Tensor) -> torch.Tensor:
        """-log sigmoid(log p(own plan | text) - log p(partner's plan | text)), the mean over the rival rows (the
        last R of `logits` `[B, S, V]`; row j reads item rivals[j]'s text)."""
        target = labels[:, 1:]  # [B, S-1]
        scored = target != IGNORE  # [B, S-1]
        picked = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
        plan = (picked * scored).sum(-1)  # [B]: each row's plan log-probability
        return F.softplus(plan[len(plan) - len(rivals) :] - plan[rivals]).mean()

    @staticmethod
    def plan_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Next-token cross-entropy on the plan tokens, weighted per token when `weights` `[B, S]` is given."""
        target = labels[:, 1:].flatten()  # [B*(S-1)]
        if weights is None:
            return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target, ignore_index=IGNORE)
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), target, ignore_index=IGNORE, reduction="none")
        w = weights[:, 1:].flatten().float() * (target != IGNORE)  # [B*(S-1)]
        return (ce * w).sum() / w.sum().clamp_min(1.0)

    def move_loss(self, hidden: torch.Tensor, moves: torch.Tensor, move_at: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every code's move into keyframe k (`moves` `[B, K-1, NUM_CODES]`, indices of `MOVES`,
        IGNORE for codes not in keyframe 0), read from the last hidden state `[B, S, H]` at the position just
        before keyframe k's first cell (`move_at` `[B, K-1]`): the model must know where objects go before it
        writes the cells that put them there."""
        at = hidden.gather(1, move_at[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, K-1, H]
        logits = self.move_head(at.float()).unflatten(-1, (NUM_CODES, len(MOVES)))  # [B, K-1, NUM_CODES, M]
        return F.cross_entropy(logits.flatten(0, 2), moves.flatten(), ignore_index=IGNORE)

    @torch.no_grad()
    def fed_own_codes(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        """Parallel scheduled sampling (Duckworth et al. 2019): a share `self_feed` of the plan's `<I*>` inputs is
        replaced by codes the model itself draws there (one teacher-forced pass, sampled at temperature 1, as
        the planner decodes), so it learns to continue from its own mistakes; the targets stay the truth."""
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, S, V]
        code_logits = logits[:, :-1, self.codes.start : self.codes.stop].float()  # [B, S-1, C]
        drawn = torch.distributions.Categorical(logits=code_logits).sample() + self.codes.start  # [B, S-1]
        target = labels[:, 1:]  # [B, S-1]: the token at position t+1
        is_code = (target >= self.codes.start) & (target < self.codes.stop)  # [B, S-1]
        swap = is_code & (torch.rand(target.shape, device=target.device) < self.self_feed)  # [B, S-1]
        fed = input_ids.clone()  # [B, S]
        fed[:, 1:] = torch.where(swap, drawn, input_ids[:, 1:])
        return fed
