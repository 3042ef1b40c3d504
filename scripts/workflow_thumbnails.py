"""Thumbnails for the Templates browser: workflows/<title>.jpg beside each workflows/<title>.json.

The ComfyUI frontend lists a custom node pack's workflows/ folder as templates and shows
/api/workflow_templates/<pack>/<title>.jpg as each one's picture (frontend 1.27 to 1.58). Each thumbnail
shows what its workflow makes, rendered here with planx_core on the embedded tiny models with the
workflow's prompt and seed: the plan (its picture, keyframes in rows) and four frames of the video.

    .venv/bin/python scripts/workflow_thumbnails.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import workflow_graphs as graphs  # noqa: E402

from planx_core import EMBEDDED  # noqa: E402
from planx_core.pipelines import load_bundle  # noqa: E402
from planx_core.pipelines.planx import PlanXPipeline  # noqa: E402
from planx_core.plan import apply_edits, code_colours, plan_picture  # noqa: E402
from planx_core.semanticgen import SemanticGen  # noqa: E402
from planx_core.tatok import plan_from_video  # noqa: E402

SIZE = (480, 480)  # square: both frontends show thumbnails in square cards
BACKGROUND = (24, 24, 28)


def _fit(img: np.ndarray, width: int, height: int, nearest: bool = False) -> np.ndarray:
    scale = min(width / img.shape[1], height / img.shape[0])
    size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _paste(canvas: np.ndarray, img: np.ndarray, x: int, y: int) -> None:
    canvas[y : y + img.shape[0], x : x + img.shape[1]] = img


def compose(title: str, picture: torch.Tensor, frames: np.ndarray) -> np.ndarray:
    """Title on top; the plan picture under it; four frames (first to last) in a row at the bottom."""
    canvas = np.empty((SIZE[1], SIZE[0], 3), np.uint8)
    canvas[:] = BACKGROUND
    cv2.putText(canvas, title, (14, 38), cv2.FONT_HERSHEY_SIMPLEX, 0.95, (235, 235, 235), 2, cv2.LINE_AA)
    plan = _fit((picture.numpy() * 255).astype(np.uint8), 452, 250)
    _paste(canvas, plan, (SIZE[0] - plan.shape[1]) // 2, 56 + (250 - plan.shape[0]) // 2)
    picks = np.linspace(0, len(frames) - 1, 4).round().astype(int)
    for i, index in enumerate(picks):
        tile = _fit(frames[index], 108, 108, nearest=True)
        _paste(canvas, tile, 14 + i * 116, 330)
    return canvas


def renders() -> dict[str, tuple[str, torch.Tensor, np.ndarray]]:
    bundle = load_bundle()
    pipe = PlanXPipeline(bundle)
    colours = code_colours(bundle.tatok.codebook(), table=bundle.tatok.colour_table)
    steps = graphs.SAMPLING["steps"]

    def picture(plan):
        return plan_picture(plan, colours, columns=3, text=32)

    out = {}
    plan = pipe.plan(graphs.SCENE, graphs.MOTION, seed=0, progress=False)
    frames = pipe.render(plan, graphs.SCENE, graphs.MOTION, seed=0, steps=steps, progress=False)
    out[graphs.TEXT_TO_VIDEO] = ("Plan-X: text to video", picture(plan), frames)
    image = cv2.cvtColor(cv2.imread(str(EMBEDDED / "examples" / "red_circle.png")), cv2.COLOR_BGR2RGB)
    first = pipe.first_frame(image)
    planned = pipe.plan(graphs.SCENE, graphs.MOTION, seed=0, progress=False, first_frame=first)
    moving = pipe.render(planned, graphs.SCENE, graphs.MOTION, seed=0, steps=steps, first_frame=first, progress=False)
    out[graphs.IMAGE_TO_VIDEO] = ("Plan-X: image to video", picture(planned), moving)
    words = bundle.planner.word_to_code
    edited = apply_edits(plan, graphs.EDITS, word_to_code=words)
    out[graphs.EDIT_PLAN] = (
        "Plan-X: edit a plan",
        picture(edited),
        pipe.render(edited, graphs.SCENE, graphs.MOTION, seed=0, steps=steps, progress=False),
    )
    encoded = plan_from_video(
        bundle.tatok, torch.from_numpy(frames).float() / 255, 8.0, grid=9, codebook_name=pipe.codebook_id.name
    )
    scene_b, motion_b = graphs.OTHER_PROMPT.rstrip(".").split(". ")
    out[graphs.SEMANTIC_TRANSFER] = (
        "Plan-X: semantic transfer",
        picture(encoded),
        pipe.render(encoded, scene_b, motion_b, seed=0, steps=steps, progress=False),
    )
    semanticgen = SemanticGen.load(EMBEDDED / "semanticgen")
    length = graphs.LONG_VIDEO["length"]
    long_frames, z = semanticgen.generate(
        graphs.SCENE, graphs.LONG_MOTION, num_frames=length, seed=0, window=graphs.LONG_WINDOW
    )
    long_plan = semanticgen.semantic_plan(z, num_frames=length)
    out[graphs.LONG_VIDEO_FILE] = ("Plan-X: long video", plan_picture(long_plan, columns=5, text=32), long_frames)
    return out


def main() -> int:
    torch.manual_seed(0)
    for name, (title, picture, frames) in renders().items():
        path = REPO / "workflows" / Path(name).with_suffix(".jpg")
        image = compose(title, picture, frames)
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
        print(f"wrote {path.relative_to(REPO)} ({json.dumps(list(image.shape))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
