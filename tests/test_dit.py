"""WanModel against diffusers' WanTransformer3DModel (an independent implementation), same weights."""

import pytest
import torch
from conftest import diffusers_wan_kwargs, randomize

from planx_core.wan.configs import get_preset
from planx_core.wan.dit import WanModel, sinusoidal_embedding_1d
from planx_core.wan.dit_files import official_to_diffusers

diffusers = pytest.importorskip("diffusers")


def twin_models(config):
    ours = randomize(WanModel(config))
    ref = diffusers.WanTransformer3DModel(**diffusers_wan_kwargs(config)).eval()
    ref.load_state_dict(official_to_diffusers(ours.state_dict()), strict=True)
    return ours, ref


@pytest.mark.parametrize("timestep_kind", ["per_sample", "per_frame", "per_token"])
def test_matches_diffusers(tiny_config, timestep_kind):
    ours, ref = twin_models(tiny_config)
    x, context = torch.randn(2, 48, 3, 8, 12), torch.randn(2, 16, tiny_config.text_dim)
    frames, tokens_per_frame = 3, 4 * 6
    t = {
        "per_sample": torch.tensor([999.0, 250.0]),
        "per_frame": torch.tensor([[0.0, 700.0, 700.0], [0.0, 30.0, 30.0]]),
        "per_token": torch.rand(2, frames * tokens_per_frame) * 1000,
    }[timestep_kind]
    t_ref = t.repeat_interleave(tokens_per_frame, dim=1) if timestep_kind == "per_frame" else t
    with torch.no_grad():
        got = ours(x, t, context)
        want = ref(x, t_ref, context, return_dict=False)[0]
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_matches_diffusers_wan21_channels():
    ours, ref = twin_models(get_preset("tiny-wan21"))
    x, context = torch.randn(1, 16, 2, 6, 4), torch.randn(1, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            ours(x, torch.tensor([400.0]), context),
            ref(x, torch.tensor([400.0]), context, return_dict=False)[0],
            atol=1e-4,
            rtol=0,
        )


def test_per_frame_timesteps_equal_per_token_timesteps(tiny_config):
    model = randomize(WanModel(tiny_config))
    x, context = torch.randn(1, 48, 3, 4, 4), torch.randn(1, 5, 32)
    per_frame = torch.tensor([[0.0, 500.0, 900.0]])
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, per_frame, context), model(x, per_frame.repeat_interleave(4, dim=1), context), atol=1e-5, rtol=0
        )


def test_timestep_embedding_is_cos_then_sin():
    emb = sinusoidal_embedding_1d(8, torch.tensor([0.0, 1.0]))
    assert emb[0].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]
    assert emb[1, 0].item() == pytest.approx(torch.cos(torch.tensor(1.0)).item())


def test_bf16_compute_tracks_fp32(tiny_config):
    model = randomize(WanModel(tiny_config), std=0.05)
    x, t, context = torch.randn(1, 48, 2, 4, 4), torch.tensor([600.0]), torch.randn(1, 5, 32)
    with torch.no_grad():
        full = model(x, t, context)
        half = model(x.bfloat16(), t, context.bfloat16())
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


def test_bad_shapes_are_refused_with_the_fix(tiny_config):
    model = WanModel(tiny_config)
    with pytest.raises(ValueError, match="not divisible by the DiT patch"):
        model(torch.randn(1, 48, 2, 5, 4), torch.tensor([1.0]), torch.randn(1, 3, 32))
    with pytest.raises(ValueError, match="timestep of shape"):
        model(torch.randn(1, 48, 2, 4, 4), torch.ones(1, 5), torch.randn(1, 3, 32))


def test_training_forward_after_inference_on_the_same_grid(tiny_config):
    """The cached RoPE tables of a grid first seen under inference_mode must still allow backward."""
    model = randomize(WanModel(tiny_config)).train()
    x, t, context = torch.randn(1, 48, 2, 6, 10), torch.tensor([500.0]), torch.randn(1, 4, 32)
    with torch.inference_mode():
        model(x, t, context)
    model(x, t, context).square().mean().backward()
    assert model.blocks[0].self_attn.q.weight.grad is not None
