"""The Plan: JSON and token-text round trips, validation messages, schema migration, fuzzing."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planx_core.plan.core import (
    CodebookId,
    Plan,
    PlanError,
    Provenance,
    make_plan,
    parse_token_text,
)
from planx_core.plan.timing import keyframe_times

CODEBOOK = CodebookId("ta-tok", 65536, "0123456789abcdef")


def sample_plan(grid=(9, 9), count=None, size=65536) -> Plan:
    times = keyframe_times(121, 24.0, 2.0)[:count]
    cells = grid[0] * grid[1]
    tokens = [[(k * 7919 + c * 104729) % size for c in range(cells)] for k in range(len(times))]
    plan = make_plan(
        tokens,
        times=times,
        fps=24.0,
        num_frames=121,
        width=1280,
        height=704,
        codebook=CodebookId("ta-tok", size, "0123456789abcdef"),
        grid=grid,
        provenance=Provenance("a kitchen", "picks up the cup, then drinks", 7, "tar-1.5b"),
    )
    plan.keyframes[min(2, len(times) - 1)].locked = True
    plan.keyframes[-1].note = "cup at the lips"
    return plan


def test_keyframe_times_follow_the_alignment_example():
    assert keyframe_times(121, 24.0, 2.0) == [i / 2 for i in range(11)]  # docs/design.md 4.3: 11 keyframes
    assert keyframe_times(17, 8.0, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert keyframe_times(1, 24.0) == [0.0]
    plan = sample_plan()
    assert plan.latent_frames() == [3.0 * i for i in range(11)]


@pytest.mark.parametrize("grid", [(9, 9), (13, 13), (27, 27)])
def test_json_and_token_text_round_trips_are_identity(grid):
    plan = sample_plan(grid, count=3)
    assert Plan.from_json(plan.to_json()) == plan
    text = plan.to_token_text()
    assert text.startswith("<im_start>" + {9: "<S2>", 13: "<S1>", 27: "<S0>"}[grid[0]] + "<I")
    assert text.count("<im_start>") == 3 and text.count("<I") == 3 * grid[0] * grid[1]
    assert Plan.from_token_text(text, like=plan) == plan
    assert parse_token_text(text)[1] == plan.token_tensor().tolist()


def test_token_text_accepts_whitespace_and_refuses_bad_blocks():
    plan = sample_plan(count=2)
    spaced = plan.to_token_text().replace("><", "> <")
    assert Plan.from_token_text(spaced, like=plan) == plan
    short = "<im_start><S2>" + "<I1>" * 80 + "<im_end>"
    with pytest.raises(PlanError, match="keyframe 0 has 80 <I\\*> tokens"):
        parse_token_text(short)
    with pytest.raises(PlanError, match="expected <im_start>"):
        parse_token_text("hello")
    with pytest.raises(PlanError, match="one plan has one grid"):
        parse_token_text("<im_start><S2>" + "<I1>" * 81 + "<im_end><im_start><S1>" + "<I1>" * 169 + "<im_end>")


def test_codebook_identity_is_checked():
    plan = sample_plan(count=1)
    plan.check_codebook(CODEBOOK)
    with pytest.raises(PlanError, match="codebook mismatch.*other"):
        plan.check_codebook(CodebookId("other", 65536, "ffff"))
    with pytest.raises(PlanError, match="codebook mismatch"):
        plan.check_codebook(CodebookId("ta-tok", 65536, "ffffffffffffffff"))


def test_plan_that_does_not_fit_the_video_is_refused():
    plan = sample_plan()  # 121 frames at 24 fps: last keyframe at 5 s
    plan.check_video(121, 24.0)
    with pytest.raises(PlanError, match="does not fit the video.*5 s.*render at least 121 frames"):
        plan.check_video(49, 24.0)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda d: d["keyframes"][4]["tokens"].__setitem__(40, 70000),
            r"keyframe 4, cell \(row 4, col 4\): token 70000 is outside the codebook ta-tok's range 0..65535",
        ),
        (lambda d: d["keyframes"][1]["tokens"].pop(), "keyframe 1 has 80 tokens; a 9x9 grid needs 81"),
        (lambda d: d["keyframes"][10].__setitem__("time", 5.5), r"keyframe 10 at 5.5 s is outside the video \(0..5 s"),
        (lambda d: d["keyframes"][3].__setitem__("time", 0.5), "keyframe 3 at 0.5 s is not after keyframe 2 at 1 s"),
        (lambda d: d["keyframes"][2].__setitem__("time", 0.5), "keyframe 2 at 0.5 s is not after keyframe 1"),
        (lambda d: d["keyframes"][2].__setitem__("time", 0.51), "fall on the same video frame 12"),
        (lambda d: d["keyframes"][0]["tokens"].__setitem__(0, True), r"cell \(row 0, col 0\): token True"),
        (lambda d: d.__setitem__("grid", [9, 0]), "grid must be two integers"),
        (lambda d: d["codebook"].__setitem__("size", "big"), "codebook size must be a positive integer"),
        (lambda d: d.__setitem__("schema_version", 99), "schema_version 99 is unknown"),
        (lambda d: d.__setitem__("keyframes", []), "no keyframes"),
        (lambda d: d["video"].__setitem__("fps", float("nan")), "'fps' must be a finite number"),
        (lambda d: d["video"].__setitem__("num_frames", 10**400), "num_frames must be an integer"),
    ],
)
def test_validation_names_the_keyframe_and_the_cell(mutate, message):
    data = sample_plan().to_dict()
    mutate(data)
    with pytest.raises(PlanError, match=message):
        Plan.from_json(json.dumps(data))


def test_schema_1_migrates():
    plan = sample_plan(count=3)
    legacy = {
        "version": 1,
        "fps": 24,
        "frames": 121,
        "width": 1280,
        "height": 704,
        "grid": 9,
        "codebook": "ta-tok:65536:0123456789abcdef",
        "keyframes": [
            {
                "frame": round(k.time * 24),
                "tokens": [k.tokens[r * 9 : (r + 1) * 9] for r in range(9)],
                "locked": k.locked,
                "note": k.note,
            }
            for k in plan.keyframes
        ],
        "scene": "a kitchen",
        "motion": "picks up the cup, then drinks",
        "seed": 7,
        "planner": "tar-1.5b",
    }
    migrated = Plan.from_json(json.dumps(legacy))
    assert migrated == plan
    assert json.loads(migrated.to_json())["schema_version"] == 3


def test_locked_tokens_and_tensor():
    plan = sample_plan()
    assert list(plan.locked_tokens()) == [2]
    assert plan.token_tensor().shape == (11, 81)


# -- fuzzing: random and corrupted JSON gives a valid Plan or PlanError, nothing else ------------------
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _load(text):
    try:
        plan = Plan.from_json(text)
    except PlanError:
        return None
    plan.validate()
    assert Plan.from_json(plan.to_json()) == plan
    return plan


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_json)
def test_fuzz_random_json_values(value):
    _load(json.dumps(value))


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data[:3]):
            yield from _paths(v, prefix + (i,))


_BASE = sample_plan(count=3).to_dict()
_PATHS = [p for p in _paths(_BASE) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_PATHS), _json, st.booleans())
def test_fuzz_corrupted_plan_fields(path, value, delete):
    data = json.loads(json.dumps(_BASE))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    _load(json.dumps(data))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(json.dumps(_BASE))), st.binary(max_size=4))
def test_fuzz_truncated_and_garbled_text(cut, junk):
    text = sample_plan(count=3).to_json().encode()
    _load(text[:cut] + junk)
