"""Training stage `vae`: the tiny Wan-architecture video VAE on the synthetic world.

This project's recipe (the Wan VAE's own training is unpublished): reconstruction loss
L1 + MSE on pixels in [-1, 1] of a latent drawn from the posterior, plus a small KL term
towards N(0, 1) so the latent stays smooth for the DiT. At export the per-channel mean and
standard deviation of the latents of fresh clips are written into the config (`latents_mean`,
`latents_std`), as Wan ships its VAE, so the DiT sees roughly unit-variance latents.
Frames go in whole (`chunked=False`: gradients through one pass; the same result as chunks).
The network is convolutional and causal, so it trains on random windows of `--vae-frames`
frames (1 + 4n) and `--vae-crop` pixels of each clip, several times cheaper than whole clips,
and is evaluated and exported on whole 17 x 64 x 64 clips. Windows need at least 9 frames
(three latent frames): with 5, the third latent frame onwards (whose causal context is an
earlier 4-frame group, not the lone first frame) is never trained, and measured reconstructions
lose colour and shape from frame 8 on. `--vae-decoder-only` (with `--init-from`) trains the
decoder alone, e.g. on whole 17-frame windows, so the latents a DiT was trained on do not change.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import world
from ..files.video import video_to_frames
from ..wan.vae import WanVAE, get_vae_preset
from ..wan.vae_files import load_vae, save_vae
from ..world import score as world_score
from ..world.clips import clip_video
from .stages import Stage, StageContext, StageError, clip_seeds, eval_clips


def random_windows(video: torch.Tensor, frames: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """One random window of `frames` x `crop` x `crop` per clip of `video` `[B, 3, T, H, W]`."""
    b, _, t, h, w = video.shape
    if frames > t or crop > min(h, w) or (frames - 1) % 4 or crop % 4:
        raise ValueError(
            f"a training window of {frames} frames and {crop} px must fit the {t}x{h}x{w} clips, "
            f"with frames = 1 + 4n and the crop a multiple of 4"
        )
    starts = [
        [int(torch.randint(0, n - k + 1, (1,), generator=gen)) for n, k in ((t, frames), (h, crop), (w, crop))]
        for _ in range(b)
    ]
    return torch.stack(
        [video[i, :, a : a + frames, y : y + crop, x : x + crop] for i, (a, y, x) in enumerate(starts)]
    )  # [B, 3, frames, crop, crop]


class VAEObjective(nn.Module):
    """`forward(video, noise) -> loss`: reconstruction of a posterior sample + kl_weight * KL."""

    def __init__(self, vae: WanVAE, kl_weight: float):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, video: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        mean, logvar = self.vae.posterior(video, chunked=False)  # [B, z, t, h, w] each
        z = mean + torch.exp(0.5 * logvar) * noise  # [B, z, t, h, w]
        recon = self.vae.decode(self.vae.normalize(z), clamp=False, chunked=False)  # [B, 3, T, H, W]
        kl = 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean()
        return F.l1_loss(recon, video) + F.mse_loss(recon, video) + self.kl_weight * kl


class VAEStage(Stage):
    name = "vae"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--kl-weight", type=float, default=1e-4, help="vae: weight of the KL term")
        parser.add_argument("--vae-frames", type=int, default=9, help="vae: frames per training window (1 + 4n)")
        parser.add_argument("--vae-crop", type=int, default=32, help="vae: square crop side in pixels (multiple of 4)")
        parser.add_argument("--stats-clips", type=int, default=64, help="vae: clips measured for the latent statistics")
        parser.add_argument(
            "--vae-decoder-only",
            action="store_true",
            help="vae: train the decoder alone (with --init-from): the latents, and so a DiT "
            "trained on them, stay valid",
        )

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        torch.manual_seed(self.args.seed)
        self.vae = WanVAE(get_vae_preset("tiny"))
        self.module = VAEObjective(self.vae, self.args.kl_weight).to(ctx.device)
        if self.args.vae_decoder_only:
            if not self.args.init_from:
                raise StageError(
                    "--vae-decoder-only fine-tunes a trained VAE's decoder: pass --init-from runs/<vae run>"
                )
            self.vae.encoder.requires_grad_(False)
            self.vae.conv1.requires_grad_(False)
        self._eval: list[world.Clip] | None = None

    def fingerprint(self) -> dict:
        extra = {"decoder_only": True} if self.args.vae_decoder_only else {}  # runs without it keep resuming
        return {**super().fingerprint(), **extra}

    def init_from(self, path: Path) -> None:
        path = Path(path)
        self.vae.load_state_dict(load_vae(path / "vae.safetensors" if path.is_dir() else path).state_dict())

    def batch(self, step: int):
        a, c = self.args, self.ctx
        seeds = clip_seeds(a.seed, self.name, step, c.rank, c.world_size, a.batch)
        gen = torch.Generator().manual_seed(seeds[0])
        video = random_windows(clip_video([world.make_clip(s) for s in seeds]), a.vae_frames, a.vae_crop, gen)
        latent = self.vae.config.latent_shape(video.shape[2], video.shape[3], video.shape[4])
        noise = torch.randn((len(seeds), *latent), generator=gen)  # [B, z, t, h, w]
        return {"video": video.to(c.device), "noise": noise.to(c.device)}, seeds

    @torch.no_grad()
    def evaluate(self) -> dict:
        """PSNR of reconstructions of unseen clips, and the world scorer run on them (1.0 = nothing lost)."""
        if self._eval is None:
            self._eval = eval_clips("heldout", self.args.eval_clips, self.args.seed)
        self.vae.eval()
        video = clip_video(self._eval).to(self.ctx.device)  # [B, 3, T, H, W]
        recon = torch.cat([self.vae.decode(self.vae.encode(video[i : i + 4])) for i in range(0, len(video), 4)])
        mse = float(F.mse_loss(recon, video)) / 4.0  # in [0, 1] pixel units
        scores = world_score.score_many(list(video_to_frames(recon)), self._eval)
        self.vae.train()
        return {
            "psnr": round(10 * np.log10(1.0 / max(mse, 1e-12)), 2),
            **{k: round(float(scores[k]), 4) for k in ("accuracy", "fidelity", "consistency")},
        }

    @torch.no_grad()
    def latent_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the (unnormalised) latent means of `--stats-clips` fresh clips."""
        count = self.args.stats_clips
        clips = eval_clips("train", count, self.args.seed + 1)
        video = clip_video(clips).to(self.ctx.device)
        means = torch.cat([self.vae.posterior(video[i : i + 8])[0] for i in range(0, count, 8)])  # [N, z, t, h, w]
        flat = means.transpose(0, 1).flatten(1)  # [z, N*t*h*w]
        return flat.mean(1).tolist(), flat.std(1).clamp_min(1e-3).tolist()

    def export(self, out: Path) -> None:
        self.vae.eval()
        mean, std = self.latent_stats()
        export = WanVAE(self.vae.config.with_(latents_mean=tuple(mean), latents_std=tuple(std), name="planx-tiny"))
        export.load_state_dict(self.vae.state_dict())
        save_vae(export, Path(out) / "vae.safetensors")
        self.vae.train()
