"""PlanShapes world and scorer: determinism, ground truth against pixels, captions, splits, metrics."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planx_core.world.clips import (
    dataset,
    keyframe_layout,
    make_clip,
    order_pairs,
    stamp,
    swap_pair,
)
from planx_core.world.sample import sample_composition
from planx_core.world.scenes import (
    COLOURS,
    DIRECTIONS,
    HELDOUT_BIGRAMS,
    HELDOUT_PAIRS,
    PALETTE,
    PUNCTUATION,
    SHAPES,
    STEP,
    WALL,
    WALL_RGB,
    WORDS,
    Action,
    Composition,
    ObjectSpec,
    WorldConfig,
    bigrams,
    is_heldout,
    keyframe_frames,
    stage_bounds,
    tokenize,
)
from planx_core.world.score import cell_colours, detect, score_clip, score_many, score_pairs

CONFIG = WorldConfig()
COLOUR = "(?:" + "|".join(COLOURS) + ")"
SHAPE = "(?:" + "|".join(SHAPES) + ")"
DIR = "(?:" + "|".join(DIRECTIONS) + ")"
SUBJECT = f"the {COLOUR} {SHAPE}"
VP = f"(?:moves {DIR}(?:, passing behind (?:the gray wall|{SUBJECT}))?|stays still)"
CLAUSE = f"{SUBJECT} {VP}(?: while {SUBJECT} {VP})?"
ITEM = f"(?:a {COLOUR} {SHAPE}|a gray wall)"
SCENE = f"{ITEM}(?:(?:, {ITEM})* and {ITEM})? on a (?:dark|textured) background"
CAPTION = re.compile(f"{SCENE}\\. {CLAUSE}(?:, then (?:{CLAUSE}|{DIR}|{VP}))*\\.")


@pytest.fixture(scope="module")
def clips():
    """A mixed sample: random train clips plus forced wall and behind occlusion clips."""
    return (
        dataset("train", 40, seed=3)
        + dataset("train", 6, seed=4, kind="wall")
        + dataset("train", 6, seed=5, kind="behind")
    )


@pytest.fixture(scope="module")
def multi_stage():
    config = WorldConfig(occluder_probability=0.0)
    return [c for c in dataset("train", 80, seed=11, config=config) if len(c.stages) >= 2][:36]


def full_marks(scores: dict) -> bool:
    return (
        all(scores[k] == 1.0 for k in ("accuracy", "completeness", "fidelity", "consistency", "visibility"))
        and scores["trajectory_error"] == 0.0
        and scores["keyframe_error"] == 0.0
    )


# ---------------------------------------------------------------- world


def test_stage_bounds_split_the_intervals_evenly_longer_first():
    assert stage_bounds(1) == [(0, 16)]
    assert stage_bounds(2) == [(0, 8), (8, 16)]
    assert stage_bounds(3) == [(0, 6), (6, 11), (11, 16)]
    assert stage_bounds(4) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert keyframe_frames() == (0, 4, 8, 12, 16)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_frames": 16}, r"4n\+1"),
        ({"max_objects": 4}, "max_objects"),
        ({"max_stages": 5}, "max_stages"),
        ({"texture_sigma": 12}, "sigma"),
        ({"speed": 4.0}, "lower speed"),
    ],
)
def test_config_refuses_worlds_it_cannot_render(kwargs, words):
    with pytest.raises(ValueError, match=words):
        WorldConfig(**kwargs)


def test_make_clip_is_deterministic_by_seed():
    a, b, c = make_clip(12), make_clip(12), make_clip(13)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.visible, b.visible)
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (17, 64, 64, 3) and a.frames.dtype == np.uint8
    first = dataset("heldout", 5, seed=2)
    assert [x.caption for x in first] == [x.caption for x in dataset("heldout", 5, seed=2)]
    assert [x.seed for x in first] != [x.seed for x in dataset("train", 5, seed=2)]


def check_ground_truth(clip) -> None:
    """Every fully visible object shows its palette colour at its centre and exactly its shape's pixels."""
    size, T = clip.config.size, clip.config.num_frames
    for i, obj in enumerate(clip.objects):
        rgb = np.array(PALETTE[obj.colour], dtype=np.uint8)
        shown = (clip.frames == rgb).all(axis=-1)  # [T, H, W]
        area = stamp(obj.shape, obj.radius).sum()
        x, y = np.floor(clip.positions[..., i, :] + 0.5).astype(int).T  # [T] each
        assert (x - obj.radius >= 0).all() and (x + obj.radius < size).all()
        assert (y - obj.radius >= 0).all() and (y + obj.radius < size).all()
        for t in range(T):
            assert shown[t].sum() == round(clip.visible_fraction[t, i] * area)
            assert clip.visible[t, i] == (shown[t].sum() >= min(8, area))
            if clip.visible_fraction[t, i] == 1.0:
                assert shown[t, y[t], x[t]]
                ys, xs = np.nonzero(shown[t])
                assert np.abs(xs - x[t]).max() <= obj.radius and np.abs(ys - y[t]).max() <= obj.radius
    if clip.wall is not None:
        assert (clip.frames[:, :, clip.wall[0] : clip.wall[1]] == np.array(WALL_RGB, dtype=np.uint8)).all()


