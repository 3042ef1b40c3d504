"""The Wan 2.1 / 2.2 diffusion transformer (`WanModel`), with per-token timesteps and plan hooks.

Source: Wan-Video/Wan2.2 `wan/modules/model.py` (architecture, parameter names, modulation,
unpatchify order) and ComfyUI `comfy/ldm/wan/model.py` (timesteps per latent frame, broadcast
over that frame's tokens instead of a per-token copy). `state_dict()` keys are those of the
official checkpoints, so `checkpoint.load_dit` loads them without renaming.

Plan-X additions, both driven by a `semantic_branch.PlanConditioning` passed to `forward`:
`cross_attn` adds a plan attention inside each chosen block's text cross-attention; `in_context`
appends clean (timestep 0) plan tokens to the self-attention sequence. `forward(..., window=Tw)`
swaps full self-attention for shifted-window attention along time (`window_attention.py`).
A context `[B, F', Lt, text_dim]` (one text per latent frame) makes each frame's tokens cross-attend to
their own frame's text only (this project's addition, for SemanticGen's stage 1 with keyframe cues).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from .attention import attention
from .configs import DiTConfig
from .layers import CastConv3d, CastLinear, WanLayerNorm, WanRMSNorm
from .rope import Rope, apply_rope, grid_positions, rope_frequencies
from .windows import WindowSpec, windowed_attention


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: `[N]` -> `[N, dim]`, cosines then sines, computed in float64."""
    half = dim // 2
    position = position.to(torch.float64)
    sinusoid = torch.outer(
        position, torch.pow(10000, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    )
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1).float()  # [N, dim]


@functools.lru_cache(maxsize=8)
def grid_rope(grid: tuple[int, int, int], head_dim: int, device: torch.device) -> Rope:
    """RoPE of a latent token grid; cached, since every sampling step and guidance pass reuses it.

    Built outside inference mode so the cached tables also serve a later training forward."""
    with torch.inference_mode(False):
        return rope_frequencies(grid_positions(*grid, device=device), head_dim)  # [F*H*W, D/2]


@dataclass(frozen=True)
class TokenLayout:
    """How timestep rows map onto the token sequence: groups of (rows, tokens per row).

    Uniform t: ((1, L),). Per latent frame: ((F, H*W),). Per token: ((L, 1),). In-context
    plan tokens add a group (1, P) with timestep 0. Modulation is applied group by group as a
    broadcast, so no `[B, L, 6, C]` copy is made unless timesteps really are per token.
    """

    groups: tuple[tuple[int, int], ...]

    @property
    def num_tokens(self) -> int:
        return sum(rows * per_row for rows, per_row in self.groups)

    def then(self, rows: int, per_row: int) -> TokenLayout:
        return TokenLayout(self.groups + ((rows, per_row),))

    def broadcast(self, fn, tokens: tuple[torch.Tensor, ...], rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """`fn(*tokens, *rows)` group by group: tokens `[B, L, C]` as `[B, n, m, C]`, rows `[B, S, C]` as
        `[B, n, 1, C]`."""
        if len(self.groups) == 1 and self.groups[0][0] == 1:
            return fn(*tokens, *rows)  # uniform timestep: [B, 1, C] broadcasts over [B, L, C]
        out, tok, row = [], 0, 0
        for n, m in self.groups:
            parts = [t[:, tok : tok + n * m].unflatten(1, (n, m)) for t in tokens]  # [B, n, m, C]
            out.append(fn(*parts, *(r[:, row : row + n, None] for r in rows)).flatten(1, 2))
            tok, row = tok + n * m, row + n
        return torch.cat(out, dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)  # x * (1 + scale) + shift


def gated_add(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(x, y, g)  # x + y * g


class WanSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (CastLinear(dim, dim) for _ in range(4))
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim))  # [B, L, H, D]

    def forward(self, x: torch.Tensor, rope: Rope, attn_mask: torch.Tensor | None = None, attend=None) -> torch.Tensor:
        """`attend(q, k, v)`, when given, replaces full attention (windowed attention does)."""
        q = apply_rope(self.heads(self.norm_q(self.q(x))), rope)  # [B, L, H, D]
        k = apply_rope(self.heads(self.norm_k(self.k(x))), rope)
        v = self.heads(self.v(x))
        out = attend(q, k, v) if attend is not None else attention(q, k, v, attn_mask=attn_mask)  # [B, L, H, D]
        return self.o(out.flatten(2))  # [B, L, C]


