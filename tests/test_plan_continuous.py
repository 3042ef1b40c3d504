"""Continuous plans (SemanticGen vectors): construction, validation, exact JSON, old files, edits,
refusals between kinds, the semantic branch and the picture."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import randomize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planx_core.plan.continuous import make_continuous_plan
from planx_core.plan.core import CodebookId, Plan, PlanError, Provenance, make_plan
from planx_core.plan.edits import OPS, EditError, apply_edits
from planx_core.plan.picture import plan_picture, plan_picture_frames, vector_colours
from planx_core.plan.timing import keyframe_times
from planx_core.semantic_branch import BranchConfig, SemanticBranch

SPACE = CodebookId("semanticgen-tiny-kl8", 8, "5be0c1d2e3f40516")
TIMES = keyframe_times(17, 8.0, 2.0)  # 0, .5, 1, 1.5, 2 s


def vectors_of(keyframes: int = 5, grid=(3, 3), dim: int = 8, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(keyframes, grid[0], grid[1], dim, generator=gen) * scale  # [K, gh, gw, D]


def cplan(seed: int = 0, dim: int = 8, grid=(3, 3), space: CodebookId | None = None) -> Plan:
    space = space or (SPACE if dim == 8 else CodebookId(f"semanticgen-kl{dim}", dim, "ab"))
    return make_continuous_plan(
        vectors_of(len(TIMES), grid, dim, seed),
        times=TIMES,
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        space=space,
        provenance=Provenance("a kitchen", "picks up the cup", 3, "semanticgen-tiny"),
    )


def tplan() -> Plan:
    return make_plan(
        [[k] * 9 for k in range(len(TIMES))],
        times=TIMES,
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        codebook=CodebookId("tiny", 10, ""),
        grid=(3, 3),
    )


def cells(plan: Plan, k: int) -> torch.Tensor:
    return plan.vector_tensor()[k].reshape(plan.grid[0], plan.grid[1], -1)  # [gh, gw, D]


# -- construction ---------------------------------------------------------------------------------------------


def test_make_continuous_plan_from_4d_and_3d_tensors():
    vectors = vectors_of(len(TIMES))
    plan = cplan()
    assert plan.kind == "continuous" and plan.grid == (3, 3) and plan.codebook.size == 8
    assert plan.vector_tensor().dtype == torch.float32 and plan.vector_tensor().shape == (5, 9, 8)
    assert torch.equal(plan.vector_tensor(), vectors.reshape(5, 9, 8))  # float32 values kept exactly
    assert all(k.tokens == [] for k in plan.keyframes)
    flat = make_continuous_plan(
        vectors.reshape(5, 9, 8), times=TIMES, fps=8.0, num_frames=17, width=64, height=64, space=SPACE
    )
    assert flat.grid == (3, 3) and torch.equal(flat.vector_tensor(), plan.vector_tensor())
    wide = make_continuous_plan(
        torch.zeros(1, 6, 4),
        times=[0.0],
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        space=CodebookId("s", 4),
        grid=(2, 3),
    )
    assert wide.grid == (2, 3) and wide.vector_tensor().shape == (1, 6, 4)
    assert (
        make_continuous_plan(
            torch.ones(1, 2, 2, 1), times=[0.0], fps=8.0, num_frames=17, width=64, height=64, space=CodebookId("s", 1)
        ).codebook.size
        == 1
    )  # D = 1 is fine


@pytest.mark.parametrize(
    "vectors, kwargs, message",
    [
        (torch.zeros(2, 6, 8), {}, "6 cells per keyframe are not a square grid; pass grid"),
        (torch.zeros(2, 9), {}, r"must be \[K, gh, gw, D\] or \[K, gh\*gw, D\]"),
        (torch.zeros(2, 3, 3, 0), {}, "with D >= 1, got shape \\[2, 3, 3, 0\\]"),
        (torch.zeros(3, 3, 3, 8), {}, "3 vector grids for 2 keyframe times"),
        (torch.zeros(2, 3, 3, 4), {}, "the vectors are 4-dim but the space semanticgen-tiny-kl8 says size 8"),
        (torch.zeros(2, 6, 8), {"grid": (2, 2)}, r"grid \(2, 2\) does not hold the 6 cells"),
        (torch.full((2, 3, 3, 8), float("nan")), {}, r"keyframe 0, cell \(row 0, col 0\): value 0 is nan"),
    ],
)
def test_make_continuous_plan_refuses_bad_input(vectors, kwargs, message):
    with pytest.raises(PlanError, match=message):
        make_continuous_plan(
            vectors, times=[0.0, 0.5], fps=8.0, num_frames=17, width=64, height=64, space=SPACE, **kwargs
        )


def test_token_helpers_refuse_a_continuous_plan_and_vice_versa():
    plan, tokens = cplan(), tplan()
    for call in (
        plan.token_tensor,
        plan.locked_tokens,
        plan.to_token_text,
        lambda: Plan.from_token_text("<im_start><S2>" + "<I1>" * 81 + "<im_end>", like=plan),
        lambda: plan.check_codebook(SPACE),
    ):
        with pytest.raises(PlanError, match="needs a token plan, but this plan is continuous .*semanticgen-tiny-kl8"):
            call()
    with pytest.raises(PlanError, match="vector_tensor\\(\\) needs a continuous plan, but this plan holds token ids"):
        tokens.vector_tensor()


# -- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["keyframes"][1]["vectors"].pop(), "keyframe 1 has 8 vectors; a 3x3 grid needs 9, one per cell"),
        (
            lambda d: d["keyframes"][2]["vectors"][4].pop(),
            r"keyframe 2, cell \(row 1, col 1\): vector has 7 numbers, but the plan's space semanticgen-tiny-kl8 is "
            r"8-dimensional",
        ),
        (lambda d: d["keyframes"][2]["vectors"][5].append(0.0), r"keyframe 2, cell \(row 1, col 2\): vector has 9"),
        (
            lambda d: d["keyframes"][3]["vectors"][7].__setitem__(2, float("nan")),
            r"keyframe 3, cell \(row 2, col 1\): value 2 is nan, not a finite number",
        ),
        (
            lambda d: d["keyframes"][0]["vectors"][0].__setitem__(0, "x"),
            r"keyframe 0, cell \(row 0, col 0\): value 0 is 'x'",
        ),
        (lambda d: d["keyframes"][0]["vectors"][8].__setitem__(7, True), r"cell \(row 2, col 2\): value 7 is True"),
        (lambda d: d["keyframes"][0]["vectors"][8].__setitem__(7, 1e300), r"cell \(row 2, col 2\): value 7 is 1e\+300"),
        (
            lambda d: d["keyframes"][4]["vectors"].__setitem__(0, 3.0),
            r"keyframe 4, cell \(row 0, col 0\): vector has float",
        ),
        (lambda d: d["keyframes"][1].pop("vectors"), r"keyframe 1 \(continuous plan\): missing field 'vectors'"),
        (lambda d: d["keyframes"][1].__setitem__("tokens", [1] * 9), "keyframe 1 of a continuous plan carries tokens"),
        (lambda d: d["keyframes"][4].__setitem__("time", 2.5), r"keyframe 4 at 2.5 s is outside the video \(0..2 s"),
        (
            lambda d: d["keyframes"][2].__setitem__("time", 0.25),
            "keyframe 2 at 0.25 s is not after keyframe 1 at 0.5 s",
        ),
        (lambda d: d["codebook"].__setitem__("size", 0), "codebook size must be a positive integer"),
        (
            lambda d: d.__setitem__("kind", "floats"),
            "plan kind 'floats' is not supported; expected one of tokens, continuous",
        ),
        (lambda d: d.__setitem__("schema_version", 2), "plan kind 'continuous' needs schema_version 3"),
    ],
)
def test_validation_names_the_keyframe_and_the_cell(mutate, message):
    data = cplan().to_dict()
    mutate(data)
    with pytest.raises(PlanError, match=message):
        Plan.from_json(json.dumps(data))


def test_a_token_keyframe_with_vectors_is_refused():
    data = tplan().to_dict()
    data["keyframes"][0]["vectors"] = [[0.0]] * 9
    with pytest.raises(PlanError, match="keyframe 0 of a token plan carries vectors"):
        Plan.from_dict(data)


# -- JSON -----------------------------------------------------------------------------------------------------


def test_json_round_trip_reproduces_float32_exactly():
    gen = torch.Generator().manual_seed(5)
    scales = torch.tensor([1e-30, 1e-6, 0.1, 1.0, 3.0, 1e5, 1e11]).repeat_interleave(8)[:45, None]  # [45, 1]
    vectors = (torch.randn(45, 8, generator=gen) * scales).reshape(5, 3, 3, 8)
    vectors[0, 0, 0, :3] = torch.tensor([0.1, -0.0, 1.4e-45])  # a decimal, negative zero, the smallest subnormal
    plan = make_continuous_plan(vectors, times=TIMES, fps=8.0, num_frames=17, width=64, height=64, space=SPACE)
    text = plan.to_json()
    again = Plan.from_json(text)
    assert again == plan
    assert torch.equal(again.vector_tensor(), vectors.reshape(5, 9, 8))
    assert torch.equal(again.vector_tensor().view(torch.int32), vectors.reshape(5, 9, 8).view(torch.int32))  # bits
    data = json.loads(text)
    assert data["schema_version"] == 3 and data["kind"] == "continuous"
    assert data["codebook"] == {"name": "semanticgen-tiny-kl8", "size": 8, "hash": "5be0c1d2e3f40516"}
    assert set(data["keyframes"][0]) == {"time", "vectors", "locked", "note"}
    assert data["keyframes"][0]["vectors"][0][:3] == [0.1, -0.0, 1e-45]  # shortest float32 decimals
    assert max(len(repr(v)) for k in data["keyframes"] for c in k["vectors"] for v in c) <= 16  # <= 9 digits


def test_json_round_trip_of_an_edited_plan_is_exact():
    plan = apply_edits(
        cplan(),
        [{"op": "interpolate", "time": 0.25}, {"op": "fill", "keyframe": 0, "rect": [0, 0, 0, 0], "vector": [0.1] * 8}],
    )
    assert Plan.from_json(plan.to_json()) == plan


def test_schema_2_and_1_files_still_load():
    plan = tplan()
    v2 = plan.to_dict()
    v2["schema_version"] = 2
    assert Plan.from_json(json.dumps(v2)) == plan
    del v2["kind"]  # version 2 files may leave the kind out
    assert Plan.from_json(json.dumps(v2)) == plan
    v1 = {
        "version": 1,
        "fps": 8,
        "frames": 17,
        "width": 64,
        "height": 64,
        "grid": 3,
        "codebook": "tiny:10:",
        "keyframes": [
            {"frame": round(k.time * 8), "tokens": [k.tokens[:3], k.tokens[3:6], k.tokens[6:]]} for k in plan.keyframes
        ],
    }
    assert Plan.from_json(json.dumps(v1)) == plan
    assert json.loads(Plan.from_json(json.dumps(v1)).to_json())["schema_version"] == 3


# -- edits ----------------------------------------------------------------------------------------------------


def test_fill_paste_and_copy_region_write_vectors():
    plan, other = cplan(), cplan(seed=1)
    vec = [0.5, -1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    block = [[[float(i)] * 8, [float(i + 1)] * 8] for i in range(2)]
    out = apply_edits(
        plan,
        [
            {"op": "fill", "keyframe": [0, 1], "rect": [0, 0, 1, 1], "vector": vec},
            {"op": "paste", "keyframe": 2, "at": [1, 1], "vectors": block},
            {
                "op": "copy_region",
                "source": "other",
                "from_keyframe": 4,
                "rect": [0, 0, 0, 2],
                "keyframe": 3,
                "at": [2, 0],
            },
        ],
        sources={"other": other},
    )
    for k in (0, 1):
        assert torch.equal(cells(out, k)[:2, :2], torch.tensor(vec).expand(2, 2, 8))
        assert torch.equal(cells(out, k)[2], cells(plan, k)[2])
    assert torch.equal(cells(out, 2)[1:, 1:, 0], torch.tensor([[0.0, 1.0], [1.0, 2.0]]))
    assert torch.equal(cells(out, 3)[2], cells(other, 4)[0]) and torch.equal(cells(out, 3)[:2], cells(plan, 3)[:2])
    assert torch.equal(plan.vector_tensor(), cplan().vector_tensor())  # the input is untouched


def test_keyframe_ops_on_continuous_plans():
    plan, other = cplan(), cplan(seed=1)
    vt = plan.vector_tensor()
    out = apply_edits(
        plan,
        [
            {"op": "copy_keyframe", "source": "other", "from_keyframe": 3, "keyframe": 1},
            {"op": "copy_keyframe", "from_keyframe": 0, "time": 0.25},  # inserted at 0.25 s
            {"op": "insert_keyframe", "time": 0.9},  # snaps to 0.875 s, nearest: 1.0 s
            {"op": "insert_keyframe", "time": 1.25, "vectors": [[2.0] * 8] * 9, "note": "new"},
            {"op": "duplicate_keyframe", "keyframe": 0, "time": 1.75},
            {"op": "delete_keyframe", "keyframe": 3},  # the 0.875 s keyframe
            {"op": "move_keyframe", "keyframe": 0, "time": 0.125},
            {"op": "lock", "keyframe": 1},
            {"op": "note", "keyframe": 1, "text": "kept"},
        ],
        sources={"other": other},
    )
    assert out.times == [0.125, 0.25, 0.5, 1.0, 1.25, 1.5, 1.75, 2.0]
    got = out.vector_tensor()
    expect = [vt[0], vt[0], other.vector_tensor()[3], vt[2], torch.full((9, 8), 2.0), vt[3], vt[0], vt[4]]
    for k, e in enumerate(expect):
        assert torch.equal(got[k], e), k
    assert out.keyframes[1].locked and out.keyframes[1].note == "kept" and out.keyframes[4].note == "new"
    resampled = apply_edits(plan, [{"op": "lock", "keyframe": 2}, {"op": "resample", "rate": 4.0}])
    assert resampled.times == [i / 4 for i in range(9)]
    assert torch.equal(resampled.vector_tensor(), vt[[0, 0, 1, 1, 2, 2, 3, 3, 4]])  # nearest, ties earlier
    assert [i for i, k in enumerate(resampled.keyframes) if k.locked] == [4]
    assert torch.equal(apply_edits(resampled, [{"op": "resample", "rate": 2.0}]).vector_tensor(), vt)


def test_interpolate_blends_the_neighbours_by_time():
    plan = cplan()
    vt = plan.vector_tensor()
    out = apply_edits(
        plan,
        [
            {"op": "interpolate", "time": 0.625, "note": "between"},  # frame 5: 1/4 of 0.5..1.0
            {"op": "interpolate", "time": 0.26},
        ],
    )  # snaps to 0.25 s: halfway 0..0.5
    assert out.times == [0.0, 0.25, 0.5, 0.625, 1.0, 1.5, 2.0]
    assert torch.equal(out.vector_tensor()[3], torch.lerp(vt[1], vt[2], 0.25))
    torch.testing.assert_close(out.vector_tensor()[1], (vt[0] + vt[1]) / 2)
    assert out.keyframes[3].note == "between" and not out.keyframes[3].locked
    with pytest.raises(EditError, match=r"edit 0 \(interpolate\): keyframe 1 already sits at 0.5 s"):
        apply_edits(plan, [{"op": "interpolate", "time": 0.5}])
    single = apply_edits(plan, [{"op": "delete_keyframe", "keyframe": 4}])
    with pytest.raises(EditError, match=r"time 1.75 s is not between two keyframes \(they span 0..1.5 s\)"):
        apply_edits(single, [{"op": "interpolate", "time": 1.75}])
    with pytest.raises(EditError, match="interpolate blends the vectors .* continuous plans only; token ids cannot"):
        apply_edits(tplan(), [{"op": "interpolate", "time": 0.25}])


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            {"op": "fill", "keyframe": 0, "token": 3},
            "fill with a token id applies to token plans only; this plan is "
            r"continuous \(semanticgen-tiny-kl8 \(8-dim vectors",
        ),
        (
            {"op": "fill", "keyframe": 0, "token": 3, "vector": [0.0] * 8},
            "field 'token' does not apply: this plan is continuous",
        ),
        ({"op": "fill", "keyframe": 0, "vector": [0.0] * 7}, "field 'vector' must be a list of 8 finite numbers"),
        ({"op": "fill", "keyframe": 0, "vector": [float("nan")] * 8}, "field 'vector' must be a list of 8 finite"),
        ({"op": "fill_word", "keyframe": 0, "word": "cup"}, "fill_word .* applies to token plans only"),
        (
            {"op": "paste", "keyframe": 0, "at": [0, 0], "tokens": [[1]]},
            "field 'tokens' does not apply: .* give 'vectors'",
        ),
        ({"op": "paste", "keyframe": 0, "at": [2, 2], "vectors": [[[0.0] * 8, [0.0] * 8]]}, "runs off the 3x3 grid"),
        ({"op": "paste", "keyframe": 0, "at": [0, 0], "vectors": [[[0.0] * 8, [0.0] * 3]]}, "vectors row 0, column 1"),
        ({"op": "insert_keyframe", "time": 0.25, "vectors": [[0.0] * 8] * 8}, "'vectors' must list 9 vectors"),
        ({"op": "insert_keyframe", "time": 0.25, "tokens": [1] * 9}, "field 'tokens' does not apply"),
        (
            {"op": "copy_keyframe", "source": "tokens", "from_keyframe": 0, "keyframe": 0},
            "source plan 'tokens' is a tokens plan but this plan is continuous: token ids and continuous vectors "
            "do not mix",
        ),
        (
            {"op": "copy_region", "source": "wide", "from_keyframe": 0, "rect": [0, 0, 0, 0], "keyframe": 0},
            r"source plan 'wide' uses a 3x3 grid of semanticgen-kl64 \(64-dim vectors.*same grid and vector width",
        ),
    ],
)
def test_token_only_edits_and_mixed_sources_are_refused(edit, message):
    sources = {"tokens": tplan(), "wide": cplan(dim=64)}
    with pytest.raises(EditError, match=message):
        apply_edits(cplan(), [edit], sources=sources)


def test_token_plans_refuse_vector_fields_and_continuous_sources():
    with pytest.raises(EditError, match="field 'vector' does not apply: this plan is a token plan .* give 'token'"):
        apply_edits(tplan(), [{"op": "fill", "keyframe": 0, "vector": [0.0] * 8}])
    with pytest.raises(EditError, match="source plan 'c' is a continuous plan but this plan is tokens"):
        apply_edits(
            tplan(), [{"op": "copy_keyframe", "source": "c", "from_keyframe": 0, "keyframe": 0}], sources={"c": cplan()}
        )


_value = (
    st.none()
    | st.booleans()
    | st.integers(-3, 12)
    | st.floats(-1, 5)
    | st.text(max_size=3)
    | st.lists(st.integers(-1, 10), max_size=5)
    | st.just("all")
    | st.lists(st.floats(-2, 2), min_size=8, max_size=8)
    | st.lists(st.lists(st.lists(st.floats(-2, 2), min_size=8, max_size=8), max_size=2), max_size=2)
)
_step = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OPS))},
    optional={
        k: _value
        for k in (
            "keyframe",
            "rect",
            "token",
            "vector",
            "vectors",
            "at",
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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_step, max_size=4))
def test_fuzz_edit_lists_on_continuous_plans(steps):
    try:
        out = apply_edits(cplan(), steps, sources={"other": cplan(seed=1), "tokens": tplan()})
    except EditError:
        return
    out.validate()
    assert out.kind == "continuous" and Plan.from_json(out.to_json()) == out


# -- JSON fuzzing of a continuous plan -----------------------------------------------------------------------

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_BASE = make_continuous_plan(
    vectors_of(2, (2, 2), 3), times=[0.0, 0.5], fps=8.0, num_frames=17, width=64, height=64, space=CodebookId("s", 3)
).to_dict()


def _paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data[:3]):
            yield from _paths(v, prefix + (i,))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([p for p in _paths(_BASE) if p]), _json, st.booleans())
def test_fuzz_corrupted_continuous_plan_fields(path, value, delete):
    data = json.loads(json.dumps(_BASE))
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    try:
        plan = Plan.from_json(json.dumps(data))
    except PlanError:
        return
    assert Plan.from_json(plan.to_json()) == plan


# -- the semantic branch --------------------------------------------------------------------------------------


def test_condition_plan_feeds_continuous_vectors_into_the_branch():
    branch = randomize(SemanticBranch(BranchConfig(code_dim=8, dim=64, num_heads=2, num_layers=2)), seed=1)
    plan = cplan()
    cond = branch.condition_plan(plan, None, num_frames=17, fps=8.0, strength=0.5)
    assert cond.tokens.shape == (1, 5 * 9, 64)
    assert cond.latent_frames == [0.0, 1.0, 2.0, 3.0, 4.0] and cond.grid_hw == (3, 3) and cond.strength == 0.5
    torch.testing.assert_close(cond.tokens, branch.embed(plan.vector_tensor().reshape(1, 45, 8)))
    same = branch.condition_plan(plan, torch.randn(4, 8), num_frames=17, fps=8.0)  # a codebook is not used
    torch.testing.assert_close(same.tokens, cond.tokens)
    with pytest.raises(PlanError, match="does not fit the video"):
        branch.condition_plan(plan, None, num_frames=9, fps=8.0)


def test_condition_plan_refuses_another_width_and_token_plans_without_codebook():
    branch = SemanticBranch(BranchConfig(code_dim=8, dim=64, num_heads=2, num_layers=2))
    with pytest.raises(
        PlanError,
        match=r"vectors are 64-dim \(semanticgen-kl64 .* trained on 8-dim inputs: it "
        r"expects a plan from a compressor whose semantic space has size 8",
    ):
        branch.condition_plan(cplan(dim=64), None, num_frames=17, fps=8.0)
    with pytest.raises(PlanError, match="holds token ids of tiny .* needs that tokenizer's codebook"):
        branch.condition_plan(tplan(), None, num_frames=17, fps=8.0)
    cond = branch.condition_plan(tplan(), torch.randn(10, 8), num_frames=17, fps=8.0)
    assert cond.tokens.shape == (1, 45, 64)


# -- the picture ----------------------------------------------------------------------------------------------


def test_continuous_plan_picture_uses_its_own_principal_components():
    vectors = torch.zeros(2, 2, 2, 4)
    vectors[0, 0, 0] = torch.tensor([3.0, 0.0, 0.0, 0.0])  # one cell far along the first axis
    vectors[1, 1, 1] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    vectors[1, 0, 1] = torch.tensor([0.0, 0.0, 0.5, 0.0])
    plan = make_continuous_plan(
        vectors, times=[0.0, 0.5], fps=8.0, num_frames=17, width=64, height=64, space=CodebookId("s", 4)
    )
    colours = vector_colours(plan)  # [K, cells, 3]
    assert colours.shape == (2, 4, 3) and colours.min() >= 0 and colours.max() <= 1
    assert colours[0, 0, 0] == 1.0 and colours[:, :, 0].min() == 0.0  # first component spans the red range
    torch.testing.assert_close(colours[0, 1], colours[1, 0])  # equal vectors, equal colours
    img = plan_picture(plan, cell=24, gap=6)
    assert img.shape == (18 + 2 * 24, 2 * 48 + 6, 3) and 0 <= img.min() and img.max() <= 1
    torch.testing.assert_close(img[18 + 12, 12], (colours[0, 0] * 255).round() / 255)
    assert torch.equal(img, plan_picture(plan))  # deterministic
    frames = plan_picture_frames(plan)
    assert frames.shape == (2, 66, 48, 3) and torch.equal(frames[1], img[:, 54:])


def test_continuous_pictures_of_narrow_and_constant_vectors():
    for dim in (1, 2):
        plan = cplan(dim=dim)
        assert plan_picture(plan).shape[-1] == 3
    flat = make_continuous_plan(
        torch.ones(1, 3, 3, 8), times=[0.0], fps=8.0, num_frames=17, width=64, height=64, space=SPACE
    )
    assert torch.all(vector_colours(flat) == 0.5)
    with pytest.raises(ValueError, match="continuous plan has no codebook to colour by"):
        plan_picture(cplan(), torch.rand(10, 3))
    with pytest.raises(ValueError, match="a token plan needs the colour of every code"):
        plan_picture(tplan())
