"""The five example graphs `build_workflows.py` writes: what each holds, where each node sits, and how to run it
on real weights. Places are (x, y, width, height) in canvas units with the title bar included; the layouts
keep the bottom-right corner free for the frontend's minimap."""

from __future__ import annotations

import json
from pathlib import Path

from planx_core import EMBEDDED as EMBEDDED_FOLDER
from planx_core.pipelines import PlanningDefaults
from planx_core.semanticgen.model import SemanticGenSpec

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
_SPEC_FILE = EMBEDDED_FOLDER / "semanticgen" / "semanticgen.json"
SEMANTICGEN_SPEC = SemanticGenSpec.from_json(_SPEC_FILE.read_text(), _SPEC_FILE)  # the folder's own sampling
LONG_GUIDANCE = {"text_cfg": SEMANTICGEN_SPEC.text_scale, "plan_cfg": SEMANTICGEN_SPEC.plan_scale}

TEXT_TO_VIDEO = "Plan-X text to video.json"
IMAGE_TO_VIDEO = "Plan-X image to video.json"
EDIT_PLAN = "Plan-X edit a plan.json"
SEMANTIC_TRANSFER = "Plan-X semantic transfer.json"
LONG_VIDEO_FILE = "Plan-X long video (SemanticGen).json"

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
# the embedded bundle's own planning defaults (its bundle.json, chosen in its model card): the text-to-video
# temperature, the keyframe persistence and the plans drawn per request
EMBEDDED_SPEC = Path(__file__).resolve().parents[1] / "planx_core" / "embedded" / "bundle.json"
EMBEDDED_PLANNING = json.loads(EMBEDDED_SPEC.read_text())["planning"]
T2V_TEMPERATURE = EMBEDDED_PLANNING["t2v_temperature"]
# the node's inputs that carry the bundle's value when it is not the default (the node's defaults are
# `PlanningDefaults`', the old behaviour)
EMBEDDED_INPUTS = {
    name: EMBEDDED_PLANNING[name]
    for name in ("persistence", "candidates")
    if EMBEDDED_PLANNING.get(name, getattr(PlanningDefaults, name)) != getattr(PlanningDefaults, name)
}

# each embedded planner's own plan-node inputs: the bundle's planning values, the SemanticGen folder's stage-1 guidance
PLANNER_INPUTS = {EMBEDDED: EMBEDDED_INPUTS, SEMANTICGEN_PLANNER: {"cfg": SEMANTICGEN_SPEC.semantic_text_scale}}


def planning(g, planner_at, plan_at, planner=EMBEDDED, motion=MOTION, video=VIDEO, **plan_inputs):
    """The planner loader and the plan node; the embedded planner's plans at its persistence and candidates, and its
    text-to-video plans at its t2v temperature; the SemanticGen planner's at its folder's stage-1 text guidance."""
    planner_node = g.add("PlanX_LoadPlanner", planner_at, planner=planner)
    own_inputs = PLANNER_INPUTS.get(planner, {})  # a real planner's folder: the node's defaults
    text_only = planner == EMBEDDED and "first_frame" not in plan_inputs
    plan = g.add(
        "PlanX_GenerateSemanticPlan",
        plan_at,
        inputs={"planner": (planner_node, 0), **plan_inputs},
        scene=SCENE,
        motion=motion,
        fps=8.0,
        **video,
        **({"temperature": T2V_TEMPERATURE} if text_only else {}),
        **own_inputs,
    )
    return planner_node, plan


