"""`prepare`'s plan and report: probe the sources across ranks, cut the clip list, refuse or drop, write the end.

Every rank probes every world-size-th source and all ranks gather the results, so all of them
hold the same clip list (sorted by source, then start) and rank r makes every world-size-th clip
of it. Rank 0 writes the manifest and `dropped.json` at the end and prints the drop report.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from .prepare_cache import CLIPS, DROPPED, MANIFEST, WORK, write_json_atomic
from .prepare_encode import Job, Video, clip_name, is_done
from .prepare_sources import FPS_TOLERANCE, Source, SourceError, choose_bucket, clip_starts, crop_box, probe, resample


def probe_video(source: Source, fps: float) -> Video:
    if source.problem:
        return Video(source.key, problem=source.problem)
    try:
        found = probe(source.path)
    except SourceError as err:
        return Video(source.key, problem=str(err))
    return Video(source.key, len(resample(found.times, fps)), found.fps, found.width, found.height)


def probe_all(sources: list[Source], settings: dict, ranks, quiet: bool) -> dict[str, Video]:
    """Every source's `Video`, probed by the ranks in turn and gathered on all of them."""
    mine = sources[ranks.rank :: ranks.world]
    label = f" [rank 0's share of {ranks.world}]" if ranks.world > 1 else ""
    bar = tqdm(mine, desc=f"prepare probe{label}", unit="video", disable=quiet, dynamic_ncols=True)
    found = [probe_video(s, settings["fps"]) for s in bar]
    videos = {v.key: v for part in ranks.gather(found) for v in part}
    slow = [v for v in videos.values() if v.problem is None and 0 < v.fps * (1 + FPS_TOLERANCE) < settings["fps"]]
    if slow and not settings["drop_low_fps"]:
        from .prepare import PrepareError

        lines = "\n  ".join(f"{v.key}: {v.fps:.3f} fps" for v in slow[:20]) + ("\n  ..." if len(slow) > 20 else "")
        raise PrepareError(
            f"--fps {settings['fps']:g} is above the frame rate of {len(slow)} video(s); their frames would repeat:"
            f"\n  {lines}\nlower --fps to {min(v.fps for v in slow):.3f} or below, remove those videos, or pass "
            f"--drop-low-fps to drop them"
        )
    return videos


def _drop(key: str, reason: str, start: int | None = None) -> dict:
    return {"source": key, "start_frame": start, "reason": reason}


def video_problem(video: Video, settings: dict, buckets: list[tuple[int, int]]) -> str | None:
    """Why a probed video yields no clip, or None."""
    fps, frames = settings["fps"], settings["frames"]
    if video.problem:
        return video.problem
    if video.frames < frames:
        return (
            f"too short: {video.frames} frame(s) at {fps:g} fps after resampling ({video.frames / fps:.2f} s), "
            f"a clip needs {frames} ({(frames - 1) / fps:.2f} s after its first frame)"
        )
    if video.fps * (1 + FPS_TOLERANCE) < fps:
        return f"source is {video.fps:.3f} fps, below --fps {fps:g} (its frames would repeat)"
    bucket = choose_bucket(video.width, video.height, buckets)
    _, _, w, h = crop_box(video.width, video.height, bucket)
    if (w < bucket[0] or h < bucket[1]) and not settings["allow_upscale"]:
        return (
            f"size below the bucket: the {video.width}x{video.height} source's centre crop {w}x{h} is smaller than "
            f"{bucket[0]}x{bucket[1]} (it would be upscaled); pass a smaller --size/--buckets or --allow-upscale"
        )
    return None


def unique(sources: list[Source]) -> tuple[list[Source], list[dict]]:
    """(the sources with their first entry only, a drop for every repeated entry)."""
    kept, drops, seen = [], [], set()
    for source in sources:
        if source.key in seen:
            drops.append(_drop(source.key, "listed twice (only its first entry is used)"))
        else:
            seen.add(source.key)
            kept.append(source)
    return kept, drops


