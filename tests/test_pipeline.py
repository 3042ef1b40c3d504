"""`generate` end to end on an untrained bundle: files written, plans checked, errors exit 2 with a message."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

import planx_core.pipelines.bundle as bundle_module
import planx_core.pipelines.commands as commands_module
from planx_core.__main__ import main
from planx_core.files.video import read_video, write_video
from planx_core.pipelines.bundle import (
    BundleError,
    BundleSpec,
    PlanningDefaults,
    SamplingDefaults,
    VideoDefaults,
    load_bundle,
    save_bundle,
)
from planx_core.pipelines.planx import PlanXPipeline, prompt_text, split_prompt
from planx_core.plan.core import Plan, make_plan
from planx_core.plan.timing import keyframe_times
from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.wan.configs import DiTConfig
from planx_core.wan.vae import VAEConfig
from planx_core.world.tiny import random_bundle

PROMPT = "a red circle on a dark background. the red circle moves right."
# Smaller than planx-tiny (same layout: 16 latent channels, 32 text tokens) so the file stays fast.
DIT = DiTConfig(
    dim=64,
    ffn_dim=128,
    num_heads=2,
    num_layers=2,
    in_dim=16,
    out_dim=16,
    text_dim=32,
    freq_dim=32,
    text_len=32,
    name="test-dit",
)
VAE = VAEConfig(dim=8, z_dim=16, dim_mult=(1, 2, 2), num_res_blocks=1, temperal_downsample=(True, True), name="test")
SCALE = 2
GRID = 9  # the embedded layout: 5 keyframes of 9x9 plan cells
CELLS = GRID * GRID


def run(*argv: str) -> tuple[int, str, str]:
    """`python -m planx_core ...` in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    spec = BundleSpec(dit=DIT, name="test-bundle", video=VideoDefaults(grid=GRID), sampling=SamplingDefaults(steps=2))
    return save_bundle(random_bundle(DIT, vae=VAE, seed=3, spec=spec), tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def pipe(bundle_dir):
    return PlanXPipeline(load_bundle(bundle_dir))


@pytest.fixture(scope="module")
def first(bundle_dir, tmp_path_factory):
    """One planned clip: (exit code, stdout, stderr, video path)."""
    video = tmp_path_factory.mktemp("out") / "clip.mp4"
    code, out, err = run(
        "generate",
        "--prompt",
        PROMPT,
        "--out",
        str(video),
        "--bundle",
        str(bundle_dir),
        "--seed",
        "5",
        "--scale",
        str(SCALE),
        "--quiet",
    )
    return code, out, err, video


def test_generate_writes_video_plan_and_picture(first, pipe):
    code, out, err, video = first
    assert code == 0, err
    for path in (video, video.with_suffix(".plan.json"), video.with_suffix(".plan.png")):
        assert path.is_file() and str(path) in out
    assert "time:" in out and "'the red circle moves right'" in out
    frames, fps = read_video(video)
    assert frames.shape == (17, 64 * SCALE, 64 * SCALE, 3) and fps == pytest.approx(8.0)
    plan = Plan.from_json(video.with_suffix(".plan.json").read_text())
    plan.check_codebook(pipe.codebook_id)
    assert plan.codebook == pipe.codebook_id and len(plan.keyframes) == 5 and plan.grid == (GRID, GRID)
    assert (plan.provenance.scene, plan.provenance.motion, plan.provenance.seed) == (
        "a red circle on a dark background",
        "the red circle moves right",
        5,
    )


def test_an_edited_plan_is_rendered_as_given(first, bundle_dir, tmp_path, monkeypatch):
    _, _, _, video = first
    data = json.loads(video.with_suffix(".plan.json").read_text())
    data["keyframes"][2]["tokens"] = [7] * CELLS
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data, indent=3))  # another layout than generate writes: copied, not rewritten
    seen = []
    original = PlanXPipeline.render
    monkeypatch.setattr(
        PlanXPipeline, "render", lambda self, plan, *a, **k: seen.append(plan) or original(self, plan, *a, **k)
    )
    monkeypatch.setattr(PlanXPipeline, "plan", lambda *a, **k: pytest.fail("a given plan must not be re-planned"))
    out_video = tmp_path / "again.mp4"
    code, out, err = run(
        "generate",
        "--prompt",
        PROMPT,
        "--out",
        str(out_video),
        "--plan",
        str(edited),
        "--bundle",
        str(bundle_dir),
        "--seed",
        "5",
        "--scale",
        str(SCALE),
        "--quiet",
    )
    assert code == 0, err
    assert seen[0].keyframes[2].tokens == [7] * CELLS and seen[0].keyframes[1].tokens == data["keyframes"][1]["tokens"]
    assert out_video.with_suffix(".plan.json").read_bytes() == edited.read_bytes()
    assert out_video.with_suffix(".plan.png").is_file()
    assert not np.array_equal(read_video(out_video)[0], read_video(video)[0])  # the plan steers the video