def rendering(g, plan_source, places: dict, prompt: str, prefix: str, tiny, negative=None, suffix="", **options):
    """Prompts, Inject, Plan-X Sampler, VAE Decode, Create Video (at the sampler's fps, the plan's) and Save Video,
    plus Save Image for the frames when `places` has "frames"; returns the decode node. `places` maps each part
    to its place; `options`: branch, video (widgets kept in step with the plan), sampler_widgets, sampler inputs."""
    branch = options.pop("branch", EMBEDDED)
    video = options.pop("video", VIDEO)
    sampler_widgets = options.pop("sampler_widgets", {})
    positive = g.add(
        "CLIPTextEncode", places["positive"], title=f"Positive prompt{suffix}", inputs={"clip": (tiny, 1)}, text=prompt
    )
    if negative is None:
        negative = g.add(
            "CLIPTextEncode", places["negative"], title="Negative prompt", inputs={"clip": (tiny, 1)}, text=""
        )
    inject = g.add(
        "PlanX_InjectRoPEGuidance", places["inject"], inputs={"model": (tiny, 0), "plan": plan_source}, branch=branch
    )
    sampler = g.add(
        "PlanX_Sampler",
        places["sampler"],
        inputs={"model": (inject, 0), "positive": (positive, 0), "negative": (negative, 0), **options},
        **{**SAMPLING, **video, **sampler_widgets},
    )
    decode = g.add("VAEDecode", places["decode"], inputs={"samples": (sampler, 0), "vae": (tiny, 2)})
    create = g.add("CreateVideo", places["create"], inputs={"images": (decode, 0), "fps": (sampler, 1)}, fps=8.0)
    g.add("SaveVideo", places["video"], title=f"Video{suffix}", inputs={"video": (create, 0)}, filename_prefix=prefix)
    if "frames" in places:
        g.add(
            "SaveImage",
            places["frames"],
            title=f"Frames{suffix}",
            inputs={"images": (decode, 0)},
            filename_prefix=f"{prefix}_frames",
        )
    return decode


def output_column(x: int, width: int = 560) -> dict:
    """Decode over the video, Create Video over the frames. A square video's preview is as tall as its node is
    wide, so the video's node is about a preview's width plus its widgets tall."""
    half = width // 2 - 10
    return {
        "decode": (x, 0, half, 80),
        "create": (x + half + 20, 0, width - half - 20, 110),
        "video": (x, 130, half, half + 160),
        "frames": (x + half + 20, 130, width - half - 20, half + 160),
    }


def real_weights(g, summary: str) -> dict:
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
        "summary": summary + " To use real weights: replace Plan-X Load Tiny Model (node "
        f"{tiny['id']}) by the three stock loaders below, each feeding what that node's "
        "output of the same slot fed (MODEL, CLIP, VAE), apply 'nodes' (widgets by name and "
        "properties, per node id), and put the model files in the folders named. The video's size, "
        "length and fps follow the plan (Generate Semantic Plan).",
        "model": "Wan 2.2 TI2V 5B",
        "video": {**REAL_VIDEO, "fps": REAL_FPS},
        "loaders": loaders,
        "nodes": changes,
        "models": models,
    }


def text_to_video(g, name: str) -> dict:
    planner, plan = planning(g, (0, 0, 300, 160), (0, 180, 300, 620))
    tiny = g.add("PlanX_LoadTinyModel", (0, 820, 300, 130), model=EMBEDDED)
    g.add("PlanX_PlanPreview", (320, 0, 520, 460), inputs={"plan": (plan, 0), "planner": (planner, 0)})
    places = {
        "positive": (320, 480, 520, 150),
        "negative": (320, 650, 520, 120),
        "inject": (860, 0, 300, 230),
        "sampler": (860, 250, 300, 510),
        **output_column(1180),
    }
    rendering(g, (plan, 0), places, PROMPT, "planx/t2v", tiny)
    return g.workflow(
        name, real_weights(g, "Text to video: the planner writes a keyframe plan, the renderer follows it.")
    )


def image_to_video(g, name: str) -> dict:
    image = g.add("LoadImage", (0, 0, 300, 340), image=EXAMPLE_IMAGE)
    planner, plan = planning(g, (0, 360, 300, 160), (0, 540, 300, 620), first_frame=(image, 0))
    tiny = g.add("PlanX_LoadTinyModel", (320, 790, 520, 130), model=EMBEDDED)
    g.add("PlanX_PlanPreview", (320, 0, 520, 460), inputs={"plan": (plan, 0), "planner": (planner, 0)})
    places = {
        "positive": (320, 480, 520, 150),
        "negative": (320, 650, 520, 120),
        "inject": (860, 0, 300, 230),
        "sampler": (860, 250, 300, 510),
        **output_column(1180),
    }
    rendering(g, (plan, 0), places, PROMPT, "planx/i2v", tiny, start_image=(image, 0), vae=(tiny, 2))
    return g.workflow(
        name,
        real_weights(
            g, "Image to video: the first frame is planned (locked keyframe 0) and rendered from the start image."
        ),
    )


