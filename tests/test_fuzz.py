"""Seeded fuzzing of each input boundary: plan JSON, edit lists, safetensors headers, bundle.json, the model
configs stored in our files' metadata, and the command line. The only allowed outcomes are success or the
boundary's own error type (PlanError, EditError, CheckpointError, BundleError, argparse's exit 2).

Inputs are generated values and mutations of valid ones (a field replaced, deleted or retyped), so most cases
reach deep into validation instead of failing at the first brace. `PLANX_FUZZ_EXAMPLES` (default 2500) sets the
cases per test; 20000 makes a long local run. Hypothesis runs derandomised, so a failure reproduces."""

from __future__ import annotations

import copy
import functools
import json
import os
import struct
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planx_core import EMBEDDED
from planx_core.files.modules import file_metadata
from planx_core.files.safetensors import CheckpointError, read_safetensors, save_safetensors
from planx_core.pipelines.bundle import BundleError, BundleSpec
from planx_core.plan import EditError, Plan, PlanError, apply_edits, make_continuous_plan, parse_edits
from planx_core.plan.core import CodebookId
from planx_core.plan.edits import OPS

EXAMPLES = int(os.environ.get("PLANX_FUZZ_EXAMPLES", "2500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
FEW = settings(FUZZ, max_examples=max(EXAMPLES // 2, 50))  # cases that write and load a model file

# ----------------------------------------------------------------------------- values and mutations

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([0, 1, -1, 2, 9, 81, 2**31, 2**63, 10**400])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0.0, 0.5, -0.0, 1e-300, 1e300])
    | st.text(max_size=12)
    | st.sampled_from(["", "all", "self", "\ud800", "ta-tok", "tokens", "continuous"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=24,
)


def paths(value, prefix=()) -> list[tuple]:
    """Every path to a value inside nested dicts and lists (the root excluded)."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        found.append((*prefix, key))
        if len(found) < 400:
            found.extend(paths(child, (*prefix, key))[: 400 - len(found)])
    return found


@st.composite
def mutated(draw, base):
    """`base` with one to three values replaced by generated JSON, deleted, or swapped for a sibling's."""
    value = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        where = paths(value)
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "delete", "retype"]))
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "retype":
            old = parent[path[-1]]
            parent[path[-1]] = [old] if not isinstance(old, list) else (old[0] if old else {})
        else:
            parent[path[-1]] = draw(JSON)
    return value


def dumps(value) -> str:
    return json.dumps(value, allow_nan=True)


# ----------------------------------------------------------------------------- plans

TOKEN_PLAN = {
    "format": "planx.plan",
    "schema_version": 3,
    "kind": "tokens",
    "video": {"fps": 8.0, "num_frames": 17, "width": 64, "height": 64},
    "grid": [9, 9],
    "codebook": {"name": "ta-tok", "size": 29, "hash": ""},
    "keyframes": [{"time": t / 2, "tokens": [t] * 81, "locked": False, "note": ""} for t in range(5)],
    "provenance": {"prompt": "a red circle"},
}
OLD_PLAN = {
    "schema_version": 1,
    "fps": 8,
    "frames": 17,
    "width": 64,
    "height": 64,
    "grid": 9,
    "codebook": "ta-tok:29:",
    "keyframes": [{"frame": 0, "tokens": [[1] * 9] * 9}, {"frame": 8, "tokens": [[2] * 9] * 9}],
    "seed": 3,
}
CONTINUOUS = json.loads(
    make_continuous_plan(
        torch.zeros(2, 9, 4),  # (keyframes, cells, D)
        times=[0.0, 1.0],
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        space=CodebookId("kl4", 4, ""),
        grid=(3, 3),
    ).to_json()
)
PLAN_TEXT = (
    mutated(TOKEN_PLAN).map(dumps)
    | mutated(CONTINUOUS).map(dumps)
    | mutated(OLD_PLAN).map(dumps)
    | JSON.map(dumps)
    | st.binary(max_size=200)
    | st.text(max_size=200)
)


@FUZZ
@given(PLAN_TEXT)
def test_plan_json_reads_or_raises_a_plan_error(text):
    try:
        plan = Plan.from_json(text)
    except PlanError:
        return
    assert Plan.from_json(plan.to_json()).to_json() == plan.to_json()  # what reads, writes and reads back


# ----------------------------------------------------------------------------- edit lists

FIELDS = [
    "keyframe",
    "rect",
    "token",
    "word",
    "at",
    "tokens",
    "source",
    "from_keyframe",
    "time",
    "note",
    "rate",
    "locked",
    "text",
    "vector",
    "vectors",
]
FIELD_VALUES = (
    st.integers(-3, 10)
    | st.floats(-1, 3)
    | st.sampled_from(["all", "self", "other", "nope", True, None, [0, 0, 2, 2], [1, 1], [[1, 2], [3, 4]], [0.5] * 4])
    | st.lists(st.integers(-2, 40), max_size=4)
    | JSON
)
STEP = st.builds(
    lambda op, fields: {"op": op, **fields},
    st.sampled_from(sorted(OPS)) | SCALARS,
    st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, max_size=5),
)
EDITS = st.lists(STEP, max_size=6).map(dumps) | JSON.map(dumps) | st.binary(max_size=100)
PLANS = {"tokens": Plan.from_dict(TOKEN_PLAN), "continuous": Plan.from_dict(CONTINUOUS)}