def test_ground_truth_matches_the_rendered_pixels(clips):
    for clip in clips:
        check_ground_truth(clip)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**62), objects=st.integers(1, 3))
def test_ground_truth_matches_pixels_for_any_seed(seed, objects):
    check_ground_truth(make_clip(seed, WorldConfig(max_objects=objects, occluder_probability=0.3)))


def test_positions_follow_the_described_stages(clips):
    for clip in clips:
        for stage in clip.stages:
            moved = clip.positions[stage.end] - clip.positions[stage.start]  # [n, 2]
            acting = {a.obj: a.verb for a in stage.actions}
            for i in range(len(clip.objects)):
                expected = np.array(STEP[acting.get(i, "still")]) * clip.config.speed * (stage.end - stage.start)
                assert np.allclose(moved[i], expected), (clip.caption, stage)


def test_captions_follow_the_grammar_and_use_only_words(clips):
    for clip in clips + dataset("heldout", 20, seed=8):
        assert CAPTION.fullmatch(clip.caption), clip.caption
        assert set(tokenize(clip.caption)) <= set(WORDS) | set(PUNCTUATION)
        for obj in clip.objects:
            assert f"a {obj.name}" in clip.scene
    assert tokenize("The red circle moves right, then up.") == [
        "the",
        "red",
        "circle",
        "moves",
        "right",
        ",",
        "then",
        "up",
        ".",
    ]
    with pytest.raises(ValueError, match="purple"):
        tokenize("the purple circle")


def test_same_object_in_consecutive_stages_is_elided():
    comp = Composition(
        (ObjectSpec("red", "circle", 5), ObjectSpec("blue", "square", 4)),
        ((Action(0, "right"),), (Action(0, "up"),), (Action(1, "left"), Action(0, "still"))),
    )
    clip = make_clip(0, composition=comp)
    assert clip.caption == (
        "a red circle and a blue square on a dark background. the red circle moves right, "
        "then up, then the blue square moves left while the red circle stays still."
    )


def test_heldout_compositions_never_occur_in_train():
    rng = np.random.default_rng(0)
    config = WorldConfig(max_objects=3, occluder_probability=0.3)
    for _ in range(3000):
        comp = sample_composition(rng, config, "train")
        assert not {(o.colour, o.shape) for o in comp.objects} & HELDOUT_PAIRS
        assert not bigrams(comp) & HELDOUT_BIGRAMS
    for clip in dataset("train", 100, seed=9):
        assert not any(f"{c} {s}" in clip.caption for c, s in HELDOUT_PAIRS)
        assert "left, then down" not in clip.caption and "up, then right" not in clip.caption
    heldout = [sample_composition(rng, config, "heldout") for _ in range(300)]
    assert all(is_heldout(c) for c in heldout)
    assert any(bigrams(c) & HELDOUT_BIGRAMS for c in heldout)
    assert any({(o.colour, o.shape) for o in c.objects} & HELDOUT_PAIRS for c in heldout)


def test_order_pairs_differ_only_in_order():
    for a, b in order_pairs(0, 12):
        assert a.objects == b.objects and a.scene == b.scene and a.motion != b.motion
        assert a.composition.stages != b.composition.stages
        assert sorted(map(repr, a.composition.stages)) == sorted(map(repr, b.composition.stages))
        assert np.array_equal(a.positions[0], b.positions[0])
        assert np.array_equal(a.frames[0], b.frames[0])
        check_ground_truth(a)
        check_ground_truth(b)


def test_swap_pairs_give_each_objects_actions_to_the_other():
    """A binding pair: one scene and start, two objects, every action moved to the other object, the motion
    changed; both members in the training split; deterministic by seed."""
    for seed in range(8):
        a, b = swap_pair(seed)
        assert len(a.objects) == 2 and a.objects == b.objects and a.scene == b.scene and a.motion != b.motion
        flipped = tuple(tuple((1 - x.obj, x.verb) for x in stage) for stage in a.composition.stages)
        assert flipped == tuple(tuple((x.obj, x.verb) for x in stage) for stage in b.composition.stages)
        assert not np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.positions[0], b.positions[0]) and np.array_equal(a.frames[0], b.frames[0])
        assert not (is_heldout(a.composition) or is_heldout(b.composition))
        check_ground_truth(a)
        check_ground_truth(b)
    assert swap_pair(3)[1].motion == swap_pair(3)[1].motion


