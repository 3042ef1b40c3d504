"""SemanticGen's stage 1: a text-conditioned flow-matching transformer over compact semantic tokens.

Source: SemanticGen (arXiv 2512.20619), Sec. 3 and Fig. 3(b): a diffusion model generates the
compressed semantic representation z_sem of the whole video in one go, with full attention over
all its tokens, conditioned on text; rectified flow z_t = (1 - t) z_0 + t eps, Euler sampling.
Its architecture is not published. Here it is this package's Wan DiT (`dit.WanModel`) with
patch 1x1x1 over the semantic grid: z_sem `[K, gh, gw, D]` (K keyframes at ~2 fps, a gh x gw
merged-patch grid, D = the compressor width) is read as a tiny "video" `[D, K, gh, gw]`, so the
same 3D RoPE, timestep modulation and text cross-attention apply, and attention is full because
no window is passed. With keyframe cues (`SemanticGenSpec.semantic_cues`, this project's addition) each
keyframe's tokens cross-attend to their own text (`keyframe_prompts`: the scene and the stage of the motion that
steers that keyframe, by the planner's cue rule), so the order of the stages is given, not learned. A sequential
stage 1 (`SemanticGenSpec.semantic_sequential`, also this project's: the way the Plan-X planner writes its plan)
samples one keyframe after another, the ones before it given clean at timestep 0 (Wan TI2V's pinned frame, for a
prefix), so each keyframe is written from the last one and its own text.
"""

from __future__ import annotations

import torch

from ..diffusion.rendering import render
from ..diffusion.sampling import Guidance
from ..plan.timing import keyframe_frames
from ..planner.prompt import keyframe_cues
from ..wan.configs import DiTConfig
from ..wan.dit import WanModel
from ..wan.text_encoder import join_prompt


def semantic_generator_config(
    dim: int,
    *,
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    text_dim: int = 64,
    text_len: int = 64,
    name: str = "semanticgen-semantic",
) -> DiTConfig:
    """A Wan-architecture DiT over `dim`-wide semantic tokens (patch 1x1x1, in = out = dim)."""
    return DiTConfig(
        dim=width,
        ffn_dim=4 * width,
        num_heads=heads,
        num_layers=layers,
        in_dim=dim,
        out_dim=dim,
        text_dim=text_dim,
        freq_dim=64,
        patch_size=(1, 1, 1),
        text_len=text_len,
        name=name,
    )


def keyframe_prompts(scene: str, motion: str, num_frames: int, fps: float, keyframe_rate: float) -> list[str]:
    """One text per semantic keyframe of a `num_frames` video: the scene and the stage of the motion text that
    holds the middle of the step into that keyframe (`planner.prompt.keyframe_cues`; keyframe 0 the scene alone)."""
    count = len(keyframe_frames(num_frames, fps, keyframe_rate)[0])
    cues = keyframe_cues(motion, count, keyframe_rate, (num_frames - 1) / fps)
    return [join_prompt(scene, cue) for cue in cues]


def to_latent(z: torch.Tensor) -> torch.Tensor:
    """Semantic tokens `[B, K, gh, gw, D]` -> the generator's latent layout `[B, D, K, gh, gw]`."""
    return z.permute(0, 4, 1, 2, 3)


def from_latent(x: torch.Tensor) -> torch.Tensor:
    """`[B, D, K, gh, gw]` -> semantic tokens `[B, K, gh, gw, D]`."""
    return x.permute(0, 2, 3, 4, 1)


def check_fits(model: WanModel, z_shape: tuple[int, ...]) -> None:
    """Refuse semantic tokens `[B, K, gh, gw, D]` whose width is not the generator's."""
    if model.config.patch_size != (1, 1, 1):
        raise ValueError(
            f"{model.config.name}: a semantic generator has patch 1x1x1, this DiT has "
            f"{model.config.patch_size}; load the semantic-generator file, not a video DiT"
        )
    if z_shape[-1] != model.config.in_dim:
        raise ValueError(
            f"semantic tokens are {z_shape[-1]} wide but the semantic generator makes "
            f"{model.config.in_dim}-wide tokens; use the compressor it was trained with"
        )


