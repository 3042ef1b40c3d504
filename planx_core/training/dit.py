"""Training stage `dit`: the tiny Wan 2.2-architecture DiT with its semantic branch and text encoder.

Plan-X (arXiv 2511.17986) trains the DiT's semantic branch on ground-truth plans with staged
text dropout (details unpublished; the "w/o Text" ablation exists). Here: ground-truth plans
are the trained TA-Tok's codes of each clip's keyframes (`--tatok`), latents come from the
trained VAE (`--vae`), and the umT5 text encoder trains from scratch with the DiT. Text is
dropped per sample with probability `--text-dropout-early` before global step `--switch` (the
plan must carry the video) and `--text-dropout-late` after; the plan is
dropped per step with `--plan-dropout` (both unconditional branches of the guidance exist);
the first latent frame is pinned (TI2V) with `--first-frame`. Objective: `flow_training`.

Encoding clips is the slow part on a CPU, so the stage encodes a fixed pool of `--pool` clips
once (latents, prompt ids, plan codes; `pool.safetensors` in the run folder, built by rank 0)
and draws batches from it by (seed, step, rank), so a resumed run sees the same batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import world
from ..diffusion.rendering import render
from ..diffusion.sampling import Guidance
from ..files.safetensors import read_safetensors, save_safetensors
from ..files.video import video_to_frames, write_png, write_video
from ..plan.core import make_plan
from ..plan.picture import code_colours, plan_picture
from ..planner.vocab import build_word_tokenizer
from ..semantic_branch import BranchConfig, SemanticBranch, load_branch, save_branch
from ..tatok.files import load_tatok
from ..wan.configs import get_preset
from ..wan.dit import WanModel
from ..wan.dit_files import load_dit
from ..wan.text_encoder import (
    TextEncoder,
    join_prompt,
    load_text_encoder,
    save_text_encoder,
    tiny_text_encoder,
)
from ..wan.vae_files import load_vae
from ..world import score as world_score
from ..world import tiny
from ..world.clips import clip_video
from .engine_eval import flow_losses
from .flow import Dropout, add_flow_arguments, flow_loss
from .stages import Stage, StageContext, eval_clips, resolve_tatok_file, run_file

POOL_STREAM = 200  # world.clip_seed stream of the pool's clips (training streams are 101, 102, ...)


class DiTObjective(nn.Module):
    """`forward(x0, ids, mask, codes, seed, text_p, plan_p, first_p) -> flow-matching loss`."""

    def __init__(
        self, dit: WanModel, branch: SemanticBranch, text: TextEncoder, codebook: torch.Tensor, shift: float = 5.0
    ):
        super().__init__()
        self.dit, self.branch, self.text, self.shift = dit, branch, text.model, float(shift)
        self.register_buffer("codebook", codebook.float().clone())  # [N, D], frozen
        self.latent_frames = tiny.VIDEO.latent_frames

    def conditions(self, ids: torch.Tensor, mask: torch.Tensor, codes: torch.Tensor):
        """Text features `[B, L, Dt]` (zero past each prompt) and the plan conditioning of codes `[B, K, g*g]`."""
        context = self.text(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]  # [B, L, Dt]
        plan = self.branch.condition(
            self.codebook[codes.flatten(1)], self.latent_frames, (tiny.VIDEO.grid, tiny.VIDEO.grid)
        )  # tokens [B, K*81, dim]
        return context, plan

    def forward(self, x0, ids, mask, codes, seed, text_p, plan_p, first_p):
        gen = torch.Generator().manual_seed(int(seed))
        context, plan = self.conditions(ids, mask, codes)
        return flow_loss(
            self.dit,
            x0,
            context,
            torch.zeros_like(context[:1]),
            plan,
            gen,
            dropout=Dropout(float(text_p), float(plan_p), float(first_p)),
            shift=self.shift,
        )


def build_models(seed: int, code_dim: int) -> tuple[WanModel, SemanticBranch, TextEncoder]:
    """Fresh, seeded planx-tiny DiT, a cross-attention branch in every block, and the tiny umT5."""
    config = get_preset("planx-tiny")
    torch.manual_seed(seed)
    dit = WanModel(config)
    branch = SemanticBranch(
        BranchConfig(
            code_dim=code_dim,
            dim=config.dim,
            num_heads=config.num_heads,
            num_layers=config.num_layers,
            mode="cross_attn",
        )
    )
    text = tiny_text_encoder(
        build_word_tokenizer(list(world.WORDS)),
        dim=config.text_dim,
        layers=2,
        heads=4,
        text_len=config.text_len,
        seed=seed,
    )
    return dit, branch, text


class DiTStage(Stage):
    name = "dit"
    find_unused_parameters = True  # a dropped plan leaves the branch without gradients that step

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--vae", help="dit: trained VAE file or `--stage vae` run folder")
        parser.add_argument("--pool", type=int, default=2048, help="dit: clips encoded once and trained on")
        add_flow_arguments(parser)
        parser.add_argument("--shift", type=float, default=3.0, help="dit: timestep shift of the evaluation's sampler")

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        a = self.args
        if not a.vae or not a.tatok:
            raise ValueError("--stage dit needs --vae and --tatok (files or run folders of the vae and tatok stages)")
        self.vae = load_vae(run_file(a.vae, "vae.safetensors")).to(ctx.device).eval()
        self.tatok = load_tatok(resolve_tatok_file(a.tatok)).to(ctx.device).eval()
        self.dit, self.branch, self.text = build_models(a.seed, self.tatok.config.bottleneck_dim)
        self.module = DiTObjective(self.dit, self.branch, self.text, self.tatok.codebook(), shift=a.train_shift).to(
            ctx.device
        )
        self.pool = self._pool()

    def fingerprint(self) -> dict:
        a = self.args
        return {
            **super().fingerprint(),
            "pool": a.pool,
            "switch": a.switch,
            "tatok": self.tatok.digest(),
            "vae": run_file(a.vae, "vae.safetensors").stat().st_size,
        }

    def init_from(self, path: Path) -> None:
        path = Path(path)
        self.dit.load_state_dict(load_dit(path / "dit.safetensors").state_dict())
        self.branch.load_state_dict(load_branch(path / "branch.safetensors").state_dict())
        self.text.model.load_state_dict(load_text_encoder(path / "text_encoder").model.state_dict())

    # -- data ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_clips(self, clips: list[world.Clip]) -> dict[str, torch.Tensor]:
        """Latents `[B, z, t, h, w]`, prompt ids and mask `[B, L]`, plan codes `[B, K, g*g]` of clips."""
        video = clip_video(clips).to(self.ctx.device)  # [B, 3, T, H, W]
        latents = torch.cat([self.vae.encode(video[i : i + 8]) for i in range(0, len(clips), 8)])
        keys = list(tiny.VIDEO.keyframes)
        frames = video[:, :, keys].transpose(1, 2).flatten(0, 1)  # [B*K, 3, H, W] in [-1, 1]
        codes = self.tatok.encode((frames + 1) / 2, grid=tiny.VIDEO.grid).view(len(clips), len(keys), -1)
        ids, mask = self.text.tokenize([join_prompt(c.scene, c.motion) for c in clips])  # [B, L]
        return {"x0": latents.cpu(), "ids": ids, "mask": mask, "codes": codes.cpu()}

    pool_stream = POOL_STREAM

    def pool_part(self, clips: list[world.Clip], seeds: list[int]) -> dict[str, torch.Tensor]:
        """The pool's tensors of some clips (subclasses add their own)."""
        return self.encode_clips(clips)

    def _pool(self) -> dict[str, torch.Tensor]:
        """The fixed pool, built once by rank 0 (32 clips at a time) into the run folder, then read by every rank."""
        path = Path(self.args.out) / "pool.safetensors"
        if self.ctx.rank == 0 and not path.is_file():
            seeds = [world.clip_seed(self.args.seed, self.pool_stream, i) for i in range(self.args.pool)]
            parts = []
            for i in range(0, len(seeds), 32):
                parts.append(self.pool_part([world.make_clip(s) for s in seeds[i : i + 32]], seeds[i : i + 32]))
                print(f"[pool] {i + len(parts[-1]['x0'])}/{len(seeds)} clips encoded", flush=True)
            pool = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            path.parent.mkdir(parents=True, exist_ok=True)
            save_safetensors(pool, path, metadata={"clips": json.dumps(len(seeds))})
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        return read_safetensors(path)

    def batch(self, step: int):
        a, c = self.args, self.ctx
        gen = torch.Generator().manual_seed(world.clip_seed(a.seed, 300 + c.rank, step))
        rows = torch.randint(0, len(self.pool["x0"]), (a.batch,), generator=gen)
        early = step < a.switch
        inputs = {k: v[rows].to(c.device) for k, v in self.pool.items()}
        inputs.update(
            seed=int(torch.randint(0, 2**31, (1,), generator=gen)),
            plan_p=a.plan_dropout,
            text_p=a.text_dropout_early if early else a.text_dropout_late,
            first_p=a.first_frame,
        )
        return inputs, rows.tolist()

    def shard_blocks(self, module: DiTObjective) -> list:
        return list(module.dit.blocks)  # each DiT block is an FSDP unit (the branch stays with the root)

    # -- evaluation and export -------------------------------------------------------------
    @torch.no_grad()
    def eval_losses(self, sigmas) -> dict[str, float]:
        """The flow loss of the pool's first 4 clips, with their text and plans, at fixed sigmas and noise."""
        rows = {k: v[:4].to(self.ctx.device) for k, v in self.pool.items()}
        context, plan = self.module.conditions(rows["ids"], rows["mask"], rows["codes"])
        return flow_losses(self.dit, rows["x0"], context, plan=plan, seed=self.args.seed, sigmas=sigmas)

    @torch.no_grad()
    def preview(self, out: Path, step: int) -> list[Path]:
        """The first held-out clip | rendered with its plan | from text alone (fixed noise) as an mp4,
        and its ground-truth plan's picture, under `out/previews/`."""
        clip = eval_clips("heldout", 1, self.args.seed)
        batch = {k: v.to(self.ctx.device) for k, v in self.encode_clips(clip).items()}
        self.module.eval()
        frames = [video_to_frames(clip_video(clip))[0], self.sample(batch, True)[0], self.sample(batch, False)[0]]
        self.module.train()
        v, folder = tiny.VIDEO, Path(out) / "previews"
        plan = make_plan(
            batch["codes"][0].cpu(),
            times=v.keyframe_times,
            fps=v.fps,
            num_frames=v.num_frames,
            width=v.size,
            height=v.size,
            codebook=self.tatok.identity(),
            grid=(v.grid, v.grid),
        )
        picture = plan_picture(plan, code_colours(self.tatok.codebook().cpu()), cell=12)
        return [
            write_video(np.concatenate(frames, axis=2), folder / f"step_{step:06d}.mp4", v.fps, scale=2),
            write_png(picture, folder / f"step_{step:06d}_plan.png"),
        ]

    @torch.no_grad()
    def sample(self, batch: dict[str, torch.Tensor], plan: bool, steps: int = 20) -> np.ndarray:
        """Render clips from their prompts (and ground-truth plans): uint8 frames `[B, T, H, W, 3]`."""
        context, cond = self.module.conditions(batch["ids"], batch["mask"], batch["codes"])  # [B, L, Dt], plan
        cond = cond if plan else None
        noise = torch.randn(batch["x0"].shape, generator=torch.Generator().manual_seed(0)).to(context)
        latent = render(
            self.dit,
            noise,
            context,
            torch.zeros_like(context),
            plan=cond,
            steps=steps,
            shift=self.args.shift,
            solver="euler",
            guidance=Guidance(text_scale=1.0, plan_scale=1.0),
        )
        return video_to_frames(self.vae.decode(latent))

    @torch.no_grad()
    def evaluate(self) -> dict:
        """World scores of held-out clips rendered with their ground-truth plans, and from text alone."""
        clips = eval_clips("heldout", self.args.eval_clips, self.args.seed)
        batch = {k: v.to(self.ctx.device) for k, v in self.encode_clips(clips).items()}
        self.module.eval()
        out = {}
        for name, plan in (("plan", True), ("text", False)):
            scores = world_score.score_many(list(self.sample(batch, plan)), clips)
            out.update({f"{name}_{k}": round(float(scores[k]), 4) for k in ("accuracy", "completeness", "fidelity")})
        self.module.train()
        return out

    def export(self, out: Path) -> None:
        out = Path(out)
        save_safetensors(
            {k: v.detach().contiguous() for k, v in self.dit.state_dict().items()}, out / "dit.safetensors"
        )
        save_branch(self.branch, out / "branch.safetensors")
        save_text_encoder(self.text, out / "text_encoder")
