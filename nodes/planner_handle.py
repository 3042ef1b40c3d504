"""The PLANX_PLANNER value passed between nodes: planner LM + TA-Tok under ComfyUI's model management.

Planning, first-frame encoding, words and colours all go through here, so the nodes stay short.
After each use the planner's modules leave the accelerator unless the user asked to keep them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.utils

from planx_core.bundle import PlanningDefaults, read_spec
from planx_core.plan import CodebookId, Plan
from planx_core.plan_picture import code_colours, plan_picture
from planx_core.planner import SemanticPlanner, load_planner
from planx_core.tokenizer import TATok, frames_to_nchw, plan_from_video
from planx_core.tokenizer_files import load_tatok

from . import comfy_models
from .model_files import folder_for

DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION = {"sdpa": "sdpa", "eager": "eager", "flash_attention_2": "flash_attention_2"}
PALETTE_SIZE = 256


@dataclass
class PlannerHandle:
    planner: SemanticPlanner
    tatok: TATok
    codebook: CodebookId
    defaults: PlanningDefaults
    keep_loaded: bool
    patcher: object = field(repr=False, default=None)
    _palette: list | None = field(default=None, repr=False)

    # -- memory ----------------------------------------------------------------------
    def __enter__(self) -> "PlannerHandle":
        comfy_models.load(self.patcher)
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep_loaded:
            comfy_models.unload(self.patcher)

    # -- planning --------------------------------------------------------------------
    def plan(self, scene: str, motion: str, *, first_frame=None, context_frames=None, grid: int = 9, **kwargs) -> Plan:
        """A plan with a ComfyUI progress bar over plan tokens (every update is an interrupt point)."""
        bar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int) -> None:
            bar.update_absolute(done, total)
        with self:
            first = None if first_frame is None else self.encode(first_frame[:1], grid)[0]  # [g*g]
            context = None if context_frames is None else self.encode(context_frames, grid)  # [n, g*g]
            return self.planner.plan(scene, motion, codebook=self.codebook, grid=(grid, grid), progress=progress,
                                     first_frame_codes=first, context_codes=context, **kwargs)

    def encode(self, images: torch.Tensor, grid: int) -> torch.Tensor:
        """IMAGE `[B, H, W, 3]` -> TA-Tok codes `[B, grid*grid]` (call inside `with self`)."""
        nchw = frames_to_nchw(images[..., :3]).to(self.patcher.load_device)  # [B, 3, H, W]
        return self.tatok.encode(nchw, grid=grid).cpu()

    def plan_from_frames(self, frames: torch.Tensor, fps: float, keyframe_rate: float, grid: int) -> Plan:
        with self:
            return plan_from_video(self.tatok, frames[..., :3].to(self.patcher.load_device), fps,
                                   keyframe_rate=keyframe_rate, grid=grid, codebook_name=self.codebook.name)

    # -- words and colours ----------------------------------------------------------------
    def words(self, codes) -> dict[int, str]:
        codes = sorted({int(c) for c in codes})
        return dict(zip(codes, self.planner.code_words(codes))) if codes else {}

    def palette(self) -> list[dict]:
        """Vocabulary words and the code nearest each (the editor's swatches); computed once."""
        if self._palette is None:
            words, _ = self.planner._candidates(None)
            self._palette = [{"word": w, "code": self.planner.word_to_code(w)} for w in words[:PALETTE_SIZE]]
        return self._palette

    def picture(self, plan: Plan) -> torch.Tensor:
        """The plan picture with words, `[1, H, W, 3]`."""
        words = self.words(c for k in plan.keyframes for c in k.tokens)
        return plan_picture(plan, self.colours(), words=[[words[int(c)] for c in k.tokens] for k in plan.keyframes])[None]

    def colours(self) -> torch.Tensor:
        return code_colours(self.tatok.codebook(), key=self.codebook.digest)  # [N, 3] in [0, 1]


def load_planner_handle(choice: str, dtype: str, attention: str, keep_loaded: bool) -> PlannerHandle:
    folder = folder_for(choice)
    torch_dtype = DTYPES[dtype]
    spec = read_spec(folder) if (folder / "bundle.json").is_file() else None
    name = spec.planner_name if spec else folder.name
    planner = load_planner(folder / "planner", dtype=torch_dtype or torch.float32, name=name,
                           attn_implementation=ATTENTION[attention])
    tatok = load_tatok(folder / "ta_tok.safetensors", dtype=torch_dtype or torch.float32)
    planner.model.requires_grad_(False)
    tatok.requires_grad_(False).eval()
    codebook = tatok.identity(spec.codebook_name if spec else "ta-tok")
    patcher = comfy_models.managed(planner=planner.model, tatok=tatok)
    return PlannerHandle(planner, tatok, codebook, spec.planning if spec else PlanningDefaults(), keep_loaded,
                         patcher)
