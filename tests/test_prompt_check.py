"""The pixel check of prompt adherence: it reads the motion of drawn videos right, refuses wrong ones, and the
held-out prompt set is really held out of training."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from planx_core import world
from planx_core.eval.pixel_check import check_video, parse_motion, stage_frames
from planx_core.eval.prompt_set import HELDOUT, README_PROMPT, VALIDATION, first_frame, prompt_of, start_position
from planx_core.files.video import read_video, write_video

STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}


def drawn_video(colour: str, moves: list[str], frames: int = 17, size: int = 64, start=(32, 32)) -> np.ndarray:
    """A circle of `colour` moving 2 px a frame through equal stages: `[T, H, W, 3]` uint8."""
    rgb = {"red": (230, 40, 40), "blue": (50, 90, 240), "green": (40, 200, 60), "yellow": (235, 215, 40)}[colour]
    spans = stage_frames(frames, len(moves))
    x, y = start
    video = []
    for t in range(frames):
        stage = next(i for i, (a, b) in enumerate(spans) if a <= t <= b)
        if t > 0:
            x, y = x + 2 * STEP[moves[stage]][0], y + 2 * STEP[moves[stage]][1]
        image = np.full((size, size, 3), 40, dtype=np.uint8)
        cv2.circle(image, (int(x), int(y)), 5, rgb, thickness=-1)
        video.append(image)
    return np.stack(video)


def test_motion_is_parsed_in_stages():
    assert [[(a.colour, a.direction) for a in s] for s in parse_motion(README_PROMPT)] == [
        [("red", "right")],
        [("red", "up")],
    ]
    two = parse_motion("a red circle and a blue square. the red circle moves left while the blue square stays still.")
    assert [(a.colour, a.direction) for a in two[0]] == [("red", "left"), ("blue", "still")]
    with pytest.raises(ValueError, match="cannot read"):
        parse_motion("a cat. the cat jumps over the moon.")


def test_a_video_that_follows_passes_and_others_fail():
    good = drawn_video("red", ["right", "up"], start=(16, 44))
    assert check_video(good, README_PROMPT).follows
    wrong = drawn_video("red", ["right", "down"], start=(16, 20))
    check = check_video(wrong, README_PROMPT)
    assert not check.follows and check.stages == [[True], [False]]
    still = drawn_video("red", ["still", "still"])
    assert check_video(still, README_PROMPT).stage_hits == (0, 2)
    other_colour = drawn_video("blue", ["right", "up"], start=(16, 44))
    assert not check_video(other_colour, README_PROMPT).visible


def test_the_check_reads_an_upscaled_mp4(tmp_path):
    path = write_video(drawn_video("green", ["down", "left"], start=(40, 16)), tmp_path / "v.mp4", 8.0, scale=4)
    frames, _ = read_video(path)
    assert frames.shape[1:] == (256, 256, 3)
    assert check_video(frames, prompt_of("green", "triangle", "down", "left")).follows


def test_the_held_out_prompts_are_never_drawn_in_training():
    for colour, shape, first, second in HELDOUT:
        pair_held = (colour, shape) in world.HELDOUT_PAIRS
        assert pair_held or (first, second) in world.HELDOUT_BIGRAMS, (colour, shape, first, second)
    assert len({prompt_of(*item) for item in HELDOUT}) == len(HELDOUT)


def test_the_validation_prompts_are_training_compositions_apart_from_the_check():
    for colour, shape, first, second in VALIDATION:
        assert (colour, shape) not in world.HELDOUT_PAIRS and (first, second) not in world.HELDOUT_BIGRAMS
        assert first != second and {first, second} != {"left", "right"} and {first, second} != {"up", "down"}
    texts = {prompt_of(*item) for item in VALIDATION}
    assert len(texts) == len(VALIDATION) and README_PROMPT not in texts
    assert not texts & {prompt_of(*item) for item in HELDOUT}


@pytest.mark.parametrize("item", HELDOUT + VALIDATION)
def test_first_frames_start_where_both_moves_fit(item):
    image = first_frame(*item)
    x, y = start_position(item[2], item[3])
    assert image.shape == (64, 64, 3) and tuple(image[y, x]) != (40, 40, 40)
    for dx, dy in (STEP[item[2]], STEP[item[3]]):
        x, y = x + 16 * dx, y + 16 * dy
        assert 6 <= x <= 58 and 6 <= y <= 58


def _moving_plan(moves: list[str]):
    """A 9x9 tokens plan of 5 keyframes over 17 frames at 8 fps: a 2x2 object (code 5) on background 0, moved
    two cells per step as `moves` say, and a stray code 7 cell in keyframe 0."""
    from planx_core.plan import CodebookId
    from planx_core.plan.core import make_plan

    x, y, keyframes = 3, 5, []
    for k in range(len(moves) + 1):
        if k:
            x, y = x + 2 * STEP[moves[k - 1]][0], y + 2 * STEP[moves[k - 1]][1]
        cells = [0] * 81
        for r in (y, y + 1):
            cells[r * 9 + x : r * 9 + x + 2] = [5, 5]
        keyframes.append(cells)
    keyframes[0][80] = 7
    times = [k * 0.5 for k in range(len(keyframes))]
    codebook = CodebookId("ta-tok", 29, "0123456789abcdef")
    return make_plan(keyframes, times=times, fps=8.0, num_frames=17, width=64, height=64, codebook=codebook)


def test_the_plan_diagnosis_reads_the_planned_moves_against_the_stages():
    """eval-prompts' plan check: the object's planned moves step by step, wanted as the planner's timing rule
    spreads the stages over the keyframes; a reversal inside a stage, or a lost object, is a miss."""
    from planx_core.eval.prompts import plan_moves, wanted_moves

    motion = "the red circle moves right, then up"
    assert wanted_moves(motion, 5, 2.0) == ["right", "right", "up", "up"]
    assert plan_moves(_moving_plan(["right", "right", "up", "up"])) == ["right", "right", "up", "up"]
    assert plan_moves(_moving_plan(["right", "left", "up", "down"])) == ["right", "left", "up", "down"]
    lost = _moving_plan(["right", "right", "up", "up"])
    lost.keyframes[2].tokens = [0] * 81
    assert plan_moves(lost) == ["right", "gone", "gone", "up"]
