"""The Plan-X semantic planner: a causal LM that writes a keyframe plan of text-aligned tokens.

Sources: Plan-X (arXiv 2511.17986) Fig. 2: a multimodal LLM (Qwen-2.5-Instruct) reads a system
prompt ("Generate T frames ..."), the scene and motion texts and, for image-to-video, the first
frame's semantic tokens, then writes the keyframes' TA-Tok tokens. Tar (github csuhan/Tar) for
the vocabulary (see `planner_vocab`), the chat format and the per-image generation format
`<im_start><S{scale}><I..>...<im_end>`. The prompt wording is this project's own (the paper
shows only a fragment). Any causal LM transformers can load works: Qwen2 is the target,
SmolLM2 (Llama) runs offline in tests.

The prompt (system part, scene, motion, optional first-frame and context codes) is built in
`planner_prompt`; decoding under the plan grammar over a KV cache is in `planner_decode`.
The unconditional prompt of guidance keeps the system part and the image codes and empties the
scene and motion, so guidance amplifies the texts. A planner trained with keyframe cues
(`config.json` `keyframe_cues`: ids per cue) is fed each keyframe's cue before its block, in both
streams (`planner_prompt.keyframe_cues`, the rule training uses); one trained cues-only (`motion_in_prompt`
false) reads the motion through its cues alone, its prompt without the Motion line; one with `first_cue_motion`
true reads the whole motion as keyframe 0's cue.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..plan.core import CodebookId, Plan, PlanError, Provenance, make_plan
from ..plan.timing import keyframe_times
from .decode import (
    Grammar,
    ImageHead,
    PlanningInterrupted,
    Sampling,
    Stream,
    check_candidates,
    decode_best,
    make_head,
)
from .moves import MoveRows
from .prompt import cue_rows, flat_codes, prompt_ids
from .vocab import PlanVocab, build_word_tokenizer, extend_vocabulary, scale_index

__all__ = [
    "PlanVocab",
    "PlanningInterrupted",
    "SemanticPlanner",
    "build_word_tokenizer",
    "extend_vocabulary",
]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# ----------------------------------------------------------------------------- the planner


def _cue_length(config, name: str) -> int:
    """`keyframe_cues` of a planner's config.json: ids per keyframe cue (absent, false or 0: no cues)."""
    value = getattr(config, "keyframe_cues", 0) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"planner {name!r}: config.json has keyframe_cues {value!r}; it is the number of ids of each keyframe's "
            f"cue the planner was trained with (train --keyframe-cues N), an integer >= 0; remove it if unsure"
        )
    return value


def _motion_line(config, name: str, cue_length: int) -> bool:
    """`motion_in_prompt` of a planner's config.json (absent: true); false only for a planner with cues."""
    value = getattr(config, "motion_in_prompt", True)
    if not isinstance(value, bool) or (not value and not cue_length):
        raise ValueError(
            f"planner {name!r}: config.json has motion_in_prompt {value!r} with keyframe_cues {cue_length}; it is "
            f"false only for a planner trained with --cues-only (which needs keyframe_cues > 0), else true or absent"
        )
    return value


def _first_cue_motion(config, name: str, cue_length: int) -> bool:
    """`first_cue_motion` of a planner's config.json (absent: false): keyframe 0's cue is the whole motion."""
    value = getattr(config, "first_cue_motion", False)
    if not isinstance(value, bool) or (value and not cue_length):
        raise ValueError(
            f"planner {name!r}: config.json has first_cue_motion {value!r} with keyframe_cues {cue_length}; it is "
            f"true only for a planner trained with --first-cue-motion (which needs keyframe_cues > 0), else false "
            f"or absent"
        )
    return value


