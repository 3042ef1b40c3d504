"""Write the example workflows, workflows/*.json, in ComfyUI's UI (frontend) format, version 0.4.

Every workflow runs as shipped on the embedded tiny model on a CPU; its `extra.planx.real_weights`
block says how to turn it into the Wan 2.2 TI2V 5B version (the SemanticGen long-video workflow has
none: `available` is false and `summary` says why). Widget values are ordered by the nodes'
real schemas, read from a ComfyUI checkout (COMFYUI_PATH, else ~/ComfyUI) in CPU mode:

    .venv/bin/python scripts/build_workflows.py [--check]

--check compares instead of writing (exit 1 when a file is stale).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from enum import Enum
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}

EMBEDDED = "embedded: planx-tiny"
SCENE, MOTION = "a red circle on a dark background", "the red circle moves right, then up"
PROMPT = f"{SCENE}. {MOTION}."
OTHER_PROMPT = "a blue square on a dark background. the blue square moves right, then up."
VIDEO = {"width": 64, "height": 64, "length": 17}
SAMPLING = {"seed": 0, "steps": 20, "text_cfg": 1.0, "plan_cfg": 1.0, "shift": 0.0}
EDITS = json.dumps(
    [{"op": "fill_word", "keyframe": 2, "rect": [3, 3, 5, 5], "word": "red"}, {"op": "lock", "keyframe": 2}]
)
EXAMPLE_IMAGE = "planx_red_circle.png"  # nodes/example_inputs.py puts it in ComfyUI's input folder
SEMANTICGEN_PLANNER = "embedded: semanticgen-tiny (diffusion)"
SEMANTICGEN = "embedded: semanticgen-tiny"
LONG_MOTION = "the red circle moves right, then up, then left, then down"
LONG_PROMPT = f"{SCENE}. {LONG_MOTION}."
LONG_VIDEO = {"width": 64, "height": 64, "length": 65}  # 8 s at 8 fps: 17 latent frames, 17 semantic keyframes
LONG_WINDOW = 2  # latent frames per attention window (the SemanticGen model's own)

REAL_MODELS = {  # the real-weight variant's files: loader type -> (widget values, model file entry)
    "UNETLoader": (
        ["wan2.2_ti2v_5B_fp16.safetensors", "default"],
        {"name": "wan2.2_ti2v_5B_fp16.safetensors", "directory": "diffusion_models"},
    ),
    "CLIPLoader": (
        ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"],
        {"name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "directory": "text_encoders"},
    ),
    "VAELoader": (["wan2.2_vae.safetensors"], {"name": "wan2.2_vae.safetensors", "directory": "vae"}),
}
REAL_PLANNER = {"name": "planx-wan22", "directory": "planx"}
REAL_BRANCH = {"name": "planx-wan22/branch.safetensors", "directory": "planx"}
REAL_VIDEO = {"width": 1280, "height": 704, "length": 121}
REAL_FPS = 24.0


# ----------------------------------------------------------------------------- schemas


def load_schemas() -> dict:
    """NODE_CLASS_MAPPINGS of stock ComfyUI plus this pack, imported from a checkout in CPU mode."""
    comfy = next(
        (
            Path(p)
            for p in (os.environ.get("COMFYUI_PATH"), str(Path.home() / "ComfyUI"))
            if p and (Path(p) / "comfy").is_dir()
        ),
        None,
    )
    if comfy is None:
        sys.exit("no ComfyUI checkout: set COMFYUI_PATH or put one at ~/ComfyUI")
    sys.path.insert(0, str(comfy))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (after args.cpu)

    import nodes as comfy_nodes

    spec = importlib.util.spec_from_file_location(
        "planx_pack", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules["planx_pack"] = pack
    spec.loader.exec_module(pack)
    return {**comfy_nodes.NODE_CLASS_MAPPINGS, **pack.NODE_CLASS_MAPPINGS}


def _name(t) -> str | list:
    return t.value if isinstance(t, Enum) else t


def is_widget(spec) -> bool:
    return isinstance(spec[0], list) or _name(spec[0]) in WIDGET_TYPES


def default_of(spec):
    kind, opts = _name(spec[0]), (spec[1] if len(spec) > 1 else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind, (opts.get("options") or [""])[0])


# ----------------------------------------------------------------------------- graph


class Graph:
    """A UI workflow under construction: nodes placed in columns, links by output slot."""

    COLUMN_WIDTH, GAP = 400, 40

    def __init__(self, schemas: dict):
        self.schemas = schemas
        self.nodes: list[dict] = []
        self.links: list[list] = []
        self.column_y: dict[int, float] = {}

    def add(
        self,
        type_: str,
        column: int,
        *,
        title: str | None = None,
        inputs: dict | None = None,
        node_height: int | None = None,
        **widgets,
    ) -> dict:
        """A node with `inputs` {name: (node, slot)} linked and `widgets` overriding the schema's defaults."""
        cls = self.schemas[type_]
        spec = cls.INPUT_TYPES()
        sockets, values, names = [], [], []
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                if is_widget(entry):
                    names.append(name)
                    values.append(widgets.pop(name) if name in widgets else default_of(entry))
                    if (entry[1] if len(entry) > 1 else {}).get("control_after_generate"):
                        values.append("fixed")  # the frontend's control widget after a seed
                else:
                    socket = {"name": name, "type": _name(entry[0]), "link": None}
                    if section == "optional":
                        socket["shape"] = 7  # the frontend's hollow dot for optional inputs
                    sockets.append(socket)
        if widgets:
            raise KeyError(f"{type_} has no widget {sorted(widgets)}")
        if type_ == "LoadImage":
            values.append("image")  # the upload button's value, as the frontend saves it
        outputs = [
            {"name": n, "type": _name(t), "links": [], "slot_index": i}
            for i, (t, n) in enumerate(zip(cls.RETURN_TYPES, getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES))
        ]
        for out in outputs:
            out["name"] = _name(out["name"])
        tall = sum(90 if n in ("scene", "motion", "text", "edits") else 22 for n in names)
        size = [340, node_height or 40 + 20 * max(len(sockets), len(outputs)) + tall + 22 * values.count("fixed")]
        y = self.column_y.get(column, 0)
        self.column_y[column] = y + size[1] + self.GAP + 30
        node = {
            "id": len(self.nodes) + 1,
            "type": type_,
            "pos": [50 + column * self.COLUMN_WIDTH, 50 + y],
            "size": size,
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": sockets,
            "outputs": outputs,
            "properties": {"Node name for S&R": type_},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        for name, (source, slot) in (inputs or {}).items():
            self.link(source, slot, node, name)
        return node

    def link(self, source: dict, slot: int, target: dict, name: str) -> None:
        socket = next(s for s in target["inputs"] if s["name"] == name)
        out = source["outputs"][slot]
        if out["type"] != socket["type"]:
            raise TypeError(
                f"{source['type']}.{out['name']} ({out['type']}) -> {target['type']}.{name} ({socket['type']})"
            )
        link_id = len(self.links) + 1
        self.links.append([link_id, source["id"], slot, target["id"], target["inputs"].index(socket), out["type"]])
        socket["link"] = link_id
        out["links"].append(link_id)

    def workflow(self, real_weights: dict) -> dict:
        ranked = sorted(self.nodes, key=lambda n: (self._rank(n), n["id"]))
        for order, node in enumerate(ranked):  # the frontend's execution order
            node["order"] = order
        for out in (o for n in self.nodes for o in n["outputs"]):
            out["links"] = out["links"] or None
        return {
            "last_node_id": len(self.nodes),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}, "planx": {"real_weights": real_weights}},
            "version": 0.4,
        }

    def _rank(self, node: dict) -> int:
        by_id = {n["id"]: n for n in self.nodes}
        parents = [by_id[link[1]] for link in self.links if link[3] == node["id"]]
        return max((self._rank(p) + 1 for p in parents), default=0)


