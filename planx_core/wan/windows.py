"""Shifted-window self-attention along time, with global (semantic) tokens seen by the windows of their span.

Source: SemanticGen (arXiv 2512.20619), Sec. 3.4: for long videos the stage-2 generator keeps
the semantic tokens in context with the VAE latent tokens, but restricts attention among the
latent tokens to windows of Tw latent frames, shifted by Tw/2 on odd layers (Swin Transformer,
arXiv 2103.14030), so the cost grows linearly with the video length instead of quadratically.

The window rule (decided here; the paper gives no more detail), for a sequence of F' x HW video
tokens (frame-major, as `WanModel` lays them out) followed by G global tokens:
- With shift s, window boundaries sit at frames s, s + Tw, s + 2Tw, ... along time, not cyclic:
  when s > 0 the first window is [0, s), and the last window may be shorter than Tw.
- A video token attends to exactly the video tokens of its window plus all G global tokens.
- A global token attends to all global tokens only. They are clean conditions (timestep 0), and
  this keeps their cost at G x G instead of G x Lv. `global_bias` (the plan-strength bias
  log(strength)) is added to the video queries' logits of the global keys; for global queries
  it would shift every logit equally and change nothing, so it is not applied there.

The implementation partitions the video frames into windows and runs them batched through
`planx_core.attention.attention` (layout [B, L, H, D]): windows of the same length go in one call
as [B * nW, Tw * HW + G, H, D], and the short first / last windows in their own call, so no
padding, no key-padding mask and no Lv x Lv mask is ever built. `dense_window_mask` spells the
same rule out as a dense boolean mask, for tests only.

Which global tokens a window sees (`WindowSpec.semantics`):
- `global`: all of them, as above. Cost: Lv x (Tw * HW + G) + G x G logits per head, against
  (Lv + G)^2 for full attention. When the semantic tokens grow with the video (SemanticGen: about
  1/16 of the latent tokens) the Lv x G term grows quadratically, at 1/16 of full attention's rate.
- `local` (the default): only the semantic keyframes of the window's own time span, widened by
  `margin` latent frames on each side and shifted with the window. SemanticGen's split of the work:
  stage 1 makes the semantic plan globally consistent with full attention over it, so stage 2's
  windows need only the part of the plan that falls on their frames. The global tokens come in
  groups, one per keyframe, each with its latent frame (`global_frames`, from the alignment rule in
  `plan.timing`); a keyframe belongs to the window that holds its latent frame. A window's video
  tokens see the groups in [first - margin, last + 1 + margin) (the nearest group when none falls
  there), and a group's tokens see the groups its owning window sees. Every call is then one
  window's size: the cost is linear in the video length.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import torch

from ..wan import attention as attention_module


@dataclass(frozen=True)
class WindowLayout:
    """A self-attention sequence of `frames * tokens_per_frame` video tokens, then `num_global` tokens."""

    frames: int  # latent token frames F'
    tokens_per_frame: int  # H' * W'
    window: int  # Tw, latent frames per window
    shift: int = 0  # where the window boundaries start: s, s + Tw, ...
    num_global: int = 0  # semantic tokens appended after the video tokens
    global_frames: tuple[float, ...] = ()  # local mode: latent frame of each equal group of globals; () = global
    margin: int = 0  # local mode: latent frames a window's semantic span reaches past each of its ends

    def __post_init__(self):
        for name in ("frames", "tokens_per_frame", "window", "shift", "num_global", "margin"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"WindowLayout.{name} must be an int, got {value!r}")
        if self.frames < 1 or self.tokens_per_frame < 1:
            raise ValueError(
                f"WindowLayout needs at least one frame of at least one token, got frames="
                f"{self.frames}, tokens_per_frame={self.tokens_per_frame}"
            )
        if self.window < 1:
            raise ValueError(f"attention window must be at least 1 latent frame, got {self.window}")
        if not 0 <= self.shift < self.window:
            raise ValueError(
                f"window shift must be in 0..{self.window - 1} for a window of {self.window} frames, got {self.shift}"
            )
        if self.num_global < 0:
            raise ValueError(f"WindowLayout.num_global must be >= 0, got {self.num_global}")
        if self.margin < 0:
            raise ValueError(f"the window margin must be >= 0 latent frames, got {self.margin}")
        groups = len(self.global_frames)
        if groups and (not self.num_global or self.num_global % groups):
            raise ValueError(
                f"{self.num_global} global tokens cannot be split into {groups} equal keyframe groups; "
                f"give one latent frame per keyframe of the plan"
            )
        if any(not math.isfinite(t) or not 0 <= t < self.frames for t in self.global_frames):
            raise ValueError(
                f"the keyframes' latent frames {list(self.global_frames)} must lie in [0, {self.frames}): "
                f"the plan is longer than the video; render more frames or retime the late keyframes"
            )

    @property
    def local(self) -> bool:
        """Do windows see only the global tokens of their own span (True), or all of them?"""
        return bool(self.global_frames)

    @property
    def video_tokens(self) -> int:
        return self.frames * self.tokens_per_frame

    @property
    def num_tokens(self) -> int:
        return self.video_tokens + self.num_global

    def runs(self) -> list[tuple[int, int, int]]:
        """Windows as runs of equal length: (first frame, windows in the run, frames per window)."""
        head = min(self.shift, self.frames)  # first window [0, s) when s > 0
        body = (self.frames - head) // self.window
        tail = self.frames - head - body * self.window
        runs = [(0, 1, head), (head, body, self.window), (head + body * self.window, 1, tail)]
        return [run for run in runs if run[1] and run[2]]

    def window_of_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """Window index of each latent frame (0 is the first window, short or not)."""
        return (frame + self.window - self.shift) // self.window

    def windows(self) -> list[tuple[int, int]]:
        """Every window as (first frame, frames), in order."""
        return [(first + i * size, size) for first, count, size in self.runs() for i in range(count)]

    def visible_groups(self, first: int, frames: int) -> list[int]:
        """Local mode: the keyframe groups a window of `frames` frames from `first` sees (see the module)."""
        low, high = first - self.margin, first + frames + self.margin
        seen = [g for g, t in enumerate(self.global_frames) if low <= t < high]
        if seen or not self.global_frames:
            return seen
        gap = [max(low - t, t - high + 1) for t in self.global_frames]  # > 0 for every group here
        return [gap.index(min(gap))]

    def owned_groups(self, first: int, frames: int) -> list[int]:
        """Local mode: the keyframe groups whose latent frame falls in the window."""
        return [g for g, t in enumerate(self.global_frames) if first <= math.floor(t) < first + frames]

    @property
    def tokens_per_group(self) -> int:
        return self.num_global // max(len(self.global_frames), 1)


SEMANTICS = ("local", "global")  # which global tokens a window sees (see the module docstring)


@dataclass(frozen=True)
class WindowSpec:
    """Shifted-window attention as a caller asks for it: Tw latent frames, which global tokens each window
    sees (`local`: its span's keyframes, widened by `margin` latent frames; `global`: all)."""

    frames: int
    semantics: str = "local"
    margin: int = 0

    def __post_init__(self):
        if not isinstance(self.frames, int) or isinstance(self.frames, bool) or self.frames < 1:
            raise ValueError(f"attention window must be a whole number of latent frames >= 1, got {self.frames!r}")
        if self.semantics not in SEMANTICS:
            raise ValueError(f"window semantics must be one of {SEMANTICS}, got {self.semantics!r}")
        if not isinstance(self.margin, int) or isinstance(self.margin, bool) or self.margin < 0:
            raise ValueError(f"the window margin must be a whole number of latent frames >= 0, got {self.margin!r}")

    def layout(self, grid: tuple[int, int, int], block: int, num_global: int, global_frames) -> WindowLayout:
        """The window layout of block `block` on a token grid (F', H', W') with `num_global` tokens in groups at
        `global_frames` (one latent frame per keyframe; ignored in global mode)."""
        local = self.semantics == "local" and num_global > 0
        return WindowLayout(
            frames=grid[0],
            tokens_per_frame=grid[1] * grid[2],
            window=self.frames,
            shift=layer_shift(self.frames, block),
            num_global=num_global,
            global_frames=tuple(float(t) for t in global_frames) if local else (),
            margin=self.margin,
        )


def layer_shift(window: int, layer: int) -> int:
    """Shift of block `layer`: 0 on even layers, window // 2 on odd layers (Swin's alternation)."""
    return window // 2 if layer % 2 else 0


def windowed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: WindowLayout,
    *,
    global_bias: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention of q, k, v `[B, Lv + G, H, D]` under the window rule of `layout` -> `[B, Lv + G, H, D]`.

    `global_bias`: added to the video queries' logits of the global keys; -inf hides them.
    """
    if q.shape[1] != layout.num_tokens or k.shape[1] != layout.num_tokens:
        raise ValueError(
            f"windowed attention got {q.shape[1]} queries and {k.shape[1]} keys, but the layout has "
            f"{layout.frames} frames x {layout.tokens_per_frame} tokens + {layout.num_global} global "
            f"= {layout.num_tokens}"
        )
    if global_bias is not None and (math.isnan(global_bias) or global_bias == math.inf):
        raise ValueError(f"global_bias must be a finite float or -inf, got {global_bias}")
    if layout.local:
        return _local_attention(q, k, v, layout, global_bias, backend)
    lv, hide_globals = layout.video_tokens, global_bias == -math.inf
    visible = 0 if hide_globals else layout.num_global  # global keys the video queries see
    kg, vg = k[:, lv : lv + visible], v[:, lv : lv + visible]  # [B, G or 0, H, D]
    bias = None if hide_globals else global_bias
    out = [_window_run(q, k, v, kg, vg, layout, run, bias, backend) for run in layout.runs()]
    if layout.num_global:
        qg = q[:, lv:]  # [B, G, H, D]
        out.append(attention_module.attention(qg, k[:, lv:], v[:, lv:], backend=backend))
    return torch.cat(out, dim=1)  # [B, Lv + G, H, D]


def _window_run(
    q, k, v, kg, vg, layout: WindowLayout, run: tuple[int, int, int], bias: float | None, backend: str | None
) -> torch.Tensor:
    """One run of equal windows, batched: queries `[B * n, w * HW, H, D]` over their window plus the globals."""
    first, count, frames = run
    size = frames * layout.tokens_per_frame
    span = slice(first * layout.tokens_per_frame, first * layout.tokens_per_frame + count * size)
    qw = _windows(q[:, span], count)  # [B * n, w * HW, H, D]
    kw = _windows(_with_globals(k[:, span], kg, count, size), count)  # [B * n, w * HW + G, H, D]
    vw = _windows(_with_globals(v[:, span], vg, count, size), count)
    mask = _global_bias_mask(size, kg.shape[1], bias, q)
    out = attention_module.attention(qw, kw, vw, attn_mask=mask, backend=backend)  # [B * n, w * HW, H, D]
    return out.reshape(q.shape[0], count * size, *q.shape[2:])  # [B, n * w * HW, H, D]


def _local_attention(q, k, v, layout: WindowLayout, bias: float | None, backend: str | None) -> torch.Tensor:
    """Local mode: each window's video queries over its frames plus its span's global groups, then each
    group's queries over the groups its window sees. Windows with the same shape go in one call."""
    out = torch.empty_like(q)  # [B, Lv + G, H, D]; every row is written below
    hide = bias == -math.inf
    video, groups = defaultdict(list), defaultdict(list)
    for first, frames in layout.windows():
        seen, owned = _group_rows(layout, layout.visible_groups(first, frames)), layout.owned_groups(first, frames)
        keys = seen[:0] if hide else seen  # the video queries' global keys
        video[frames, len(keys)].append((_frame_rows(layout, first, frames), keys))
        if owned:
            groups[len(owned), len(seen)].append((_group_rows(layout, owned), seen))
    for members in video.values():
        rows = torch.stack([r for r, _ in members])  # [n, S]
        keys = torch.stack([torch.cat([r, g]) for r, g in members])  # [n, S + Gw]
        mask = _global_bias_mask(rows.shape[1], keys.shape[1] - rows.shape[1], None if hide else bias, q)
        out[:, rows.flatten()] = _gathered(q, k, v, rows, keys, mask, backend)
    for members in groups.values():
        rows = torch.stack([r for r, _ in members])  # [n, Go]
        keys = torch.stack([g for _, g in members])  # [n, Gw]
        out[:, rows.flatten()] = _gathered(q, k, v, rows, keys, None, backend)
    return out


def _frame_rows(layout: WindowLayout, first: int, frames: int) -> torch.Tensor:
    """Sequence indices of the video tokens of frames [first, first + frames) `[frames * HW]`."""
    hw = layout.tokens_per_frame
    return torch.arange(first * hw, (first + frames) * hw)


def _group_rows(layout: WindowLayout, groups: list[int]) -> torch.Tensor:
    """Sequence indices of the global tokens of `groups` `[len(groups) * tokens per group]`."""
    per, lv = layout.tokens_per_group, layout.video_tokens
    if not groups:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.arange(lv + g * per, lv + (g + 1) * per) for g in groups])