def test_no_plan_renders_from_text_alone(bundle_dir, tmp_path):
    video = tmp_path / "text.mp4"
    code, out, err = run(
        "generate",
        "--prompt",
        "a blue square on a textured background",
        "--motion",
        "the blue square moves up.",
        "--out",
        str(video),
        "--no-plan",
        "--bundle",
        str(bundle_dir),
        "--scale",
        "1",
        "--quiet",
    )
    assert code == 0, err
    assert read_video(video)[0].shape == (17, 64, 64, 3)
    assert not video.with_suffix(".plan.json").exists() and "none (--no-plan)" in out


def test_image_to_video_starts_from_the_image(bundle_dir, tmp_path):
    from PIL import Image

    from planx_core import world

    clip = world.make_clip(4)
    Image.fromarray(clip.frames[0]).save(tmp_path / "first.png")
    video = tmp_path / "i2v.mp4"
    code, out, err = run(
        "generate",
        "--prompt",
        f"{clip.scene}. {clip.motion}.",
        "--image",
        str(tmp_path / "first.png"),
        "--out",
        str(video),
        "--bundle",
        str(bundle_dir),
        "--scale",
        "1",
        "--quiet",
    )
    assert code == 0, err
    plan = Plan.from_json(video.with_suffix(".plan.json").read_text())
    assert plan.keyframes[0].locked and not plan.keyframes[1].locked
    Image.new("RGB", (32, 32)).save(tmp_path / "small.png")
    code, _, err = run(
        "generate",
        "--prompt",
        PROMPT,
        "--image",
        str(tmp_path / "small.png"),
        "--out",
        str(tmp_path / "x.mp4"),
        "--bundle",
        str(bundle_dir),
        "--quiet",
    )
    assert code == 2 and "resize the image to 64x64" in err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = run(
        "generate",
        "--prompt",
        PROMPT,
        "--image",
        str(tmp_path / "bad.png"),
        "--out",
        str(tmp_path / "x.mp4"),
        "--bundle",
        str(bundle_dir),
        "--quiet",
    )
    assert code == 2 and "bad.png: cannot read the image" in err


def _bundle_plan(pipe, num_frames: int = 17, **codebook) -> Plan:
    ident = pipe.codebook_id
    times = keyframe_times(num_frames, 8.0)
    ident = type(ident)(**{"name": ident.name, "size": ident.size, "digest": ident.digest, **codebook})
    return make_plan(
        [[1] * CELLS] * len(times),
        times=times,
        fps=8.0,
        num_frames=num_frames,
        width=64,
        height=64,
        codebook=ident,
        grid=(GRID, GRID),
    )


@pytest.mark.parametrize(
    "case, message",
    [
        ("codebook", "codebook mismatch"),
        ("long", "the plan does not fit the video: its last keyframe is at 3 s"),
    ],
)
def test_unusable_plans_are_refused(case, message, pipe, bundle_dir, tmp_path):
    plan = _bundle_plan(pipe, digest="0000000000000000") if case == "codebook" else _bundle_plan(pipe, num_frames=25)
    (tmp_path / "plan.json").write_text(plan.to_json())
    code, out, err = run(
        "generate",
        "--prompt",
        PROMPT,
        "--out",
        str(tmp_path / "x.mp4"),
        "--plan",
        str(tmp_path / "plan.json"),
        "--bundle",
        str(bundle_dir),
        "--quiet",
    )
    assert code == 2 and err.startswith("error: --plan ") and message in err
    assert not (tmp_path / "x.mp4").exists()


