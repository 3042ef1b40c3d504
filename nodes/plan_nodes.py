"""Planning nodes: Load Planner, Generate Semantic Plan, Edit Plan Tokens, and the plan companions
(Plan Preview, Encode Video To Plan; Save Plan and Load Plan are in `plan_files`). Each execute is a
short recipe over `planner_handle` and planx_core. Display names carry the pack's name ("Plan-X ...");
the node ids never change.

Node ids and input names are a promise to every shared workflow: never rename or reorder them;
new inputs go last, optional, with defaults that keep old behaviour.
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from planx_core.plan import (
    PlanError,
    apply_edits,
    parse_edits,
)
from planx_core.planner import MAX_CANDIDATES

from .model_files import planner_choices
from .plan_files import LoadPlan, SavePlan
from .plan_views import editor_view, ordered_palette, picture_of, token_planner, word_lookup
from .planner_handle import ATTENTION, DTYPES, drawn_inputs, load_planner_handle
from .sockets import CATEGORY, PLAN, PLANNER


def _plan_in(
    optional: bool = False,
    tooltip: str = "A keyframe plan (from Generate Semantic Plan, Load Plan, ...).",
    id: str = "plan",
):
    return PLAN.Input(id, optional=optional, tooltip=tooltip)


def _planner_in(optional: bool = False, tooltip: str = "The planner from Load Planner."):
    return PLANNER.Input("planner", optional=optional, tooltip=tooltip)


def _preview_out():
    return io.Image.Output(
        display_name="preview",
        tooltip="Every keyframe's grid in the plan's colours, in rows, with a legend naming the most frequent "
        "codes (their words with a planner).",
    )


class LoadPlanner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_LoadPlanner",
            display_name="Plan-X Load Planner",
            category=CATEGORY,
            description="Loads a Plan-X semantic planner (a language model that writes keyframe plans) and its "
            "TA-Tok tokenizer from models/planx, or the embedded tiny model that runs on a CPU. "
            "'embedded: semanticgen-tiny (diffusion)' is SemanticGen's stage 1 instead: a diffusion "
            "model that plans the whole video as a continuous plan (compact semantic vectors, one "
            "keyframe after another from the ones before it, rendered with the semanticgen-tiny model and "
            "branch); it plans from the text, and from a first frame when one is connected.",
            inputs=[
                io.Combo.Input(
                    "planner",
                    options=planner_choices(),
                    default=planner_choices()[0],
                    tooltip="A folder in models/planx holding "
                    "planner/ and ta_tok.safetensors, the embedded tiny model, or the embedded SemanticGen "
                    "planner (continuous plans; dtype and attention do not apply to it).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="auto",
                    tooltip="Weight dtype; auto keeps fp32 (use bf16 on a GPU for the real planner).",
                ),
                io.Combo.Input(
                    "attention",
                    options=list(ATTENTION),
                    default="sdpa",
                    tooltip="Attention backend of the language model (flash_attention_2 needs flash-attn).",
                ),
                io.Boolean.Input(
                    "keep_loaded",
                    default=False,
                    tooltip="Keep the planner on the GPU after planning; off frees it for the renderer.",
                ),
            ],
            outputs=[PLANNER.Output(display_name="planner", tooltip="Planner and TA-Tok, for the plan nodes.")],
        )

    @classmethod
    def execute(cls, planner, dtype, attention, keep_loaded) -> io.NodeOutput:
        return io.NodeOutput(load_planner_handle(planner, dtype, attention, keep_loaded))


class GenerateSemanticPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_GenerateSemanticPlan",
            display_name="Plan-X Generate Semantic Plan",
            category=CATEGORY,
            description="The planner writes a keyframe plan: every 1/keyframe_rate seconds a 9x9 grid of "
            "text-aligned visual tokens saying what is where. Re-runs only when an input changes. "
            "With the SemanticGen planner the plan is continuous (a 4x4 grid of compact semantic "
            "vectors per keyframe, at its 8 fps, 64x64 and 2 keyframes per second; 65 frames give 17 "
            "keyframes), sampled keyframe by keyframe when the model says so (the embedded one does: its "
            "progress bar counts keyframes x steps); cfg is its text guidance, and temperature, "
            "top_k, top_p, persistence and candidates (token sampling) do not apply.",
            inputs=[
                _planner_in(),
                io.String.Input(
                    "scene",
                    multiline=True,
                    default="a red circle on a dark background",
                    tooltip="What is in the video (the first sentence of a Plan-X prompt).",
                ),
                io.String.Input(
                    "motion",
                    multiline=True,
                    default="the red circle moves right, then up",
                    tooltip="What happens, in order (the rest of the prompt).",
                ),
                io.Int.Input(
                    "width",
                    default=64,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="Video width in pixels. The Plan-X Sampler renders the plan's size, so set it here.",
                ),
                io.Int.Input(
                    "height",
                    default=64,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="Video height in pixels. The Plan-X Sampler renders the plan's size, so set it here.",
                ),
                io.Int.Input(
                    "length",
                    default=17,
                    min=1,
                    max=4097,
                    step=4,
                    tooltip="Video frames (4n+1 for Wan's VAE); the plan covers them all, and the Plan-X "
                    "Sampler renders this many.",
                ),
                io.Float.Input(
                    "fps",
                    default=8.0,
                    min=1.0,
                    max=120.0,
                    step=1.0,
                    tooltip="Frames per second; keyframe times are in seconds, and the Plan-X Sampler's fps "
                    "output passes it on to the video.",
                ),
                io.Float.Input(
                    "keyframe_rate",
                    default=2.0,
                    min=0.1,
                    max=30.0,
                    step=0.5,
                    tooltip="Keyframes per second (Plan-X uses 2).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the planner's sampling.",
                ),
                io.Float.Input(
                    "temperature",
                    default=1.0,
                    min=0.0,
                    max=5.0,
                    step=0.05,
                    tooltip="Sampling temperature; 0 is greedy. The embedded tiny model's text-to-video plans follow "
                    "their prompts best near 0.5 (its model card; the example workflows use it), image-to-video "
                    "at 1.",
                ),
                io.Int.Input("top_k", default=0, min=0, max=65536, tooltip="Keep the k most likely tokens; 0 is off."),
                io.Float.Input(
                    "top_p", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Nucleus sampling; 1 is off."
                ),
                io.Float.Input(
                    "cfg",
                    default=1.0,
                    min=0.0,
                    max=20.0,
                    step=0.1,
                    tooltip="Planner text guidance (1 is off; higher follows the text more).",
                ),
                io.Image.Input(
                    "first_frame",
                    optional=True,
                    tooltip="Image-to-video: keyframe 0 becomes this image's tokens, locked (with the SemanticGen "
                    "planner: its semantic vectors, and the later keyframes are planned from them). Start the "
                    "video from the same image.",
                ),
                io.Image.Input(
                    "context_frames",
                    optional=True,
                    tooltip="Frames the planner reads as visual context before planning.",
                ),
                _plan_in(True, "A plan whose locked keyframes the planner must keep.", "locked_plan"),
                io.Float.Input(
                    "persistence",
                    default=0.0,
                    min=0.0,
                    max=20.0,
                    step=0.1,
                    optional=True,
                    tooltip="Keyframe persistence: added to the score of each cell keeping its token of the keyframe "
                    "before, so what the text does not move stays put; 0 is off, high values stop moving objects "
                    "too. On the embedded tiny model 1 keeps still objects still more often but its videos do not "
                    "follow the prompts better (its model card), so it ships at 0.",
                ),
                io.Int.Input(
                    "candidates",
                    default=1,
                    min=1,
                    max=MAX_CANDIDATES,
                    optional=True,
                    tooltip="Plans to draw: the planner writes this many from the seed and keeps the one it finds "
                    "likeliest (each costs one plan's time); 1 draws one plan, as before. No effect at "
                    "temperature 0, where every draw is the same.",
                ),
                io.Float.Input(
                    "first_frame_lead",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    optional=True,
                    tooltip="SemanticGen planner, first_frame a whole video another model drew for the same prompt "
                    "(a Plan-X render's frames): the keyframes in this first share of the video are taken from "
                    "those frames, stretched over this length, and only the later ones are planned. 0 takes frame 0 "
                    "alone, as before; on the embedded model 0.25 follows the prompt better than 0 (its model card).",
                ),
                io.Float.Input(
                    "first_frame_sketch",
                    default=1.0,
                    min=0.01,
                    max=1.0,
                    step=0.05,
                    optional=True,
                    tooltip="SemanticGen planner, first_frame a drawn video: each keyframe it plans starts from the "
                    "drawn video's own, noised to this level, instead of from pure noise (1, as before); lower "
                    "keeps more of the drawn motion. On the embedded model 0.85 with a lead of 0.25 scored a little "
                    "better than the lead alone (its model card).",
                ),
            ],
            outputs=[PLAN.Output(display_name="plan", tooltip="The keyframe plan."), _preview_out()],
        )

    @classmethod
    def execute(
        cls,
        planner,
        scene,
        motion,
        width,
        height,
        length,
        fps,
        keyframe_rate,
        seed,
        temperature,
        top_k,
        top_p,
        cfg,
        first_frame=None,
        context_frames=None,
        locked_plan=None,
        persistence=0.0,
        candidates=1,
        first_frame_lead=0.0,
        first_frame_sketch=1.0,
    ) -> io.NodeOutput:
        drawn = drawn_inputs(first_frame_lead, first_frame_sketch)  # older planners take neither
        if drawn and planner.kind != "continuous":
            raise PlanError(
                f"{' and '.join(drawn)} take keyframes from a drawn video for the SemanticGen planner; the Plan-X "
                "planner reads frame 0 of first_frame only: set first_frame_lead to 0 and first_frame_sketch to 1"
            )
        plan = planner.plan(
            scene,
            motion,
            fps=fps,
            num_frames=length,
            width=width,
            height=height,
            keyframe_rate=keyframe_rate,
            seed=seed,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            guidance_scale=cfg,
            persistence=persistence,
            candidates=candidates,
            lock_from=locked_plan,
            first_frame=first_frame,
            context_frames=context_frames,
            **drawn,
        )
        return io.NodeOutput(plan, picture_of(plan, planner))  # no picture on the node: Plan Preview shows one


class EditPlanTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_EditPlanTokens",
            display_name="Plan-X Edit Plan Tokens",
            category=CATEGORY,
            description="Edits a plan with the editor drawn on this node: paint cells, retime, duplicate, delete "
            "and lock keyframes. The edits are kept as a list in the 'edits' text, saved with the "
            "workflow and re-applied whenever the plan above changes.",
            inputs=[
                _plan_in(tooltip="The plan to edit."),
                io.String.Input(
                    "edits",
                    multiline=True,
                    default="",
                    tooltip="The edit list (JSON steps) the editor writes; empty means no edits.",
                ),
                _planner_in(True, "The planner: needed to paint words and to label cells with words."),
            ],
            outputs=[PLAN.Output(display_name="plan", tooltip="The edited plan."), _preview_out()],
        )

    @classmethod
    def validate_inputs(cls, edits):
        try:
            parse_edits(edits)
        except PlanError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, plan, edits, planner=None) -> io.NodeOutput:
        """The editor draws the plan itself, so the node shows no picture (it would grow over its neighbours)."""
        words = token_planner(planner)
        lookup = None if words is None else word_lookup(words, ordered_palette(words.palette(), {}, None))
        edited = apply_edits(plan, edits, word_to_code=lookup)
        picture = picture_of(edited, planner)
        return io.NodeOutput(edited, picture, ui={"planx_editor": [editor_view(plan, edited, planner)]})


class PlanPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_PlanPreview",
            display_name="Plan-X Plan Preview",
            category=CATEGORY,
            is_output_node=True,
            description="A picture of a plan: each keyframe's grid in the plan's colours, in rows, with a legend "
            "naming the most frequent codes (their words with a planner connected).",
            inputs=[_plan_in(), _planner_in(True, "Optional: labels each cell with its nearest word.")],
            outputs=[io.Image.Output(display_name="preview", tooltip="The plan picture.")],
        )

    @classmethod
    def execute(cls, plan, planner=None) -> io.NodeOutput:
        picture = picture_of(plan, planner)
        return io.NodeOutput(picture, ui=ui.PreviewImage(picture, cls=cls))


class EncodeVideoToPlan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_EncodeVideoToPlan",
            display_name="Plan-X Encode Video To Plan",
            category=CATEGORY,
            description="Turns video frames into a plan with TA-Tok (semantic transfer: render another prompt "
            "with this clip's layout and motion); with the SemanticGen planner, into a continuous plan "
            "(its semantic encoder and compressor).",
            inputs=[
                io.Image.Input("images", tooltip="The video frames (a batch of images)."),
                _planner_in(tooltip="The planner whose TA-Tok encodes the frames."),
                io.Float.Input("fps", default=8.0, min=1.0, max=120.0, step=1.0, tooltip="Frame rate of the frames."),
                io.Float.Input(
                    "keyframe_rate", default=2.0, min=0.1, max=30.0, step=0.5, tooltip="Keyframes per second."
                ),
            ],
            outputs=[PLAN.Output(display_name="plan", tooltip="The clip's plan."), _preview_out()],
        )

    @classmethod
    def execute(cls, images, planner, fps, keyframe_rate) -> io.NodeOutput:
        plan = planner.plan_from_frames(images, fps, keyframe_rate, grid=9)
        return io.NodeOutput(plan, picture_of(plan, planner))  # no picture on the node: Plan Preview shows one


NODES = [LoadPlanner, GenerateSemanticPlan, EditPlanTokens, PlanPreview, SavePlan, LoadPlan, EncodeVideoToPlan]
__all__ = ["NODES", "PLAN", "PLANNER", "editor_view", "LoadPlan", "SavePlan"]
