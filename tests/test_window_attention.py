"""Shifted-window attention (SemanticGen Sec. 3.4): the rule, its batched implementation, and the DiT."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.wan import attention as attention_module
from planx_core.wan.dit import WanModel
from planx_core.wan.windows import (
    WindowLayout,
    WindowSpec,
    dense_window_mask,
    layer_shift,
    windowed_attention,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def qkv(layout, batch=2, heads=2, head_dim=8, dtype=torch.float32):
    return tuple(torch.randn(batch, layout.num_tokens, heads, head_dim, dtype=dtype) for _ in range(3))


def reference(q, k, v, layout, global_bias=None):
    """SDPA over the whole sequence with the dense rule (and the bias on the video rows' global keys)."""
    keep = dense_window_mask(layout)  # [L, L]
    mask = torch.zeros(keep.shape, dtype=q.dtype).masked_fill(~keep, float("-inf"))
    if global_bias is not None:
        mask[: layout.video_tokens, layout.video_tokens :] += global_bias
    out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_mask=mask)
    return out.transpose(1, 2)


# --- the batched implementation equals the dense rule -----------------------------------------------

CASES = [  # frames, tokens per frame, window, shift, globals, global bias
    (5, 3, 2, 0, 0, None),
    (5, 3, 2, 1, 0, None),
    (7, 2, 3, 1, 4, None),  # Tw does not divide F', short first and last windows
    (6, 4, 4, 2, 5, 0.7),
    (6, 4, 4, 2, 5, math.log(0.3)),
    (6, 4, 4, 2, 5, float("-inf")),  # strength 0: video tokens see no global key
    (3, 2, 4, 3, 2, None),  # the shift is past the last frame: one short window
    (8, 1, 1, 0, 3, -1.2),  # one frame per window
    (4, 3, 4, 0, 2, None),  # one window covers the whole video
]


@pytest.mark.parametrize("frames,hw,window,shift,num_global,bias", CASES)
def test_windowed_attention_matches_the_dense_masked_reference(frames, hw, window, shift, num_global, bias):
    layout = WindowLayout(frames=frames, tokens_per_frame=hw, window=window, shift=shift, num_global=num_global)
    q, k, v = qkv(layout)
    got = windowed_attention(q, k, v, layout, global_bias=bias)
    assert got.shape == q.shape
    torch.testing.assert_close(got, reference(q, k, v, layout, bias), atol=1e-5, rtol=1e-5)


def test_one_window_without_globals_is_full_attention():
    layout = WindowLayout(frames=4, tokens_per_frame=5, window=4)
    q, k, v = qkv(layout)
    torch.testing.assert_close(
        windowed_attention(q, k, v, layout), attention_module.attention(q, k, v), atol=1e-6, rtol=1e-6
    )


def test_gradients_match_the_reference():
    layout = WindowLayout(frames=7, tokens_per_frame=3, window=3, shift=1, num_global=4)
    ours = [t.requires_grad_() for t in qkv(layout)]
    ref = [t.detach().clone().requires_grad_() for t in ours]
    weights = torch.randn(ours[0].shape)
    (windowed_attention(*ours, layout, global_bias=-0.5) * weights).sum().backward()
    (reference(*ref, layout, -0.5) * weights).sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_bf16_tracks_fp32():
    layout = WindowLayout(frames=6, tokens_per_frame=4, window=4, shift=2, num_global=5)
    q, k, v = qkv(layout)
    half = windowed_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), layout, global_bias=math.log(0.5))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference(q, k, v, layout, math.log(0.5)), atol=3e-2, rtol=0)


# --- the rule itself ----------------------------------------------------------------------------------


def allowed(layout, token):
    return dense_window_mask(layout)[token].nonzero().flatten().tolist()


