"""The planner stage's metrics (`PlannerEvaluation`, mixed into `training.planner.PlannerStage`).

This project's own. On unseen `train`-split clips and on held-out compositions: teacher-forced plan-token accuracy
over all cells and object/wall cells, text-to-video (5 keyframes) and image-to-video (keyframes 1..4), the
copy-the-first-frame baseline, and, for planners with move rows, the teacher-forced move words (the likeliest of the
six, as the runtime writes them: `*_tf_i2v_words`, and for clips with two or more objects `*_tf_i2v_words_2obj`, where
binding a word to its object is the hard part); then greedy decoding of a few clips (temperature 0): cell accuracies
and keyframe moves (`move_agreement`).
"""

from __future__ import annotations

import torch

from ..planner.model import SemanticPlanner
from ..world import tiny
from ..world.labels import BACKGROUND_CODE, move_agreement
from .planner_targets import pad
from .stages import eval_clips


class PlannerEvaluation:
    """`evaluate` for the planner stage; the stage supplies args, ctx, model, tokenizer, vocab, moves, `sequence`
    and `plan_codes`, and sets `_eval` to None."""

    def _eval_sets(self):
        if self._eval is None:
            n, seed = self.args.eval_clips, self.args.seed
            self._eval = {
                s: (clips, self.plan_codes(clips)) for s in ("train", "heldout") for clips in [eval_clips(s, n, seed)]
            }
        return self._eval

    def _teacher_forced(self, clips, codes: torch.Tensor, i2v: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted codes under teacher forcing (argmax over the `<I*>` logits) `[B, K, g*g]`, and per clip the
        move words predicted right and scored `[B, 2]` (argmax over the six words; zeros without move rows)."""
        preds, words = [], []
        for start in range(0, len(clips), 8):
            part = [self.sequence(c, codes[start + b], i2v) for b, c in enumerate(clips[start : start + 8])]
            inputs = {k: t.to(self.ctx.device) for k, t in pad(part, self.tokenizer.pad_token_id).items()}
            logits = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
            image = logits[:, :-1, self.vocab.image_start : self.vocab.image_end].argmax(-1)  # [b, S-1]
            targets = inputs["labels"][:, 1:]  # [b, S-1]
            is_code = (targets >= self.vocab.image_start) & (targets < self.vocab.image_end)
            preds.append(image[is_code].reshape(len(part), *codes.shape[1:]).cpu())  # [b, K, g*g]
            words.append(self._word_hits(logits[:, :-1], targets).cpu())  # [b, 2]
        return torch.cat(preds), torch.cat(words)

    def _word_hits(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Move words right and scored per row `[b, 2]`: `logits` `[b, S-1, V]` predict `targets` `[b, S-1]`."""
        if not self.moves:
            return torch.zeros(len(targets), 2, dtype=torch.long)
        ids = torch.tensor(self.moves.word_ids, device=targets.device)  # [6]
        is_word = self.moves.is_word(targets)  # [b, S-1]
        right = (ids[logits[..., ids].argmax(-1)] == targets) & is_word  # [b, S-1]
        return torch.stack([right.sum(1), is_word.sum(1)], 1)  # [b, 2]

    @staticmethod
    def _scores(pred: torch.Tensor, truth: torch.Tensor, name: str) -> dict:
        fore = truth != BACKGROUND_CODE
        return {
            f"{name}_acc": round(float((pred == truth).float().mean()), 4),
            f"{name}_obj": round(float((pred == truth)[fore].float().mean()), 4),
        }

    @staticmethod
    def _word_scores(hits: torch.Tensor, clips, name: str) -> dict:
        """Share of move words right, over all clips and over those with two or more objects; `hits` `[B, 2]`."""
        several = torch.tensor([len(c.objects) > 1 for c in clips])  # [B]
        out = {}
        for key, rows in ((f"{name}_words", hits), (f"{name}_words_2obj", hits[several])):
            if rows[:, 1].sum() > 0:
                out[key] = round(float(rows[:, 0].sum() / rows[:, 1].sum()), 4)
        return out

    def _greedy(self, clips, codes: torch.Tensor) -> dict:
        planner = SemanticPlanner(self.model, self.tokenizer, self.vocab, "eval")
        v, out = tiny.VIDEO, {}
        shape = dict(num_keyframes=codes.shape[1], fps=v.fps, keyframe_rate=v.keyframe_rate, duration=v.duration)
        for i2v in (False, True):
            preds = [
                planner.generate(
                    c.scene,
                    c.motion,
                    **shape,
                    grid=(v.grid, v.grid),
                    temperature=0,
                    first_frame_codes=codes[b, 0] if i2v else None,
                    locked={0: codes[b, 0].tolist()} if i2v else None,
                )
                for b, c in enumerate(clips)
            ]  # each [K, g*g]
            first, name = (1, "greedy_i2v") if i2v else (0, "greedy_t2v")
            plans = torch.stack(preds)  # [n, K, g*g]
            out.update(self._scores(plans[:, first:], codes[:, first:], name))  # [n, K-first, g*g]
            out[f"{name}_moves"] = round(move_agreement(plans, codes, v.grid, BACKGROUND_CODE), 4)
        return out

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        out = {}
        for split, (clips, codes) in self._eval_sets().items():
            prefix = "" if split == "train" else "heldout_"
            out.update(self._scores(self._teacher_forced(clips, codes, False)[0], codes, f"{prefix}tf_t2v"))
            i2v, hits = self._teacher_forced(clips, codes, True)
            out.update(self._scores(i2v[:, 1:], codes[:, 1:], f"{prefix}tf_i2v"))  # keyframe 0 is in the prompt
            out.update(self._word_scores(hits, clips, f"{prefix}tf_i2v"))
            copy = codes[:, :1].expand_as(codes[:, 1:])  # [B, K-1, g*g]: "nothing moves"
            out.update(self._scores(copy, codes[:, 1:], f"{prefix}copy_first"))
        n = self.args.eval_decode
        if n > 0:
            clips, codes = self._eval_sets()["train"]
            out.update(self._greedy(clips[:n], codes[:n]))
        self.model.train()
        return out
