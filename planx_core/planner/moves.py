"""Move rows: the words a planner trained with `train --move-rows` writes before each keyframe's cells.

This project's own (issue 14: the tiny planner's mode was wrong because where an object goes was decided by the
first of 81 raster-order cell draws). A move row makes it one decision per object: before keyframe k's image
block (after its cue), for every code of keyframe 0 other than the background, in code order, the code's token
`<I c>` is given and a word saying which way that code's cells go from keyframe k-1 to k is written ("left",
"right", "up", "down", "still", or "behind" for a code with no cell in one of the two keyframes), for at most
`slots` codes, the tokenizer's pad token before them up to 2 x `slots` ids: every row has one length, so every
keyframe sits as far from the one before as in any other plan (the planner's copy of unchanged cells relies on
that, as with the keyframe cues). The cells that follow are then read under those words. Decoding draws the
words (`planner.decode`); training writes the truth's (`training.planner`). `code_moves` is the one rule of a
move, used by both and by the evaluation.

`config.json` records it as `move_rows`: {"background": <code>, "slots": <n>, "words": [six words, MOVES order]}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompt import filler_id

MOVES = ("left", "right", "up", "down", "still", "gone")  # what `code_moves` can say of a code between keyframes
MOVE_WORDS = ("left", "right", "up", "down", "still", "behind")  # how a move row writes each of MOVES


def code_moves(codes: torch.Tensor, width: int, background: int) -> dict[int, list[str]]:
    """Where each code of keyframe 0 other than `background` goes between consecutive keyframes: the centroid of
    its cells moves 'left' / 'right' / 'up' / 'down' (the larger axis), stays 'still' (under half a cell) or is
    'gone' (no cell in one of the two keyframes). `codes` `[K, rows * width]`, row-major; {code: K-1 moves}."""
    return {
        code: [step_move(codes[k], codes[k + 1], code, width) for k in range(len(codes) - 1)]
        for code in objects(codes[0], background)
    }


def objects(first: torch.Tensor, background: int, slots: int | None = None) -> list[int]:
    """The codes a move row speaks of: those of keyframe 0 `[cells]` other than `background`, in code order (the
    first `slots` of them when given)."""
    return sorted(set(first.tolist()) - {background})[:slots]


def step_move(before: torch.Tensor, after: torch.Tensor, code: int, width: int) -> str:
    """One of MOVES: how `code`'s cells go from keyframe `before` to `after` (each `[rows * width]`, row-major)."""
    cell = torch.arange(before.numel())  # [cells]
    at = torch.stack([before == code, after == code])  # [2, cells]
    count = at.sum(1)  # [2]
    if count.min() == 0:
        return "gone"
    centre = torch.stack([(at * (cell % width)).sum(1), (at * (cell // width)).sum(1)], 1) / count[:, None]  # [2, 2]
    dx, dy = (float(d) for d in centre[1] - centre[0])  # y grows downwards
    if max(abs(dx), abs(dy)) < 0.5:
        return "still"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


SHIFTS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}  # (dx, dy) in cells


def bound_cells(before: torch.Tensor, words: dict[int, str], width: int) -> dict[int, int]:
    """The cells a move row's words fix in the next keyframe: {cell: code}. Each code whose word is in SHIFTS
    takes its cells of `before` `[rows * width]` moved one cell that way (cells pushed off the grid drop); codes
    earlier in `words` keep a cell two of them would take. A move of one cell is what `step_move` reads as that
    word, so the cells written agree with the word."""
    rows = before.numel() // width
    fixed: dict[int, int] = {}
    for code, word in words.items():
        dx, dy = SHIFTS[word]
        for cell in torch.nonzero(before == code).flatten().tolist():
            x, y = cell % width + dx, cell // width + dy
            if 0 <= x < width and 0 <= y < rows:
                fixed.setdefault(y * width + x, code)
    return fixed


@dataclass(frozen=True)
class MoveRows:
    """A planner's move rows: the background code they skip, the codes a row holds at most, the token id of each
    move's word (MOVES order) and the pad id that fills a row."""

    background: int
    slots: int
    word_ids: tuple[int, ...]
    pad_id: int

    @classmethod
    def for_tokenizer(cls, tokenizer, background: int, slots: int = 3, name: str = "planner") -> MoveRows:
        """Rows written with MOVE_WORDS, each a single id of `tokenizer`; ValueError naming a missing word."""
        ids = []
        for word in MOVE_WORDS:
            got = tokenizer(word, add_special_tokens=False)["input_ids"]
            if len(got) != 1 or got[0] == tokenizer.unk_token_id:
                raise ValueError(
                    f"planner {name!r}: its tokenizer writes the move word {word!r} as ids {got}; a move row needs "
                    f"each of {list(MOVE_WORDS)} as one known id (add the word to the vocabulary)"
                )
            ids.append(got[0])
        return cls(int(background), int(slots), tuple(ids), int(filler_id(tokenizer)))

    @classmethod
    def from_config(cls, config, tokenizer, num_codes: int, name: str) -> MoveRows | None:
        """`move_rows` of a planner's config.json (absent or null: none); ValueError saying what it must be."""
        value = getattr(config, "move_rows", None)
        if value is None:
            return None
        words = value.get("words") if isinstance(value, dict) else None
        background, slots = (value.get(k) if isinstance(value, dict) else None for k in ("background", "slots"))
        if words != list(MOVE_WORDS) or not _whole(background, 0, num_codes - 1) or not _whole(slots, 1, num_codes):
            raise ValueError(
                f"planner {name!r}: config.json has move_rows {value!r}; it is written by train --move-rows as "
                f'{{"background": <a code 0..{num_codes - 1}>, "slots": <codes per row, 1..{num_codes}>, '
                f'"words": {list(MOVE_WORDS)}}}; remove it only with weights trained without move rows'
            )
        return cls.for_tokenizer(tokenizer, background, slots, name)

    def to_config(self) -> dict:
        return {"background": self.background, "slots": self.slots, "words": list(MOVE_WORDS)}

    @property
    def length(self) -> int:
        """Ids of every row after keyframe 0's (a code token and a word per slot)."""
        return 2 * self.slots

    def codes(self, first: torch.Tensor) -> list[int]:
        """The codes the rows of a plan whose keyframe 0 is `first` `[cells]` speak of."""
        return objects(first, self.background, self.slots)

    def word_id(self, move: str) -> int:
        return self.word_ids[MOVES.index(move)]

    def is_word(self, ids: torch.Tensor) -> torch.Tensor:
        """Where `ids` (any shape) hold a move word: a bool tensor of the same shape."""
        return torch.isin(ids, torch.tensor(self.word_ids, device=ids.device))

    def truth(self, codes: torch.Tensor, image_start: int, width: int, ignore: int) -> list[tuple[list, list]]:
        """Every keyframe's move row of the plan `codes` `[K, cells]` as (ids, labels): keyframe 0's is empty;
        the code tokens are given (label `ignore`), the words are the labels."""
        rows: list[tuple[list, list]] = [([], [])]
        speak = self.codes(codes[0])
        for k in range(1, len(codes)):
            ids, labels = self.padding(len(speak)), [ignore] * (self.length - 2 * len(speak))
            for code in speak:
                word = self.word_id(step_move(codes[k - 1], codes[k], code, width))
                ids += [image_start + code, word]
                labels += [ignore, word]
            rows.append((ids, labels))
        return rows

    def padding(self, count: int) -> list[int]:
        """The pad ids before a row of `count` codes."""
        return [self.pad_id] * (self.length - 2 * count)


def _whole(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high
