"""Layer 2: the pack's nodes in-process with a real ComfyUI checkout (CPU), no server.

The plan patch on ComfyUI's native WanModel must compute what planx_core's DiT computes with the
same weights (cross-attention and in-context plans, full and windowed attention); the nodes must
keep their ids and input order (shared workflows); the planner must leave the accelerator after use
unless told to stay; the tiny model's stand-ins must match planx_core; SemanticGen's continuous
plans must go from Load Planner to the sampler, and plans of the wrong kind be refused with a fix.
"""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import randomize

from planx_core.pipelines.bundle import load_bundle
from planx_core.pipelines.planx import PlanXPipeline
from planx_core.plan.core import CodebookId, PlanError
from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.wan.configs import DiTConfig
from planx_core.wan.windows import WindowSpec

pytestmark = pytest.mark.comfyui
ROOT = Path(__file__).resolve().parents[2]

# Every node's inputs, in order: shared workflows depend on these names and this order. Add new
# inputs at the end (optional); never rename, remove or reorder.
NODE_INPUTS = {
    "PlanX_LoadPlanner": ["planner", "dtype", "attention", "keep_loaded"],
    "PlanX_GenerateSemanticPlan": [
        "planner",
        "scene",
        "motion",
        "width",
        "height",
        "length",
        "fps",
        "keyframe_rate",
        "seed",
        "temperature",
        "top_k",
        "top_p",
        "cfg",
        "first_frame",
        "context_frames",
        "locked_plan",
        "persistence",
        "candidates",
        "first_frame_lead",
        "first_frame_sketch",
    ],
    "PlanX_EditPlanTokens": ["plan", "edits", "planner"],
    "PlanX_InjectRoPEGuidance": ["model", "plan", "branch", "strength", "start", "end", "mode", "rope"],
    "PlanX_Sampler": [
        "model",
        "positive",
        "negative",
        "seed",
        "steps",
        "text_cfg",
        "plan_cfg",
        "shift",
        "solver",
        "width",
        "height",
        "length",
        "latent",
        "start_image",
        "vae",
        "attention_window",
        "scheduler",
        "size_from_plan",
        "fps",
        "window_semantics",
        "window_margin",
    ],
    "PlanX_PlanPreview": ["plan", "planner"],
    "PlanX_SavePlan": ["plan", "filename_prefix"],
    "PlanX_LoadPlan": ["plan_file"],
    "PlanX_EncodeVideoToPlan": ["images", "planner", "fps", "keyframe_rate"],
    "PlanX_LoadTinyModel": ["model"],
}


@pytest.fixture(scope="module")
def pack(comfy_modules):
    """The pack imported as ComfyUI imports a custom node folder (a package under another name)."""
    if "planx_pack" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "planx_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["planx_pack"] = module
        spec.loader.exec_module(module)
    return sys.modules["planx_pack"]


@pytest.fixture(scope="module")
def nodes(pack):
    return pack.NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def embedded():
    bundle = load_bundle()
    pipe = PlanXPipeline(bundle)
    plan = pipe.plan("a red circle on a dark background", "the red circle moves right", seed=0, progress=False)
    return bundle, pipe, plan


SEMANTICGEN = "embedded: semanticgen-tiny"
SEMANTICGEN_PLANNER = "embedded: semanticgen-tiny (diffusion)"
SCENE, MOTION = "a red circle on a dark background", "the red circle moves right, then up"


def _velocity(patcher, x, sigma, context, **kwargs):
    """The MODEL's velocity for latent x at sigma `[B]`, through BaseModel.apply_model and its wrappers."""
    options = {**patcher.model_options["transformer_options"], "wrappers": patcher.wrappers}
    with torch.no_grad():
        denoised = patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options, **kwargs)
    return (x - denoised) / sigma.view(-1, 1, 1, 1, 1)


@pytest.fixture(scope="module")
def semanticgen(pack):
    """The embedded SemanticGen (as the nodes load it) and a 65-frame continuous plan from its planner node."""
    from planx_pack.nodes.model_files import cached_semanticgen

    nodes = pack.NODE_CLASS_MAPPINGS
    planner = nodes["PlanX_LoadPlanner"].execute(SEMANTICGEN_PLANNER, "auto", "sdpa", False).args[0]
    plan, picture = (
        nodes["PlanX_GenerateSemanticPlan"]
        .execute(planner, SCENE, MOTION, 64, 64, 65, 8.0, 2.0, 0, 1.0, 0, 1.0, 1.0)
        .args
    )
    return cached_semanticgen(), planner, plan, picture


# ----------------------------------------------------------------------------- schemas


def test_node_ids_and_input_order_are_stable(nodes):
    assert sorted(nodes) == sorted(NODE_INPUTS)
    for node_id, names in NODE_INPUTS.items():
        types = nodes[node_id].INPUT_TYPES()
        got = list(types.get("required", {})) + list(types.get("optional", {}))
        assert got == names, node_id


def test_every_input_has_a_tooltip_and_every_node_a_description(nodes):
    for node_id, node in nodes.items():
        schema = node.define_schema()
        assert schema.description and schema.category == "Plan-X", node_id
        for item in schema.inputs + schema.outputs:
            assert item.tooltip, f"{node_id}.{item.id} has no tooltip"


# ----------------------------------------------------------------------------- the plan patch


def _branch_for(config: DiTConfig, code_dim: int, seed: int = 1) -> SemanticBranch:
    branch = SemanticBranch(
        BranchConfig(code_dim=code_dim, dim=config.dim, num_heads=config.num_heads, num_layers=config.num_layers)
    )
    return randomize(branch, std=0.2, seed=seed)


