"""The planner's vocabulary: Tar's plan tokens added to a causal LM, and a word-level tokenizer.

Source: Tar (github csuhan/Tar, `llava/model/llava_arch.py::initialize_vision_tokenizer`), as
summarised in docs/method.md section 3.5: `<im_start>`, `<im_end>` (special), then
`<S0>`, `<S1>`, `<S2>` and `<I0>` .. `<I{N-1}>` (non-special), with contiguous ids so that code
k is token `image_start + k`. The `<I*>` rows of the input and output embeddings start at the
mean of the rows that existed before; when a codebook `[N, hidden]` is given, the input rows
of `<I*>` become the codebook (Tar-1.5B: the TA-Tok codebook, hidden 1536).

The word-level tokenizer is this project's own: a small closed vocabulary for the tiny planner
trained on the synthetic world, and for tests.
"""

from __future__ import annotations

import math
import re
import string
import warnings
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AddedToken, PreTrainedTokenizerFast

IM_START, IM_END = "<im_start>", "<im_end>"
SCALE_FORMAT, IMAGE_FORMAT = "<S{}>", "<I{}>"
NUM_SCALES = 3
SCALE_SIDES = (27, 13, 9)  # <S0>, <S1>, <S2>: TA-Tok pooling 1, 2, 3 of the 27x27 grid
WORD_SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
_IMAGE_RE = re.compile(r"<I(\d+)>")
_FIX = "extend_vocabulary(model, tokenizer, num_image_tokens) adds them (then save_planner)"


def scale_index(grid: tuple[int, int]) -> int:
    """Tar scale of a grid: 27x27 -> 0, 13x13 -> 1, 9x9 -> 2.

    Other grids (tiny planners, tests) take the TA-Tok scale whose side is nearest to
    sqrt(gh * gw), so a 3x3 grid is written with `<S2>`.
    """
    gh, gw = grid
    if gh < 1 or gw < 1:
        raise ValueError(f"grid must have positive sides, got {gh}x{gw}")
    side = math.sqrt(gh * gw)
    return min(range(NUM_SCALES), key=lambda i: abs(SCALE_SIDES[i] - side))


def scale_for_length(count: int) -> int:
    """Scale of a square grid given its token count (729, 169, 81, or any other square)."""
    side = math.isqrt(count)
    if count < 1 or side * side != count:
        raise ValueError(
            f"image codes must fill a square grid (81 for 9x9, 169 for 13x13, 729 for 27x27), got {count} codes"
        )
    return scale_index((side, side))


@dataclass(frozen=True)
class PlanVocab:
    """Token ids of the plan grammar in one tokenizer: delimiters, scale tokens, the `<I*>` block."""

    im_start: int
    im_end: int
    scales: tuple[int, int, int]
    image_start: int
    num_image_tokens: int

    @property
    def image_end(self) -> int:
        """One past the id of the last `<I*>` token."""
        return self.image_start + self.num_image_tokens

    def image_ids(self, codes) -> list[int]:
        """Codes (0..N-1) -> token ids, refusing codes outside the codebook."""
        codes = [int(c) for c in (codes.tolist() if isinstance(codes, torch.Tensor) else codes)]
        bad = [c for c in codes if not 0 <= c < self.num_image_tokens]
        if bad:
            raise ValueError(
                f"image code {bad[0]} is outside this planner's codebook 0..{self.num_image_tokens - 1}; "
                f"the codes come from another tokenizer"
            )
        return [self.image_start + c for c in codes]

    def block(self, codes, scale: int) -> list[int]:
        """`<im_start><S{scale}> <I..>... <im_end>` as token ids."""
        return [self.im_start, self.scales[scale], *self.image_ids(codes), self.im_end]

    @classmethod
    def from_tokenizer(cls, tokenizer, num_image_tokens: int | None = None) -> PlanVocab:
        """Find the plan tokens in a tokenizer and check that `<I0>..<I{N-1}>` have contiguous ids."""
        vocab = tokenizer.get_vocab()  # token -> id, added tokens included
        named = [IM_START, IM_END] + [SCALE_FORMAT.format(i) for i in range(NUM_SCALES)] + [IMAGE_FORMAT.format(0)]
        missing = [t for t in named if t not in vocab]
        if missing:
            raise ValueError(
                f"the tokenizer has no {missing[0]} token (missing: {missing[:6]}), so it cannot write a plan; {_FIX}"
            )
        count = sum(1 for t in vocab if _IMAGE_RE.fullmatch(t))
        if num_image_tokens is not None and count != num_image_tokens:
            raise ValueError(
                f"the tokenizer has {count} <I*> tokens but {num_image_tokens} were expected; the planner "
                f"was extended for another codebook size"
            )
        start = vocab[IMAGE_FORMAT.format(0)]
        for k in range(count):
            token_id = vocab.get(IMAGE_FORMAT.format(k))
            if token_id != start + k:
                found = "missing" if token_id is None else f"id {token_id}, expected {start + k}"
                raise ValueError(
                    f"plan token <I{k}> is {found}: <I0>..<I{count - 1}> must have contiguous ids; "
                    f"rebuild the vocabulary with {_FIX}"
                )
        scales = tuple(vocab[SCALE_FORMAT.format(i)] for i in range(NUM_SCALES))
        return cls(vocab[IM_START], vocab[IM_END], scales, start, count)


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A lower-cased word-level tokenizer: specials, punctuation, digits 0-9, then `words` in order.

    Text splits on whitespace, into single punctuation marks and single digits; anything else
    unknown becomes `<unk>`. No chat template: the planner writes its plain prompt for it.
    """
    vocab: dict[str, int] = {}
    for token in [*WORD_SPECIALS, *string.punctuation, *string.digits, *(w.lower() for w in words)]:
        vocab.setdefault(token, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Whitespace(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    core.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )


def _added(content: str, special: bool) -> AddedToken:
    return AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)


def _add_plan_tokens(tokenizer, num_image_tokens: int) -> int:
    """Add the plan tokens in Tar's order in two list calls; return the id of `<im_start>`."""
    first = len(tokenizer)
    tokenizer.add_tokens([_added(IM_START, True), _added(IM_END, True)], special_tokens=True)
    plain = [SCALE_FORMAT.format(i) for i in range(NUM_SCALES)]
    plain += [IMAGE_FORMAT.format(k) for k in range(num_image_tokens)]
    tokenizer.add_tokens([_added(t, False) for t in plain])  # one call: fast even for 65,536 tokens
    expected = list(range(first, first + 2 + len(plain)))
    got = tokenizer.convert_tokens_to_ids([IM_START, IM_END, *plain])
    if got != expected:
        clash = next(t for t, i, e in zip([IM_START, IM_END, *plain], got, expected) if i != e)
        raise ValueError(
            f"the tokenizer already knew {clash!r} as an ordinary token, so the plan tokens did not get "
            f"contiguous ids; start from a tokenizer without plan tokens"
        )
    return first


