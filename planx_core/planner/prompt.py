"""The planner's prompt: system part, scene and motion texts, and image codes as token ids.

Sources: Plan-X (arXiv 2511.17986) Fig. 2 (system prompt "Generate T frames ...", then the
image description T_img, the motion T_motion and, for image-to-video, the first frame's
semantic tokens); Tar (github csuhan/Tar) for the Qwen chat format and the image block
`<im_start><S{scale}><I..>...<im_end>`. The wording is this project's own (the paper shows
only a fragment). Written with the tokenizer's chat template when it has one::

    system: You are a video planner. Write {K} keyframes for a video of {duration} seconds at
            {fps} frames per second, one keyframe every {1/rate} seconds ({rate} per second).
            Each keyframe is a {gh} by {gw} grid of visual tokens.
    user:   Scene: {scene}
            Motion: {motion}                                      (absent for a cues-only planner)
            First frame: <im_start><S2><I..>..<im_end>            (image-to-video)
            Earlier keyframes: <im_start><S2>..<im_end> ...       (continuation)
    assistant: (the plan, decoded by `planner_decode`)

Without a chat template (the word-level tokenizer): `{bos}System: ...\nUser: ...\nAssistant:`.
Image codes enter as token ids (image_start + k), never through the text tokenizer: the text is
rendered with private-use placeholders, tokenized piece by piece, and the blocks spliced in.
"""

from __future__ import annotations

import re

import torch

from .vocab import PlanVocab, scale_for_length

_SLOT = re.compile("\ue000(\\d+)\ue001")  # private-use marks where image blocks go in the rendered prompt


def system_text(num_keyframes: int, fps: float, keyframe_rate: float, duration: float, grid: tuple[int, int]) -> str:
    return (
        f"You are a video planner. Write {num_keyframes} keyframes for a video of {duration:g} seconds at "
        f"{fps:g} frames per second, one keyframe every {1 / keyframe_rate:g} seconds ({keyframe_rate:g} per "
        f"second). Each keyframe is a {grid[0]} by {grid[1]} grid of visual tokens."
    )


def code_rows(codes) -> list[list[int]]:
    """Context codes: a tensor `[C, cells]` or a list of code lists."""
    rows = codes.tolist() if isinstance(codes, torch.Tensor) else [list(r) for r in codes]
    return [r.tolist() if isinstance(r, torch.Tensor) else r for r in rows]


def flat_codes(codes) -> list[int]:
    return codes.reshape(-1).tolist() if isinstance(codes, torch.Tensor) else [int(c) for c in codes]


class _PromptParts:
    """User text with slots for image blocks, and the blocks' token ids."""

    def __init__(self, scene: str, motion: str | None, vocab: PlanVocab, first_frame_codes, context_codes):
        self.blocks: list[list[int]] = []
        lines = [f"Scene: {scene}"] + ([] if motion is None else [f"Motion: {motion}"])
        if first_frame_codes is not None:
            lines.append("First frame: " + self._slot(vocab, flat_codes(first_frame_codes)))
        if context_codes is not None:
            lines.append("Earlier keyframes: " + " ".join(self._slot(vocab, r) for r in code_rows(context_codes)))
        self.user = "\n".join(lines)

    def _slot(self, vocab: PlanVocab, codes: list[int]) -> str:
        self.blocks.append(vocab.block(codes, scale_for_length(len(codes))))
        return f"\ue000{len(self.blocks) - 1}\ue001"


def _render(tokenizer, system: str, user: str) -> str:
    """The prompt text up to the assistant's answer: chat template if any, else a plain layout."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role: put it in the user turn
            merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
            return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token or ""
    return f"{bos}System: {system}\nUser: {user}\nAssistant:"


def _encode(tokenizer, text: str, blocks: list[list[int]]) -> list[int]:
    """Tokenize the text between the slots; splice each slot's block ids in directly."""
    ids: list[int] = []
    pieces = _SLOT.split(text)  # text, slot index, text, slot index, ..., text
    for i, piece in enumerate(pieces):
        if i % 2:
            ids += blocks[int(piece)]
        elif piece:
            ids += tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


