"""Plan files both ways: Save Plan (writes output/<prefix>_00001_.plan.json and shows the file's name and a
picture of the plan) and Load Plan (reads a plan from the input folder; the web extension adds an upload
button that puts a file into input/planx/). A JSON file that is not a plan is refused at queue time,
saying what it is instead.

Node ids and input names are a promise to every shared workflow: never rename or reorder them.
"""

from __future__ import annotations

import json
import os

import folder_paths
from comfy_api.latest import io, ui

from planx_core.files import within, write_text_atomic
from planx_core.pipelines import load_plan_file
from planx_core.plan import PlanError

from .plan_views import picture_of
from .sockets import CATEGORY, PLAN

PLAN_SUFFIX = ".plan.json"
UPLOADS = "planx"  # input/planx/: where the Load Plan node's upload button puts files
NO_PLANS = "(no plan files yet: upload one, or put .plan.json files in ComfyUI's input folder)"


class SavePlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_SavePlan",
            display_name="Plan-X Save Plan",
            category=CATEGORY,
            is_output_node=True,
            description="Writes the plan as JSON into ComfyUI's output folder (prefix_00001_.plan.json) and shows "
            "the file's name, a download link and a picture of the plan. Load it again with Plan-X Load Plan.",
            inputs=[
                PLAN.Input("plan", tooltip="A keyframe plan (from Generate Semantic Plan, Load Plan, ...)."),
                io.String.Input(
                    "filename_prefix", default="planx/plan", tooltip="Path under the output folder, without extension."
                ),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, plan, filename_prefix) -> io.NodeOutput:
        output = folder_paths.get_output_directory()
        if within(output, filename_prefix) is None:
            raise ValueError(
                f"filename_prefix {filename_prefix!r} leaves the output folder (an absolute path, '..', or a "
                f"symlinked folder pointing out); use a relative path such as planx/plan"
            )
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output)
        filename = f"{name}_{counter:05}_{PLAN_SUFFIX}"
        write_text_atomic(within(output, os.path.join(subfolder, filename)), plan.to_json(indent=1))
        keyframes = len(plan.keyframes)
        saved = {
            "filename": filename,
            "subfolder": subfolder,
            "type": "output",
            "summary": f"{keyframes} keyframe{'s' * (keyframes != 1)}, {plan.width}x{plan.height}, "
            f"{plan.num_frames} frames at {plan.fps:g} fps",
        }
        return io.NodeOutput(ui={**_preview(plan, cls), "planx_plans": [saved]})


def _preview(plan, cls) -> dict:
    """The plan's picture for the node, or nothing when no known tokenizer can colour it (a plan from another
    tokenizer: the node that renders it says so)."""
    try:
        return ui.PreviewImage(picture_of(plan, None), cls=cls).as_dict()
    except PlanError:
        return {}


def _input_plans() -> list[str]:
    """Plan files in the input folder: *.plan.json and *plan*.json anywhere, every .json in input/planx/."""
    root = folder_paths.get_input_directory()
    found = []
    for folder, _, files in os.walk(root):
        uploads = os.path.relpath(folder, root).split(os.sep)[0] == UPLOADS
        found += [
            os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
            for f in files
            if f.endswith(".json") and (uploads or f.endswith(PLAN_SUFFIX) or "plan" in f)
        ]
    return sorted(found) or [NO_PLANS]


def _input_path(name: str) -> str | None:
    """The plan file's real path when it is a file inside the input folder (symlinks pointing out refused)."""
    path = within(folder_paths.get_input_directory(), name)
    return str(path) if path is not None and path.is_file() else None


def not_a_plan(path: str, name: str) -> str | None:
    """Why the file is not a plan (in plain words), or None when it looks like one (the loader checks the rest)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return f"{name} cannot be read as JSON ({str(err)[:120]}); pick a .plan.json file that Save Plan wrote"
    if isinstance(data, dict) and "keyframes" in data:
        return None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        what = "a ComfyUI workflow"
    elif isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        what = "a ComfyUI API prompt"
    else:
        what = "JSON without keyframes"
    return (
        f"{name} is not a Plan-X plan: it is {what}. Pick a .plan.json file that Plan-X Save Plan wrote "
        f"(in ComfyUI's output folder, under planx/), or upload one with the button"
    )


class LoadPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        plans = _input_plans()
        return io.Schema(
            node_id="PlanX_LoadPlan",
            display_name="Plan-X Load Plan",
            category=CATEGORY,
            description="Reads a plan JSON file from ComfyUI's input folder (older plan versions are migrated). "
            "The 'upload plan' button puts a file from your computer there (input/planx/).",
            inputs=[
                io.Combo.Input(
                    "plan_file",
                    options=plans,
                    default=plans[0],
                    tooltip="A .plan.json file in the input folder (Save Plan writes them to output; upload one "
                    "with the button below).",
                )
            ],
            outputs=[PLAN.Output(display_name="plan", tooltip="The plan read from the file.")],
        )

    @classmethod
    def fingerprint_inputs(cls, plan_file):
        path = _input_path(plan_file)
        return os.path.getmtime(path) if path else plan_file

    @classmethod
    def validate_inputs(cls, plan_file):
        path = _input_path(plan_file)
        if path is None:
            return (
                f"plan file {plan_file!r} is not in ComfyUI's input folder; upload it with the node's button, "
                f"or pick another"
            )
        return not_a_plan(path, plan_file) or True

    @classmethod
    def execute(cls, plan_file) -> io.NodeOutput:
        path = _input_path(plan_file)
        reason = not_a_plan(path, plan_file) if path else f"plan file {plan_file!r} is gone from the input folder"
        if reason:
            raise PlanError(reason)
        try:
            plan = load_plan_file(path)
        except PlanError as err:
            raise PlanError(str(err).replace(path, plan_file)) from None
        return io.NodeOutput(plan, ui=_preview(plan, cls))
