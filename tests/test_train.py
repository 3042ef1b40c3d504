"""Training entry point of the tiny Plan-X: every stage on the engine (FSDP2 under torchrun), resume, the tie.

Covers: two training steps of each stage under `torchrun --nproc_per_node 2` with gloo on CPU
(exit 0, DCP checkpoint and export written, the ranks drew different clips, training changed the
parameters; the DiT stage's previews and fixed-noise evaluation loss); resuming 2 -> 4 steps
equals 4 straight steps (loss trace and weights); the tie
(planner word rows and `<I*>` rows unchanged by planner training, `<I*>` rows == the TA-Tok
codebook); the cell-label rule; refusing to resume with other settings; a fresh TA-Tok's codes
sitting on their words.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import skip_unless_ranks_can_train

from planx_core.files.safetensors import read_safetensors
from planx_core.planner.files import load_planner
from planx_core.tatok.files import load_tatok
from planx_core.training import main as train
from planx_core.training.checkpoint import read_tensors
from planx_core.world import tiny
from planx_core.world.labels import (
    BACKGROUND_CODE,
    COLOUR_CODES,
    WALL_CODE,
    cell_cover,
    labels_from_cover,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "--steps",
    "2",
    "--batch",
    "1",
    "--log-every",
    "1",
    "--eval-clips",
    "1",
    "--eval-decode",
    "0",
    "--lr",
    "1e-2",
    "--warmup",
    "1",
]


def events(out: Path, kind: str) -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == kind]


def torchrun(stage: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    skip_unless_ranks_can_train(stage)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "planx_core",
        "train",
        "--stage",
        stage,
        "--out",
        str(out),
        "--threads",
        "1",
        *FAST,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def check_ddp_run(result: subprocess.CompletedProcess, out: Path) -> None:
    """A 2-rank run: exit 0, a complete DCP checkpoint at step 2, different clips per rank, changed weights.
    (Under FSDP the ranks hold different shards of one model, so there is one parameter sha, of the full state.)"""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (out / "checkpoint" / ".metadata").is_file() and (out / "checkpoint" / "state.json").is_file()
    assert json.loads((out / "checkpoint" / "state.json").read_text())["step"] == 2
    start, end = events(out, "start")[0], events(out, "end")[0]
    assert start["world"] == 2
    seeds = start["rank_seeds"]
    assert len(seeds) == 2 and seeds[0] != seeds[1], "the two ranks must draw different clips"
    assert isinstance(end["param_sha"], str) and end["param_sha"] != start["param_sha"], "training changed nothing"
    assert [r["step"] for r in events(out, "step")] == [1, 2]


@pytest.fixture(scope="module")
def tatok_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tatok"
    check_ddp_run(torchrun("tatok", out), out)
    return out


@pytest.fixture(scope="module")
def planner_run(tmp_path_factory, tatok_run) -> Path:
    out = tmp_path_factory.mktemp("runs") / "planner"
    check_ddp_run(torchrun("planner", out, "--tatok", str(tatok_run), "--codes", "tatok"), out)
    return out


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "vae"
    check_ddp_run(torchrun("vae", out, "--vae-frames", "5", "--vae-crop", "16", "--stats-clips", "2"), out)
    return out


def test_vae_stage_under_torchrun(vae_run):
    from planx_core.wan.vae_files import load_vae

    vae = load_vae(vae_run / "vae.safetensors")
    assert vae.config.latents_mean is not None and len(vae.config.latents_std) == vae.config.z_dim
    assert "psnr" in events(vae_run, "end")[0]


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory, vae_run, tatok_run) -> Path:
    out = tmp_path_factory.mktemp("runs") / "dit"
    dit = ("--vae", str(vae_run), "--tatok", str(tatok_run), "--pool", "4", "--plan-dropout", "0.5")
    check_ddp_run(torchrun("dit", out, *dit, "--preview-every", "2", "--checkpointing"), out)
    return out


def test_dit_stage_under_torchrun(dit_run):
    from planx_core.semantic_branch import load_branch
    from planx_core.wan.dit_files import load_dit
    from planx_core.wan.text_encoder import load_text_encoder

    out = dit_run
    assert load_dit(out / "dit.safetensors").config.name == "planx-tiny"
    assert load_branch(out / "branch.safetensors").config.code_dim == 128
    assert load_text_encoder(out / "text_encoder").text_len == 64
    assert {"plan_accuracy", "text_accuracy"} <= set(events(out, "end")[0])
    loss = events(out, "eval_loss")[-1]
    assert loss["step"] == 2 and set(loss["sigma"]) == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    assert (out / "curves.png").is_file()
    assert {p.name for p in (out / "previews").iterdir()} >= {"step_000002_plan.png"}
    assert any(p.name.startswith("step_000002.") for p in (out / "previews").iterdir())


def test_e2e_stage_under_torchrun(tmp_path_factory, dit_run, vae_run, tatok_run, planner_run):
    out = tmp_path_factory.mktemp("runs") / "e2e"
    check_ddp_run(
        torchrun(
            "e2e",
            out,
            "--vae",
            str(vae_run),
            "--tatok",
            str(tatok_run),
            "--pool",
            "2",
            "--init-from",
            str(dit_run),
            "--planner",
            str(planner_run),
            "--planned-share",
            "1",
        ),
        out,
    )
    pool = read_safetensors(out / "pool.safetensors")
    assert pool["planned"].shape == pool["codes"].shape == (2, len(tiny.VIDEO.keyframes), tiny.VIDEO.grid**2)
    assert torch.equal(pool["planned"][:, 0], pool["codes"][:, 0]), "keyframe 0 must be the clip's own (locked)"
    start = read_safetensors(dit_run / "dit.safetensors")
    tuned = read_safetensors(out / "dit.safetensors")
    assert any(not torch.equal(start[k], tuned[k]) for k in start), "e2e did not start from --init-from and train"


def test_e2e_stage_needs_a_dit_run_and_a_planner(tmp_path, capsys, vae_run, tatok_run):
    args = ["--stage", "e2e", "--out", str(tmp_path / "e2e"), *FAST, "--vae", str(vae_run), "--tatok", str(tatok_run)]
    assert train.main(args) == 2
    assert "--init-from" in capsys.readouterr().err
    assert train.main([*args, "--init-from", str(tmp_path)]) == 2
    assert "--planner" in capsys.readouterr().err


def test_tatok_stage_under_torchrun(tatok_run):
    tatok = load_tatok(tatok_run / "ta_tok.safetensors")
    model, tokenizer, _ = tiny.build_planner(0)
    assert torch.equal(tatok.bottleneck.regularizer.embedding.weight, tiny.anchor_rows(model, tokenizer))
    proj = tatok.bottleneck.regularizer.embedding_proj.weight
    assert not torch.equal(proj, torch.eye(proj.shape[0])), "W was not trained"


def test_planner_stage_under_torchrun_keeps_the_tie(planner_run, tatok_run):
    planner = load_planner(planner_run / "planner")
    tatok = load_tatok(tatok_run / "ta_tok.safetensors")
    assert load_tatok(planner_run / "ta_tok.safetensors").digest() == tatok.digest(), "not exported with its TA-Tok"
    weight = planner.model.get_input_embeddings().weight  # [V, hidden]
    v = planner.vocab
    assert torch.equal(weight[v.image_start : v.image_end], tatok.codebook()), "<I*> rows left the codebook"
    assert torch.equal(weight[tiny.anchor_ids(planner.tokenizer)], tatok.bottleneck.regularizer.embedding.weight)
    fresh, _, _ = tiny.build_planner(0)
    assert not torch.equal(weight[v.im_start], fresh.get_input_embeddings().weight[v.im_start]), "trainable rows moved"


def test_self_feed_replaces_only_plan_codes_with_the_models_own_draws():
    """--self-feed: code inputs of the plan come from the model's draws (share 1: all of them), the prompt, the
    delimiters and the targets stay; share 0 trains on the truth as before."""
    from planx_core import world
    from planx_core.training.planner import PlannerObjective, PlannerStage, pad
    from planx_core.training.stages import StageContext

    args = train.parse_args(["--stage", "planner", "--out", "unused", "--steps", "1"])
    stage = PlannerStage(StageContext(args, "cpu"))
    clips = [world.make_clip(s) for s in (1, 2)]
    codes = stage.plan_codes(clips)  # [2, K, g*g]
    batch = pad([stage.sequence(c, codes[b], b == 1) for b, c in enumerate(clips)], stage.tokenizer.pad_token_id)
    v = stage.vocab
    objective = PlannerObjective(stage.model, [], range(v.image_start, v.image_end), 1.0)
    torch.manual_seed(0)
    fed = objective.fed_own_codes(**batch)
    target = batch["labels"][:, 1:]
    is_code = (target >= v.image_start) & (target < v.image_end)
    assert torch.equal(fed[:, 1:][~is_code], batch["input_ids"][:, 1:][~is_code]), "only plan codes are replaced"
    drawn = fed[:, 1:][is_code]
    assert ((drawn >= v.image_start) & (drawn < v.image_end)).all()
    assert not torch.equal(drawn, batch["input_ids"][:, 1:][is_code]), "a fresh model's draws differ from the truth"
    objective.self_feed = 0.0
    objective.train()
    loss = objective(**batch)
    logits = stage.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), ignore_index=-100)
    assert torch.allclose(loss, plain)


def test_a_deeper_planner_starts_from_a_shallower_ones_plans(tmp_path, capsys):
    """--planner-layers 6 --init-from a 4-layer planner: the source's layers are spread over the six, the two new
    ones are identities, so the deeper planner's logits are the source's; a deeper source is refused."""
    from planx_core.planner.files import save_planner
    from planx_core.planner.model import SemanticPlanner
    from planx_core.tatok.files import save_tatok
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext

    model, tokenizer, vocab, tatok = tiny.build_pair(3)
    with torch.no_grad():  # a source whose layers are not all alike (a fresh one has zero-mean noise only)
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.normal_(0, 0.05)
    save_planner(SemanticPlanner(model, tokenizer, vocab, "t"), tmp_path / "src" / "planner")
    save_tatok(tatok, tmp_path / "src" / "ta_tok.safetensors")
    common = ["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2", "--tatok", str(tmp_path / "src")]
    args = train.parse_args([*common, "--planner-layers", "6"])
    stage = PlannerStage(StageContext(args, "cpu"))
    stage.init_from(tmp_path / "src")
    assert len(stage.model.model.layers) == 6
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(list(tiny.ANCHOR_WORDS[:5])) + [vocab.image_start]])
    with torch.no_grad():
        torch.testing.assert_close(stage.model(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert stage.fingerprint()["planner_layers"] == 6
    shallow = train.parse_args([*common, "--planner-layers", "2"])
    with pytest.raises(train.StageError, match="--planner-layers 4"):
        PlannerStage(StageContext(shallow, "cpu")).init_from(tmp_path / "src")


def test_move_weight_asks_each_keyframes_moves_before_its_cells():
    """--move-weight: the targets are every object's move into keyframes 1.. (the truth's, via code_moves), read
    at the position just before each keyframe's first cell; the auxiliary loss trains its head and the planner,
    and the head is not exported (the runtime planner is unchanged)."""
    from planx_core import world
    from planx_core.planner.moves import MOVES, code_moves
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext
    from planx_core.world.labels import BACKGROUND_CODE

    args = train.parse_args(["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2"])
    args.move_weight = 1.0
    stage = PlannerStage(StageContext(args, "cpu"))
    batch, seeds = stage.batch(0)
    codes = stage.plan_codes([world.make_clip(s) for s in seeds])  # [B, K, g*g]
    v = stage.vocab
    for b in range(2):
        for k in range(codes.shape[1] - 1):
            at = int(batch["move_at"][b, k])
            assert int(batch["input_ids"][b, at]) in v.scales, "the scale token right before the cells"
            assert batch["labels"][b, at + 1] == v.image_start + codes[b, k + 1, 0]
        for code, steps in code_moves(codes[b], 9, BACKGROUND_CODE).items():
            assert [MOVES[i] for i in batch["moves"][b, :, code]] == steps
    loss = stage.module(**batch)
    loss.backward()
    assert stage.module.move_head.weight.grad.abs().sum() > 0
    assert stage.module.model.model.layers[0].mlp.down_proj.weight.grad.abs().sum() > 0
    assert stage.fingerprint()["move_weight"] == 1.0
    assert not any("move_head" in k for k in stage.model.state_dict()), "the head is not part of the planner"


def test_motion_weight_weighs_the_cells_that_change(tmp_path, capsys):
    """--motion-weight: the plan codes whose cell differs from the previous keyframe (keyframe 0: from an empty
    grid) get the weight, every other plan token 1, the prompt none; --still-weight: the object cells that stay get
    theirs; the loss is their weighted mean; the stage's batches carry the weights; both are refused below 1."""
    from planx_core import world
    from planx_core.training.planner import PlannerObjective, PlannerStage, motion_weights, pad
    from planx_core.training.stages import StageContext
    from planx_core.world.labels import BACKGROUND_CODE

    args = train.parse_args(
        ["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2", "--motion-weight", "5"]
    )
    stage = PlannerStage(StageContext(args, "cpu"))
    clips = [world.make_clip(s) for s in (3, 4)]
    codes = stage.plan_codes(clips)  # [2, K, g*g]
    batch = pad([stage.sequence(c, codes[b], b == 1) for b, c in enumerate(clips)], stage.tokenizer.pad_token_id)
    v = stage.vocab
    image = range(v.image_start, v.image_end)
    weights = motion_weights(batch["labels"], codes, image, 5.0)  # [2, S]
    is_code = (batch["labels"] >= v.image_start) & (batch["labels"] < v.image_end)
    assert torch.all(weights[~is_code] == 1.0)
    for b in range(2):
        kf = codes[b]  # [K, g*g]
        moved = torch.cat([kf[:1] != BACKGROUND_CODE, kf[1:] != kf[:-1]]).flatten()  # by hand
        assert moved.any() and not moved.all()
        assert torch.equal(weights[b][is_code[b]], torch.where(moved, 5.0, 1.0))
    still = motion_weights(batch["labels"], codes, image, 5.0, still=3.0)  # [2, S]: objects that stay weigh 3
    for b in range(2):
        kf = codes[b]  # [K, g*g]
        moved = torch.cat([kf[:1] != BACKGROUND_CODE, kf[1:] != kf[:-1]]).flatten()
        kept = torch.cat([torch.zeros_like(kf[:1], dtype=torch.bool), kf[1:] == kf[:-1]]).flatten()
        kept &= kf.flatten() != BACKGROUND_CODE
        assert kept.any(), "clip 3 or 4 keeps an object cell from one keyframe to the next"
        assert torch.equal(still[b][is_code[b]], torch.where(moved, 5.0, torch.where(kept, 3.0, 1.0)))
    assert torch.all(still[~is_code] == 1.0)
    assert "weights" in stage.batch(0)[0]
    objective = PlannerObjective(stage.model, [], image).train()
    loss = objective(**batch, weights=weights)
    logits = stage.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:].flatten()
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), target, ignore_index=-100, reduction="none")
    w = weights[:, 1:].flatten() * (target != -100)
    assert torch.allclose(loss, (ce * w).sum() / w.sum())
    assert not torch.allclose(loss, objective(**batch)), "the weights change the loss"
    out = ["--stage", "planner", "--out", str(tmp_path / "p"), "--steps", "1", "--motion-weight", "0.5"]
    assert train.main(out) == 2
    assert "--motion-weight" in capsys.readouterr().err
    out[-2:] = ["--still-weight", "0"]
    assert train.main(out) == 2
    assert "--still-weight" in capsys.readouterr().err


