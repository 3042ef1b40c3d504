"""The source side of `prepare`: videos and captions, probing, resampling by timestamp, buckets, decoding (PyAV).

- Inputs: a folder of videos, each with a sidecar `NAME.txt` (first line the scene, second the
  motion; blank lines ignored), searched recursively; or a JSONL file of {"path", "scene",
  "motion"} lines, paths relative to the JSONL's folder. A video's key is its path relative to
  the folder (POSIX), which names it in the manifest and the drop report.
- Probing reads the container's packets (no decoding but the first frame): every frame's
  presentation timestamp, the size, and the rotation; a rotated video is dropped (its
  rotation is not applied here; ffmpeg's re-encode applies it).
- Resampling picks, for output frame k at the model's fps, the source frame whose timestamp is
  nearest k / fps (ties to the earlier), from 0 to the last frame: never a re-timing. An fps
  above the source's would repeat frames and is refused before any model work.
- A bucket is the listed size nearest the source's aspect ratio (log ratio; ties to the larger);
  the frames are centre-cropped to its aspect, then resized (area filter when shrinking).
  A crop smaller than the bucket is dropped unless upscaling is allowed.
- Decoding seeks to the keyframe before a clip's first frame and keeps frames by timestamp; when
  the seek lands past it, the clip is decoded from the start instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import av
import av.logging
import cv2
import numpy as np

from ..files.jsontext import decode_text, parse_json

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".gif")
FPS_TOLERANCE = 1e-3  # an fps up to 0.1% above the source's counts as equal (29.97 vs 30 does not)


class SourceError(Exception):
    """A video or caption that cannot be used; the message is the drop reason."""


def _no_av_log() -> None:
    """Turn PyAV's log callback off, for the rest of the process. torchvision (which transformers imports) turns
    it on; with it, a frame-threaded decoder that logs while its codec context is freed waits for the GIL that the
    freeing thread holds: a deadlock, seen here on an h264 mp4. The context is freed whenever Python drops the
    stream (function return, garbage collection), so the callback stays off rather than being restored."""
    if av.logging.get_level() is not None:
        av.logging.set_level(None)


@dataclass(frozen=True)
class Source:
    key: str  # path relative to the input folder (or the JSONL's folder), POSIX
    path: Path
    scene: str = ""
    motion: str = ""
    problem: str | None = None  # why the caption (or the JSONL line) cannot be used


def _caption_problem(scene: str, motion: str, where: str) -> str | None:
    if not scene and not motion:
        return f"caption empty ({where})"
    if not scene or not motion:
        return f"caption has no {'motion' if scene else 'scene'} line ({where} needs a scene line and a motion line)"
    return None


def _sidecar(video: Path) -> tuple[str, str, str | None]:
    txt = video.with_suffix(".txt")
    if not txt.is_file():
        return "", "", f"caption missing (no {txt.name} beside the video)"
    try:
        text = decode_text(txt.read_bytes(), txt.name, SourceError, "save it as UTF-8 text")
    except (OSError, SourceError) as err:
        return "", "", f"caption unreadable ({err})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 2:
        return "", "", f"caption has {len(lines)} lines ({txt.name} holds one scene line and one motion line)"
    scene, motion = (lines + ["", ""])[:2]
    return scene, motion, _caption_problem(scene, motion, txt.name)


def _jsonl(path: Path) -> list[Source]:
    found = []
    text = decode_text(path.read_bytes(), str(path), SourceError, "save the captions as UTF-8 JSONL")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            row = parse_json(line, where, SourceError, 'write one {"path", "scene", "motion"} object per line')
            if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                raise SourceError(f'{where} has no "path" string')
        except SourceError as err:
            found.append(Source(where, path, problem=f"bad JSONL line ({err})"))
            continue
        video = (path.parent / row["path"]).resolve()
        key = row["path"].replace("\\", "/")
        scene, motion = (str(row.get(k) or "").strip() for k in ("scene", "motion"))
        problem = None if video.is_file() else f"no such video file ({video})"
        found.append(Source(key, video, scene, motion, problem or _caption_problem(scene, motion, where)))
    return found


def list_sources(source: Path) -> list[Source]:
    """Every video of a folder (recursive, sorted) or a JSONL, with its caption or what is wrong with it."""
    if source.is_file():
        return _jsonl(source)
    videos = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    return [Source(v.relative_to(source).as_posix(), v, *_sidecar(v)) for v in videos]


# ----------------------------------------------------------------------------- probing and resampling


@dataclass(frozen=True)
class Probe:
    pts: tuple[int, ...] | None  # presentation timestamps in stream time base, sorted; None: index them
    times: tuple[float, ...]  # seconds from the first frame
    width: int
    height: int

    @property
    def fps(self) -> float:
        """The measured frame rate: (frames - 1) / duration of the frames' timestamps."""
        span = self.times[-1] - self.times[0]
        return (len(self.times) - 1) / span if span > 0 else 0.0