def test_a_token_sees_its_window_and_all_globals():
    # 5 frames of 2 tokens (0..9), then globals 10, 11; windows of 2 frames
    plain = WindowLayout(frames=5, tokens_per_frame=2, window=2, shift=0, num_global=2)
    assert allowed(plain, 2) == [0, 1, 2, 3, 10, 11]  # frame 1: window [0, 2)
    assert allowed(plain, 9) == [8, 9, 10, 11]  # frame 4: the short last window [4, 5)
    assert allowed(plain, 10) == allowed(plain, 11) == [10, 11]  # globals see globals only
    shifted = WindowLayout(frames=5, tokens_per_frame=2, window=2, shift=1, num_global=2)
    assert allowed(shifted, 0) == [0, 1, 10, 11]  # frame 0: the short first window [0, 1)
    assert allowed(shifted, 2) == [2, 3, 4, 5, 10, 11]  # frame 1: window [1, 3)
    assert allowed(shifted, 7) == [6, 7, 8, 9, 10, 11]  # frame 3: window [3, 5)
    assert shifted.runs() == [(0, 1, 1), (1, 2, 2)]
    assert WindowLayout(frames=8, tokens_per_frame=1, window=3, shift=1).runs() == [(0, 1, 1), (1, 2, 3), (7, 1, 1)]


def test_odd_layers_shift_by_half_a_window():
    assert [layer_shift(4, layer) for layer in range(4)] == [0, 2, 0, 2]
    assert [layer_shift(5, layer) for layer in range(2)] == [0, 2]
    assert layer_shift(1, 1) == 0
    even = WindowLayout(frames=8, tokens_per_frame=1, window=4, shift=layer_shift(4, 0))
    odd = WindowLayout(frames=8, tokens_per_frame=1, window=4, shift=layer_shift(4, 1))
    assert allowed(even, 3) == [0, 1, 2, 3] and allowed(odd, 3) == [2, 3, 4, 5]
    assert allowed(odd, 0) == [0, 1] and allowed(odd, 7) == [6, 7]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(window=0), "at least 1 latent frame"),
        (dict(window=-2), "at least 1 latent frame"),
        (dict(window=4, shift=4), "shift must be in 0..3"),
        (dict(window=4, shift=-1), "shift must be in 0..3"),
        (dict(frames=0), "at least one frame"),
        (dict(num_global=-1), "num_global"),
        (dict(window=2.0), "must be an int"),
    ],
)
def test_bad_layouts_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowLayout(**{**dict(frames=4, tokens_per_frame=2, window=2), **kwargs})


def test_wrong_sequence_length_and_bias_are_refused():
    layout = WindowLayout(frames=4, tokens_per_frame=2, window=2, num_global=1)
    q, k, v = qkv(layout)
    with pytest.raises(ValueError, match="the layout has 4 frames x 2 tokens"):
        windowed_attention(q[:, 1:], k[:, 1:], v[:, 1:], layout)
    with pytest.raises(ValueError, match="global_bias"):
        windowed_attention(q, k, v, layout, global_bias=float("nan"))


# --- no dense mask: every attention call is window-sized ---------------------------------------------


@pytest.fixture
def attention_calls(monkeypatch):
    """Record (query length, key length, mask shape) of every call of the attention entry point."""
    calls = []
    real = attention_module.attention

    def spy(q, k, v, **kw):
        mask = kw.get("attn_mask")
        calls.append((q.shape[1], k.shape[1], None if mask is None else tuple(mask.shape)))
        return real(q, k, v, **kw)

    monkeypatch.setattr(attention_module, "attention", spy)
    monkeypatch.setattr("planx_core.wan.dit.attention", spy)
    return calls


def test_no_call_sees_more_than_one_window_plus_the_globals(attention_calls):
    layout = WindowLayout(frames=16, tokens_per_frame=4, window=4, shift=2, num_global=3)
    q, k, v = qkv(layout)
    windowed_attention(q, k, v, layout, global_bias=0.5)
    assert attention_calls and max(lk for _, lk, _ in attention_calls) <= 4 * 4 + 3
    assert all(mask is None or mask[-2] == 1 for *_, mask in attention_calls)  # key bias only, no [Lq, Lk]