@pytest.mark.parametrize("rope,strength", [(True, 1.0), (False, 1.0), (True, 0.5)], ids=["rope", "no_rope", "half"])
def test_patch_matches_planx_dit(pack, embedded, rope, strength):
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch

    bundle, pipe, plan = embedded
    model = tiny_model(bundle, TinyLatent())
    conditioning = pipe.condition(plan, strength=strength, rope=rope)
    patched = PlanPatch(conditioning).apply_to(model)
    x, sigma, context = torch.randn(1, 16, 5, 16, 16), torch.tensor([0.6]), torch.randn(1, 64, 64)
    got = _velocity(patched, x, sigma, context)
    want = bundle.dit(x, sigma * 1000, context, plan=conditioning)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    plain = _velocity(model, x, sigma, context)
    assert (plain - got).abs().max() > 1e-2  # the plan changes the output
    assert not model.wrappers  # the input MODEL is untouched


def test_patch_matches_when_the_text_is_as_long_as_the_video(pack, embedded):
    """Self- and cross-attention are told apart by their key length, not by call order; when the text context
    happens to be as long as the video (320 tokens here), the block's first such call is the self-attention."""
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch

    bundle, pipe, plan = embedded
    conditioning = pipe.condition(plan)
    patched = PlanPatch(conditioning).apply_to(tiny_model(bundle, TinyLatent()))
    x, sigma, context = torch.randn(1, 16, 5, 16, 16), torch.tensor([0.6]), torch.randn(1, 320, 64)
    got = _velocity(patched, x, sigma, context)
    want = bundle.dit(x, sigma * 1000, context, plan=conditioning)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_attention_calls_are_classified_by_length(pack):
    """An extra call before the self-attention (newer ComfyUI: image context, context latents) is not taken for
    it, and only the block's first cross-attention call gets the plan attention."""
    from planx_pack.nodes.wan_plan_patch import _Call

    call = _Call(dm=None, grid=(5, 8, 8))
    call.enter(3, None, self_length=320)
    q, image, text = torch.zeros(1, 320, 8), torch.zeros(1, 257, 8), torch.zeros(1, 512, 8)
    assert not call.is_self_attention(q, image)
    assert call.is_self_attention(q, q) and not call.is_self_attention(q, q)  # one self-attention per block
    assert not call.is_self_attention(q, text)
    assert not call.takes_plan_attention()  # no plan: nothing to add
    call.enter(4, None, self_length=320)
    assert call.is_self_attention(q, q)


def test_patch_matches_with_per_frame_timesteps(pack, embedded):
    """TI2V: a noise mask keeps latent frame 0, so frame 0 runs at timestep 0 (WAN22.process_timestep)."""
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch

    bundle, pipe, plan = embedded
    conditioning = pipe.condition(plan)
    patched = PlanPatch(conditioning).apply_to(tiny_model(bundle, TinyLatent()))
    x, sigma, context = torch.randn(1, 16, 5, 16, 16), torch.tensor([0.8]), torch.randn(1, 64, 64)
    mask = torch.ones(1, 1, 5, 16, 16)
    mask[:, :, 0] = 0
    got = _velocity(patched, x, sigma, context, denoise_mask=mask)
    t = torch.tensor([[0.0] + [800.0] * 4])
    torch.testing.assert_close(got, bundle.dit(x, t, context, plan=conditioning), atol=1e-4, rtol=1e-4)


def test_stock_loader_and_patch_on_a_wan_shaped_dit(pack, comfy_modules):
    """A DiT with Wan's sizes per head (128) loads through ComfyUI's stock detection as WAN22 and the
    patch on it matches planx_core: the path of the real Wan 2.2 5B weights."""
    import comfy.sd
    from planx_pack.nodes.wan_plan_patch import PlanPatch

    from planx_core.wan.dit import WanModel

    cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=48, out_dim=48, name="wan-shaped")
    ours = randomize(WanModel(cfg), std=0.05)
    sd = {f"model.diffusion_model.{k}": v.clone() for k, v in ours.state_dict().items()}
    model = comfy.sd.load_diffusion_model_state_dict(sd)
    assert type(model.model).__name__ == "WAN22" and model.model.diffusion_model.num_heads == 2
    branch = _branch_for(cfg, code_dim=32)
    codebook = torch.nn.functional.normalize(torch.randn(100, 32), dim=1)
    ids = torch.randint(0, 100, (1, 2 * 81))
    conditioning = branch.condition(codebook[ids], [0.0, 2.0], (9, 9))
    patched = PlanPatch(conditioning).apply_to(model)
    x, sigma, context = torch.randn(1, 48, 3, 8, 12), torch.tensor([0.5]), torch.randn(1, 16, 4096)
    got = _velocity(patched, x, sigma, context)
    torch.testing.assert_close(got, ours(x, sigma * 1000, context, plan=conditioning), atol=2e-4, rtol=1e-3)


def _in_context_branch(config: DiTConfig, code_dim: int = 8, seed: int = 3) -> SemanticBranch:
    branch = SemanticBranch(
        BranchConfig(
            code_dim=code_dim,
            dim=config.dim,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            mode="in_context",
        )
    )
    return randomize(branch, std=0.2, seed=seed)


