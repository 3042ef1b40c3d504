"""SemanticGen end to end: text -> compact semantic plan (stage 1) -> video latents (stage 2) -> frames.

Source: SemanticGen (arXiv 2512.20619), Fig. 3(c): at inference the semantic generator samples
z_sem for the whole video with full attention; the latent generator denoises the VAE latents
with z_sem appended in-context, `[z_t, z_sem]`, and for long videos attends over the latents in
shifted windows along time while every window sees all semantic tokens (`window_attention`).

A model folder holds `semanticgen.json` (`SemanticGenSpec`), `semantic_encoder.safetensors`,
`compressor.safetensors`, `latent_dit.safetensors` + `latent_branch.safetensors` (stage 2) and
`semantic_generator.safetensors` (stage 1); the text encoder and VAE are the folder's own
(`text_encoder/`, `vae.safetensors`) or, when absent, the embedded Plan-X bundle's.

Timing (this project's alignment rule): semantic keyframes every `keyframe_stride` frames (2 fps at
8 fps), so keyframe k sits on latent frame k * stride / 4 (the VAE's temporal factor).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from . import world
from .checkpoint import CheckpointError, check_safetensors_header, read_safetensors, save_safetensors
from .configs import DiTConfig
from .dit import WanModel
from .plan import CodebookId, Plan, Provenance
from .plan_continuous import make_continuous_plan
from .render import latent_shape, render
from .sampling import Guidance, initial_noise
from .semantic_branch import SemanticBranch, load_branch, save_branch
from .semantic_compressor import SemanticCompressor, load_compressor
from .semantic_encoder import SemanticEncoder, load_semantic_encoder, save_semantic_encoder
from .semantic_generator import check_fits, generate_semantics
from .text_encoder import TextEncoder, join_prompt, load_text_encoder, save_text_encoder
from .train_vae import clip_video
from .vae_files import load_vae, save_vae
from .video_io import video_to_frames

EMBEDDED = Path(__file__).parent / "embedded"
SHORT_WORLD = world.WorldConfig()  # 17 frames at 8 fps: the training clip length
LONG_WORLD = world.WorldConfig(num_frames=65, speed=0.5, max_stages=4)  # 4x: the long-video mode (4 stages
# keep every prompt within the tiny text encoder's 64 tokens)
_DIT_KEY = "planx_dit_config"
FILES = {"spec": "semanticgen.json", "encoder": "semantic_encoder.safetensors", "compressor": "compressor.safetensors",
         "latent_dit": "latent_dit.safetensors", "branch": "latent_branch.safetensors",
         "semantic_dit": "semantic_generator.safetensors"}


@dataclass(frozen=True)
class SemanticGenSpec:
    """Video layout and sampling defaults of a SemanticGen model folder."""

    window: int = 2                 # latent frames per attention window of stage 2 (0 = full attention)
    sem_dim: int = 8                # compressed semantic width
    fps: float = 8.0
    size: int = 64
    keyframe_stride: int = 4        # video frames between semantic keyframes (2 fps at 8 fps)
    steps: int = 20                 # stage-2 steps
    semantic_steps: int = 30        # stage-1 Euler steps
    shift: float = 3.0
    text_scale: float = 1.0         # stage-2 text guidance
    semantic_text_scale: float = 1.0  # stage-1 text guidance
    name: str = "semanticgen-tiny"

    def to_json(self) -> str:
        return json.dumps({"format": "planx.semanticgen", "version": 1, **asdict(self)}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: Path) -> "SemanticGenSpec":
        data = json.loads(text)
        if data.get("format") != "planx.semanticgen":
            raise CheckpointError(f"{source}: not a SemanticGen description (format {data.get('format')!r})")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def keyframe_latent_frames(count: int, stride: int = 4, temporal_factor: int = 4) -> list[float]:
    """Latent frame of each of `count` semantic keyframes `stride` video frames apart."""
    return [k * stride / temporal_factor for k in range(count)]


def save_dit(model: WanModel, path: Path) -> None:
    """A DiT's weights with its config in the metadata (so the file loads without a bundle)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, path, metadata={_DIT_KEY: json.dumps(asdict(model.config))})


def load_dit_file(path: Path) -> WanModel:
    """A DiT written by `save_dit`; refuses a file without the config or with other weights."""
    raw = (check_safetensors_header(path).get("__metadata__") or {}).get(_DIT_KEY)
    if raw is None:
        raise CheckpointError(f"{path}: no '{_DIT_KEY}' metadata; this is not a SemanticGen DiT file, re-export it")
    cfg = json.loads(raw)
    model = WanModel(DiTConfig(**{**cfg, "patch_size": tuple(cfg["patch_size"])}))
    state = read_safetensors(path)
    missing, unexpected = model.state_dict().keys() - state.keys(), state.keys() - model.state_dict().keys()
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit its own config (missing {sorted(missing)[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]}); the file is damaged, re-export it")
    model.load_state_dict(state)
    return model.eval()