def test_windowed_dit_never_attends_over_the_whole_video(tiny_config, attention_calls):
    model, branch, (x, t, ctx), vectors = dit_and_plan(tiny_config, "in_context")
    plan = branch.condition(vectors, [0.0, 3.0, 7.0], (3, 3), strength=0.5)
    with torch.no_grad():
        model(x, t, ctx, plan=plan, window=2)
    video, hw, globals_ = 8 * 6, 6, 27
    assert max(lk for _, lk, _ in attention_calls) <= max(2 * hw + globals_, ctx.shape[1]) < video
    assert all(mask is None or mask[-2] == 1 for *_, mask in attention_calls)


# --- in the DiT ---------------------------------------------------------------------------------------


def dit_and_plan(config, mode, frames=8):
    model = randomize(WanModel(config))
    branch = randomize(
        SemanticBranch(
            BranchConfig(
                code_dim=16, dim=config.dim, num_heads=config.num_heads, num_layers=config.num_layers, mode=mode
            )
        ),
        seed=1,
    )
    x, t, ctx = torch.randn(1, 48, frames, 4, 6), torch.tensor([700.0]), torch.randn(1, 6, 32)
    return model, branch, (x, t, ctx), torch.randn(1, 3 * 9, 16)


def run(model, inputs, **kw):
    with torch.no_grad():
        return model(*inputs, **kw)


def test_a_window_covering_the_video_is_full_attention(tiny_config):
    model, branch, inputs, vectors = dit_and_plan(tiny_config, "in_context", frames=5)
    full = run(model, inputs)
    for window in (0, 5, 9):
        assert torch.equal(run(model, inputs, window=window), full)
    plan = branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3), strength=0.5)
    assert torch.equal(run(model, inputs, plan=plan, window=5), run(model, inputs, plan=plan))


def test_small_windows_change_the_output_only_within_the_receptive_field(tiny_config):
    model, _, (x, t, ctx), _ = dit_and_plan(tiny_config, "in_context", frames=5)
    moved = x.clone()
    moved[:, :, 4] += 1.0  # perturb the last latent frame
    base, out = run(model, (x, t, ctx), window=2), run(model, (moved, t, ctx), window=2)
    assert (base - run(model, (x, t, ctx))).abs().max() > 1e-3  # windows are not full attention
    # block 0: windows [0,2) [2,4) [4,5); block 1 (shift 1): [0,1) [1,3) [3,5) -> frame 4 reaches frame 3 only
    torch.testing.assert_close(out[:, :, :3], base[:, :, :3], atol=1e-6, rtol=0)
    assert (out[:, :, 3] - base[:, :, 3]).abs().max() > 1e-3
    one_block = randomize(WanModel(tiny_config.with_(num_layers=1)))  # block 0 only: no shift
    base, out = run(one_block, (x, t, ctx), window=2), run(one_block, (moved, t, ctx), window=2)
    torch.testing.assert_close(out[:, :, :4], base[:, :, :4], atol=1e-6, rtol=0)
    full_base, full_out = run(one_block, (x, t, ctx)), run(one_block, (moved, t, ctx))
    assert (full_out[:, :, 0] - full_base[:, :, 0]).abs().max() > 1e-3  # full attention: everything moves


def test_in_context_plan_with_windows_reaches_every_window_and_strength_zero_removes_it(tiny_config):
    model, branch, inputs, vectors = dit_and_plan(tiny_config, "in_context")
    frames = [0.0, 3.0, 7.0]
    base = run(model, inputs, window=2)
    with_plan = run(model, inputs, plan=branch.condition(vectors, frames, (3, 3)), window=2)
    other = run(model, inputs, plan=branch.condition(vectors.flip(1), frames, (3, 3)), window=2)
    assert all((other[:, :, f] - with_plan[:, :, f]).abs().max() > 1e-3 for f in range(8))  # seen everywhere
    half = run(model, inputs, plan=branch.condition(vectors, frames, (3, 3), strength=0.5), window=2)
    assert (half - with_plan).abs().max() > 1e-3 and (half - base).abs().max() > 1e-3
    muted = run(model, inputs, plan=branch.condition(vectors, frames, (3, 3), strength=0.0), window=2)
    torch.testing.assert_close(muted, base, atol=1e-5, rtol=0)


