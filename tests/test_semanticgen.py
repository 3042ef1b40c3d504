"""SemanticGen end to end on tiny random parts: stage 1 shapes and determinism, stage 2 short and
long (windowed) rendering, continuous plans made from z_sem, folder round trip, and both training
stages for a few steps through the training entry point."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from planx_core import EMBEDDED, world
from planx_core.files.safetensors import CheckpointError, read_safetensors, save_safetensors
from planx_core.plan.core import Plan
from planx_core.plan.timing import keyframe_latent_frames, keyframe_times
from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.semanticgen.compressor import CompressorConfig, SemanticCompressor
from planx_core.semanticgen.encoder import SemanticEncoder, tiny_vision_config
from planx_core.semanticgen.generator import (
    check_fits,
    from_latent,
    generate_semantics,
    semantic_generator_config,
    to_latent,
)
from planx_core.semanticgen.model import SemanticGen, SemanticGenSpec
from planx_core.training import main as train
from planx_core.training.assemble import assemble_semanticgen as assemble
from planx_core.wan.configs import get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.dit_files import load_dit_file, save_dit
from planx_core.wan.text_encoder import load_text_encoder
from planx_core.wan.vae_files import load_vae

# A training run at its smallest: two-clip pools, one long clip, one thread, one clip in the end-of-run evaluation
# (its default, 16 clips through both stages, was most of these tests' time).
SMALL_RUN = ["--batch", "2", "--pool", "2", "--long-pool", "1", "--threads", "1", "--eval-clips", "1"]


@pytest.fixture(scope="module")
def model() -> SemanticGen:
    torch.manual_seed(0)
    dit = WanModel(get_preset("planx-tiny")).eval()
    cfg = dit.config
    branch = SemanticBranch(
        BranchConfig(code_dim=8, dim=cfg.dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, mode="in_context")
    )
    for p in branch.parameters():  # a random (not zero) branch, so the plan changes the output
        torch.nn.init.normal_(p, std=0.05)
    semantic = WanModel(semantic_generator_config(8, width=32, layers=2, heads=2)).eval()
    return SemanticGen(
        SemanticGenSpec(window=2, sem_dim=8, steps=2, semantic_steps=2),
        SemanticEncoder(tiny_vision_config()).eval(),
        SemanticCompressor(CompressorConfig.tiny(8)).eval(),
        dit,
        branch.eval(),
        semantic,
        load_text_encoder(EMBEDDED / "text_encoder"),
        load_vae(EMBEDDED / "vae.safetensors"),
    )


def test_latent_layout_round_trip():
    z = torch.randn(2, 5, 4, 4, 8)
    assert to_latent(z).shape == (2, 8, 5, 4, 4)
    assert torch.equal(from_latent(to_latent(z)), z)


def test_generate_semantics_shape_and_seed(model):
    pos = torch.randn(1, 8, 64)
    kwargs = dict(keyframes=17, grid=(4, 4), steps=2)
    a = generate_semantics(model.semantic_dit, pos, torch.zeros_like(pos), seed=3, **kwargs)
    b = generate_semantics(model.semantic_dit, pos, torch.zeros_like(pos), seed=3, **kwargs)
    c = generate_semantics(model.semantic_dit, pos, torch.zeros_like(pos), seed=4, **kwargs)
    assert a.shape == (1, 17, 4, 4, 8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_check_fits_refuses_video_dit_and_other_width(model):
    with pytest.raises(ValueError, match="patch 1x1x1"):
        check_fits(model.latent_dit, (8,))
    with pytest.raises(ValueError, match="64 wide"):
        check_fits(model.semantic_dit, (64,))


def test_keyframe_latent_frames_follow_alignment_rule():
    assert keyframe_latent_frames(keyframe_times(17, 8.0, 2.0), 8.0) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert keyframe_latent_frames(keyframe_times(5, 8.0, 4.0), 8.0) == [0.0, 0.5, 1.0]  # every 2nd frame


def test_semantics_of_a_clip(model):
    clip = world.make_clip(1)
    from planx_core.world.clips import clip_video

    z = model.encode_semantics(clip_video([clip])[0])
    assert z.shape == (5, 4, 4, 8) and model.semantic_grid() == (4, 4)


@pytest.mark.parametrize("frames", [17, 65])
def test_generate_short_and_long(model, frames):
    out, z = model.generate("a red circle", "the red circle moves right", num_frames=frames, seed=0)
    assert out.shape == (frames, 64, 64, 3) and z.shape == ((frames - 1) // 4 + 1, 4, 4, 8)
    plain, none = model.generate(
        "a red circle", "the red circle moves right", num_frames=frames, seed=0, use_semantics=False
    )
    assert none is None and plain.shape == out.shape
    assert (out.astype(int) - plain.astype(int)).any()  # the semantic tokens reach the video


def test_semantic_plan_round_trip_and_refusals(model):
    z = model.plan_semantics("a red circle", "the red circle moves up", num_frames=17, seed=1)
    plan = model.semantic_plan(z, num_frames=17, scene="a red circle", motion="the red circle moves up", seed=1)
    again = Plan.from_json(plan.to_json())
    assert again.kind == "continuous" and again.times == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert torch.equal(model.plan_vectors(again), z.float())
    other = json.loads(plan.to_json())
    other["codebook"]["hash"] = "0000000000000000"
    with pytest.raises(ValueError, match="semantic space"):
        model.plan_vectors(Plan.from_dict(other))


def test_folder_round_trip(model, tmp_path):
    model.save(tmp_path / "sg")
    loaded = SemanticGen.load(tmp_path / "sg")
    assert loaded.spec == model.spec and loaded.digest() == model.digest()
    a = model.render_latent(None, "a red circle", "", num_frames=17, seed=2)
    b = loaded.render_latent(None, "a red circle", "", num_frames=17, seed=2)
    assert torch.allclose(a, b, atol=1e-5)
    (tmp_path / "sg" / "latent_branch.safetensors").unlink()
    with pytest.raises(CheckpointError, match="latent_branch.safetensors is missing"):
        SemanticGen.load(tmp_path / "sg")


def test_dit_file_refuses_other_files(tmp_path, model):
    save_dit(model.semantic_dit, tmp_path / "s.safetensors")
    assert load_dit_file(tmp_path / "s.safetensors").config == model.semantic_dit.config
    with pytest.raises(CheckpointError, match="not a SemanticGen DiT file"):
        load_dit_file(EMBEDDED / "branch.safetensors")


def test_training_stages_run_and_assemble(tmp_path):
    """Both stages for two steps each, then one folder that generates a long video."""
    common = [
        "--steps",
        "2",
        "--batch",
        "4",
        "--pool",
        "4",
        "--long-pool",
        "2",
        "--long-every",
        "2",
        "--eval-clips",
        "1",
        "--threads",
        "1",
        "--save-every-min",
        "100",
    ]
    latent, semantic = tmp_path / "latent", tmp_path / "semantic"
    assert train.main(["--stage", "semgen-latent", "--out", str(latent), "--init-from", str(EMBEDDED), *common]) == 0
    assert train.main(["--stage", "semgen-semantic", "--out", str(semantic), "--latent-run", str(latent), *common]) == 0
    logs = [json.loads(line) for line in (latent / "log.jsonl").read_text().splitlines()]
    assert any(e["event"] == "eval" and "sem_accuracy" in e for e in logs)
    folder = assemble(latent, semantic, tmp_path / "model")
    sg = SemanticGen.load(folder).with_spec(steps=1, semantic_steps=1)
    frames, z = sg.generate("a blue square", "the blue square moves left", num_frames=65, seed=0)
    assert frames.shape == (65, 64, 64, 3) and z.shape == (17, 4, 4, 8)


def test_semantic_stage_encodes_its_own_pools_from_a_model_folder(tmp_path):
    """`--semantic-pools`: stage 1 trains on pools of a SemanticGen folder's own encoder (no latent run needed):
    features and prompts only, no latents."""
    out = tmp_path / "semantic"
    args = ["--stage", "semgen-semantic", "--out", str(out), "--latent-run", str(EMBEDDED / "semanticgen")]
    common = ["--steps", "1", *SMALL_RUN]
    assert train.main([*args, "--semantic-pools", *common, "--eval-every", "0"]) == 0
    pool = read_safetensors(out / "pool_short.safetensors")
    assert set(pool) == {"feats", "ids", "mask"} and pool["feats"].shape[:2] == (2, 5)
    assert (out / "pool_long.safetensors").is_file() and (out / "semantic_generator.safetensors").is_file()


def test_order_pairs_shape_the_pools_stage_1_encodes(tmp_path, capsys):
    """`--order-pairs 1 --semantic-pools`: the short pool's clips go in twos, one scene in both stage orders (the
    planner's lesson for stage 1); without --semantic-pools the latent run's pools are fixed, so it is refused."""
    from planx_core.wan.text_encoder import join_prompt
    from planx_core.world.tiny import SHORT_WORLD

    out = tmp_path / "semantic"
    args = ["--stage", "semgen-semantic", "--out", str(out), "--latent-run", str(EMBEDDED / "semanticgen")]
    common = ["--steps", "1", *SMALL_RUN, "--eval-every", "0"]
    assert train.main([*args, *common, "--order-pairs", "1"]) != 0
    assert "add --semantic-pools" in capsys.readouterr().err and not list(out.glob("*"))  # nothing made
    assert train.main([*args, *common, "--semantic-pools", "--order-pairs", "1"]) == 0
    pair = world.order_pair(world.clip_seed(0, 230, 0), SHORT_WORLD)  # the short pool's stream, its first seed
    assert pair[0].scene == pair[1].scene and pair[0].motion != pair[1].motion
    text = SemanticGen.load(EMBEDDED / "semanticgen", need_semantic=False).text
    ids, _ = text.tokenize([join_prompt(c.scene, c.motion) for c in pair])  # [2, L]
    assert torch.equal(read_safetensors(out / "pool_short.safetensors")["ids"], ids)
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs[0]["event"] == "start" and logs[0]["fingerprint"]["order_pairs"] == 1.0  # a resume must match


def test_long_movers_keeps_only_long_clips_where_a_second_object_moves(tmp_path, capsys):
    """`--long-movers 2`: the long pool's seeds are its stream's in order, less those whose clip moves one object or
    none; the default keeps the stream as it was, a world where two cannot move is refused by name, and so is stage 1
    without pools of its own to shape."""
    from planx_core.training.semanticgen import POOL_STREAMS, moving_objects, pool_seeds
    from planx_core.training.stages import StageError
    from planx_core.world.tiny import LONG_WORLD

    stream = [world.clip_seed(0, POOL_STREAMS["long"], i) for i in range(200)]
    assert pool_seeds(0, POOL_STREAMS["long"], 3, LONG_WORLD) == stream[:3]  # as before the option
    kept = pool_seeds(0, POOL_STREAMS["long"], 3, LONG_WORLD, movers=2)
    positions = [stream.index(seed) for seed in kept]
    assert positions == sorted(positions)
    movers = {
        seed: moving_objects(world.make_clip(seed, LONG_WORLD).composition) for seed in stream[: positions[-1] + 1]
    }
    assert all(movers[seed] >= 2 for seed in kept)
    assert all(count < 2 for seed, count in movers.items() if seed not in kept) and len(movers) > len(kept)
    with pytest.raises(StageError, match="--long-movers 2"):
        pool_seeds(0, POOL_STREAMS["short"], 1, world.WorldConfig(max_objects=1), movers=2)
    out = tmp_path / "semantic"
    stage_1 = ["--stage", "semgen-semantic", "--out", str(out), "--latent-run", str(EMBEDDED / "semanticgen")]
    assert train.main([*stage_1, "--steps", "1", "--long-movers", "2"]) != 0
    assert "--long-movers shapes the pools" in capsys.readouterr().err and not list(out.glob("*"))  # nothing made


def test_stage_2_fine_tunes_from_a_model_folder_with_its_compressor_frozen(tmp_path, capsys):
    """`semgen-latent --init-from` a SemanticGen folder: its encoder encodes the pools, its DiT and branch train on
    (here with `--object-weight`), its compressor stays as it was, so the folder's stage 1
    (trained on that compressor's means) still fits."""
    from planx_core.semanticgen.compressor import load_compressor
    from planx_core.semanticgen.encoder_files import save_semantic_encoder
    from planx_core.training.engine_dist import state_sha

    def same_weights(a, b) -> bool:
        return state_sha(a.state_dict()) == state_sha(b.state_dict())

    source, out = EMBEDDED / "semanticgen", tmp_path / "latent"
    common = ["--steps", "2", *SMALL_RUN, "--long-every", "2"]
    args = ["--stage", "semgen-latent", "--out", str(out), "--init-from", str(source), *common, "--eval-every", "0"]
    for bad in ("-1", "nan"):
        assert train.main([*args, "--object-weight", bad]) != 0
        assert "--object-weight must be a finite number >= 0" in capsys.readouterr().err and not list(out.glob("*"))
    assert train.main([*args, "--lr", "1e-2", "--object-weight", "2"]) == 0  # the loss weighs the objects up
    assert assemble(out, source, tmp_path / "model").is_dir()
    tuned, shipped = SemanticGen.load(tmp_path / "model"), SemanticGen.load(source)
    assert same_weights(tuned.compressor, shipped.compressor) and same_weights(tuned.encoder, shipped.encoder)
    assert load_compressor(out / "compressor.safetensors").digest() == shipped.compressor.digest()
    assert not same_weights(tuned.latent_dit, shipped.latent_dit) and not same_weights(tuned.branch, shipped.branch)
    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(5)
    save_semantic_encoder(SemanticEncoder(tiny_vision_config()), other / "semantic_encoder.safetensors")
    assert train.main([*args[:3], str(other), *args[4:]]) != 0
    assert "holds another semantic encoder" in capsys.readouterr().err


def test_colour_weight_teaches_the_compressor_each_cells_colour(tmp_path, capsys):
    """`semgen-latent --colour-weight`: the pools carry each semantic cell's colour shares (`world.score.cell_colours`
    of the keyframes), the loss adds that weight times a linear read's cross-entropy against them (a training-only
    head, not exported), and a resume must match it; refused when negative, or with a SemanticGen folder as
    --init-from (its compressor is frozen)."""
    from planx_core.semanticgen.compressor import SemanticDecoder
    from planx_core.training.semanticgen import LatentObjective, semantic_keyframes
    from planx_core.world.clips import clip_video
    from planx_core.world.score import cell_colours
    from planx_core.world.tiny import SHORT_WORLD

    out = tmp_path / "latent"
    common = ["--steps", "2", *SMALL_RUN, "--long-every", "2"]
    args = ["--stage", "semgen-latent", "--out", str(out), *common, "--eval-every", "0"]
    for bad, said in (("-1", "--colour-weight must be a finite number >= 0"), ("nan", "finite number")):
        assert train.main([*args, "--init-from", str(EMBEDDED), "--colour-weight", bad]) != 0
        assert said in capsys.readouterr().err and not list(out.glob("*"))
    assert train.main([*args, "--init-from", str(EMBEDDED / "semanticgen"), "--colour-weight", "1"]) != 0
    assert "trains the compressor" in capsys.readouterr().err and not list(out.glob("*"))
    assert train.main([*args, "--init-from", str(EMBEDDED), "--colour-weight", "0.5"]) == 0
    pool = read_safetensors(out / "pool_short.safetensors")
    clip = world.make_clip(world.clip_seed(0, 230, 0), SHORT_WORLD)  # the short pool's first clip
    keys = semantic_keyframes(clip.frames.shape[0])[1]
    assert np.array_equal(pool["colours"][0].numpy(), cell_colours(clip.frames[keys], (4, 4)))  # [K, 4, 4, 7]
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs[0]["fingerprint"]["colour_weight"] == 0.5
    old = tmp_path / "old"  # a run folder whose pools were made before --colour-weight
    old.mkdir()
    save_safetensors({k: v for k, v in pool.items() if k != "colours"}, old / "pool_short.safetensors")
    assert train.main([*args[:3], str(old), *args[4:], "--init-from", str(EMBEDDED), "--colour-weight", "1"]) != 0
    assert "holds no colour shares" in capsys.readouterr().err and sorted(p.name for p in old.iterdir()) == [
        "pool_short.safetensors"
    ]

    sg = SemanticGen.load(EMBEDDED / "semanticgen", need_semantic=False)
    decoder = SemanticDecoder(sg.compressor.config)
    objective = LatentObjective(sg.latent_dit, sg.branch, sg.compressor, decoder, 2, colour_head=True)
    video = clip_video([clip])  # [1, 3, T, H, W]
    feats = sg.encoder.encode(video[:, :, keys].transpose(1, 2).flatten(0, 1))[None]  # [1, K, 4, 4, 128]
    inputs = {
        "x0": sg.vae.encode(video),  # [1, z, F, h, w]
        "context": sg.contexts(clip.scene, clip.motion)[0],  # [1, L, Dt]
        "feats": feats,
        "seed": 3,
        "text_p": 0.0,
        "plan_p": 0.0,
        "kl_weight": 1e-3,
        "rec_weight": 0.1,
        "colours": pool["colours"][:1],  # [1, K, 4, 4, 7]
    }
    with torch.no_grad():
        torch.manual_seed(0)
        plain = objective(**inputs, colour_weight=0.0)
        torch.manual_seed(0)
        weighted = objective(**inputs, colour_weight=2.0)
        torch.manual_seed(0)
        logits = objective.colour_head(sg.compressor(feats, sample=True).z)  # [1, K, 4, 4, 7]
    cross = -(inputs["colours"] * logits.log_softmax(-1)).sum(-1).mean()
    assert cross > 0 and torch.allclose(weighted, plain + 2.0 * cross, atol=1e-5)


def test_encoder_patch_4_gives_stage_2_an_8x8_semantic_grid(tmp_path, capsys):
    """`semgen-latent --encoder-patch 4`: the fresh tiny encoder has 4-px patches, so the pools and the exported
    folder plan on an 8x8 grid of 8-px cells (one per video token); a resume with the other patch is refused."""
    out = tmp_path / "latent"
    common = [*SMALL_RUN, "--eval-every", "0"]
    args = ["--stage", "semgen-latent", "--out", str(out), "--init-from", str(EMBEDDED), *common]
    assert train.main([*args, "--steps", "1", "--encoder-patch", "4"]) == 0
    assert read_safetensors(out / "pool_short.safetensors")["feats"].shape == (2, 5, 8, 8, 128)
    assert SemanticGen.load(out, need_semantic=False).semantic_grid() == (8, 8)
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs[0]["fingerprint"]["encoder_patch"] == 4  # a resume must match
    assert train.main([*args, "--steps", "2"]) != 0  # the default 8-px patch on this folder
    assert "--encoder-patch" in capsys.readouterr().err


def test_stage_2_plan_guidance_is_a_spec_setting_that_old_folders_leave_at_1(model, tmp_path):
    """`plan_scale` (stage 2 guided by the semantic plan: v(-,-) + s (v(-,plan) - v(-,-)) + ...): read from
    semanticgen.json, 1 when the file predates it, and it changes the render."""
    spec = json.loads((EMBEDDED / "semanticgen" / "semanticgen.json").read_text())
    spec.pop("plan_scale", None)
    assert SemanticGenSpec.from_json(json.dumps(spec), tmp_path).plan_scale == 1.0
    assert SemanticGenSpec.from_json(SemanticGenSpec(plan_scale=2.5).to_json(), tmp_path).plan_scale == 2.5
    z = model.plan_semantics("a red circle", "the red circle moves up", num_frames=17, seed=1)
    plan = model.semantic_plan(z, num_frames=17, scene="a red circle", motion="the red circle moves up")
    fast = model.with_spec(steps=2)
    one = fast.render_latent(plan, "a red circle", "", num_frames=17, seed=3)  # [1, C, F, h, w]
    assert torch.equal(
        one, fast.with_spec(plan_scale=1.0).render_latent(plan, "a red circle", "", num_frames=17, seed=3)
    )
    assert not torch.allclose(
        one, fast.with_spec(plan_scale=3.0).render_latent(plan, "a red circle", "", num_frames=17, seed=3)
    )


def test_semantic_stage_needs_latent_run(tmp_path, capsys):
    assert train.main(["--stage", "semgen-semantic", "--out", str(tmp_path / "s"), "--steps", "1"]) != 0
    assert "needs --latent-run" in capsys.readouterr().err


def test_a_retimed_plan_renders_at_its_own_times(model, tmp_path):
    """Stage 2 renders a continuous plan at its keyframe times, as Inject 3D RoPE Guidance does (the branch's
    condition_plan at the plan's fps): a retimed plan gives another latent than the plan before the edit, and
    the command line honours it (it once re-derived evenly spaced times)."""
    from argparse import Namespace

    from planx_core.diffusion import Guidance, initial_noise, latent_shape, render
    from planx_core.pipelines.commands import _semanticgen_plan
    from planx_core.plan import PlanError
    from planx_core.plan.edits import apply_edits

    z = model.plan_semantics("a red circle", "the red circle moves up", num_frames=17, seed=1)
    plan = model.semantic_plan(z, num_frames=17, scene="a red circle", motion="the red circle moves up")
    moved = apply_edits(plan, [{"op": "move_keyframe", "keyframe": 1, "time": 1.25}])
    assert moved.times == [0.0, 1.0, 1.25, 1.5, 2.0]
    cli = model.render_latent(moved, "a red circle", "", num_frames=17, seed=3)  # [1, C, F, h, w]
    node = model.branch.condition_plan(moved, None, num_frames=moved.num_frames, fps=moved.fps)
    positive, negative = model.contexts("a red circle", "")
    vae = model.vae.config
    shape = latent_shape(
        64, 64, 17, channels=vae.z_dim, spatial=vae.spatial_factor, temporal=vae.temporal_factor, patch=2
    )
    reference = render(
        model.latent_dit,
        initial_noise(shape, 3),
        positive,
        negative,
        plan=node,
        steps=model.spec.steps,
        shift=model.spec.shift,
        guidance=Guidance(text_scale=model.spec.text_scale, plan_scale=model.spec.plan_scale),
        window=2,
    )
    assert torch.equal(cli, reference)
    before = model.render_latent(plan, "a red circle", "", num_frames=17, seed=3)
    assert not torch.allclose(before, cli)
    path = tmp_path / "moved.plan.json"
    path.write_text(moved.to_json())
    args = Namespace(plan=str(path), frames=None, no_plan=False, seed=3)
    loaded, frames, _ = _semanticgen_plan(model, args, "a red circle", "")  # what `semanticgen --plan` renders
    assert frames == 17 and loaded.times == moved.times
    with pytest.raises(PlanError, match="does not fit the video"):  # keyframes up to 2 s, 9 frames end at 1 s
        _semanticgen_plan(model, Namespace(plan=str(path), frames=9, no_plan=False, seed=3), "a red circle", "")


def test_window_semantics_reach_stage_2_and_round_trip(model, tmp_path):
    """The spec's window semantics and margin decide what stage 2's windows see; the folder keeps them, and
    an unknown value is refused when the spec is read."""
    z = model.plan_semantics("a red circle", "the red circle moves up", num_frames=33, seed=1)
    plan = model.semantic_plan(z, num_frames=33)
    latents = {
        key: model.with_windowing(semantics=key[0], margin=key[1]).render_latent(
            plan, "a red circle", "", num_frames=33, seed=3
        )
        for key in (("local", 0), ("global", 0), ("local", 1))
    }
    assert model.spec.window_semantics == "local" and model.spec.window_margin == 0  # the default
    assert not torch.allclose(latents["local", 0], latents["global", 0])
    assert not torch.allclose(latents["local", 0], latents["local", 1])
    wide = model.with_windowing(semantics="global", margin=2)
    wide.save(tmp_path / "sg")
    assert SemanticGen.load(tmp_path / "sg").spec == wide.spec
    spec = tmp_path / "sg" / "semanticgen.json"
    spec.write_text(spec.read_text().replace('"global"', '"everywhere"'))
    with pytest.raises(ValueError, match="window_semantics must be one of"):
        SemanticGen.load(tmp_path / "sg")
    with pytest.raises(ValueError, match="window_margin"):
        model.with_windowing(margin=-1)


def test_semanticgen_command_refuses_a_negative_window_margin(tmp_path, capsys):
    from planx_core.__main__ import main

    out = tmp_path / "long.mp4"
    code = main(["semanticgen", "--prompt", "a red circle. it moves up.", "--out", str(out), "--window-margin", "-1"])
    assert code == 2 and "window_margin must be a whole number of latent frames >= 0" in capsys.readouterr().err
    assert not out.exists()


def test_a_per_frame_text_context_gives_each_frame_its_own_text():
    """A context `[B, F', Lt, D]`: each latent frame's tokens cross-attend to that frame's text alone (the same as
    the one-text path run on the frame's tokens with its text); one text repeated equals the `[B, Lt, D]` path; a
    count of texts that is not the latent's frames, or one beside plan tokens, is refused naming the fix."""
    torch.manual_seed(0)
    model = WanModel(semantic_generator_config(8, text_dim=16, width=32, layers=1, heads=2)).eval()
    block = model.blocks[0].cross_attn
    x, context = torch.randn(2, 3 * 4, 32), torch.randn(2, 3, 5, 32)  # 3 frames of 4 tokens; 5 text tokens each
    with torch.no_grad():
        out = block(x, context)  # [2, 12, 32]
        for f in range(3):
            alone = block(x[:, 4 * f : 4 * (f + 1)], context[:, f])  # [2, 4, 32]
            torch.testing.assert_close(out[:, 4 * f : 4 * (f + 1)], alone)
        z, t, text = torch.randn(1, 8, 3, 2, 2), torch.tensor([500.0]), torch.randn(1, 5, 16)
        torch.testing.assert_close(model(z, t, text[:, None].expand(-1, 3, -1, -1)), model(z, t, text))
        assert not torch.allclose(model(z, t, torch.randn(1, 3, 5, 16)), model(z, t, text))
        with pytest.raises(ValueError, match="one text per latent frame"):
            model(z, t, torch.randn(1, 2, 5, 16))


def test_semantic_cues_give_stage_1_each_keyframes_stage_in_training_and_at_run_time(tmp_path, capsys):
    """`--semantic-cues`: stage 1's pools hold one prompt per keyframe (the scene and its stage,
    `keyframe_prompts`), the run records it, `assemble` writes `semantic_cues` true, and the loaded model feeds
    stage 1 the same text features for a clip as training did; without --semantic-pools it is refused."""
    from planx_core.semanticgen.generator import keyframe_prompts
    from planx_core.training.semanticgen_semantic import SemSemanticStage
    from planx_core.training.stages import StageContext
    from planx_core.world.tiny import SHORT_WORLD

    out = tmp_path / "semantic"
    args = ["--stage", "semgen-semantic", "--out", str(out), "--latent-run", str(EMBEDDED / "semanticgen")]
    common = ["--steps", "1", *SMALL_RUN, "--eval-every", "0"]
    assert train.main([*args, *common, "--semantic-cues"]) != 0
    assert "add --semantic-pools" in capsys.readouterr().err and not list(out.glob("*"))  # nothing made
    assert train.main([*args, *common, "--semantic-pools", "--semantic-cues"]) == 0
    short, long = (read_safetensors(out / f"pool_{n}.safetensors")["ids"] for n in ("short", "long"))
    assert short.shape[:2] == (2, 5) and long.shape[:2] == (1, 17)  # one prompt per semantic keyframe
    clip = world.make_clip(world.clip_seed(0, 230, 0), SHORT_WORLD)  # the short pool's first clip
    texts = keyframe_prompts(clip.scene, clip.motion, 17, 8.0, 2.0)
    assert texts[0] == texts[0].split(".")[0] + "." and len(set(texts)) > 1  # keyframe 0: the scene alone
    model = SemanticGen.load(assemble(EMBEDDED / "semanticgen", out, tmp_path / "model"))
    assert model.spec.semantic_cues
    (out / "semantic_generator.json").write_text("{}")
    with pytest.raises(CheckpointError, match="semantic_generator.json"):
        assemble(tmp_path / "model", out, tmp_path / "bad")
    (out / "semantic_generator.json").unlink()  # a run without --semantic-cues writes none
    assert SemanticGen.load(assemble(tmp_path / "model", out, tmp_path / "plain")).spec.semantic_cues is False
    cued = train.parse_args([*args, *common, "--semantic-pools", "--semantic-cues"])
    stage = SemSemanticStage(StageContext(cued, "cpu"))
    trained = stage.context(*(stage.pools["short"][k][:1] for k in ("ids", "mask")))  # [1, 5, L, Dt]
    positive, negative = model.semantic_contexts(clip.scene, clip.motion, 17)  # [1, 5, L, Dt]
    torch.testing.assert_close(positive, trained)
    torch.testing.assert_close(negative, torch.zeros_like(trained))
    z = model.with_spec(semantic_steps=1).plan_semantics(clip.scene, clip.motion, num_frames=17)
    assert z.shape == (5, 4, 4, 8)


def test_sequential_stage_1_writes_each_keyframe_from_the_ones_before(model):
    """`sequential=True`: keyframe j is sampled with keyframes < j given, so it cannot depend on a later keyframe's
    text (changing the last keyframe's text changes only the last keyframe), and the callback counts K * steps."""
    pos = torch.randn(1, 4, 8, 64)  # [1, K, L, Dt]: one text per keyframe
    other = pos.clone()
    other[:, -1] = torch.randn(8, 64)
    calls = []
    kwargs = dict(keyframes=4, grid=(4, 4), steps=2, seed=1, sequential=True)
    a = generate_semantics(
        model.semantic_dit, pos, torch.zeros_like(pos), callback=lambda *c: calls.append(c), **kwargs
    )
    b = generate_semantics(model.semantic_dit, other, torch.zeros_like(pos), **kwargs)
    assert a.shape == (1, 4, 4, 4, 8) and torch.equal(a[:, :3], b[:, :3]) and not torch.equal(a[:, 3], b[:, 3])
    assert [c[:2] for c in calls] == [(i, 8) for i in range(8)]
    joint = generate_semantics(model.semantic_dit, pos, torch.zeros_like(pos), **{**kwargs, "sequential": False})
    assert not torch.equal(
        joint[:, :3],
        generate_semantics(model.semantic_dit, other, torch.zeros_like(pos), **{**kwargs, "sequential": False})[:, :3],
    )


def test_semantic_sequential_trains_records_and_assembles(tmp_path):
    """`--semantic-sequential`: the run's fingerprint and export name it, `assemble` writes `semantic_sequential`
    true (with `semantic_cues`), and the loaded model's stage 1 samples keyframe by keyframe."""
    out = tmp_path / "semantic"
    args = ["--stage", "semgen-semantic", "--out", str(out), "--latent-run", str(EMBEDDED / "semanticgen")]
    common = ["--steps", "2", *SMALL_RUN, "--eval-every", "0"]
    assert train.main([*args, *common, "--semantic-pools", "--semantic-cues", "--semantic-sequential"]) == 0
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs[0]["fingerprint"]["semantic_sequential"] is True
    assert json.loads((out / "semantic_generator.json").read_text()) == {
        "semantic_cues": True,
        "semantic_sequential": True,
    }
    model = SemanticGen.load(assemble(EMBEDDED / "semanticgen", out, tmp_path / "model"))
    assert model.spec.semantic_sequential and model.spec.semantic_cues
    calls = []
    z = model.with_spec(semantic_steps=1).plan_semantics(
        "a red circle", "the red circle moves up", num_frames=17, callback=lambda *c: calls.append(c[:2])
    )
    assert z.shape == (5, 4, 4, 8) and calls[-1] == (4, 5)


def test_prefix_noise_jitters_only_the_given_keyframes(capsys, tmp_path):
    """`prefix_noise`: the keyframes a sequential step is given are x0 plus noise of that std (still timestep 0),
    the keyframe it writes is noised as usual; the option needs --semantic-sequential."""
    from planx_core.training.semanticgen_semantic import SemanticObjective

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x_t, t, context, plan=None):
            seen.append((x_t, t))
            return torch.zeros_like(x_t)

    z = torch.randn(2, 5, 4, 4, 8)  # [B, K, gh, gw, D]
    context = torch.randn(2, 5, 8, 64)  # [B, K, L, Dt]
    for noise in (0.0, 0.5):
        SemanticObjective(Spy(), sequential=True, prefix_noise=noise)(z, context, 11, 0.0)
    (clean, t), (jittered, t2) = seen
    k = clean.shape[2] - 1  # the same keyframe drawn for both (same seed)
    assert k >= 1 and all((s[:, :k] == 0).all() and (s[:, k] > 0).all() for s in (t, t2))
    assert torch.equal(clean[:, :, :k], to_latent(z)[:, :, :k])
    assert 0.3 < float((jittered[:, :, :k] - clean[:, :, :k]).std()) < 0.7
    assert not torch.equal(jittered[:, :, k], to_latent(z)[:, :, k])  # the written keyframe is noised
    out = tmp_path / "semantic"
    args = ["--stage", "semgen-semantic", "--out", str(out), "--latent-run", str(EMBEDDED / "semanticgen")]
    assert train.main([*args, "--steps", "1", "--prefix-noise", "0.1"]) != 0
    assert "add --semantic-sequential" in capsys.readouterr().err and not list(out.glob("*"))  # nothing made