def _init_image_rows(model, vocab: PlanVocab, known: int, codebook: torch.Tensor | None) -> None:
    """`<I*>` rows of both embeddings = mean of the known rows; input rows = codebook when it fits."""
    rows = slice(vocab.image_start, vocab.image_end)
    with torch.no_grad():
        embeddings = [m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None]
        for weight in {m.weight.data_ptr(): m.weight for m in embeddings}.values():  # tied: one tensor
            weight[rows] = weight[:known].float().mean(0).to(weight.dtype)
        if codebook is None:
            return
        weight = model.get_input_embeddings().weight  # [V, hidden]
        if codebook.shape[1] != weight.shape[1]:
            warnings.warn(
                f"codebook width {codebook.shape[1]} differs from the LM's hidden size {weight.shape[1]}; "
                f"the <I*> rows keep the mean initialisation (as Tar does for Qwen2.5-7B)",
                stacklevel=3,
            )
            return
        weight[rows] = codebook.to(weight.device, weight.dtype)


def extend_vocabulary(model, tokenizer, num_image_tokens: int, codebook: torch.Tensor | None = None) -> PlanVocab:
    """Add `<im_start>`, `<im_end>`, `<S0..2>`, `<I0..N-1>` to tokenizer and model (in place), as Tar does.

    Embeddings grow to cover the new ids (never shrink). `codebook` `[N, D]`: with D equal to
    the hidden size it becomes the input-embedding rows of `<I*>`; otherwise a warning is given
    and the mean initialisation stays. Returns the new PlanVocab.
    """
    if isinstance(num_image_tokens, bool) or not isinstance(num_image_tokens, int) or num_image_tokens < 1:
        raise ValueError(f"num_image_tokens must be a positive integer (65536 for TA-Tok), got {num_image_tokens!r}")
    if IM_START in tokenizer.get_vocab():
        raise ValueError(
            f"the tokenizer already has {IM_START}: its vocabulary was extended before; load it with "
            f"PlanVocab.from_tokenizer instead of extending it again"
        )
    if codebook is not None and (codebook.ndim != 2 or codebook.shape[0] != num_image_tokens):
        raise ValueError(f"codebook must be [num_image_tokens={num_image_tokens}, D], got {list(codebook.shape)}")
    old_rows = model.get_input_embeddings().weight.shape[0]
    first = _add_plan_tokens(tokenizer, num_image_tokens)
    model.resize_token_embeddings(max(old_rows, len(tokenizer)), mean_resizing=False)
    vocab = PlanVocab.from_tokenizer(tokenizer, num_image_tokens)
    _init_image_rows(model, vocab, min(first, old_rows), codebook)
    model.config.image_start_token_id = vocab.image_start  # as Tar's config records it
    model.config.num_image_tokens = num_image_tokens
    return vocab
