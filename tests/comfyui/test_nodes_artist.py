"""Layer 2 for the artist's pass (issue 17): one source of truth for the video's size, length and fps (the plan),
plan files both ways (Save Plan shows what it wrote, Load Plan says when a file is not a plan), meaningful
colours and a stable palette in the editor's payload, plain-language errors, display names with the pack's
name, combo defaults. In-process with a ComfyUI checkout (CPU), no server.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from planx_core.pipelines.bundle import load_bundle
from planx_core.pipelines.planx import PlanXPipeline
from planx_core.plan.core import PlanError

pytestmark = pytest.mark.comfyui
ROOT = Path(__file__).resolve().parents[2]
TINY = "embedded: planx-tiny"
PROMPT = "a red circle on a dark background. the red circle moves right."


@pytest.fixture(scope="module")
def nodes(comfy_modules):
    if "planx_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "planx_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["planx_pack"] = module
        spec.loader.exec_module(module)
    return sys.modules["planx_pack"].NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def plan():
    pipe = PlanXPipeline(load_bundle())
    return pipe.plan("a red circle on a dark background", "the red circle moves right", seed=0, progress=False)


@pytest.fixture(scope="module")
def parts(nodes, plan):
    import nodes as comfy_nodes

    model, clip, vae = nodes["PlanX_LoadTinyModel"].execute(TINY).args
    patched = nodes["PlanX_InjectRoPEGuidance"].execute(model, plan, TINY, 1.0, 0.0, 1.0, "from branch file", True)
    positive = comfy_nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    return model, patched.args[0], positive, negative


def _sample(nodes, model, positive, negative, width, height, length, **optional):
    out = nodes["PlanX_Sampler"].execute(
        model, positive, negative, 0, 1, 1.0, 1.0, 0.0, "flow_euler", width, height, length, **optional
    )
    return out.args[0]["samples"], out.args[1]


def test_sampler_takes_size_length_and_fps_from_the_plan(nodes, parts):
    model, patched, positive, negative = parts
    latent, fps = _sample(nodes, patched, positive, negative, 32, 48, 9)  # stale widgets: the plan wins
    assert latent.shape == (1, 16, 5, 16, 16) and fps == 8.0
    latent, fps = _sample(nodes, patched, positive, negative, 128, 128, 17, size_from_plan=False)  # same shape
    assert latent.shape == (1, 16, 5, 32, 32) and fps == 8.0
    latent, fps = _sample(nodes, model, positive, negative, 32, 48, 9, fps=12.0)  # no plan: the widgets
    assert latent.shape == (1, 16, 3, 12, 8) and fps == 12.0


@pytest.mark.parametrize(
    ("size", "named"),
    [
        ((80, 64, 17), ["64x64", "80x64", "stretched", "size_from_plan on"]),
        ((64, 64, 33), ["17 frames", "2 s at 8 fps", "33", "set length to 17", "size_from_plan on"]),
        ((64, 64, 9), ["17 frames", "have 9", "set length to 17"]),
    ],
)
def test_an_override_the_plan_cannot_honour_is_refused_naming_both(nodes, parts, size, named):
    _, patched, positive, negative = parts
    with pytest.raises(ValueError) as refused:
        _sample(nodes, patched, positive, negative, *size, size_from_plan=False)
    for text in named:
        assert text in str(refused.value), str(refused.value)


def test_a_connected_latent_must_fit_the_plan(nodes, parts):
    _, patched, positive, negative = parts
    with pytest.raises(ValueError, match="disconnect the latent"):
        _sample(nodes, patched, positive, negative, 64, 64, 17, latent={"samples": torch.zeros(1, 16, 9, 16, 16)})


def test_save_plan_shows_the_file_and_a_picture_and_load_plan_refuses_other_json(nodes, plan, tmp_path, monkeypatch):
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    (tmp_path / "input" / "planx").mkdir(parents=True)
    ui = nodes["PlanX_SavePlan"].execute(plan, "planx/test").ui
    (saved,) = ui["planx_plans"]
    assert saved["filename"].endswith(".plan.json") and saved["summary"] == "5 keyframes, 64x64, 17 frames at 8 fps"
    assert ui["images"] and ui["images"][0]["type"] == "temp"
    load = nodes["PlanX_LoadPlan"]
    (tmp_path / "input" / "planx" / "upload.json").write_bytes(
        (tmp_path / "output" / saved["subfolder"] / saved["filename"]).read_bytes()
    )
    workflow = json.loads((ROOT / "workflows").glob("*.json").__next__().read_text())
    (tmp_path / "input" / "planx" / "workflow.json").write_text(json.dumps(workflow))
    (tmp_path / "input" / "planx" / "broken.json").write_text("{")
    options = load.INPUT_TYPES()["required"]["plan_file"][1]
    assert options["options"] == ["planx/broken.json", "planx/upload.json", "planx/workflow.json"]
    assert options["default"] == "planx/broken.json"
    loaded = load.execute("planx/upload.json")
    assert loaded.args[0].to_dict() == plan.to_dict() and loaded.ui["images"]
    message = load.validate_inputs("planx/workflow.json")
    assert "is not a Plan-X plan: it is a ComfyUI workflow" in message and "Save Plan" in message
    assert "schema_version" not in message
    assert "cannot be read as JSON" in load.validate_inputs("planx/broken.json")
    with pytest.raises(PlanError, match="not a Plan-X plan"):
        load.execute("planx/workflow.json")


def test_editor_payload_colours_palette_order_and_hidden_grammar_words(nodes, plan):
    planner = nodes["PlanX_LoadPlanner"].execute(TINY, "auto", "sdpa", False).args[0]
    view = nodes["PlanX_EditPlanTokens"].execute(plan, "", planner).ui["planx_editor"][0]
    palette = view["palette"]
    counts = {}
    for keyframe in plan.keyframes:
        for code in keyframe.tokens:
            counts[code] = counts.get(code, 0) + 1
    keys = [(-counts.get(p["code"], 0), p["word"]) for p in palette]
    assert keys == sorted(keys)  # by frequency in the plan, then alphabetical
    hidden = {p["word"] for p in palette if p["hidden"]}
    assert {"the", "and", "on", "while", "then"} <= hidden
    assert {p["word"] for p in palette if not p["hidden"]} == {
        "background",
        "wall",
        "red",
        "green",
        "blue",
        "yellow",
        "magenta",
        "cyan",
    }
    colour = {p["word"]: view["colours"][str(p["code"])] for p in palette}
    assert colour["red"] == "#932829" and colour["yellow"] == "#8f8428" and colour["background"] == "#292929"
    assert view["colour_source"] == "table"
    again = nodes["PlanX_EditPlanTokens"].execute(
        plan, "", nodes["PlanX_LoadPlanner"].execute(TINY, "auto", "sdpa", False).args[0]
    )
    assert again.ui["planx_editor"][0]["palette"] == palette  # a reloaded planner gives the same order


def test_an_unknown_word_is_refused_in_plain_words_with_the_nearest_known_ones(nodes, plan):
    planner = nodes["PlanX_LoadPlanner"].execute(TINY, "auto", "sdpa", False).args[0]
    with pytest.raises(Exception) as refused:
        nodes["PlanX_EditPlanTokens"].execute(plan, '[{"op": "fill_word", "keyframe": 0, "word": "tree"}]', planner)
    message = str(refused.value)
    assert "'tree'" in message and "the planner does not know this word" in message
    assert "nearest known words are" in message and "candidates" not in message


def test_display_names_carry_the_pack_name_and_combos_have_defaults(nodes):
    for node_id, node in nodes.items():
        schema = node.define_schema()
        assert schema.display_name.startswith("Plan-X "), (node_id, schema.display_name)
        for item in schema.inputs:
            if type(item).__name__ == "Input" and getattr(item, "options", None) is not None:
                assert item.default in item.options, (node_id, item.id)
        names = [o.display_name for o in schema.outputs]
        assert all(n == n.lower() for n in names), (node_id, names)