@pytest.mark.parametrize(
    "rope,strength", [(True, 1.0), (False, 1.0), (True, 0.5), (True, 0.0)], ids=["rope", "no_rope", "half", "off"]
)
def test_in_context_patch_matches_planx_dit(pack, embedded, rope, strength):
    """An in-context plan (semantic tokens appended to the self-attention sequence at timestep 0) on ComfyUI's
    WanModel equals planx_core's forward with the same weights; a random branch, so no trained value matters."""
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch

    bundle = embedded[0]
    model = tiny_model(bundle, TinyLatent())
    branch = _in_context_branch(bundle.dit.config)
    conditioning = branch.condition(
        torch.randn(1, 5 * 16, 8), [0.0, 1.0, 2.0, 3.0, 4.0], (4, 4), strength=strength, use_rope=rope
    )
    patched = PlanPatch(conditioning).apply_to(model)
    x, sigma, context = torch.randn(1, 16, 5, 16, 16), torch.tensor([0.6]), torch.randn(1, 64, 64)
    got = _velocity(patched, x, sigma, context)
    want = bundle.dit(x, sigma * 1000, context, plan=conditioning)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    if strength:
        assert (_velocity(model, x, sigma, context) - got).abs().max() > 1e-2  # the plan changes the output


@pytest.mark.parametrize(
    "plan_mode,semantics,margin",
    [(None, "global", 0), ("in_context", "global", 0), ("in_context", "local", 0), ("in_context", "local", 1)]
    + [("cross_attn", "global", 0)],
)
def test_attention_window_matches_planx_dit(pack, embedded, plan_mode, semantics, margin):
    """The Plan-X Sampler's attention_window on ComfyUI's WanModel equals planx_core's forward(..., window=2):
    shifted windows of 2 latent frames, every window seeing all in-context plan tokens (global) or its own
    span's (local, with a margin); per-frame timesteps (a start image's frame 0 at t = 0) and a batch of two
    (CFG) included."""
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch, with_window

    bundle, pipe, plan = embedded
    model = tiny_model(bundle, TinyLatent())
    conditioning = None
    if plan_mode == "in_context":
        conditioning = _in_context_branch(bundle.dit.config).condition(
            torch.randn(1, 9 * 16, 8), [float(k) for k in range(9)], (4, 4), strength=0.7
        )
    elif plan_mode == "cross_attn":
        conditioning = pipe.condition(plan)
    planned = model if conditioning is None else PlanPatch(conditioning).apply_to(model)
    windowed = with_window(planned, 2, semantics, margin)
    spec = WindowSpec(2, semantics, margin)
    x, context = torch.randn(2, 16, 9, 16, 16), torch.randn(2, 64, 64)
    sigma = torch.tensor([0.7, 0.7])
    got = _velocity(windowed, x, sigma, context)
    want = bundle.dit(x, sigma * 1000, context, plan=conditioning, window=spec)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    full = bundle.dit(x, sigma * 1000, context, plan=conditioning)
    assert (full - want).abs().max() > 1e-2  # the window changes the output
    mask = torch.ones(1, 1, 9, 16, 16)
    mask[:, :, 0] = 0
    got = _velocity(windowed, x[:1], sigma[:1], context[:1], denoise_mask=mask)
    t = torch.tensor([[0.0] + [700.0] * 8])
    torch.testing.assert_close(
        got, bundle.dit(x[:1], t, context[:1], plan=conditioning, window=spec), atol=1e-4, rtol=1e-4
    )
    assert not model.wrappers  # the input MODEL is untouched
    if semantics == "local":  # and it differs from global: the span matters
        spread = bundle.dit(x, sigma * 1000, context, plan=conditioning, window=WindowSpec(2, "global"))
        assert (spread - want).abs().max() > 1e-3


def test_in_context_and_window_on_a_wan_shaped_dit(pack, comfy_modules):
    """The same on a DiT with Wan's 128-wide heads loaded by ComfyUI's stock detection (the real-weights path)."""
    import comfy.sd
    from planx_pack.nodes.wan_plan_patch import PlanPatch, with_window

    from planx_core.wan.dit import WanModel

    cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, in_dim=48, out_dim=48, name="wan-shaped")
    ours = randomize(WanModel(cfg), std=0.05)
    sd = {f"model.diffusion_model.{k}": v.clone() for k, v in ours.state_dict().items()}
    model = comfy.sd.load_diffusion_model_state_dict(sd)
    conditioning = _in_context_branch(cfg, code_dim=16).condition(torch.randn(1, 3 * 9, 16), [0.0, 1.5, 3.0], (3, 3))
    patched = with_window(PlanPatch(conditioning).apply_to(model), 2)
    x, sigma, context = torch.randn(1, 48, 4, 8, 12), torch.tensor([0.5]), torch.randn(1, 16, 4096)
    got = _velocity(patched, x, sigma, context)
    want = ours(x, sigma * 1000, context, plan=conditioning, window=WindowSpec(2, "global"))
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3)
    local = with_window(PlanPatch(conditioning).apply_to(model), 2, "local")
    want = ours(x, sigma * 1000, context, plan=conditioning, window=2)  # planx_core's default: local
    torch.testing.assert_close(_velocity(local, x, sigma, context), want, atol=2e-4, rtol=1e-3)


def test_embedded_dit_needs_the_pack_loader(pack, comfy_modules):
    """ComfyUI's detection takes heads = dim // 128 and a 256-wide time embedding; the tiny DiT has 4
    heads of 32 and a 64-wide one, so the stock loader cannot build it (why Load Plan-X Tiny Model exists)."""
    import comfy.sd

    from planx_core.files.safetensors import read_safetensors

    sd = read_safetensors(Path(pack.nodes.model_files.EMBEDDED) / "dit.safetensors")
    with pytest.raises(Exception):  # noqa: B017 (whatever ComfyUI raises: it cannot build this size)
        model = comfy.sd.load_diffusion_model_state_dict(dict(sd))
        assert model.model.diffusion_model.num_heads == 4