def test_wall_occlusion_hides_the_object_and_it_reappears_on_its_path():
    comp = Composition(
        (ObjectSpec("red", "circle", 4), ObjectSpec("blue", "square", 5)),
        ((Action(0, "right", WALL), Action(1, "still")),),
    )
    clip = make_clip(1, composition=comp)
    hidden = np.flatnonzero(~clip.visible[:, 0])
    assert clip.caption.endswith(
        "the red circle moves right, passing behind the gray wall while the blue square stays still."
    )
    assert len(hidden) >= 2 and np.all(np.diff(hidden) == 1) and 0 < hidden[0] and hidden[-1] < 16
    red = (clip.frames[hidden] == np.array(PALETTE["red"], dtype=np.uint8)).all(axis=-1)
    assert red.sum() < 8 * len(hidden)  # at most a sliver shows
    ref = detect(clip.frames)
    c = COLOURS.index("red")
    full = np.flatnonzero(clip.visible_fraction[:, 0] == 1.0)
    after = full[full > hidden[-1]]
    assert len(after) >= 2
    expected = clip.positions[0, 0] + np.array([clip.config.speed, 0.0]) * after[:, None]  # [F, 2]
    assert np.allclose(ref.centroid[after, c], expected)  # a circle's centroid is its centre
    assert full_marks(score_clip(clip.frames, clip))


def test_an_object_passes_behind_another_and_comes_out():
    clip = make_clip(2, kind="behind")
    action = clip.stages[0].actions[0]
    assert action.behind == 1 and not clip.visible[:, 0].all() and clip.visible[[0, -1], 0].all()
    assert clip.visible[:, 1].all()
    assert full_marks(score_clip(clip.frames, clip))


def test_keyframe_layout_reads_the_ground_truth():
    clip = make_clip(4)
    layout = keyframe_layout(clip)
    assert len(layout) == 5 and len(layout[0]) == len(clip.objects)
    entry = layout[2][0]
    assert entry["colour"] == clip.objects[0].colour and entry["shape"] == clip.objects[0].shape
    assert (entry["x"], entry["y"]) == tuple(clip.positions[8, 0]) and entry["visible"] == bool(clip.visible[8, 0])
    with pytest.raises(ValueError, match="keyframe 17"):
        keyframe_layout(clip, [17])


def test_compositions_are_validated():
    with pytest.raises(ValueError, match="distinct colours"):
        make_clip(
            0,
            composition=Composition(
                (ObjectSpec("red", "circle", 4), ObjectSpec("red", "square", 4)), ((Action(0, "up"),),)
            ),
        )
    with pytest.raises(ValueError, match="one-stage"):
        make_clip(0, composition=Composition((ObjectSpec("red", "circle", 4),), ((Action(0, "up", WALL),),)))


# ---------------------------------------------------------------- scorer