@pytest.mark.parametrize("sequential", [False, True])
def test_image_to_video_starts_both_stages_from_the_image(model, sequential):
    """`first_frame`: the image's semantics are keyframe 0 of stage 1's plan, kept exactly while the others are
    sampled after it, and its VAE latent is stage 2's latent frame 0; the rest of the plan depends on the image."""
    from planx_core.world.clips import clip_video

    clip = world.make_clip(2)
    model = model.with_spec(semantic_sequential=sequential)
    start = model.first_frame(clip.frames[0])
    video = clip_video([clip])[0]  # [3, T, H, W]
    assert torch.allclose(start.semantics, model.encode_semantics(video[:, :1]), atol=1e-6)
    assert torch.allclose(start.latent, model.vae.encode(video[None, :, :1]), atol=1e-5)
    texts = ("a red circle", "the red circle moves right")
    z = model.plan_semantics(*texts, num_frames=17, seed=0, start=start)  # [K, gh, gw, D]
    other = model.first_frame(world.make_clip(3).frames[0])
    z_other = model.plan_semantics(*texts, num_frames=17, seed=0, start=other)
    assert (
        z.shape == (5, 4, 4, 8)
        and torch.equal(z[0], start.semantics[0])
        and torch.equal(z_other[0], other.semantics[0])
    )
    assert not torch.equal(z[1:], z_other[1:]), "the keyframes after the image are planned from it"
    plan = model.semantic_plan(z, num_frames=17)
    calls = []
    latent = model.render_latent(plan, *texts, num_frames=17, seed=0, start=start, callback=lambda *c: calls.append(c))
    assert torch.equal(latent[:, :, :1], start.latent) and len(calls) == model.spec.steps
    free = model.render_latent(plan, *texts, num_frames=17, seed=0)
    assert not torch.equal(free[:, :, :1], start.latent)