def test_missing_bundle_and_missing_part_name_the_fix(bundle_dir, tmp_path, monkeypatch):
    code, _, err = run(
        "generate", "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4"), "--bundle", str(tmp_path / "nowhere")
    )
    assert code == 2 and "no such bundle folder" in err and "python -m planx_core train" in err
    broken = shutil.copytree(bundle_dir, tmp_path / "broken")
    (broken / "dit.safetensors").unlink()
    with pytest.raises(BundleError, match="missing dit.safetensors \\(the diffusion transformer\\)"):
        load_bundle(broken)
    monkeypatch.setattr(bundle_module, "EMBEDDED", tmp_path / "embedded")
    monkeypatch.setattr(commands_module, "EMBEDDED", tmp_path / "embedded")
    code, _, err = run("generate", "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4"))
    assert code == 2 and "the embedded model is not installed" in err and "git checkout -- planx_core/embedded" in err


def test_bad_options_exit_2(bundle_dir, tmp_path):
    common = ("--bundle", str(bundle_dir), "--quiet")
    assert run("generate", "--prompt", PROMPT, "--out", str(tmp_path / "x.gif"), *common)[2].startswith("error: --out")
    code, _, err = run(
        "generate", "--prompt", PROMPT, "--out", str(tmp_path / "x.mp4"), "--plan", "p.json", "--no-plan", *common
    )
    assert code == 2 and "contradict" in err
    code, _, err = run(
        "generate",
        "--prompt",
        PROMPT,
        "--out",
        str(tmp_path / "x.mp4"),
        "--plan",
        str(tmp_path / "absent.json"),
        *common,
    )
    assert code == 2 and "absent.json: cannot read the plan file" in err


def test_parts_that_do_not_fit_are_refused():
    bundle = random_bundle(DIT, vae=VAE)
    bundle.branch = SemanticBranch(
        BranchConfig(code_dim=bundle.tatok.config.bottleneck_dim, dim=32, num_heads=2, num_layers=2)
    )
    with pytest.raises(BundleError, match="branch is for a DiT of width 32 with 2 blocks and 2 heads, dit is 64"):
        bundle.check()


def test_prompt_split_and_text_encoder_prompt():
    assert split_prompt(PROMPT) == ("a red circle on a dark background", "the red circle moves right")
    assert split_prompt("a red circle. It moves right. Then up!") == ("a red circle", "It moves right. Then up")
    assert split_prompt("a red circle on a dark background") == ("a red circle on a dark background", "")
    assert split_prompt("v1.5 of a cup. it falls") == ("v1.5 of a cup", "it falls")
    assert prompt_text("a red circle", "the red circle moves right.") == "a red circle. the red circle moves right."
    assert prompt_text("a red circle", "") == "a red circle." and prompt_text("", "") == ""


def test_video_round_trip_and_nearest_upscale(tmp_path):
    frames = np.zeros((5, 8, 8, 3), np.uint8)
    frames[:, :4] = (200, 40, 40)
    path = write_video(frames, tmp_path / "v.avi", fps=4, scale=8)
    back, fps = read_video(path)
    assert back.shape == (5, 64, 64, 3) and fps == pytest.approx(4.0)
    assert np.abs(back[:, 4:28, 8:56].astype(int) - [200, 40, 40]).max() < 20  # red stays red, RGB order kept
    with pytest.raises(ValueError, match="frames \\[T, H, W, 3\\]"):
        write_video(np.zeros((3, 8, 8)), tmp_path / "bad.mp4", fps=4)


def test_offload_moves_each_stage_parts_in_and_out(bundle_dir):
    """With offload every stage moves only its own parts to the device and back: the planner and TA-Tok, then
    the text encoder, then DiT and branch, then the VAE; none of them is on the device with another stage's."""
    pipe = PlanXPipeline.from_folder(bundle_dir, device="cpu", offload=True)
    moves = []
    parts = {
        "planner": pipe.bundle.planner.model,
        "tatok": pipe.bundle.tatok,
        "text": pipe.bundle.text_encoder,
        "dit": pipe.bundle.dit,
        "branch": pipe.bundle.branch,
        "vae": pipe.bundle.vae,
    }
    for name, module in parts.items():
        real = module.to
        module.to = lambda *a, _name=name, _real=real, **k: (moves.append(_name), _real(*a, **k))[1]
    pipe.generate("a red circle on a dark background", "the red circle moves right", seed=1, progress=False)
    stages = ["planner", "tatok"] * 2 + ["text"] * 2 + ["dit", "branch"] * 2 + ["vae"] * 2
    assert moves == stages