class WanCrossAttention(WanSelfAttention):
    """Text cross-attention (no RoPE). `plan_attn(q)` adds the Plan-X branch on the same queries."""

    def forward(self, x: torch.Tensor, context: torch.Tensor, plan_attn=None) -> torch.Tensor:
        """`context` `[B, Lt, C]`, or `[B, F, Lt, C]`: the L tokens (frame-major) in F frames, each its own text."""
        q = self.heads(self.norm_q(self.q(x)))  # [B, L, H, D]
        k = self.heads(self.norm_k(self.k(context)))  # [B, Lt, H, D] or [B, F, Lt, H, D]
        v = self.heads(self.v(context))
        if context.dim() == 4:  # per frame: fold the frames into the batch
            frames = context.shape[1]
            q_frames = q.unflatten(1, (frames, -1)).flatten(0, 1)  # [B*F, L/F, H, D]
            out = attention(q_frames, k.flatten(0, 1), v.flatten(0, 1)).unflatten(0, (-1, frames)).flatten(1, 2)
        else:
            out = attention(q, k, v)  # [B, L, H, D]
        if plan_attn is not None:
            out = out + plan_attn(q)
        return self.o(out.flatten(2))


def check_frame_context(context: torch.Tensor, frames: int, plan, parallel) -> None:
    """A per-frame text context `[B, F', Lt, D]` needs F' = the latent frames, and no plan tokens or sequence split
    (both change which tokens belong to which frame)."""
    if context.dim() != 4:
        return
    if context.shape[1] != frames:
        raise ValueError(
            f"the text context has one text for each of {context.shape[1]} frames but the latent has {frames} "
            f"latent frames; give one text per latent frame (or one text for all: a [B, Lt, D] context)"
        )
    if plan is not None or parallel is not None:
        raise ValueError("a per-frame text context works without plan tokens and sequence parallelism; drop one")


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = WanLayerNorm(dim, cfg.eps)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm3 = WanLayerNorm(dim, cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.qk_norm, cfg.eps)
        self.norm2 = WanLayerNorm(dim, cfg.eps)
        self.ffn = nn.Sequential(
            CastLinear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), CastLinear(cfg.ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        layout: TokenLayout,
        context: torch.Tensor,
        rope: Rope,
        plan_attn=None,
        attn_mask: torch.Tensor | None = None,
        attend=None,
    ) -> torch.Tensor:
        """x `[B, L, C]` float32 residual stream; e0 `[B, S, 6, C]` timestep rows; context `[B, Lt, C]`."""
        dtype = context.dtype
        mod = (self.modulation.float().unsqueeze(0) + e0).unbind(2)  # 6 x [B, S, C]
        h = layout.broadcast(modulate, (self.norm1(x),), mod[0:2])
        y = self.self_attn(h.to(dtype), rope, attn_mask, attend)
        x = layout.broadcast(gated_add, (x, y.float()), mod[2:3])
        x = x + self.cross_attn(self.norm3(x).to(dtype), context, plan_attn).float()
        h = layout.broadcast(modulate, (self.norm2(x),), mod[3:5])
        y = self.ffn(h.to(dtype))
        return layout.broadcast(gated_add, (x, y.float()), mod[5:6])


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = CastLinear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, layout: TokenLayout, dtype: torch.dtype) -> torch.Tensor:
        shift, scale = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unbind(2)  # [B, S, C] each
        h = layout.broadcast(modulate, (self.norm(x),), (shift, scale))
        return self.head(h.to(dtype))  # [B, L, prod(patch) * out_dim]


def check_window(window: int | WindowSpec | None, frames: int) -> WindowSpec | None:
    """The attention window (a number of latent frames, local semantics, or a WindowSpec), or None for full
    attention (None, 0, or a window of >= F' frames)."""
    if window is None or window == 0:
        return None
    if isinstance(window, int) and not isinstance(window, bool) and window >= 0:
        window = WindowSpec(window)
    if not isinstance(window, WindowSpec):
        raise ValueError(
            f"attention window must be a whole number of latent frames >= 1 (0 or None for full "
            f"attention) or a WindowSpec, got {window!r}"
        )
    return None if window.frames >= frames else window


def window_attend(grid, window: WindowSpec, block: int, num_global: int, global_bias: float | None, global_frames):
    """The self-attention of block `block` under shifted windows (`global_frames`: the latent frame of each
    keyframe of in-context plan tokens)."""
    layout = window.layout(grid, block, num_global, global_frames)
    return functools.partial(windowed_attention, layout=layout, global_bias=global_bias)