def test_given_keyframes_must_fit_the_plan(model):
    pos = torch.randn(1, 8, 64)  # [1, L, Dt]
    kwargs = dict(keyframes=3, grid=(4, 4), steps=2, seed=0, sequential=True)
    given = torch.randn(1, 1, 4, 4, 8)  # [1, P, gh, gw, D]
    z = generate_semantics(model.semantic_dit, pos, torch.zeros_like(pos), given=given, **kwargs)
    assert torch.equal(z[:, :1], given) and z.shape == (1, 3, 4, 4, 8)
    everything = torch.randn(1, 3, 4, 4, 8)
    assert torch.equal(generate_semantics(model.semantic_dit, pos, pos, given=everything, **kwargs), everything)
    for bad in (
        torch.randn(1, 1, 3, 3, 8),
        torch.randn(1, 4, 4, 4, 8),
        torch.randn(1, 1, 4, 4, 6),
        torch.randn(4, 4, 8),
    ):
        with pytest.raises(ValueError, match=r"given keyframes must be \[B, P, gh, gw, D\]"):
            generate_semantics(model.semantic_dit, pos, torch.zeros_like(pos), given=bad, **kwargs)
    with pytest.raises(ValueError, match="resize the image to 64x64"):
        model.first_frame(np.zeros((32, 32, 3), np.uint8))


