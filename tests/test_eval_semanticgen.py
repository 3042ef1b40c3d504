"""`python -m planx_core eval-semanticgen`: SemanticGen's world scores on held-out 17-frame clips, per row."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from planx_core.eval import adherence


def test_rows_are_scored_from_the_frames_they_render(monkeypatch):
    """Each row's scores are `world.score` of the frames that row rendered for those clips: a row that returns
    the clips' own frames scores 1, one that returns black frames 0; every row renders clip i with seed i."""
    clips = adherence.heldout_clips(3)
    assert all(c.split == "heldout" and c.config.num_frames == 17 for c in clips)
    assert [c.seed for c in clips] == [c.seed for c in adherence.heldout_clips(3)], "deterministic"
    seeds = []

    def render(model, row, clip, seed, candidates):
        seeds.append((row, seed, candidates))
        return clip.frames if row == "gt_semantics" else np.zeros_like(clip.frames)

    monkeypatch.setattr(adherence, "render_row", render)
    results = adherence.evaluate(None, clips, ["gt_semantics", "semanticgen"], log=lambda _: None)
    assert results["gt_semantics"]["accuracy"] == 1.0 and results["gt_semantics"]["completeness"] == 1.0
    assert results["semanticgen"]["accuracy"] == 0.0 and results["semanticgen"]["count"] == 3
    assert seeds == [(r, i, 1) for r in ("gt_semantics", "semanticgen") for i in range(3)]


def test_train_split_scores_unseen_clips_of_the_training_compositions(tmp_path, monkeypatch):
    """`--split train` (for choosing settings) draws the same stream's clips from the training compositions."""
    train, held = adherence.heldout_clips(4, split="train"), adherence.heldout_clips(4)
    assert all(c.split == "train" for c in train) and [c.seed for c in train] == [c.seed for c in held]
    assert [c.scene + c.motion for c in train] != [c.scene + c.motion for c in held]
    scored = []
    monkeypatch.setattr(
        adherence,
        "evaluate",
        lambda model, clips, rows, candidates: (
            scored.extend(clips)
            or {"gt_semantics": {"accuracy": 1.0, "completeness": 1.0, "fidelity": 1.0, "consistency": 1.0, "count": 1}}
        ),
    )
    assert adherence.main(["--clips", "1", "--rows", "gt_semantics", "--split", "train", "--out", str(tmp_path)]) == 0
    assert scored[0].split == "train" and "unseen training-composition" in (tmp_path / "adherence.md").read_text()


def test_command_writes_the_table_of_the_embedded_model(tmp_path, capsys):
    out = tmp_path / "report"
    # scales other than the folder's (3 and 2), so the report shows the options took effect
    argv = ["--clips", "1", "--rows", "gt_semantics", "--text-scale", "4", "--plan-scale", "1.5", "--out", str(out)]
    assert adherence.main(argv) == 0
    scores = json.loads((out / "adherence.json").read_text())
    assert list(scores) == ["gt_semantics"] and scores["gt_semantics"]["count"] == 1
    assert 0 <= scores["gt_semantics"]["accuracy"] <= 1
    text = (out / "adherence.md").read_text()
    assert "| gt_semantics |" in text and "stage-2 text guidance 4.0, stage-2 plan guidance 1.5" in text


def test_image_to_video_row_gives_stage_1_the_clips_first_frame(tmp_path, monkeypatch):
    """`semanticgen_i2v` renders both stages from the text and the clip's first frame (`SemanticGen.first_frame`),
    `gt_semantics_i2v` stage 2 from the clip's semantics and its first frame."""
    from planx_core.semanticgen.model import SemanticGen

    seen = []
    first_frame = SemanticGen.first_frame
    monkeypatch.setattr(SemanticGen, "first_frame", lambda self, image: seen.append(image) or first_frame(self, image))
    out = tmp_path / "report"
    rows = ["semanticgen_i2v", "gt_semantics_i2v"]
    assert adherence.main(["--clips", "1", "--rows", ",".join(rows), "--out", str(out)]) == 0
    first = adherence.heldout_clips(1)[0].frames[0]
    assert len(seen) == 2 and all(np.array_equal(image, first) for image in seen)
    scores = json.loads((out / "adherence.json").read_text())
    assert list(scores) == rows and all(scores[row]["count"] == 1 for row in rows)


@pytest.mark.parametrize(("args", "named"), [(["--rows", "full"], "--rows"), (["--clips", "0"], "--clips")])
def test_command_refuses_unknown_rows_and_no_clips(tmp_path, capsys, args, named):
    with pytest.raises(SystemExit) as exit_info:
        adherence.main([*args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert named in capsys.readouterr().err
    assert not list(tmp_path.iterdir()), "nothing written"


def test_planx_first_row_starts_from_the_frame_planx_draws():
    """`semanticgen_planx_first` starts from the embedded Plan-X's frame 0 for the clip's texts (seed i): its start is
    that frame's semantics and latent, and the video's first frame comes out near it; other text rows start from
    nothing."""
    from planx_core.eval import drift
    from planx_core.semanticgen.model import SemanticGen

    model = SemanticGen.load()
    clip = adherence.heldout_clips(1)[0]
    drawn = drift.embedded_planx().draw(clip.scene, clip.motion, seed=3, progress=False)[0]
    start, expected = drift.row_start(model, "semanticgen_planx_first", clip, seed=3), model.first_frame(drawn)
    assert torch.equal(start.semantics, expected.semantics) and torch.equal(start.latent, expected.latent)
    assert drift.row_start(model, "semanticgen", clip, seed=3) is None
    frames = drift.render_row(model, "semanticgen_planx_first", clip, seed=3)  # [T, H, W, 3]
    assert np.abs(frames[0].astype(int) - drawn).mean() < 12


def test_planx_lead_row_takes_the_drawn_videos_first_quarter():
    """`semanticgen_planx_lead` starts from the embedded Plan-X's video for the clip's texts (seed i): frame 0 and
    the keyframes of the first quarter (`semanticgen --draw-lead 0.25`): two of a 17-frame clip's five;
    `semanticgen_planx_sketch` the same, and every drawn keyframe as stage 1's sketch at 0.85."""
    from planx_core.eval import drift
    from planx_core.semanticgen.drawn import drawn_start
    from planx_core.semanticgen.model import SemanticGen

    model = SemanticGen.load()
    clip = adherence.heldout_clips(1)[0]
    video = drift.embedded_planx().draw(clip.scene, clip.motion, seed=3, progress=False)  # [T, H, W, 3]
    start = drift.row_start(model, "semanticgen_planx_lead", clip, seed=3)
    expected = drawn_start(model, video, 17, 0.25)
    assert start.semantics.shape[0] == 2 and torch.equal(start.semantics, expected.semantics)
    assert torch.equal(start.latent, expected.latent) and start.sketch is None
    sketched = drift.row_start(model, "semanticgen_planx_sketch", clip, seed=3)  # `--draw-sketch 0.85` as well
    assert torch.equal(sketched.semantics, expected.semantics) and sketched.sketch_sigma == 0.85
    assert torch.equal(sketched.sketch, drawn_start(model, video, 17, 0.25, 0.85).sketch)
    assert sketched.sketch.shape[0] == 5, "every keyframe of the drawn video"
