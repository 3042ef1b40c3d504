"""Constrained decoding of a keyframe plan over a causal LM's KV cache.

The grammar is Tar's generation format (github csuhan/Tar, `t2i_inference.py`), repeated once
per keyframe: `<im_start> <S{scale}> (gh*gw x <I*>) <im_end>`. Delimiters and locked keyframes
are forced (fed to the model, never sampled; consecutive forced tokens go in one forward);
inside a keyframe only `<I*>` ids can be drawn. Sampling (temperature, top-k, top-p) runs on
the CPU with a seeded `torch.Generator`, so a seed gives the same plan on any device. With a
guidance scale s != 1 a second stream (the unconditional prompt) runs beside the first and the
logits become u + s * (c - u), as in classifier-free guidance for autoregressive image models.
With persistence p > 0, each cell of a keyframe after the first gets p added to the logit of the
code the same cell has in the keyframe before: a prior that what the text does not move stays where
it is (keyframes of a video change in a few cells), applied after guidance and before temperature.
A planner trained with move rows (`planner.moves`) writes, before each keyframe after the first, one
move word per object of keyframe 0 (its code token given, the likeliest of the six move words, or one
drawn with the cells' sampling when `Grammar.greedy_words` is off; pad ids first, so every row has one
length), so the cells that follow are drawn under a decided move; a "still" word binds: that object's
cells are copied from the keyframe before and its code is drawn nowhere else (`Grammar.keep_still`); so does a
move word (`Grammar.bind_moves`, on unless turned off): the cells are those of the keyframe before moved one
cell that way (`moves.bound_cells`), so the cells go where the word says (issue 14: 0.776 / 0.672 held-out
full row without, 0.850 / 0.766 with, `MODEL_CARD.md`).

transformers versions: this module is also the one place of Plan-X's transformers shims
(`new_cache`, `cache_kwargs`, `dtype_kwargs`, `vision_rotary`) for the supported range, 4.50 to
5.x: `DynamicCache(config=)` is newer than 4.50, the cache argument is `past_key_values` before
5.x's `cache`, `from_pretrained` takes `torch_dtype` before 4.56's `dtype`, and the Qwen2.5-VL
vision rotary embedding is built from (dim, theta) before 5.x's config. Each shim asks the
installed signature (or, for `dtype`, the version), never a guess.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
import transformers
from transformers import DynamicCache

from .moves import MOVES, SHIFTS, MoveRows, bound_cells, step_move
from .vocab import PlanVocab

# ----------------------------------------------------------------------------- transformers versions


@lru_cache(maxsize=64)
def _accepts(function, name: str) -> bool:
    """Whether `function` (through decorators that keep `__wrapped__`) has a parameter `name`."""
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def new_cache(config) -> DynamicCache:
    """An empty KV cache for a model with `config` (layer types from the config where transformers can)."""
    return DynamicCache(config=config) if _accepts(DynamicCache.__init__, "config") else DynamicCache()


@lru_cache(maxsize=64)
def _cache_name(cls) -> str:
    """The first forward along the class's MRO that names its cache argument (a subclass may take **kwargs)."""
    for klass in cls.__mro__:
        forward = klass.__dict__.get("forward")
        for name in ("cache", "past_key_values"):
            if forward is not None and _accepts(forward, name):
                return name
    return "past_key_values"


def cache_kwargs(model, cache: DynamicCache) -> dict:
    """The cache keyword of `model.forward`: `cache` in transformers 5.x, `past_key_values` before."""
    return {_cache_name(type(model)): cache, "use_cache": True}


