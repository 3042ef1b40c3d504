"""Training stage `semgen-latent` and the pools of both SemanticGen stages (the tiny SemanticGen of the toy world).

SemanticGen (arXiv 2512.20619, Fig. 3) trains in this order: (a) the latent generator, a video DiT
conditioned in-context on the compressed semantic features of the clip itself, together with the
compression MLP (KL-regularised); (b) the semantic generator, on the compressed features of a
frozen encoder and MLP. Here:

* `semgen-latent` starts from the embedded Plan-X DiT (`--init-from`, a folder with
  `dit.safetensors`), adds an in-context semantic branch (`semantic_branch`, mode "in_context")
  fed by a fresh compressor (`semantic_compressor`) of the frozen semantic encoder's features
  (`semantic_encoder`: the tiny Qwen2.5-VL-architecture tower), and trains the DiT, branch,
  compressor and its decoder with shifted-window attention (`--window` latent frames) on short
  clips and, every `--long-every` steps, on 4x longer clips (`semanticgen.LONG_WORLD`; `--long-movers 2`: only
  those where at least two objects move). Loss: flow matching
  + `--kl-weight` KL + `--rec-weight` feature reconstruction (+ `--colour-weight` times the cross-entropy of a
  linear read of each cell's code against its colour shares, `world.score.cell_colours`, so the plan carries what
  colour is where). The text encoder stays frozen. With `--init-from` a SemanticGen model folder instead, stage 2
  is fine-tuned from that folder's DiT and branch with its encoder and compressor frozen, so the folder's stage 1
  still fits (assemble the run with that folder as the semantic run).
* `semgen-semantic` (stage 1, `training.semanticgen_semantic`) draws on these pools and text features.

Both draw batches from pools encoded once into the run folder, as the `dit` stage does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .. import EMBEDDED, world
from ..files.safetensors import check_safetensors_header, read_safetensors, save_safetensors
from ..pipelines.bundle import read_spec
from ..plan.timing import TEMPORAL_FACTOR, keyframe_frames, keyframe_latent_frames
from ..semantic_branch import BranchConfig, SemanticBranch, load_branch
from ..semanticgen.compressor import (
    CompressorConfig,
    SemanticCompressor,
    SemanticDecoder,
    kl_loss,
    load_compressor,
)
from ..semanticgen.encoder import SemanticEncoder, tiny_vision_config
from ..semanticgen.encoder_files import load_semantic_encoder, save_semantic_encoder
from ..semanticgen.generator import keyframe_prompts
from ..semanticgen.model import FILES as SEMANTICGEN_FILES
from ..semanticgen.model import SemanticGen, SemanticGenSpec
from ..wan.dit import WanModel
from ..wan.text_encoder import join_prompt, load_text_encoder
from ..wan.vae_files import load_vae
from ..world import score as world_score
from ..world.clips import clip_video
from ..world.tiny import LONG_WORLD, SHORT_WORLD, render_clip_semantics
from .engine_dist import state_sha
from .engine_eval import flow_losses
from .flow import Dropout, flow_loss
from .stages import Stage, StageContext, StageError, run_file

POOL_STREAMS = {"short": 230, "long": 231}  # world.clip_seed streams of the two pools
SPEC = SemanticGenSpec()  # the trained layout: fps, keyframe stride
KEYFRAME_RATE = SPEC.fps / SPEC.keyframe_stride  # semantic keyframes a second (2 at 8 fps)


def semantic_keyframes(num_frames: int) -> tuple[list[float], list[int]]:
    """(times, video frames) of the semantic keyframes of a training clip (`plan.timing`, 2 fps at 8 fps)."""
    return keyframe_frames(num_frames, SPEC.fps, KEYFRAME_RATE)


def encode_features(
    clips: list[world.Clip], encoder: SemanticEncoder, text, video=None, cues: bool = False
) -> dict[str, torch.Tensor]:
    """Semantic features `[B, K, gh, gw, Fd]` of the ~2-fps keyframes and the prompts' ids / mask `[B, L]`; with
    `cues` one prompt per keyframe (`keyframe_prompts`, as stage 1 reads them at run time): `[B, K, L]`."""
    video = clip_video(clips) if video is None else video  # [B, 3, T, H, W]
    keys = semantic_keyframes(video.shape[2])[1]  # 2 fps at 8 fps
    frames = video[:, :, keys].transpose(1, 2).flatten(0, 1)  # [B*K, 3, H, W]
    feats = encoder.encode(frames).unflatten(0, (len(clips), len(keys)))  # [B, K, gh, gw, Fd]
    if cues:
        frames_count = video.shape[2]
        texts = [t for c in clips for t in keyframe_prompts(c.scene, c.motion, frames_count, SPEC.fps, KEYFRAME_RATE)]
    else:
        texts = [join_prompt(c.scene, c.motion) for c in clips]
    ids, mask = text.tokenize(texts)  # [B*K or B, L]
    rows = (len(clips), -1) if cues else (len(clips),)
    return {"feats": feats, "ids": ids.unflatten(0, rows), "mask": mask.unflatten(0, rows)}  # [B, (K,) L]


def encode_pool(clips: list[world.Clip], vae, encoder: SemanticEncoder, text) -> dict[str, torch.Tensor]:
    """Latents `[B, z, F, h, w]`, `encode_features` and each semantic cell's colour shares `[B, K, gh, gw, 7]`
    (`world.score.cell_colours` of the keyframes: the target of `--colour-weight`)."""
    video = clip_video(clips)  # [B, 3, T, H, W]
    latents = torch.cat([vae.encode(video[i : i + 4]) for i in range(0, len(clips), 4)])
    features = encode_features(clips, encoder, text, video)
    keys = semantic_keyframes(video.shape[2])[1]
    grid = tuple(features["feats"].shape[2:4])
    shares = [world_score.cell_colours(c.frames[keys], grid) for c in clips]  # [K, gh, gw, 7] each
    return {"x0": latents, **features, "colours": torch.from_numpy(np.stack(shares))}


def moving_objects(composition: world.Composition) -> int:
    """How many of a composition's objects move (take a verb other than "still") in some stage."""
    return len({act.obj for stage in composition.stages for act in stage if act.verb != "still"})


