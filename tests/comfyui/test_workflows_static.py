"""The shipped workflows (workflows/*.json) as files: no server and no ComfyUI needed.

Each is a frontend workflow (version 0.4) using only Plan-X and stock node types, whose links agree
from both ends, which ends in a video (Create Video at the sampler's fps, the plan's, into Save Video)
beside its frames, whose nodes do not overlap and fit one 1600x1000 screen at the shipped zoom, which
has a thumbnail for the Templates browser, and which says in `extra.planx.real_weights` how to run it on
Wan 2.2 TI2V 5B (the SemanticGen long-video workflow says why it has no such variant). That they also
run is checked against a real server in test_server.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOW_DIR = Path(__file__).resolve().parents[2] / "workflows"
WORKFLOWS = sorted(WORKFLOW_DIR.glob("*.json"))
SEMANTICGEN_SPEC = WORKFLOW_DIR.parent / "planx_core" / "embedded" / "semanticgen" / "semanticgen.json"
PLANX = {
    "PlanX_LoadPlanner",
    "PlanX_GenerateSemanticPlan",
    "PlanX_EditPlanTokens",
    "PlanX_InjectRoPEGuidance",
    "PlanX_Sampler",
    "PlanX_PlanPreview",
    "PlanX_SavePlan",
    "PlanX_LoadPlan",
    "PlanX_EncodeVideoToPlan",
    "PlanX_LoadTinyModel",
}
STOCK = {"CLIPTextEncode", "VAEDecode", "SaveImage", "LoadImage", "CreateVideo", "SaveVideo"}
REAL_LOADERS = {"UNETLoader": "diffusion_models", "CLIPLoader": "text_encoders", "VAELoader": "vae"}
LONG_VIDEO = "Plan-X long video (SemanticGen).json"  # SemanticGen: 65 frames, attention window, no real weights
EXPECTED = {
    "Plan-X text to video.json",
    "Plan-X image to video.json",
    "Plan-X edit a plan.json",
    "Plan-X semantic transfer.json",
    LONG_VIDEO,
}
TITLE = 30  # LiteGraph's title bar above a node's pos
SCREEN_UNITS = ((1536 - 32) / 0.75, (922 - 32) / 0.75)  # a 1600x1000 window's canvas at the shipped zoom 0.75


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_five_workflows_are_shipped_with_thumbnails():
    assert EXPECTED == {p.name for p in WORKFLOWS}
    for path in WORKFLOWS:  # the Templates browser shows /api/workflow_templates/<pack>/<name>.jpg
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file() and thumbnail.read_bytes()[:3] == b"\xff\xd8\xff", thumbnail.name


@pytest.fixture(params=WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def workflow(request) -> dict:
    return load(request.param)


def test_format_and_node_types(workflow):
    assert workflow["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in workflow, key
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(ids) == len(set(ids)) and max(ids) <= workflow["last_node_id"]
    for node in workflow["nodes"]:
        assert node["type"] in PLANX | STOCK, f"node {node['id']}: unexpected type {node['type']}"
        for key in ("pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties", "widgets_values"):
            assert key in node, f"node {node['id']} ({node['type']}) has no {key}"
        assert node["mode"] == 0, f"node {node['id']} is muted or bypassed in a shipped workflow"
    orders = sorted(n["order"] for n in workflow["nodes"])
    assert orders == list(range(len(orders)))
    assert any(n["type"] == "SaveImage" for n in workflow["nodes"])


def test_every_render_ends_in_a_video_at_the_plans_fps(workflow):
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    samplers = [n for n in nodes.values() if n["type"] == "PlanX_Sampler"]
    videos = [n for n in nodes.values() if n["type"] == "SaveVideo"]
    assert samplers and len(videos) == len(samplers)
    for save in videos:
        create = nodes[links[save["inputs"][0]["link"]][1]]
        assert create["type"] == "CreateVideo"
        fps = next(s for s in create["inputs"] if s["name"] == "fps")
        source, slot = links[fps["link"]][1:3]
        assert nodes[source]["type"] == "PlanX_Sampler" and slot == 1  # the sampler's fps output: the plan's


def test_layout_fits_one_screen_without_overlaps(workflow):
    boxes = {
        n["id"]: (n["pos"][0], n["pos"][1] - TITLE, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        for n in workflow["nodes"]
    }
    for a, box_a in boxes.items():
        for b, box_b in boxes.items():
            apart = box_a[2] <= box_b[0] or box_b[2] <= box_a[0] or box_a[3] <= box_b[1] or box_b[3] <= box_a[1]
            assert a == b or apart, (a, b)
    ds = workflow["extra"]["ds"]
    assert ds["scale"] == 0.75
    for x0, y0, x1, y1 in boxes.values():  # on screen: (pos + offset) * scale inside the canvas
        assert (x0 + ds["offset"][0]) >= 0 and (y0 + ds["offset"][1]) >= 0
        assert (x1 + ds["offset"][0]) <= SCREEN_UNITS[0] + 32 / 0.75
        assert (y1 + ds["offset"][1]) <= SCREEN_UNITS[1] + 32 / 0.75


def test_links_agree_from_both_ends(workflow):
    nodes = {n["id"]: n for n in workflow["nodes"]}
    link_ids = [link[0] for link in workflow["links"]]
    assert len(link_ids) == len(set(link_ids)) and max(link_ids) <= workflow["last_link_id"]
    for link_id, source, slot, target, target_slot, type_ in workflow["links"]:
        out = nodes[source]["outputs"][slot]
        socket = nodes[target]["inputs"][target_slot]
        assert link_id in (out["links"] or []), f"link {link_id} missing from node {source} output {slot}"
        assert socket["link"] == link_id, f"link {link_id} missing from node {target} input {socket['name']}"
        assert out["type"] == socket["type"] == type_, f"link {link_id}: {out['type']} -> {socket['type']} ({type_})"
    known = set(link_ids)
    for node in nodes.values():
        for socket in node["inputs"]:
            if socket["link"] is None:
                assert socket.get("shape") == 7, f"node {node['id']} ({node['type']}): {socket['name']} unconnected"
            else:
                assert socket["link"] in known
        for out in node["outputs"]:
            assert set(out["links"] or []) <= known


def _name(request) -> str:
    return request.node.callspec.params["workflow"].name


def test_real_weights_variant_is_described(workflow, request):
    real = workflow["extra"]["planx"]["real_weights"]
    if _name(request) == LONG_VIDEO:
        assert real["available"] is False and "no real-weights variant" in real["summary"]
        return
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    assert real["summary"] and real["video"] == {"width": 1280, "height": 704, "length": 121, "fps": 24.0}
    loaders = {loader["type"]: loader for loader in real["loaders"]}
    assert set(loaders) == set(REAL_LOADERS)
    for type_, folder in REAL_LOADERS.items():
        loader = loaders[type_]
        (model,) = loader["properties"]["models"]
        assert model["directory"] == folder and model["name"] == loader["widgets_values"][0]
        tiny, slot = loader["replaces_output"]
        assert nodes[str(tiny)]["type"] == "PlanX_LoadTinyModel" and 0 <= slot < 3
    assert loaders["CLIPLoader"]["widgets_values"][1] == "wan"
    for node_id, change in real["nodes"].items():
        assert nodes[node_id]["type"] == change["type"], node_id
        assert change["widgets"]
    changed = {change["type"]: change for change in real["nodes"].values()}
    assert changed["PlanX_LoadPlanner"]["widgets"] == {"planner": "planx-wan22"}
    assert changed["PlanX_LoadPlanner"]["properties"]["models"] == [{"name": "planx-wan22", "directory": "planx"}]
    assert changed["PlanX_InjectRoPEGuidance"]["widgets"] == {"branch": "planx-wan22/branch.safetensors"}
    sampling = changed["PlanX_Sampler"]["widgets"]  # Wan 2.2 TI2V-5B's own: 50 steps, CFG 5, shift 5, Wan's schedule
    assert (sampling["steps"], sampling["text_cfg"], sampling["shift"], sampling["scheduler"]) == (50, 5.0, 5.0, "wan")
    names = {(m["name"], m["directory"]) for m in real["models"]}
    assert ("wan2.2_ti2v_5B_fp16.safetensors", "diffusion_models") in names
    assert ("planx-wan22/branch.safetensors", "planx") in names


def test_shipped_settings_run_on_the_tiny_model(workflow, request):
    """Tiny loaders and the embedded planner; 64x64, 17 frames at 8 fps, 20 steps, both CFGs 1, shift 0, full
    attention. The long-video workflow: the embedded SemanticGen, 65 frames, attention window 2, local, and its
    folder's own guidance (semanticgen.json's stage-1 text scale as the plan's cfg, its stage-2 text and plan scales
    as the sampler's, as `semanticgen` plans and renders)."""
    long = _name(request) == LONG_VIDEO
    length, window = (65, 2) if long else (17, 0)
    cfgs, plan_cfg = [1.0, 1.0], None
    if long:
        spec = json.loads(SEMANTICGEN_SPEC.read_text())
        cfgs, plan_cfg = [spec["text_scale"], spec["plan_scale"]], spec["semantic_text_scale"]
    loaders = {
        "PlanX_LoadPlanner": "embedded: semanticgen-tiny (diffusion)" if long else "embedded: planx-tiny",
        "PlanX_LoadTinyModel": "embedded: semanticgen-tiny" if long else "embedded: planx-tiny",
        "PlanX_InjectRoPEGuidance": "embedded: semanticgen-tiny" if long else "embedded: planx-tiny",
    }
    for node in workflow["nodes"]:
        values = node["widgets_values"]
        if node["type"] in loaders:
            assert values[0] == loaders[node["type"]], node["type"]
        if node["type"] == "PlanX_GenerateSemanticPlan":
            assert values[2:6] == [64, 64, length, 8.0]  # scene, motion, width, height, length, fps, ...
            if long:  # ..., keyframe rate, seed, control, temperature, top-k, top-p, cfg (stage-1 text guidance)
                assert values[12] == plan_cfg
        if node["type"] == "PlanX_Sampler":  # seed, "fixed", steps, text_cfg, plan_cfg, shift, solver, w, h, length,
            assert values[2:6] == [20, *cfgs, 0.0] and values[7:11] == [64, 64, length, window]  # window
            if long:  # window_semantics, window_margin: each window sees its own frames' keyframes
                assert values[14:16] == ["local", 0]
