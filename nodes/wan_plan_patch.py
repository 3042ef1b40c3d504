"""Plan-X's semantic branch and windowed attention on ComfyUI's native WanModel, installed as patches on a
ModelPatcher clone.

planx_core's DiT (`dit.WanModel.forward(x, t, context, plan=..., window=...)`) takes a plan in one of two
modes and an optional attention window. Here the same computation runs on ComfyUI's
`comfy.ldm.wan.model.WanModel`, with no change to its code or weights, through three hooks of ComfyUI
0.3.64 (see docs/comfyui-host.md, 5a and 5e):

- APPLY_MODEL wrappers open a per-call state (`_Call`, passed down in `transformer_options`): the plan's
  (Inject 3D RoPE Guidance: is it on at this sigma, not the sampler's plan-off pass; its tokens and
  RoPE on this call's latent grid) and the window's (the Plan-X Sampler's `attention_window`);
- a "dit" double_block replacement per block records which block runs (chaining any replacement
  already registered, e.g. skip-layer guidance). For an `in_context` plan it also carries the
  semantic tokens through the block as extra sequence entries: it appends the current semantic
  tokens to the block's x, the timestep-0 modulation rows to its e (ComfyUI's block broadcasts e
  `[B, S, 6, C]` over equal groups of tokens, so the rows are groups of gcd(tokens per row, P)
  tokens, per token only when that gcd is 1) and the plan tokens' 3D RoPE to its freqs, runs the
  block, and splits the output back into video tokens (on to the next block / the head) and
  semantic tokens (kept for the next block);
- an `optimized_attention_override` sees each block's attention calls, told apart by their order in
  the block: the first is the self-attention, the second the text cross-attention. A `cross_attn`
  plan adds its plan attention to the second (its queries normalised, not rotated). The first is
  replaced by `planx_core.wan.windowed_attention` under an attention window (video tokens in windows
  of Tw latent frames, shifted Tw/2 on odd blocks, each window seeing the semantic tokens of its own
  span (`local`, widened by a margin) or all of them (`global`); `planx_core.wan.WindowSpec`), and
  gets the in-context plan's key bias log(strength) as an additive mask otherwise.

Nothing here is pickled or deep-copied: `PlanPatch.__deepcopy__` returns itself, since ModelPatcher
deep-copies `model_options` on every clone.

Sequence-parallel packs reach the plan through `planx_call`, `PlanCall.extend_sequence`, `num_global`,
`self_attention` and `plan_attention` (README, "Multi-GPU", says how).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import comfy.patcher_extension
import torch
from comfy.ldm.flux.math import apply_rope1
from comfy.ldm.wan.model import sinusoidal_embedding_1d

from planx_core.semantic_branch import BoundPlan, PlanConditioning
from planx_core.wan import WindowSpec, check_window, windowed_attention

STATE_KEY = "planx_plan_call"  # transformer_options key of the per-call state
PLAN_OFF_KEY = "planx_plan_off"  # set (True) by a sampler for its plan-free pass
WRAPPER_KEY = "planx_plan"
WINDOW_WRAPPER_KEY = "planx_window"
APPLY_MODEL = comfy.patcher_extension.WrappersMP.APPLY_MODEL


@dataclass
class _PlacedPlan:
    """A plan on one call's latent grid and device: planx_core's `BoundPlan` (tokens, positions, keys and values,
    strength and key bias) plus its positions' rotation in ComfyUI's rope format."""

    bound: BoundPlan  # of the conditioning with its tokens on the call's device
    freqs: torch.Tensor | None  # [1, P, 1, D/2, 2, 2] of `bound.positions`; None: cross_attn with RoPE off

    @property
    def tokens(self) -> torch.Tensor:
        return self.bound.plan.tokens  # [1, P, dim]

    @property
    def count(self) -> int:
        return self.tokens.shape[1]

    @property
    def in_context(self) -> bool:
        return self.bound.mode == "in_context"

    @property
    def key_bias(self) -> float | None:
        """In-context strength as an additive bias on the plan keys (None at strength 1, or in cross_attn)."""
        return self.bound.key_bias if self.in_context else None


@dataclass
class _Call:
    """What one model call needs: the model, the latent token grid, the plan and window, the block running."""

    dm: object = field(repr=False)
    grid: tuple[int, int, int]
    previous_override: object = None
    plan: _PlacedPlan | None = None
    window: WindowSpec | None = None  # the attention window; None = full attention
    block: int = -1
    self_length: int = 0  # tokens in the running block's self-attention (video, context latents, plan)
    seen_self: bool = False  # the running block's self-attention has been called
    seen_cross: bool = False  # the running block has had its (first) cross-attention call
    video_freqs: torch.Tensor | None = field(default=None, repr=False)
    semantic: torch.Tensor | None = field(default=None, repr=False)  # in-context tokens between blocks [B, P, C]
    _rows: tuple | None = field(default=None, repr=False)  # (e given, e with the plan's rows)
    _freqs: tuple | None = field(default=None, repr=False)  # (freqs given, freqs with the plan's)
    sharded: bool = False  # a sequence-parallel pack carries the in-context plan tokens in its own sequence

    def enter(self, block: int, video_freqs: torch.Tensor, self_length: int) -> None:
        self.block, self.video_freqs, self.self_length = block, video_freqs, self_length
        self.seen_self = self.seen_cross = False

    def is_self_attention(self, q: torch.Tensor, k: torch.Tensor) -> bool:
        """Is this attention call the block's self-attention? Its queries and keys are the block's whole token
        sequence; a cross-attention's keys are the text (or image) context. Told apart by length, not by call
        order (newer ComfyUI adds calls); only when a context happens to be as long as the video does the
        first such call decide."""
        hit = not self.seen_self and q.shape[1] == k.shape[1] == self.self_length
        self.seen_self = self.seen_self or hit
        return hit

    def takes_plan_attention(self) -> bool:
        """Is this cross-attention call the one that gets the block's plan attention (the first; an image and a
        text cross-attention are summed before the output projection, so either would do, but only once)?"""
        first = not self.seen_cross
        self.seen_cross = True
        return first and self.plan is not None and self.plan.bound.has_attention(self.block)

    def set_window(self, window: WindowSpec) -> None:
        self.window = check_window(window, self.grid[0])  # None when it covers every latent frame

    @property
    def in_context(self) -> bool:
        return self.plan is not None and self.plan.in_context

    @property
    def num_global(self) -> int:
        return self.plan.count if self.in_context else 0

    # -- in-context: the block's extended inputs ------------------------------------------
    def with_plan(self, args: dict) -> dict:
        """The block's args with the semantic tokens appended to x, their rows to e and their RoPE to freqs."""
        x = args["img"]  # [B, Lv, C]
        if self.semantic is None:
            self.semantic = self.plan.tokens.to(x.device, x.dtype).expand(x.shape[0], -1, -1)  # [B, P, C]
        return {
            **args,
            "img": torch.cat([x, self.semantic], dim=1),
            "vec": self.rows(args["vec"], x),
            "pe": self.freqs(args["pe"]),
        }

    def extend_sequence(
        self, x: torch.Tensor, e: torch.Tensor, freqs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a sequence-parallel pack, once per call before it splits the sequence: video tokens x `[B, Lv, C]`,
        timestep rows e and RoPE freqs -> the same with the in-context plan tokens appended (timestep-0 rows,
        their 3D RoPE). The call is then `sharded`: the blocks no longer append the plan tokens themselves;
        the pack splits these, gathers after the last block and drops the last `num_global` tokens."""
        args = self.with_plan({"img": x, "vec": e, "pe": freqs})
        self.sharded = True
        return args["img"], args["vec"], args["pe"]  # [B, Lv + P, C], rows over Lv + P, [1, Lv + P, 1, D/2, 2, 2]

    def rows(self, e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Modulation rows e `[B, S, 6, C]` over Lv video tokens -> rows over Lv + P tokens, the plan's at
        timestep 0, in groups of equal size (what ComfyUI's `repeat_e` broadcasts); built once per call."""
        if self._rows is not None and self._rows[0] is e:
            return self._rows[1]
        rows = e if e.ndim == 4 else e.unsqueeze(1)  # [B, S, 6, C]
        batch, count, length, plan = rows.shape[0], rows.shape[1], x.shape[1], self.plan.count
        if length % count:
            raise ValueError(
                f"the model's timestep rows ({count}) do not divide its {length} video tokens; the "
                f"in-context plan cannot extend them"
            )
        per_row = length // count
        group = math.gcd(per_row, plan)
        video = rows.repeat_interleave(per_row // group, dim=1) if per_row // group > 1 else rows
        zero = self.zero_rows(x).to(rows.dtype).expand(batch, plan // group, -1, -1)  # [B, P / g, 6, C]
        out = torch.cat([video, zero], dim=1)  # [B, (Lv + P) / g, 6, C]
        self._rows = (e, out)
        return out

    def zero_rows(self, x: torch.Tensor) -> torch.Tensor:
        """The modulation rows of timestep 0 (clean tokens), `[1, 1, 6, C]`, as ComfyUI's forward computes e0."""
        dm = self.dm
        t = torch.zeros(1, device=x.device)
        e = dm.time_embedding(sinusoidal_embedding_1d(dm.freq_dim, t).to(dtype=x.dtype))  # [1, C]
        return dm.time_projection(e).unflatten(1, (6, dm.dim))[:, None]  # [1, 1, 6, C]

    def freqs(self, pe: torch.Tensor) -> torch.Tensor:
        if self._freqs is None or self._freqs[0] is not pe:
            self._freqs = (
                pe,
                torch.cat([pe, self.plan.freqs.to(pe.device, pe.dtype).expand(pe.shape[0], -1, *pe.shape[2:])], dim=1),
            )  # [1, Lv + P, 1, D/2, 2, 2]
        return self._freqs[1]

    # -- the self-attention ------------------------------------------------------------
    @property
    def replaces_self_attention(self) -> bool:
        return self.window is not None or (self.in_context and self.plan.key_bias is not None)

    def self_attention(self, func, previous, *args, **kwargs) -> torch.Tensor:
        """The block's self-attention on q, k, v `[B, L, H*D]` (RoPE applied): windowed, or full with the
        plan-key bias."""
        q, k, v = args[:3]
        heads = kwargs["heads"] if "heads" in kwargs else args[3]
        if self.window is None:
            mask = torch.zeros(1, 1, 1, q.shape[1], dtype=q.dtype, device=q.device)
            mask[..., -self.plan.count :] = self.plan.key_bias
            kwargs = {**kwargs, "mask": mask}
            return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
        frames, height, width = self.grid
        keyframes = self.plan.bound.plan.latent_frames if self.in_context else ()
        layout = self.window.layout(self.grid, self.block, self.num_global, keyframes)
        batch, length = q.shape[:2]
        if length != layout.num_tokens:
            raise ValueError(
                f"attention_window expects {layout.num_tokens} tokens in block {self.block}'s "
                f"self-attention ({frames}x{height}x{width} latent tokens + {layout.num_global} plan "
                f"tokens), this model has {length} (a reference or concatenated latent?); set "
                f"attention_window to 0 for this model"
            )
        shape = (batch, length, heads, -1)
        out = windowed_attention(
            q.view(shape),
            k.view(shape),
            v.view(shape),
            layout,
            global_bias=self.plan.key_bias if self.in_context else None,
        )  # [B, L, H, D]
        return out.flatten(2)  # [B, L, H*D]


def _call_for(dm, x: torch.Tensor, options: dict) -> _Call:
    """The call state in `options` (a per-call copy of transformer_options); the first wrapper to ask installs
    it, with the block replacements and the attention override."""
    call = options.get(STATE_KEY)
    if call is None:
        call = _Call(dm, token_grid(x.shape, dm.patch_size), options.get("optimized_attention_override"))
        options[STATE_KEY] = call
        options["optimized_attention_override"] = attention_override
        options["patches_replace"] = block_replacements(options.get("patches_replace", {}), len(dm.blocks))
    return call


def check_wan(dm, what: str) -> None:
    if not hasattr(dm, "rope_embedder") or getattr(dm, "dim", None) is None or not hasattr(dm, "blocks"):
        raise ValueError(
            f"{what} works on Wan models; this MODEL is a {type(dm).__name__}. Load a Wan 2.1/2.2 "
            f"diffusion model (or the Plan-X tiny model)"
        )


class PlanPatch:
    """A plan bound to a semantic branch, ready to patch a ComfyUI Wan MODEL (`apply_to`)."""

    def __init__(self, conditioning: PlanConditioning):
        self.conditioning = conditioning
        self.branch = conditioning.branch
        self._placed: dict[tuple, _PlacedPlan] = {}

    def __deepcopy__(self, memo):
        return self  # immutable once built; ModelPatcher.clone deep-copies model_options

    # -- installing --------------------------------------------------------------------
    def apply_to(self, model):
        """A clone of the ModelPatcher `model` that renders with the plan; `model` itself is untouched."""
        self.check_model(model.get_model_object("diffusion_model"))
        if model.get_wrappers(APPLY_MODEL, WRAPPER_KEY):
            raise ValueError(
                "this MODEL already renders a plan (it comes from an Inject 3D RoPE Guidance node); "
                "inject one plan per MODEL: connect the model from before that node"
            )
        patched = model.clone()
        patched.add_wrapper_with_key(APPLY_MODEL, WRAPPER_KEY, self.apply_model)
        return patched

    def check_model(self, dm) -> None:
        cfg = self.branch.config
        check_wan(dm, "Inject 3D RoPE Guidance")
        dim, layers, heads = dm.dim, len(dm.blocks), getattr(dm, "num_heads", None)
        if (cfg.dim, cfg.num_layers, cfg.num_heads) != (dim, layers, heads):
            raise ValueError(
                f"the semantic branch was trained for a Wan DiT of width {cfg.dim}, {cfg.num_layers} "
                f"blocks, {cfg.num_heads} heads; this MODEL has width {dim}, {layers} blocks, {heads} "
                f"heads. Pick the branch file made for this model"
            )

    # -- per call ----------------------------------------------------------------------
    def apply_model(
        self,
        executor,
        x,
        t,
        c_concat=None,
        c_crossattn=None,
        control=None,
        transformer_options={},  # noqa: B006 (the executor's signature)
        **kwargs,
    ):
        """APPLY_MODEL wrapper: x `[B, C, F, H, W]` latent, t the sigmas `[B]`."""
        base = executor.class_obj
        if transformer_options.get(PLAN_OFF_KEY) or not self.active(base.model_sampling, t):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        dm = base.diffusion_model
        options = dict(transformer_options)
        call = _call_for(dm, x, options)
        call.plan = self.placed(dm, call.grid, x.device, x.dtype)
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def active(self, model_sampling, sigma: torch.Tensor) -> bool:
        """Is this step inside the [start, end] fraction of the schedule (0 = pure noise, as ComfyUI's percents)?"""
        return self.conditioning.active_at(float(sigma.max()), model_sampling.percent_to_sigma)

    def placed(self, dm, grid: tuple[int, int, int], device, dtype) -> _PlacedPlan:
        """The plan on this latent grid (planx_core's `bind`: refuses a plan longer than the video or a foreign
        branch) with its tokens on the device and its positions in ComfyUI's rope format, built once per
        (grid, device, dtype), not on every step of the sampler."""
        key = (grid, str(device), dtype)
        if key not in self._placed:
            bound = self.conditioning.to(device).bind(grid, dm.dim, len(dm.blocks))
            freqs = None
            if bound.positions is not None:
                freqs = dm.rope_embedder(bound.positions[None].to(device, torch.float32)).movedim(
                    1, 2
                )  # [1, P, 1, D/2, 2, 2]
                freqs = freqs.to(dtype)
            self.branch.to(device)
            self._placed = {key: _PlacedPlan(bound, freqs)}
        return self._placed[key]


class WindowWrapper:
    """APPLY_MODEL wrapper of the Plan-X Sampler's `attention_window`: self-attention in windows of this many
    latent frames, shifted by half a window on odd blocks (`planx_core.wan.windows`)."""

    def __init__(self, window: WindowSpec):
        self.window = window

    def __call__(
        self,
        executor,
        x,
        t,
        c_concat=None,
        c_crossattn=None,
        control=None,
        transformer_options={},  # noqa: B006 (the executor's signature)
        **kwargs,
    ):
        options = dict(transformer_options)
        _call_for(executor.class_obj.diffusion_model, x, options).set_window(self.window)
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)


def with_window(model, window: int | WindowSpec, semantics: str = "global", margin: int = 0):
    """A clone of a Wan MODEL whose self-attention runs in shifted windows of `window` latent frames (0: the
    model as it is). Each window sees the in-context plan tokens of its own span, `margin` latent frames
    wider (`semantics` "local"), or all of them ("global", the sampler's default, as before); a WindowSpec
    gives all three."""
    if not window:
        return model
    if not isinstance(window, WindowSpec):
        if window < 0:
            raise ValueError(f"attention_window must be 0 (full attention) or a number of latent frames, got {window}")
        window = WindowSpec(int(window), semantics, int(margin))
    check_wan(model.get_model_object("diffusion_model"), "attention_window")
    patched = model.clone()
    patched.remove_wrappers_with_key(APPLY_MODEL, WINDOW_WRAPPER_KEY)
    patched.add_wrapper_with_key(APPLY_MODEL, WINDOW_WRAPPER_KEY, WindowWrapper(window))
    return patched


def token_grid(latent_shape, patch_size) -> tuple[int, int, int]:
    """(F', H', W') tokens of a latent `[B, C, F, H, W]` after ComfyUI pads it to the patch."""
    f, h, w = latent_shape[-3:]
    pt, ph, pw = patch_size
    return -(-f // pt), -(-h // ph), -(-w // pw)


PlanCall = _Call  # the public name of the per-call state, for sequence-parallel packs


def planx_call(transformer_options: dict | None) -> PlanCall | None:
    """The Plan-X state of the model call these transformer_options belong to (None: no plan or window on this
    MODEL, or outside a call). For sequence-parallel packs; see the module docstring and the README."""
    return (transformer_options or {}).get(STATE_KEY)


def block_replacements(patches_replace: dict, num_blocks: int) -> dict:
    """A copy of patches_replace with a recording replacement on every block (chaining those already there)."""
    out = dict(patches_replace)
    dit = dict(out.get("dit", {}))
    for index in range(num_blocks):
        dit[("double_block", index)] = _recording_block(index, dit.get(("double_block", index)))
    out["dit"] = dit
    return out


def _recording_block(index: int, previous):
    def run(args, extra):
        return previous(args, extra) if previous is not None else extra["original_block"](args)

    def replace(args, extra):
        call = args["transformer_options"].get(STATE_KEY)
        if call is None:
            return run(args, extra)
        length = args["img"].shape[1]
        call.enter(index, args["pe"], length + (0 if call.sharded else call.num_global))
        if not call.in_context or call.sharded:
            return run(args, extra)
        out = run(call.with_plan(args), extra)
        tokens = out["img"]  # [B, Lv + P, C]
        call.semantic = tokens[:, length:]
        return {**out, "img": tokens[:, :length]}

    return replace


def plan_attention(call: _Call, func, q: torch.Tensor, heads: int, **kwargs) -> torch.Tensor:
    """The plan attention of the running block on its cross-attention queries q `[B, L, H*D]` (normalised)."""
    b, length = q.shape[:2]
    k, v = call.plan.bound.keys_values(call.block, b, torch.float32)  # [B, P, H, D] each, keys not rotated
    if call.plan.freqs is not None:
        q = apply_rope1(q.view(b, length, heads, -1), call.video_freqs).flatten(2)  # [B, L, H*D]
        k = apply_rope1(k.to(q.dtype), call.plan.freqs)
    out = func(q, k.flatten(2).to(q.dtype), v.flatten(2).to(q.dtype), heads=heads, **kwargs)  # [B, L, H*D]
    return out * call.plan.bound.strength


def attention_override(func, *args, **kwargs):
    """ComfyUI's attention override. In a block of a planned or windowed call: the self-attention (found by its
    length) windowed or with the plan-key bias when needed; every other call plain (or through the override
    already set), and the block's first cross-attention gets the cross_attn plan's attention added."""
    options = kwargs.get("transformer_options") or {}
    call: _Call | None = options.get(STATE_KEY)
    previous = None if call is None else call.previous_override
    if call is None or call.block < 0:
        return _plain(func, previous, args, kwargs)
    block = options.get("block_index", call.block)  # newer ComfyUI names the running block itself
    if block != call.block:
        call.enter(block, call.video_freqs, call.self_length)
    q, k = args[0], args[1]
    if call.is_self_attention(q, k):
        if call.replaces_self_attention:
            return call.self_attention(func, previous, *args, **kwargs)
        return _plain(func, previous, args, kwargs)
    out = _plain(func, previous, args, kwargs)
    if not call.takes_plan_attention():
        return out
    heads = kwargs["heads"] if "heads" in kwargs else args[3]
    return out + plan_attention(call, func, q, heads)


def _plain(func, previous, args, kwargs):
    return previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
