"""The Plan-X semantic branch: plan tokens -> codebook vectors -> MLP -> DiT width, with 3D RoPE.

Continuous plans (SemanticGen's compact semantic vectors, `planx_core.plan_continuous`) skip the
codebook: their D-dim vectors go into the MLP directly, so D must be the branch's `code_dim`.

Sources: Plan-X (arXiv 2511.17986), Fig. 2: semantic tokens with (t, h, w) indices go through a
trained MLP into a "spatio-temporal context" beside the frozen text context, with 3D RoPE.
SemanticGen (arXiv 2512.20619): in-context conditioning, [z_t, z_sem] in one self-attention.

Decisions where the papers are silent (see README, "Design notes"):
- `cross_attn`: a decoupled attention inside each chosen block's text cross-attention. It reuses
  that layer's queries and output projection, has its own key/value projections and key norm,
  and its value projection starts at zero, so an untrained branch changes nothing. Sharing the
  queries keeps the cost at the plan's token count (891 vs 27,280 video tokens), not a new
  full-width projection of every video token.
- `in_context`: plan tokens are appended to the self-attention sequence as clean tokens
  (timestep 0); `strength` becomes an additive log(strength) bias on the plan keys.
- Alignment rule: keyframe at `tau` s -> latent frame round(tau * fps) / 4; cell (i, j) of a
  gh x gw grid -> ((i + .5) * H_tok / gh - .5, (j + .5) * W_tok / gw - .5) on the token grid.
- RoPE off (the ablation): plan keys, and in `cross_attn` the queries that look at them, are
  not rotated at all, so the plan carries no positional signal (no flat 1D index either).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .attention import attention
from .checkpoint import CheckpointError, check_safetensors_header, read_safetensors, save_safetensors
from .layers import CastLinear, WanRMSNorm
from .plan import Plan, PlanError
from .rope import Rope, apply_rope, rope_frequencies
from .sampling import shift_sigma

MODES = ("cross_attn", "in_context")


@dataclass(frozen=True)
class BranchConfig:
    code_dim: int = 1536
    dim: int = 3072
    num_heads: int = 24
    num_layers: int = 30
    mode: str = "cross_attn"
    blocks: tuple[int, ...] | None = None  # DiT blocks that get a plan attention; None = all
    eps: float = 1e-6

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"semantic branch mode {self.mode!r} is not one of {MODES}")
        bad = [b for b in (self.blocks or ()) if not 0 <= b < self.num_layers]
        if bad:
            raise ValueError(f"semantic branch blocks {bad} are outside the DiT's 0..{self.num_layers - 1}")

    @property
    def block_ids(self) -> tuple[int, ...]:
        return tuple(range(self.num_layers)) if self.blocks is None else tuple(self.blocks)

    def to_dict(self) -> dict:
        return asdict(self)


def keyframe_latent_frame(time_s: float, fps: float, temporal_factor: int = 4) -> float:
    """Latent frame of a keyframe at `time_s` seconds: video frame round(time_s * fps), divided by the VAE's factor."""
    return round(time_s * fps) / temporal_factor


def cell_centres(grid_hw: tuple[int, int], token_hw: tuple[int, int]) -> torch.Tensor:
    """Centre of each plan cell on the latent token grid, `[gh * gw, 2]` (h, w), row-major."""
    (gh, gw), (th, tw) = grid_hw, token_hw
    h = (torch.arange(gh, dtype=torch.float64) + 0.5) * th / gh - 0.5
    w = (torch.arange(gw, dtype=torch.float64) + 0.5) * tw / gw - 0.5
    return torch.stack(torch.meshgrid(h, w, indexing="ij"), dim=-1).reshape(-1, 2)