# ----------------------------------------------------------------------------- the workflows


def planning(g: Graph, **plan_inputs) -> tuple[dict, dict]:
    planner = g.add("PlanX_LoadPlanner", 0, planner=EMBEDDED)
    plan = g.add(
        "PlanX_GenerateSemanticPlan",
        1,
        inputs={"planner": (planner, 0), **plan_inputs},
        scene=SCENE,
        motion=MOTION,
        fps=8.0,
        **VIDEO,
    )
    return planner, plan


def rendering(
    g: Graph,
    plan_source: tuple[dict, int],
    column: int,
    prompt: str,
    prefix: str,
    tiny: dict | None = None,
    suffix: str = "",
    branch: str = EMBEDDED,
    video: dict = VIDEO,
    sampler_widgets: dict | None = None,
    **sampler_inputs,
) -> dict:
    """Tiny model + prompts + Inject + Plan-X Sampler + VAE Decode + Save Image; returns the decode node."""
    tiny = tiny or g.add("PlanX_LoadTinyModel", 0, model=EMBEDDED)
    positive = g.add(
        "CLIPTextEncode", column, title=f"Positive prompt{suffix}", inputs={"clip": (tiny, 1)}, text=prompt
    )
    negative = g.add("CLIPTextEncode", column, title=f"Negative prompt{suffix}", inputs={"clip": (tiny, 1)}, text="")
    inject = g.add(
        "PlanX_InjectRoPEGuidance", column + 1, inputs={"model": (tiny, 0), "plan": plan_source}, branch=branch
    )
    sampler = g.add(
        "PlanX_Sampler",
        column + 2,
        inputs={"model": (inject, 0), "positive": (positive, 0), "negative": (negative, 0), **sampler_inputs},
        **SAMPLING,
        **video,
        **(sampler_widgets or {}),
    )
    decode = g.add("VAEDecode", column + 3, inputs={"samples": (sampler, 0), "vae": (tiny, 2)})
    g.add("SaveImage", column + 4, inputs={"images": (decode, 0)}, node_height=320, filename_prefix=prefix)
    return decode


