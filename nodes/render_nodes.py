"""Rendering nodes: Inject 3D RoPE Guidance (a plan on a Wan MODEL), the Plan-X Sampler, and the loader
of the embedded tiny model (whose sizes ComfyUI's stock loaders cannot detect; see `comfy_models`).

Node ids and input names are a promise to every shared workflow: never rename or reorder them.
"""
from __future__ import annotations

from comfy_api.latest import io

from planx_core.semantic_branch import load_branch

from .model_files import branch_choices, branch_path, bundle_choices, cached_bundle, codebook_for
from .plan_nodes import CATEGORY, PLAN
from .plan_sampling import SOLVERS, sample_with_plan
from .wan_plan_patch import PlanPatch
from . import comfy_models

MODES = ["from branch file", "cross_attn", "in_context"]


class LoadTinyModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_LoadTinyModel", display_name="Load Plan-X Tiny Model", category=CATEGORY,
            description="The embedded tiny Plan-X renderer (a 4-block Wan DiT, its umT5 text encoder and VAE, "
                        "trained on a world of moving shapes) as MODEL, CLIP and VAE for the stock nodes. Runs on a "
                        "CPU in seconds; for real videos load Wan 2.2 with the stock loaders instead.",
            inputs=[io.Combo.Input("model", options=bundle_choices(),
                                   tooltip="The embedded model, or a bundle folder in models/planx.")],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The Wan DiT (ComfyUI's own Wan 2.2 class)."),
                     io.Clip.Output(display_name="CLIP", tooltip="Its text encoder, for CLIP Text Encode."),
                     io.Vae.Output(display_name="VAE", tooltip="Its video VAE, for VAE Decode and image-to-video.")])

    @classmethod
    def execute(cls, model) -> io.NodeOutput:
        return io.NodeOutput(*comfy_models.tiny_parts(cached_bundle(model)))


class InjectRoPEGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_InjectRoPEGuidance", display_name="Inject 3D RoPE Guidance", category=CATEGORY,
            description="Returns a copy of the MODEL that renders with the plan: its tokens go through the semantic "
                        "branch into every block's cross-attention, placed by 3D RoPE on the video's latent grid. "
                        "Works with any sampler (KSampler included; the plan is on in both CFG branches).",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1/2.2 MODEL (stock loaders, LoRA, fp8, GGUF all work)."),
                PLAN.Input("plan", tooltip="The keyframe plan to render."),
                io.Combo.Input("branch", options=branch_choices(),
                               tooltip="Semantic-branch weights made for this MODEL (models/planx)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Scale of the plan attention; 0 turns the plan off."),
                io.Float.Input("start", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the plan starts (0 = first step)."),
                io.Float.Input("end", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule where the plan stops (1 = last step)."),
                io.Combo.Input("mode", options=MODES, default=MODES[0],
                               tooltip="How plan tokens enter the DiT; must be what the branch was trained for."),
                io.Boolean.Input("rope", default=True,
                                 tooltip="3D RoPE positions for the plan tokens; off is the paper's ablation."),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="A patched copy; the input MODEL is untouched.")])

    @classmethod
    def validate_inputs(cls, start, end):
        return True if start <= end else f"start ({start}) is after end ({end}); the plan would never be on"

    @classmethod
    def execute(cls, model, plan, branch, strength, start, end, mode, rope) -> io.NodeOutput:
        semantic = load_branch(branch_path(branch))
        trained = semantic.config.mode
        if mode != MODES[0] and mode != trained:
            raise ValueError(f"the branch {branch!r} was trained for {trained} injection, not {mode}; set mode to "
                             f"'from branch file' or pick a branch trained for {mode}")
        if trained != "cross_attn":
            raise ValueError(f"branch {branch!r} uses in-context injection, which this ComfyUI patch does not run "
                             f"yet; use a cross_attn branch (the Plan-X default)")
        conditioning = semantic.condition_plan(plan, codebook_for(plan), num_frames=plan.num_frames, fps=plan.fps,
                                               strength=strength, use_rope=rope, start=start, end=end)
        return io.NodeOutput(PlanPatch(conditioning).apply_to(model))


class PlanXSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PlanX_Sampler", display_name="Plan-X Sampler", category=CATEGORY,
            description="Samples a Wan video latent with separate text and plan guidance (flow matching with a "
                        "timestep shift). Give a start image and its VAE for image-to-video (Wan 2.2 TI2V).",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL, usually from Inject 3D RoPE Guidance."),
                io.Conditioning.Input("positive", tooltip="The prompt (CLIP Text Encode)."),
                io.Conditioning.Input("negative", tooltip="The negative prompt."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the initial noise."),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampling steps."),
                io.Float.Input("text_cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Text guidance scale (Wan uses 5; the tiny model 1)."),
                io.Float.Input("plan_cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Plan guidance scale; above 1 adds a plan-free pass (3 model calls a step)."),
                io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.1,
                               tooltip="Timestep shift; 0 keeps the model's own (tiny: 3, Wan 2.2 5B: 8)."),
                io.Combo.Input("solver", options=list(SOLVERS), default="unipc", tooltip="The ODE solver."),
                io.Int.Input("width", default=64, min=16, max=4096, step=16,
                             tooltip="Video width, used when no latent is connected."),
                io.Int.Input("height", default=64, min=16, max=4096, step=16,
                             tooltip="Video height, used when no latent is connected."),
                io.Int.Input("length", default=17, min=1, max=4097, step=4,
                             tooltip="Video frames (4n+1), used when no latent is connected."),
                io.Latent.Input("latent", optional=True, tooltip="A latent to start from (its size wins)."),
                io.Image.Input("start_image", optional=True, tooltip="Image-to-video: the first frame."),
                io.Vae.Input("vae", optional=True, tooltip="The VAE that encodes the start image."),
            ],
            outputs=[io.Latent.Output(display_name="LATENT", tooltip="The video latent, for VAE Decode.")])

    @classmethod
    def validate_inputs(cls, width, height, length):
        return True if (length - 1) % 4 == 0 else f"length {length} is not 4n+1; use {length - (length - 1) % 4}"

    @classmethod
    def execute(cls, model, positive, negative, seed, steps, text_cfg, plan_cfg, shift, solver, width, height, length,
                latent=None, start_image=None, vae=None) -> io.NodeOutput:
        out = sample_with_plan(model, positive, negative, seed=seed, steps=steps, text_cfg=text_cfg,
                               plan_cfg=plan_cfg, shift=shift, solver=solver, size=(width, height, length),
                               latent=latent, start_image=start_image, vae=vae)
        return io.NodeOutput(out)


NODES = [LoadTinyModel, InjectRoPEGuidance, PlanXSampler]