class WanModel(nn.Module):
    """Wan DiT. `forward(x [B, C, F, H, W], t, context [B, Lt, text_dim], plan=None) -> velocity [B, C, F, H, W]`."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        self.patch_embedding = CastConv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            CastLinear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), CastLinear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(CastLinear(cfg.freq_dim, cfg.dim), nn.SiLU(), CastLinear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), CastLinear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(WanAttentionBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    def token_grid(self, latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (F', H', W') of a latent `[..., F, H, W]`; refuses sizes the patch does not divide."""
        f, h, w = latent_shape[-3:]
        pt, ph, pw = self.config.patch_size
        if f % pt or h % ph or w % pw:
            raise ValueError(
                f"latent of {f}x{h}x{w} (frames x height x width) is not divisible by the DiT patch "
                f"{pt}x{ph}x{pw}; use a video size whose latent height and width are multiples of {ph}"
            )
        return f // pt, h // ph, w // pw

    def timestep_rows(
        self, t: torch.Tensor, grid: tuple[int, int, int], batch: int
    ) -> tuple[torch.Tensor, TokenLayout]:
        """Timesteps `[B]`, `[B, F']` (per latent frame) or `[B, L]` (per token) -> rows `[B, S]` and their layout."""
        f, h, w = grid
        t = t.reshape(1).expand(batch) if t.ndim == 0 else t
        if t.ndim == 1:
            return t[:, None], TokenLayout(((1, f * h * w),))
        if t.shape[1] == f:
            return t, TokenLayout(((f, h * w),))
        if t.shape[1] == f * h * w:
            return t, TokenLayout(((f * h * w, 1),))
        raise ValueError(
            f"timestep of shape {tuple(t.shape)} fits neither the batch ({batch},), frames ({batch}, {f}) "
            f"nor tokens ({batch}, {f * h * w}) of this latent"
        )

    def embed_time(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `[B, S]` -> time embedding e `[B, S, C]` and block modulation e0 `[B, S, 6, C]` (float32)."""
        e = self.time_embedding(sinusoidal_embedding_1d(self.config.freq_dim, rows.flatten()))  # [B*S, C]
        e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))  # [B*S, 6, C]
        return e.unflatten(0, rows.shape), e0.unflatten(0, rows.shape)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """`[B, L, pt*ph*pw*C]` -> `[B, C, F, H, W]` (Wan's channel order: patch offsets, then channels)."""
        (f, h, w), (pt, ph, pw) = grid, self.config.patch_size
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)

    parallel = None  # a `parallel.SequenceParallel` every forward uses; set by `parallel.sequence_parallel`

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        plan=None,
        window: int | WindowSpec | None = None,
        parallel=None,
    ) -> torch.Tensor:
        """x `[B, C, F, H, W]`; t timesteps (0..1000) `[B]`, `[B, F']` or `[B, L]`; context `[B, Lt, text_dim]`.

        Computes in x's dtype (weights stored in another dtype are cast per layer); the residual
        stream and modulation stay in float32 as in the reference. `plan`: a PlanConditioning.
        `window`: self-attention in windows of that many latent frames, shifted by half a window
        on odd blocks (None or 0: full attention); in-context plan tokens are seen by the windows
        of their own span (a `WindowSpec` sets the margin, or `global`: every window sees all
        of them). A window covering all F' latent frames is full
        attention (Swin's rule: no partition, no shift). `parallel`: a `parallel.SequenceParallel` (default
        the model's `parallel`): the sequence split over its ranks (Ulysses); every rank returns the whole output.
        """
        dtype, grid = x.dtype, self.token_grid(x.shape)
        window = check_window(window, grid[0])
        parallel = self.parallel if parallel is None else parallel
        check_frame_context(context, grid[0], plan, parallel)
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2).float()  # [B, Lv, C]
        rows, layout = self.timestep_rows(t.to(x.device), grid, x.shape[0])
        rope = grid_rope(grid, self.config.head_dim, x.device)  # [Lv, D/2]
        video_rope, attn_mask, num_global, global_bias, global_frames = rope, None, 0, None, ()
        if plan is not None:
            plan = plan.bind(grid, self.config.dim, self.config.num_layers)
            if plan.mode == "in_context":
                tokens, rows, layout, rope, attn_mask = plan.append_tokens(tokens, rows, layout, rope, dtype)
                num_global, global_bias = tokens.shape[1] - math.prod(grid), plan.key_bias
                global_frames = plan.plan.latent_frames
        shard = None if parallel is None else parallel.shard(tokens.shape[1], self.config.num_heads)
        if shard is not None:  # this rank's tokens, rows and RoPE (parallel.py)
            tokens, rows, layout, rope, video_rope = shard.split(tokens, rows, layout, rope, video_rope)
        e, e0 = self.embed_time(rows)  # [B, S, C], [B, S, 6, C]
        context = self.text_embedding(context.to(dtype))  # [B, Lt, C] or [B, F', Lt, C]
        for i, block in enumerate(self.blocks):
            plan_attn = plan.cross_attention(i, video_rope) if plan is not None else None
            attend = window_attend(grid, window, i, num_global, global_bias, global_frames) if window else None
            if shard is not None:
                attend = shard.attend(attend, attn_mask)  # all-to-all around the attention
            tokens = block(tokens, e0, layout, context, rope, plan_attn, None if attend else attn_mask, attend)
        out = self.head(tokens, e, layout, dtype)  # [B, L, prod(patch) * C_out]
        if shard is not None:
            out = shard.gather(out)  # [B, L, prod(patch) * C_out] on every rank
        return self.unpatchify(out[:, : math.prod(grid)], grid).to(dtype)