def real_weights(g: Graph, summary: str) -> dict:
    """How to run this workflow on Wan 2.2 TI2V 5B: loaders replacing the tiny model, widgets to change."""
    tiny = next(n for n in g.nodes if n["type"] == "PlanX_LoadTinyModel")
    loaders = [
        {
            "type": t,
            "replaces_output": [tiny["id"], slot],
            "widgets_values": values,
            "properties": {"Node name for S&R": t, "models": [model]},
        }
        for slot, (t, (values, model)) in enumerate(REAL_MODELS.items())
    ]
    changes, models = {}, [m for _, m in REAL_MODELS.values()] + [REAL_PLANNER, REAL_BRANCH]
    for node in g.nodes:
        change = {
            "PlanX_LoadPlanner": {
                "widgets": {"planner": REAL_PLANNER["name"]},
                "properties": {"models": [REAL_PLANNER]},
            },
            "PlanX_GenerateSemanticPlan": {"widgets": {**REAL_VIDEO, "fps": REAL_FPS}},
            "PlanX_InjectRoPEGuidance": {
                "widgets": {"branch": REAL_BRANCH["name"]},
                "properties": {"models": [REAL_BRANCH]},
            },
            "PlanX_Sampler": {
                "widgets": {**REAL_VIDEO, "steps": 50, "text_cfg": 5.0, "shift": 5.0, "scheduler": "wan"}
            },
            "PlanX_EncodeVideoToPlan": {"widgets": {"fps": REAL_FPS}},
        }.get(node["type"])
        if change:
            changes[str(node["id"])] = {"type": node["type"], **change}
    return {
        "summary": summary + " To use real weights: replace Load Plan-X Tiny Model (node "
        f"{tiny['id']}) by the three stock loaders below, each feeding what that node's "
        "output of the same slot fed (MODEL, CLIP, VAE), apply 'nodes' (widgets by name and "
        "properties, per node id), and put the model files in the folders named.",
        "model": "Wan 2.2 TI2V 5B",
        "video": {**REAL_VIDEO, "fps": REAL_FPS},
        "loaders": loaders,
        "nodes": changes,
        "models": models,
    }


def text_to_video(schemas) -> dict:
    g = Graph(schemas)
    planner, plan = planning(g)
    g.add("PlanX_PlanPreview", 2, inputs={"plan": (plan, 0), "planner": (planner, 0)}, node_height=320)
    rendering(g, (plan, 0), 2, PROMPT, "planx/t2v")
    return g.workflow(real_weights(g, "Text to video: the planner writes a keyframe plan, the renderer follows it."))