class SemanticPlanner:
    """A causal LM with the plan vocabulary: prompt building, constrained decoding, text alignment."""

    def __init__(
        self, model, tokenizer, vocab: PlanVocab | None = None, name: str = "planner", slice_head: bool = True
    ):
        """`slice_head` False computes the full vocabulary's logits each token (for comparison)."""
        self.cue_length = _cue_length(model.config, name)  # config.json: ids per keyframe cue, 0 = none
        self.motion_line = _motion_line(model.config, name, self.cue_length)  # False: the motion is in the cues
        self.first_motion = _first_cue_motion(model.config, name, self.cue_length)  # keyframe 0 cued by all of it
        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.vocab = vocab or PlanVocab.from_tokenizer(tokenizer)
        self.moves = MoveRows.from_config(model.config, tokenizer, self.vocab.num_image_tokens, name)  # or None
        rows = model.get_input_embeddings().weight.shape[0]
        if rows < self.vocab.image_end:
            raise ValueError(
                f"planner {name!r}: the model has {rows} embedding rows but the plan tokens reach id "
                f"{self.vocab.image_end - 1}; the weights and the tokenizer do not belong together "
                f"(resize with extend_vocabulary before saving)"
            )
        self.head = make_head(model, self.vocab, self.device) if slice_head else ImageHead(model, self.vocab, False)
        self._cache: dict = {}  # kind -> (key, value): derived from the embedding, see _cached

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def num_image_tokens(self) -> int:
        return self.vocab.num_image_tokens

    # -- prompt ------------------------------------------------------------------------
    def build_prompt(
        self,
        scene: str,
        motion: str,
        *,
        num_keyframes: int,
        fps: float,
        keyframe_rate: float,
        grid: tuple[int, int] = (9, 9),
        duration: float | None = None,
        first_frame_codes=None,
        context_codes=None,
    ) -> list[int]:
        """Token ids of the prompt, ending where the assistant's plan begins (see `planner_prompt`)."""
        return prompt_ids(
            self.tokenizer,
            self.vocab,
            scene,
            motion,
            num_keyframes=num_keyframes,
            fps=fps,
            keyframe_rate=keyframe_rate,
            grid=grid,
            duration=duration,
            first_frame_codes=first_frame_codes,
            context_codes=context_codes,
            motion_line=self.motion_line,
        )

    def cues(self, motion: str, num_keyframes: int, keyframe_rate: float, duration: float | None) -> list[list[int]]:
        """Token ids fed before each keyframe (`planner_prompt.keyframe_cues`); none unless trained with them."""
        length, first = self.cue_length, self.first_motion
        return cue_rows(self.tokenizer, motion, num_keyframes, keyframe_rate, duration, length, first)

    # -- decoding ----------------------------------------------------------------------
    @property
    def sliced_head(self) -> bool:
        """True when each token computes only the `<I*>` rows of the output layer."""
        return self.head.sliced

    def _check_locked(self, locked, num_keyframes: int, cells: int) -> dict[int, list[int]]:
        out = {}
        for index, codes in (locked or {}).items():
            if not 0 <= int(index) < num_keyframes:
                raise ValueError(f"locked keyframe {index} is outside the plan's keyframes 0..{num_keyframes - 1}")
            codes = flat_codes(codes)
            if len(codes) != cells:
                raise ValueError(f"locked keyframe {index} has {len(codes)} tokens; the grid needs {cells}")
            self.vocab.image_ids(codes)  # range check
            out[int(index)] = codes
        return out

    def generate(
        self,
        scene: str,
        motion: str,
        *,
        num_keyframes: int,
        fps: float,
        keyframe_rate: float,
        grid: tuple[int, int] = (9, 9),
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        guidance_scale: float = 1.0,
        persistence: float = 0.0,
        first_frame_codes=None,
        context_codes=None,
        locked: dict[int, list[int]] | None = None,
        candidates: int = 1,
        duration: float | None = None,
        progress: Callable[[int, int], None] | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> torch.Tensor:
        """Decode a plan: codes `[K, gh * gw]` (long, CPU), each in 0..N-1.

        `locked` keyframes (index -> codes) are fed as given. With `candidates` n > 1 (and a temperature
        above 0), n plans are drawn one after the other from the seed's generator and the one the planner
        finds likeliest is kept (the sum of its drawn codes' log-probabilities); the first draw is the plan
        of `candidates` 1. `progress(done, total)` runs after every plan token (total = n * K * gh * gw);
        `interrupt()` is checked before every token and raises PlanningInterrupted. The same seed gives the
        same plan.
        """
        if isinstance(num_keyframes, bool) or not isinstance(num_keyframes, int) or num_keyframes < 1:
            raise ValueError(f"num_keyframes must be an integer >= 1, got {num_keyframes!r}")
        if fps <= 0 or keyframe_rate <= 0:
            raise ValueError(f"fps and keyframe_rate must be > 0, got {fps!r} and {keyframe_rate!r}")
        check_candidates(candidates)  # refused at any temperature
        sampling = Sampling(float(temperature), top_k, float(top_p), float(guidance_scale), float(persistence))
        cells = grid[0] * grid[1]
        grammar = Grammar(
            num_keyframes,
            cells,
            self.vocab.scales[scale_index(grid)],
            self._check_locked(locked, num_keyframes, cells),
            self.cues(motion, num_keyframes, keyframe_rate, duration),
            self.moves,
            grid[1],
        )
        common = dict(
            num_keyframes=num_keyframes,
            fps=fps,
            keyframe_rate=keyframe_rate,
            grid=grid,
            duration=duration,
            first_frame_codes=first_frame_codes,
            context_codes=context_codes,
        )
        prompts = [self.build_prompt(scene, motion, **common)]
        if guidance_scale != 1:
            prompts.append(self.build_prompt("", "", **common))
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        draws = candidates if temperature else 1  # greedy plans are all the same
        with torch.inference_mode():
            return decode_best(
                lambda: [Stream(self.head, p, self.device) for p in prompts],
                self.vocab,
                grammar,
                sampling,
                generator,
                draws,
                progress,
                interrupt,
            )

    def plan(
        self,
        scene: str,
        motion: str,
        *,
        fps: float,
        num_frames: int,
        width: int,
        height: int,
        codebook: CodebookId,
        keyframe_rate: float = 2.0,
        grid: tuple[int, int] = (9, 9),
        seed: int = 0,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        guidance_scale: float = 1.0,
        persistence: float = 0.0,
        candidates: int = 1,
        first_frame_codes=None,
        context_codes=None,
        lock_from: Plan | None = None,
        progress: Callable[[int, int], None] | None = None,
        interrupt: Callable[[], bool] | None = None,
    ) -> Plan:
        """A Plan for a video of `num_frames` at `fps`, keyframes every 1/keyframe_rate s (`keyframe_times`).

        Keyframes of `lock_from` marked locked are kept (matched by video frame) and stay locked.
        With `first_frame_codes` (image-to-video) keyframe 0 is those codes, locked, unless
        `lock_from` locks it otherwise.
        """
        if codebook.size != self.num_image_tokens:
            raise PlanError(
                f"codebook {codebook.name} has {codebook.size} codes but planner {self.name!r} writes "
                f"{self.num_image_tokens} image tokens; use the tokenizer this planner was trained with"
            )
        grid = tuple(grid)
        times = keyframe_times(num_frames, fps, keyframe_rate)
        locked = _locks_from(lock_from, times, fps, grid, codebook)
        if first_frame_codes is not None:
            locked.setdefault(0, flat_codes(first_frame_codes))
        tokens = self.generate(
            scene,
            motion,
            num_keyframes=len(times),
            fps=fps,
            keyframe_rate=keyframe_rate,
            grid=grid,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=guidance_scale,
            persistence=persistence,
            candidates=candidates,
            first_frame_codes=first_frame_codes,
            context_codes=context_codes,
            locked=locked,
            duration=(num_frames - 1) / fps,
            progress=progress,
            interrupt=interrupt,
        )  # [K, gh*gw]
        return make_plan(
            tokens,
            times=times,
            fps=fps,
            num_frames=num_frames,
            width=width,
            height=height,
            codebook=codebook,
            grid=grid,
            locked=[i in locked for i in range(len(times))],
            provenance=Provenance(scene=scene, motion=motion, seed=seed, planner=self.name),
        )

    # -- text alignment ----------------------------------------------------------------
    def _embedding(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight  # [V, hidden]

    def _word_vector(self, word: str) -> torch.Tensor:
        """Mean input embedding of a word's known, non-special tokens: `[hidden]` float32."""
        ids = self.tokenizer(word.strip(), add_special_tokens=False)["input_ids"]
        skip = set(self.tokenizer.all_special_ids) | {self.tokenizer.unk_token_id}
        ids = [i for i in ids if i not in skip and not self.vocab.im_start <= i < self.vocab.image_end]
        if not ids:
            raise ValueError(
                f"the planner's tokenizer knows no token of the word {word!r} (only unknown or special "
                f"tokens); choose another word, e.g. one of code_words' candidates"
            )
        return self._embedding()[ids].float().mean(0)  # [hidden]

    def _cached(self, kind: str, variant, build):
        """A value derived from the input embedding, rebuilt when the weights change (in place or swapped)."""
        weight = self._embedding()
        key = (variant, weight._version, weight.data_ptr())
        if self._cache.get(kind, (None,))[0] != key:
            self._cache[kind] = (key, build(weight))
        return self._cache[kind][1]

    def word_to_code(self, word: str) -> int:
        """The `<I*>` code whose input-embedding row is nearest (cosine) to the word's embedding."""
        with torch.inference_mode():
            vector = self._word_vector(word)  # [hidden]
            rows = self._embedding()[self.vocab.image_start : self.vocab.image_end]  # [N, hidden]
            norms = self._cached("image_norms", None, lambda w: rows.float().norm(dim=1).clamp_min(1e-12))  # [N]
            return int(torch.argmax((rows @ vector.to(rows.dtype)).float() / norms))

    def _candidates(self, candidates: list[str] | None) -> tuple[list[str], torch.Tensor]:
        """Candidate words and their unit vectors `[W, hidden]` in the embedding's dtype."""

        def build(weight):
            if candidates:
                words, vectors = list(candidates), torch.stack([self._word_vector(w) for w in candidates])
            else:
                ids, words = _text_tokens(self.tokenizer, self.vocab)
                vectors = weight[ids]  # [W, hidden]
            return words, F.normalize(vectors.float(), dim=1).to(weight.dtype)

        return self._cached("candidates", tuple(candidates) if candidates else None, build)

    def vocabulary_words(self) -> list[str]:
        """The words a code can be named by: the tokenizer's alphabetic, non-special tokens, in its order."""
        return list(self._candidates(None)[0])

    def nearest_words(
        self, code_ids, candidates: list[str] | None = None, top: int = 5
    ) -> list[list[tuple[str, float]]]:
        """For each code, the `top` nearest candidate words with their cosine similarity."""
        codes = torch.as_tensor(flat_codes(code_ids), dtype=torch.long)
        self.vocab.image_ids(codes)  # range check
        with torch.inference_mode():
            words, matrix = self._candidates(candidates)  # [W, hidden]
            rows = F.normalize(self._embedding()[self.vocab.image_start + codes].float(), dim=1)  # [n, hidden]
            scores = (rows.to(matrix.dtype) @ matrix.T).float()  # [n, W]
            best = torch.topk(scores, min(len(words), top * 4), dim=1)  # room for duplicate labels
        out = []
        for values, indices in zip(best.values.tolist(), best.indices.tolist()):
            seen: dict[str, float] = {}
            for value, index in zip(values, indices):
                seen.setdefault(words[index], value)
            out.append(list(seen.items())[:top])
        return out

    def code_words(self, code_ids, candidates: list[str] | None = None, top: int = 1) -> list[str]:
        """The nearest word of each code ("/"-joined when top > 1); candidates default to the
        tokenizer's alphabetic, non-special tokens."""
        return ["/".join(w for w, _ in near) for near in self.nearest_words(code_ids, candidates, top)]


def _text_tokens(tokenizer, vocab: PlanVocab) -> tuple[list[int], list[str]]:
    """Ids and words of the ASCII-alphabetic ordinary tokens (BPE space marks stripped)."""
    special = set(tokenizer.all_special_ids)
    ids, words = [], []
    for token, index in tokenizer.get_vocab().items():
        word = token.lstrip("Ġ▁").lower()
        if (
            len(word) >= 2
            and word.isascii()
            and word.isalpha()
            and index not in special
            and not vocab.im_start <= index < vocab.image_end
        ):
            ids.append(index)
            words.append(word)
    if not ids:
        raise ValueError("the planner's tokenizer has no alphabetic word tokens to name codes with; pass candidates")
    return ids, words


def _locks_from(lock_from, times: list[float], fps: float, grid: tuple[int, int], codebook) -> dict[int, list[int]]:
    """Locked keyframes of an earlier plan, placed on the new keyframe times by video frame."""
    if lock_from is None:
        return {}
    lock_from.check_codebook(codebook)
    frames = {round(t * fps): i for i, t in enumerate(times)}
    locked = {}
    for keyframe in lock_from.keyframes:
        if not keyframe.locked:
            continue
        if tuple(lock_from.grid) != grid:
            raise PlanError(
                f"the locked keyframe at {keyframe.time:g} s has a "
                f"{lock_from.grid[0]}x{lock_from.grid[1]} grid but this plan uses {grid[0]}x{grid[1]}; "
                f"plan with the same grid or unlock it"
            )
        index = frames.get(round(keyframe.time * fps))
        if index is None:
            raise PlanError(
                f"the locked keyframe at {keyframe.time:g} s falls on none of this plan's keyframe "
                f"times ({', '.join(f'{t:g}' for t in times[:5])}{' ...' if len(times) > 5 else ''} s); "
                f"unlock it, move it onto one of them, or change the keyframe rate"
            )
        locked[index] = list(keyframe.tokens)
    return locked


# ----------------------------------------------------------------------------- files