def test_gradients_flow_through_windows_to_the_model_and_the_plan(tiny_config):
    model, branch, (x, t, ctx), vectors = dit_and_plan(tiny_config, "in_context")
    model.train(), branch.train()
    out = model(x, t, ctx, plan=branch.condition(vectors, [0.0, 3.0, 7.0], (3, 3)), window=2)
    out.square().mean().backward()
    assert model.blocks[1].self_attn.q.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.proj.parameters())


def test_cross_attention_plan_and_bf16_run_with_windows(tiny_config):
    model, branch, (x, t, ctx), vectors = dit_and_plan(tiny_config, "cross_attn")
    plan = branch.condition(vectors, [0.0, 3.0, 7.0], (3, 3))
    base = run(model, (x, t, ctx), window=3)
    assert (run(model, (x, t, ctx), plan=plan, window=3) - base).abs().max() > 1e-3
    half = run(model, (x.bfloat16(), t, ctx.bfloat16()), window=3)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()


@pytest.mark.parametrize("window", [-1, 1.5, True])
def test_bad_windows_are_refused(tiny_config, window):
    model, _, inputs, _ = dit_and_plan(tiny_config, "in_context", frames=3)
    with pytest.raises(ValueError, match="attention window must be a whole number"):
        run(model, inputs, window=window)


# --- local semantics: a window sees only its own span's keyframes -------------------------------------

LOCAL_CASES = [  # frames, tokens per frame, window, shift, keyframe latent frames, tokens per keyframe, margin, bias
    (8, 3, 2, 0, (0.0, 2.0, 4.0, 6.0), 2, 0, None),
    (8, 3, 2, 1, (0.0, 2.0, 4.0, 6.0), 2, 0, 0.4),
    (7, 2, 3, 1, (0.0, 1.5, 3.0, 4.5, 6.0), 3, 1, None),  # fractional frames, short first and last windows
    (8, 2, 2, 0, (0.0, 7.0), 4, 0, None),  # windows with no keyframe of their own see the nearest one
    (6, 4, 4, 2, tuple(float(f) for f in range(6)), 1, 2, math.log(0.3)),
    (6, 4, 4, 2, (1.0, 4.0), 2, 0, float("-inf")),  # strength 0: video tokens see no global key
]


def local_layout(frames, hw, window, shift, keyframes, per, margin):
    return WindowLayout(
        frames=frames,
        tokens_per_frame=hw,
        window=window,
        shift=shift,
        num_global=len(keyframes) * per,
        global_frames=keyframes,
        margin=margin,
    )


@pytest.mark.parametrize("frames,hw,window,shift,keyframes,per,margin,bias", LOCAL_CASES)
def test_local_windowed_attention_matches_the_dense_masked_reference(
    frames, hw, window, shift, keyframes, per, margin, bias
):
    layout = local_layout(frames, hw, window, shift, keyframes, per, margin)
    q, k, v = qkv(layout)
    got = windowed_attention(q, k, v, layout, global_bias=bias)
    torch.testing.assert_close(got, reference(q, k, v, layout, bias), atol=1e-5, rtol=1e-5)


def test_local_gradients_match_the_reference():
    layout = local_layout(7, 2, 3, 1, (0.0, 2.0, 4.0, 6.0), 2, 1)
    ours = [t.requires_grad_() for t in qkv(layout)]
    ref = [t.detach().clone().requires_grad_() for t in ours]
    weights = torch.randn(ours[0].shape)
    (windowed_attention(*ours, layout, global_bias=-0.5) * weights).sum().backward()
    (reference(*ref, layout, -0.5) * weights).sum().backward()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)