def test_order_pairs_put_both_orders_of_a_scene_in_one_batch(tmp_path, capsys):
    """--order-pairs 0.5 with batch 4: items 0-1 are one order pair (same scene, the stages swapped), items 2-3
    ordinary clips, deterministic by step; refused outside [0, 1]."""
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext

    argv = ["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "4", "--order-pairs", "0.5"]
    stage = PlannerStage(StageContext(train.parse_args(argv), "cpu"))
    seeds = [11, 12, 13, 14]
    clips = stage.training_clips(seeds)
    first, second = clips[0], clips[1]
    assert first.scene == second.scene and first.motion != second.motion
    assert sorted(first.motion.replace(",", "").split()) == sorted(second.motion.replace(",", "").split())
    assert [c.motion for c in stage.training_clips(seeds)] == [c.motion for c in clips]
    plain = PlannerStage(StageContext(train.parse_args(argv[:-2]), "cpu")).training_clips(seeds)
    assert [c.motion for c in clips[2:]] == [c.motion for c in plain[2:]]
    assert stage.fingerprint()["order_pairs"] == 0.5
    out = ["--stage", "planner", "--out", str(tmp_path / "p"), "--steps", "1", "--order-pairs", "2"]
    assert train.main(out) == 2
    assert "--order-pairs" in capsys.readouterr().err


def test_swap_pairs_follow_the_order_pairs_in_a_batch(tmp_path, capsys):
    """--order-pairs 0.5 --swap-pairs 0.25 with batch 8: items 0-3 two order pairs, items 4-5 a binding pair (one
    scene, the objects' actions swapped), items 6-7 the ordinary clips; in the fingerprint; refused outside [0, 1]."""
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext

    base = ["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "8", "--order-pairs", "0.5"]
    stage = PlannerStage(StageContext(train.parse_args([*base, "--swap-pairs", "0.25"]), "cpu"))
    seeds = list(range(21, 29))
    clips = stage.training_clips(seeds)
    plain = PlannerStage(StageContext(train.parse_args(base), "cpu")).training_clips(seeds)
    assert [c.motion for c in clips[:4]] == [c.motion for c in plain[:4]]
    assert [c.motion for c in clips[6:]] == [c.motion for c in plain[6:]]
    first, second = clips[4], clips[5]
    assert first.scene == second.scene and len(first.objects) == 2 and first.motion != second.motion
    names = [o.name for o in first.objects]
    assert second.motion == first.motion.replace(names[0], "@").replace(names[1], names[0]).replace("@", names[1])
    assert (
        stage.fingerprint()["swap_pairs"] == 0.25
        and "swap_pairs" not in PlannerStage(StageContext(train.parse_args(base), "cpu")).fingerprint()
    )
    out = ["--stage", "planner", "--out", str(tmp_path / "p"), "--steps", "1", "--swap-pairs", "-0.5"]
    assert train.main(out) == 2
    assert "--swap-pairs" in capsys.readouterr().err


def test_pair_contrast_reads_each_paired_text_with_its_partners_plan(tmp_path, capsys):
    """--pair-contrast: every paired item is read again with its partner's plan (extra rows after the batch), the
    plan loss ignores those rows, and the contrast is -log sigmoid of own minus rival plan log-probability, which a
    step on it alone widens; in the fingerprint; refused without pairs or below 0."""
    from planx_core.training.planner import PlannerStage
    from planx_core.training.planner_targets import IGNORE
    from planx_core.training.stages import StageContext

    base = ["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "8", "--order-pairs", "0.5"]
    argv = [*base, "--swap-pairs", "0.25", "--keyframe-cues", "24", "--pair-contrast", "1"]
    stage = PlannerStage(StageContext(train.parse_args(argv), "cpu"))
    inputs, _ = stage.batch(0)
    ids, labels, rivals = inputs["input_ids"], inputs["labels"], inputs["rivals"]  # [14, S], [14, S], [6]
    assert rivals.tolist() == list(range(6)) and len(ids) == 14
    for j, b in enumerate(rivals.tolist()):
        row = 8 + j
        plan, partner = labels[row][labels[row] != IGNORE], labels[b ^ 1][labels[b ^ 1] != IGNORE]
        assert torch.equal(plan, partner) and not torch.equal(plan, labels[b][labels[b] != IGNORE])
        start = int((labels[row] != IGNORE).nonzero()[0])  # the prompt and the first cue are the item's own
        assert torch.equal(ids[row, :start], ids[b, :start])
    module = stage.module.eval()
    with torch.no_grad():
        alone = module(ids[:8], inputs["attention_mask"][:8], labels[:8])
        both = module(**inputs)
        out = module.model(input_ids=ids, attention_mask=inputs["attention_mask"]).logits  # [14, S, V]
        contrast = module.contrast_loss(out, labels, rivals)
    assert torch.allclose(both, alone + contrast, atol=1e-5)
    logp = torch.log_softmax(out[:, :-1].float(), -1).gather(-1, labels[:, 1:].clamp_min(0)[..., None])[..., 0]
    plan = (logp * (labels[:, 1:] != IGNORE)).sum(-1)  # [14]
    assert torch.allclose(contrast, torch.nn.functional.softplus(plan[8:] - plan[:6]).mean(), atol=1e-5)
    optim = torch.optim.SGD(module.model.parameters(), lr=1e-3)
    module.contrast_loss(
        module.model(input_ids=ids, attention_mask=inputs["attention_mask"]).logits, labels, rivals
    ).backward()
    optim.step()
    with torch.no_grad():
        after = module.contrast_loss(
            module.model(input_ids=ids, attention_mask=inputs["attention_mask"]).logits, labels, rivals
        )
    assert after < contrast
    assert stage.fingerprint()["pair_contrast"] == 1
    assert "rivals" not in PlannerStage(StageContext(train.parse_args(base), "cpu")).batch(0)[0]
    for extra, flag in (
        (["--pair-contrast", "1"], "--swap-pairs"),
        (["--order-pairs", "0.5", "--pair-contrast", "-1"], "0 (off)"),
    ):
        out_dir = ["--stage", "planner", "--out", str(tmp_path / "p"), "--steps", "1", *extra]
        assert train.main(out_dir) == 2
        assert flag in capsys.readouterr().err


def run_in_process(stage: str, out: Path, steps: int) -> None:
    args = ["--stage", stage, "--out", str(out), *FAST, "--steps", str(steps), "--eval-clips", "0"]
    assert train.main(args) == 0


@pytest.mark.parametrize("stage", ["tatok", "planner"])
def test_resume_equals_a_straight_run(tmp_path, stage):
    run_in_process(stage, tmp_path / "split", 2)
    run_in_process(stage, tmp_path / "split", 4)
    run_in_process(stage, tmp_path / "straight", 4)
    trace = {
        name: [(r["step"], r["last_loss"]) for r in events(tmp_path / name, "step")] for name in ("split", "straight")
    }
    assert [s for s, _ in trace["split"]] == [1, 2, 3, 4]
    assert np.allclose([x for _, x in trace["split"]], [x for _, x in trace["straight"]], rtol=1e-6, atol=0)
    a, b = (read_tensors(tmp_path / name / "checkpoint", "model.") for name in ("split", "straight"))
    assert a and a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)


def test_a_run_killed_between_the_checkpoint_renames_resumes_from_the_newer_copy(tmp_path, monkeypatch):
    """Killed after `checkpoint` -> `checkpoint.old` and before `checkpoint.tmp` -> `checkpoint`: the run
    resumes from the newer copy, a save that dies while writing keeps it, and the next one completes."""
    import shutil

    from planx_core.training import checkpoint

    out, straight = tmp_path / "out", tmp_path / "straight"
    run_in_process("tatok", out, 2)
    shutil.copytree(out / "checkpoint", tmp_path / "step2")
    run_in_process("tatok", out, 3)
    (out / "checkpoint").rename(out / "checkpoint.tmp")
    (tmp_path / "step2").rename(out / "checkpoint.old")
    assert checkpoint.newest(out) == out / "checkpoint.tmp"

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.dcp, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        run_in_process("tatok", out, 4)
    assert checkpoint.read_state(checkpoint.newest(out))["step"] == 3, "the save that died took the good copy"
    monkeypatch.undo()
    run_in_process("tatok", out, 4)
    run_in_process("tatok", straight, 4)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint"]
    assert checkpoint.read_state(out / "checkpoint")["step"] == 4
    trace = [(r["step"], r["last_loss"]) for r in events(out, "step")]
    assert [s for s, _ in trace] == [1, 2, 3, 4, 4], "step 4 trained, its save died, then trained again from 3"
    assert np.isclose(trace[-1][1], events(straight, "step")[-1]["last_loss"], rtol=1e-6, atol=0)
    a, b = (read_tensors(folder / "checkpoint", "model.") for folder in (out, straight))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)


def test_a_checkpoint_of_the_earlier_format_resumes(tmp_path):
    """A run checkpointed by the earlier trainer (whole tensors in safetensors, frozen ones too) goes on."""
    from planx_core.files.safetensors import save_safetensors
    from planx_core.training.stages import StageContext, TATokStage

    new, legacy = tmp_path / "new", tmp_path / "legacy"
    run_in_process("tatok", new, 2)
    tensors = read_tensors(new / "checkpoint")
    stage = TATokStage(StageContext(train.parse_args(["--stage", "tatok", "--out", str(new), "--steps", "2"]), "cpu"))
    model = {**stage.state_tensors(), **{k[6:]: v for k, v in tensors.items() if k.startswith("model.")}}
    optim = {"::".join(k[6:].rsplit(".", 1)): v for k, v in tensors.items() if k.startswith("optim.")}
    (legacy / "checkpoint").mkdir(parents=True)
    save_safetensors(model, legacy / "checkpoint" / "model.safetensors")
    save_safetensors(optim, legacy / "checkpoint" / "optim.safetensors")
    state = json.loads((new / "checkpoint" / "state.json").read_text())
    (legacy / "checkpoint" / "state.json").write_text(json.dumps({"step": 2, "fingerprint": state["fingerprint"]}))
    run_in_process("tatok", legacy, 4)
    run_in_process("tatok", new, 4)
    a, b = ({r["step"]: r["last_loss"] for r in events(out, "step")} for out in (legacy, new))
    assert sorted(a) == [3, 4] and np.allclose([a[3], a[4]], [b[3], b[4]], rtol=1e-6, atol=0)
    assert (legacy / "checkpoint" / ".metadata").is_file(), "the next checkpoint is written in the new format"


def test_ema_resumes_like_a_straight_run_and_is_what_gets_exported(tmp_path):
    for name, steps in (("split", 2), ("split", 4), ("straight", 4)):
        assert (
            train.main(
                [
                    "--stage",
                    "tatok",
                    "--out",
                    str(tmp_path / name),
                    *FAST,
                    "--steps",
                    str(steps),
                    "--eval-clips",
                    "0",
                    "--ema",
                    "0.5",
                ]
            )
            == 0
        )
    a, b = (read_tensors(tmp_path / name / "checkpoint") for name in ("split", "straight"))
    assert any(k.startswith("ema.") for k in a)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-7) for k in a)
    exported = load_tatok(tmp_path / "straight" / "ta_tok.safetensors").state_dict()
    averaged = {k[len("ema.tatok.") :]: v for k, v in a.items() if k.startswith("ema.tatok.")}
    assert averaged and all(torch.equal(exported[k], v) for k, v in averaged.items())
    assert any(not torch.equal(a[f"model.tatok.{k}"], v) for k, v in averaged.items()), "export must be the average"


