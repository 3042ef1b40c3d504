"""Training stage `branch`: a Plan-X semantic branch on a frozen Wan DiT from the user's file, on a prepared cache.

    python -m planx_core prepare VIDEOS --bundle BUNDLE --out cache/ --device cuda --dtype bfloat16
    python -m planx_core train --stage branch --cache cache/ --dit wan2.2_ti2v_5B_fp16.safetensors \\
        --out runs/branch --steps 4000 --lr 1e-4 --checkpointing
    torchrun --standalone --nproc_per_node 8 -m planx_core train --stage branch --cache cache/ --dit ... \\
        --out runs/branch --steps 4000 --global-batch 8 --lr 1e-4 --checkpointing

Sources: Plan-X (arXiv 2511.17986): a zero-initialised semantic branch trained beside a frozen DiT on
ground-truth plans (TA-Tok codes of the clip's keyframes), with text dropout so the plan alone can carry
the video and plan dropout so both unconditional branches of the guidance exist; Wan 2.2 (rectified flow,
TI2V: latent frame 0 is the clean image latent at timestep 0). The recipe is `flow` (as the tiny `dit`
stage), the options are the dit stage's (`--text-dropout-early/-late`, `--switch`, `--plan-dropout`,
`--first-frame`, `--train-shift`), the engine is `engine` (torchrun + FSDP2 + DCP).

What is read: the cache (`prepare.open_cache`: latents, first-frame latents, unpadded umT5 features,
keyframe ids and times), the DiT file in any layout `wan.dit_files.load_dit` reads (official, ComfyUI,
diffusers; fp16, bf16, fp8 converted at read), and from the bundle the cache was made with (`--bundle`,
default the manifest's) the TA-Tok codebook and the text encoder, once, for the empty prompt's features
(`empty_text.safetensors` in the run folder). Refused before anything is loaded (`check_args`): a cache
made with other encoders than `--bundle`'s, a DiT whose latent channels, text width or patch do not fit
the cache. The DiT is frozen and `replica = False`: each block is an FSDP unit (stored in `--base-dtype`),
the branch (fp32 master weights) stays with the root; `--checkpointing` recomputes each block,
`--precision bf16` computes in bf16. A batch holds clips of one size bucket (drawn per step for all ranks);
clip i of global step s is global item (s * world + rank) * batch + i, so any number of ranks with the same
global batch sees the same clips and noise. Export: `branch.safetensors` (`semantic_branch.save_branch`),
what Inject 3D RoPE Guidance, `assemble --real` and `generate` load.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..files.safetensors import read_safetensors, resolve_shards, save_safetensors
from ..plan.timing import keyframe_latent_frames
from ..semantic_branch import MODES, BranchConfig, SemanticBranch, load_branch, save_branch
from ..wan.configs import DiTConfig
from ..wan.dit import WanModel
from .engine_eval import flow_losses
from .flow import add_flow_arguments, drop_text, noise_latents
from .prepare_cache import CacheError, PreparedCache, file_fingerprint, open_cache
from .stages import Stage, StageContext, StageError, run_file

TI2V_CHANNELS = 48  # Wan 2.2 TI2V-5B reads the 48-channel Wan 2.2 VAE latent and takes a clean image latent as frame 0
EMPTY_TEXT = "empty_text.safetensors"
BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def is_ti2v(config: DiTConfig) -> bool:
    """A TI2V DiT (Wan 2.2 5B): 48 latent channels in and out, frame 0 pinned to the image latent when one is given."""
    return config.in_dim == config.out_dim == TI2V_CHANNELS


def _bundle(args, cache: PreparedCache) -> Path:
    return Path(args.bundle or cache.model["bundle"])


def _blocks(text: str | None, layers: int) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise StageError(f"--branch-blocks {text!r}: write block numbers like 0,5,10 (0..{layers - 1})") from None


class _WholeSchedule:
    """The sampler's stand-in for a plan in previews: on at every step (the plan itself is made in `velocity`)."""

    def active(self, sigma: float, shift: float) -> bool:
        return True


class _Velocity:
    """`render`'s model in previews: the sharded objective's `velocity`, the plan built inside it."""

    def __init__(self, objective, vectors: torch.Tensor, frames: list[float], grid: tuple[int, int]):
        self.objective, self.vectors, self.frames, self.grid = objective, vectors, frames, grid
        self.config = objective.dit.config

    def __call__(self, x, t, context, plan=None):
        vectors = self.vectors if plan is not None else None
        return self.objective.velocity(x, t, context, vectors, self.frames, self.grid)  # [B, C, F, H, W]


