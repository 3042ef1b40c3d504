import pytest
import torch
from conftest import randomize

from planx_core.plan.timing import cell_centres, latent_frame, plan_positions
from planx_core.semantic_branch import BranchConfig, SemanticBranch, window_active
from planx_core.tatok.model import codebook_vectors
from planx_core.wan.dit import WanModel

# --- the alignment rule ---------------------------------------------------------------------------


def test_keyframes_land_on_latent_frames():
    assert latent_frame(0.0, 24) == 0
    assert latent_frame(0.5, 24) == 3
    assert [latent_frame(k / 2, 24) for k in range(11)] == [3.0 * k for k in range(11)]
    assert latent_frame(0.25, 24) == 1.5  # fractional latent frames are allowed


def test_nine_by_nine_cells_sit_at_their_centres_on_a_22x40_grid():
    centres = cell_centres((9, 9), (22, 40))
    assert centres.shape == (81, 2)
    assert centres[0].tolist() == pytest.approx([0.5 * 22 / 9 - 0.5, 0.5 * 40 / 9 - 0.5])
    assert centres[80].tolist() == pytest.approx([8.5 * 22 / 9 - 0.5, 8.5 * 40 / 9 - 0.5])
    assert centres[40].tolist() == pytest.approx([10.5, 19.5])  # the middle cell is the middle of the grid


def test_plan_positions_of_the_reference_video():
    frames = [latent_frame(k / 2, 24) for k in range(11)]  # 1280x704, 121 frames, 24 fps
    pos = plan_positions(frames, (9, 9), (22, 40))
    assert pos.shape == (891, 3)
    assert pos[81 * 3, 0].item() == 9.0 and pos[-1, 0].item() == 30.0
    torch.testing.assert_close(pos[:81, 1:], pos[81:162, 1:])


# --- the branch in the DiT ------------------------------------------------------------------------


def setup(mode, tiny_config, **kw):
    model = randomize(WanModel(tiny_config))
    branch = SemanticBranch(BranchConfig(code_dim=16, dim=64, num_heads=2, num_layers=2, mode=mode, **kw))
    x, t, ctx = torch.randn(2, 48, 5, 8, 12), torch.tensor([700.0, 300.0]), torch.randn(2, 6, 32)
    vectors = torch.randn(1, 3 * 9, 16)
    return model, branch.eval(), (x, t, ctx), vectors


def run(model, inputs, plan=None):
    with torch.no_grad():
        return model(*inputs, plan=plan)


def test_untrained_cross_attention_branch_changes_nothing(tiny_config):
    model, branch, inputs, vectors = setup("cross_attn", tiny_config)
    plan = branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3))
    assert torch.equal(run(model, inputs), run(model, inputs, plan))


def test_trained_branch_is_steered_by_plan_strength_and_rope(tiny_config):
    model, branch, inputs, vectors = setup("cross_attn", tiny_config)
    randomize(branch, seed=1)
    base = run(model, inputs)
    full = run(model, inputs, branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3)))
    assert (full - base).abs().max() > 1e-2
    assert torch.equal(run(model, inputs, branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3), strength=0.0)), base)
    no_rope = run(model, inputs, branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3), use_rope=False))
    moved = run(model, inputs, branch.condition(vectors, [0.0, 1.0, 4.0], (3, 3)))
    assert (no_rope - full).abs().max() > 1e-3 and (moved - full).abs().max() > 1e-3
    # without RoPE, keyframe times carry no signal
    assert torch.equal(no_rope, run(model, inputs, branch.condition(vectors, [0.0, 1.0, 4.0], (3, 3), use_rope=False)))


def test_branch_only_in_chosen_blocks(tiny_config):
    branch = SemanticBranch(BranchConfig(code_dim=16, dim=64, num_heads=2, num_layers=2, blocks=(1,)))
    assert list(branch.attn) == ["1"]
    with pytest.raises(ValueError, match="outside the DiT"):
        BranchConfig(dim=64, num_heads=2, num_layers=2, blocks=(2,))


def test_in_context_plan_changes_output_and_strength_zero_removes_it(tiny_config):
    model, branch, inputs, vectors = setup("in_context", tiny_config)
    randomize(branch, seed=1)
    base = run(model, inputs)
    with_plan = run(model, inputs, branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3)))
    muted = run(model, inputs, branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3), strength=0.0))
    assert with_plan.shape == base.shape and (with_plan - base).abs().max() > 1e-2
    torch.testing.assert_close(muted, base, atol=1e-5, rtol=0)


def test_gradients_reach_the_branch(tiny_config):
    model, branch, (x, t, ctx), vectors = setup("cross_attn", tiny_config)
    branch.train()
    out = model(x, t, ctx, plan=branch.condition(vectors, [0.0, 2.0, 4.0], (3, 3)))
    out.square().mean().backward()
    assert branch.attn["0"].v.weight.grad.abs().sum() > 0  # zero-initialised, yet it learns
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in branch.proj.parameters())  # until v moves