def test_lead_frames_stretch_the_drawn_video_over_the_length():
    """A keyframe at fraction f of the video takes the drawn frame at fraction f; only those in the lead share, and
    keyframe 0 always."""
    from planx_core.semanticgen.drawn import lead_frames

    short, long = list(range(0, 17, 4)), list(range(0, 65, 4))  # keyframe frames of 17 and 65 frames
    assert lead_frames(short, 17, 17, 0.0) == [0]
    assert lead_frames(short, 17, 17, 0.25) == [0, 4]
    assert lead_frames(short, 17, 17, 1.0) == short
    assert lead_frames(long, 65, 17, 0.25) == [0, 1, 2, 3, 4]
    assert lead_frames(long, 65, 17, 0.5) == list(range(9))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="share of the video from 0 to 1"):
            lead_frames(short, 17, 17, bad)


@pytest.mark.parametrize("sequential", [False, True])
def test_drawn_start_gives_stage_1_the_lead_keyframes(model, sequential):
    """`drawn_start`: frame 0's start, plus the drawn frames' semantics for the keyframes in the lead share; stage 1
    keeps all of them exactly and plans the rest."""
    from planx_core.semanticgen.drawn import drawn_start
    from planx_core.world.clips import clip_video

    clip = world.make_clip(5)
    model = model.with_spec(semantic_sequential=sequential)
    alone, lead = drawn_start(model, clip.frames, 17), drawn_start(model, clip.frames, 17, 0.5)
    first = model.first_frame(clip.frames[0])
    assert torch.equal(alone.semantics, first.semantics) and torch.equal(lead.latent, first.latent)
    video = clip_video([clip])[0]  # [3, T, H, W]
    assert lead.semantics.shape == (3, 4, 4, 8)
    assert torch.allclose(lead.semantics, model.encode_semantics(video)[:3], atol=1e-5), "keyframes 0, 1, 2"
    texts = ("a red circle", "the red circle moves right")
    z = model.plan_semantics(*texts, num_frames=17, seed=0, start=lead)  # [K, gh, gw, D]
    z_alone = model.plan_semantics(*texts, num_frames=17, seed=0, start=alone)
    assert z.shape == (5, 4, 4, 8) and torch.equal(z[:3], lead.semantics)
    assert not torch.equal(z[1:3], z_alone[1:3]), "without the lead stage 1 plans those keyframes itself"


