"""The shipped tiny model (planx_core/embedded): present, small, loadable, documented, and it renders.

Quality is measured by `python -m planx_core.eval` (its numbers are in the model card), not here.
"""

from __future__ import annotations

import numpy as np
import pytest

from planx_core import EMBEDDED, world
from planx_core.pipelines.bundle import load_bundle
from planx_core.pipelines.planx import PlanXPipeline
from planx_core.tatok import plan_from_video
from planx_core.world import score as world_score

pytestmark = pytest.mark.usefixtures("one_thread")
LIMIT = 40 * 2**20


@pytest.fixture(scope="module")
def pipe():
    return PlanXPipeline(load_bundle(EMBEDDED))


def test_the_embedded_model_ships_small_with_a_model_card():
    size = sum(f.stat().st_size for f in EMBEDDED.rglob("*") if f.is_file())
    assert size < LIMIT, f"the embedded model is {size / 2**20:.1f} MiB; the limit is 40 MiB"
    card = (EMBEDDED / "MODEL_CARD.md").read_text()
    for needed in (
        "python -m planx_core train --stage vae",
        "--stage tatok",
        "--stage planner",
        "--stage dit",
        "--stage e2e",
        "python -m planx_core.eval",
        "seed",
    ):
        assert needed in card, f"the model card does not give {needed!r}"
    assert not list(EMBEDDED.rglob("*.bin")) and not list(EMBEDDED.rglob("*.pt*")), "weights ship as safetensors only"


def test_the_embedded_model_renders_a_ground_truth_plan_where_it_says(pipe):
    """Image-to-video from a held-out clip's first frame and its own keyframes: the objects are found."""
    clip = world.dataset("heldout", 1, seed=3)[0]
    first = pipe.first_frame(clip.frames[0])
    v = pipe.spec.video
    truth = plan_from_video(
        pipe.bundle.tatok,
        clip.frames,
        v.fps,
        keyframe_rate=v.keyframe_rate,
        grid=v.grid,
        codebook_name=pipe.spec.codebook_name,
    )
    frames = pipe.render(truth, clip.scene, clip.motion, first_frame=first, progress=False)
    assert frames.shape == clip.frames.shape and frames.dtype == np.uint8
    found = world_score.detect(frames).found
    assert found[:, world_score.detect(clip.frames).found.any(0)].mean() > 0.5, "objects vanished"


def test_the_readme_example_first_frame_fits_the_model(pipe):
    from planx_core.files.video import read_image

    first = pipe.first_frame(read_image(EMBEDDED / "examples" / "red_circle.png"))
    red = pipe.bundle.planner.word_to_code("red")
    assert red in first.codes.tolist(), "the example frame's red circle is not in its plan codes"
