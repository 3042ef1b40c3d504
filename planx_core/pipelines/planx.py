"""Text to video with a bundle: plan the keyframes with the planner, render them with the DiT, decode with the VAE.

The two-stage inference of Plan-X (arXiv 2511.17986, Fig. 2): the semantic planner reads the scene
and motion texts and writes keyframe tokens of the TA-Tok codebook; the Wan DiT renders the video
from the text features and the plan (through the semantic branch, `render.render`); the Wan VAE
decodes the latent. This module is the glue, this project's own; the parts live in `planner`,
`semantic_branch`, `render`, `sampling`, `text_encoder` and `vae`.

Texts. A prompt is split into scene and motion at its first sentence boundary (`split_prompt`):
"a red circle on a dark background. the red circle moves right." -> scene "a red circle on a dark
background", motion "the red circle moves right". The planner gets the two texts (no final
period), as it was trained on `world.Clip.scene` / `.motion`. The text encoder gets
`prompt_text(scene, motion)` = "{scene}. {motion}." (an empty part and its period are left out;
`text_encoder.join_prompt`, the DiT stage's training prompt), which is `world.Clip.caption` for
the world's captions. The negative prompt of text
guidance is the empty prompt "" (`prompt_text("", "")`), whose features are all zero.

Seeds. One seed drives both stages: the planner's sampling generator and the DiT's initial noise
(`sampling.initial_noise`), so `generate(seed=s)` is reproducible on the CPU.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..diffusion.rendering import latent_shape, render
from ..diffusion.sampling import Guidance, initial_noise
from ..files.video import image_tensor, video_to_frames
from ..plan.core import Plan, PlanError
from ..plan.picture import code_colours, plan_picture
from ..wan.text_encoder import join_prompt
from .bundle import EMBEDDED, Bundle, load_bundle

__all__ = ["FirstFrame", "Generation", "PlanXPipeline", "load_plan_file", "prompt_text", "split_prompt"]

_BOUNDARY = re.compile(r"[.!?](\s+|$)")
_TRAILING = ".!?;, \t\n"
_ONE_PASS_LATENT = 16 * 64 * 64  # latent voxels per channel decoded in one VAE pass (61 frames of 256x256 at 4x)


# ----------------------------------------------------------------------------- texts


def split_prompt(prompt: str) -> tuple[str, str]:
    """(scene, motion) of a prompt, cut at the first ".", "!" or "?" followed by a space or the end.

    Text before the mark is the scene, the rest the motion; final punctuation is dropped from
    both. A prompt without such a mark is all scene, with an empty motion.
    """
    match = _BOUNDARY.search(prompt.strip())
    if match is None:
        return _clean(prompt), ""
    text = prompt.strip()
    return _clean(text[: match.start()]), _clean(text[match.end() :])


def _clean(text: str) -> str:
    return " ".join(text.split()).rstrip(_TRAILING).strip()


def prompt_text(scene: str, motion: str) -> str:
    """The text-encoder prompt: "{scene}. {motion}." with empty parts left out ("" when both are empty);
    `text_encoder.join_prompt` (what the DiT stage trains on) of the cleaned texts."""
    return join_prompt(_clean(scene), _clean(motion))


# ----------------------------------------------------------------------------- results


@dataclass
class FirstFrame:
    """Image-to-video inputs of one image (`PlanXPipeline.first_frame`): TA-Tok codes `[g*g]` for the
    planner and the VAE latent `[1, C, 1, h, w]` pinned as latent frame 0 while sampling."""

    codes: torch.Tensor
    latent: torch.Tensor


@dataclass
class Generation:
    """What `PlanXPipeline.generate` made: frames `[T, H, W, 3]` uint8, the plan used (None: text
    only) and seconds per stage ("plan", "render")."""

    frames: np.ndarray
    plan: Plan | None
    seconds: dict[str, float] = field(default_factory=dict)


def _bar(total: int, desc: str, enabled: bool):
    return tqdm(
        total=total,
        desc=desc,
        unit="tok" if desc == "plan" else "step",
        disable=not enabled,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )


# ----------------------------------------------------------------------------- the pipeline


class PlanXPipeline:
    """Plan and render with one bundle (`bundle.load_bundle`). Defaults come from its bundle.json.

    `device`: where every stage runs (default: where the DiT is). `offload`: the parts live on the CPU
    and each stage moves only its own parts to `device` and back (planner and TA-Tok; the text encoder;
    DiT and branch; the VAE), so a 5B DiT, its umT5-XXL and its VAE never share the accelerator. On a
    CPU offload changes nothing. The DiT computes in its weights' dtype (bf16 weights: bf16 sampling).
    """

    def __init__(self, bundle: Bundle, device: str | torch.device | None = None, offload: bool = False):
        self.bundle = bundle.check()
        self.spec = bundle.spec
        self.device = torch.device(device) if device is not None else bundle.dit.patch_embedding.weight.device
        self.offload = bool(offload)
        self.dtype = bundle.dit.patch_embedding.weight.dtype  # compute dtype of sampling

    @classmethod
    def from_folder(
        cls,
        folder=EMBEDDED,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
    ) -> PlanXPipeline:
        """Load a bundle folder: on `device`, or on the CPU when offloading (each stage moves its parts)."""
        return cls(load_bundle(folder, device="cpu" if offload else device, dtype=dtype), device, offload)

    @contextmanager
    def using(self, *parts: torch.nn.Module):
        """The parts of one stage on the pipeline's device; with `offload`, back on the CPU afterwards."""
        if not self.offload:
            yield
            return
        for part in parts:
            part.to(self.device)
        try:
            yield
        finally:
            for part in parts:
                part.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def codebook_id(self):
        return self.bundle.codebook_id()

    # -- planning --------------------------------------------------------------------
    def plan(
        self,
        scene: str,
        motion: str,
        *,
        seed: int = 0,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        guidance_scale: float | None = None,
        persistence: float | None = None,
        candidates: int | None = None,
        lock_from: Plan | None = None,
        first_frame: FirstFrame | None = None,
        progress: bool = True,
    ) -> Plan:
        """A keyframe plan for the bundle's video, drawn by the planner with a tqdm bar over plan tokens.

        With `first_frame` (image-to-video) the planner reads its codes and keyframe 0 is them, locked."""
        v, p = self.spec.video, self.spec.planning
        bar = _bar(0, "plan", progress)

        def step(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            with self.using(self.bundle.planner.model, self.bundle.tatok):
                return self.bundle.planner.plan(
                    _clean(scene),
                    _clean(motion),
                    fps=v.fps,
                    num_frames=v.num_frames,
                    width=v.width,
                    height=v.height,
                    codebook=self.codebook_id,
                    keyframe_rate=v.keyframe_rate,
                    grid=(v.grid, v.grid),
                    seed=seed,
                    temperature=_pick(temperature, p.temperature_for(first_frame is not None)),
                    top_k=_pick(top_k, p.top_k),
                    top_p=_pick(top_p, p.top_p),
                    guidance_scale=_pick(guidance_scale, p.guidance_scale),
                    persistence=_pick(persistence, p.persistence),
                    candidates=_pick(candidates, p.candidates),
                    lock_from=lock_from,
                    progress=step,
                    first_frame_codes=None if first_frame is None else first_frame.codes,
                )
        finally:
            bar.close()

    def check_plan(self, plan: Plan) -> Plan:
        """Refuse a plan this bundle cannot render: another codebook, or longer than the video. The plan itself
        was validated where it was made (a file, the planner, `make_plan`, `apply_edits`), not again here."""
        self.check_fit(plan)
        plan.check_video(self.spec.video.num_frames, self.spec.video.fps)
        return plan

    def check_fit(self, plan: Plan) -> None:
        """The plan indexes this bundle's codebook and is timed and sized for its video: a plan made at another fps
        would put its keyframes on other frames (two of them can land on one latent frame)."""
        plan.check_codebook(self.codebook_id)
        v = self.spec.video
        if plan.fps != v.fps or (plan.width, plan.height) != (v.width, v.height):
            raise PlanError(
                f"the plan is for a {plan.width}x{plan.height} video at {plan.fps:g} fps, but bundle "
                f"{self.spec.name!r} renders {v.width}x{v.height} at {v.fps:g} fps; plan again with this bundle "
                f"(or resample the plan's keyframes and set its video to match)"
            )

    def draw(self, scene: str, motion: str, *, seed: int = 0, progress: bool = True) -> np.ndarray:
        """Frames `[T, H, W, 3]` uint8 of this bundle's text-to-video for the prompt (planned, then rendered at the
        bundle's own length, both with `seed`): a video drawn from the text to start another model's
        image-to-video (`semanticgen --draw-first-frame`, `semanticgen.drawn`)."""
        plan = self.plan(scene, motion, seed=seed, progress=progress)
        return self.render(plan, scene, motion, seed=seed, progress=progress)  # [T, H, W, 3]

    # -- image-to-video --------------------------------------------------------------
    @torch.inference_mode()
    def first_frame(self, image) -> FirstFrame:
        """An image `[H, W, 3]` (uint8, or float in [0, 1]) at the bundle's video size, as TI2V inputs."""
        v = self.spec.video
        nchw = image_tensor(image, v.height, v.width, self.spec.name).to(self.device)  # [1, 3, H, W] in [0, 1]
        with self.using(self.bundle.tatok, self.bundle.vae):
            codes = self.bundle.tatok.encode(nchw, grid=v.grid)[0].cpu()  # [g*g]
            latent = self.bundle.vae.encode(nchw[:, :, None] * 2 - 1)  # [1, C, 1, h, w]
        return FirstFrame(codes=codes, latent=latent)

    # -- rendering -------------------------------------------------------------------
    @torch.inference_mode()
    def text_features(self, scene: str, motion: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive, negative) text features `[1, text_len, text_dim]` each: the prompt and the empty prompt."""
        with self.using(self.bundle.text_encoder):
            features = self.bundle.text_encoder([prompt_text(scene, motion), prompt_text("", "")])  # [2, L, D]
        features = features.to(self.device)
        return features[:1], features[1:]

    def latent_shape(self) -> tuple[int, int, int, int, int]:
        """`[1, C, F, H, W]` of the bundle's video latent."""
        v, vae = self.spec.video, self.bundle.vae.config
        return latent_shape(
            v.width,
            v.height,
            v.num_frames,
            channels=vae.z_dim,
            spatial=vae.spatial_factor,
            temporal=vae.temporal_factor,
            patch=self.bundle.dit.config.patch_size[1],
        )

    def condition(self, plan: Plan, strength: float | None = None, rope: bool | None = None):
        """The plan as DiT conditioning (codebook vectors through the semantic branch); `rope=False`
        drops the plan tokens' 3D RoPE positions (the ablation)."""
        s, v = self.spec.sampling, self.spec.video
        codebook = self.bundle.tatok.codebook().to(self.device)  # [N, D]
        self.check_fit(plan)
        return self.bundle.branch.condition_plan(  # refuses a plan longer than the video
            plan,
            codebook,
            num_frames=v.num_frames,
            fps=v.fps,
            strength=_pick(strength, s.plan_strength),
            use_rope=_pick(rope, s.plan_rope),
        )

    @torch.inference_mode()
    def render(
        self,
        plan: Plan | None,
        scene: str,
        motion: str,
        *,
        seed: int = 0,
        steps: int | None = None,
        shift: float | None = None,
        solver: str | None = None,
        text_scale: float | None = None,
        plan_scale: float | None = None,
        strength: float | None = None,
        rope: bool | None = None,
        first_frame: FirstFrame | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Frames `[T, H, W, 3]` uint8 of the video for `plan` (None renders from the text alone);
        `first_frame` pins latent frame 0 to the image (Wan 2.2 TI2V)."""
        s = self.spec.sampling
        positive, negative = self.text_features(scene, motion)  # [1, L, D] each
        conditioning = None if plan is None else self.condition(plan, strength, rope)
        noise = initial_noise(self.latent_shape(), seed, self.dtype).to(self.device)  # [1, C, F, H, W]
        steps = _pick(steps, s.steps)
        guidance = Guidance(text_scale=_pick(text_scale, s.text_scale), plan_scale=_pick(plan_scale, s.plan_scale))
        bar = _bar(steps, "render", progress)
        try:
            with self.using(self.bundle.dit, self.bundle.branch):
                latent = render(
                    self.bundle.dit,
                    noise,
                    positive,
                    negative,
                    plan=conditioning,
                    steps=steps,
                    shift=_pick(shift, s.shift),
                    solver=_pick(solver, s.solver),
                    guidance=guidance,
                    first_frame_latent=None if first_frame is None else first_frame.latent,
                    callback=lambda i, n, x, x0: bar.update(1),
                    schedule=s.schedule,
                )  # [1, C, F, H, W]
        finally:
            bar.close()
        return video_to_frames(self.decode(latent))[0]  # [T, H, W, 3]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent `[1, C, F, H, W]` -> video `[1, 3, T, H', W']` in [-1, 1]; small clips in one pass
        (about twice as fast as the causal chunks, same result), larger ones chunk by chunk."""
        with self.using(self.bundle.vae):
            return self.bundle.vae.decode(latent, chunked=latent[0, 0].numel() > _ONE_PASS_LATENT)

    def generate(
        self,
        scene: str,
        motion: str,
        *,
        plan: Plan | None = None,
        use_plan: bool = True,
        seed: int = 0,
        progress: bool = True,
        planning: dict | None = None,
        first_frame: FirstFrame | None = None,
        **render_options,
    ) -> Generation:
        """Plan (unless a plan is given, or `use_plan` is False) then render.

        `planning`: keyword arguments of `plan` (temperature, top_k, ...); `render_options`: those of
        `render` (steps, shift, solver, text_scale, plan_scale, strength). A given plan is checked
        against the bundle's codebook and video before the DiT runs (`render`).
        """
        if plan is not None and not use_plan:
            raise ValueError("a plan was given but use_plan is False; drop one of the two (--plan or --no-plan)")
        seconds, start = {}, time.perf_counter()
        if plan is None and use_plan:
            plan = self.plan(scene, motion, seed=seed, progress=progress, first_frame=first_frame, **(planning or {}))
        seconds["plan"] = time.perf_counter() - start
        start = time.perf_counter()
        frames = self.render(
            plan, scene, motion, seed=seed, progress=progress, first_frame=first_frame, **render_options
        )
        seconds["render"] = time.perf_counter() - start
        return Generation(frames, plan, seconds)

    # -- pictures --------------------------------------------------------------------
    def plan_words(self, plan: Plan) -> list[list[str]]:
        """The planner's nearest word for every cell of every keyframe."""
        codes = sorted({int(c) for k in plan.keyframes for c in k.tokens})
        names = dict(zip(codes, self.bundle.planner.code_words(codes)))
        return [[names[int(c)] for c in k.tokens] for k in plan.keyframes]

    def plan_picture(self, plan: Plan, words: bool = True) -> torch.Tensor:
        """The plan's keyframes as coloured cells (with the planner's words): float `[H, W, 3]` in [0, 1]."""
        colours = code_colours(self.bundle.tatok.codebook(), key=self.codebook_id.digest)  # [N, 3]
        return plan_picture(plan, colours, words=self.plan_words(plan) if words else None)


def _pick(value, default):
    return default if value is None else value


def load_plan_file(path) -> Plan:
    """A plan JSON file; PlanError (with the file name) when it cannot be read or is not a valid plan."""
    try:
        with open(path, "rb") as handle:
            return Plan.from_json(handle.read())
    except OSError as err:
        raise PlanError(f"{path}: cannot read the plan file ({err.strerror or err})") from None
    except PlanError as err:
        raise PlanError(f"{path}: {err}") from None


# ----------------------------------------------------------------------------- command line


def _report(written: list[Path], result: Generation, load_s: float, total_s: float, scene, motion, args) -> None:
    source = "none (--no-plan)" if result.plan is None else (args.plan or "planned")
    print(f"scene:   {scene!r}\nmotion:  {motion!r}\nplan:    {source}")
    for path in written:
        print(f"wrote    {path}")
    t = result.seconds
    print(
        f"time:    {total_s:.1f} s (load {load_s:.1f} s, plan {t.get('plan', 0):.1f} s, "
        f"render {t.get('render', 0):.1f} s)"
    )
