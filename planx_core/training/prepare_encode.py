"""The encoding passes of `prepare`, one encoder at a time: text, then TA-Tok keyframes, then the VAE.

Each pass loads its encoder, runs it over this rank's pending clips, and frees it before the
next is loaded, so one encoder is on the device at a time. The passes share no frames: the
TA-Tok pass decodes only up to each clip's last keyframe and keeps only the keyframes, and the
VAE pass decodes each clip again. Decoding a clip costs far less than encoding it, and memory and
disk stay bounded by one clip's frames (a frame cache of a Wan-size dataset would be terabytes).
The small results of the first passes (text features per video, keyframe ids per clip) wait in
`.work/` as atomic files, so an interrupted run resumes without redoing them; the VAE pass writes
each clip's final file, combining them.
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm import tqdm

from ..plan.timing import keyframe_frames
from ..tatok import frames_to_nchw
from ..tatok.files import load_tatok
from ..wan.text_encoder import join_prompt, load_text_encoder
from ..wan.vae_files import load_vae
from .prepare_cache import CLIP_FORMAT, CLIPS, WORK, clip_meta, save_atomic
from .prepare_sources import Probe, Source, SourceError, choose_bucket, crop_box, decode, probe, resample


@dataclass(frozen=True)
class Video:
    """What probing found of one source, exchanged between ranks (small: no timestamps)."""

    key: str
    frames: int = 0  # frames available at the model's fps
    fps: float = 0.0  # measured source frame rate
    width: int = 0
    height: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class Job:
    """One clip to make: its file stem, source key and first frame at the model's fps."""

    name: str
    key: str
    start: int


def clip_name(key: str, start: int) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(key).stem)[:48]
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:8]}-{start:06d}"


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


