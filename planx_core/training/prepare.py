"""`python -m planx_core prepare`: videos with captions -> a cache of latents, text features and keyframe plans.

    python -m planx_core prepare VIDEOS --out cache/                      # the embedded tiny model's size
    python -m planx_core prepare captions.jsonl --bundle models/planx/wan22-5b --out cache/ \\
        --device cuda --dtype bfloat16 --buckets 1280x704,704x1280,960x960
    torchrun --standalone --nproc_per_node 8 -m planx_core prepare VIDEOS --bundle ... --out cache/ --device cuda

Input: a folder of videos with a sidecar NAME.txt each (line 1 the scene, line 2 the motion), or a
JSONL of {"path", "scene", "motion"} (`prepare_sources`). Each video is resampled to `--fps` by
timestamp (never re-timed), cut into `--frames` (4n+1) clips every `--stride` frames (at most
`--max-clips` per video), centre-cropped and resized to its bucket (`--size WxH` or the nearest
`--buckets` aspect; sides multiples of the VAE's spatial factor x the DiT patch). Settings
default to the bundle's video (bundle.json); impossible ones are refused before any model work.
The encoders are run one at a time (`prepare_encode`). Under torchrun, rank r makes every
world-size-th clip and rank 0 writes the manifest; a rerun skips the clips already made.

The cache (`--out`), a contract the training stages read through `open_cache(folder)` (`prepare_cache`; no
PyAV needed): a `PreparedCache` with `clips` (the manifest's entries), `model`, `settings`, `len()`, `[i]` ->
`PreparedClip` (the five tensors below and `meta`), and `check_bundle(folder)`, which refuses encoders other
than the cache's:

    manifest.json   {"format": "planx.prepared", "version": 1, "complete": bool (false until a run ends),
                     "fingerprint": {"digest": 16 hex, "settings": {fps, frames, stride, max_clips, buckets
                       ["WxH"], allow_upscale, drop_low_fps, keyframe_rate, grid, dtype},
                       "files": {name in the bundle: {size, mtime_ns, header_sha256, sample_sha256}}},
                     "model": {bundle, latent_channels, spatial_factor, temporal_factor, multiple [h, w],
                       text_dim, text_len, codebook {name, size, digest}},
                     "source": input path, "clips": [{file, source, start_frame, frames, width, height,
                       scene, motion}] (sorted by source, then start), "dropped": count}
    dropped.json    [{"source", "start_frame" (null: the whole video), "reason"}], also printed
    clips/NAME.safetensors, one per clip (NAME = stem-sha1(source)[:8]-start):
        latent          float32 [C, 1 + (frames - 1) / 4, H / s, W / s]  the VAE's normalised latent mean
                        (`WanVAE.encode` of frames / 127.5 - 1)
        first_latent    float32 [C, 1, H / s, W / s]  frame 0 encoded alone (TI2V's pinned frame)
        text            float32 [L, D]  umT5 features of `join_prompt(scene, motion)`, unpadded (L <= text_len)
        keyframe_ids    int64   [K, g*g]  TA-Tok codes of the keyframes, row-major
        keyframe_times  float32 [K]  seconds from the clip's first frame (`plan.timing.keyframe_frames`: every
                        1/keyframe_rate s; keyframe k is clip frame `timing.video_frame(t, fps)`)
        metadata        planx_format "planx.prepared.clip", fingerprint (the manifest's digest), source,
                        start_frame (at fps), start_time (s in the source), source_frames (JSON list of the
                        source frame indices used), source_fps, source_size "WxH", crop "x,y,w,h", fps,
                        frames, width, height, scene, motion, prompt
    .work/          intermediate files of an unfinished run (removed when a run completes)

Every file is written under a hidden temporary name and renamed, so an interrupted run leaves
whole files only (its temporaries are removed by the next run). The fingerprint covers every
setting and every encoder file (size, safetensors header and a sampled content hash; a copy
with a new mtime is the same file): a run whose fingerprint differs from the folder's manifest
is refused, naming what changed, unless `--rebuild`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .. import EMBEDDED
from .prepare_cache import (
    CLIPS,
    DROPPED,
    FIX,
    MANIFEST,
    WORK,
    CacheError,
    PreparedCache,
    PreparedClip,
    differences,
    fingerprint,
    open_cache,
    read_clip,
    read_manifest,
    remove_temporaries,
    write_json_atomic,
)

__all__ = ["CacheError", "PreparedCache", "PreparedClip", "main", "open_cache", "read_clip"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PrepareError(ValueError):
    """Settings or inputs that cannot make a cache; the message names the fix."""


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m planx_core prepare", description=__doc__.splitlines()[0])
    p.add_argument("source", help="a folder of videos with sidecar .txt captions, or a .jsonl of path/scene/motion")
    p.add_argument("--out", required=True, help="the cache folder")
    p.add_argument("--bundle", default=str(EMBEDDED), help="bundle folder with the encoders (default: embedded)")
    p.add_argument("--fps", type=float, help="frames per second of the clips (default: the bundle's)")
    p.add_argument("--frames", type=int, help="frames per clip, 4n+1 (default: the bundle's)")
    p.add_argument("--stride", type=int, help="frames between clip starts, at --fps (default: --frames)")
    p.add_argument("--max-clips", type=int, default=0, help="clips per video at most (default 0: all)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", help="every clip at WxH (default: the bundle's video size)")
    size.add_argument("--buckets", help="WxH,WxH,...: each video goes to the bucket nearest its aspect ratio")
    p.add_argument("--allow-upscale", action="store_true", help="keep videos smaller than their bucket (upscaled)")
    p.add_argument("--drop-low-fps", action="store_true", help="drop videos below --fps instead of refusing")
    p.add_argument("--keyframe-rate", type=float, help="keyframes per second (default: the bundle's)")
    p.add_argument("--grid", type=int, help="TA-Tok grid side (default: the bundle's)")
    p.add_argument("--rebuild", action="store_true", help="discard a cache made with other files or settings")
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun each rank takes cuda:LOCAL_RANK)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="the encoders' dtype")
    p.add_argument("--threads", type=int, help="CPU threads for torch per process")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- settings


def _size(text: str, flag: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w > 0 and h > 0:
            return w, h
    except ValueError:
        pass
    raise PrepareError(f"{flag} {text!r}: write sizes as WxH, e.g. 832x480")


def _nearest(value: int, step: int) -> str:
    """`value` when it is a multiple of `step`, else the multiples around it."""
    low = value - value % step
    return str(value) if value % step == 0 else (f"{low} or {low + step}" if low >= step else str(step))


def check_settings(args) -> tuple[dict, dict]:
    """(settings, model facts) from the options and the bundle's headers (no weights are read); PrepareError for
    impossible settings."""
    from ..pipelines.bundle import BundleError, read_spec
    from ..wan.text_encoder_files import locate
    from ..wan.vae_files import vae_file_config
    from .prepare_cache import ENCODER_PARTS

    bundle = Path(args.bundle)
    try:
        spec = read_spec(bundle)
        missing = [part for part in ENCODER_PARTS if not (bundle / part).exists()]
        if missing:
            raise BundleError(f"missing {', '.join(missing)}; pass a bundle folder made by assemble")
        vae = vae_file_config(bundle / "vae.safetensors")
        text = locate(bundle / "text_encoder")
    except (BundleError, OSError, ValueError) as err:
        raise PrepareError(f"--bundle {bundle}: {err}") from None
    video, patch = spec.video, spec.dit.patch_size
    multiple = (vae.spatial_factor * patch[1], vae.spatial_factor * patch[2])
    frames, k = args.frames or video.num_frames, vae.temporal_factor
    if frames < 1 or (frames - 1) % k:
        low = frames - (frames - 1) % k
        use = f"{low} or {low + k}" if low >= 1 else str(1 + k)
        raise PrepareError(f"--frames {frames} is not {k}n+1 (the Wan VAE encodes 1 + {k}n frames): use {use}")
    if args.buckets:
        buckets = [_size(b, "--buckets") for b in args.buckets.split(",") if b.strip()]
    else:
        buckets = [_size(args.size, "--size") if args.size else (video.width, video.height)]
    for w, h in buckets:
        if h % multiple[0] or w % multiple[1]:
            raise PrepareError(
                f"size {w}x{h} is not a multiple of {multiple[1]}x{multiple[0]} (the VAE's {vae.spatial_factor}x "
                f"times the DiT's patch): use a width of {_nearest(w, multiple[1])} and a height of "
                f"{_nearest(h, multiple[0])}"
            )
    fps, stride = args.fps or video.fps, args.stride or frames
    rate, grid = args.keyframe_rate or video.keyframe_rate, args.grid or video.grid
    checks = [(fps > 0, f"--fps {fps} must be > 0"), (stride >= 1, f"--stride {stride} must be >= 1")]
    checks += [(args.max_clips >= 0, "--max-clips must be >= 0"), (rate > 0, "--keyframe-rate must be > 0")]
    for ok, message in checks + [(grid >= 1, "--grid must be >= 1")]:
        if not ok:
            raise PrepareError(message)
    settings = dict(fps=fps, frames=frames, stride=stride, max_clips=args.max_clips, keyframe_rate=rate, grid=grid)
    settings.update(buckets=[f"{w}x{h}" for w, h in buckets], allow_upscale=args.allow_upscale)
    settings.update(drop_low_fps=args.drop_low_fps, dtype=args.dtype)
    model = dict(bundle=str(bundle), latent_channels=vae.z_dim, spatial_factor=vae.spatial_factor)
    model.update(temporal_factor=k, multiple=list(multiple), text_dim=text["config"].d_model)
    model.update(text_len=text["text_len"], codebook={"name": spec.codebook_name})
    return settings, model


# ----------------------------------------------------------------------------- ranks


class Ranks:
    """torchrun's ranks (RANK, WORLD_SIZE), joined through one gloo group: only small Python objects are
    exchanged (probes, drop lists), so gloo serves CPU and CUDA runs alike."""

    def __init__(self, args):
        launched = "WORLD_SIZE" in os.environ and "RANK" in os.environ
        local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        self.device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else args.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        threads = args.threads or (max(1, (os.cpu_count() or 1) // local_world) if launched else 0)
        if threads:
            torch.set_num_threads(threads)
        self.owned = launched and not dist.is_initialized()
        if self.owned:  # a long timeout: rank 0 waits at the end for the slowest rank's clips
            dist.init_process_group("gloo", init_method="env://", timeout=timedelta(days=7))
        active = dist.is_available() and dist.is_initialized()
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if active else (0, 1)

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def from_main(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------- the run


def check_existing(out: Path, fp: dict, rebuild: bool) -> str | None:
    """Why `out` cannot take this run (None when it can): a manifest made with other files or settings."""
    try:
        old = read_manifest(out)
    except CacheError as err:
        return None if rebuild else str(err)
    if old is None or rebuild:
        return None
    changed = differences(old["fingerprint"], fp)
    if changed:
        return f"{out} holds a cache made with other files or settings:\n  " + "\n  ".join(changed) + f"\n{FIX}"
    return None


def start_folder(out: Path, rebuild: bool, manifest: dict) -> None:
    """Rank 0, before any clip is written: wipe on --rebuild, drop stale temporaries, write the manifest
    (complete: false) so an interrupted run is checked against it."""
    if rebuild:
        for name in (CLIPS, WORK):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in (MANIFEST, DROPPED):
            (out / name).unlink(missing_ok=True)
    (out / CLIPS).mkdir(parents=True, exist_ok=True)
    remove_temporaries(out)
    write_json_atomic(out / MANIFEST, manifest)


def run(args) -> int:
    from .prepare_encode import Encoder, pending  # PyAV is imported here: the reader above does not need it
    from .prepare_plan import finish, plan, probe_all, unique
    from .prepare_sources import VIDEO_SUFFIXES, SourceError, list_sources

    settings, model = check_settings(args)
    source, out, bundle = Path(args.source), Path(args.out), Path(args.bundle)
    if not source.exists():
        raise PrepareError(f"{source}: no such folder or JSONL file")
    try:
        sources, repeated = unique(list_sources(source))
    except (OSError, SourceError) as err:
        raise PrepareError(f"{source}: {err}") from None
    if not sources:
        raise PrepareError(f"{source}: no videos found (looked for {', '.join(VIDEO_SUFFIXES)}, recursively)")
    ranks = Ranks(args)
    try:
        fp = fingerprint(bundle, settings)
        refusal = ranks.from_main(check_existing(out, fp, args.rebuild) if ranks.rank == 0 else None)
        if refusal:
            raise PrepareError(refusal)
        quiet = args.quiet or ranks.rank > 0  # one set of bars: rank 0's, for its share of the clips
        videos = probe_all(sources, settings, ranks, quiet)
        jobs, drops = plan(sources, videos, settings)
        drops += repeated
        manifest = dict(format="planx.prepared", version=1, complete=False, fingerprint=fp, model=model)
        manifest.update(source=str(source), clips=[], dropped=0)
        if ranks.rank == 0:
            start_folder(out, args.rebuild, manifest)
        ranks.gather(None)  # nobody writes a clip before the folder is ready
        by_key = {s.key: s for s in sources}
        mine = pending(out, jobs[ranks.rank :: ranks.world], fp["digest"], by_key)
        label = f" [rank 0's share of {ranks.world}]" if ranks.world > 1 else ""
        encoder = Encoder(
            out,
            bundle,
            settings,
            by_key,
            videos,
            digest=fp["digest"],
            device=ranks.device,
            dtype=DTYPES[args.dtype],
            quiet=quiet,
            label=label,
        )
        lost = encoder.run(mine) if mine else []
        parts = ranks.gather((lost, len(mine) - len(lost)))  # also the barrier before rank 0 finishes
        if ranks.rank == 0:
            drops += [d for part, _ in parts for d in part]
            finish(out, manifest, jobs, drops, videos, encoder.sources, sum(n for _, n in parts))
    finally:
        ranks.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return run(args)
    except (PrepareError, CacheError) as err:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank refuses alike; one says it
            print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