def dtype_kwargs(dtype: torch.dtype) -> dict:
    """`from_pretrained`'s dtype keyword: `dtype` from transformers 4.56, `torch_dtype` before."""
    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def vision_rotary(rotary_cls, config):
    """A Qwen2.5-VL vision rotary embedding: from the config in 5.x, from (head_dim / 2, theta) before."""
    if _accepts(rotary_cls.__init__, "config"):
        return rotary_cls(config)
    theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    return rotary_cls(config.hidden_size // config.num_heads // 2, theta)


class PlanningInterrupted(RuntimeError):
    """Raised by plan decoding when its `interrupt()` callable returns True before a token."""

    def __init__(self, done: int, total: int):
        super().__init__(f"planning was interrupted after {done} of {total} plan tokens")
        self.done = done
        self.total = total


@dataclass(frozen=True)
class Sampling:
    """How each `<I*>` token is drawn: temperature 0 is greedy; top_k 0, top_p 1 and persistence 0 are off."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    guidance_scale: float = 1.0
    persistence: float = 0.0  # logit bonus for a cell keeping its code of the keyframe before

    def __post_init__(self):
        checks = [
            (_finite(self.temperature) and self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (
                isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and self.top_k >= 0,
                "top_k must be an integer >= 0 (0 = off)",
            ),
            (_finite(self.top_p) and 0 < self.top_p <= 1, "top_p must be in (0, 1] (1 = off)"),
            (
                _finite(self.guidance_scale) and self.guidance_scale >= 0,
                "guidance_scale must be >= 0 (1 = no guidance)",
            ),
            (_finite(self.persistence) and self.persistence >= 0, "persistence must be >= 0 (0 = off)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(
                    f"{message}; got temperature={self.temperature!r}, top_k={self.top_k!r}, "
                    f"top_p={self.top_p!r}, guidance_scale={self.guidance_scale!r}, persistence={self.persistence!r}"
                )


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def choose(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> int:
    """Draw one index from float32 CPU logits `[N]`: temperature, then top-k, then top-p (nucleus)."""
    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature  # [N]
    index = None  # positions of the kept logits in the full vector; None = all, unsorted
    if 0 < sampling.top_k < logits.numel():
        logits, index = torch.topk(logits, sampling.top_k)  # [k] sorted descending, [k]
    if sampling.top_p < 1:
        logits, index = _nucleus(logits, index, sampling.top_p)  # [n], [n]
    pick = _draw(torch.softmax(logits, dim=0), generator)
    return pick if index is None else int(index[pick])


def _nucleus(logits: torch.Tensor, index: torch.Tensor | None, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The best tokens whose better neighbours hold less than `top_p` of the mass.

    Unsorted input: instead of sorting the whole vocabulary (12 ms for 65,536 entries on a CPU
    core), take a growing top-k until it holds `top_p` of the mass; the nucleus lies inside it.
    """
    probs = torch.softmax(logits, dim=0)  # [M]
    if index is None:
        k = min(1024, probs.numel())
        while True:
            top, order = torch.topk(probs, k)  # [k] sorted descending
            if k == probs.numel() or float(top.sum()) >= top_p:
                break
            k = min(8 * k, probs.numel())
        probs, logits, index = top, logits[order], order
    keep = int(((torch.cumsum(probs, dim=0) - probs) < top_p).sum())  # a prefix; the best token always stays
    return logits[: max(keep, 1)], index[: max(keep, 1)]


def _draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Inverse-CDF draw from probabilities `[M]` (torch.multinomial takes 4 ms for 65,536 entries)."""
    cdf = torch.cumsum(probs.double(), dim=0)  # [M]
    u = (1.0 - torch.rand(1, generator=generator, dtype=torch.float64)) * cdf[-1]  # in (0, total]
    return min(int(torch.searchsorted(cdf, u)), probs.numel() - 1)


class ImageHead:
    """Image-token logits from the last hidden state: only the `<I*>` rows of a plain Linear head
    (`sliced`), or the slice of the model's full logits when the head is anything else
    (softcapping, scaling). The head weight is looked up on every call, so moving the model to
    another device after construction is fine."""

    def __init__(self, model, vocab: PlanVocab, sliced: bool):
        self.model, self.vocab, self.sliced = model, vocab, sliced

    def forward(self, ids: torch.Tensor, cache: DynamicCache, words: tuple[int, ...] = ()) -> torch.Tensor:
        """Feed ids `[1, T]` through the model with `cache`; float32 CPU logits `[N]` after the last one (of the
        `<I*>` tokens, or of the token ids `words` when given)."""
        rows = slice(self.vocab.image_start, self.vocab.image_end)
        if words:
            rows = torch.tensor(words, dtype=torch.long, device=ids.device)  # [W]
        if not self.sliced:
            out = self.model(input_ids=ids, logits_to_keep=1, **cache_kwargs(self.model, cache))
            return out.logits[0, -1, rows].float().cpu()  # [N]
        base = self.model.base_model
        hidden = base(input_ids=ids, **cache_kwargs(base, cache)).last_hidden_state  # [1, T, hidden]
        head = self.model.get_output_embeddings()
        bias = None if head.bias is None else head.bias[rows]
        return F.linear(hidden[0, -1], head.weight[rows], bias).float().cpu()  # [N]


@torch.inference_mode()
def make_head(model, vocab: PlanVocab, device: torch.device) -> ImageHead:
    """The sliced head when the output layer is a plain Linear that reproduces the model's own
    logits on a probe; the full-logits head otherwise."""
    head = model.get_output_embeddings()
    full = ImageHead(model, vocab, sliced=False)
    if not isinstance(head, torch.nn.Linear) or model.base_model is model:
        return full
    fast = ImageHead(model, vocab, sliced=True)
    probe = torch.tensor([[vocab.im_start, vocab.scales[-1], vocab.image_start]], device=device)  # [1, 3]
    want = full.forward(probe, new_cache(model.config))  # [N]
    got = fast.forward(probe, new_cache(model.config))  # [N]
    tol = 1e-4 if head.weight.dtype == torch.float32 else 3e-2
    return fast if torch.allclose(want, got, rtol=tol, atol=tol * (1 + float(want.abs().max()))) else full


class Stream:
    """One prompt's KV cache; the prompt goes in with the first tokens fed."""

    def __init__(self, head: ImageHead, prompt: list[int], device: torch.device):
        self.head, self.prompt, self.device = head, list(prompt), device
        self.cache = new_cache(head.model.config)

    def feed(self, ids: list[int], words: tuple[int, ...] = ()) -> torch.Tensor:
        """Append ids; return the image logits `[N]` that follow them (or those of the token ids `words`)."""
        ids, self.prompt = self.prompt + list(ids), []
        return self.head.forward(torch.tensor([ids], dtype=torch.long, device=self.device), self.cache, words)


@dataclass
class Grammar:
    """K keyframes of `cells` codes, written with one scale token; locked keyframes are given; `cues[k]` (token
    ids, `planner_prompt.cue_ids`) are fed before keyframe k's image block (none when empty), then, with `moves`,
    keyframe k's move row (`planner.moves`; `width` cells a grid row)."""

    num_keyframes: int
    cells: int
    scale_id: int
    locked: dict[int, list[int]]
    cues: list[list[int]] = field(default_factory=list)
    moves: MoveRows | None = None
    width: int = 9
    keep_still: bool = True
    greedy_words: bool = True
    bind_moves: bool = True

    def cue(self, k: int) -> list[int]:
        return self.cues[k] if k < len(self.cues) else []

    @property
    def total(self) -> int:
        return self.num_keyframes * self.cells


def decode(
    streams: list[Stream],
    vocab: PlanVocab,
    grammar: Grammar,
    sampling: Sampling,
    generator: torch.Generator,
    progress: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], bool] | None = None,
    scored: bool = False,
) -> tuple[torch.Tensor, float]:
    """Run the grammar over one stream (or two: conditional, unconditional): codes `[K, cells]` and, when `scored`,
    the plan's log-probability (the drawn codes' log-softmax of the logits they were drawn from, before
    temperature; given keyframes count 0), else nan: one draw needs no score, and the hot loop skips it."""
    pending = list(grammar.cue(0))  # forced tokens not yet fed
    plan = torch.empty(grammar.num_keyframes, grammar.cells, dtype=torch.long)  # [K, cells]
    done, score = 0, 0.0 if scored else math.nan
    for k in range(grammar.num_keyframes):
        lock, banned, fixed = grammar.locked.get(k), [], {}
        if k > 0 and grammar.moves is not None:
            pending, words, bound = _move_row(streams, vocab, grammar, plan, k, pending, sampling, generator)
            fixed = bound_cells(plan[k - 1], bound, grammar.width)  # {cell: code} the bound words place
            banned = list(bound)  # the bound codes, drawn in no other cell of keyframe k
            score += words
        pending += [vocab.im_start, grammar.scale_id]
        for c in range(grammar.cells):
            if interrupt is not None and interrupt():
                raise PlanningInterrupted(done, grammar.total)
            if lock is not None or c in fixed:
                code = lock[c] if lock is not None else fixed[c]
                pending.append(vocab.image_start + code)
            else:
                logits = _guided(streams, pending, sampling.guidance_scale)  # [N]
                if (k > 0 and sampling.persistence) or banned:
                    logits = logits.clone()  # [N]; the model's own output stays as it was
                    logits[plan[k - 1, c]] += sampling.persistence
                    logits[banned] = -math.inf  # a bound object appears nowhere else
                code = choose(logits, sampling, generator)
                if scored:
                    score += float(torch.log_softmax(logits, dim=0)[code])
                pending = [vocab.image_start + code]
            plan[k, c] = code
            done += 1
            if progress is not None:
                progress(done, grammar.total)
        pending += [vocab.im_end, *grammar.cue(k + 1)]
    return plan, score