@pytest.mark.parametrize("sequential", [False, True])
def test_a_drawn_sketch_starts_stage_1s_keyframes(model, sequential):
    """`drawn_start(..., sketch=LEVEL)`: every keyframe's drawn semantics ride along as the sketch (stretched as the
    lead is); stage 1 keeps the lead exactly and starts the keyframes it plans from the sketch noised to LEVEL, so
    a low level plans them near the sketch and level 1 (no sketch) as before; a level outside (0, 1] and a sketch
    of another shape are refused."""
    from planx_core.semanticgen.drawn import drawn_start
    from planx_core.world.clips import clip_video

    clip = world.make_clip(5)
    model = model.with_spec(semantic_sequential=sequential, semantic_steps=20)  # a schedule with low levels
    plain, low = drawn_start(model, clip.frames, 17, 0.25), drawn_start(model, clip.frames, 17, 0.25, 0.15)
    assert plain.sketch is None and plain.sketch_sigma == 1.0 and low.sketch_sigma == 0.15
    assert torch.equal(low.semantics, plain.semantics) and torch.equal(low.latent, plain.latent)
    own = model.encode_semantics(clip_video([clip])[0])  # [K, gh, gw, D]
    assert low.sketch.shape == (5, 4, 4, 8) and torch.allclose(low.sketch, own, atol=1e-5)
    texts = ("a red circle", "the red circle moves right")
    z = model.plan_semantics(*texts, num_frames=17, seed=0, start=low)  # [K, gh, gw, D]
    z_plain = model.plan_semantics(*texts, num_frames=17, seed=0, start=plain)
    assert torch.equal(z[:2], low.semantics) and torch.equal(z_plain[:2], plain.semantics)
    near, far = (z[2:] - own[2:]).abs().mean(), (z_plain[2:] - own[2:]).abs().mean()
    assert near < 0.5 * far, f"planned from the sketch {near:.3f} vs from noise {far:.3f}"
    for level in (0.0, 1.2):
        with pytest.raises(ValueError, match=r"sketch level .* in \(0, 1\]"):
            drawn_start(model, clip.frames, 17, 0.25, level)
    pos = torch.randn(1, 8, 64)  # [1, L, Dt]
    with pytest.raises(ValueError, match=r"a sketch of the keyframes must be \[B, K, gh, gw, D\]"):
        generate_semantics(model.semantic_dit, pos, pos, keyframes=3, grid=(4, 4), steps=2, sketch=own[None])