def test_bfloat16_weights_sample_in_bfloat16(bundle_dir):
    pipe = PlanXPipeline.from_folder(bundle_dir, dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16 and pipe.bundle.dit.patch_embedding.weight.dtype == torch.bfloat16
    out = pipe.generate("a red circle on a dark background", "the red circle moves right", seed=1, progress=False)
    assert out.frames.shape == (17, 64, 64, 3) and out.frames.std() > 0


def test_text_to_video_plans_draw_at_the_bundles_t2v_temperature(bundle_dir, monkeypatch):
    """`planning.t2v_temperature` is the default without a first frame; with one, `temperature` stays."""
    pipe = PlanXPipeline(load_bundle(bundle_dir))
    pipe.spec = replace(pipe.spec, planning=PlanningDefaults(temperature=1.0, t2v_temperature=0.5))
    drawn = []

    def plan(*args, temperature, **kwargs):
        drawn.append(temperature)
        raise StopIteration

    monkeypatch.setattr(pipe.bundle.planner, "plan", plan)
    image = np.zeros((pipe.spec.video.height, pipe.spec.video.width, 3), np.uint8)  # [H, W, 3]
    for first in (None, pipe.first_frame(image)):
        with pytest.raises(StopIteration):
            pipe.plan("a red ball", "moves right", first_frame=first, progress=False)
    with pytest.raises(StopIteration):
        pipe.plan("a red ball", "moves right", temperature=0.8, progress=False)
    assert drawn == [0.5, 1.0, 0.8]
    for bad in (-0.1, "hot", True):
        with pytest.raises(ValueError, match="t2v_temperature"):
            PlanningDefaults(t2v_temperature=bad)


@pytest.mark.parametrize(
    "name, default, given, bad",
    [
        ("persistence", 1.5, 0.0, (-0.5, "sticky", False, float("inf"), float("nan"))),
        ("candidates", 4, 1, (0, 65, 2.5, True, "8")),
    ],
)
def test_plans_draw_at_the_bundles_planning_defaults_unless_told(bundle_dir, monkeypatch, name, default, given, bad):
    """`planning.persistence` and `planning.candidates` are the planner's defaults; an explicit value wins."""
    pipe = PlanXPipeline(load_bundle(bundle_dir))
    pipe.spec = replace(pipe.spec, planning=PlanningDefaults(**{name: default}))
    drawn = []

    def plan(*args, **kwargs):
        drawn.append(kwargs[name])
        raise StopIteration

    monkeypatch.setattr(pipe.bundle.planner, "plan", plan)
    for value in (None, given):
        with pytest.raises(StopIteration):
            pipe.plan("a red ball", "moves right", progress=False, **{name: value})
    assert drawn == [default, given]
    for value in bad:
        with pytest.raises(ValueError, match=name):
            PlanningDefaults(**{name: value})
    with pytest.raises(ValueError, match="temperature"):
        PlanningDefaults(temperature=float("inf"))


def test_bundle_json_with_a_bad_t2v_temperature_is_refused(bundle_dir, tmp_path):
    data = json.loads((bundle_dir / "bundle.json").read_text())
    data["planning"]["t2v_temperature"] = -1
    with pytest.raises(BundleError, match="t2v_temperature"):
        BundleSpec.from_json(json.dumps(data), tmp_path / "bundle.json")
    data["planning"].update(t2v_temperature=0.5, persistence=-2)
    with pytest.raises(BundleError, match="persistence -2 is not a logit bonus"):
        BundleSpec.from_json(json.dumps(data), tmp_path / "bundle.json")
    data["planning"].update(persistence=0, candidates=100)
    with pytest.raises(BundleError, match="candidates must be a whole number from 1 to 64.*got 100; fix the field"):
        BundleSpec.from_json(json.dumps(data), tmp_path / "bundle.json")
