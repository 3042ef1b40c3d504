"""The PLANX_PLANNER value passed between nodes: planner LM + TA-Tok under ComfyUI's model management,
or SemanticGen's stage 1 (a diffusion model over compact semantic vectors: continuous plans).

Planning, first-frame encoding, words and colours all go through here, so the nodes stay short.
After each use the planner's modules leave the accelerator unless the user asked to keep them.
`kind` says which plans a handle makes: "tokens" (Plan-X) or "continuous" (SemanticGen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.utils
import torch

from planx_core.pipelines import FILES, PlanningDefaults, read_spec
from planx_core.plan import CodebookId, Plan, PlanError, code_colours, plan_picture
from planx_core.planner import SemanticPlanner, load_planner
from planx_core.semanticgen import SemanticGen, drawn_start
from planx_core.tatok import TATok, frames_to_nchw, load_tatok, plan_from_video

from . import comfy_models
from .model_files import SEMANTICGEN_PLANNER_CHOICE, cached_semanticgen, folder_for

DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2"}
PALETTE_SIZE = 256


class LoadedWhileUsed:
    """`with handle:` loads its ModelPatcher onto the device, and unloads it after unless `keep_loaded`."""

    def __enter__(self):
        comfy_models.load(self.patcher)
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep_loaded:
            comfy_models.unload(self.patcher)


@dataclass
class PlannerHandle(LoadedWhileUsed):
    kind = "tokens"  # plans of TA-Tok token ids

    planner: SemanticPlanner
    tatok: TATok
    codebook: CodebookId
    defaults: PlanningDefaults
    keep_loaded: bool
    patcher: object = field(repr=False, default=None)
    _palette: list | None = field(default=None, repr=False)

    # -- planning --------------------------------------------------------------------
    def plan(self, scene: str, motion: str, *, first_frame=None, context_frames=None, grid: int = 9, **kwargs) -> Plan:
        """A plan with a ComfyUI progress bar over plan tokens (every update is an interrupt point)."""
        bar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done, total)

        with self:
            first = None if first_frame is None else self.encode(first_frame[:1], grid)[0]  # [g*g]
            context = None if context_frames is None else self.encode(context_frames, grid)  # [n, g*g]
            return self.planner.plan(
                scene,
                motion,
                codebook=self.codebook,
                grid=(grid, grid),
                progress=progress,
                first_frame_codes=first,
                context_codes=context,
                **kwargs,
            )

    def encode(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        """IMAGE `[B, H, W, 3]` -> TA-Tok codes `[B, grid*grid]` (call inside `with self`)."""
        nchw = frames_to_nchw(images[..., :3]).to(self.patcher.load_device)  # [B, 3, H, W]
        return self.tatok.encode(nchw, grid=grid).cpu()

    def plan_from_frames(self, frames: torch.Tensor, fps: float, keyframe_rate: float, grid: int) -> Plan:
        with self:
            return plan_from_video(
                self.tatok,
                frames[..., :3].to(self.patcher.load_device),
                fps,
                keyframe_rate=keyframe_rate,
                grid=grid,
                codebook_name=self.codebook.name,
            )

    # -- words and colours ----------------------------------------------------------------
    def words(self, codes) -> dict[int, str]:
        codes = sorted({int(c) for c in codes})
        return dict(zip(codes, self.planner.code_words(codes))) if codes else {}

    def palette(self) -> list[dict]:
        """Vocabulary words and the code nearest each (the editor's swatches); computed once."""
        if self._palette is None:
            words = self.planner.vocabulary_words()
            self._palette = [{"word": w, "code": self.planner.word_to_code(w)} for w in words[:PALETTE_SIZE]]
        return self._palette

    def picture(self, plan: Plan) -> torch.Tensor:
        """The plan picture with words, `[1, H, W, 3]`."""
        words = self.words(c for k in plan.keyframes for c in k.tokens)
        return plan_picture(plan, self.colours(), words=[[words[int(c)] for c in k.tokens] for k in plan.keyframes])[
            None
        ]

    def colours(self) -> torch.Tensor:
        return code_colours(self.tatok.codebook(), key=self.codebook.digest)  # [N, 3] in [0, 1]


def drawn_inputs(first_frame_lead: float, first_frame_sketch: float) -> dict[str, float]:
    """Generate Semantic Plan's drawn-video inputs that are set (a lead above 0, a sketch level below 1), by name:
    what the SemanticGen planner takes from a drawn video; empty when neither is, as older planners expect."""
    drawn = {"first_frame_lead": first_frame_lead} if first_frame_lead else {}
    return drawn | ({"first_frame_sketch": first_frame_sketch} if first_frame_sketch < 1.0 else {})


@dataclass
class SemanticGenHandle(LoadedWhileUsed):
    """SemanticGen's stage 1 as a planner: text -> z_sem `[K, gh, gw, D]` -> a continuous plan, one keyframe
    every `keyframe_stride` frames at the model's fps and size; Encode Video To Plan runs its semantic
    encoder and compressor instead. No words: its cells are vectors, drawn in their principal components."""

    kind = "continuous"  # plans of compact semantic vectors

    model: SemanticGen
    keep_loaded: bool
    patcher: object = field(repr=False, default=None)

    def check_video(
        self,
        *,
        fps: float,
        num_frames: int,
        width: int | None = None,
        height: int | None = None,
        keyframe_rate: float | None = None,
    ) -> None:
        """Refuse a video layout this model does not plan (it was trained on one fps, size and keyframe rate)."""
        spec = self.model.spec
        rate = spec.fps / spec.keyframe_stride
        problems = []
        if abs(fps - spec.fps) > 1e-6:
            problems.append(f"fps {fps:g} (it plans at {spec.fps:g})")
        if width is not None and (width, height) != (spec.size, spec.size):
            problems.append(f"{width}x{height} (it plans {spec.size}x{spec.size})")
        if keyframe_rate is not None and abs(keyframe_rate - rate) > 1e-6:
            problems.append(
                f"keyframe_rate {keyframe_rate:g} (it plans one keyframe every {spec.keyframe_stride} "
                f"frames: {rate:g} per second)"
            )
        if (num_frames - 1) % spec.keyframe_stride:
            problems.append(f"length {num_frames} (it needs {spec.keyframe_stride}n+1 frames)")
        if problems:
            raise PlanError(
                f"the SemanticGen planner {spec.name} cannot plan {', '.join(problems)}; set fps "
                f"{spec.fps:g}, width and height {spec.size}, keyframe_rate {rate:g} and a length of "
                f"{spec.keyframe_stride}n+1 frames"
            )

    def plan(
        self,
        scene: str,
        motion: str,
        *,
        fps: float,
        num_frames: int,
        width: int,
        height: int,
        keyframe_rate: float,
        seed: int,
        guidance_scale: float = 1.0,
        first_frame=None,
        context_frames=None,
        lock_from=None,
        first_frame_lead: float = 0.0,
        first_frame_sketch: float = 1.0,
        **_token_sampling,
    ) -> Plan:
        """A continuous plan for the whole video (all keyframes in one go, or one after another when the model's
        `semantic_sequential` says so), with a ComfyUI progress bar over the Euler steps (every update is an
        interrupt point); with `first_frame` (an IMAGE, resized to the model's size) keyframe 0 is its semantics,
        and with `first_frame_lead` > 0 (first_frame a drawn video) the keyframes in that share are its frames'
        (`drawn_start`), and with `first_frame_sketch` < 1 the later ones start from its frames' semantics noised
        to that level.
        `guidance_scale` is the text CFG of the semantic generator; temperature / top-k / top-p are token
        sampling settings and do not apply."""
        given = [
            name
            for name, value in (("context_frames", context_frames), ("locked_plan", lock_from))
            if value is not None
        ]
        if given:
            raise PlanError(
                f"the SemanticGen planner plans from the text and a first frame only; disconnect "
                f"{', '.join(given)} or load the Plan-X planner (embedded: planx-tiny), which takes context "
                f"frames and locked keyframes"
            )
        self.check_video(fps=fps, num_frames=num_frames, width=width, height=height, keyframe_rate=keyframe_rate)
        drawn = drawn_inputs(first_frame_lead, first_frame_sketch)
        if drawn and (first_frame is None or len(first_frame) < 2):
            raise PlanError(
                f"{' and '.join(drawn)} take keyframes from a video in first_frame (two frames or more), but it "
                f"holds {0 if first_frame is None else len(first_frame)}; connect the drawn video's frames (a Plan-X "
                "render's decoded images) or set first_frame_lead to 0 and first_frame_sketch to 1"
            )
        model = self.model.with_spec(semantic_text_scale=float(guidance_scale))
        bar = comfy.utils.ProgressBar(model.spec.semantic_steps)

        def progress(step, total, *_):
            bar.update_absolute(step + 1, total)

        with self:
            start = None
            if first_frame is not None:  # the whole drawn video only when its lead is taken
                frames = self._at_model_size(first_frame if drawn else first_frame[:1])  # [T, s, s, 3]
                start = drawn_start(model, frames, num_frames, first_frame_lead, first_frame_sketch)
            z = model.plan_semantics(scene, motion, num_frames=num_frames, seed=seed, start=start, callback=progress)
        return model.semantic_plan(z, num_frames=num_frames, scene=scene, motion=motion, seed=seed)

    def plan_from_frames(self, frames: torch.Tensor, fps: float, keyframe_rate: float, grid: int = 9) -> Plan:
        """Frames IMAGE `[T, H, W, 3]` -> their continuous plan (semantic encoder + compressor means), the
        frames resized to the model's size; `grid` is the model's own, not chosen."""
        self.check_video(fps=fps, num_frames=len(frames), keyframe_rate=keyframe_rate)
        video = self._at_model_size(frames).permute(0, 3, 1, 2) * 2 - 1  # [T, 3, size, size] in [-1, 1]
        with self:
            z = self.model.encode_semantics(video.transpose(0, 1).to(self.patcher.load_device))  # [K, gh, gw, D]
        return self.model.semantic_plan(z, num_frames=len(frames))

    def _at_model_size(self, images: torch.Tensor) -> torch.Tensor:
        """IMAGE `[T, H, W, C]` -> `[T, size, size, 3]` in [0, 1] at the model's size (bilinear, antialiased)."""
        size = self.model.spec.size
        video = frames_to_nchw(images[..., :3]).float()  # [T, 3, H, W] in [0, 1]
        if tuple(video.shape[-2:]) != (size, size):
            video = torch.nn.functional.interpolate(
                video, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        return video.permute(0, 2, 3, 1)  # [T, size, size, 3]

    def picture(self, plan: Plan) -> torch.Tensor:
        """The plan picture, `[1, H, W, 3]`: cells coloured by the principal components of the vectors."""
        return plan_picture(plan)[None]

    def digest(self) -> str:
        return self.model.digest()


def load_planner_handle(choice: str, dtype: str, attention: str, keep_loaded: bool):
    """The handle behind a Load Planner choice: a Plan-X planner folder, or the SemanticGen planner."""
    if choice == SEMANTICGEN_PLANNER_CHOICE:
        return load_semanticgen_handle(keep_loaded)
    folder = folder_for(choice)
    torch_dtype = DTYPES[dtype]
    spec = read_spec(folder) if (folder / FILES["spec"]).is_file() else None
    name = spec.planner_name if spec else folder.name
    planner = load_planner(
        folder / FILES["planner"],
        dtype=torch_dtype or torch.float32,
        name=name,
        attn_implementation=ATTENTION[attention],
    )
    tatok = load_tatok(folder / FILES["tatok"], dtype=torch_dtype or torch.float32)
    planner.model.requires_grad_(False)
    tatok.requires_grad_(False).eval()
    codebook = tatok.identity(spec.codebook_name if spec else "ta-tok")
    patcher = comfy_models.managed(planner=planner.model, tatok=tatok)
    return PlannerHandle(planner, tatok, codebook, spec.planning if spec else PlanningDefaults(), keep_loaded, patcher)


def load_semanticgen_handle(keep_loaded: bool) -> SemanticGenHandle:
    """The embedded SemanticGen's stage 1 (semantic generator, its text encoder, semantic encoder and compressor)
    under ComfyUI's model management. It runs in float32 (the tiny model's dtype)."""
    model = cached_semanticgen()
    patcher = comfy_models.managed(
        semantic=model.semantic_dit, text=model.text, encoder=model.encoder, compressor=model.compressor
    )
    return SemanticGenHandle(model, keep_loaded, patcher=patcher)