def image_to_video(schemas) -> dict:
    g = Graph(schemas)
    image = g.add("LoadImage", 0, node_height=340, image=EXAMPLE_IMAGE)
    planner, plan = planning(g, first_frame=(image, 0))
    tiny = g.add("PlanX_LoadTinyModel", 0, model=EMBEDDED)
    g.add("PlanX_PlanPreview", 2, inputs={"plan": (plan, 0), "planner": (planner, 0)}, node_height=320)
    rendering(g, (plan, 0), 2, PROMPT, "planx/i2v", tiny=tiny, start_image=(image, 0), vae=(tiny, 2))
    return g.workflow(
        real_weights(
            g, "Image to video: the first frame is planned (locked keyframe 0) and rendered from the start image."
        )
    )


def edit_plan(schemas) -> dict:
    g = Graph(schemas)
    planner, plan = planning(g)
    edited = g.add(
        "PlanX_EditPlanTokens", 2, inputs={"plan": (plan, 0), "planner": (planner, 0)}, node_height=420, edits=EDITS
    )
    g.add("PlanX_SavePlan", 2, inputs={"plan": (edited, 0)}, filename_prefix="planx/edited")
    g.add("PlanX_PlanPreview", 2, inputs={"plan": (edited, 0), "planner": (planner, 0)}, node_height=320)
    rendering(g, (edited, 0), 3, PROMPT, "planx/edit")
    return g.workflow(
        real_weights(
            g, "Edit a plan: keyframe 2 gets a red 3x3 block and is locked, the edited plan is saved and rendered."
        )
    )


def semantic_transfer(schemas) -> dict:
    g = Graph(schemas)
    planner, plan = planning(g)
    decode = rendering(g, (plan, 0), 2, PROMPT, "planx/transfer_a", suffix=" (clip A)")
    tiny = next(n for n in g.nodes if n["type"] == "PlanX_LoadTinyModel")
    encoded = g.add("PlanX_EncodeVideoToPlan", 6, inputs={"images": (decode, 0), "planner": (planner, 0)}, fps=8.0)
    g.add("PlanX_PlanPreview", 6, inputs={"plan": (encoded, 0), "planner": (planner, 0)}, node_height=320)
    rendering(g, (encoded, 0), 7, OTHER_PROMPT, "planx/transfer_b", tiny=tiny, suffix=" (clip B)")
    return g.workflow(
        real_weights(
            g,
            "Semantic transfer: clip A is rendered from a plan, encoded back into a plan, "
            "and that layout and motion rendered with another prompt (clip B).",
        )
    )


def long_video_semanticgen(schemas) -> dict:
    g = Graph(schemas)
    planner = g.add("PlanX_LoadPlanner", 0, planner=SEMANTICGEN_PLANNER)
    plan = g.add(
        "PlanX_GenerateSemanticPlan",
        1,
        inputs={"planner": (planner, 0)},
        scene=SCENE,
        motion=LONG_MOTION,
        fps=8.0,
        **LONG_VIDEO,
    )
    g.add("PlanX_PlanPreview", 2, inputs={"plan": (plan, 0)}, node_height=320)
    tiny = g.add("PlanX_LoadTinyModel", 0, model=SEMANTICGEN)
    rendering(
        g,
        (plan, 0),
        2,
        LONG_PROMPT,
        "planx/long",
        tiny=tiny,
        branch=SEMANTICGEN,
        video=LONG_VIDEO,
        sampler_widgets={"attention_window": LONG_WINDOW},
    )
    return g.workflow(
        {
            "available": False,
            "summary": (
                "Long video with SemanticGen (arXiv 2512.20619) on the embedded toy model: its diffusion planner "
                "samples a continuous plan for all 65 frames at once (17 keyframes of compact semantic vectors), the "
                "latent generator renders it in context with windowed attention (2 latent frames, shifted on odd "
                "blocks; every window sees the whole plan). There are no Wan-scale SemanticGen weights for this pack, "
                "so this workflow has no real-weights variant; attention_window itself works on any Wan MODEL."
            ),
        }
    )


WORKFLOWS = {
    "planx_text_to_video.json": text_to_video,
    "planx_image_to_video.json": image_to_video,
    "planx_edit_plan.json": edit_plan,
    "planx_semantic_transfer.json": semantic_transfer,
    "planx_long_video_semanticgen.json": long_video_semanticgen,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files instead of writing them")
    check = parser.parse_args().check
    schemas = load_schemas()
    stale = []
    for name, build in WORKFLOWS.items():
        text = json.dumps(build(schemas), indent=2) + "\n"
        path = OUT / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run scripts/build_workflows.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