def _move_row(
    streams, vocab, grammar, plan, k: int, pending: list[int], sampling, generator
) -> tuple[list, float, dict[int, str]]:
    """Keyframe k's move row: each object's code token is given and its move word drawn (the likeliest with
    `grammar.greedy_words`, else by `sampling` without persistence), or, for a locked keyframe, written as its
    given cells move. Returns the ids still to feed, the drawn words' log-probability and the drawn words that
    bind their code's cells, {code: move}: "still" with `grammar.keep_still`, a move with `grammar.bind_moves`."""
    rows, score, bound = grammar.moves, 0.0, {}
    lock = grammar.locked.get(k)
    given = None if lock is None else torch.tensor(lock)  # [cells]: a locked keyframe's words come from its cells
    speak = rows.codes(plan[0])
    pending = [*pending, *rows.padding(len(speak))]
    for code in speak:
        pending = [*pending, vocab.image_start + code]
        if given is not None:
            pending.append(rows.word_id(step_move(plan[k - 1], given, code, grammar.width)))
            continue
        logits = _guided(streams, pending, sampling.guidance_scale, rows.word_ids)  # [len(MOVES)]
        pick = int(torch.argmax(logits)) if grammar.greedy_words else choose(logits, sampling, generator)
        score += float(torch.log_softmax(logits, dim=0)[pick])
        pending = [rows.word_ids[pick]]
        move = MOVES[pick]
        if grammar.keep_still if move == "still" else grammar.bind_moves and move in SHIFTS:  # not "gone"
            bound[code] = move
    return pending, score, bound