class Encoder:
    """The three passes over one rank's pending jobs; `run` returns the clips dropped on the way."""

    def __init__(self, out: Path, bundle: Path, settings: dict, sources: dict[str, Source], videos: dict, **run):
        self.out, self.bundle, self.settings, self.sources, self.videos = out, bundle, settings, sources, videos
        self.digest, self.device, self.dtype = run["digest"], run["device"], run["dtype"]
        self.quiet, self.label = run["quiet"], run["label"]
        self.fps, self.frames = settings["fps"], settings["frames"]
        self.buckets = [tuple(int(v) for v in b.split("x")) for b in settings["buckets"]]
        self.probes: dict[str, tuple[Probe, list[int]]] = {}
        self.dropped: dict[str, dict] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _work(self, kind: str, name: str) -> Path:
        return self.out / WORK / kind / f"{name}.safetensors"

    def _text_file(self, key: str) -> Path:
        prompt = join_prompt(self.sources[key].scene, self.sources[key].motion)  # an edited caption: a new file
        return self._work("text", hashlib.sha1(f"{key}\n{prompt}".encode()).hexdigest()[:16])

    def _bar(self, jobs, phase: str):
        return tqdm(jobs, desc=f"prepare {phase}{self.label}", unit="clip", disable=self.quiet, dynamic_ncols=True)

    def _drop(self, job: Job, reason: str) -> None:
        self.dropped[job.name] = {"source": job.key, "start_frame": job.start, "reason": reason}

    def _geometry(self, job: Job):
        """(source frame indices of the clip, probe, crop box, bucket)."""
        if job.key not in self.probes:
            found = probe(self.sources[job.key].path)
            self.probes[job.key] = found, resample(found.times, self.fps)
        found, picks = self.probes[job.key]
        if len(picks) != self.videos[job.key].frames:
            raise SourceError(f"undecodable (it gave {self.videos[job.key].frames} frames, now {len(picks)})")
        bucket = choose_bucket(found.width, found.height, self.buckets)
        return picks[job.start : job.start + self.frames], found, crop_box(found.width, found.height, bucket), bucket

    def _frames(self, job: Job, local: list[int] | None = None):
        """uint8 frames [n, bh, bw, 3] of the clip (or of its frames `local`), and the geometry."""
        indices, found, box, bucket = self._geometry(job)
        chosen = indices if local is None else [indices[i] for i in local]
        return decode(self.sources[job.key].path, found, chosen, box, bucket), (indices, found, box, bucket)

    # -- the passes ------------------------------------------------------------------------
    def run(self, jobs: list[Job]) -> list[dict]:
        self.text_pass(jobs)
        self.tatok_pass([j for j in jobs if j.name not in self.dropped])
        self.vae_pass([j for j in jobs if j.name not in self.dropped])
        return list(self.dropped.values())

    @torch.no_grad()
    def text_pass(self, jobs: list[Job]) -> None:
        keys = sorted({j.key for j in jobs if not self._text_file(j.key).is_file()})
        if not keys:
            return
        encoder = load_text_encoder(self.bundle / "text_encoder", dtype=self.dtype, device=self.device)
        for key in tqdm(keys, desc=f"prepare text{self.label}", unit="video", disable=self.quiet):
            source = self.sources[key]
            prompt = join_prompt(source.scene, source.motion)
            length = int(encoder.tokenize([prompt])[1].sum())
            text = encoder([prompt])[0, :length].float().cpu()  # [L, D], unpadded
            save_atomic({"text": text}, self._text_file(key), {"prompt": prompt})
        del encoder
        _free(self.device)

    @torch.no_grad()
    def tatok_pass(self, jobs: list[Job]) -> None:
        todo = [j for j in jobs if not self._work("ids", j.name).is_file()]
        if not todo:
            return
        tatok = load_tatok(self.bundle / "ta_tok.safetensors", dtype=self.dtype, device=self.device)
        grid, rate = self.settings["grid"], self.settings["keyframe_rate"]
        times, local = keyframe_frames(self.frames, self.fps, rate)  # the alignment rule (plan.timing)
        for job in self._bar(todo, "keyframes"):
            try:
                frames = torch.from_numpy(self._frames(job, local)[0])  # [K, H, W, 3] uint8
            except SourceError as err:
                self._drop(job, str(err))
                continue
            nchw = frames_to_nchw(frames).to(self.device)  # [K, 3, H, W] in [0, 1]
            ids = torch.cat([tatok.encode(nchw[i : i + 8], grid=grid) for i in range(0, len(nchw), 8)])  # [K, g*g]
            tensors = {"keyframe_ids": ids.cpu().long(), "keyframe_times": torch.tensor(times, dtype=torch.float32)}
            save_atomic(tensors, self._work("ids", job.name), {})
        del tatok
        _free(self.device)

    @torch.no_grad()
    def vae_pass(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        vae = load_vae(self.bundle / "vae.safetensors", dtype=self.dtype, device=self.device).eval()
        for job in self._bar(jobs, "latents"):
            try:
                frames, (indices, found, box, bucket) = self._frames(job)  # [F, H, W, 3] uint8
            except SourceError as err:
                self._drop(job, str(err))
                continue
            video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].to(self.device).float() / 127.5 - 1.0
            tensors = {
                "latent": vae.encode(video)[0].float().cpu(),  # [C, F', h, w]
                "first_latent": vae.encode(video[:, :, :1])[0].float().cpu(),  # [C, 1, h, w]
            }
            for path in (self._text_file(job.key), self._work("ids", job.name)):
                with safe_open(str(path), framework="pt", device="cpu") as f:
                    tensors.update({k: f.get_tensor(k) for k in f.keys()})
            save_atomic(tensors, self.out / CLIPS / f"{job.name}.safetensors", self._metadata(job, indices, found, box))
            self._work("ids", job.name).unlink(missing_ok=True)
        del vae
        _free(self.device)

    def _metadata(self, job: Job, indices: list[int], found: Probe, box) -> dict:
        source, video, s = self.sources[job.key], self.videos[job.key], self.settings
        width, height = (int(v) for v in choose_bucket(found.width, found.height, self.buckets))
        return {
            "planx_format": CLIP_FORMAT,
            "fingerprint": self.digest,
            "source": job.key,
            "start_frame": str(job.start),
            "start_time": f"{found.times[indices[0]]:.6f}",
            "source_frames": json.dumps(indices),
            "source_fps": f"{video.fps:.6f}",
            "source_size": f"{found.width}x{found.height}",
            "crop": ",".join(str(v) for v in box),
            "fps": f"{s['fps']:g}",
            "frames": str(s["frames"]),
            "width": str(width),
            "height": str(height),
            "scene": source.scene,
            "motion": source.motion,
            "prompt": join_prompt(source.scene, source.motion),
        }


def is_done(path: Path, digest: str, source: Source) -> bool:
    """A complete clip file written under this fingerprint, from the caption the source has now."""
    meta = clip_meta(path) or {}
    return meta.get("fingerprint") == digest and (meta.get("scene"), meta.get("motion")) == (
        source.scene,
        source.motion,
    )


def pending(out: Path, jobs: list[Job], digest: str, sources: dict[str, Source]) -> list[Job]:
    """The jobs still to make: no complete clip file under this fingerprint and caption."""
    return [j for j in jobs if not is_done(out / CLIPS / f"{j.name}.safetensors", digest, sources[j.key])]
