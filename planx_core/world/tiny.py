"""The tiny Plan-X embedded in the synthetic world: configs in one place, and the planner <-> TA-Tok tie.

This project's own sizes for the PlanShapes world (`world`: 64x64, 17 frames at 8 fps, keyframes
at 2 fps = frames 0, 4, 8, 12, 16, a 9x9 token grid), after the paper's structure (Plan-X, arXiv
2511.17986: a Qwen2.5 planner writes TA-Tok keyframe tokens) and Tar's text-aligned codebook
(github csuhan/Tar: codebook = normalize(embedding_proj(embedding.weight)) with `embedding` the
LLM's frozen word embeddings, and the LLM's `<I*>` input rows set to the codebook when the widths
match). Cost grounding: docs/planshapes.md section 4 (a 4-layer, 128-256 wide LM is what trains
on this CPU in one sitting).

The text-aligned codebook, tied to the planner:

* The codebook has one code per word of `world.WORDS`, in order: code k <-> word k ("a", ...,
  "background", ..., "wall", "red", ..., "down"; `ANCHOR_WORDS`).
* TA-Tok's `embedding.weight` [N, D] is a copy of the planner's input-embedding rows of those
  words (D = planner hidden = TA-Tok `bottleneck_dim`). It is frozen; `embedding_proj` (W, b)
  is learned, starting at W = identity, b = 0, so code k starts exactly on word k's direction.
* The planner's `<I k>` input rows are the codebook row k (`tie`). The planner's word rows and
  `<I*>` rows are frozen in every stage, so the tie holds for as long as TA-Tok is not retrained;
  a planner is exported together with the TA-Tok it is tied to.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from ..pipelines.bundle import Bundle, BundleSpec
from ..plan.timing import keyframe_frames, keyframe_latent_frames
from ..planner.model import SemanticPlanner
from ..planner.vocab import PlanVocab, build_word_tokenizer, extend_vocabulary
from ..semantic_branch import BranchConfig, SemanticBranch
from ..tatok.model import TATok, TATokConfig
from ..wan.configs import DiTConfig, get_preset
from ..wan.dit import WanModel
from ..wan.text_encoder import tiny_text_encoder
from ..wan.vae import VAEConfig, WanVAE
from . import scenes as world
from .clips import clip_video

ANCHOR_WORDS: tuple[str, ...] = tuple(world.WORDS)  # code k <-> ANCHOR_WORDS[k]
NUM_CODES = len(ANCHOR_WORDS)  # 29


@dataclass(frozen=True)
class TinyVideo:
    """The world's video and plan layout: 17 frames of 64x64 at 8 fps, 5 keyframes of 9x9 tokens."""

    fps: float = 8.0
    num_frames: int = 17
    size: int = 64
    keyframe_rate: float = 2.0
    grid: int = 9

    @property
    def keyframes(self) -> tuple[int, ...]:
        """Frame indices of the keyframes (`plan.timing`): (0, 4, 8, 12, 16)."""
        return tuple(keyframe_frames(self.num_frames, self.fps, self.keyframe_rate)[1])

    @property
    def keyframe_times(self) -> list[float]:
        """Keyframe times in seconds: 0, 0.5, ..., 2."""
        return keyframe_frames(self.num_frames, self.fps, self.keyframe_rate)[0]

    @property
    def latent_frames(self) -> list[float]:
        """Latent frames of the keyframes (`plan.timing`): 0, 1, ..., 4."""
        return keyframe_latent_frames(self.keyframe_times, self.fps)

    @property
    def duration(self) -> float:
        return (self.num_frames - 1) / self.fps


VIDEO = TinyVideo()


PLANNER_LAYERS = 4  # the shipped planner's depth; `train --stage planner --planner-layers` builds deeper ones