def test_cell_colours_give_each_cell_the_colour_of_the_object_over_it(clips):
    """`cell_colours` (the colour target of SemanticGen's compressor): shares of none + 6 palette colours per cell sum
    to 1; of the palette colours, the 16-px cell under a fully visible object's centre holds most of its own; a
    frame that does not split into whole cells is refused."""
    checked = 0
    for clip in clips[:20]:
        shares = cell_colours(clip.frames[:1], (4, 4))  # [1, 4, 4, 7]
        assert shares.shape == (1, 4, 4, 7) and np.allclose(shares.sum(-1), 1.0)
        for i, obj in enumerate(clip.objects):
            if clip.visible_fraction[0, i] < 0.999:
                continue
            x, y = clip.positions[0, i]
            cell = shares[0, int(y) // 16, int(x) // 16]  # [7]
            assert cell[1:].argmax() == COLOURS.index(obj.colour) and cell[1:].max() > 0  # its palette colour
            checked += 1
    assert checked >= 10
    assert cell_colours(clips[0].frames[:1], (1, 1))[0, 0, 0, 0] > 0.5  # the background is most of the frame
    with pytest.raises(ValueError, match="whole cells"):
        cell_colours(clips[0].frames[:1, :63], (4, 4))


def test_ground_truth_scores_full_marks(clips):
    for clip in clips:
        assert full_marks(score_clip(clip.frames, clip)), clip.caption
    assert full_marks(score_clip(clips[0].frames.astype(np.float32) / 255.0, clips[0]))


def test_reversed_shuffled_and_frozen_frames_score_low(multi_stage):
    rng = np.random.default_rng(0)
    reversed_ = score_many([c.frames[::-1] for c in multi_stage], multi_stage)
    shuffled = score_many([c.frames[rng.permutation(17)] for c in multi_stage], multi_stage)
    frozen = score_many([np.repeat(c.frames[:1], 17, axis=0) for c in multi_stage], multi_stage)
    for result in (reversed_, shuffled, frozen):
        assert result["accuracy"] < 0.45 and result["completeness"] < 0.25
        assert result["trajectory_error"] > 3.0
    assert shuffled["consistency"] < 0.95  # jumps between frames


def test_scores_survive_noise_and_blur(clips):
    rng = np.random.default_rng(1)
    clips = clips[::2]  # 26 clips, occlusion included
    noisy = {
        sigma: [np.clip(c.frames + rng.normal(0, sigma, c.frames.shape), 0, 255).astype(np.uint8) for c in clips]
        for sigma in (10, 20)
    }
    blurred = [np.stack([cv2.blur(f, (3, 3)) for f in c.frames]) for c in clips]
    for frames in (noisy[10], noisy[20], blurred):
        result = score_many(frames, clips)
        assert result["accuracy"] >= 0.98 and result["completeness"] >= 0.95
        assert result["fidelity"] >= 0.95 and result["consistency"] >= 0.95
        assert result["trajectory_error"] < 0.5


def test_vanishing_and_morphing_objects_lose_consistency():
    clip = make_clip(
        0, composition=Composition((ObjectSpec("red", "square", 5),), ((Action(0, "right"),), (Action(0, "down"),)))
    )
    vanished = clip.frames.copy()
    vanished[5:12] = vanished[0, 0, 0]  # background colour everywhere
    morphed = clip.frames.copy()
    for t in range(8, 17):  # the square becomes a circle
        x, y = np.floor(clip.positions[t, 0] + 0.5).astype(int)
        patch = morphed[t, y - 5 : y + 6, x - 5 : x + 6]
        patch[~stamp("circle", 5)] = clip.frames[0, 0, 0]
    for frames in (vanished, morphed):
        scores = score_clip(frames, clip)
        assert scores["consistency"] < 0.9
    assert score_clip(vanished, clip)["accuracy"] == 0.0


def test_extra_and_wrong_objects_lose_fidelity():
    clip = make_clip(0, composition=Composition((ObjectSpec("red", "square", 5),), ((Action(0, "right"),),)))
    extra = clip.frames.copy()
    extra[:, 50:58, 5:13] = PALETTE["cyan"]
    assert score_clip(extra, clip)["fidelity"] <= 2 / 3
    recoloured = clip.frames.copy()
    recoloured[(clip.frames == np.array(PALETTE["red"], dtype=np.uint8)).all(axis=-1)] = PALETTE["green"]
    scores = score_clip(recoloured, clip)
    assert scores["fidelity"] <= 1 / 3 and scores["accuracy"] == 0.0


def test_order_pairs_score_both_members():
    pairs = order_pairs(3, 6)
    assert score_pairs([(a.frames, b.frames) for a, b in pairs], pairs)["order_accuracy"] == 1.0
    swapped = score_pairs([(b.frames, a.frames) for a, b in pairs], pairs)
    assert swapped["order_accuracy"] < 0.5


def test_scorer_refuses_bad_frames():
    clip = make_clip(0)
    with pytest.raises(ValueError, match="channels last"):
        score_clip(clip.frames.transpose(0, 3, 1, 2), clip)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        score_clip(clip.frames.astype(np.float32), clip)
    with pytest.raises(ValueError, match="16 frames"):
        score_clip(clip.frames[:16], clip)


def test_code_moves_read_each_objects_step_and_agreement_counts_them():
    """A red cell steps right then up beside a still wall: code_moves says so; a plan whose red stays put agrees
    on the wall's two steps only; one that loses the red says 'gone'."""
    from planx_core.planner.moves import code_moves
    from planx_core.world.labels import BACKGROUND_CODE, COLOUR_CODES, WALL_CODE, move_agreement

    red = COLOUR_CODES["red"]
    truth = torch.full((3, 81), BACKGROUND_CODE)  # [K, 9*9]
    truth[:, 0] = WALL_CODE
    truth[0, 4 * 9 + 4], truth[1, 4 * 9 + 5], truth[2, 3 * 9 + 5] = red, red, red
    assert code_moves(truth, 9, BACKGROUND_CODE) == {WALL_CODE: ["still", "still"], red: ["right", "up"]}
    still = truth.clone()
    still[1:] = truth[0]
    assert move_agreement(truth[None], truth[None], 9, BACKGROUND_CODE) == 1.0
    assert move_agreement(still[None], truth[None], 9, BACKGROUND_CODE) == 0.5
    lost = truth.clone()
    lost[2, 3 * 9 + 5] = BACKGROUND_CODE
    assert code_moves(lost, 9, BACKGROUND_CODE)[red] == ["right", "gone"]
    assert move_agreement(lost[None], truth[None], 9, BACKGROUND_CODE) == 0.75