def test_plan_window_and_plan_off(pack, embedded):
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PLAN_OFF_KEY, PlanPatch

    bundle, pipe, plan = embedded
    model = tiny_model(bundle, TinyLatent())
    late = PlanPatch(replace(pipe.condition(plan), start=0.5)).apply_to(model)
    x, context = torch.randn(1, 16, 5, 16, 16), torch.randn(1, 64, 64)
    early_sigma, late_sigma = torch.tensor([1.0]), torch.tensor([0.05])
    torch.testing.assert_close(_velocity(late, x, early_sigma, context), _velocity(model, x, early_sigma, context))
    assert (_velocity(late, x, late_sigma, context) - _velocity(model, x, late_sigma, context)).abs().max() > 1e-2
    late.model_options["transformer_options"][PLAN_OFF_KEY] = True
    torch.testing.assert_close(_velocity(late, x, late_sigma, context), _velocity(model, x, late_sigma, context))


def test_plan_longer_than_the_video_is_refused(pack, embedded):
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch

    bundle, pipe, plan = embedded
    patched = PlanPatch(pipe.condition(plan)).apply_to(tiny_model(bundle, TinyLatent()))
    short = torch.randn(1, 16, 2, 16, 16)  # 5 frames; the plan's last keyframe is at frame 16
    with pytest.raises(ValueError, match="longer than the video"):
        _velocity(patched, short, torch.tensor([0.5]), torch.randn(1, 64, 64))


def test_foreign_codebook_is_refused_with_a_fix(pack, embedded):
    from planx_pack.nodes.model_files import codebook_for

    _, _, plan = embedded
    foreign = plan.copy()
    foreign.codebook = CodebookId("other-tok", plan.codebook.size, "0123456789abcdef")
    with pytest.raises(PlanError, match="another tokenizer"):
        codebook_for(foreign)
    assert codebook_for(plan).shape[0] == plan.codebook.size


def test_a_damaged_tatok_file_in_the_models_folder_is_named_not_fatal(pack, embedded, tmp_path, monkeypatch):
    """A truncated `*ta_tok*.safetensors` is skipped and named in the error, a hidden temp never read; the
    embedded plan still finds its codebook (once, a damaged file stopped every plan preview)."""
    from planx_pack.nodes import model_files

    _, _, plan = embedded
    (tmp_path / "broken_ta_tok.safetensors").write_bytes(b"\x10\x00\x00")
    (tmp_path / ".x_ta_tok.partial-1.safetensors").write_bytes(b"\x10\x00\x00")
    monkeypatch.setattr(model_files, "planx_dirs", lambda: [tmp_path])
    foreign = plan.copy()
    foreign.codebook = CodebookId("other-tok", plan.codebook.size, "0123456789abcdef")
    with pytest.raises(PlanError, match="another tokenizer") as err:
        model_files.codebook_for(foreign)
    assert "broken_ta_tok.safetensors" in str(err.value) and "partial" not in str(err.value)
    assert model_files.codebook_for(plan).shape[0] == plan.codebook.size


# ----------------------------------------------------------------------------- the nodes