def plan(sources: list[Source], videos: dict[str, Video], settings: dict) -> tuple[list[Job], list[dict]]:
    """(every clip to make, every video dropped whole), in source order."""
    buckets = [tuple(int(v) for v in b.split("x")) for b in settings["buckets"]]
    jobs, drops = [], []
    for source in sources:
        problem = video_problem(videos[source.key], settings, buckets)
        if problem:
            drops.append(_drop(source.key, problem))
            continue
        starts = clip_starts(videos[source.key].frames, settings["frames"], settings["stride"], settings["max_clips"])
        jobs += [Job(clip_name(source.key, s), source.key, s) for s in starts]
    return jobs, drops


def codebook_identity(path: Path) -> dict:
    """TA-Tok's codebook size and digest from its three codebook tensors (the rest of the file is not read)."""
    from ..tatok.model import codebook_digest

    names = ("regularizer.embedding.weight", "regularizer.embedding_proj.weight", "regularizer.embedding_proj.bias")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = {n: next((k for k in f.keys() if k.endswith(n)), None) for n in names}
        if None in keys.values():  # another layout: let the loader read it
            from ..tatok.files import load_tatok

            tatok = load_tatok(path)
            return {"size": tatok.config.codebook_size, "digest": tatok.digest()}
        parts = [f.get_tensor(keys[n]).to(torch.float32) for n in names]
    return {"size": int(parts[0].shape[0]), "digest": codebook_digest(*parts)}


def finish(
    out: Path, manifest: dict, jobs: list[Job], drops: list[dict], videos: dict, sources: dict, new: int
) -> None:
    """Rank 0, after every rank is done: the manifest (complete), dropped.json, the report; .work removed."""
    settings, digest = manifest["fingerprint"]["settings"], manifest["fingerprint"]["digest"]
    buckets = [tuple(int(v) for v in b.split("x")) for b in settings["buckets"]]
    dropped_names = {(d["source"], d["start_frame"]) for d in drops}
    clips = []
    for job in jobs:
        file = f"{CLIPS}/{job.name}.safetensors"
        if not is_done(out / file, digest, sources[job.key]):
            if (job.key, job.start) not in dropped_names:
                drops.append(_drop(job.key, "not written (a rank stopped early); rerun the command", job.start))
            continue
        video, source = videos[job.key], sources[job.key]
        width, height = choose_bucket(video.width, video.height, buckets)
        entry = dict(file=file, source=job.key, start_frame=job.start, frames=settings["frames"], width=width)
        clips.append(entry | dict(height=height, scene=source.scene, motion=source.motion))
    drops.sort(key=lambda d: (d["source"], -1 if d["start_frame"] is None else d["start_frame"]))
    manifest["model"]["codebook"].update(codebook_identity(Path(manifest["model"]["bundle"]) / "ta_tok.safetensors"))
    write_json_atomic(out / DROPPED, drops)
    write_json_atomic(out / MANIFEST, manifest | dict(complete=True, clips=clips, dropped=len(drops)))
    shutil.rmtree(out / WORK, ignore_errors=True)
    report(out, clips, drops, new)


def report(out: Path, clips: list[dict], drops: list[dict], made: int) -> None:
    """The summary on stdout and every dropped clip (or video) with its reason on stderr."""
    count = len({c["source"] for c in clips})
    print(f"prepared {len(clips)} clip(s) from {count} video(s) into {out}: {made} new, {len(clips) - made} kept")
    if not drops:
        return
    lines = [f"  {d['source']}" + ("" if d["start_frame"] is None else f" [clip at frame {d['start_frame']}]") +
             f": {d['reason']}" for d in drops]  # fmt: skip
    print(f"DROPPED {len(drops)} (listed in {out / DROPPED}):\n" + "\n".join(lines), file=sys.stderr)