def test_semanticgen_command_starts_from_an_image(tmp_path, capsys):
    from planx_core.__main__ import main
    from planx_core.files.video import read_video, write_png
    from planx_core.pipelines.planx import load_plan_file

    clip = world.make_clip(4)
    image = write_png(clip.frames[0], tmp_path / "first.png")
    out = tmp_path / "i2v.mp4"
    args = ["semanticgen", "--prompt", f"{clip.scene}. {clip.motion}", "--frames", "17", "--scale", "1"]
    assert main([*args, "--image", str(image), "--out", str(out)]) == 0
    model = SemanticGen.load(need_semantic=False)
    start = model.first_frame(clip.frames[0])
    planned = model.plan_vectors(load_plan_file(tmp_path / "i2v.plan.json"))  # [K, gh, gw, D]
    assert torch.allclose(planned[:1], start.semantics, atol=1e-4), "keyframe 0 is the image's semantics"
    frames, _ = read_video(out)
    text_only = tmp_path / "t2v.mp4"
    assert main([*args, "--out", str(text_only)]) == 0
    first = np.abs(frames[0].astype(int) - clip.frames[0]).mean()
    assert first < np.abs(read_video(text_only)[0][0].astype(int) - clip.frames[0]).mean() and first < 12
    small = write_png(np.zeros((32, 32, 3), np.uint8), tmp_path / "small.png")
    assert main([*args, "--image", str(small), "--out", str(tmp_path / "x.mp4")]) == 2
    assert "resize the image to 64x64" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