def test_plan_longer_than_video_is_refused(tiny_config):
    model, branch, inputs, vectors = setup("cross_attn", tiny_config)
    with pytest.raises(ValueError, match="longer than the video"):
        run(model, inputs, branch.condition(vectors, [0.0, 2.0, 5.0], (3, 3)))  # latent frames are 0..4


def test_branch_for_another_dit_is_refused(tiny_config):
    model, _, inputs, vectors = setup("cross_attn", tiny_config)
    other = SemanticBranch(BranchConfig(code_dim=16, dim=32, num_heads=2, num_layers=2))
    with pytest.raises(ValueError, match="load the branch file that matches"):
        run(model, inputs, other.condition(vectors, [0.0, 2.0, 4.0], (3, 3)))


def test_token_count_must_match_keyframes_and_grid():
    branch = SemanticBranch(BranchConfig(code_dim=16, dim=64, num_heads=2, num_layers=2))
    with pytest.raises(ValueError, match="need 27"):
        branch.condition(torch.randn(1, 26, 16), [0.0, 1.0, 2.0], (3, 3))


def test_condition_plan_uses_times_grid_and_codebook_and_refuses_misfits():
    from planx_core.plan.core import CodebookId, PlanError, make_plan
    from planx_core.plan.timing import keyframe_times

    branch = SemanticBranch(BranchConfig(code_dim=16, dim=64, num_heads=2, num_layers=2))
    codebook = torch.randn(10, 16)
    times = keyframe_times(17, 8.0)  # 0, .5, 1, 1.5, 2 s -> latent frames 0..4
    plan = make_plan(
        [[k] * 9 for k in range(5)],
        times=times,
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        codebook=CodebookId("tiny", 10, ""),
        grid=(3, 3),
    )
    cond = branch.condition_plan(plan, codebook, num_frames=17, fps=8.0, strength=0.5)
    assert cond.latent_frames == [0.0, 1.0, 2.0, 3.0, 4.0] and cond.grid_hw == (3, 3) and cond.strength == 0.5
    torch.testing.assert_close(cond.tokens, branch.embed(codebook[plan.token_tensor().reshape(1, -1)]))
    with pytest.raises(PlanError, match="does not fit the video"):
        branch.condition_plan(plan, codebook, num_frames=9, fps=8.0)
    with pytest.raises(PlanError, match="codebook given has 12 codes"):
        branch.condition_plan(plan, torch.randn(12, 16), num_frames=17, fps=8.0)


def test_codebook_lookup_refuses_out_of_range_tokens():
    codebook = torch.randn(10, 4)
    torch.testing.assert_close(codebook_vectors(torch.tensor([[1, 9]]), codebook), codebook[[1, 9]][None])
    with pytest.raises(ValueError, match="token 10 .* outside the codebook's 0..9"):
        codebook_vectors(torch.tensor([[1, 10]]), codebook)


def test_schedule_window_uses_unshifted_fractions():
    assert window_active(1.0, 0.0, 1.0, shift=5.0) and window_active(0.0, 0.0, 1.0, shift=5.0)
    assert not window_active(1.0, 0.2, 1.0, shift=1.0)  # start at 20%: the first step is skipped
    assert window_active(0.5, 0.2, 0.6, shift=1.0) and not window_active(0.3, 0.2, 0.6, shift=1.0)
    sigma_at_half = 5.0 * 0.5 / (1 + 4.0 * 0.5)  # 50% of the timeline under shift 5
    assert window_active(sigma_at_half, 0.0, 0.5, shift=5.0)
    assert not window_active(sigma_at_half - 0.01, 0.0, 0.5, shift=5.0)


def test_branch_file_round_trip_and_refusals(tmp_path):
    from planx_core.files.safetensors import CheckpointError, save_safetensors
    from planx_core.semantic_branch import load_branch, save_branch

    branch = randomize(SemanticBranch(BranchConfig(code_dim=16, dim=64, num_heads=2, num_layers=2, blocks=(1,))))
    save_branch(branch, tmp_path / "branch.safetensors")
    loaded = load_branch(tmp_path / "branch.safetensors")
    assert loaded.config == branch.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in branch.state_dict().items())
    save_safetensors(branch.state_dict(), tmp_path / "bare.safetensors")
    with pytest.raises(CheckpointError, match="not a Plan-X semantic-branch file"):
        load_branch(tmp_path / "bare.safetensors")


def test_branch_file_keeps_an_empty_block_list(tmp_path):
    from planx_core.semantic_branch import load_branch, save_branch

    branch = SemanticBranch(BranchConfig(code_dim=16, dim=64, num_heads=2, num_layers=2, blocks=()))
    save_branch(branch, tmp_path / "no_blocks.safetensors")
    assert load_branch(tmp_path / "no_blocks.safetensors").config.blocks == ()