class BranchObjective(nn.Module):
    """`forward(x0, first, context, empty, vectors, seeds, ...) -> flow loss` of a frozen DiT with a trained branch."""

    def __init__(self, dit: WanModel, branch: SemanticBranch, shift: float, ti2v: bool):
        super().__init__()
        self.dit, self.branch, self.shift, self.ti2v = dit, branch, float(shift), ti2v

    def velocity(self, x_t, t, context, vectors=None, frames=None, grid=None):
        """The DiT's velocity `[B, C, F, H, W]`, with the plan of codebook vectors `[B, P, code_dim]` when given."""
        plan = None if vectors is None else self.branch.condition(vectors, frames, grid)
        return self.dit(x_t, t, context, plan=plan)

    def forward(self, x0, first, context, empty, vectors, seeds, keep_plan, text_p, first_p, frames, grid):
        """x0 `[B, C, F, H, W]`, first `[B, C, 1, H, W]`, context `[B, L, D]`, empty `[1, L, D]`, vectors
        `[B, P, code_dim]`; item i draws its noise, text dropout and pinning from `seeds[i]`."""
        parts = []
        for i, seed in enumerate(seeds):
            gen = torch.Generator().manual_seed(int(seed))
            pin = (torch.rand(1, generator=gen) < first_p) & self.ti2v  # [1]
            clean = torch.cat([first[i : i + 1], x0[i : i + 1, :, 1:]], dim=2) if bool(pin) else x0[i : i + 1]
            sample = noise_latents(clean, gen, shift=self.shift, pin_first=pin)  # one item's x_t [1, C, F, H, W]
            parts.append((sample, drop_text(context[i : i + 1], empty, text_p, gen)))  # text [1, L, D]
        x_t, t, target, weight = (
            torch.cat([getattr(s, k) for s, _ in parts]) for k in ("x_t", "t", "target", "weight")
        )
        text = torch.cat([c for _, c in parts])  # [B, L, D]
        velocity = self.velocity(x_t, t, text, vectors if keep_plan else None, frames, grid)  # [B, C, F, H, W]
        err = (velocity.float() - target.float()) ** 2 * weight  # [B, C, F, H, W]
        return err.sum() / weight.expand_as(err).sum().clamp_min(1.0)