def test_semanticgen_command_draws_its_first_frame_with_planx(tmp_path, capsys):
    """`--draw-first-frame`: the embedded Plan-X plans and renders the prompt, and the SemanticGen video starts from
    its frame 0 (the same seed). Refused, exit 2 and nothing written: with --image as well (before loading anything),
    a Plan-X bundle of another video size, a folder without a bundle."""
    from planx_core.__main__ import main
    from planx_core.files.video import read_video, write_png
    from planx_core.pipelines.planx import PlanXPipeline

    clip = world.make_clip(6)
    drawn = PlanXPipeline.from_folder().draw(clip.scene, clip.motion, seed=2, progress=False)[0]
    assert drawn.shape == (64, 64, 3) and drawn.dtype == np.uint8
    args = ["semanticgen", "--prompt", f"{clip.scene}. {clip.motion}", "--frames", "17", "--scale", "1"]
    args += ["--seed", "2"]
    assert main([*args, "--draw-first-frame", "--out", str(tmp_path / "drawn.mp4")]) == 0
    assert main([*args, "--out", str(tmp_path / "t2v.mp4")]) == 0
    first = read_video(tmp_path / "drawn.mp4")[0][0].astype(int)
    text_only = read_video(tmp_path / "t2v.mp4")[0][0].astype(int)
    assert np.abs(first - drawn).mean() < 12 and np.abs(first - drawn).mean() < np.abs(text_only - drawn).mean()
    image = write_png(clip.frames[0], tmp_path / "first.png")
    bad = [*args, "--draw-first-frame", "--image", str(image), "--out", str(tmp_path / "x.mp4")]
    assert main(bad) == 2
    assert "keep one of them" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    wide = tmp_path / "wide"
    wide.mkdir()
    spec = json.loads((EMBEDDED / "bundle.json").read_text())
    spec["video"] |= {"width": 128, "height": 128}
    (wide / "bundle.json").write_text(json.dumps(spec))
    for folder, message in (
        (wide, "draws 128x128 frames, but the SemanticGen model renders 64x64"),
        (tmp_path, "missing bundle.json"),
    ):
        assert main([*args, "--draw-first-frame", str(folder), "--out", str(tmp_path / "x.mp4")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


def test_semanticgen_command_takes_the_drawn_lead(tmp_path, capsys):
    """`--draw-first-frame --draw-lead 0.25`: the plan's keyframes 0 and 1 are the semantics of the drawn video's
    frames 0 and 4 (17 frames), the others planned. Refused, exit 2 and nothing written: --draw-lead without
    --draw-first-frame, with --no-plan, or outside 0..1."""
    from planx_core.__main__ import main
    from planx_core.pipelines.planx import PlanXPipeline, load_plan_file
    from planx_core.semanticgen.drawn import drawn_start

    clip = world.make_clip(7)
    args = ["semanticgen", "--prompt", f"{clip.scene}. {clip.motion}", "--frames", "17", "--scale", "1"]
    args += ["--seed", "1"]
    assert main([*args, "--draw-first-frame", "--draw-lead", "0.25", "--out", str(tmp_path / "lead.mp4")]) == 0
    model = SemanticGen.load(need_semantic=False)
    drawn = PlanXPipeline.from_folder().draw(clip.scene, clip.motion, seed=1, progress=False)  # [T, H, W, 3]
    start = drawn_start(model, drawn, 17, 0.25)
    planned = model.plan_vectors(load_plan_file(tmp_path / "lead.plan.json"))  # [K, gh, gw, D]
    assert start.semantics.shape[0] == 2 and torch.allclose(planned[:2], start.semantics, atol=1e-4)
    capsys.readouterr()
    out = ["--out", str(tmp_path / "x.mp4")]
    for extra, message in (([], "add --draw-first-frame"), (["--draw-first-frame", "--no-plan"], "does not run")):
        assert main([*args, *extra, "--draw-lead", "0.5", *out]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    with pytest.raises(SystemExit) as stop:
        main([*args, "--draw-first-frame", "--draw-lead", "1.5", *out])
    assert stop.value.code == 2 and "outside 0..1" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


def test_semanticgen_command_takes_the_drawn_sketch(tmp_path, capsys):
    """`--draw-first-frame --draw-lead 0.25 --draw-sketch 0.85`: the lead keyframes are the drawn video's as
    before, and the later ones are planned from its sketch (another plan than the lead alone's, same seed).
    Refused, exit 2 and nothing written: --draw-sketch without --draw-first-frame, with --no-plan, or outside
    0.01..1."""
    from planx_core.__main__ import main
    from planx_core.pipelines.planx import load_plan_file

    clip = world.make_clip(7)
    args = ["semanticgen", "--prompt", f"{clip.scene}. {clip.motion}", "--frames", "17", "--scale", "1"]
    args += ["--seed", "1", "--draw-first-frame", "--draw-lead", "0.25"]
    assert main([*args, "--out", str(tmp_path / "lead.mp4")]) == 0
    assert main([*args, "--draw-sketch", "0.85", "--out", str(tmp_path / "sketch.mp4")]) == 0
    model = SemanticGen.load(need_semantic=False)
    lead = model.plan_vectors(load_plan_file(tmp_path / "lead.plan.json"))  # [K, gh, gw, D]
    sketch = model.plan_vectors(load_plan_file(tmp_path / "sketch.plan.json"))
    assert torch.allclose(lead[:2], sketch[:2], atol=1e-5) and not torch.allclose(lead[2:], sketch[2:], atol=1e-3)
    capsys.readouterr()
    out, plain = ["--out", str(tmp_path / "x.mp4")], args[:9]  # without the drawn options
    for extra, message in (
        ([], "--draw-sketch takes keyframes from the video --draw-first-frame draws; add --draw-first-frame"),
        (["--draw-first-frame", "--no-plan"], "stage 1 does not run; drop --draw-sketch"),
    ):
        assert main([*plain, *extra, "--draw-sketch", "0.5", *out]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    for level in ("0", "1.5"):
        with pytest.raises(SystemExit) as stop:
            main([*args, "--draw-sketch", level, *out])
        assert stop.value.code == 2 and "outside 0.01..1" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_semanticgen_command_sets_stage_1_guidance(tmp_path, capsys):
    """`--semantic-text-scale`: stage 1 plans with that text guidance instead of the model's (another plan from the
    same seed; the model's own scale gives the default's plan); outside 0..20 refused, exit 2, nothing written."""
    from planx_core.__main__ import main
    from planx_core.pipelines.planx import load_plan_file

    clip = world.make_clip(8)
    args = ["semanticgen", "--prompt", f"{clip.scene}. {clip.motion}", "--frames", "9", "--scale", "1"]
    own = SemanticGen.load(need_semantic=False).spec.semantic_text_scale
    plans, scale = {}, "--semantic-text-scale"
    for name, extra in (("default", []), ("own", [scale, str(own)]), ("off", [scale, "1"])):
        assert main([*args, *extra, "--out", str(tmp_path / f"{name}.mp4")]) == 0
        plans[name] = load_plan_file(tmp_path / f"{name}.plan.json").to_dict()["keyframes"]
    assert plans["own"] == plans["default"] and plans["off"] != plans["default"]
    with pytest.raises(SystemExit) as stop:
        main([*args, "--semantic-text-scale", "25", "--out", str(tmp_path / "x.mp4")])
    assert stop.value.code == 2 and "outside 0..20" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()


def test_semanticgen_command_sets_stage_2_plan_guidance(tmp_path, capsys):
    """`--plan-scale`: stage 2 renders with that plan guidance instead of the model's (the same plan, another
    video; the model's own scale gives the default's video); outside 0..20 refused, exit 2, nothing written."""
    from planx_core.__main__ import main
    from planx_core.files.video import read_video
    from planx_core.pipelines.planx import load_plan_file

    clip = world.make_clip(8)
    args = ["semanticgen", "--prompt", f"{clip.scene}. {clip.motion}", "--frames", "9", "--scale", "1"]
    own = SemanticGen.load(need_semantic=False).spec.plan_scale
    videos, plans = {}, {}
    for name, extra in (("default", []), ("own", ["--plan-scale", str(own)]), ("strong", ["--plan-scale", "6"])):
        assert main([*args, *extra, "--out", str(tmp_path / f"{name}.mp4")]) == 0
        videos[name] = read_video(tmp_path / f"{name}.mp4")[0]
        plans[name] = load_plan_file(tmp_path / f"{name}.plan.json").to_dict()["keyframes"]
    assert plans["strong"] == plans["default"] and np.array_equal(videos["own"], videos["default"])
    assert not np.array_equal(videos["strong"], videos["default"])
    with pytest.raises(SystemExit) as stop:
        main([*args, "--plan-scale", "-1", "--out", str(tmp_path / "x.mp4")])
    assert stop.value.code == 2 and "outside 0..20" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
    assert main([*args, "--plan-scale", "6", "--no-plan", "--out", str(tmp_path / "x.mp4")]) != 0
    assert "drop one" in capsys.readouterr().err and not (tmp_path / "x.mp4").exists()