def test_sampler_renders_the_plan_and_keeps_the_start_image(nodes, embedded):
    import nodes as comfy_nodes

    bundle, pipe, plan = embedded
    model, clip, vae = nodes["PlanX_LoadTinyModel"].execute("embedded: planx-tiny").args
    patched = (
        nodes["PlanX_InjectRoPEGuidance"]
        .execute(model, plan, "embedded: planx-tiny", 1.0, 0.0, 1.0, "from branch file", True)
        .args[0]
    )
    positive = comfy_nodes.CLIPTextEncode().encode(
        clip, "a red circle on a dark background. the red circle moves right."
    )[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    image = (
        torch.from_numpy(
            pipe.render(
                plan, "a red circle on a dark background", "the red circle moves right", steps=4, progress=False
            )[0]
        ).float()[None]
        / 255
    )  # [1, H, W, 3]
    sampler = nodes["PlanX_Sampler"]
    latent = sampler.execute(
        patched, positive, negative, 0, 6, 1.0, 2.0, 0.0, "euler", 64, 64, 17, start_image=image, vae=vae
    ).args[0]["samples"]
    assert latent.shape == (1, 16, 5, 16, 16) and torch.isfinite(latent).all()
    torch.testing.assert_close(latent[:, :, :1], vae.encode(image)[:, :, :1], atol=1e-4, rtol=0)
    plain = sampler.execute(model, positive, negative, 0, 6, 1.0, 1.0, 0.0, "euler", 64, 64, 17).args[0]["samples"]
    assert (plain - latent).abs().mean() > 1e-3


@pytest.mark.parametrize("scheduler", ["simple", "wan"])
def test_node_sampler_matches_planx_core_sample(nodes, embedded, scheduler):
    """Plan-X Sampler with flow_unipc (the default) renders what planx_core's own sampler renders for the same
    model, plan, prompt and seed (ComfyUI guides x0 instead of v, in float32); ComfyUI's uni_pc lands further."""
    import nodes as comfy_nodes
    from planx_core.diffusion import Guidance, initial_noise, render

    bundle, pipe, plan = embedded
    model, clip, _ = nodes["PlanX_LoadTinyModel"].execute("embedded: planx-tiny").args
    patched = (
        nodes["PlanX_InjectRoPEGuidance"]
        .execute(model, plan, "embedded: planx-tiny", 1.0, 0.0, 1.0, "from branch file", True)
        .args[0]
    )
    positive = comfy_nodes.CLIPTextEncode().encode(
        clip, "a red circle on a dark background. the red circle moves right."
    )[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    sampler = nodes["PlanX_Sampler"]
    args = (patched, positive, negative, 7, 20, 1.0, 1.0, 0.0)
    got = sampler.execute(*args, "flow_unipc", 64, 64, 17, scheduler=scheduler).args[0]["samples"]
    comfy_unipc = sampler.execute(*args, "unipc", 64, 64, 17, scheduler=scheduler).args[0]["samples"]
    want = render(
        bundle.dit,
        initial_noise((1, 16, 5, 16, 16), 7),
        positive[0][0],
        negative[0][0],
        plan=pipe.condition(plan),
        steps=20,
        shift=3.0,
        solver="unipc",
        guidance=Guidance(1.0, 1.0),
        schedule="flow" if scheduler == "simple" else "wan",
    )
    ours, theirs = (got - want).abs().max().item(), (comfy_unipc - want).abs().max().item()
    print(
        f"scheduler {scheduler}: max |flow_unipc - planx_core| {ours:.2e}, |ComfyUI uni_pc - planx_core| {theirs:.2e}"
    )
    assert ours < 2e-3 and theirs > 10 * ours


def test_tiny_clip_and_vae_match_planx_core(nodes, embedded):
    bundle, pipe, _ = embedded
    _, clip, vae = nodes["PlanX_LoadTinyModel"].execute("embedded: planx-tiny").args
    prompt = "a red circle on a dark background. the red circle moves right."
    positive, _ = pipe.text_features("a red circle on a dark background", "the red circle moves right")
    torch.testing.assert_close(clip.encode_from_tokens(clip.tokenize(prompt)), positive)
    latent = torch.randn(1, 16, 2, 16, 16)
    with torch.no_grad():
        want = (bundle.vae.decode(latent) + 1) / 2
    torch.testing.assert_close(vae.decode(latent)[0], want[0].permute(1, 2, 3, 0).clamp(0, 1))


@pytest.mark.parametrize("keep", [False, True])
def test_planner_leaves_the_device_unless_kept(nodes, keep):
    import comfy.model_management as mm

    planner = nodes["PlanX_LoadPlanner"].execute("embedded: planx-tiny", "auto", "sdpa", keep).args[0]
    plan, picture = (
        nodes["PlanX_GenerateSemanticPlan"]
        .execute(
            planner,
            "a red circle on a dark background",
            "the red circle moves right",
            64,
            64,
            17,
            8.0,
            2.0,
            0,
            1.0,
            0,
            1.0,
            1.0,
        )
        .args
    )
    assert len(plan.keyframes) == 5 and picture.ndim == 4
    loaded = any(m.model is planner.patcher for m in mm.current_loaded_models)
    assert loaded == keep


def test_plan_node_candidates_are_planx_cores(nodes, embedded):
    """The node's candidates input reaches the planner: its plan is planx_core's likeliest of the same draws."""
    _, pipe, _ = embedded
    planner = nodes["PlanX_LoadPlanner"].execute("embedded: planx-tiny", "auto", "sdpa", False).args[0]
    generate = nodes["PlanX_GenerateSemanticPlan"]
    widgets = (planner, SCENE, MOTION, 64, 64, 17, 8.0, 2.0, 5, 1.0, 0, 1.0, 1.0)
    plan = generate.execute(*widgets, candidates=3).args[0]
    want = pipe.plan(SCENE, MOTION, seed=5, temperature=1.0, candidates=3, progress=False)
    assert plan.token_tensor().tolist() == want.token_tensor().tolist()
    assert (
        generate.execute(*widgets).args[0].token_tensor().tolist()
        == pipe.plan(SCENE, MOTION, seed=5, temperature=1.0, progress=False).token_tensor().tolist()
    )


def test_edit_node_applies_edits_and_sends_the_editor_view(nodes, embedded):
    _, _, plan = embedded
    planner = nodes["PlanX_LoadPlanner"].execute("embedded: planx-tiny", "auto", "sdpa", False).args[0]
    edits = '[{"op": "fill_word", "keyframe": 1, "rect": [0, 0, 1, 1], "word": "red"}, {"op": "lock", "keyframe": 1}]'
    out = nodes["PlanX_EditPlanTokens"].execute(plan, edits, planner)
    edited, view = out.args[0], out.ui["planx_editor"][0]
    code = planner.planner.word_to_code("red")
    assert edited.keyframes[1].tokens[0] == code and edited.keyframes[1].locked
    assert view["base"] == plan.to_dict() and view["plan"] == edited.to_dict()
    assert str(code) in view["colours"] and view["colours"][str(code)].startswith("#")
    assert any(entry["word"] == "red" for entry in view["palette"])
    assert nodes["PlanX_EditPlanTokens"].validate_inputs("[{") != True  # noqa: E712  (an error string)


def test_save_and_load_plan_stay_inside_comfyui_folders(nodes, embedded, tmp_path, monkeypatch):
    import folder_paths

    _, _, plan = embedded
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    saved = nodes["PlanX_SavePlan"].execute(plan, "planx/test").ui["planx_plans"][0]
    path = tmp_path / "output" / saved["subfolder"] / saved["filename"]
    (tmp_path / "input" / "mine.plan.json").write_bytes(path.read_bytes())
    assert nodes["PlanX_LoadPlan"].execute("mine.plan.json").args[0].to_dict() == plan.to_dict()
    assert nodes["PlanX_LoadPlan"].validate_inputs("../output/planx/" + saved["filename"]) != True  # noqa: E712
    with pytest.raises(ValueError, match="output folder"):
        nodes["PlanX_SavePlan"].execute(plan, "../../escape")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "theirs.plan.json").write_bytes(path.read_bytes())
    (tmp_path / "input" / "linked.plan.json").symlink_to(outside / "theirs.plan.json")
    (tmp_path / "output" / "linked").symlink_to(outside, target_is_directory=True)
    assert "input folder" in nodes["PlanX_LoadPlan"].validate_inputs("linked.plan.json")
    with pytest.raises(ValueError, match="output folder"):
        nodes["PlanX_SavePlan"].execute(plan, "linked/plan")
    assert sorted(p.name for p in outside.iterdir()) == ["theirs.plan.json"]  # nothing written through the link
    assert not list((tmp_path / "output" / saved["subfolder"]).glob(".*"))  # no temp left beside the saved plan


def test_model_choices_are_entries_of_the_models_folder(pack):
    folder_for = pack.nodes.model_files.folder_for
    for typed in ("../..", "/etc", "planx/../../x"):
        with pytest.raises(FileNotFoundError, match="not an entry"):
            folder_for(typed)


def test_encode_video_to_plan_reads_the_frames(nodes, embedded):
    _, pipe, plan = embedded
    frames = pipe.render(
        plan, "a red circle on a dark background", "the red circle moves right", steps=4, progress=False
    )
    planner = nodes["PlanX_LoadPlanner"].execute("embedded: planx-tiny", "auto", "sdpa", False).args[0]
    encoded = (
        nodes["PlanX_EncodeVideoToPlan"].execute(torch.from_numpy(frames).float() / 255, planner, 8.0, 2.0).args[0]
    )
    assert encoded.times == plan.times and encoded.codebook == plan.codebook


def test_a_branch_for_another_model_is_refused(pack, embedded):
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch

    from planx_core.wan.configs import get_preset

    bundle = embedded[0]
    branch = _branch_for(get_preset("tiny"), code_dim=32)  # a 64-wide, 2-block DiT's branch
    conditioning = branch.condition(torch.randn(1, 81, 32), [0.0], (9, 9))
    with pytest.raises(ValueError, match="Pick the branch file"):
        PlanPatch(conditioning).apply_to(tiny_model(bundle, TinyLatent()))


# ----------------------------------------------------------------------------- SemanticGen (continuous plans)


def test_semanticgen_planner_makes_a_continuous_plan_for_the_length(semanticgen):
    model, planner, plan, picture = semanticgen
    assert planner.kind == "continuous" and plan.kind == "continuous"
    assert len(plan.keyframes) == 17 and plan.num_frames == 65 and plan.fps == 8.0  # 65 frames: 17 keyframes
    assert tuple(plan.grid) == model.semantic_grid() and plan.codebook.digest == model.digest()
    assert plan.codebook.size == model.spec.sem_dim and plan.times[1] == 0.5
    assert picture.ndim == 4 and picture.shape[-1] == 3


def test_semanticgen_planner_refuses_what_it_cannot_plan(nodes, semanticgen):
    planner = semanticgen[1]
    generate = nodes["PlanX_GenerateSemanticPlan"]
    with pytest.raises(PlanError, match="fps 8"):
        generate.execute(planner, SCENE, MOTION, 64, 64, 17, 24.0, 2.0, 0, 1.0, 0, 1.0, 1.0)
    with pytest.raises(PlanError, match="context_frames"):
        generate.execute(
            planner, SCENE, MOTION, 64, 64, 17, 8.0, 2.0, 0, 1.0, 0, 1.0, 1.0, context_frames=torch.zeros(2, 64, 64, 3)
        )


def test_semanticgen_planner_plans_from_a_first_frame(nodes, semanticgen):
    """Image-to-video: keyframe 0 of the continuous plan is the image's semantics (`SemanticGen.first_frame`), an
    IMAGE of another size is resized to the model's, and the keyframes after it depend on the image."""
    model, planner, _, _ = semanticgen
    generate = nodes["PlanX_GenerateSemanticPlan"]
    image = torch.rand(1, 64, 64, 3)
    args = (planner, SCENE, MOTION, 64, 64, 17, 8.0, 2.0, 0, 1.0, 0, 1.0, 1.0)
    plan = generate.execute(*args, first_frame=image).args[0]
    start = model.first_frame(image[0].numpy())
    assert torch.allclose(model.plan_vectors(plan)[:1], start.semantics, atol=1e-5)
    big = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), scale_factor=2, mode="nearest")
    resized = generate.execute(*args, first_frame=big.permute(0, 2, 3, 1)).args[0]
    other = generate.execute(*args, first_frame=torch.rand(1, 64, 64, 3)).args[0]
    near, far = ((model.plan_vectors(p)[0] - start.semantics[0]).norm() for p in (resized, other))
    assert len(resized.keyframes) == 5 and near < far / 2, "the 128x128 image was resized, not refused"
    assert not torch.allclose(model.plan_vectors(other)[1:], model.plan_vectors(plan)[1:])