def pool_seeds(seed: int, stream: int, count: int, config: world.WorldConfig, movers: int = 1) -> list[int]:
    """The clip seeds of a pool: stream `stream` in order, keeping (with `movers` > 1) only the seeds whose clip
    moves at least that many objects, so a long pool can hold only clips where a second object moves too."""
    if movers <= 1:
        return [world.clip_seed(seed, stream, i) for i in range(count)]
    kept, tries = [], 0
    while len(kept) < count:
        if tries >= 50 * count:
            raise StageError(f"--long-movers {movers}: only {len(kept)} of {count} clips in {tries} draws; lower it")
        candidate = world.clip_seed(seed, stream, tries)
        tries += 1
        if moving_objects(world.make_clip(candidate, config).composition) >= movers:
            kept.append(candidate)
    return kept


class PoolMixin:
    """Short and long pools built once by rank 0 in the run folder; batches drawn by (seed, step, rank)."""

    def build_pools(self, encode, pairs: float = 0.0) -> dict[str, dict[str, torch.Tensor]]:
        """With `pairs`, that share of each 16 clips of a pool are minimal order pairs (`world.clips_with_pairs`)."""
        a = self.args
        sizes = {"short": (a.pool, SHORT_WORLD), "long": (a.long_pool, LONG_WORLD)}
        pools = {}
        for name, (count, config) in sizes.items():
            path = Path(a.out) / f"pool_{name}.safetensors"
            if self.ctx.rank == 0 and not path.is_file():
                movers = a.long_movers if name == "long" else 1
                seeds = pool_seeds(a.seed, POOL_STREAMS[name], count, config, movers)
                chunks = [seeds[i : i + 16] for i in range(0, count, 16)]  # 16 clips in memory at a time
                parts = [encode(world.clips_with_pairs(chunk, pairs, config)) for chunk in chunks]
                print(f"[pool] {name}: {count} clips encoded", flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_safetensors(
                    {k: torch.cat([p[k] for p in parts]) for k in parts[0]}, path, metadata={"clips": json.dumps(count)}
                )
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
            pools[name] = read_safetensors(path)
        return pools

    def draw(self, step: int) -> dict[str, torch.Tensor]:
        """One batch: long clips (a quarter of `--batch`, at least 1) every `--long-every` steps, else short."""
        a, c = self.args, self.ctx
        long = a.long_every > 0 and step % a.long_every == a.long_every - 1
        pool = self.pools["long" if long else "short"]
        size = max(1, a.batch // 4) if long else a.batch
        gen = torch.Generator().manual_seed(world.clip_seed(a.seed, 500 + c.rank, step))
        rows = torch.randint(0, len(next(iter(pool.values()))), (size,), generator=gen)
        batch = {k: v[rows].to(c.device) for k, v in pool.items()}
        batch["seed"] = int(torch.randint(0, 2**31, (1,), generator=gen))
        return batch


class LatentObjective(nn.Module):
    """Flow matching of the windowed in-context DiT + KL + feature reconstruction of the compressor."""

    def __init__(
        self,
        dit: WanModel,
        branch: SemanticBranch,
        compressor: SemanticCompressor,
        decoder: SemanticDecoder,
        window: int,
        colour_head: bool = False,
    ):
        super().__init__()
        self.dit, self.branch, self.compressor, self.decoder, self.window = dit, branch, compressor, decoder, window
        # training only, never saved: a linear read of each cell's colour shares from its compressed code
        self.colour_head = nn.Linear(compressor.config.dim, len(world.COLOURS) + 1) if colour_head else None

    def forward(
        self,
        x0,
        context,
        feats,
        seed,
        text_p,
        plan_p,
        kl_weight,
        rec_weight,
        emphasis=0.0,
        colours=None,
        colour_weight=0.0,
    ):
        gen = torch.Generator().manual_seed(int(seed))
        code = self.compressor(feats, sample=True)  # z, mean, logvar [B, K, gh, gw, D]
        k, gh, gw = feats.shape[1:4]
        times = semantic_keyframes((x0.shape[2] - 1) * TEMPORAL_FACTOR + 1)[0][:k]
        plan = self.branch.condition(
            code.z.flatten(1, 3), keyframe_latent_frames(times, SPEC.fps), (gh, gw)
        )  # tokens [B, K*gh*gw, dim]
        flow = flow_loss(
            self.dit,
            x0,
            context,
            torch.zeros_like(context[:1]),
            plan,
            gen,
            dropout=Dropout(float(text_p), float(plan_p), 0.0),
            shift=3.0,
            emphasis=float(emphasis),
            window=self.window,
        )
        rec = self.decoder.reconstruction_loss(code.z, feats)
        loss = flow + float(kl_weight) * kl_loss(code.mean, code.logvar) + float(rec_weight) * rec
        if self.colour_head is None:
            return loss
        logits = self.colour_head(code.z)  # [B, K, gh, gw, 7]
        return loss + float(colour_weight) * nn.functional.cross_entropy(logits.flatten(0, -2), colours.flatten(0, -2))


class SemLatentStage(PoolMixin, Stage):
    name = "semgen-latent"
    find_unused_parameters = True  # a step without the plan leaves the branch and compressor idle

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--vae", help="dit, semgen: trained VAE file or `--stage vae` run folder")
        parser.add_argument("--pool", type=int, default=2048, help="dit, semgen: short clips encoded once")
        parser.add_argument("--long-pool", type=int, default=256, help="semgen: long clips encoded once")
        parser.add_argument("--long-every", type=int, default=4, help="semgen: every Nth step trains on long clips")
        parser.add_argument(
            "--long-movers",
            type=int,
            default=1,
            choices=(1, 2),
            help="semgen: the long pool keeps only clips moving at least this many objects (2: a second object "
            "moves too; default 1: every clip)",
        )
        parser.add_argument("--window", type=int, default=2, help="semgen: attention window in latent frames")
        parser.add_argument("--sem-dim", type=int, default=8, help="semgen: compressed semantic width (8 or 64)")
        parser.add_argument(
            "--encoder-patch",
            type=int,
            default=8,
            choices=(4, 8),
            help="semgen-latent: the fresh tiny encoder's patch in pixels: 8 gives a 4x4 semantic grid of 16-px "
            "cells on 64x64 frames, 4 an 8x8 grid of 8-px cells (one per video token)",
        )
        parser.add_argument("--kl-weight", type=float, default=1e-3, help="semgen: weight of the KL term")
        parser.add_argument("--rec-weight", type=float, default=0.1, help="semgen: weight of feature reconstruction")
        parser.add_argument("--sem-dropout", type=float, default=0.15, help="semgen: steps without the semantic plan")
        parser.add_argument("--text-dropout", type=float, default=0.1, help="semgen: samples without text")
        parser.add_argument(
            "--object-weight",
            type=float,
            default=0.0,
            help="semgen-latent: weigh the flow loss towards positions that stand out from the clip's background "
            "(`flow.object_emphasis`; 0 = uniform)",
        )
        parser.add_argument(
            "--colour-weight",
            type=float,
            default=0.0,
            help="semgen-latent: weight of a term that makes each semantic cell's colour shares (the pool's "
            "`colours`) readable linearly from its compressed code, so the plan carries what colour is where "
            "(0 = off; trains the compressor, so not with a SemanticGen folder as --init-from)",
        )

    @classmethod
    def check_args(cls, args, world_size: int) -> None:
        if not 0.0 <= args.object_weight < float("inf"):  # NaN fails too
            raise StageError(
                f"--object-weight must be a finite number >= 0 (0 = uniform loss), got {args.object_weight}"
            )
        if not 0.0 <= args.colour_weight < float("inf"):
            raise StageError(f"--colour-weight must be a finite number >= 0 (0 = off), got {args.colour_weight}")
        if args.colour_weight and cls._model_folder(args.init_from):
            raise StageError(
                f"--colour-weight trains the compressor, which stays frozen when fine-tuning the SemanticGen folder "
                f"{args.init_from}: start from a Plan-X run or bundle (--init-from planx_core/embedded) instead"
            )
        pool = Path(args.out) / "pool_short.safetensors"
        if args.colour_weight and pool.is_file() and "colours" not in check_safetensors_header(pool):
            raise StageError(f"{pool} holds no colour shares (made before --colour-weight): pass a new --out")

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        a = self.args
        self.text = load_text_encoder(EMBEDDED / "text_encoder").eval().requires_grad_(False)
        self.vae = load_vae(run_file(a.vae, "vae.safetensors") if a.vae else EMBEDDED / "vae.safetensors").eval()
        torch.manual_seed(a.seed)
        self.encoder = SemanticEncoder(tiny_vision_config(a.encoder_patch)).eval().requires_grad_(False)
        self.encoder.load_state_dict(self._encoder_state(), strict=True)
        dit = WanModel(read_spec(EMBEDDED).dit)
        cfg = dit.config
        branch = SemanticBranch(
            BranchConfig(
                code_dim=a.sem_dim, dim=cfg.dim, num_heads=cfg.num_heads, num_layers=cfg.num_layers, mode="in_context"
            )
        )
        comp = CompressorConfig(feature_dim=self.encoder.out_dim, dim=a.sem_dim, hidden=256, name="semanticgen-tiny")
        self.module = LatentObjective(
            dit, branch, SemanticCompressor(comp), SemanticDecoder(comp), a.window, colour_head=a.colour_weight > 0
        )
        self.pools = self.build_pools(self._encode)

    def _encoder_state(self) -> dict:
        """The frozen tiny encoder: the one saved in the run folder, else the `--init-from` SemanticGen folder's,
        else this seed's fresh one (then saved: the pools and a resume use the same)."""
        path = Path(self.args.out) / "semantic_encoder.safetensors"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            source = self._model_folder(self.args.init_from)
            encoder = load_semantic_encoder(source / SEMANTICGEN_FILES["encoder"]) if source else self.encoder
            save_semantic_encoder(encoder, path)
        saved = load_semantic_encoder(path)  # the file carries its vision config
        if saved.config.patch_size != self.args.encoder_patch:
            raise StageError(
                f"{self.args.out}'s semantic encoder (or --init-from's) has {saved.config.patch_size}-px patches, not "
                f"{self.args.encoder_patch}: pass the --encoder-patch it was made with, or a new --out"
            )
        return saved.state_dict()

    @staticmethod
    def _model_folder(path) -> Path | None:
        """`path` when it is a SemanticGen model folder (it holds a stage-2 DiT), else None."""
        return Path(path) if path and (Path(path) / SEMANTICGEN_FILES["latent_dit"]).is_file() else None

    @torch.no_grad()
    def _encode(self, clips):
        return encode_pool(clips, self.vae, self.encoder, self.text)

    def fingerprint(self) -> dict:
        a = self.args
        return {
            **super().fingerprint(),
            "pool": a.pool,
            "long_pool": a.long_pool,
            "window": a.window,
            "sem_dim": a.sem_dim,
            "long_every": a.long_every,
            **({"long_movers": a.long_movers} if a.long_movers != 1 else {}),  # absent at 1: older runs resume
            **({"encoder_patch": a.encoder_patch} if a.encoder_patch != 8 else {}),
            **({"colour_weight": a.colour_weight} if a.colour_weight else {}),
        }

    def init_from(self, path: Path) -> None:
        """A Plan-X run or bundle (`dit.safetensors`: stage 2 starts from its DiT), or a SemanticGen model folder:
        stage 2 fine-tuned from its DiT and branch, its compressor frozen, so its stage 1 stays valid."""
        path = Path(path)
        if self._model_folder(path) is None:
            state = read_safetensors(run_file(path, "dit.safetensors"))
            self.module.dit.load_state_dict(state, strict=True)
            return
        m, files = self.module, SEMANTICGEN_FILES
        folder_encoder = load_semantic_encoder(path / files["encoder"])
        if state_sha(folder_encoder.state_dict()) != state_sha(self.encoder.state_dict()):  # it encoded the pools
            raise StageError(f"{self.args.out} holds another semantic encoder than {path}'s; pass a new --out")
        try:
            m.dit.load_state_dict(read_safetensors(path / files["latent_dit"]), strict=True)
            m.branch.load_state_dict(load_branch(path / files["branch"]).state_dict(), strict=True)
            m.compressor.load_state_dict(load_compressor(path / files["compressor"]).state_dict(), strict=True)
        except RuntimeError as err:
            raise StageError(f"{path} does not fit this run's model (--sem-dim {self.args.sem_dim}): {err}") from None
        m.compressor.requires_grad_(False)
        m.decoder.requires_grad_(False)  # reconstruction only shaped the compressor

    def shard_blocks(self, module: nn.Module) -> list:
        return list(module.dit.blocks)  # each DiT block is an FSDP unit

    @torch.no_grad()
    def eval_losses(self, sigmas) -> dict[str, float]:
        """The flow loss of the short pool's first 4 clips with their own compressed semantics, at fixed sigmas."""
        rows = {k: v[:4].to(self.ctx.device) for k, v in self.pools["short"].items()}
        m, feats = self.module, rows["feats"]
        code = m.compressor(feats, sample=False)
        k, gh, gw = feats.shape[1:4]
        times = semantic_keyframes((rows["x0"].shape[2] - 1) * TEMPORAL_FACTOR + 1)[0][:k]
        plan = m.branch.condition(code.z.flatten(1, 3), keyframe_latent_frames(times, SPEC.fps), (gh, gw))
        context = self.context(rows["ids"], rows["mask"])
        return flow_losses(m.dit, rows["x0"], context, plan=plan, seed=self.args.seed, sigmas=sigmas, window=m.window)

    @torch.no_grad()
    def context(self, ids, mask) -> torch.Tensor:
        """Text features of ids / mask `[B, L]` (or per keyframe `[B, K, L]`): `[B, (K,) L, Dt]`."""
        flat_ids, flat_mask = ids.flatten(0, -2), mask.flatten(0, -2)  # [N, L]
        out = self.text.model(input_ids=flat_ids, attention_mask=flat_mask).last_hidden_state  # [N, L, Dt]
        return (out * flat_mask[..., None]).unflatten(0, ids.shape[:-1])  # [B, (K,) L, Dt]

    def batch(self, step: int):
        a, b = self.args, self.draw(step)
        inputs = {
            "x0": b["x0"],
            "context": self.context(b["ids"], b["mask"]),
            "feats": b["feats"],
            "seed": b["seed"],
            "text_p": a.text_dropout,
            "plan_p": a.sem_dropout,
            "kl_weight": a.kl_weight,
            "rec_weight": a.rec_weight,
            "emphasis": a.object_weight,
        }
        if a.colour_weight:
            inputs.update(colours=b["colours"], colour_weight=a.colour_weight)
        return inputs, []

    @torch.no_grad()
    def evaluate(self) -> dict:
        """World scores of held-out short clips rendered from their own semantics, and without them."""
        clips = [
            world.make_clip(world.clip_seed(self.args.seed, 1, i), SHORT_WORLD, split="heldout")
            for i in range(self.args.eval_clips)
        ]
        model = self.pipeline()
        out = {}
        for name, use in (("sem", True), ("nosem", False)):
            frames = [render_clip_semantics(model, c, use_semantics=use, seed=i) for i, c in enumerate(clips)]
            scores = world_score.score_many(frames, clips)
            out.update({f"{name}_{k}": round(float(scores[k]), 4) for k in ("accuracy", "fidelity", "consistency")})
        self.module.train()
        return out

    def pipeline(self, semantic_dit: WanModel | None = None) -> SemanticGen:
        m = self.module.eval()
        spec = SemanticGenSpec(window=self.args.window, sem_dim=self.args.sem_dim)
        return SemanticGen(spec, self.encoder, m.compressor, m.dit, m.branch, semantic_dit, self.text, self.vae)

    def export(self, out: Path) -> None:
        out, m = Path(out), self.module
        self.pipeline().save(out)
        m.decoder.save(out / "semantic_decoder.safetensors")
        m.train()