def plan_positions(latent_frames: list[float], grid_hw: tuple[int, int], token_hw: tuple[int, int]) -> torch.Tensor:
    """(t, h, w) of every plan token, keyframe-major then row-major: `[K * gh * gw, 3]`."""
    cells = cell_centres(grid_hw, token_hw)  # [gh*gw, 2]
    t = torch.tensor(latent_frames, dtype=torch.float64).repeat_interleave(len(cells))[:, None]
    return torch.cat([t, cells.repeat(len(latent_frames), 1)], dim=1)  # [K*gh*gw, 3]


def window_active(sigma: float, start: float, end: float, shift: float) -> bool:
    """Is a step at noise level `sigma` inside the [start, end] fraction of the schedule?

    Fractions are of the unshifted timeline, as ComfyUI's start/end percent: 0 is pure noise.
    """
    return shift_sigma(1.0 - end, shift) - 1e-9 <= sigma <= shift_sigma(1.0 - start, shift) + 1e-9


class PlanAttention(nn.Module):
    """Keys and values for one block's plan attention; the value projection starts at zero."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.k, self.v = CastLinear(dim, dim), CastLinear(dim, dim)
        self.norm_k = WanRMSNorm(dim, eps)
        nn.init.zeros_(self.v.weight)
        nn.init.zeros_(self.v.bias)

    def keys_values(self, tokens: torch.Tensor, rope: Rope | None) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.norm_k(self.k(tokens)).unflatten(-1, (self.num_heads, -1))  # [B, P, H, D]
        v = self.v(tokens).unflatten(-1, (self.num_heads, -1))  # [B, P, H, D]
        return (k if rope is None else apply_rope(k, rope)), v


class SemanticBranch(nn.Module):
    """MLP from codebook vectors to DiT width, plus per-block plan attentions in `cross_attn` mode."""

    def __init__(self, config: BranchConfig):
        super().__init__()
        self.config = cfg = config
        self.proj = nn.Sequential(nn.LayerNorm(cfg.code_dim), CastLinear(cfg.code_dim, cfg.dim),
                                  nn.GELU(approximate="tanh"), CastLinear(cfg.dim, cfg.dim))
        blocks = cfg.block_ids if cfg.mode == "cross_attn" else ()
        self.attn = nn.ModuleDict({str(i): PlanAttention(cfg.dim, cfg.num_heads, cfg.eps) for i in blocks})

    def embed(self, vectors: torch.Tensor) -> torch.Tensor:
        """Codebook vectors `[B, P, code_dim]` -> plan tokens `[B, P, dim]` (float32)."""
        return self.proj(vectors.float())

    def condition(self, vectors: torch.Tensor, latent_frames: list[float], grid_hw: tuple[int, int], *,
                  strength: float = 1.0, use_rope: bool = True, start: float = 0.0, end: float = 1.0
                  ) -> "PlanConditioning":
        """Plan conditioning for `WanModel.forward`: vectors `[B, K * gh * gw, code_dim]` of K keyframes."""
        cells = grid_hw[0] * grid_hw[1]
        if vectors.shape[1] != len(latent_frames) * cells:
            raise ValueError(f"plan has {vectors.shape[1]} tokens but {len(latent_frames)} keyframes of "
                             f"{grid_hw[0]}x{grid_hw[1]} cells need {len(latent_frames) * cells}")
        return PlanConditioning(self, self.embed(vectors), list(latent_frames), tuple(grid_hw), strength,
                                use_rope, start, end)

    def condition_plan(self, plan: Plan, codebook: torch.Tensor | None = None, *, num_frames: int, fps: float,
                       **options) -> "PlanConditioning":
        """A `Plan` for a video of num_frames at fps; options as in `condition` (strength, use_rope, start, end).

        A token plan's ids are looked up in `codebook` `[N, code_dim]` (the tokenizer's); a continuous
        plan's vectors go into the MLP as they are (`codebook` is not used, None is fine). Refuses a
        plan that does not fit the video, indexes another codebook size or has another vector width.
        """
        plan.validate()
        plan.check_video(num_frames, fps)
        if plan.kind == "continuous":
            vectors = self._continuous_vectors(plan)
        else:
            vectors = self._token_vectors(plan, codebook)
        frames = [keyframe_latent_frame(t, fps) for t in plan.times]
        return self.condition(vectors, frames, plan.grid, **options)

    def _token_vectors(self, plan: Plan, codebook: torch.Tensor | None) -> torch.Tensor:
        """Codebook rows of a token plan's ids, `[1, K * gh * gw, code_dim]`."""
        if codebook is None:
            raise PlanError(f"the plan holds token ids of {plan.codebook.describe()}; conditioning on it needs that "
                            f"tokenizer's codebook [N, {self.config.code_dim}] to look them up; pass the codebook")
        if plan.codebook.size != codebook.shape[0]:
            raise PlanError(f"the plan indexes {plan.codebook.describe()}, but the codebook given has "
                            f"{codebook.shape[0]} codes; load the tokenizer the plan was made with")
        ids = plan.token_tensor().reshape(1, -1)  # [1, K * gh * gw]
        return codebook_vectors(ids, codebook)

    def _continuous_vectors(self, plan: Plan) -> torch.Tensor:
        """A continuous plan's vectors, `[1, K * gh * gw, D]`, refusing D != code_dim."""
        width, expected = plan.codebook.size, self.config.code_dim
        if width != expected:
            raise PlanError(f"the plan's vectors are {width}-dim ({plan.codebook.describe_space()}), but this semantic "
                            f"branch was trained on {expected}-dim inputs: it expects a plan from a compressor whose "
                            f"semantic space has size {expected}; re-encode the plan with that compressor, or load "
                            f"the branch trained for {plan.codebook.name}")
        device = next(self.parameters()).device
        return plan.vector_tensor().reshape(1, -1, width).to(device)  # [1, K * gh * gw, D]


