"""SemanticGen end to end: text -> compact semantic plan (stage 1) -> video latents (stage 2) -> frames.

Source: SemanticGen (arXiv 2512.20619), Fig. 3(c): at inference the semantic generator samples
z_sem for the whole video with full attention; the latent generator denoises the VAE latents
with z_sem appended in-context, `[z_t, z_sem]`, and for long videos attends over the latents in
shifted windows along time; each window sees the semantic tokens of its own time span (and a
margin), or all of them with `window_semantics="global"` (`wan.windows`): stage 1's full
attention makes the plan globally consistent, so stage 2 stays linear in the video length.

A model folder holds `semanticgen.json` (`SemanticGenSpec`), `semantic_encoder.safetensors`,
`compressor.safetensors`, `latent_dit.safetensors` + `latent_branch.safetensors` (stage 2) and
`semantic_generator.safetensors` (stage 1); the text encoder and VAE are the folder's own
(`text_encoder/`, `vae.safetensors`) or, when absent, the embedded Plan-X bundle's.

Timing: semantic keyframes come `fps / keyframe_stride` times a second (2 fps at 8 fps) and are
placed by the one alignment rule (`plan.timing`). Stage 2 renders a continuous `Plan`, through the
branch's `condition_plan` with the plan's own keyframe times, exactly as Inject 3D RoPE Guidance
does in ComfyUI: stage 1's output becomes a plan first (`semantic_plan`), so an edited, retimed
plan and a fresh one take the same path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from .. import EMBEDDED
from ..diffusion.rendering import latent_shape, render
from ..diffusion.sampling import Guidance, initial_noise
from ..files.safetensors import CheckpointError
from ..files.video import image_tensor, video_to_frames
from ..plan.continuous import make_continuous_plan
from ..plan.core import CodebookId, Plan, Provenance
from ..plan.errors import PlanError
from ..plan.timing import keyframe_frames
from ..semantic_branch import SemanticBranch, load_branch, save_branch
from ..wan.dit import WanModel
from ..wan.dit_files import load_dit_file, save_dit
from ..wan.text_encoder import (
    TextEncoder,
    join_prompt,
    load_text_encoder,
    save_text_encoder,
)
from ..wan.vae_files import load_vae, save_vae
from ..wan.windows import SEMANTICS, WindowSpec
from .compressor import SemanticCompressor, load_compressor
from .encoder import SemanticEncoder
from .encoder_files import load_semantic_encoder, save_semantic_encoder
from .generator import check_fits, generate_semantics, keyframe_prompts

FILES = {
    "spec": "semanticgen.json",
    "encoder": "semantic_encoder.safetensors",
    "compressor": "compressor.safetensors",
    "latent_dit": "latent_dit.safetensors",
    "branch": "latent_branch.safetensors",
    "semantic_dit": "semantic_generator.safetensors",
}


@dataclass(frozen=True)
class SemanticGenSpec:
    """Video layout and sampling defaults of a SemanticGen model folder."""

    window: int = 2  # latent frames per attention window of stage 2 (0 = full attention)
    window_semantics: str = "local"  # stage 2: a window sees its own span's semantics ("local") or all ("global")
    window_margin: int = 0  # local: latent frames of semantics a window sees past each of its ends
    sem_dim: int = 8  # compressed semantic width
    fps: float = 8.0
    size: int = 64
    keyframe_stride: int = 4  # video frames between semantic keyframes (2 fps at 8 fps)
    steps: int = 20  # stage-2 steps
    semantic_steps: int = 30  # stage-1 Euler steps
    shift: float = 3.0
    text_scale: float = 1.0  # stage-2 text guidance
    plan_scale: float = 1.0  # stage-2 guidance by the semantic plan (its tokens dropped in training)
    semantic_text_scale: float = 1.0  # stage-1 text guidance
    semantic_cues: bool = False  # stage 1 reads one text per keyframe (`generator.keyframe_prompts`)
    semantic_sequential: bool = False  # stage 1 writes one keyframe after another (`generator.generate_semantics`)
    name: str = "semanticgen-tiny"

    def __post_init__(self):
        if self.window_semantics not in SEMANTICS:
            raise ValueError(f"window_semantics must be one of {SEMANTICS}, got {self.window_semantics!r}")
        if not isinstance(self.window_margin, int) or isinstance(self.window_margin, bool) or self.window_margin < 0:
            raise ValueError(f"window_margin must be a whole number of latent frames >= 0, got {self.window_margin!r}")
        for name in ("semantic_cues", "semantic_sequential"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def to_json(self) -> str:
        return json.dumps({"format": "planx.semanticgen", "version": 1, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: Path) -> SemanticGenSpec:
        data = json.loads(text)
        if data.get("format") != "planx.semanticgen":
            raise CheckpointError(f"{source}: not a SemanticGen description (format {data.get('format')!r})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class SemanticStart:
    """Image-to-video inputs of one image (`SemanticGen.first_frame`): its semantics `[1, gh, gw, D]`, given to
    stage 1 as keyframe 0, and its VAE latent `[1, C, 1, h, w]`, pinned as stage 2's latent frame 0 (Wan TI2V).
    `semantics` may hold P leading keyframes `[P, gh, gw, D]` (`drawn.drawn_start`); stage 1 samples the rest,
    each from its `sketch` keyframe `[K, gh, gw, D]` noised to `sketch_sigma` where one is given."""

    semantics: torch.Tensor
    latent: torch.Tensor
    sketch: torch.Tensor | None = None
    sketch_sigma: float = 1.0


def _part(folder: Path, name: str) -> Path:
    path = folder / FILES[name]
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: {FILES[name]} is missing; a SemanticGen folder needs "
            f"{', '.join(FILES.values())} (copy the whole folder)"
        )
    return path


class SemanticGen:
    """The two SemanticGen stages with their encoder, compressor, text encoder and VAE."""

    def __init__(
        self,
        spec: SemanticGenSpec,
        encoder: SemanticEncoder,
        compressor: SemanticCompressor,
        latent_dit: WanModel,
        branch: SemanticBranch,
        semantic_dit: WanModel | None,
        text: TextEncoder,
        vae,
    ):
        self.spec, self.encoder, self.compressor = spec, encoder, compressor
        self.latent_dit, self.branch, self.semantic_dit, self.text, self.vae = (
            latent_dit,
            branch,
            semantic_dit,
            text,
            vae,
        )

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, folder=EMBEDDED / "semanticgen", need_semantic: bool = True) -> SemanticGen:
        folder = Path(folder)
        spec = SemanticGenSpec.from_json(_part(folder, "spec").read_text(), folder)
        semantic = load_dit_file(_part(folder, "semantic_dit")) if need_semantic else None
        if semantic is not None:
            check_fits(semantic, (spec.sem_dim,))
        text = load_text_encoder(
            folder / "text_encoder" if (folder / "text_encoder").is_dir() else EMBEDDED / "text_encoder"
        )
        vae_file = folder / "vae.safetensors"
        vae = load_vae(vae_file if vae_file.is_file() else EMBEDDED / "vae.safetensors")
        return cls(
            spec,
            load_semantic_encoder(_part(folder, "encoder")).eval(),
            load_compressor(_part(folder, "compressor")).eval(),
            load_dit_file(_part(folder, "latent_dit")),
            load_branch(_part(folder, "branch")),
            semantic,
            text.eval(),
            vae.eval(),
        )

    def save(self, folder, *, with_shared: bool = False) -> Path:
        """Write every part (text encoder and VAE too when `with_shared`) and semanticgen.json."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FILES["spec"]).write_text(self.spec.to_json())
        save_semantic_encoder(self.encoder, folder / FILES["encoder"])
        self.compressor.save(folder / FILES["compressor"])
        save_dit(self.latent_dit, folder / FILES["latent_dit"])
        save_branch(self.branch, folder / FILES["branch"])
        if self.semantic_dit is not None:
            save_dit(self.semantic_dit, folder / FILES["semantic_dit"])
        if with_shared:
            save_text_encoder(self.text, folder / "text_encoder")
            save_vae(self.vae, folder / "vae.safetensors")
        return folder

    def with_semantic(self, semantic_dit: WanModel) -> SemanticGen:
        return SemanticGen(
            self.spec, self.encoder, self.compressor, self.latent_dit, self.branch, semantic_dit, self.text, self.vae
        )

    def with_spec(self, **changes) -> SemanticGen:
        return SemanticGen(
            replace(self.spec, **changes),
            self.encoder,
            self.compressor,
            self.latent_dit,
            self.branch,
            self.semantic_dit,
            self.text,
            self.vae,
        )

    def with_windowing(self, window=None, semantics=None, margin=None) -> SemanticGen:
        """This model with stage 2's window, window semantics and margin changed where given (None: keep)."""
        changes = {"window": window, "window_semantics": semantics, "window_margin": margin}
        return self.with_spec(**{k: v for k, v in changes.items() if v is not None})

    # -- pieces ------------------------------------------------------------------------------
    @property
    def keyframe_rate(self) -> float:
        """Semantic keyframes a second: one every `keyframe_stride` video frames."""
        return self.spec.fps / self.spec.keyframe_stride

    def keyframe_frames(self, num_frames: int) -> tuple[list[float], list[int]]:
        """(times, video frames) of the semantic keyframes of a video of `num_frames` frames."""
        return keyframe_frames(num_frames, self.spec.fps, self.keyframe_rate)

    def keyframes(self, num_frames: int) -> int:
        """Semantic keyframes of a video of `num_frames` frames."""
        return len(self.keyframe_frames(num_frames)[0])

    @torch.inference_mode()
    def contexts(self, scene: str, motion: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, empty) text features `[1, L, Dt]`; the empty one is zeros, as in training."""
        positive = self.text([join_prompt(scene, motion)])  # [1, L, Dt]
        return positive, torch.zeros_like(positive)

    @torch.inference_mode()
    def semantic_contexts(self, scene: str, motion: str, num_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1's (prompt, empty) text features: `contexts`, or with `semantic_cues` one text per keyframe
        `[1, K, L, Dt]` (`keyframe_prompts`, as in training)."""
        if not self.spec.semantic_cues:
            return self.contexts(scene, motion)
        texts = keyframe_prompts(scene, motion, num_frames, self.spec.fps, self.keyframe_rate)
        positive = self.text(texts)[None]  # [1, K, L, Dt]
        return positive, torch.zeros_like(positive)

    @torch.inference_mode()
    def encode_semantics(self, video: torch.Tensor) -> torch.Tensor:
        """Ground-truth z_sem of a video `[3, T, H, W]` in [-1, 1]: compressor means `[K, gh, gw, D]`."""
        indices = self.keyframe_frames(video.shape[1])[1]
        return self.frame_semantics(video[:, indices].transpose(0, 1))  # [K, gh, gw, D]

    def frame_semantics(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames `[K, 3, H, W]` in [-1, 1] -> compressor means `[K, gh, gw, D]`."""
        return self.compressor(self.encoder.encode(frames), sample=False).mean

    @torch.inference_mode()
    def first_frame(self, image) -> SemanticStart:
        """An image `[H, W, 3]` (uint8, or float in [0, 1]) at the model's size, as image-to-video inputs."""
        frames = image_tensor(image, self.spec.size, self.spec.size, self.spec.name) * 2 - 1  # [1, 3, H, W]
        semantics = self.frame_semantics(frames.to(next(self.encoder.parameters()).device))  # [1, gh, gw, D]
        return SemanticStart(semantics, self.vae.encode(frames[:, :, None].to(next(self.vae.parameters()).device)))

    @torch.inference_mode()
    def plan_semantics(
        self,
        scene: str,
        motion: str,
        *,
        num_frames: int,
        seed: int = 0,
        steps: int | None = None,
        start: SemanticStart | None = None,
        callback=None,
        interrupt=None,
    ) -> torch.Tensor:
        """Stage 1: z_sem `[K, gh, gw, D]` for the prompt, the whole video in one go (or, with
        `semantic_sequential`, one keyframe after another; `callback` then counts `K * steps` steps). With
        `start` (image-to-video) keyframe 0 is the image's semantics (and keyframes 1..P-1 a drawn video's,
        `drawn.drawn_start`) and the others are sampled after them (sequential: `(K - P) * steps` steps)."""
        if self.semantic_dit is None:
            raise ValueError("this SemanticGen has no semantic generator (stage 1) loaded; load the full folder")
        positive, negative = self.semantic_contexts(scene, motion, num_frames)
        grid = self.semantic_grid()
        z = generate_semantics(
            self.semantic_dit,
            positive,
            negative,
            keyframes=self.keyframes(num_frames),
            grid=grid,
            steps=steps or self.spec.semantic_steps,
            shift=self.spec.shift,
            text_scale=self.spec.semantic_text_scale,
            seed=seed,
            sequential=self.spec.semantic_sequential,
            given=None if start is None else start.semantics[None],  # [1, P, gh, gw, D]
            sketch=None if start is None or start.sketch is None else start.sketch[None],  # [1, K, gh, gw, D]
            sketch_sigma=1.0 if start is None else start.sketch_sigma,
            callback=callback,
            interrupt=interrupt,
        )
        return z[0]  # [K, gh, gw, D]

    def semantic_grid(self) -> tuple[int, int]:
        g = self.encoder.grid_for(self.spec.size, self.spec.size)
        return int(g[0]), int(g[1])

    @torch.inference_mode()
    def render_latent(
        self,
        plan: Plan | None,
        scene: str,
        motion: str,
        *,
        num_frames: int,
        seed: int = 0,
        window: int | None = None,
        steps: int | None = None,
        start: SemanticStart | None = None,
        callback=None,
        interrupt=None,
    ) -> torch.Tensor:
        """Stage 2: the video latent `[1, C, F, h, w]` for a continuous plan at its own keyframe times
        (None: no semantic plan); with `start`, latent frame 0 is the image's."""
        positive, negative = self.contexts(scene, motion)
        vae = self.vae.config
        shape = latent_shape(
            self.spec.size,
            self.spec.size,
            num_frames,
            channels=vae.z_dim,
            spatial=vae.spatial_factor,
            temporal=vae.temporal_factor,
            patch=self.latent_dit.config.patch_size[1],
        )
        cond = None if plan is None else self.condition(plan, num_frames)
        window = self.spec.window if window is None else window
        spec = WindowSpec(window, self.spec.window_semantics, self.spec.window_margin) if window else None
        return render(
            self.latent_dit,
            initial_noise(shape, seed),
            positive,
            negative,
            plan=cond,
            steps=steps or self.spec.steps,
            shift=self.spec.shift,
            solver="unipc",
            guidance=Guidance(text_scale=self.spec.text_scale, plan_scale=self.spec.plan_scale),
            window=spec,
            first_frame_latent=None if start is None else start.latent,
            callback=callback,
            interrupt=interrupt,
        )

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """Latent `[1, C, F, h, w]` -> frames `[T, H, W, 3]` uint8."""
        return video_to_frames(self.vae.decode(latent, chunked=latent.shape[2] > 8))[0]

    # -- end to end -----------------------------------------------------------------------------
    def generate(
        self,
        scene: str,
        motion: str,
        *,
        num_frames: int,
        seed: int = 0,
        window: int | None = None,
        use_semantics: bool = True,
        start: SemanticStart | None = None,
    ) -> tuple[np.ndarray, torch.Tensor | None]:
        """Text (and with `start`, a first frame) -> (frames `[T, H, W, 3]` uint8, z_sem `[K, gh, gw, D]` or None
        without a semantic plan)."""
        z = self.plan_semantics(scene, motion, num_frames=num_frames, seed=seed, start=start) if use_semantics else None
        plan = None if z is None else self.semantic_plan(z, num_frames=num_frames, scene=scene, motion=motion)
        latent = self.render_latent(plan, scene, motion, num_frames=num_frames, seed=seed, window=window, start=start)
        return self.decode(latent), z

    def digest(self) -> str:
        return self.compressor.digest()

    def semantic_plan(
        self, z: torch.Tensor, *, num_frames: int, scene: str = "", motion: str = "", seed: int | None = None
    ) -> Plan:
        """z_sem `[K, gh, gw, D]` as a continuous Plan at the semantic keyframe times of `num_frames` frames."""
        s = self.spec
        times = self.keyframe_frames(num_frames)[0]
        if len(times) != z.shape[0]:
            raise ValueError(
                f"z_sem has {z.shape[0]} keyframes, but a video of {num_frames} frames at {s.fps:g} fps "
                f"has {len(times)} semantic keyframes; plan for the same number of frames"
            )
        space = CodebookId(f"{s.name}-kl{z.shape[-1]}", int(z.shape[-1]), self.digest())
        return make_continuous_plan(
            z.float().cpu(),
            times=times,
            fps=s.fps,
            num_frames=num_frames,
            width=s.size,
            height=s.size,
            space=space,
            provenance=Provenance(scene=scene, motion=motion, seed=seed, planner=s.name),
        )

    def check_plan(self, plan: Plan, num_frames: int | None = None) -> Plan:
        """Refuse a plan this model cannot render: not continuous, another semantic space, grid or fps, or
        (with `num_frames`) keyframes after the video's end."""
        if plan.kind != "continuous":
            raise PlanError(
                "SemanticGen renders continuous plans; this plan holds TA-Tok tokens (use the Plan-X sampler)"
            )
        if plan.codebook.size != self.spec.sem_dim or (plan.codebook.digest and plan.codebook.digest != self.digest()):
            raise PlanError(
                f"the plan was made in {plan.codebook.describe()}, but this model's semantic space is "
                f"{self.spec.sem_dim}-d with hash {self.digest()}; plan again with this model"
            )
        if tuple(plan.grid) != self.semantic_grid():
            raise PlanError(
                f"the plan's grid is {plan.grid[0]}x{plan.grid[1]}, this model's semantic grid is "
                f"{self.semantic_grid()[0]}x{self.semantic_grid()[1]}"
            )
        if plan.fps != self.spec.fps:
            raise PlanError(
                f"the plan is timed for a video at {plan.fps:g} fps, but {self.spec.name} renders "
                f"{self.spec.fps:g} fps; resample the plan's keyframes or plan again with this model"
            )
        if num_frames is not None:
            plan.check_video(num_frames, self.spec.fps)
        return plan

    def plan_vectors(self, plan: Plan) -> torch.Tensor:
        """A continuous Plan made for this model -> its vectors `[K, gh, gw, D]` (after `check_plan`)."""
        self.check_plan(plan)
        return plan.vector_tensor().reshape(len(plan.keyframes), *plan.grid, -1)  # [K, gh, gw, D]

    def condition(self, plan: Plan, num_frames: int):
        """Stage 2's conditioning on a continuous plan, at the plan's keyframe times, for `num_frames` frames
        (the branch's `condition_plan`, as Inject 3D RoPE Guidance calls it)."""
        self.check_plan(plan)
        # condition_plan refuses a plan longer than the video
        return self.branch.condition_plan(plan, None, num_frames=num_frames, fps=self.spec.fps)
