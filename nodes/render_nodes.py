"""Rendering nodes: Inject 3D RoPE Guidance (a plan on a Wan MODEL), the Plan-X Sampler, and the loader
of the embedded tiny models (whose sizes ComfyUI's stock loaders cannot detect; see `comfy_models`):
the Plan-X renderer and SemanticGen's stage 2 (the latent generator for continuous plans).

One source of truth for the video's size, length and fps: the plan. Inject 3D RoPE Guidance records the
plan's video on the MODEL it returns (`PLAN_VIDEO` in its model options); the Plan-X Sampler renders that
size and length unless `size_from_plan` is off, and passes the plan's fps on to the video (its fps output).

Node ids and input names are a promise to every shared workflow: never rename or reorder them; new inputs
go last, optional, with defaults that keep what shipped workflows do; new outputs go last.
"""

from __future__ import annotations

from comfy_api.latest import io

from planx_core.plan import Plan, PlanError
from planx_core.semantic_branch import load_branch
from planx_core.wan import SEMANTICS

from . import comfy_models
from .flow_samplers import SCHEDULERS
from .model_files import (
    SEMANTICGEN_CHOICE,
    SEMANTICGEN_PLANNER_CHOICE,
    branch_choices,
    branch_path,
    bundle_choices,
    cached_bundle,
    cached_semanticgen,
    codebook_for,
    compressor_digest,
    semanticgen_folder_of_branch,
)
from .plan_sampling import PLAN_VIDEO, SOLVERS, sample_with_plan, video_size
from .sockets import CATEGORY, PLAN
from .wan_plan_patch import PlanPatch

MODES = ["from branch file", "cross_attn", "in_context"]


class LoadTinyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_LoadTinyModel",
            display_name="Plan-X Load Tiny Model",
            category=CATEGORY,
            description="The embedded tiny Plan-X renderer (a 4-block Wan DiT, its umT5 text encoder and VAE, "
            "trained on a world of moving shapes) as MODEL, CLIP and VAE for the stock nodes. Runs on a "
            "CPU in seconds; for real videos load Wan 2.2 with the stock loaders instead. "
            "'embedded: semanticgen-tiny' is SemanticGen's stage 2 (a DiT of the same size trained to "
            "render continuous plans in context, for long videos with an attention window) with the "
            "same text encoder and VAE.",
            inputs=[
                io.Combo.Input(
                    "model",
                    options=bundle_choices(),
                    default=bundle_choices()[0],
                    tooltip="The embedded model, a bundle folder in models/planx, or the embedded "
                    "SemanticGen latent generator (use it with the semanticgen-tiny branch "
                    "and a continuous plan).",
                )
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="The Wan DiT (ComfyUI's own Wan 2.2 class)."),
                io.Clip.Output(display_name="clip", tooltip="Its text encoder, for CLIP Text Encode."),
                io.Vae.Output(display_name="vae", tooltip="Its video VAE, for VAE Decode and image-to-video."),
            ],
        )

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        if model == SEMANTICGEN_CHOICE:
            return io.NodeOutput(*comfy_models.semanticgen_parts(cached_semanticgen()))
        return io.NodeOutput(*comfy_models.tiny_parts(cached_bundle(model)))


class InjectRoPEGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_InjectRoPEGuidance",
            display_name="Plan-X Inject 3D RoPE Guidance",
            category=CATEGORY,
            description="Returns a copy of the MODEL that renders with the plan: its tokens go through the semantic "
            "branch into every block's cross-attention (Plan-X), or join the self-attention sequence "
            "as clean extra tokens (in-context: SemanticGen's continuous plans), placed by 3D RoPE on "
            "the video's latent grid. Works with any sampler (KSampler included; the plan is on in both "
            "CFG branches).",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1/2.2 MODEL (stock loaders, LoRA, fp8, GGUF all work)."),
                PLAN.Input("plan", tooltip="The keyframe plan to render."),
                io.Combo.Input(
                    "branch",
                    options=branch_choices(),
                    default=branch_choices()[0],
                    tooltip="Semantic-branch weights made for this MODEL (models/planx). "
                    "'embedded: semanticgen-tiny' is SemanticGen's in-context branch: for "
                    "continuous plans, on the semanticgen-tiny MODEL.",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    tooltip="Scale of the plan attention; 0 turns the plan off.",
                ),
                io.Float.Input(
                    "start",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the schedule where the plan starts (0 = first step).",
                ),
                io.Float.Input(
                    "end",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Fraction of the schedule where the plan stops (1 = last step).",
                ),
                io.Combo.Input(
                    "mode",
                    options=MODES,
                    default=MODES[0],
                    tooltip="How plan tokens enter the DiT; must be what the branch was trained for.",
                ),
                io.Boolean.Input(
                    "rope", default=True, tooltip="3D RoPE positions for the plan tokens; off is the paper's ablation."
                ),
            ],
            outputs=[
                io.Model.Output(
                    display_name="model",
                    tooltip="A patched copy that also carries the plan's video size, length and fps for the "
                    "Plan-X Sampler; the input MODEL is untouched.",
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, start, end):
        return True if start <= end else f"start ({start}) is after end ({end}); the plan would never be on"

    @classmethod
    def execute(cls, model, plan, branch, strength, start, end, mode, rope) -> io.NodeOutput:
        path = branch_path(branch)
        semantic = load_branch(path)
        trained = semantic.config.mode
        if mode != MODES[0] and mode != trained:
            raise ValueError(
                f"the branch {branch!r} was trained for {trained} injection, not {mode}; set mode to "
                f"'from branch file' or pick a branch trained for {mode}"
            )
        codebook = check_plan_fits_branch(plan, branch, path)
        conditioning = semantic.condition_plan(
            plan,
            codebook,
            num_frames=plan.num_frames,
            fps=plan.fps,
            strength=strength,
            use_rope=rope,
            start=start,
            end=end,
        )
        patched = PlanPatch(conditioning).apply_to(model)
        patched.model_options[PLAN_VIDEO] = {
            "width": plan.width,
            "height": plan.height,
            "length": plan.num_frames,
            "fps": plan.fps,
        }
        return io.NodeOutput(patched)


def check_plan_fits_branch(plan: Plan, choice: str, path) -> object:
    """Refuse a plan of the wrong kind or space for the branch (naming both and the fix); returns the codebook a
    token plan's ids index (None for a continuous plan). A branch beside a semanticgen.json renders that
    SemanticGen model's continuous plans; any other branch is a Plan-X branch of TA-Tok token plans. A
    continuous plan without a hash (written by hand) is let through, as `SemanticGen.plan_vectors` does."""
    folder = semanticgen_folder_of_branch(path)
    if folder is None:
        if plan.kind == "continuous":
            raise PlanError(
                f"the plan is continuous ({plan.describe_codebook()}: SemanticGen's semantic vectors), "
                f"but the branch {choice!r} is a Plan-X branch that reads TA-Tok token plans; pick the "
                f"branch {SEMANTICGEN_CHOICE!r} (with Plan-X Load Tiny Model {SEMANTICGEN_CHOICE!r}), or "
                f"plan with a Plan-X planner"
            )
        return codebook_for(plan)
    if plan.kind != "continuous":
        raise PlanError(
            f"the branch {choice!r} renders SemanticGen's continuous plans, but this plan holds TA-Tok "
            f"tokens of {plan.codebook.describe()}; plan with Plan-X Load Planner {SEMANTICGEN_PLANNER_CHOICE!r}, "
            f"or pick a Plan-X branch such as 'embedded: planx-tiny' for token plans"
        )
    digest = compressor_digest(folder)
    if plan.codebook.digest and plan.codebook.digest != digest:
        raise PlanError(
            f"the plan's vectors come from another compressor ({plan.describe_codebook()}), but the "
            f"branch {choice!r} was trained on the compressor with hash {digest}; plan again with Load "
            f"Planner {SEMANTICGEN_PLANNER_CHOICE!r} (or re-encode the video with its Encode Video To "
            f"Plan), or pick the branch of the model that made the plan"
        )
    return None


class PlanXSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_Sampler",
            display_name="Plan-X Sampler",
            category=CATEGORY,
            description="Samples a Wan video latent with separate text and plan guidance (flow matching with a "
            "timestep shift). The video's size and length come from the plan the MODEL carries (set them on "
            "Generate Semantic Plan) unless size_from_plan is off; the fps output is the plan's frame rate, for "
            "Create Video. Give a start image and its VAE for image-to-video (Wan 2.2 TI2V).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL, usually from Inject 3D RoPE Guidance."),
                io.Conditioning.Input("positive", tooltip="The prompt (CLIP Text Encode)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the initial noise.",
                ),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps."),
                io.Float.Input(
                    "text_cfg",
                    default=1.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    tooltip="Text guidance scale (Wan uses 5; the tiny model 1).",
                ),
                io.Float.Input(
                    "plan_cfg",
                    default=1.0,
                    min=0.0,
                    max=30.0,
                    step=0.1,
                    tooltip="Plan guidance scale; above 1 adds a plan-free pass (3 model calls a step).",
                ),
                io.Float.Input(
                    "shift",
                    default=0.0,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    tooltip="Timestep shift; 0 takes the model's default: Wan 2.2 TI2V-5B 5.0 (its config; "
                    "ComfyUI's own default is 8), Wan 2.1 5.0, the tiny models 3; an unknown model keeps its own.",
                ),
                io.Combo.Input(
                    "solver",
                    options=SOLVERS,
                    default="flow_unipc",
                    tooltip="The ODE solver. flow_unipc is Wan 2.2's own sampler (flow UniPC, bh2), flow_euler "
                    "plain Euler on the flow; unipc, euler, dpmpp_2m and res_multistep are ComfyUI's samplers "
                    "(its unipc is another UniPC variant, further from Wan's).",
                ),
                io.Int.Input(
                    "width",
                    default=64,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="Video width, used when the MODEL carries no plan or size_from_plan is off, and no "
                    "latent is connected.",
                ),
                io.Int.Input(
                    "height",
                    default=64,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="Video height, used when the MODEL carries no plan or size_from_plan is off, and no "
                    "latent is connected.",
                ),
                io.Int.Input(
                    "length",
                    default=17,
                    min=1,
                    max=4097,
                    step=4,
                    tooltip="Video frames (4n+1), used when the MODEL carries no plan or size_from_plan is off, "
                    "and no latent is connected.",
                ),
                io.Latent.Input("latent", optional=True, tooltip="A latent to start from (its size wins)."),
                io.Image.Input("start_image", optional=True, tooltip="Image-to-video: the first frame."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE that encodes the start image."),
                io.Int.Input(
                    "attention_window",
                    default=0,
                    min=0,
                    max=1024,
                    optional=True,
                    tooltip="0 = full attention. Otherwise each video token's self-attention sees only "
                    "a window of this many latent frames (4 video frames each), shifted by half a "
                    "window on odd blocks so neighbouring windows mix (SemanticGen's long-video "
                    "mode); window_semantics says which in-context plan tokens a window sees. A "
                    "window covering all latent frames is full attention.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=list(SCHEDULERS),
                    default="simple",
                    optional=True,
                    tooltip="The sigma schedule: simple (ComfyUI's: shifted steps from sigma 1) or wan (Wan's own "
                    "sampler: from sigma 0.999, as the official code runs it).",
                ),
                io.Boolean.Input(
                    "size_from_plan",
                    default=True,
                    optional=True,
                    tooltip="On: render the width, height and length of the plan the MODEL carries (from Inject "
                    "3D RoPE Guidance); the widgets above apply only to a MODEL without a plan. Off: the widgets "
                    "override the plan; a size of another shape or a length other than the plan's is refused, "
                    "naming both.",
                ),
                io.Float.Input(
                    "fps",
                    default=24.0,
                    min=1.0,
                    max=120.0,
                    step=1.0,
                    optional=True,
                    tooltip="Frame rate for the fps output when the MODEL carries no plan; with a plan, the "
                    "plan's own fps is passed on.",
                ),
                io.Combo.Input(
                    "window_semantics",
                    options=list(SEMANTICS),
                    default="global",
                    optional=True,
                    tooltip="With an attention_window and an in-context plan: global = every window sees the "
                    "whole plan (time grows faster than the length on long videos); local = a window sees "
                    "only the keyframes of its own frames (plus window_margin), so time and memory grow "
                    "linearly with the length: SemanticGen's long mode (its stage 1 keeps the plan "
                    "consistent).",
                ),
                io.Int.Input(
                    "window_margin",
                    default=0,
                    min=0,
                    max=1024,
                    optional=True,
                    tooltip="local window_semantics: latent frames of plan a window also sees before and after "
                    "its own frames (0 = only its own).",
                ),
            ],
            outputs=[
                io.Latent.Output(display_name="latent", tooltip="The video latent, for VAE Decode."),
                io.Float.Output(
                    display_name="fps", tooltip="The plan's frames per second (else the fps input), for Create Video."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, width, height, length):
        return True if (length - 1) % 4 == 0 else f"length {length} is not 4n+1; use {length - (length - 1) % 4}"

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        seed,
        steps,
        text_cfg,
        plan_cfg,
        shift,
        solver,
        width,
        height,
        length,
        latent=None,
        start_image=None,
        vae=None,
        attention_window=0,
        scheduler="simple",
        size_from_plan=True,
        fps=24.0,
        window_semantics="global",
        window_margin=0,
    ) -> io.NodeOutput:
        planned = model.model_options.get(PLAN_VIDEO)
        size = video_size(model, planned, (width, height, length), size_from_plan, latent, vae)
        out = sample_with_plan(
            model,
            positive,
            negative,
            seed=seed,
            steps=steps,
            text_cfg=text_cfg,
            plan_cfg=plan_cfg,
            shift=shift,
            solver=solver,
            size=size,
            latent=latent,
            start_image=start_image,
            vae=vae,
            window=attention_window,
            scheduler=scheduler,
            window_semantics=window_semantics,
            window_margin=window_margin,
        )
        return io.NodeOutput(out, float(planned["fps"]) if planned else float(fps))


NODES = [LoadTinyModel, InjectRoPEGuidance, PlanXSampler]
