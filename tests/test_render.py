"""The DiT, the semantic branch and the sampler together, end to end on tiny random weights."""

import pytest
import torch
from conftest import randomize

from planx_core.diffusion.rendering import latent_shape, pad_text_context, render
from planx_core.diffusion.sampling import Guidance, SamplingInterrupted, initial_noise
from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.wan.dit import WanModel


@pytest.fixture
def scene(tiny_config):
    model = randomize(WanModel(tiny_config), std=0.05)
    branch = randomize(SemanticBranch(BranchConfig(code_dim=16, dim=64, num_heads=2, num_layers=2)), std=0.1)
    plan = branch.condition(torch.randn(1, 2 * 9, 16), [0.0, 2.0], (3, 3))
    noise = initial_noise((1, 48, 3, 4, 6), seed=7)
    return model, branch, plan, noise, torch.randn(1, 5, 32), torch.zeros(1, 0, 32)


def test_render_is_bitwise_reproducible(scene):
    model, _, plan, noise, pos, neg = scene
    kw = dict(plan=plan, steps=4, guidance=Guidance(text_scale=3.0, plan_scale=2.0))
    assert torch.equal(render(model, noise, pos, neg, **kw), render(model, noise.clone(), pos, neg, **kw))


def test_plan_steers_the_result_and_the_window_limits_it(scene):
    model, branch, plan, noise, pos, neg = scene
    without = render(model, noise, pos, neg, steps=4)
    full = render(model, noise, pos, neg, plan=plan, steps=4)
    windowed = render(
        model,
        noise,
        pos,
        neg,
        steps=4,
        plan=branch.condition(torch.randn(1, 18, 16), [0.0, 2.0], (3, 3), start=0.9, end=1.0),
    )
    assert (full - without).abs().max() > 1e-3
    assert (windowed - full).abs().max() > 1e-3


def test_first_frame_is_kept_and_progress_is_reported(scene):
    model, _, plan, noise, pos, neg = scene
    first, seen = torch.randn(1, 48, 1, 4, 6), []
    out = render(
        model,
        noise,
        pos,
        neg,
        plan=plan,
        steps=3,
        first_frame_latent=first,
        callback=lambda i, n, x, x0: seen.append((i, n)),
    )
    assert torch.equal(out[:, :, :1], first) and seen == [(0, 3), (1, 3), (2, 3)]


def test_interrupt_stops_rendering(scene):
    model, _, _, noise, pos, neg = scene
    with pytest.raises(SamplingInterrupted, match="step 0 of 3"):
        render(model, noise, pos, neg, steps=3, interrupt=lambda: True)


def test_latent_shape_of_the_reference_video_and_bad_sizes():
    assert latent_shape(1280, 704, 121) == (1, 48, 31, 44, 80)
    with pytest.raises(ValueError, match="4n\\+1 frames; use 121 or 125"):
        latent_shape(1280, 704, 123)
    with pytest.raises(ValueError, match="multiples of 32; try 1280x704"):
        latent_shape(1290, 720, 121)


def test_text_context_is_zero_padded_and_overlong_text_refused():
    padded = pad_text_context(torch.ones(1, 3, 4), 6)
    assert padded.shape == (1, 6, 4) and padded[:, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="shorten the prompt"):
        pad_text_context(torch.ones(1, 7, 4), 6)