def edit_plan(g, name: str) -> dict:
    planner, plan = planning(g, (0, 0, 300, 160), (0, 180, 300, 620))
    tiny = g.add("PlanX_LoadTinyModel", (0, 820, 300, 130), model=EMBEDDED)
    edited = g.add(
        "PlanX_EditPlanTokens", (320, 0, 800, 700), inputs={"plan": (plan, 0), "planner": (planner, 0)}, edits=EDITS
    )
    g.add("PlanX_SavePlan", (320, 720, 800, 460), inputs={"plan": (edited, 0)}, filename_prefix="planx/edited")
    places = {
        "positive": (1140, 0, 300, 150),
        "negative": (1140, 170, 300, 120),
        "inject": (1140, 310, 300, 230),
        "sampler": (1140, 560, 300, 510),
        **output_column(1460, 540),
    }
    rendering(g, (edited, 0), places, PROMPT, "planx/edit", tiny)
    return g.workflow(
        name,
        real_weights(
            g, "Edit a plan: keyframe 2 gets a red 3x3 block and is locked, the edited plan is saved and rendered."
        ),
    )


def semantic_transfer(g, name: str) -> dict:
    planner, plan = planning(g, (0, 0, 300, 160), (0, 180, 300, 620))
    tiny = g.add("PlanX_LoadTinyModel", (0, 820, 300, 130), model=EMBEDDED)
    negative = g.add("CLIPTextEncode", (0, 970, 300, 120), title="Negative prompt", inputs={"clip": (tiny, 1)}, text="")
    first = {
        "positive": (320, 0, 300, 150),
        "inject": (320, 170, 300, 230),
        "sampler": (320, 420, 300, 510),
        "decode": (640, 0, 200, 80),
        "create": (860, 0, 200, 110),
        "video": (640, 130, 300, 420),
    }
    decode = rendering(g, (plan, 0), first, PROMPT, "planx/transfer_a", tiny, negative, suffix=" (clip A)")
    encoded = g.add(
        "PlanX_EncodeVideoToPlan",
        (640, 570, 420, 135),
        inputs={"images": (decode, 0), "planner": (planner, 0)},
        fps=8.0,
    )
    g.add("PlanX_PlanPreview", (640, 725, 420, 440), inputs={"plan": (encoded, 0), "planner": (planner, 0)})
    second = {
        "positive": (1080, 0, 300, 150),
        "inject": (1080, 170, 300, 230),
        "sampler": (1080, 420, 300, 510),
        **output_column(1400),
    }
    rendering(g, (encoded, 0), second, OTHER_PROMPT, "planx/transfer_b", tiny, negative, suffix=" (clip B)")
    return g.workflow(
        name,
        real_weights(
            g,
            "Semantic transfer: clip A is rendered from a plan, encoded back into a plan, "
            "and that layout and motion rendered with another prompt (clip B).",
        ),
    )


def long_video_semanticgen(g, name: str) -> dict:
    planner, plan = planning(
        g, (0, 0, 300, 160), (0, 180, 300, 620), planner=SEMANTICGEN_PLANNER, motion=LONG_MOTION, video=LONG_VIDEO
    )
    tiny = g.add("PlanX_LoadTinyModel", (0, 820, 300, 130), model=SEMANTICGEN)
    g.add("PlanX_PlanPreview", (320, 0, 520, 460), inputs={"plan": (plan, 0)})
    places = {
        "positive": (320, 480, 520, 150),
        "negative": (320, 650, 520, 120),
        "inject": (860, 0, 300, 230),
        "sampler": (860, 250, 300, 510),
        **output_column(1180),
    }
    rendering(
        g,
        (plan, 0),
        places,
        LONG_PROMPT,
        "planx/long",
        tiny,
        branch=SEMANTICGEN,
        video=LONG_VIDEO,
        sampler_widgets={"attention_window": LONG_WINDOW, "window_semantics": "local", **LONG_GUIDANCE},
    )
    return g.workflow(
        name,
        {
            "available": False,
            "summary": (
                "Long video with SemanticGen (arXiv 2512.20619) on the embedded toy model: its diffusion planner "
                "samples a continuous plan for all 65 frames at once (17 keyframes of compact semantic vectors), the "
                "latent generator renders it in context with windowed attention (2 latent frames, shifted on odd "
                "blocks; each window sees the plan's keyframes of its own frames, so time grows linearly with "
                "the length). There are no Wan-scale SemanticGen weights for this pack, "
                "so this workflow has no real-weights variant; attention_window itself works on any Wan MODEL."
            ),
        },
    )


WORKFLOWS = {
    TEXT_TO_VIDEO: text_to_video,
    IMAGE_TO_VIDEO: image_to_video,
    EDIT_PLAN: edit_plan,
    SEMANTIC_TRANSFER: semantic_transfer,
    LONG_VIDEO_FILE: long_video_semanticgen,
}