def base_dtype(precision: str, base: str, device: torch.device) -> torch.dtype:
    """Storage of the frozen DiT blocks: `--base-dtype`, or under `auto` bfloat16 when the compute is bf16
    (`--precision bf16`, or `auto` on CUDA), else float32."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    auto = "bfloat16" if precision == "bf16" else "float32"
    return BASE_DTYPES[auto if base == "auto" else base]


def branch_objective(dit: WanModel, code_dim: int, args) -> tuple[BranchObjective, BranchConfig]:
    """The stage's module: `dit` frozen (its root parts made float32, its blocks left as stored) and a fresh
    branch for plans of `code_dim` vectors, seeded by `--seed` (`--branch-mode`, `--branch-blocks`,
    `--train-shift`); also what `benchmarks/bench_train_branch_5b.py` trains."""
    dit.requires_grad_(False)
    for part in (dit.patch_embedding, dit.text_embedding, dit.time_embedding, dit.time_projection, dit.head):
        part.float()  # the root's FSDP unit (with the branch) is float32; the blocks stay in their dtype
    cfg = dit.config
    config = BranchConfig(
        code_dim=code_dim,
        dim=cfg.dim,
        num_heads=cfg.num_heads,
        num_layers=cfg.num_layers,
        mode=args.branch_mode,
        blocks=_blocks(args.branch_blocks, cfg.num_layers),
    )
    torch.manual_seed(args.seed)
    return BranchObjective(dit, SemanticBranch(config), args.train_shift, is_ti2v(cfg)), config


class BranchStage(Stage):
    name = "branch"
    replica = False  # the frozen DiT is sharded, never copied; evaluation runs on every rank
    find_unused_parameters = True  # a dropped plan leaves the branch without gradients that step
    forward_methods = ("velocity",)

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--cache", help="branch: the prepared cache folder (`python -m planx_core prepare`)")
        parser.add_argument("--dit", help="branch: the Wan DiT .safetensors (official, ComfyUI or diffusers layout)")
        parser.add_argument("--bundle", help="branch: the bundle the cache was prepared with (default: the manifest's)")
        parser.add_argument("--branch-mode", choices=MODES, default="cross_attn", help="branch: how plans enter")
        parser.add_argument("--branch-blocks", help="branch: DiT blocks with a plan attention, e.g. 0,2,4 (all)")
        parser.add_argument(
            "--base-dtype",
            choices=("auto", *BASE_DTYPES),
            default="auto",
            help="branch: storage of the frozen DiT blocks (auto: bfloat16 under --precision bf16, else float32)",
        )
        parser.add_argument("--preview-steps", type=int, default=20, help="branch: sampling steps of a preview")
        add_flow_arguments(parser)

    @classmethod
    def check_args(cls, args: argparse.Namespace, world_size: int) -> None:
        """Refuse, from headers and the manifest only: no cache, a cache of other encoders or sizes, a DiT that
        does not fit it, probabilities outside [0, 1]."""
        if not args.cache or not args.dit:
            raise StageError("--stage branch needs --cache (a prepare output folder) and --dit (the Wan DiT file)")
        try:
            cache = open_cache(args.cache)
        except CacheError as err:
            raise StageError(f"--cache: {err}") from None
        if len(cache) == 0:
            raise StageError(f"--cache {args.cache}: holds no clips (see its dropped.json); prepare more videos")
        bundle = _bundle(args, cache)
        if not bundle.is_dir():
            raise StageError(f"--bundle {bundle}: no such folder; pass the bundle the cache was prepared with")
        cache.check_bundle(bundle)  # CacheError: another VAE, text encoder or TA-Tok; names the fix
        from ..pipelines.real_bundle import dit_config

        if not Path(args.dit).exists():
            raise StageError(f"--dit {args.dit}: no such file; pass the Wan DiT .safetensors")
        cfg, m = dit_config(Path(args.dit)), cache.model
        multiple = [m["spatial_factor"] * cfg.patch_size[1], m["spatial_factor"] * cfg.patch_size[2]]
        checks = [
            (
                cfg.in_dim == m["latent_channels"],
                f"the cache holds {m['latent_channels']}-channel latents but the DiT reads {cfg.in_dim}: prepare "
                f"the clips with the VAE made for this DiT (--bundle), or pass the DiT of this VAE",
            ),
            (
                cfg.text_dim == m["text_dim"],
                f"the cache's text features are {m['text_dim']} wide, the DiT reads {cfg.text_dim}: prepare with "
                f"this DiT's text encoder",
            ),
            (
                list(m["multiple"]) == multiple,
                f"the cache's sizes are multiples of {m['multiple']}, this DiT's patch needs {multiple}: prepare "
                f"again with a bundle of this DiT",
            ),
        ]
        for name in ("text_dropout_early", "text_dropout_late", "plan_dropout", "first_frame"):
            value = getattr(args, name)
            checks.append((0.0 <= value <= 1.0, f"--{name.replace('_', '-')} {value} must be within 0..1"))
        for ok, message in checks:
            if not ok:
                raise StageError(message)
        blocks = _blocks(args.branch_blocks, cfg.num_layers)
        if blocks and not all(0 <= b < cfg.num_layers for b in blocks):
            raise StageError(f"--branch-blocks {args.branch_blocks}: this DiT has blocks 0..{cfg.num_layers - 1}")

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        from ..tatok.files import load_tatok
        from ..wan.dit_files import load_dit

        a = self.args
        self.cache = open_cache(a.cache)
        self.bundle = _bundle(a, self.cache)
        base = base_dtype(a.precision, a.base_dtype, ctx.device)
        self.empty = self._empty_text().to(ctx.device)  # [1, text_len, D]; the text encoder is freed before the DiT
        dit = load_dit(a.dit, dtype=base)  # on the CPU: the engine moves it while sharding
        self.codebook = load_tatok(self.bundle / "ta_tok.safetensors").codebook().detach().float()  # [N, code_dim]
        self.module, self.branch_config = branch_objective(dit, self.codebook.shape[1], a)
        self.ti2v = self.module.ti2v
        s = self.cache.settings
        self.grid = (int(s["grid"]), int(s["grid"]))
        self.buckets: dict[tuple[int, int], list[int]] = {}
        for i, clip in enumerate(self.cache.clips):
            self.buckets.setdefault((int(clip["width"]), int(clip["height"])), []).append(i)
        self.bucket_keys = sorted(self.buckets)

    def _empty_text(self) -> torch.Tensor:
        """The empty prompt's umT5 features `[1, text_len, D]` (what text dropout trains toward and the runtime's
        negative), encoded once by rank 0 with the bundle's text encoder into the run folder."""
        from ..wan.text_encoder import join_prompt, load_text_encoder

        path = Path(self.args.out) / EMPTY_TEXT
        if self.ctx.rank == 0 and not path.is_file():
            dtype = getattr(torch, self.cache.settings.get("dtype", "float32"))
            encoder = load_text_encoder(self.bundle / "text_encoder", dtype=dtype, device=self.ctx.device)
            with torch.no_grad():
                empty = encoder([join_prompt("", "")]).float().cpu()  # [1, text_len, D]
            del encoder
            if self.ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            save_safetensors({"empty": empty.contiguous()}, path, metadata={"bundle": str(self.bundle)})
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        return read_safetensors(path)["empty"]

    def fingerprint(self) -> dict:
        shards = resolve_shards(self.args.dit)  # a file, an .index.json or a folder of shards (diffusers)
        dit = [{k: v for k, v in file_fingerprint(p).items() if k != "mtime_ns"} for p in shards]
        branch = json.loads(json.dumps(self.branch_config.to_dict()))  # as the checkpoint stores it (lists)
        return {**super().fingerprint(), "cache": self.cache.digest, "dit": dit, "branch": branch}

    def init_from(self, path: Path) -> None:
        """Start from an earlier branch file (or the run folder that exported one) for this DiT."""
        source = load_branch(run_file(path, "branch.safetensors"))
        if source.config != self.branch_config:
            raise StageError(f"--init-from {path}: a branch for {source.config}, this run trains {self.branch_config}")
        self.module.branch.load_state_dict(source.state_dict())

    def shard_blocks(self, module: BranchObjective) -> list:
        return list(module.dit.blocks)  # each frozen DiT block is an FSDP unit; the branch stays with the root

    # -- data ------------------------------------------------------------------------------
    def clips(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Stacked tensors of cache clips of one bucket: x0, first, context (padded to text_len), vectors."""
        items = [self.cache[i] for i in indices]
        length = self.empty.shape[1]
        context = torch.zeros(len(items), length, self.empty.shape[2])  # [B, text_len, D]
        for row, item in enumerate(items):
            context[row, : min(len(item.text), length)] = item.text[:length]
        ids = torch.stack([item.keyframe_ids.flatten() for item in items])  # [B, K * g*g]
        return {
            "x0": torch.stack([item.latent for item in items]),  # [B, C, F, H, W]
            "first": torch.stack([item.first_latent for item in items]),  # [B, C, 1, H, W]
            "context": context,
            "vectors": self.codebook[ids],  # [B, K * g*g, code_dim]
            "frames": keyframe_latent_frames(
                items[0].keyframe_times.tolist(), float(self.cache.settings["fps"]), self.cache.model["temporal_factor"]
            ),
        }

    def _seed(self, *parts: int) -> int:
        return int(np.random.SeedSequence([self.args.seed, *parts]).generate_state(1)[0])

    def batch(self, step: int):
        a, c = self.args, self.ctx
        gen = torch.Generator().manual_seed(self._seed(1, step))  # the same on every rank: bucket and plan dropout
        sizes = torch.tensor([len(self.buckets[k]) for k in self.bucket_keys], dtype=torch.float)
        key = self.bucket_keys[int(torch.multinomial(sizes, 1, generator=gen))]
        keep_plan = float(torch.rand(1, generator=gen)) >= a.plan_dropout
        members, first = self.buckets[key], (step * c.world_size + c.rank) * a.batch
        rows, seeds = [], []
        for item in range(first, first + a.batch):
            epoch, place = divmod(item, len(members))
            order = torch.randperm(len(members), generator=torch.Generator().manual_seed(self._seed(2, epoch)))
            rows.append(members[int(order[place])])
            seeds.append(self._seed(3, step, item))
        inputs = self.clips(rows)
        frames = inputs.pop("frames")
        inputs = {k: v.to(c.device) for k, v in inputs.items()}
        text_p = a.text_dropout_early if step < a.switch else a.text_dropout_late
        inputs.update(empty=self.empty, seeds=seeds, keep_plan=keep_plan, text_p=text_p, frames=frames, grid=self.grid)
        inputs.update(first_p=a.first_frame)
        return inputs, rows

    # -- evaluation and export -------------------------------------------------------------
    @torch.no_grad()
    def eval_losses(self, sigmas) -> dict[str, float]:
        """Flow loss at fixed sigmas and noise of the first bucket's first 2 clips, with their text and plans."""
        rows = self.clips(self.buckets[self.bucket_keys[0]][:2])
        frames = rows.pop("frames")
        rows = {k: v.to(self.ctx.device) for k, v in rows.items()}

        def model(x_t, t, context, plan=None):
            return self.module.velocity(x_t, t, context, rows["vectors"], frames, self.grid)  # [B, C, F, H, W]

        return flow_losses(model, rows["x0"], rows["context"], seed=self.args.seed, sigmas=sigmas)

    @torch.no_grad()
    def preview(self, out: Path, step: int) -> list[Path]:
        """The first clip of the first bucket, fixed noise (seed 0), the bundle's sampling (at most
        `--preview-steps` steps): [its VAE reconstruction | rendered with its plan and text | from the text
        alone] as an mp4 and its plan's picture, under `out/previews/` (rank 0 writes; every rank renders)."""
        from ..diffusion.rendering import render
        from ..diffusion.sampling import Guidance
        from ..files.video import video_to_frames, write_png, write_video
        from ..pipelines.bundle import read_spec
        from ..plan.core import CodebookId, make_plan
        from ..plan.picture import code_colours, plan_picture
        from ..wan.vae_files import load_vae

        rows = self.clips(self.buckets[self.bucket_keys[0]][:1])
        frames = rows.pop("frames")
        rows = {k: v.to(self.ctx.device) for k, v in rows.items()}
        spec, vectors = read_spec(self.bundle), rows["vectors"]

        model = _Velocity(self.module, vectors, frames, self.grid)
        noise = torch.randn(rows["x0"].shape, generator=torch.Generator().manual_seed(0)).to(rows["x0"])
        s = spec.sampling
        options = dict(steps=min(s.steps, self.args.preview_steps), shift=s.shift, solver=s.solver, schedule=s.schedule)
        first = rows["first"] if self.ti2v else None
        latents = [rows["x0"]] + [
            render(
                model,
                noise,
                rows["context"],
                self.empty,
                plan=_WholeSchedule() if with_plan else None,
                guidance=Guidance(text_scale=s.text_scale, plan_scale=1.0),
                first_frame_latent=first,
                **options,
            )
            for with_plan in (True, False)
        ]  # 3 x [1, C, F, H, W]
        if self.ctx.rank != 0:
            return []
        vae = load_vae(self.bundle / "vae.safetensors").to(self.ctx.device).eval()
        videos = [video_to_frames(vae.decode(z.float(), chunked=True))[0] for z in latents]  # 3 x [T, H, W, 3]
        del vae
        clip, meta, folder = self.cache[self.buckets[self.bucket_keys[0]][0]], self.cache.model, Path(out) / "previews"
        book = CodebookId(
            name=meta["codebook"]["name"], size=meta["codebook"]["size"], digest=meta["codebook"]["digest"]
        )
        plan = make_plan(
            clip.keyframe_ids,
            times=clip.keyframe_times.tolist(),
            fps=float(self.cache.settings["fps"]),
            num_frames=int(clip.meta["frames"]),
            width=int(clip.meta["width"]),
            height=int(clip.meta["height"]),
            codebook=book,
            grid=self.grid,
        )
        return [
            write_video(np.concatenate(videos, axis=2), folder / f"step_{step:06d}.mp4", plan.fps),
            write_png(plan_picture(plan, code_colours(self.codebook)), folder / f"step_{step:06d}_plan.png"),
        ]

    def export_state(self, out: Path, state: dict[str, torch.Tensor]) -> None:
        branch = SemanticBranch(self.branch_config)
        branch.load_state_dict({k[len("branch.") :]: v.float() for k, v in state.items() if k.startswith("branch.")})
        save_branch(branch, Path(out) / "branch.safetensors")
        info = {"dit": str(self.args.dit), "cache": str(self.args.cache), "ti2v": self.ti2v, "bundle": str(self.bundle)}
        (Path(out) / "branch.json").write_text(json.dumps(info, indent=1) + "\n")


__all__ = ["BranchObjective", "BranchStage", "base_dtype", "branch_objective", "is_ti2v"]