def codebook_vectors(token_ids: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Plan token ids `[B, P]` -> frozen codebook rows `[B, P, code_dim]`, refusing out-of-range ids."""
    bad = (token_ids < 0) | (token_ids >= codebook.shape[0])
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"plan token {int(token_ids[first])} at {first} is outside the codebook's "
                         f"0..{codebook.shape[0] - 1}; the plan was made with another tokenizer")
    return codebook[token_ids]


@dataclass
class PlanConditioning:
    """A plan ready for the DiT: embedded tokens, keyframe latent frames, grid, strength and window."""

    branch: SemanticBranch
    tokens: torch.Tensor  # [1 or B, K * gh * gw, dim]
    latent_frames: list[float]
    grid_hw: tuple[int, int]
    strength: float = 1.0
    use_rope: bool = True
    start: float = 0.0
    end: float = 1.0

    @property
    def mode(self) -> str:
        return self.branch.config.mode

    def active(self, sigma: float, shift: float) -> bool:
        return window_active(sigma, self.start, self.end, shift)

    def bind(self, grid: tuple[int, int, int], dim: int, num_layers: int) -> "BoundPlan":
        """Check the plan fits a DiT of width `dim` and a latent token grid (F', H', W'); place its tokens."""
        cfg = self.branch.config
        if cfg.dim != dim or cfg.num_layers != num_layers:
            raise ValueError(f"semantic branch was built for a DiT of width {cfg.dim} with {cfg.num_layers} blocks, "
                             f"but this DiT has width {dim} and {num_layers} blocks; load the branch file that "
                             f"matches the model")
        last = max(self.latent_frames)
        if last > grid[0] - 1 + 1e-6:
            raise ValueError(f"the plan's last keyframe falls on latent frame {last:g}, but the video has latent "
                             f"frames 0..{grid[0] - 1}: the plan is longer than the video; render more frames or "
                             f"delete/retime the late keyframes")
        rope = None
        if self.use_rope:
            positions = plan_positions(self.latent_frames, self.grid_hw, grid[1:]).to(self.tokens.device)
            rope = rope_frequencies(positions, cfg.dim // cfg.num_heads)  # [P, D/2]
        return BoundPlan(self, rope)


@dataclass
class BoundPlan:
    """A plan placed on one latent grid, for the duration of one forward pass."""

    plan: PlanConditioning
    rope: Rope | None  # positions of the plan tokens; None when 3D RoPE is off

    @property
    def mode(self) -> str:
        return self.plan.mode

    def tokens_for(self, batch: int) -> torch.Tensor:
        tokens = self.plan.tokens
        if tokens.shape[0] not in (1, batch):
            raise ValueError(f"plan batch {tokens.shape[0]} does not match video batch {batch}")
        return tokens.expand(batch, -1, -1)  # [B, P, C]

    def cross_attention(self, block: int, video_rope: Rope):
        """The plan attention to add inside block `block`'s text cross-attention, or None."""
        module = self.plan.branch.attn[str(block)] if str(block) in self.plan.branch.attn else None
        if module is None or self.mode != "cross_attn":
            return None

        def attend(q: torch.Tensor) -> torch.Tensor:  # q [B, L, H, D], normalised, not rotated
            k, v = module.keys_values(self.tokens_for(q.shape[0]).to(q.dtype), self.rope)  # [B, P, H, D]
            q = q if self.rope is None else apply_rope(q, video_rope)
            return attention(q, k, v) * self.plan.strength  # [B, L, H, D]
        return attend

    @property
    def key_bias(self) -> float | None:
        """In-context strength as an additive bias on the plan keys: log(strength), None at 1."""
        strength = self.plan.strength
        if strength == 1.0:
            return None
        return math.log(strength) if strength > 0 else float("-inf")

    def append_tokens(self, tokens, rows, layout, rope: Rope, dtype: torch.dtype):
        """In-context mode: video tokens `[B, Lv, C]` + plan tokens at timestep 0 -> `[B, Lv + P, C]`."""
        plan = self.tokens_for(tokens.shape[0])  # [B, P, C]
        count = plan.shape[1]
        plan_rope = self.rope or Rope.identity(count, rope.cos.shape[-1], tokens.device)
        tokens = torch.cat([tokens, plan.to(tokens.dtype)], dim=1)
        rows = torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], dim=1)  # [B, S + 1]
        mask = None
        if self.key_bias is not None:
            mask = torch.zeros(1, 1, 1, tokens.shape[1], dtype=dtype, device=tokens.device)
            mask[..., -count:] = self.key_bias
        return tokens, rows, layout.then(1, count), rope.cat(plan_rope), mask


_CONFIG_KEY = "planx_semantic_branch"


def save_branch(branch: SemanticBranch, path) -> None:
    """Write the branch weights as safetensors with its BranchConfig in the metadata."""
    save_safetensors(branch.state_dict(), path, metadata={_CONFIG_KEY: json.dumps(branch.config.to_dict())})


def load_branch(path, dtype: torch.dtype | None = None) -> SemanticBranch:
    """Read a branch file written by `save_branch`, refusing files that are not one, or are incomplete."""
    meta = check_safetensors_header(path).get("__metadata__") or {}
    if _CONFIG_KEY not in meta:
        raise CheckpointError(f"{path}: not a Plan-X semantic-branch file (no '{_CONFIG_KEY}' metadata); "
                              f"choose the branch file that was saved with the model, not a DiT or tokenizer")
    raw = json.loads(meta[_CONFIG_KEY])
    branch = SemanticBranch(BranchConfig(**{**raw, "blocks": None if raw.get("blocks") is None else tuple(raw["blocks"])}))
    state = read_safetensors(path, dtype=dtype)
    missing, unexpected = branch.state_dict().keys() - state.keys(), state.keys() - branch.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(f"{path}: semantic-branch weights do not fit its own config; missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}; the file is damaged, "
                              f"re-export it")
    branch.load_state_dict(state)
    return branch.eval()