MAX_CANDIDATES = 64  # plans drawn per request at most (each costs one decode)


def check_candidates(candidates) -> int:
    """The number of plans to draw, refused unless a whole number from 1 to MAX_CANDIDATES."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= MAX_CANDIDATES:
        raise ValueError(
            f"planning candidates must be a whole number from 1 to {MAX_CANDIDATES} (1 = one draw), got {candidates!r}"
        )
    return candidates


def decode_best(
    new_streams: Callable[[], list[Stream]],
    vocab: PlanVocab,
    grammar: Grammar,
    sampling: Sampling,
    generator: torch.Generator,
    draws: int,
    progress: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """The likeliest of `draws` plans `[K, cells]`, drawn one after the other from `generator` over fresh streams
    (`new_streams()`); the first is `decode`'s own plan. Progress and interruption count over every draw's tokens."""
    best, best_score, total = None, -math.inf, draws * grammar.total
    for n in range(draws):
        offset = n * grammar.total
        counted = None if progress is None else (lambda done, _, at=offset: progress(at + done, total))
        try:
            plan, score = decode(new_streams(), vocab, grammar, sampling, generator, counted, interrupt, draws > 1)
        except PlanningInterrupted as stop:
            raise PlanningInterrupted(offset + stop.done, total) from None
        if best is None or score > best_score:
            best, best_score = plan, score
    return best


def _guided(streams: list[Stream], pending: list[int], scale: float, words: tuple[int, ...] = ()) -> torch.Tensor:
    cond = streams[0].feed(pending, words)  # [N]
    if len(streams) == 1:
        return cond
    uncond = streams[1].feed(pending, words)  # [N]
    return uncond + scale * (cond - uncond)  # [N]