def _part(folder: Path, name: str) -> Path:
    path = folder / FILES[name]
    if not path.is_file():
        raise CheckpointError(f"{folder}: {FILES[name]} is missing; a SemanticGen folder needs "
                              f"{', '.join(FILES.values())} (copy the whole folder)")
    return path


class SemanticGen:
    """The two SemanticGen stages with their encoder, compressor, text encoder and VAE."""

    def __init__(self, spec: SemanticGenSpec, encoder: SemanticEncoder, compressor: SemanticCompressor,
                 latent_dit: WanModel, branch: SemanticBranch, semantic_dit: WanModel | None,
                 text: TextEncoder, vae):
        self.spec, self.encoder, self.compressor = spec, encoder, compressor
        self.latent_dit, self.branch, self.semantic_dit, self.text, self.vae = latent_dit, branch, semantic_dit, text, vae

    # -- files ---------------------------------------------------------------------------
    @classmethod
    def load(cls, folder=EMBEDDED / "semanticgen", need_semantic: bool = True) -> "SemanticGen":
        folder = Path(folder)
        spec = SemanticGenSpec.from_json(_part(folder, "spec").read_text(), folder)
        semantic = load_dit_file(_part(folder, "semantic_dit")) if need_semantic else None
        if semantic is not None:
            check_fits(semantic, (spec.sem_dim,))
        text = load_text_encoder(folder / "text_encoder" if (folder / "text_encoder").is_dir() else EMBEDDED / "text_encoder")
        vae_file = folder / "vae.safetensors"
        vae = load_vae(vae_file if vae_file.is_file() else EMBEDDED / "vae.safetensors")
        return cls(spec, load_semantic_encoder(_part(folder, "encoder")).eval(),
                   load_compressor(_part(folder, "compressor")).eval(), load_dit_file(_part(folder, "latent_dit")),
                   load_branch(_part(folder, "branch")), semantic, text.eval(), vae.eval())

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

    def with_semantic(self, semantic_dit: WanModel) -> "SemanticGen":
        return SemanticGen(self.spec, self.encoder, self.compressor, self.latent_dit, self.branch, semantic_dit,
                           self.text, self.vae)

    def with_spec(self, **changes) -> "SemanticGen":
        return SemanticGen(replace(self.spec, **changes), self.encoder, self.compressor, self.latent_dit,
                           self.branch, self.semantic_dit, self.text, self.vae)

    # -- pieces ------------------------------------------------------------------------------
    def keyframes(self, num_frames: int) -> int:
        """Semantic keyframes of a video of `num_frames` frames (one every `keyframe_stride` frames)."""
        return (num_frames - 1) // self.spec.keyframe_stride + 1

    @torch.inference_mode()
    def contexts(self, scene: str, motion: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt, empty) text features `[1, L, Dt]`; the empty one is zeros, as in training."""
        positive = self.text([join_prompt(scene, motion)])  # [1, L, Dt]
        return positive, torch.zeros_like(positive)

    @torch.inference_mode()
    def encode_semantics(self, video: torch.Tensor) -> torch.Tensor:
        """Ground-truth z_sem of a video `[3, T, H, W]` in [-1, 1]: compressor means `[K, gh, gw, D]`."""
        frames = video[:, ::self.spec.keyframe_stride].transpose(0, 1)  # [K, 3, H, W]
        return self.compressor(self.encoder.encode(frames), sample=False).mean  # [K, gh, gw, D]

    @torch.inference_mode()
    def plan_semantics(self, scene: str, motion: str, *, num_frames: int, seed: int = 0, steps: int | None = None,
                       callback=None, interrupt=None) -> torch.Tensor:
        """Stage 1: z_sem `[K, gh, gw, D]` for the prompt, the whole video in one go."""
        if self.semantic_dit is None:
            raise ValueError("this SemanticGen has no semantic generator (stage 1) loaded; load the full folder")
        positive, negative = self.contexts(scene, motion)
        grid = self.semantic_grid()
        z = generate_semantics(self.semantic_dit, positive, negative, keyframes=self.keyframes(num_frames), grid=grid,
                               steps=steps or self.spec.semantic_steps, shift=self.spec.shift,
                               text_scale=self.spec.semantic_text_scale, seed=seed, callback=callback,
                               interrupt=interrupt)
        return z[0]  # [K, gh, gw, D]

    def semantic_grid(self) -> tuple[int, int]:
        g = self.encoder.grid_for(self.spec.size, self.spec.size)
        return int(g[0]), int(g[1])

    @torch.inference_mode()
    def render_latent(self, z: torch.Tensor | None, scene: str, motion: str, *, num_frames: int, seed: int = 0,
                      window: int | None = None, steps: int | None = None, callback=None, interrupt=None
                      ) -> torch.Tensor:
        """Stage 2: the video latent `[1, C, F, h, w]` for z_sem `[K, gh, gw, D]` (None: no semantic plan)."""
        positive, negative = self.contexts(scene, motion)
        vae = self.vae.config
        shape = latent_shape(self.spec.size, self.spec.size, num_frames, channels=vae.z_dim,
                             spatial=vae.spatial_factor, temporal=vae.temporal_factor,
                             patch=self.latent_dit.config.patch_size[1])
        cond = None
        if z is not None:
            cond = self.branch.condition(z.reshape(1, -1, z.shape[-1]),
                                         keyframe_latent_frames(z.shape[0], self.spec.keyframe_stride), z.shape[1:3])
        window = self.spec.window if window is None else window
        return render(self.latent_dit, initial_noise(shape, seed), positive, negative, plan=cond,
                      steps=steps or self.spec.steps, shift=self.spec.shift, solver="unipc",
                      guidance=Guidance(text_scale=self.spec.text_scale, plan_scale=1.0), window=window or None,
                      callback=callback, interrupt=interrupt)

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """Latent `[1, C, F, h, w]` -> frames `[T, H, W, 3]` uint8."""
        return video_to_frames(self.vae.decode(latent, chunked=latent.shape[2] > 8))[0]

    # -- end to end -----------------------------------------------------------------------------
    def generate(self, scene: str, motion: str, *, num_frames: int, seed: int = 0, window: int | None = None,
                 use_semantics: bool = True) -> tuple[np.ndarray, torch.Tensor | None]:
        """Text -> (frames `[T, H, W, 3]` uint8, z_sem `[K, gh, gw, D]` or None without a semantic plan)."""
        z = self.plan_semantics(scene, motion, num_frames=num_frames, seed=seed) if use_semantics else None
        latent = self.render_latent(z, scene, motion, num_frames=num_frames, seed=seed, window=window)
        return self.decode(latent), z

    def render_clip_semantics(self, clip: world.Clip, *, use_semantics: bool = True, seed: int = 0,
                              window: int | None = None) -> np.ndarray:
        """Frames rendered from a world clip's own (ground-truth) semantics, or from its text alone."""
        z = self.encode_semantics(clip_video([clip])[0]) if use_semantics else None
        latent = self.render_latent(z, clip.scene, clip.motion, num_frames=clip.config.num_frames, seed=seed,
                                    window=window)
        return self.decode(latent)

    def digest(self) -> str:
        return self.compressor.digest()

    def semantic_plan(self, z: torch.Tensor, *, num_frames: int, scene: str = "", motion: str = "",
                      seed: int | None = None) -> Plan:
        """z_sem `[K, gh, gw, D]` as a continuous Plan (times every keyframe_stride / fps seconds)."""
        s = self.spec
        times = [round(k * s.keyframe_stride / s.fps, 6) for k in range(z.shape[0])]
        space = CodebookId(f"{s.name}-kl{z.shape[-1]}", int(z.shape[-1]), self.digest())
        return make_continuous_plan(z.float().cpu(), times=times, fps=s.fps, num_frames=num_frames, width=s.size,
                                    height=s.size, space=space,
                                    provenance=Provenance(scene=scene, motion=motion, seed=seed, planner=s.name))

    def plan_vectors(self, plan: Plan) -> torch.Tensor:
        """A continuous Plan made for this model -> z_sem `[K, gh, gw, D]`; refuses another space or grid."""
        if plan.kind != "continuous":
            raise ValueError("SemanticGen renders continuous plans; this plan holds TA-Tok tokens (use the Plan-X sampler)")
        if plan.codebook.size != self.spec.sem_dim or (plan.codebook.digest and plan.codebook.digest != self.digest()):
            raise ValueError(f"the plan was made in {plan.codebook.describe()}, but this model's semantic space is "
                             f"{self.spec.sem_dim}-d with hash {self.digest()}; plan again with this model")
        if tuple(plan.grid) != self.semantic_grid():
            raise ValueError(f"the plan's grid is {plan.grid[0]}x{plan.grid[1]}, this model's semantic grid is "
                             f"{self.semantic_grid()[0]}x{self.semantic_grid()[1]}")
        return plan.vector_tensor().reshape(len(plan.keyframes), *plan.grid, -1)  # [K, gh, gw, D]


def assemble(latent_run, semantic_run, out, *, with_shared: bool = False) -> Path:
    """One SemanticGen folder from a `semgen-latent` run and a `semgen-semantic` run's exports."""
    model = SemanticGen.load(latent_run, need_semantic=False)
    semantic = load_dit_file(Path(semantic_run) / FILES["semantic_dit"])
    check_fits(semantic, (model.spec.sem_dim,))
    return model.with_semantic(semantic).save(out, with_shared=with_shared)