def _gathered(q, k, v, rows: torch.Tensor, keys: torch.Tensor, mask, backend: str | None) -> torch.Tensor:
    """Attention of the queries at `rows` `[n, S]` over the keys at `keys` `[n, Sk]`, n windows in one call
    -> `[B, n * S, H, D]`."""
    rows, keys = rows.to(q.device), keys.to(q.device)
    qw = q[:, rows].flatten(0, 1)  # [B * n, S, H, D]
    kw, vw = k[:, keys].flatten(0, 1), v[:, keys].flatten(0, 1)  # [B * n, Sk, H, D]
    out = attention_module.attention(qw, kw, vw, attn_mask=mask, backend=backend)  # [B * n, S, H, D]
    return out.reshape(q.shape[0], -1, *q.shape[2:])  # [B, n * S, H, D]


def _windows(x: torch.Tensor, count: int) -> torch.Tensor:
    """`[B, n * S, H, D]` -> `[B * n, S, H, D]`."""
    return x.reshape(x.shape[0] * count, -1, *x.shape[2:])


def _with_globals(x: torch.Tensor, g: torch.Tensor, count: int, size: int) -> torch.Tensor:
    """Window tokens `[B, n * S, H, D]` and globals `[B, G, H, D]` -> `[B, n * (S + G), H, D]`."""
    if not g.shape[1]:
        return x
    x = x.unflatten(1, (count, size))  # [B, n, S, H, D]
    g = g.unsqueeze(1).expand(-1, count, -1, -1, -1)  # [B, n, G, H, D]
    return torch.cat([x, g], dim=2).flatten(1, 2)  # [B, n * (S + G), H, D]