def test_semanticgen_planner_takes_a_drawn_videos_lead(nodes, semanticgen):
    """first_frame_lead: with a drawn video in first_frame, the keyframes in that first share of a 33-frame plan are
    its frames' semantics, stretched over the length (`drawn_start`: drawn frames 0, 2, 4 for keyframes 0, 1, 2);
    0 keeps frame 0 alone. Refused: one image, no first_frame, the Plan-X planner."""
    from planx_core import world
    from planx_core.semanticgen import drawn_start

    model, planner, _, _ = semanticgen
    generate = nodes["PlanX_GenerateSemanticPlan"]
    video = torch.from_numpy(world.make_clip(3).frames).float() / 255  # [17, 64, 64, 3]
    args = (SCENE, MOTION, 64, 64, 33, 8.0, 2.0, 0, 1.0, 0, 1.0, 1.0)
    plan = generate.execute(planner, *args, first_frame=video, first_frame_lead=0.25).args[0]
    expected = drawn_start(model, video, 33, 0.25)
    assert expected.semantics.shape[0] == 3
    assert torch.allclose(expected.semantics[1:], model.frame_semantics(video[[2, 4]].permute(0, 3, 1, 2) * 2 - 1))
    assert torch.allclose(model.plan_vectors(plan)[:3], expected.semantics, atol=1e-5)
    alone = model.plan_vectors(generate.execute(planner, *args, first_frame=video).args[0])
    assert torch.allclose(alone[:1], expected.semantics[:1], atol=1e-5)
    assert not torch.allclose(alone[1:3], expected.semantics[1:], atol=1e-3), "without a lead they are planned"
    for first, message in ((video[:1], "holds 1;"), (None, "holds 0;")):
        with pytest.raises(PlanError, match=message):
            generate.execute(planner, *args, first_frame=first, first_frame_lead=0.25)
    planx = nodes["PlanX_LoadPlanner"].execute("embedded: planx-tiny", "auto", "sdpa", False).args[0]
    with pytest.raises(PlanError, match="set first_frame_lead to 0"):
        generate.execute(planx, *args, first_frame=video, first_frame_lead=0.25)


