"""Layer 2: the plan patch's public surface for sequence-parallel packs (README, "Multi-GPU").

A pack that splits the Wan sequence over GPUs finds the running call with `planx_call`, appends the
in-context plan tokens once to the whole sequence with `PlanCall.extend_sequence` (after which the blocks
no longer append them), and uses `num_global`, `self_attention` and `plan_attention` as documented.
"""

import pytest
import torch
from test_nodes import _in_context_branch, _velocity, embedded, pack  # noqa: F401 (fixtures)

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def planned_call(pack, embedded):  # noqa: F811 (fixtures)
    """The PlanCall of one in-context planned call (seen by a block replacement the pack chains), its plan."""
    from planx_pack.nodes.comfy_models import TinyLatent, tiny_model
    from planx_pack.nodes.wan_plan_patch import PlanPatch, planx_call

    bundle = embedded[0]
    conditioning = _in_context_branch(bundle.dit.config).condition(torch.randn(1, 2 * 16, 8), [0.0, 3.0], (4, 4))
    model = tiny_model(bundle, TinyLatent()).clone()
    seen = []

    def spy(args, extra):  # a block replacement registered before the plan, as a pack's would be
        seen.append(planx_call(args["transformer_options"]))
        return extra["original_block"](args)

    model.set_model_patch_replace(spy, "dit", "double_block", 0)
    patched = PlanPatch(conditioning).apply_to(model)
    _velocity(patched, torch.randn(1, 16, 5, 16, 16), torch.tensor([0.6]), torch.randn(1, 64, 64))
    assert len(seen) == 1 and seen[0] is not None, "planx_call finds the running call inside a block"
    return seen[0], conditioning


def test_the_patch_exposes_the_hooks(pack):  # noqa: F811 (fixture)
    from planx_pack.nodes import wan_plan_patch as patch

    for name in ("planx_call", "PlanCall", "plan_attention"):
        assert hasattr(patch, name), name
    for name in ("extend_sequence", "num_global", "replaces_self_attention", "self_attention", "sharded"):
        assert hasattr(patch.PlanCall, name) or name in patch.PlanCall.__dataclass_fields__, name
    assert patch.planx_call({}) is None and patch.planx_call(None) is None


def test_extend_sequence_appends_the_plan_once(planned_call):
    from planx_pack.nodes.wan_plan_patch import block_replacements

    call, conditioning = planned_call
    count = conditioning.tokens.shape[1]
    assert call.num_global == count and call.plan.bound.positions.shape == (count, 3)
    call.semantic, call.sharded = None, False  # as at the start of a call
    frames, tokens, width = call.grid[0], call.grid[0] * call.grid[1] * call.grid[2], call.dm.dim
    x = torch.randn(1, tokens, width)
    e = torch.randn(1, frames, 6, width)  # per-frame rows, as ComfyUI's Wan 2.2 forward makes them
    pe = torch.randn(1, tokens, 1, call.plan.freqs.shape[3], 2, 2)
    x2, e2, pe2 = call.extend_sequence(x, e, pe)
    assert call.sharded
    assert x2.shape[1] == pe2.shape[1] == tokens + count and (tokens + count) % e2.shape[1] == 0
    torch.testing.assert_close(x2[:, tokens:], conditioning.tokens.to(x2.dtype))
    torch.testing.assert_close(pe2[:, tokens:], call.plan.freqs.to(pe2.dtype))
    block = block_replacements({}, 1)["dit"][("double_block", 0)]
    args = {"img": x2, "vec": e2, "pe": pe2, "transformer_options": {"planx_plan_call": call}}
    out = block(args, {"original_block": lambda a: {"img": a["img"]}})
    assert out["img"].shape[1] == tokens + count, "a sharded call's blocks do not append the plan again"