def probe(path: Path) -> Probe:
    """Timestamps of every frame (from the packets), size and rotation (from the first decoded frame)."""
    _no_av_log()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SourceError("no video stream")
            stream = container.streams.video[0]
            base, first, pts = stream.time_base, None, []
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                pts.append(packet.pts)
                if first is None:
                    first = next(iter(packet.decode()), None)
    except av.FFmpegError as err:
        raise SourceError(f"undecodable ({err})") from None
    if first is None or not pts:
        raise SourceError("undecodable (no frame could be decoded)")
    if getattr(first, "rotation", 0):
        raise SourceError(
            f"rotated {first.rotation} degrees by its metadata, which is not applied here; re-encode it upright "
            f"(ffmpeg -i IN -c:v libx264 OUT applies the rotation)"
        )
    if None in pts or base is None:  # no timestamps in the container: frames at the nominal rate
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        return Probe(None, tuple(i / rate for i in range(len(pts))), first.width, first.height)
    pts.sort()
    return Probe(tuple(pts), tuple(float((p - pts[0]) * base) for p in pts), first.width, first.height)


def resample(times, fps: float) -> list[int]:
    """Source frame index of each output frame at `fps`: the frame nearest k / fps, up to the last frame."""
    t = np.asarray(times, dtype=np.float64)
    count = int(math.floor((t[-1] - t[0]) * fps + 1e-6)) + 1
    targets = t[0] + np.arange(count) / fps
    right = np.clip(np.searchsorted(t, targets), 1, len(t) - 1)
    left = right - 1
    pick = np.where(t[right] - targets < targets - t[left] - 1e-9, right, left)  # ties (within 1 ns) go left
    return pick.tolist() if len(t) > 1 else [0] * count


def clip_starts(frames_available: int, frames: int, stride: int, max_clips: int) -> list[int]:
    """Start frames (at the model's fps) of the clips cut from a resampled video."""
    starts = list(range(0, frames_available - frames + 1, stride))
    return starts[:max_clips] if max_clips else starts


# ----------------------------------------------------------------------------- buckets


def choose_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket (w, h) nearest the source's aspect ratio; ties go to the larger bucket, then the first listed."""
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - aspect), 9), -b[0] * b[1]))


def crop_box(width: int, height: int, bucket: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h): the largest centred region of the source with the bucket's aspect ratio."""
    bw, bh = bucket
    if width * bh > height * bw:  # wider than the bucket: keep the height
        cw, ch = min(width, round(height * bw / bh)), height
    else:
        cw, ch = width, min(height, round(width * bh / bw))
    return (width - cw) // 2, (height - ch) // 2, cw, ch


def fit(frame: np.ndarray, box: tuple[int, int, int, int], bucket: tuple[int, int]) -> np.ndarray:
    """Crop `box` of an RGB frame [H, W, 3] and resize it to the bucket: [bh, bw, 3] uint8."""
    x, y, w, h = box
    crop = frame[y : y + h, x : x + w]
    if (w, h) == tuple(bucket):
        return np.ascontiguousarray(crop)
    shrink = w >= bucket[0] and h >= bucket[1]
    return cv2.resize(crop, tuple(bucket), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


# ----------------------------------------------------------------------------- decoding


def decode(path: Path, probe_: Probe, indices: list[int], box, bucket) -> np.ndarray:
    """The source frames `indices` (probe order, ascending) cropped and resized: [len, bh, bw, 3] uint8."""
    wanted = sorted(set(indices))
    got = _decode(path, probe_, wanted, box, bucket, seek=probe_.pts is not None and wanted[0] > 0)
    if got is None:  # the seek landed after the first wanted frame
        got = _decode(path, probe_, wanted, box, bucket, seek=False)
    missing = [i for i in wanted if i not in got]
    if missing:
        raise SourceError(
            f"undecodable (frame {missing[0]} at {probe_.times[missing[0]]:.3f} s never came out of the decoder)"
        )
    return np.stack([got[i] for i in indices])


def _decode(path: Path, probe_: Probe, wanted: list[int], box, bucket, seek: bool) -> dict[int, np.ndarray] | None:
    by_pts = {probe_.pts[i]: i for i in wanted} if probe_.pts is not None else None
    wanted_set = set(wanted)
    last = probe_.pts[wanted[-1]] if by_pts else wanted[-1]
    got: dict[int, np.ndarray] = {}
    _no_av_log()
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if seek:
                container.seek(probe_.pts[wanted[0]], stream=stream, backward=True)
            for n, frame in enumerate(container.decode(stream)):
                key = n if by_pts is None else frame.pts
                if key is None:
                    raise SourceError("undecodable (a decoded frame has no timestamp)")
                if seek and n == 0 and key > probe_.pts[wanted[0]]:
                    return None
                index = key if by_pts is None else by_pts.get(key)
                if index is not None and (by_pts is not None or index in wanted_set):
                    got[index] = fit(frame.to_ndarray(format="rgb24"), box, bucket)
                if key >= last:
                    break
    except av.FFmpegError as err:
        raise SourceError(f"undecodable ({err})") from None
    return got