def test_semanticgen_planner_takes_a_drawn_videos_sketch(nodes, semanticgen):
    """first_frame_sketch: with a drawn video in first_frame, the keyframes after the lead start from the drawn
    frames' own semantics noised to that level (`drawn_start`'s sketch): the same plan as the function gives, the
    lead kept, the rest another plan than the lead alone's; 1 is the lead alone. Refused: no drawn video, the
    Plan-X planner."""
    from planx_core import world
    from planx_core.semanticgen import drawn_start

    model, planner, _, _ = semanticgen
    generate = nodes["PlanX_GenerateSemanticPlan"]
    video = torch.from_numpy(world.make_clip(3).frames).float() / 255  # [17, 64, 64, 3]
    args = (SCENE, MOTION, 64, 64, 33, 8.0, 2.0, 0, 1.0, 0, 1.0, 1.0)
    lead = model.plan_vectors(generate.execute(planner, *args, first_frame=video, first_frame_lead=0.25).args[0])
    plan = generate.execute(planner, *args, first_frame=video, first_frame_lead=0.25, first_frame_sketch=0.5)
    sketched = model.plan_vectors(plan.args[0])  # [K, gh, gw, D]
    start = drawn_start(model, video, 33, 0.25, 0.5)
    expected = model.with_spec(semantic_text_scale=1.0).plan_semantics(
        SCENE, MOTION, num_frames=33, seed=0, start=start
    )
    assert torch.allclose(sketched, expected, atol=1e-5) and torch.allclose(sketched[:3], lead[:3], atol=1e-5)
    assert not torch.allclose(sketched[3:], lead[3:], atol=1e-3), "the later keyframes start from the sketch"
    off = generate.execute(planner, *args, first_frame=video, first_frame_lead=0.25, first_frame_sketch=1.0)
    assert torch.equal(model.plan_vectors(off.args[0]), lead), "1 is the lead alone"
    for first, message in ((video[:1], "holds 1;"), (None, "holds 0;")):
        with pytest.raises(PlanError, match="first_frame_sketch take keyframes from a video .*" + message):
            generate.execute(planner, *args, first_frame=first, first_frame_sketch=0.5)
    planx = nodes["PlanX_LoadPlanner"].execute("embedded: planx-tiny", "auto", "sdpa", False).args[0]
    with pytest.raises(PlanError, match="first_frame_sketch to 1"):
        generate.execute(planx, *args, first_frame=video, first_frame_sketch=0.5)


def test_continuous_plan_through_preview_save_load_and_edit(nodes, semanticgen, tmp_path, monkeypatch):
    import folder_paths

    _, planner, plan, _ = semanticgen
    for connected in (None, planner):
        assert nodes["PlanX_PlanPreview"].execute(plan, connected).args[0].shape[-1] == 3
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    monkeypatch.setattr(folder_paths, "input_directory", str(tmp_path / "input"))
    (tmp_path / "input").mkdir()
    saved = nodes["PlanX_SavePlan"].execute(plan, "planx/long").ui["planx_plans"][0]
    (tmp_path / "input" / "long.plan.json").write_bytes(
        (tmp_path / "output" / saved["subfolder"] / saved["filename"]).read_bytes()
    )
    loaded = nodes["PlanX_LoadPlan"].execute("long.plan.json").args[0]
    assert loaded.to_dict() == plan.to_dict()
    edit = nodes["PlanX_EditPlanTokens"]
    passed = edit.execute(loaded, "", planner)
    assert passed.args[0].to_dict() == plan.to_dict()
    view = passed.ui["planx_editor"][0]
    assert view["base"]["kind"] == "continuous" and view["palette"] == [] and view["words"] == {}
    assert len(view["cell_colours"]["plan"]) == 17 and len(view["cell_colours"]["plan"][0]) == plan.cells
    vector = [0.5] * plan.codebook.size
    edits = (
        f'[{{"op": "fill", "keyframe": 3, "rect": [0, 0, 1, 1], "vector": {vector}}}, {{"op": "lock", "keyframe": 3}}]'
    )
    edited = edit.execute(loaded, edits, planner).args[0]
    assert edited.keyframes[3].vectors[0] == vector and edited.keyframes[3].locked
    with pytest.raises(PlanError, match="fill_word"):
        edit.execute(loaded, '[{"op": "fill_word", "keyframe": 0, "word": "red"}]', None)