@FUZZ
@given(st.sampled_from(sorted(PLANS)), EDITS)
def test_edit_lists_apply_or_raise_an_edit_error(kind, edits):
    plan = PLANS[kind]
    before = plan.to_json()
    try:
        result = apply_edits(plan, edits, sources={"other": plan}, word_to_code=lambda word: len(word) % 29)
    except EditError:
        assert plan.to_json() == before  # the input plan is never changed
        return
    assert plan.to_json() == before
    assert result.validate() is result


@FUZZ
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_edit_text_parses_or_raises_an_edit_error(text):
    try:
        parse_edits(text)
    except EditError:
        pass


# ----------------------------------------------------------------------------- safetensors headers

HEADER = {
    "__metadata__": {"planx": "1"},
    "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
    "b": {"dtype": "BF16", "shape": [3], "data_offsets": [16, 22]},
}
HEADER_BYTES = (
    mutated(HEADER).map(lambda h: dumps(h).encode()) | JSON.map(lambda v: dumps(v).encode()) | st.binary(max_size=120)
)


@FUZZ
@given(HEADER_BYTES, st.binary(min_size=0, max_size=40), st.sampled_from([None, 0, 7, 2**40, 2**64 - 1]))
def test_safetensors_files_read_or_raise_a_checkpoint_error(tmp_path_factory, header, data, length):
    path = tmp_path_factory.mktemp("st", numbered=True) / "x.safetensors"
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)
    try:
        state = read_safetensors(path)
    except CheckpointError:
        return
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# ----------------------------------------------------------------------------- bundle.json

SPEC = json.loads((EMBEDDED / "bundle.json").read_text())


@FUZZ
@given(mutated(SPEC).map(dumps) | JSON.map(dumps) | st.binary(max_size=100))
def test_bundle_json_reads_or_raises_a_bundle_error(text):
    try:
        spec = BundleSpec.from_json(text, Path("bundle.json"))
    except BundleError:
        return
    assert BundleSpec.from_json(spec.to_json(), Path("bundle.json")) == spec


# ----------------------------------------------------------------------------- model configs in metadata


def _loaders():
    from planx_core.semantic_branch import load_branch
    from planx_core.semanticgen.compressor import load_compressor
    from planx_core.tatok import load_tatok
    from planx_core.wan.vae_files import load_vae

    return {
        "branch.safetensors": load_branch,
        "ta_tok.safetensors": load_tatok,
        "vae.safetensors": load_vae,
        "semanticgen/compressor.safetensors": load_compressor,
    }


LOADERS = _loaders()


@functools.cache
def model_state(name: str) -> dict[str, torch.Tensor]:
    """An embedded model file's tensors, read once."""
    return read_safetensors(EMBEDDED / name)


@st.composite
def metadata_cases(draw):
    name = draw(st.sampled_from(sorted(LOADERS)))
    metadata = file_metadata(EMBEDDED / name)
    key = draw(st.sampled_from(sorted(metadata)))
    try:
        config = json.loads(metadata[key])
    except ValueError:
        config = metadata[key]
    changed = draw(mutated(config) if isinstance(config, dict | list) else JSON)
    return name, {**metadata, key: draw(st.just(dumps(changed)) | st.text(max_size=30))}


@FEW
@given(metadata_cases())
def test_model_metadata_loads_or_raises_a_checkpoint_error(tmp_path_factory, case):
    name, metadata = case
    path = tmp_path_factory.mktemp("meta", numbered=True) / Path(name).name
    save_safetensors(model_state(name), path, metadata=metadata)
    try:
        LOADERS[name](path)
    except CheckpointError:
        pass


# ----------------------------------------------------------------------------- the command line

ARGUMENT = st.sampled_from(["--steps", "--scale", "--frames", "--seed", "--window", "--threads", "--dtype", "--motion"])
ARGUMENT_VALUE = st.sampled_from(
    ["0", "-1", "1e9", "2e9", "nan", "inf", "1000", "x", "", "3.5", "bf16", "9" * 500]
) | st.text(max_size=8)


class Parsed(Exception):
    """Raised in place of running a command: the arguments parsed."""


@FUZZ
@given(st.sampled_from(["generate", "semanticgen"]), st.lists(st.tuples(ARGUMENT, ARGUMENT_VALUE), max_size=3))
def test_command_line_values_parse_or_exit_with_usage(command, pairs):
    """Every value is checked by argparse before anything loads: a bad one exits 2 with the usage line."""
    import unittest.mock

    from planx_core import __main__ as cli

    argv = [command, "--prompt", "x", *[part for pair in pairs for part in pair]]
    with (
        unittest.mock.patch.object(cli, "cmd_generate", side_effect=Parsed),
        unittest.mock.patch.object(cli, "cmd_semanticgen", side_effect=Parsed),
    ):
        try:
            cli.main(argv)
        except Parsed:
            return
        except SystemExit as stop:
            assert stop.code == 2