def prompt_ids(
    tokenizer,
    vocab: PlanVocab,
    scene: str,
    motion: str,
    *,
    num_keyframes: int,
    fps: float,
    keyframe_rate: float,
    grid: tuple[int, int],
    duration: float | None = None,
    first_frame_codes=None,
    context_codes=None,
    motion_line: bool = True,
) -> list[int]:
    """Token ids of the whole prompt, ending where the assistant's plan begins. `motion_line` False leaves the
    Motion line out: a cues-only planner reads the motion only through its keyframe cues (`cue_rows`)."""
    duration = (num_keyframes - 1) / keyframe_rate if duration is None else duration
    parts = _PromptParts(scene, motion if motion_line else None, vocab, first_frame_codes, context_codes)
    system = system_text(num_keyframes, fps, keyframe_rate, duration, grid)
    return _encode(tokenizer, _render(tokenizer, system, parts.user), parts.blocks)


# ----------------------------------------------------------------------------- keyframe cues

_THEN = re.compile(r"(?:\s*[,;]\s*|\s+)(?:and\s+)?then\s+", re.IGNORECASE)


def motion_stages(motion: str) -> list[str]:
    """The motion text's stages in order: its clauses joined by "then" ("..., then ...", "... and then ...")."""
    return [s for s in (part.strip(" \t\n.,;") for part in _THEN.split(motion.strip())) if s]


def keyframe_cues(
    motion: str, num_keyframes: int, keyframe_rate: float, duration: float | None = None, first_motion: bool = False
) -> list[str]:
    """The stage each keyframe is written under: "" for keyframe 0 (the whole motion with `first_motion`, so a
    planner placing a text-to-video start can leave room for the motion), then for keyframe k the stage that holds the
    middle of the step from keyframe k-1 to k, the stages sharing the video's `duration` equally (the convention
    of a motion text with several "then": each stage as long as the others). A planner trained with cues reads
    the stage right before the keyframe it steers, so the order of the stages is decided by this rule, not by
    the planner; an editor or a user who wants other timing writes the plan (or locks keyframes) instead."""
    stages = motion_stages(motion)
    duration = (num_keyframes - 1) / keyframe_rate if duration is None else duration
    if not stages or duration <= 0:
        return [""] * num_keyframes
    cues = [motion.strip(" \t\n.,;") if first_motion else ""]
    for k in range(1, num_keyframes):
        middle = (k - 0.5) / keyframe_rate  # seconds
        cues.append(stages[min(len(stages) - 1, int(middle / duration * len(stages)))])
    return cues


def cue_ids(tokenizer, cue: str, length: int) -> list[int]:
    """One keyframe's cue as fed before its image block: exactly `length` ids, the stage and a full stop at the
    end (cut to its first `length` ids), the tokenizer's pad token before it. A fixed length keeps every
    keyframe at the same distance from the one before, as the planner's copy of unchanged cells wants."""
    ids = tokenizer(f"{cue}.", add_special_tokens=False)["input_ids"][:length] if cue else []
    return [filler_id(tokenizer)] * (length - len(ids)) + ids


def filler_id(tokenizer) -> int:
    """The id that pads a cue or a move row to its fixed length: the pad token, else the end of sequence."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def cue_rows(
    tokenizer, motion: str, num_keyframes: int, rate: float, duration, length: int, first_motion: bool = False
) -> list[list[int]]:
    """Every keyframe's cue ids (`cue_ids` of `keyframe_cues`); none at all when `length` is 0."""
    if not length:
        return []
    cues = keyframe_cues(motion, num_keyframes, rate, duration, first_motion)
    return [cue_ids(tokenizer, c, length) for c in cues]


def plan_ids(
    vocab: PlanVocab, rows, scale: int, cues: list[list[int]], ignore: int, moves: list[tuple[list, list]] = ()
) -> tuple[list[int], list[int]]:
    """A plan as the planner reads it, for training: (ids, labels), labels `ignore` on the cues (given, never
    predicted) and the ids on the image blocks. `rows` the keyframes' codes `[K, cells]`, `cues` from
    `cue_rows` (or []), `moves` each keyframe's move row (ids, labels) after its cue (`MoveRows.truth`, or none)."""
    ids: list[int] = []
    labels: list[int] = []
    for k, row in enumerate(code_rows(rows)):
        cue, block = (cues[k] if cues else []), vocab.block(row, scale)
        move, said = moves[k] if moves else ([], [])
        ids += [*cue, *move, *block]
        labels += [ignore] * len(cue) + said + block
    return ids, labels
