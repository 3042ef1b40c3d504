"""Image-to-video inputs of the pipeline and `python -m planx_core.eval` on an untrained bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from planx_core import world
from planx_core.eval import ablations as planx_eval
from planx_core.pipelines.bundle import (
    BundleSpec,
    SamplingDefaults,
    load_bundle,
    save_bundle,
)
from planx_core.pipelines.planx import PlanXPipeline
from planx_core.world.tiny import random_bundle

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    spec = BundleSpec(dit=random_bundle().dit.config, name="eval-test", sampling=SamplingDefaults(steps=1))
    folder = save_bundle(random_bundle(seed=5, spec=spec), tmp_path_factory.mktemp("bundle") / "b")
    no_e2e = folder / "no_e2e"
    no_e2e.mkdir()
    for name in ("dit.safetensors", "branch.safetensors"):
        (no_e2e / name).write_bytes((folder / name).read_bytes())
    return folder


@pytest.fixture(scope="module")
def pipe(bundle_dir):
    return PlanXPipeline(load_bundle(bundle_dir))


def test_first_frame_locks_keyframe_zero_and_pins_the_latent(pipe):
    clip = world.make_clip(11)
    first = pipe.first_frame(clip.frames[0])
    plan = pipe.plan(clip.scene, clip.motion, first_frame=first, progress=False)
    assert plan.keyframes[0].tokens == first.codes.tolist() and plan.keyframes[0].locked
    assert not plan.keyframes[1].locked
    frames = pipe.render(plan, clip.scene, clip.motion, steps=1, first_frame=first, progress=False)
    alone = pipe.decode(first.latent)  # [1, 3, 1, H, W]: the causal VAE's frame 0 depends on latent frame 0 only
    expected = ((alone[0, :, 0].clamp(-1, 1) + 1) / 2 * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(frames[0].astype(int) - expected.astype(int)).max() <= 1
    free = pipe.render(plan, clip.scene, clip.motion, steps=1, progress=False)
    assert not np.array_equal(free[0], frames[0])


def test_first_frame_of_the_wrong_size_is_refused(pipe):
    with pytest.raises(ValueError, match="resize the image to 64x64"):
        pipe.first_frame(np.zeros((32, 48, 3), np.uint8))


def test_plan_accuracy_counts_keyframes_after_the_first(pipe):
    from planx_core.world.labels import clip_labels
    from planx_core.world.tiny import VIDEO

    clip = world.make_clip(25)  # the red circle stays still while the green square moves up, then moves left
    truth = planx_eval.Evaluator(pipe, None, "i2v", 0).inputs(clip).truth
    data = truth.to_dict()  # its codes made the cell labels (this bundle's TA-Tok is untrained)
    for keyframe, labels in zip(data["keyframes"], clip_labels(clip, VIDEO.keyframes, VIDEO.grid)):
        keyframe["tokens"] = labels.tolist()
    truth = type(truth).from_dict(data)
    same = {"plan_cells": 1.0, "plan_objects": 1.0, "plan_moves": 1.0, "plan_still": 1.0, "plan_exact": 1.0}
    assert planx_eval.plan_accuracy([truth], [truth], planx_eval.background_code([truth])) == same
    data, size = truth.to_dict(), truth.codebook.size
    data["keyframes"][1]["tokens"] = [(t + 1) % size for t in data["keyframes"][1]["tokens"]]
    wrong = type(truth).from_dict(data)
    scores = planx_eval.plan_accuracy([wrong], [truth], planx_eval.background_code([truth]))
    assert scores["plan_cells"] == pytest.approx(3 / 4)
    assert scores["plan_moves"] < 1, "keyframe 1 shifted every code: its objects' steps are not the truth's"
    assert scores["plan_still"] < 1, "the still circle's code is gone from keyframe 1"
    assert scores["plan_exact"] == 0.0, "one wrong step makes the clip's plan not exact"


def test_eval_command_writes_the_report(bundle_dir, tmp_path):
    out = tmp_path / "report"
    code = planx_eval.main(
        [
            "--bundle",
            str(bundle_dir),
            "--clips",
            "1",
            "--pairs",
            "1",
            "--steps",
            "1",
            "--figure-clips",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = (out / "report.md").read_text()
    for label in planx_eval.ROWS.values():
        assert f"| {label} |" in text
    assert "Semantic transfer" in text and "Planner plan accuracy" in text
    assert "Plans whose every object moves as the truth's" in text
    scores = json.loads((out / "scores.json").read_text())
    assert set(planx_eval.ROWS) <= set(scores["rows"]) and scores["rows"]["full"]["count"] == 1
    planner = scores["rows"]["planner"]  # one clip: its plan is exact or not, and the other share has no clips
    exact = planner["plan_exact"] == 1.0
    assert planner["full_when_exact" if exact else "full_otherwise"] == scores["rows"]["full"]["completeness"]
    assert planner["full_otherwise" if exact else "full_when_exact"] is None or math.isnan(
        planner["full_otherwise" if exact else "full_when_exact"]
    )
    assert (out / "figure.png").stat().st_size > 1000


def test_eval_skips_no_e2e_without_a_folder_and_refuses_unknown_rows(bundle_dir, tmp_path, capsys):
    assert planx_eval.main(["--bundle", str(bundle_dir), "--rows", "full,nonsense", "--out", str(tmp_path)]) == 2
    assert "nonsense" in capsys.readouterr().err
    code = planx_eval.main(
        [
            "--bundle",
            str(bundle_dir),
            "--no-e2e",
            str(tmp_path / "none"),
            "--rows",
            "no_e2e,text_only",
            "--clips",
            "1",
            "--pairs",
            "0",
            "--steps",
            "1",
            "--figure-clips",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0 and "skipping the no_e2e row" in capsys.readouterr().err
    assert "no_e2e" not in json.loads((tmp_path / "scores.json").read_text())["rows"]


def test_eval_prompts_writes_scores_videos_and_the_plan_diagnosis(bundle_dir, tmp_path):
    """eval-prompts on a bundle: a scored mp4 per held-out prompt and mode and per README seed, each clip's planned
    moves (four steps) and whether they are the stages' moves, their share per mode, and the README strip."""
    from planx_core.eval import prompts
    from planx_core.eval.prompt_set import HELDOUT

    out = tmp_path / "prompts"
    assert prompts.main(["--bundle", str(bundle_dir), "--seeds", "0", "--readme-seeds", "1", "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    clips = scores["clips"]
    assert len(clips) == 2 * len(HELDOUT) + 1 and all(Path(c["video"]).is_file() for c in clips)
    for clip in clips:
        motion = clip["prompt"].split(". ", 1)[1].rstrip(".")
        assert len(clip["plan"].split()) == 4
        assert clip["plan_follows"] == (clip["plan"].split() == prompts.wanted_moves(motion, 5, 2.0))
    assert set(scores["plans"]) == {"t2v", "i2v", "readme"}
    assert scores["plans"]["readme"] == float(clips[-1]["plan_follows"])
    assert "| planned moves | plan follows |" in (out / "report.md").read_text()
    assert (out / "readme_strip.png").is_file()


def test_eval_on_the_train_split_scores_unseen_clips_of_training_compositions(bundle_dir, tmp_path, monkeypatch):
    """`--split train` is the validation row: the world's train split, named so in the report."""
    from planx_core import world

    splits, dataset = [], world.dataset
    monkeypatch.setattr(world, "dataset", lambda split, *a, **k: splits.append(split) or dataset(split, *a, **k))
    out = tmp_path / "val"
    argv = ["--bundle", str(bundle_dir), "--rows", "gt_plan", "--clips", "2", "--pairs", "0", "--steps", "1"]
    assert planx_eval.main([*argv, "--figure-clips", "0", "--split", "train", "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert splits == ["train"] and scores["split"] == "train" and scores["rows"]["gt_plan"]["count"] == 2
    assert "2 validation clips" in (out / "report.md").read_text()