@torch.inference_mode()
def generate_semantics(
    model: WanModel,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    keyframes: int,
    grid: tuple[int, int],
    steps: int = 30,
    shift: float = 3.0,
    text_scale: float = 1.0,
    seed: int = 0,
    sequential: bool = False,
    given: torch.Tensor | None = None,
    sketch: torch.Tensor | None = None,
    sketch_sigma: float = 1.0,
    callback=None,
    interrupt=None,
) -> torch.Tensor:
    """Sample z_sem `[B, K, gh, gw, D]` for text contexts `[B, L, text_dim]` (or one per keyframe
    `[B, K, L, text_dim]`) with Euler steps (the paper's sampler); `sequential`: keyframe by keyframe, each
    sampled with the ones before it given (`callback(i, total, ...)` then counts `(K - P) * steps` steps).
    `given` `[B, P, gh, gw, D]`: the first P keyframes, kept as they are (image-to-video: the image's semantics).
    `sketch` `[B, K, gh, gw, D]`: every sampled keyframe starts from its sketch noised to `sketch_sigma` (SDEdit,
    `sampling.sample`'s init) instead of pure noise (`drawn.drawn_start`: a drawn video's semantics)."""
    if keyframes < 1 or min(grid) < 1:
        raise ValueError(
            f"cannot generate {keyframes} keyframes of a {grid[0]}x{grid[1]} grid; need at least one of each"
        )
    shape = (positive.shape[0], model.config.in_dim, keyframes, *grid)  # [B, D, K, gh, gw]
    prefix = _given(given, shape)  # [B, D, P, gh, gw] or None
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(int(seed))).to(positive)
    init = None if sketch is None else _checked_sketch(sketch, shape)  # [B, D, K, gh, gw]
    options = {"steps": steps, "shift": shift, "solver": "euler", "interrupt": interrupt, "init_sigma": sketch_sigma}
    options["guidance"] = Guidance(text_scale=text_scale, plan_scale=1.0)
    done = 0 if prefix is None else prefix.shape[2]
    if done == keyframes:
        return from_latent(prefix)
    if not sequential:
        return from_latent(
            render(model, noise, positive, negative, first_frame_latent=prefix, init=init, callback=callback, **options)
        )
    x = noise[:, :, :0] if prefix is None else prefix.to(noise)  # [B, D, k, gh, gw]: the keyframes written so far
    for k in range(done, keyframes):
        x = render(
            model,
            noise[:, :, : k + 1],  # [B, D, k + 1, gh, gw]
            first_keyframes(positive, k + 1),
            first_keyframes(negative, k + 1),
            first_frame_latent=x if k else None,
            init=None if init is None else init[:, :, : k + 1],  # [B, D, k + 1, gh, gw]
            callback=_offset(callback, (k - done) * steps, (keyframes - done) * steps),
            **options,
        )
    return from_latent(x)  # [B, K, gh, gw, D]


def _given(given: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Given leading keyframes `[B, P, gh, gw, D]` in the generator's layout `[B, D, P, gh, gw]`, after checking
    they fit `shape` `[B, D, K, gh, gw]`."""
    if given is None:
        return None
    b, d, k, gh, gw = shape
    if given.dim() != 5 or given.shape[0] != b or tuple(given.shape[2:]) != (gh, gw, d) or not 1 <= given.shape[1] <= k:
        raise ValueError(
            f"given keyframes must be [B, P, gh, gw, D] = [{b}, P, {gh}, {gw}, {d}] with 1 <= P <= {k}, got "
            f"{list(given.shape)}; encode the image with the same model"
        )
    return to_latent(given)


def _checked_sketch(sketch: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A sketch of every keyframe `[B, K, gh, gw, D]` in the generator's layout `[B, D, K, gh, gw]`, after checking
    it fits `shape`."""
    b, d, k, gh, gw = shape
    if tuple(sketch.shape) != (b, k, gh, gw, d):
        raise ValueError(
            f"a sketch of the keyframes must be [B, K, gh, gw, D] = [{b}, {k}, {gh}, {gw}, {d}], got "
            f"{list(sketch.shape)}; encode the drawn video with the same model at this video's length"
        )
    return to_latent(sketch)


def first_keyframes(context: torch.Tensor, count: int) -> torch.Tensor:
    """A per-keyframe text context `[B, K, L, D]` cut to its first `count` keyframes; one text `[B, L, D]` as is."""
    return context[:, :count] if context.dim() == 4 else context


def _offset(callback, done: int, total: int):
    """`callback(i, steps, ...)` of one keyframe's sampling, reported as step `done + i` of `total`."""
    return None if callback is None else (lambda i, _steps, *rest: callback(done + i, total, *rest))