def test_encode_video_to_plan_with_the_semanticgen_planner(nodes, semanticgen):
    model, planner, _, _ = semanticgen
    frames = torch.rand(17, 64, 64, 3)
    plan = nodes["PlanX_EncodeVideoToPlan"].execute(frames, planner, 8.0, 2.0).args[0]
    assert plan.kind == "continuous" and len(plan.keyframes) == 5 and plan.codebook.digest == model.digest()


def test_semanticgen_model_and_branch_render_the_plan_like_planx_core(nodes, semanticgen):
    """Load Plan-X Tiny Model (semanticgen) + Inject (semanticgen branch, a continuous plan): the MODEL's
    velocity equals SemanticGen's stage-2 DiT with the in-context plan, windowed or not."""
    from planx_pack.nodes.wan_plan_patch import with_window

    model, _, plan, _ = semanticgen
    tiny, clip, vae = nodes["PlanX_LoadTinyModel"].execute(SEMANTICGEN).args
    patched = (
        nodes["PlanX_InjectRoPEGuidance"]
        .execute(tiny, plan, SEMANTICGEN, 1.0, 0.0, 1.0, "from branch file", True)
        .args[0]
    )
    conditioning = model.branch.condition_plan(plan, None, num_frames=65, fps=8.0)
    x, sigma, context = torch.randn(1, 16, 17, 16, 16), torch.tensor([0.6]), torch.randn(1, 64, 64)
    for window in (None, WindowSpec(2, "global"), WindowSpec(2, "local"), WindowSpec(2, "local", 1)):
        got = _velocity(with_window(patched, window or 0), x, sigma, context)
        want = model.latent_dit(x, sigma * 1000, context, plan=conditioning, window=window)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    positive = clip.encode_from_tokens(clip.tokenize(f"{SCENE}. {MOTION}."))
    torch.testing.assert_close(positive, model.contexts(SCENE, MOTION)[0])
    assert vae.vae is model.vae


def test_semanticgen_sampler_renders_a_long_video_with_a_window(nodes, semanticgen):
    import nodes as comfy_nodes

    _, _, plan, _ = semanticgen
    model, clip, vae = nodes["PlanX_LoadTinyModel"].execute(SEMANTICGEN).args
    patched = (
        nodes["PlanX_InjectRoPEGuidance"]
        .execute(model, plan, SEMANTICGEN, 1.0, 0.0, 1.0, "from branch file", True)
        .args[0]
    )
    positive = comfy_nodes.CLIPTextEncode().encode(clip, f"{SCENE}. {MOTION}.")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = (
        nodes["PlanX_Sampler"]
        .execute(
            patched,
            positive,
            negative,
            0,
            3,
            1.0,
            1.0,
            0.0,
            "unipc",
            64,
            64,
            65,
            attention_window=2,
            window_semantics="local",
            window_margin=1,
        )
        .args[0]["samples"]
    )
    assert latent.shape == (1, 16, 17, 16, 16) and torch.isfinite(latent).all()


def test_plans_of_the_wrong_kind_or_space_are_refused_with_a_fix(nodes, embedded, semanticgen):
    _, _, token_plan = embedded
    _, _, plan, _ = semanticgen
    model = nodes["PlanX_LoadTinyModel"].execute(SEMANTICGEN).args[0]
    inject = nodes["PlanX_InjectRoPEGuidance"]
    with pytest.raises(PlanError, match="Plan-X branch that reads TA-Tok token plans.*semanticgen-tiny"):
        inject.execute(model, plan, "embedded: planx-tiny", 1.0, 0.0, 1.0, "from branch file", True)
    with pytest.raises(PlanError, match="holds TA-Tok tokens.*semanticgen-tiny \\(diffusion\\)"):
        inject.execute(model, token_plan, SEMANTICGEN, 1.0, 0.0, 1.0, "from branch file", True)
    foreign = plan.copy()
    foreign.codebook = CodebookId("other-kl8", plan.codebook.size, "0123456789abcdef")
    with pytest.raises(PlanError, match="another compressor.*0123456789abcdef"):
        inject.execute(model, foreign, SEMANTICGEN, 1.0, 0.0, 1.0, "from branch file", True)
    with pytest.raises(ValueError, match="trained for in_context injection, not cross_attn"):
        inject.execute(model, plan, SEMANTICGEN, 1.0, 0.0, 1.0, "cross_attn", True)
    patched = inject.execute(model, plan, SEMANTICGEN, 1.0, 0.0, 1.0, "from branch file", True).args[0]
    with pytest.raises(ValueError, match="already renders a plan"):
        inject.execute(patched, plan, SEMANTICGEN, 1.0, 0.0, 1.0, "from branch file", True)


def test_new_choices_are_appended(nodes):
    def options(node_id, name):
        types = nodes[node_id].INPUT_TYPES()
        spec = {**types.get("required", {}), **types.get("optional", {})}[name]
        return spec[0] if isinstance(spec[0], list) else spec[1]["options"]

    assert options("PlanX_LoadPlanner", "planner")[0] == "embedded: planx-tiny"
    assert options("PlanX_LoadPlanner", "planner")[-1] == SEMANTICGEN_PLANNER
    for node_id, name in (("PlanX_LoadTinyModel", "model"), ("PlanX_InjectRoPEGuidance", "branch")):
        assert options(node_id, name)[0] == "embedded: planx-tiny" and options(node_id, name)[-1] == SEMANTICGEN
