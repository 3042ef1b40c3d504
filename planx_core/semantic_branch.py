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

import math
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .diffusion.sampling import shift_sigma
from .files.modules import load_module, save_module
from .limits import check_config
from .plan.core import Plan, PlanError
from .plan.timing import keyframe_latent_frames, plan_positions
from .tatok.model import codebook_vectors
from .wan.attention import attention
from .wan.layers import CastLinear, WanRMSNorm
from .wan.rope import Rope, apply_rope, rope_frequencies

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
        check_config(
            "BranchConfig",
            code_dim=("channels", self.code_dim),
            dim=("model_dim", self.dim),
            num_heads=("model_heads", self.num_heads),
            num_layers=("model_layers", self.num_layers),
        )
        if self.dim % self.num_heads or (self.dim // self.num_heads) % 2:
            raise ValueError(f"semantic branch: dim {self.dim} must split into {self.num_heads} heads of even width")
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


def sigma_in_window(sigma: float, start: float, end: float, percent_to_sigma) -> bool:
    """The plan's [start, end] window, for any sampler: `percent_to_sigma(p)` maps a schedule fraction
    (0 = pure noise, 1 = clean) to that sampler's sigma. The whole schedule ([0, 1]) is always on."""
    if start <= 0.0 and end >= 1.0:
        return True
    return float(percent_to_sigma(end)) - 1e-6 <= sigma <= float(percent_to_sigma(start)) + 1e-6


def window_active(sigma: float, start: float, end: float, shift: float) -> bool:
    """Is a step at noise level `sigma` inside the [start, end] fraction of the schedule?

    Fractions are of the unshifted timeline, as ComfyUI's start/end percent: 0 is pure noise.
    """
    return sigma_in_window(sigma, start, end, lambda p: shift_sigma(1.0 - p, shift))


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
        self.proj = nn.Sequential(
            nn.LayerNorm(cfg.code_dim),
            CastLinear(cfg.code_dim, cfg.dim),
            nn.GELU(approximate="tanh"),
            CastLinear(cfg.dim, cfg.dim),
        )
        blocks = cfg.block_ids if cfg.mode == "cross_attn" else ()
        self.attn = nn.ModuleDict({str(i): PlanAttention(cfg.dim, cfg.num_heads, cfg.eps) for i in blocks})

    def embed(self, vectors: torch.Tensor) -> torch.Tensor:
        """Codebook vectors `[B, P, code_dim]` -> plan tokens `[B, P, dim]` (float32)."""
        return self.proj(vectors.float())

    def condition(
        self,
        vectors: torch.Tensor,
        latent_frames: list[float],
        grid_hw: tuple[int, int],
        *,
        strength: float = 1.0,
        use_rope: bool = True,
        start: float = 0.0,
        end: float = 1.0,
    ) -> PlanConditioning:
        """Plan conditioning for `WanModel.forward`: vectors `[B, K * gh * gw, code_dim]` of K keyframes."""
        cells = grid_hw[0] * grid_hw[1]
        if vectors.shape[1] != len(latent_frames) * cells:
            raise ValueError(
                f"plan has {vectors.shape[1]} tokens but {len(latent_frames)} keyframes of "
                f"{grid_hw[0]}x{grid_hw[1]} cells need {len(latent_frames) * cells}"
            )
        return PlanConditioning(
            self, self.embed(vectors), list(latent_frames), tuple(grid_hw), strength, use_rope, start, end
        )

    def condition_plan(
        self, plan: Plan, codebook: torch.Tensor | None = None, *, num_frames: int, fps: float, **options
    ) -> PlanConditioning:
        """A `Plan` for a video of num_frames at fps; options as in `condition` (strength, use_rope, start, end).

        A token plan's ids are looked up in `codebook` `[N, code_dim]` (the tokenizer's); a continuous
        plan's vectors go into the MLP as they are (`codebook` is not used, None is fine). Refuses a
        plan that does not fit the video, indexes another codebook size or has another vector width.
        """
        plan.check_video(num_frames, fps)  # a valid plan (validated where it was made) that must fit this video
        if plan.kind == "continuous":
            vectors = self._continuous_vectors(plan)
        else:
            vectors = self._token_vectors(plan, codebook)
        frames = keyframe_latent_frames(plan.times, fps)
        return self.condition(vectors, frames, plan.grid, **options)

    def _token_vectors(self, plan: Plan, codebook: torch.Tensor | None) -> torch.Tensor:
        """Codebook rows of a token plan's ids, `[1, K * gh * gw, code_dim]`."""
        if codebook is None:
            raise PlanError(
                f"the plan holds token ids of {plan.codebook.describe()}; conditioning on it needs that "
                f"tokenizer's codebook [N, {self.config.code_dim}] to look them up; pass the codebook"
            )
        if plan.codebook.size != codebook.shape[0]:
            raise PlanError(
                f"the plan indexes {plan.codebook.describe()}, but the codebook given has "
                f"{codebook.shape[0]} codes; load the tokenizer the plan was made with"
            )
        ids = plan.token_tensor().reshape(1, -1)  # [1, K * gh * gw]
        return codebook_vectors(ids, codebook)

    def _continuous_vectors(self, plan: Plan) -> torch.Tensor:
        """A continuous plan's vectors, `[1, K * gh * gw, D]`, refusing D != code_dim."""
        width, expected = plan.codebook.size, self.config.code_dim
        if width != expected:
            raise PlanError(
                f"the plan's vectors are {width}-dim ({plan.codebook.describe_space()}), but this semantic "
                f"branch was trained on {expected}-dim inputs: it expects a plan from a compressor whose "
                f"semantic space has size {expected}; re-encode the plan with that compressor, or load "
                f"the branch trained for {plan.codebook.name}"
            )
        device = next(self.parameters()).device
        return plan.vector_tensor().reshape(1, -1, width).to(device)  # [1, K * gh * gw, D]


@dataclass(eq=False)
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
    _bound: dict = field(default_factory=dict, repr=False)  # (latent grid, device) -> BoundPlan

    @property
    def mode(self) -> str:
        return self.branch.config.mode

    def to(self, device) -> PlanConditioning:
        """This conditioning with its tokens on `device` (itself when they are there already)."""
        if self.tokens.device == torch.device(device):
            return self
        return replace(self, tokens=self.tokens.to(device), _bound={})

    def active_at(self, sigma: float, percent_to_sigma) -> bool:
        """Is a step at noise level `sigma` inside the [start, end] fraction of the schedule? `percent_to_sigma`
        maps a fraction (0 = pure noise, as ComfyUI's start/end percents) to the sampler's sigma."""
        return sigma_in_window(sigma, self.start, self.end, percent_to_sigma)

    def active(self, sigma: float, shift: float) -> bool:
        """`active_at` on planx_core's schedule: fractions of the unshifted timeline, then the shift."""
        return window_active(sigma, self.start, self.end, shift)

    def positions(self, token_hw: tuple[int, int]) -> torch.Tensor | None:
        """(t, h, w) of the plan tokens on a latent token grid `[P, 3]` (`plan.timing.plan_positions`). With 3D
        RoPE off (the ablation): in-context tokens sit at position 0 (identity rotation), and a cross-attention
        plan has no positions at all (None: its keys, and the queries that look at them, are not rotated)."""
        if self.use_rope:
            return plan_positions(self.latent_frames, self.grid_hw, token_hw)  # [P, 3]
        if self.mode == "in_context":
            return torch.zeros(self.tokens.shape[1], 3, dtype=torch.float64)  # [P, 3]
        return None

    def bind(self, grid: tuple[int, int, int], dim: int, num_layers: int) -> BoundPlan:
        """The plan placed on a latent token grid (F', H', W') of a DiT of width `dim`: checked and built once
        per grid and device, then reused by every sampler step and guidance pass."""
        key = (tuple(grid), dim, num_layers, str(self.tokens.device))
        if key not in self._bound:
            self._check_fits(grid, dim, num_layers)
            positions = self.positions(grid[1:])
            rope = None
            if positions is not None:
                cfg = self.branch.config
                rope = rope_frequencies(positions.to(self.tokens.device), cfg.dim // cfg.num_heads)  # [P, D/2]
            self._bound = {key: BoundPlan(self, positions, rope)}  # one grid at a time
        return self._bound[key]

    def _check_fits(self, grid: tuple[int, int, int], dim: int, num_layers: int) -> None:
        cfg = self.branch.config
        if cfg.dim != dim or cfg.num_layers != num_layers:
            raise ValueError(
                f"semantic branch was built for a DiT of width {cfg.dim} with {cfg.num_layers} blocks, "
                f"but this DiT has width {dim} and {num_layers} blocks; load the branch file that "
                f"matches the model"
            )
        last = max(self.latent_frames)
        if last > grid[0] - 1 + 1e-6:
            raise ValueError(
                f"the plan's last keyframe falls on latent frame {last:g}, but the video has latent "
                f"frames 0..{grid[0] - 1}: the plan is longer than the video; render more frames or "
                f"delete/retime the late keyframes"
            )


@dataclass
class BoundPlan:
    """A plan placed on one latent grid: the pieces both planx_core's DiT and the ComfyUI patch consume
    (positions, keys and values per block, the strength as a scale or a key bias)."""

    plan: PlanConditioning
    positions: torch.Tensor | None  # [P, 3] (t, h, w) of the plan tokens; None: a cross-attention plan without RoPE
    rope: Rope | None  # planx_core's rotation of `positions`

    @property
    def mode(self) -> str:
        return self.plan.mode

    @property
    def strength(self) -> float:
        return self.plan.strength

    def tokens_for(self, batch: int) -> torch.Tensor:
        tokens = self.plan.tokens
        if tokens.shape[0] not in (1, batch):
            raise ValueError(f"plan batch {tokens.shape[0]} does not match video batch {batch}")
        return tokens.expand(batch, -1, -1)  # [B, P, C]

    def has_attention(self, block: int) -> bool:
        """Does block `block` get a plan attention (a cross_attn branch that covers it)?"""
        return self.mode == "cross_attn" and str(block) in self.plan.branch.attn

    def keys_values(self, block: int, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Block `block`'s plan keys (normalised, not rotated) and values, `[B, P, H, D]` each."""
        module = self.plan.branch.attn[str(block)]
        return module.keys_values(self.tokens_for(batch).to(dtype), None)

    def cross_attention(self, block: int, video_rope: Rope):
        """The plan attention to add inside block `block`'s text cross-attention, or None."""
        if not self.has_attention(block):
            return None

        def attend(q: torch.Tensor) -> torch.Tensor:  # q [B, L, H, D], normalised, not rotated
            k, v = self.keys_values(block, q.shape[0], q.dtype)  # [B, P, H, D]
            if self.rope is not None:
                q, k = apply_rope(q, video_rope), apply_rope(k, self.rope)
            return attention(q, k, v) * self.strength  # [B, L, H, D]

        return attend

    @property
    def key_bias(self) -> float | None:
        """In-context strength as an additive bias on the plan keys: log(strength), None at 1."""
        strength = self.strength
        if strength == 1.0:
            return None
        return math.log(strength) if strength > 0 else float("-inf")

    def append_tokens(self, tokens, rows, layout, rope: Rope, dtype: torch.dtype):
        """In-context mode: video tokens `[B, Lv, C]` + plan tokens at timestep 0 -> `[B, Lv + P, C]`."""
        plan = self.tokens_for(tokens.shape[0])  # [B, P, C]
        count = plan.shape[1]
        tokens = torch.cat([tokens, plan.to(tokens.dtype)], dim=1)
        rows = torch.cat([rows, rows.new_zeros(rows.shape[0], 1)], dim=1)  # [B, S + 1]
        mask = None
        if self.key_bias is not None:
            mask = torch.zeros(1, 1, 1, tokens.shape[1], dtype=dtype, device=tokens.device)
            mask[..., -count:] = self.key_bias
        return tokens, rows, layout.then(1, count), rope.cat(self.rope), mask


BRANCH_CONFIG_KEY = "planx_semantic_branch"  # metadata of a branch file: its BranchConfig as JSON


def branch_config_from(raw: dict) -> BranchConfig:
    """A `BranchConfig` from its JSON form (blocks come back as a list)."""
    return BranchConfig(**{**raw, "blocks": None if raw.get("blocks") is None else tuple(raw["blocks"])})


def save_branch(branch: SemanticBranch, path) -> None:
    """Write the branch weights as safetensors with its BranchConfig in the metadata."""
    save_module(branch.state_dict(), path, key=BRANCH_CONFIG_KEY, config=branch.config.to_dict())


def load_branch(path, dtype: torch.dtype | None = None) -> SemanticBranch:
    """Read a branch file written by `save_branch`, refusing files that are not one, or are incomplete."""
    return load_module(
        path,
        key=BRANCH_CONFIG_KEY,
        build=lambda raw: SemanticBranch(branch_config_from(raw)),
        what="a Plan-X semantic-branch file",
        dtype=dtype,
        fix="choose the branch file that was saved with the model, not a DiT or tokenizer",
    )
