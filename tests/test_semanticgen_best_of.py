"""The best of several SemanticGen videos by their own plan (`semanticgen.candidates`, `semanticgen --best-of`,
`eval-semanticgen --best-of`): which one is kept, that one video is the plain one, and the refusals."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from planx_core import world
from planx_core.semanticgen.candidates import best_of, candidate_seeds, keep_nearest, plan_distance
from planx_core.semanticgen.model import SemanticGen


@pytest.fixture(scope="module")
def model() -> SemanticGen:
    return SemanticGen.load(need_semantic=True)


def test_candidate_seeds_start_at_the_seed_and_are_bounded():
    assert candidate_seeds(5, 1) == [5] and candidate_seeds(5, 3) == [5, 1005, 2005]
    for bad in (0, 65, True):
        with pytest.raises(ValueError, match="limit 'best_of'"):
            candidate_seeds(0, bad)


def test_keep_nearest_keeps_the_render_nearest_its_plan_the_first_on_a_tie():
    """A fake model whose semantics are a video's mean in [-1, 1]: plans at 0 keep the grey render; of two equally
    near renders the first is kept; `log` hears every candidate."""
    fake = SimpleNamespace(encode_semantics=lambda video: video.mean().reshape(1, 1, 1, 1))  # [K, gh, gw, D]
    grey = {0: 255, 1: 0, 2: 200, 3: 130}  # seed -> pixel value: 1.0, -1.0, 0.57, 0.02 in [-1, 1]
    z = torch.zeros(1, 1, 1, 1)
    logged = []

    def render(seed):
        return np.full((3, 4, 4, 3), grey[seed], np.uint8), z, f"video {seed}"

    kept, distances = keep_nearest(fake, [0, 1, 2, 3], render, lambda j, s, d: logged.append((j, s)))
    assert kept == "video 3" and distances[:2] == [1.0, 1.0] and distances[3] < distances[2] < 1
    assert logged == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert keep_nearest(fake, [1, 0], render)[0] == "video 1"  # a tie: the first
    with pytest.raises(ValueError, match="do not match its plan"):
        plan_distance(fake, np.zeros((3, 4, 4, 3), np.uint8), torch.zeros(2, 1, 1, 1))


def test_best_of_is_one_of_the_plain_videos(model):
    """One candidate is the plain video (no distances); of two, the kept one is the plain video of its seed, and
    it is the nearer its plan; without a plan more than one is refused."""
    clip = world.make_clip(3)
    args = (clip.scene, clip.motion)
    plain = {s: model.generate(*args, num_frames=9, seed=s) for s in (2, 1002)}  # frames [9, H, W, 3], z
    frames, z, seed, distances = best_of(model, *args, num_frames=9, seed=2)
    assert seed == 2 and distances == [] and np.array_equal(frames, plain[2][0]) and torch.equal(z, plain[2][1])
    frames, z, seed, distances = best_of(model, *args, num_frames=9, seed=2, count=2)
    assert np.array_equal(frames, plain[seed][0]) and torch.equal(z, plain[seed][1])
    expected = [plan_distance(model, *plain[s]) for s in (2, 1002)]
    assert distances == pytest.approx(expected) and seed == (2, 1002)[int(np.argmin(expected))]
    with pytest.raises(ValueError, match="ask for 1"):
        best_of(model, *args, num_frames=9, count=2, use_semantics=False)


def test_semanticgen_command_writes_the_kept_video_and_its_plan(tmp_path, capsys):
    """`--best-of 2` logs each video's distance and writes the plan of the nearer one, which is that seed's plain
    plan; with --no-plan, or 0 videos, refused (exit 2, nothing written)."""
    from planx_core.__main__ import main
    from planx_core.pipelines.planx import load_plan_file

    clip = world.make_clip(4)
    args = ["semanticgen", "--prompt", f"{clip.scene}. {clip.motion}", "--frames", "9", "--scale", "1"]
    assert main([*args, "--best-of", "2", "--seed", "1", "--out", str(tmp_path / "best.mp4")]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("video ")]
    assert [x.split(":")[0] for x in lines] == ["video 1/2 (seed 1)", "video 2/2 (seed 1001)"]
    kept = (1, 1001)[int(np.argmin([float(x.split(": ")[1].split()[0]) for x in lines]))]
    assert main([*args, "--seed", str(kept), "--out", str(tmp_path / "plain.mp4")]) == 0
    best, plain = (load_plan_file(tmp_path / f"{n}.plan.json").to_dict() for n in ("best", "plain"))
    assert best == plain
    capsys.readouterr()
    out = ["--out", str(tmp_path / "x.mp4")]
    assert main([*args, "--best-of", "2", "--no-plan", *out]) == 2
    assert "drop --best-of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([*args, "--best-of", "0", *out])
    assert stop.value.code == 2 and "limit 'best_of'" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_eval_best_of_is_refused_for_rows_without_stage_1(tmp_path, capsys):
    """`eval-semanticgen --best-of 2` on a row without stage 1 is a usage error before any model loads."""
    from planx_core.eval import adherence

    with pytest.raises(SystemExit) as stop:
        adherence.main(["--best-of", "2", "--rows", "gt_semantics", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "have no stage-1 plan" in capsys.readouterr().err