def test_local_rule_a_window_sees_its_span_and_the_margin():
    # 6 frames of 1 token (0..5), keyframes at frames 0, 2, 4 with 1 token each (6, 7, 8); windows of 2 frames
    layout = local_layout(6, 1, 2, 0, (0.0, 2.0, 4.0), 1, 0)
    assert allowed(layout, 1) == [0, 1, 6]  # window [0, 2): keyframe 0 only
    assert allowed(layout, 3) == [2, 3, 7]
    assert allowed(layout, 7) == [7]  # keyframe 1's token sees what its window [2, 4) sees
    wide = local_layout(6, 1, 2, 0, (0.0, 2.0, 4.0), 1, 1)
    assert allowed(wide, 3) == [2, 3, 7, 8]  # [2 - 1, 4 + 1) holds the keyframes at 2 and 4
    assert allowed(wide, 1) == [0, 1, 6, 7]  # [0 - 1, 2 + 1): keyframes at 0 and 2
    shifted = local_layout(6, 1, 2, 1, (0.0, 2.0, 4.0), 1, 0)  # windows [0,1) [1,3) [3,5) [5,6)
    assert allowed(shifted, 4) == [3, 4, 8]
    assert allowed(shifted, 5) == [5, 8]  # no keyframe in [5, 6): the nearest one, frame 4
    assert allowed(shifted, 6) == [6]


def test_local_calls_stay_one_window_long_as_the_plan_grows(attention_calls):
    layout = local_layout(32, 4, 4, 2, tuple(float(f) for f in range(32)), 3, 1)  # 96 global tokens
    q, k, v = qkv(layout, batch=1)
    windowed_attention(q, k, v, layout, global_bias=0.5)
    assert max(lk for _, lk, _ in attention_calls) <= 4 * 4 + (4 + 2) * 3  # window + its span's keyframes
    global_mode = WindowLayout(frames=32, tokens_per_frame=4, window=4, shift=2, num_global=96)
    attention_calls.clear()
    windowed_attention(q, k, v, global_mode, global_bias=0.5)
    assert max(lk for _, lk, _ in attention_calls) == 4 * 4 + 96


def test_local_dit_keeps_a_far_keyframe_out_of_a_window(tiny_config):
    one_block = randomize(WanModel(tiny_config.with_(num_layers=1)))  # block 0: windows [0,2) [2,4) ...
    branch = randomize(
        SemanticBranch(BranchConfig(code_dim=16, dim=tiny_config.dim, num_heads=2, num_layers=1, mode="in_context")),
        seed=1,
    )
    _, _, inputs, vectors = dit_and_plan(tiny_config, "in_context")
    moved = vectors.clone()
    moved[:, 18:] = torch.randn(1, 9, 16)  # the keyframe at latent frame 7 only
    frames = [0.0, 3.0, 7.0]
    plans = [branch.condition(v, frames, (3, 3)) for v in (vectors, moved)]
    local = [run(one_block, inputs, plan=p, window=2) for p in plans]
    torch.testing.assert_close(local[1][:, :, :6], local[0][:, :, :6], atol=1e-6, rtol=0)
    assert (local[1][:, :, 6:] - local[0][:, :, 6:]).abs().max() > 1e-3
    spread = [run(one_block, inputs, plan=p, window=WindowSpec(2, "global")) for p in plans]
    assert (spread[1][:, :, 0] - spread[0][:, :, 0]).abs().max() > 1e-3  # global: every window sees it
    wide = [run(one_block, inputs, plan=p, window=WindowSpec(2, margin=2)) for p in plans]
    assert (wide[1][:, :, 4] - wide[0][:, :, 4]).abs().max() > 1e-3  # window [4, 6) + 2 reaches frame 7


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_global=5, global_frames=(0.0, 2.0)), "cannot be split into 2 equal keyframe groups"),
        (dict(num_global=2, global_frames=(0.0, 4.0)), r"must lie in \[0, 4\)"),
        (dict(num_global=2, global_frames=(0.0, 1.0), margin=-1), "margin must be >= 0"),
    ],
)
def test_bad_local_layouts_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowLayout(**{**dict(frames=4, tokens_per_frame=2, window=2), **kwargs})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(frames=0), "whole number"),
        (dict(frames=2, semantics="near"), "one of"),
        (dict(frames=2, margin=-1), "margin"),
    ],
)
def test_bad_window_specs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WindowSpec(**kwargs)