def _global_bias_mask(size: int, num_global: int, bias: float | None, like: torch.Tensor) -> torch.Tensor | None:
    """Additive key mask `[1, 1, 1, S + G]`: 0 on the window's keys, `bias` on the global keys."""
    if bias is None or not num_global:
        return None
    mask = torch.zeros(1, 1, 1, size + num_global, dtype=like.dtype, device=like.device)
    mask[..., size:] = bias
    return mask


def dense_window_mask(layout: WindowLayout) -> torch.Tensor:
    """The window rule as a dense boolean mask `[L, L]` (True = may attend). For tests only: it is quadratic."""
    lv, total = layout.video_tokens, layout.num_tokens
    frame = torch.arange(lv) // layout.tokens_per_frame  # [Lv]
    win = layout.window_of_frame(frame)  # [Lv]
    mask = torch.zeros(total, total, dtype=torch.bool)
    mask[:lv, :lv] = win[:, None] == win[None, :]  # video -> its window
    if not layout.local:
        mask[:, lv:] = True  # everyone -> globals
        return mask
    for first, frames in layout.windows():
        seen = _group_rows(layout, layout.visible_groups(first, frames))
        mask[_frame_rows(layout, first, frames)[:, None], seen] = True  # the window -> its span's groups
        mask[_group_rows(layout, layout.owned_groups(first, frames))[:, None], seen] = True  # its groups -> same
    return mask