def test_cooldown_decays_the_rate_over_the_last_steps(tmp_path):
    assert (
        train.main(
            [
                "--stage",
                "tatok",
                "--out",
                str(tmp_path),
                *FAST,
                "--steps",
                "4",
                "--eval-clips",
                "0",
                "--cooldown",
                "3",
                "--min-lr-ratio",
                "0.1",
            ]
        )
        == 0
    )
    lrs = [r["lr"] for r in events(tmp_path, "step")]
    assert np.allclose(lrs, [1e-2, 7e-3, 4e-3, 1e-3]), lrs  # steps 0..3; steps 1..3 decay towards 0.1 x lr


def test_resume_refuses_other_settings(tmp_path, capsys):
    run_in_process("planner", tmp_path, 1)
    code = train.main(["--stage", "planner", "--out", str(tmp_path), *FAST, "--seed", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "seed: checkpoint 0 vs now 1" in err and "--out" in err


def test_cell_labels_rule():
    ids = np.full((1, 18, 18), -1, dtype=np.int8)  # [K, H, W]: with grid 9 each cell is 2x2 pixels
    ids[0, 0:2, 0:2] = 0  # cell (0, 0): object 0 covers all of it
    ids[0, 0:1, 2:3] = 1  # cell (0, 1): object 1 covers 1 of 4 pixels = 25 %
    ids[0, 2:3, 0:1] = 1  # cell (1, 0): 25 % object 1 ...
    ids[0, 2:4, 1:2] = 0  # ... and 50 % object 0: the largest wins
    ids[0, :, 16:18] = -2  # column 8: the wall
    cover = cell_cover(ids, 2, grid=9)  # [1, 3, 9, 9]
    labels = labels_from_cover(cover, ("red", "blue")).reshape(9, 9)
    assert labels[0, 0] == COLOUR_CODES["red"] and labels[0, 1] == COLOUR_CODES["blue"]
    assert labels[1, 0] == COLOUR_CODES["red"] and labels[0, 8] == WALL_CODE and labels[5, 5] == BACKGROUND_CODE
    assert labels_from_cover(cover, ("red", "blue"), threshold=0.3).reshape(9, 9)[0, 1] == BACKGROUND_CODE


def test_fresh_codebook_sits_on_the_words():
    model, tokenizer, vocab, tatok = tiny.build_pair(0)
    check = tiny.code_word_check(tatok.codebook(), tiny.anchor_rows(model, tokenizer), range(tiny.NUM_CODES))
    assert all(r["nearest"] == r["word"] and r["cos"] > 0.9999 for r in check)
    rows = model.get_input_embeddings().weight[vocab.image_start : vocab.image_end]
    assert torch.equal(rows, tatok.codebook())


def test_a_stop_request_ends_the_step_with_a_checkpoint(tmp_path):
    args = train.parse_args(["--stage", "planner", "--out", str(tmp_path), *FAST, "--steps", "5", "--eval-clips", "0"])
    trainer = train.Trainer(args, train.setup(args))
    trainer.request_stop(2, None)  # what SIGINT does
    trainer.run()
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 1
    end = events(tmp_path, "end")[0]
    assert end["stopped"] is True and end["step"] == 1


def test_assemble_makes_a_bundle_of_the_runs(tmp_path, planner_run, vae_run, dit_run, capsys):
    import shutil

    from planx_core.pipelines.bundle import load_bundle
    from planx_core.pipelines.planx import PlanXPipeline
    from planx_core.training.assemble import main as assemble_main

    out = tmp_path / "bundle"
    args = [
        "--planner",
        str(planner_run),
        "--vae",
        str(vae_run),
        "--dit",
        str(dit_run),
        "--no-e2e",
        str(dit_run),
        "--out",
        str(out),
        "--steps",
        "1",
    ]
    assert assemble_main(args) == 0
    assert (out / "no_e2e" / "dit.safetensors").is_file()
    pipe = PlanXPipeline(load_bundle(out))
    assert pipe.spec.sampling.steps == 1 and pipe.spec.planning.candidates == 1
    clip = pipe.generate("a red circle", "the red circle moves right", progress=False)
    assert clip.frames.shape == (tiny.VIDEO.num_frames, 64, 64, 3)
    other = tmp_path / "other_dit"
    shutil.copytree(dit_run, other)
    state = json.loads((other / "checkpoint" / "state.json").read_text())
    state["fingerprint"]["tatok"] = "0" * 64
    (other / "checkpoint" / "state.json").write_text(json.dumps(state))
    assert assemble_main([*args[:4], "--dit", str(other), "--out", str(tmp_path / "refused")]) == 2
    assert assemble_main([*args, "--candidates", "0"]) == 2  # refused before anything is written
    assert "candidates must be a whole number" in capsys.readouterr().err


def test_vae_decoder_only_keeps_the_encoder(tmp_path, vae_run):
    from planx_core.wan.vae_files import load_vae

    out = tmp_path / "dec"
    args = [
        "--stage",
        "vae",
        "--out",
        str(out),
        *FAST,
        "--eval-clips",
        "0",
        "--vae-frames",
        "5",
        "--vae-crop",
        "16",
        "--stats-clips",
        "2",
        "--vae-decoder-only",
        "--init-from",
        str(vae_run),
    ]
    assert train.main(args) == 0
    before, after = load_vae(vae_run / "vae.safetensors"), load_vae(out / "vae.safetensors")
    a, b = before.state_dict(), after.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder.", "conv1.")))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert np.allclose(after.config.latents_mean, before.config.latents_mean, rtol=1e-5)
    assert train.main([a for a in args if a not in ("--init-from", str(vae_run))]) == 2


def test_model_card_lists_the_runs_commands_and_time(dit_run, tmp_path):
    from planx_core.training.assemble import model_card, run_history

    history = run_history(dit_run)
    assert history["steps"] == 2 and history["seconds"] > 0
    card = model_card({"dit": dit_run}, "# Card", "# Plan-X evaluation: x\n| row |")
    assert card.startswith("# Card") and "python -m planx_core train --stage dit" in card
    assert "--nproc_per_node" not in card and "from step 0 on cpu x2" in card
    assert "### Plan-X evaluation: x" in card and '"plan_accuracy"' in card


def test_keyframe_cues_are_fed_the_same_way_in_training_and_in_planning(tmp_path):
    """--keyframe-cues: each keyframe's stage is in the training sequence right before its image block, given
    (IGNORE labels); the exported config.json says so; a planner loaded from it feeds exactly the training
    sequence when it plans the same clip (the ids its model first sees, with keyframes 0..K-2 locked to the
    clip's codes, up to the last keyframe's first cell), and without the flag neither feeds a cue."""
    from planx_core import world
    from planx_core.planner.files import load_planner
    from planx_core.planner.model import SemanticPlanner
    from planx_core.planner.prompt import keyframe_cues
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext, StageError

    args = train.parse_args(["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2"])
    args.keyframe_cues = 24
    stage = PlannerStage(StageContext(args, "cpu"))
    clip = next(c for c in map(world.make_clip, range(50)) if len(set(keyframe_cues(c.motion, 5, 2.0))) > 2)
    codes = stage.plan_codes([clip])[0]  # [K, g*g]
    ids, labels = stage.sequence(clip, codes, False)
    text = " ".join(stage.tokenizer.convert_ids_to_tokens(ids))
    for cue in {c for c in keyframe_cues(clip.motion, 5, 2.0) if c}:
        assert " ".join(stage.tokenizer.tokenize(cue + ".")) in text.split("assistant", 1)[-1].lower()
    v = stage.vocab
    assert all(label == -100 for i, label in zip(ids, labels) if not v.im_start <= i < v.image_end)
    assert stage.fingerprint()["keyframe_cues"] == 24
    starts = [i for i, t in enumerate(ids) if t == v.im_start][-5:]  # the plan's five image blocks
    assert {b - a for a, b in zip(starts, starts[1:])} == {81 + 3 + 24}, "every keyframe as far from the last"
    stage.export(tmp_path)

    planner = load_planner(tmp_path / "planner")
    assert planner.cue_length == 24
    for bad in (-1, "24", 2.5):
        with pytest.raises(ValueError, match="keyframe_cues"):
            SemanticPlanner(planner.model.__class__(planner.model.config.__class__(**{
                **planner.model.config.to_dict(), "keyframe_cues": bad})), planner.tokenizer)  # fmt: skip
    args.keyframe_cues = -1
    with pytest.raises(StageError, match="--keyframe-cues"):
        PlannerStage.check_args(args, 1)
    args.keyframe_cues = 24
    cued = _first_feed(planner, clip, codes)
    assert cued == ids[: len(cued)] and ids[len(cued)] == v.image_start + codes[-1, 0]
    planner.model.config.keyframe_cues, planner.cue_length, args.keyframe_cues = 0, 0, 0
    plain, plain_ids = _first_feed(planner, clip, codes), stage.sequence(clip, codes, False)[0]
    assert plain == plain_ids[: len(plain)] and len(plain) < len(cued)


def _first_feed(planner, clip, codes) -> list[int]:
    """The ids a planner's model is first fed when it plans `clip` with keyframes 0..K-2 locked to `codes`."""
    from planx_core.world import tiny

    seen, forward = [], planner.head.forward

    def record(ids, cache, *words):
        seen.append(ids[0].tolist())
        return forward(ids, cache, *words)

    planner.head.forward = record
    locked = {k: codes[k].tolist() for k in range(codes.shape[0] - 1)}
    vid = tiny.VIDEO
    planner.generate(
        clip.scene, clip.motion, num_keyframes=codes.shape[0], fps=vid.fps, keyframe_rate=vid.keyframe_rate,
        grid=(9, 9), duration=vid.duration, locked=locked, temperature=0,
    )  # fmt: skip
    return seen[0]


def _exported_feeds_the_sequence(stage, clip, codes, ids, folder):
    """The stage's export, loaded: its model is first fed the training sequence `ids` up to the last keyframe."""
    from planx_core.planner.files import load_planner

    stage.export(folder)
    planner = load_planner(folder / "planner")
    fed = _first_feed(planner, clip, codes)
    assert fed == ids[: len(fed)] and ids[len(fed)] == stage.vocab.image_start + codes[-1, 0]
    return planner


def test_a_cues_only_planner_reads_the_motion_only_in_its_cues(tmp_path):
    """--cues-only: the training sequence has no Motion line but every cue; the exported config.json says
    motion_in_prompt false; the loaded planner feeds exactly that sequence; the flag without cues, and a
    config that is cues-only without cues, are refused naming the fix."""
    from planx_core import world
    from planx_core.planner.model import SemanticPlanner
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext, StageError

    args = train.parse_args(["--stage", "planner", "--out", "unused", "--steps", "1", "--batch", "2", "--cues-only"])
    with pytest.raises(StageError, match="--keyframe-cues 24"):
        PlannerStage.check_args(args, 1)
    args.keyframe_cues = 24
    stage = PlannerStage(StageContext(args, "cpu"))
    clip = world.make_clip(3)
    codes = stage.plan_codes([clip])[0]  # [K, g*g]
    ids = stage.sequence(clip, codes, False)[0]
    words = stage.tokenizer.convert_ids_to_tokens(ids)
    prompt = words[: ids.index(stage.vocab.im_start)]  # up to the first keyframe's cue and block
    assert "moves" in clip.motion.split() and "moves" not in prompt and "moves" in words  # motion: cues only
    assert "square" in prompt  # the scene line stays
    assert stage.fingerprint()["cues_only"] is True
    planner = _exported_feeds_the_sequence(stage, clip, codes, ids, tmp_path)
    assert planner.motion_line is False and planner.model.config.motion_in_prompt is False
    config = {**planner.model.config.to_dict(), "keyframe_cues": 0}
    with pytest.raises(ValueError, match="motion_in_prompt"):
        SemanticPlanner(planner.model.__class__(planner.model.config.__class__(**config)), planner.tokenizer)


def test_a_first_cue_motion_planner_reads_the_whole_motion_before_keyframe_0(tmp_path):
    """--first-cue-motion: keyframe 0's cue is the whole motion text (the later cues keep their stages), so a
    text-to-video start is drawn knowing where the object will go; the exported config.json says
    first_cue_motion true and the loaded planner feeds exactly the training sequence; without the flag keyframe
    0's cue is empty; the flag without cues, and such a config without cues, are refused naming the fix."""
    from planx_core import world
    from planx_core.planner.model import SemanticPlanner
    from planx_core.planner.prompt import keyframe_cues
    from planx_core.training.planner import PlannerStage
    from planx_core.training.stages import StageContext, StageError

    args = train.parse_args(["--stage", "planner", "--out", "unused", "--steps", "1", "--first-cue-motion"])
    with pytest.raises(StageError, match="--first-cue-motion .*--keyframe-cues 24"):
        PlannerStage.check_args(args, 1)
    args.batch, args.cues_only = 2, True
    clip = next(c for c in map(world.make_clip, range(50)) if len(set(keyframe_cues(c.motion, 5, 2.0))) > 2)
    cues = keyframe_cues(clip.motion, 5, 2.0, first_motion=True)
    assert cues[0] == clip.motion.rstrip(".") and cues[1:] == keyframe_cues(clip.motion, 5, 2.0)[1:]
    args.keyframe_cues = 24
    stage = PlannerStage(StageContext(args, "cpu"))
    codes = stage.plan_codes([clip])[0]  # [K, g*g]
    ids = stage.sequence(clip, codes, False)[0]
    first = ids.index(stage.vocab.im_start)  # keyframe 0's block; its cue the 24 ids before it
    words = [i for i in ids[first - 24 : first] if i != stage.tokenizer.pad_token_id]
    assert words == stage.tokenizer(cues[0] + ".", add_special_tokens=False)["input_ids"], "the whole motion"
    assert stage.fingerprint()["first_cue_motion"] is True
    planner = _exported_feeds_the_sequence(stage, clip, codes, ids, tmp_path)
    assert planner.first_motion is True and planner.model.config.first_cue_motion is True
    args.first_cue_motion = False
    plain = stage.sequence(clip, codes, False)[0]
    assert set(plain[first - 24 : first]) == {stage.tokenizer.pad_token_id}, "keyframe 0's cue stays empty"
    for bad in ({"keyframe_cues": 0}, {"first_cue_motion": "yes"}):
        config = {**planner.model.config.to_dict(), "motion_in_prompt": True, **bad}
        with pytest.raises(ValueError, match="first_cue_motion"):
            SemanticPlanner(planner.model.__class__(planner.model.config.__class__(**config)), planner.tokenizer)
