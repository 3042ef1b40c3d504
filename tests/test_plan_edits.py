"""Edit operations: each step's effect, replay on a fresh plan, errors that name the step, fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planx_core.plan.core import CodebookId, Plan, make_plan
from planx_core.plan.edits import OPS, EditError, apply_edits, parse_edits
from planx_core.plan.timing import keyframe_times

CODEBOOK = CodebookId("tiny", 100, "abc")


def plan_of(fill: int = 0, num_frames: int = 17, fps: float = 8.0, grid=(3, 3)) -> Plan:
    times = keyframe_times(num_frames, fps, 2.0)  # 17 frames at 8 fps: 0, .5, 1, 1.5, 2
    tokens = [[fill + k] * (grid[0] * grid[1]) for k in range(len(times))]
    return make_plan(
        tokens, times=times, fps=fps, num_frames=num_frames, width=64, height=64, codebook=CODEBOOK, grid=grid
    )


def grid_of(plan: Plan, k: int) -> list[list[int]]:
    g = plan.grid[1]
    return [plan.keyframes[k].tokens[r * g : (r + 1) * g] for r in range(plan.grid[0])]


def test_fill_rect_and_input_is_untouched():
    plan = plan_of()
    out = apply_edits(plan, [{"op": "fill", "keyframe": 1, "rect": [0, 1, 1, 2], "token": 42}])
    assert grid_of(out, 1) == [[1, 42, 42], [1, 42, 42], [1, 1, 1]]
    assert grid_of(plan, 1) == [[1, 1, 1]] * 3
    everywhere = apply_edits(plan, [{"op": "fill", "keyframe": "all", "token": 9}])
    assert all(k.tokens == [9] * 9 for k in everywhere.keyframes)


def test_fill_word_uses_the_planner_mapping():
    words = {"cup": 77}
    out = apply_edits(
        plan_of(),
        json.dumps([{"op": "fill_word", "keyframe": [0, 2], "rect": [2, 2, 2, 2], "word": " cup "}]),
        word_to_code=words.__getitem__,
    )
    assert out.keyframes[0].tokens[8] == 77 and out.keyframes[2].tokens[8] == 77
    with pytest.raises(EditError, match="edit 0 \\(fill_word\\): no code for the word 'dog'"):
        apply_edits(plan_of(), [{"op": "fill_word", "keyframe": 0, "word": "dog"}], word_to_code=words.__getitem__)
    with pytest.raises(EditError, match="needs the planner's vocabulary"):
        apply_edits(plan_of(), [{"op": "fill_word", "keyframe": 0, "word": "cup"}])


def test_copy_region_and_keyframe_from_another_plan():
    other = plan_of(fill=50)
    out = apply_edits(
        plan_of(),
        [
            {
                "op": "copy_region",
                "source": "other",
                "from_keyframe": 4,
                "rect": [0, 0, 0, 1],
                "keyframe": 0,
                "at": [2, 1],
            },
            {"op": "copy_keyframe", "source": "other", "from_keyframe": 3, "keyframe": 1},
            {"op": "copy_keyframe", "from_keyframe": 0, "time": 0.25},  # from this plan, inserted as new keyframe
        ],
        sources={"other": other},
    )
    assert grid_of(out, 0) == [[0, 0, 0], [0, 0, 0], [0, 54, 54]]
    assert out.times == [0.0, 0.25, 0.5, 1.0, 1.5, 2.0]
    assert out.keyframes[1].tokens == out.keyframes[0].tokens and out.keyframes[2].tokens == [53] * 9
    with pytest.raises(EditError, match="source plan 'missing' is not connected"):
        apply_edits(plan_of(), [{"op": "copy_keyframe", "source": "missing", "from_keyframe": 0, "keyframe": 0}])


def test_keyframe_insert_duplicate_delete_move():
    out = apply_edits(
        plan_of(),
        [
            {"op": "insert_keyframe", "time": 0.3},  # snaps to frame 2 -> 0.25 s, tokens of nearest (0.25 -> kf 0)
            {"op": "duplicate_keyframe", "keyframe": 5, "time": 1.75},
            {"op": "delete_keyframe", "keyframe": 2},  # the old 0.5 s keyframe
            {"op": "move_keyframe", "keyframe": 0, "time": 1.2},  # to frame 10 -> 1.25 s, re-sorted
        ],
    )
    assert out.times == [0.25, 1.0, 1.25, 1.5, 1.75, 2.0]
    assert [k.tokens[0] for k in out.keyframes] == [0, 2, 0, 3, 4, 4]
    with pytest.raises(
        EditError, match="edit 0 \\(move_keyframe\\): keyframe 1 already sits at 0.5 s \\(video frame 4\\)"
    ):
        apply_edits(plan_of(), [{"op": "move_keyframe", "keyframe": 2, "time": 0.5}])
    with pytest.raises(EditError, match="outside the video"):
        apply_edits(plan_of(), [{"op": "move_keyframe", "keyframe": 4, "time": 3.0}])


def test_resample_lock_and_note():
    plan = apply_edits(plan_of(), [{"op": "lock", "keyframe": [0, 2]}, {"op": "note", "keyframe": 2, "text": "up"}])
    assert [k.locked for k in plan.keyframes] == [True, False, True, False, False]
    out = apply_edits(plan, [{"op": "resample", "rate": 4.0}])
    assert out.times == [i / 4 for i in range(9)]
    assert [k.tokens[0] for k in out.keyframes] == [0, 0, 1, 1, 2, 2, 3, 3, 4]  # nearest, ties to the earlier
    assert [i for i, k in enumerate(out.keyframes) if k.locked] == [0, 4] and out.keyframes[4].note == "up"
    assert apply_edits(out, [{"op": "resample", "rate": 2.0}]).token_tensor().tolist() == plan.token_tensor().tolist()
    unlocked = apply_edits(plan, [{"op": "lock", "keyframe": "all", "locked": False}])
    assert not unlocked.locked_tokens()


def test_edit_list_replays_on_a_fresh_plan():
    edits = json.dumps(
        [{"op": "paste", "keyframe": 1, "at": [1, 1], "tokens": [[7, 8], [9, 10]]}, {"op": "lock", "keyframe": 1}]
    )
    first, fresh = apply_edits(plan_of(0), edits), apply_edits(plan_of(20), edits)
    assert grid_of(first, 1) == [[1, 1, 1], [1, 7, 8], [1, 9, 10]]
    assert grid_of(fresh, 1) == [[21, 21, 21], [21, 7, 8], [21, 9, 10]]
    assert fresh.keyframes[1].locked and fresh.keyframes[0].tokens == [20] * 9


@pytest.mark.parametrize(
    "edits, message",
    [
        ("[{", "does not parse as JSON"),
        ('{"op": "fill"}', "must be a JSON array"),
        ('[{"op": "explode"}]', "edit 0: unknown step 'explode'"),
        (
            '[{"op": "fill", "keyframe": 9, "token": 1}]',
            r"edit 0 \(fill\): keyframe 9 does not exist: the plan has keyframes 0..4",
        ),
        ('[{"op": "fill", "keyframe": 0, "token": 100}]', "token 100 is outside the codebook tiny's range 0..99"),
        ('[{"op": "fill", "keyframe": 0, "rect": [0, 0, 3, 3], "token": 1}]', "inside the 3x3 grid"),
        ('[{"op": "paste", "keyframe": 0, "at": [2, 2], "tokens": [[1, 2]]}]', "runs off the 3x3 grid"),
        (
            '[{"op": "delete_keyframe", "keyframe": 0}, {"op": "resample", "rate": 0}]',
            r"edit 1 \(resample\): field 'rate'",
        ),
        ('[{"op": "move_keyframe", "keyframe": 0}]', "missing field 'time'"),
    ],
)
def test_bad_edits_name_the_step(edits, message):
    with pytest.raises(EditError, match=message):
        apply_edits(plan_of(), edits)


def test_parse_edits_empty_and_last_keyframe_delete():
    assert parse_edits("") == [] and parse_edits("  ") == []
    single = make_plan(
        [[1] * 9], times=[0.0], fps=8.0, num_frames=17, width=64, height=64, codebook=CODEBOOK, grid=(3, 3)
    )
    with pytest.raises(EditError, match="cannot delete the only keyframe"):
        apply_edits(single, [{"op": "delete_keyframe", "keyframe": 0}])


_value = (
    st.none()
    | st.booleans()
    | st.integers(-3, 12)
    | st.floats(-1, 5)
    | st.text(max_size=3)
    | st.lists(st.integers(-1, 10), max_size=5)
    | st.just("all")
    | st.lists(st.lists(st.integers(0, 120), max_size=3), max_size=3)
)
_step = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OPS))},
    optional={
        k: _value
        for k in (
            "keyframe",
            "rect",
            "token",
            "word",
            "at",
            "tokens",
            "source",
            "from_keyframe",
            "time",
            "rate",
            "locked",
            "text",
            "note",
        )
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, max_size=4))
def test_fuzz_edit_lists_give_a_valid_plan_or_edit_error(steps):
    try:
        out = apply_edits(plan_of(), steps, sources={"other": plan_of(5)}, word_to_code=lambda w: len(w))
    except EditError:
        return
    out.validate()
    assert Plan.from_json(out.to_json()) == out
