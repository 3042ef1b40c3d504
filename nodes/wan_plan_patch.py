"""Plan-X's semantic branch on ComfyUI's native WanModel, installed as a patch on a ModelPatcher clone.

planx_core's DiT adds a plan attention inside each chosen block's text cross-attention: the
block's own normalised queries attend, with 3D RoPE, to the plan tokens' keys and values, and the
result joins the text attention before the output projection (`semantic_branch`, `cross_attn`).
Here the same computation runs on ComfyUI's `comfy.ldm.wan.model.WanModel`, with no change to its
code or weights, through three hooks of ComfyUI 0.3.64 (see docs/comfyui-host.md, 5a and 5e):

- an APPLY_MODEL wrapper decides per call whether the plan is on (the start/end window on sigma,
  the Plan-X Sampler's plan-off pass), places the plan on the call's latent grid and passes a
  per-call state down through `transformer_options`;
- a "dit" double_block replacement per block records which block runs (and chains any replacement
  already registered, e.g. skip-layer guidance);
- an `optimized_attention_override` sees each block's attention calls; the second one is the text
  cross-attention, whose queries are normalised and not rotated, and gets the plan attention added.

Nothing here is pickled or deep-copied: `PlanPatch.__deepcopy__` returns itself, since ModelPatcher
deep-copies `model_options` on every clone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.patcher_extension
from comfy.ldm.flux.math import apply_rope1

from planx_core.semantic_branch import PlanConditioning, plan_positions

STATE_KEY = "planx_plan_call"  # transformer_options key of the per-call state
PLAN_OFF_KEY = "planx_plan_off"  # set (True) by a sampler for its plan-free pass
WRAPPER_KEY = "planx_plan"


@dataclass
class _Call:
    """What one model call needs: the patch, the plan tokens and their RoPE on this device, the block running."""

    patch: "PlanPatch"
    tokens: torch.Tensor  # [1, P, dim]
    plan_freqs: torch.Tensor | None  # [1, P, 1, D/2, 2, 2] in ComfyUI's rope format, None when RoPE is off
    previous_override: object = None
    block: int = -1
    attention_calls: int = 0
    video_freqs: torch.Tensor | None = field(default=None, repr=False)

    def enter(self, block: int, video_freqs: torch.Tensor) -> None:
        self.block, self.attention_calls, self.video_freqs = block, 0, video_freqs


class PlanPatch:
    """A plan bound to a semantic branch, ready to patch a ComfyUI Wan MODEL (`apply_to`)."""

    def __init__(self, conditioning: PlanConditioning):
        self.conditioning = conditioning
        self.branch = conditioning.branch
        self._placed: dict[tuple, tuple] = {}

    def __deepcopy__(self, memo):
        return self  # immutable once built; ModelPatcher.clone deep-copies model_options

    # -- installing --------------------------------------------------------------------
    def apply_to(self, model):
        """A clone of the ModelPatcher `model` that renders with the plan; `model` itself is untouched."""
        self.check_model(model.get_model_object("diffusion_model"))
        patched = model.clone()
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, self.apply_model)
        return patched

    def check_model(self, dm) -> None:
        cfg = self.branch.config
        dim, layers, heads = getattr(dm, "dim", None), len(getattr(dm, "blocks", ())), getattr(dm, "num_heads", None)
        if not hasattr(dm, "rope_embedder") or dim is None:
            raise ValueError(f"Inject 3D RoPE Guidance patches Wan models; this MODEL is a {type(dm).__name__}. "
                             f"Load a Wan 2.1/2.2 diffusion model (or the Plan-X tiny model)")
        if (cfg.dim, cfg.num_layers, cfg.num_heads) != (dim, layers, heads):
            raise ValueError(f"the semantic branch was trained for a Wan DiT of width {cfg.dim}, {cfg.num_layers} "
                             f"blocks, {cfg.num_heads} heads; this MODEL has width {dim}, {layers} blocks, {heads} "
                             f"heads. Pick the branch file made for this model")

    # -- per call ----------------------------------------------------------------------
    def apply_model(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                    **kwargs):
        """APPLY_MODEL wrapper: x `[B, C, F, H, W]` latent, t the sigmas `[B]`."""
        base = executor.class_obj
        if transformer_options.get(PLAN_OFF_KEY) or not self.active(base.model_sampling, t):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        dm = base.diffusion_model
        call = self.start_call(dm, x, transformer_options.get("optimized_attention_override"))
        options = dict(transformer_options)
        options[STATE_KEY] = call
        options["optimized_attention_override"] = attention_override
        options["patches_replace"] = block_replacements(transformer_options.get("patches_replace", {}), len(dm.blocks))
        return executor(x, t, c_concat, c_crossattn, control, options, **kwargs)

    def active(self, model_sampling, sigma: torch.Tensor) -> bool:
        """Is this step inside the [start, end] fraction of the schedule (0 = pure noise, as ComfyUI's percents)?"""
        plan = self.conditioning
        if plan.start <= 0.0 and plan.end >= 1.0:
            return True
        high = float(model_sampling.percent_to_sigma(plan.start))
        low = float(model_sampling.percent_to_sigma(plan.end))
        value = float(sigma.max())
        return low - 1e-6 <= value <= high + 1e-6

    def start_call(self, dm, x: torch.Tensor, previous_override) -> _Call:
        return _Call(self, *self.placed(dm, token_grid(x.shape, dm.patch_size), x.device, x.dtype), previous_override)

    def placed(self, dm, grid: tuple[int, int, int], device, dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Plan tokens `[1, P, dim]` on the device and their RoPE on this latent grid, checked and built once
        per (grid, device, dtype), not on every step of the sampler."""
        key = (grid, str(device), dtype)
        if key not in self._placed:
            plan = self.conditioning
            plan.bind(grid, dm.dim, len(dm.blocks))  # refuses a plan longer than the video, a foreign branch
            freqs = None
            if plan.use_rope:
                positions = plan_positions(plan.latent_frames, plan.grid_hw, grid[1:])  # [P, 3] (t, h, w)
                freqs = dm.rope_embedder(positions[None].to(device, torch.float32)).movedim(1, 2)  # [1, P, 1, D/2, 2, 2]
                freqs = freqs.to(dtype)
            self.branch.to(device)
            self._placed = {key: (plan.tokens.to(device), freqs)}
        return self._placed[key]

    def plan_attention(self, call: _Call, func, q: torch.Tensor, heads: int, **kwargs) -> torch.Tensor:
        """The plan attention of the running block on its cross-attention queries q `[B, L, H*D]` (normalised)."""
        module = self.branch.attn[str(call.block)]
        b, length = q.shape[:2]
        k, v = module.keys_values(call.tokens.expand(b, -1, -1).float(), None)  # [B, P, H, D] each
        if call.plan_freqs is not None:
            q = apply_rope1(q.view(b, length, heads, -1), call.video_freqs).flatten(2)  # [B, L, H*D]
            k = apply_rope1(k.to(q.dtype), call.plan_freqs)
        out = func(q, k.flatten(2).to(q.dtype), v.flatten(2).to(q.dtype), heads=heads, **kwargs)  # [B, L, H*D]
        return out * self.conditioning.strength


def token_grid(latent_shape, patch_size) -> tuple[int, int, int]:
    """(F', H', W') tokens of a latent `[B, C, F, H, W]` after ComfyUI pads it to the patch."""
    f, h, w = latent_shape[-3:]
    pt, ph, pw = patch_size
    return -(-f // pt), -(-h // ph), -(-w // pw)


def block_replacements(patches_replace: dict, num_blocks: int) -> dict:
    """A copy of patches_replace with a recording replacement on every block (chaining those already there)."""
    out = dict(patches_replace)
    dit = dict(out.get("dit", {}))
    for index in range(num_blocks):
        dit[("double_block", index)] = _recording_block(index, dit.get(("double_block", index)))
    out["dit"] = dit
    return out


def _recording_block(index: int, previous):
    def replace(args, extra):
        call = args["transformer_options"].get(STATE_KEY)
        if call is not None:
            call.enter(index, args["pe"])
        return previous(args, extra) if previous is not None else extra["original_block"](args)
    return replace


def attention_override(func, *args, **kwargs):
    """ComfyUI's attention override: the plain attention (or the override already set), plus the plan
    attention on a planned block's second call, its text cross-attention."""
    options = kwargs.get("transformer_options") or {}
    call: _Call | None = options.get(STATE_KEY)
    previous = None if call is None else call.previous_override
    out = previous(func, *args, **kwargs) if previous is not None else func(*args, **kwargs)
    if call is None or str(call.block) not in call.patch.branch.attn:
        return out
    call.attention_calls += 1
    if call.attention_calls != 2:
        return out
    heads = kwargs["heads"] if "heads" in kwargs else args[3]
    return out + call.patch.plan_attention(call, func, args[0], heads)