def planner_config(vocab_size: int, tokenizer=None, layers: int = PLANNER_LAYERS) -> Qwen2Config:
    """The tiny Qwen2 planner: hidden 128 (the TA-Tok codebook's width), `layers` layers (4 shipped), 4 heads
    (2 KV heads), MLP 384, 1024 positions."""
    ids = (
        {}
        if tokenizer is None
        else dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    return Qwen2Config(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        **ids,
    )


def tatok_config(bottleneck_dim: int = 128) -> TATokConfig:
    """The tiny TA-Tok: SigLIP, width 64, 2 layers; patch 2 at 54 px -> 27x27 patches, so 9x9 is pool 3.

    The last layer's output is used (`select_layer` -1: a 2-layer encoder has no spare layer) and
    SigLIP's pooling head is left out. `bottleneck_dim` must equal the planner's hidden size.
    """
    return TATokConfig(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=2,
        image_size=54,
        use_head=False,
        select_layer=-1,
        bottleneck_dim=bottleneck_dim,
        codebook_size=NUM_CODES,
        name="ta-tok-planshapes",
    )


# ----------------------------------------------------------------------------- building


def build_planner(seed: int = 0, layers: int = PLANNER_LAYERS) -> tuple[Qwen2ForCausalLM, object, PlanVocab]:
    """A fresh, seeded tiny planner of `layers` decoder layers: (model, word tokenizer with the plan tokens,
    PlanVocab).

    The `<I*>` input rows start at the mean of the word rows; `tie` sets them to a codebook.
    """
    tokenizer = build_word_tokenizer(list(world.WORDS))
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(planner_config(len(tokenizer), tokenizer, layers))
    vocab = extend_vocabulary(model, tokenizer, NUM_CODES)
    return model, tokenizer, vocab


def anchor_ids(tokenizer) -> list[int]:
    """Token ids of the anchor words, in code order."""
    ids = tokenizer.convert_tokens_to_ids(list(ANCHOR_WORDS))
    if tokenizer.unk_token_id in ids:
        raise ValueError("the planner's tokenizer lacks some world words; build it with tiny.build_planner")
    return ids


def anchor_rows(model, tokenizer) -> torch.Tensor:
    """The planner's input-embedding rows of the anchor words: `[N, hidden]` (a detached copy)."""
    return model.get_input_embeddings().weight[anchor_ids(tokenizer)].detach().clone()  # [N, hidden]


def build_tatok(anchors: torch.Tensor, seed: int = 0) -> TATok:
    """A fresh, seeded tiny TA-Tok whose codebook starts on the anchor words: E = anchors, W = I, b = 0."""
    torch.manual_seed(seed)
    tatok = TATok(tatok_config(anchors.shape[1]))
    reg = tatok.bottleneck.regularizer
    with torch.no_grad():
        reg.embedding.weight.copy_(anchors)  # [N, D]
        reg.embedding_proj.weight.copy_(torch.eye(anchors.shape[1]))  # [D, D]
        reg.embedding_proj.bias.zero_()  # [D]
    return tatok


def build_pair(seed: int = 0):
    """A fresh tied pair: (planner model, tokenizer, vocab, TA-Tok)."""
    model, tokenizer, vocab = build_planner(seed)
    tatok = build_tatok(anchor_rows(model, tokenizer), seed)
    tie(model, tokenizer, vocab, tatok)
    return model, tokenizer, vocab, tatok


def tie(model, tokenizer, vocab: PlanVocab, tatok: TATok) -> None:
    """Planner word rows := TA-Tok's anchors; `<I k>` input rows := codebook row k (in place)."""
    weight = model.get_input_embeddings().weight  # [V, hidden]
    anchors = tatok.bottleneck.regularizer.embedding.weight  # [N, D]
    if anchors.shape != (vocab.num_image_tokens, weight.shape[1]):
        raise ValueError(
            f"TA-Tok codebook {list(anchors.shape)} does not fit a planner with "
            f"{vocab.num_image_tokens} image tokens of width {weight.shape[1]}; use the tiny configs"
        )
    with torch.no_grad():
        weight[anchor_ids(tokenizer)] = anchors.to(weight)
        weight[vocab.image_start : vocab.image_end] = tatok.codebook().to(weight)  # [N, hidden]


def frozen_rows(tokenizer, vocab: PlanVocab) -> list[int]:
    """Input-embedding rows that no stage trains: the anchor words and the `<I*>` block."""
    return anchor_ids(tokenizer) + list(range(vocab.image_start, vocab.image_end))


def code_word_check(codebook: torch.Tensor, anchors: torch.Tensor, codes) -> list[dict]:
    """For each code: its word, the cosine-nearest anchor word to its codebook row, and the cosine."""
    rows = torch.nn.functional.normalize(codebook.float(), dim=1)  # [N, D]
    words = torch.nn.functional.normalize(anchors.float(), dim=1)  # [N, D]
    sims = rows @ words.T  # [N, N]
    best = sims.max(dim=1)
    return [
        {
            "code": int(k),
            "word": ANCHOR_WORDS[k],
            "nearest": ANCHOR_WORDS[int(best.indices[k])],
            "cos": round(float(best.values[k]), 4),
        }
        for k in sorted({int(c) for c in codes})
    ]


SHORT_WORLD = world.WorldConfig()  # 17 frames at 8 fps: the training clip length


LONG_WORLD = world.WorldConfig(num_frames=65, speed=0.5, max_stages=4)  # 4x: the long-video mode (4 stages


def random_bundle(
    dit: DiTConfig | str = "planx-tiny",
    *,
    vae: VAEConfig | str = "tiny",
    seed: int = 0,
    spec: BundleSpec | None = None,
    plan_weight_std: float = 0.02,
) -> Bundle:
    """An untrained bundle at the tiny sizes (tests, smoke runs, timing): seeded random weights.

    Planner and TA-Tok are the tied pair of `tiny.build_pair`; the text encoder is a tiny umT5
    over the world's word tokenizer, as wide as the DiT's `text_dim`; the VAE is `vae` (the `tiny`
    preset by default); the branch takes TA-Tok's codes. The branch's zero-initialised value projections get
    N(0, plan_weight_std) weights so that, unlike a fresh branch, the plan changes the video.
    """
    dit_config = get_preset(dit) if isinstance(dit, str) else dit
    model, tokenizer, vocab, tatok = build_pair(seed)
    planner = SemanticPlanner(model, tokenizer, vocab, name="random-planner")
    encoder = tiny_text_encoder(
        build_word_tokenizer(list(world.WORDS)), dim=dit_config.text_dim, text_len=dit_config.text_len, seed=seed
    )
    torch.manual_seed(seed)
    vae_model, dit_model = WanVAE(vae).eval(), WanModel(dit_config).eval()
    branch = SemanticBranch(
        BranchConfig(
            code_dim=tatok.config.bottleneck_dim,
            dim=dit_config.dim,
            num_heads=dit_config.num_heads,
            num_layers=dit_config.num_layers,
        )
    ).eval()
    with torch.no_grad():
        for attn in branch.attn.values():
            attn.v.weight.normal_(0.0, plan_weight_std)  # [dim, dim]
    spec = spec or BundleSpec(
        dit=dit_config,
        name="planx-random",
        planner_name="random-planner",
        notes="untrained random weights (bundle.random_bundle); output is noise",
    )
    return Bundle(
        spec=replace(spec, dit=dit_config),
        planner=planner,
        tatok=tatok.eval(),
        text_encoder=encoder,
        vae=vae_model,
        dit=dit_model,
        branch=branch,
    ).check()


def render_clip_semantics(
    model, clip, *, use_semantics: bool = True, seed: int = 0, window: int | None = None, start=None
):
    """Frames `[T, H, W, 3]` uint8 that a `SemanticGen` renders from a world clip's own (ground-truth)
    semantics, or from its text alone; `start` (`SemanticGen.first_frame`) pins latent frame 0."""
    n = clip.config.num_frames
    plan = model.semantic_plan(model.encode_semantics(clip_video([clip])[0]), num_frames=n) if use_semantics else None
    latent = model.render_latent(
        plan, clip.scene, clip.motion, num_frames=clip.config.num_frames, seed=seed, window=window, start=start
    )
    return model.decode(latent)
