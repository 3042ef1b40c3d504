"""Layer 3: the pack inside a real ComfyUI server (the `comfy_server` fixture), driven over HTTP and /ws.

Loading and schema hygiene (the pack loaded once, models/planx created), every shipped workflow run to
the end on the embedded tiny model into a playable MP4 at the plan's fps beside its frames, the plan as
the one source of the video's size and length (a mismatched override refused naming both values), errors
a user can act on (a plan from another tokenizer), and an interrupt mid-sampling; after each failure the
server must still run the next prompt.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest
from workflow_api import to_api

from planx_core.plan.core import CodebookId, make_plan
from planx_core.plan.timing import keyframe_times

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
TEXT_TO_VIDEO = "Plan-X text to video.json"
LONG_VIDEO = "Plan-X long video (SemanticGen).json"
PLANX_NODES = {
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


def load_api(server, name: str) -> dict:
    workflow = json.loads((REPO / "workflows" / name).read_text(encoding="utf-8"))
    return to_api(workflow, server.object_info)


def node_of(prompt: dict, class_type: str) -> str:
    (node_id,) = [k for k, v in prompt.items() if v["class_type"] == class_type]
    return node_id


def last(events: list[dict]) -> dict:
    return events[-1]


def assert_success(events: list[dict]) -> None:
    end = last(events)
    assert end["type"] == "execution_success", json.dumps(end["data"], indent=1)[:4000]


def fresh_text_to_video(server, seed: int) -> dict:
    """The text-to-video prompt with another sampler seed, so the sampler and below really run again."""
    prompt = load_api(server, TEXT_TO_VIDEO)
    prompt[node_of(prompt, "PlanX_Sampler")]["inputs"]["seed"] = seed
    return prompt


def video_of(server, outputs: dict, node_id: str) -> tuple[int, float, tuple[int, int]]:
    """(frames, fps, (width, height)) of the file a Save Video node wrote, read back with PyAV."""
    (saved,) = outputs[node_id]["images"]
    with av.open(str(server.dirs["output"] / saved["subfolder"] / saved["filename"])) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        return frames, float(stream.average_rate), (stream.width, stream.height)


# ----------------------------------------------------------------------------- loading and schemas


def test_pack_loads_without_import_errors(comfy_server):
    failed = [line for line in comfy_server.log().splitlines() if "IMPORT FAILED" in line and "planx" in line]
    assert not failed, "\n".join(failed)
    missing = PLANX_NODES - set(comfy_server.object_info)
    assert not missing, f"not in /object_info: {sorted(missing)}"
    assert {k for k in comfy_server.object_info if k.startswith("PlanX_")} == PLANX_NODES
    modules = {comfy_server.object_info[k]["python_module"] for k in PLANX_NODES}
    assert modules == {"custom_nodes.planx"}
    log = comfy_server.log()
    imported = re.findall(r"seconds(?: \(IMPORT FAILED\))?: \S*custom_nodes/planx\b", log)  # ComfyUI's import times
    assert len(imported) == 1 and "websocket_image_save" not in log, imported  # only this pack, once
    assert (comfy_server.dirs["models"] / "planx").is_dir()  # the pack shows where model folders go
    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates["planx"]) == sorted(p.stem for p in WORKFLOWS)


def test_every_node_and_input_is_documented(comfy_server):
    problems = []
    for node_id in sorted(PLANX_NODES):
        info = comfy_server.object_info[node_id]
        for key in ("description", "category", "display_name"):
            if not info.get(key):
                problems.append(f"{node_id}: no {key}")
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if not (len(spec) > 1 and spec[1].get("tooltip")):
                    problems.append(f"{node_id}.{name}: no tooltip")
        tooltips = info.get("output_tooltips") or []
        for index, name in enumerate(info.get("output_name", [])):
            if index >= len(tooltips) or not tooltips[index]:
                problems.append(f"{node_id} output {name}: no tooltip")
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------- the shipped workflows


def test_workflows_are_what_the_build_script_writes():
    """workflows/*.json follow the nodes' current schemas (widget order): regenerate them when a node changes."""
    from conftest import _COMFY_SKIP, comfyui_path

    comfy = comfyui_path()
    if comfy is None:
        pytest.skip(_COMFY_SKIP)
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_workflows.py"), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COMFYUI_PATH": str(comfy)},
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_runs(comfy_server, path):
    prompt = load_api(comfy_server, path.name)
    for node in prompt.values():
        if node["class_type"] == "LoadImage":
            image = node["inputs"]["image"]
            assert (comfy_server.dirs["input"] / image).is_file(), (
                f"{image} is not in ComfyUI's input folder: the pack installs it at load time "
                f"(nodes/example_inputs.install_example_inputs, called from nodes/__init__.py)"
            )
    events = comfy_server.run(prompt, timeout=240)
    assert_success(events)
    prompt_id = last(events)["data"]["prompt_id"]
    outputs = comfy_server.history(prompt_id)["outputs"]
    saves = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    assert saves
    frames = 65 if path.name == LONG_VIDEO else 17  # the long one: 8 s at 8 fps
    videos = [k for k, v in prompt.items() if v["class_type"] == "SaveVideo"]
    assert videos
    for node_id in videos:  # an H.264 MP4 at the plan's 8 fps
        assert outputs[node_id]["images"][0]["filename"].endswith(".mp4")
        assert video_of(comfy_server, outputs, node_id) == (frames, 8.0, (64, 64))
    for node_id in saves:
        images = outputs[node_id]["images"]
        assert len(images) == frames, images
        for image in images:
            file = comfy_server.dirs["output"] / image["subfolder"] / image["filename"]
            assert file.is_file() and file.stat().st_size > 0, file
    for node_id in (k for k, v in prompt.items() if v["class_type"] == "PlanX_SavePlan"):
        (saved,) = outputs[node_id]["planx_plans"]
        plan = json.loads((comfy_server.dirs["output"] / saved["subfolder"] / saved["filename"]).read_text())
        assert plan["keyframes"][2]["locked"], "the edit list locks keyframe 2"


# ----------------------------------------------------------------------------- errors a user can act on


def test_the_plan_sets_the_videos_size_and_a_mismatched_override_is_refused(comfy_server):
    """A 33-frame plan renders 33 frames though the sampler's widgets still say 17; with size_from_plan off the
    same widgets are refused, naming both lengths, as is a 80x64 override of a 64x64 plan; then the server
    runs the next prompt."""
    prompt = fresh_text_to_video(comfy_server, seed=11)
    prompt[node_of(prompt, "PlanX_GenerateSemanticPlan")]["inputs"]["length"] = 33
    events = comfy_server.run(prompt, timeout=300)
    assert_success(events)
    outputs = comfy_server.history(last(events)["data"]["prompt_id"])["outputs"]
    assert video_of(comfy_server, outputs, node_of(prompt, "SaveVideo")) == (33, 8.0, (64, 64))
    sampler = node_of(prompt, "PlanX_Sampler")
    prompt[sampler]["inputs"]["size_from_plan"] = False
    end = last(comfy_server.run(prompt, timeout=240))
    assert end["type"] == "execution_error" and end["data"]["node_type"] == "PlanX_Sampler", end
    message = end["data"]["exception_message"]
    assert "the plan covers 33 frames" in message and "would have 17" in message, message
    assert "turn size_from_plan on" in message and "set length to 33" in message, message
    prompt = fresh_text_to_video(comfy_server, seed=12)
    prompt[node_of(prompt, "PlanX_Sampler")]["inputs"].update(size_from_plan=False, width=80)
    end = last(comfy_server.run(prompt, timeout=240))
    assert end["type"] == "execution_error", end
    message = end["data"]["exception_message"]
    assert "64x64" in message and "80x64" in message and "stretched" in message, message
    assert_success(comfy_server.run(fresh_text_to_video(comfy_server, seed=13), timeout=240))


def test_plan_from_another_tokenizer_is_reported_then_server_recovers(comfy_server):
    foreign = CodebookId("some-other-ta-tok", 64, digest="0123456789abcdef" * 4)
    times = keyframe_times(17, 8.0)
    plan = make_plan(
        [[0] * 81 for _ in times], times=times, fps=8.0, num_frames=17, width=64, height=64, codebook=foreign
    )
    (comfy_server.dirs["input"] / "foreign.plan.json").write_text(plan.to_json(indent=1), encoding="utf-8")
    prompt = fresh_text_to_video(comfy_server, seed=21)
    prompt["900"] = {"class_type": "PlanX_LoadPlan", "inputs": {"plan_file": "foreign.plan.json"}}
    prompt[node_of(prompt, "PlanX_InjectRoPEGuidance")]["inputs"]["plan"] = ["900", 0]
    end = last(comfy_server.run(prompt, timeout=240))
    assert end["type"] == "execution_error", end
    assert end["data"]["node_type"] == "PlanX_InjectRoPEGuidance", end["data"]
    message = end["data"]["exception_message"]
    assert "codebook" in message and "tokenizer" in message and "ta_tok.safetensors" in message, message
    assert_success(comfy_server.run(fresh_text_to_video(comfy_server, seed=22), timeout=240))


def test_interrupt_mid_sampling_then_server_recovers(comfy_server):
    prompt = fresh_text_to_video(comfy_server, seed=31)
    sampler = node_of(prompt, "PlanX_Sampler")
    prompt[sampler]["inputs"]["steps"] = 200
    sent = []

    def interrupt_on_progress(event):
        if event["type"] == "progress" and event["data"].get("node") == sampler and not sent:
            sent.append(event["data"]["value"])
            comfy_server.interrupt()

    events = comfy_server.run(prompt, timeout=240, on_event=interrupt_on_progress)
    assert sent, "no progress event from the Plan-X Sampler"
    assert last(events)["type"] == "execution_interrupted", [e["type"] for e in events]
    assert last(events)["data"]["node_type"] == "PlanX_Sampler"
    steps = [e["data"]["value"] for e in events if e["type"] == "progress" and e["data"].get("node") == sampler]
    assert max(steps) < 200, "the sampler ran to the end despite the interrupt"
    assert_success(comfy_server.run(fresh_text_to_video(comfy_server, seed=32), timeout=240))


def test_api_conversion_matches_schema_order(comfy_server):
    """Widgets land on the right inputs: spot-check a node with a seed's extra control value."""
    prompt = load_api(comfy_server, TEXT_TO_VIDEO)
    plan_inputs = prompt[node_of(prompt, "PlanX_GenerateSemanticPlan")]["inputs"]
    assert (plan_inputs["seed"], plan_inputs["temperature"], plan_inputs["top_k"]) == (0, 0.5, 0)
    sampler = copy.deepcopy(prompt[node_of(prompt, "PlanX_Sampler")]["inputs"])
    assert {k: sampler[k] for k in ("seed", "steps", "text_cfg", "plan_cfg", "shift", "solver", "length")} == {
        "seed": 0,
        "steps": 20,
        "text_cfg": 1.0,
        "plan_cfg": 1.0,
        "shift": 0.0,
        "solver": "flow_unipc",
        "length": 17,
    }
