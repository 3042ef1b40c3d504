"""Training stage `semgen-semantic`: SemanticGen's stage 1, the semantic generator, in the synthetic world.

SemanticGen (arXiv 2512.20619, Fig. 3(b)) trains the semantic generator last, on the compressed features of
the frozen encoder and compressor. Here it is trained on the compressor means of the `semgen-latent` run's pool
(`--latent-run`), with text dropout for guidance; or, with `--semantic-pools`, on pools it encodes itself,
`--order-pairs` of them minimal order pairs (the planner's lesson: the contrast of one scene in both stage orders
teaches the order of the text), and with `--semantic-cues` one text per keyframe (the scene and the stage of the
motion that steers it, `semanticgen.generator.keyframe_prompts`); with `--semantic-sequential` each step teaches
one keyframe, the ones before it given clean (`flow.noise_latents`' prefix), as `generate_semantics` samples them
one after another. Both are recorded for `assemble_semanticgen` in `semantic_generator.json` beside the exported
weights. Pools, text features and the latent run's pipeline come from `training.semanticgen`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import world
from ..files.atomic import write_text
from ..files.safetensors import CheckpointError, read_safetensors
from ..semanticgen.generator import first_keyframes, semantic_generator_config, to_latent
from ..semanticgen.model import SemanticGen
from ..wan.dit import WanModel
from ..wan.dit_files import save_dit
from ..world import score as world_score
from ..world.tiny import SHORT_WORLD
from .engine_eval import flow_losses
from .flow import Dropout, flow_loss
from .semanticgen import SemLatentStage, encode_features
from .stages import Stage, StageContext, StageError, run_file

OPTIONS_FILE = "semantic_generator.json"  # beside the export: {"semantic_cues": true, "semantic_sequential": true}
OPTIONS = ("semantic_cues", "semantic_sequential")  # the SemanticGenSpec fields a stage-1 run decides


def read_semantic_options(run: Path) -> dict[str, bool]:
    """The `OPTIONS` a `semgen-semantic` run's export was trained with (its `OPTIONS_FILE`; absent: all false)."""
    path = Path(run) / OPTIONS_FILE
    if not path.is_file():
        return dict.fromkeys(OPTIONS, False)
    try:
        data = json.loads(path.read_text())
        values = {name: data[name] for name in OPTIONS if name in data}
    except (ValueError, TypeError):
        values = {}
    if not values or not all(isinstance(v, bool) for v in values.values()):
        raise CheckpointError(
            f'{path}: expected {{"semantic_cues": true}} and/or {{"semantic_sequential": true}} (the run\'s export); '
            f"export the run again"
        )
    return {name: values.get(name, False) for name in OPTIONS}


class SemanticObjective(nn.Module):
    """Flow matching of the semantic generator on frozen compressor means z_sem `[B, K, gh, gw, D]`."""

    def __init__(self, model: WanModel, *, sequential: bool = False, prefix_noise: float = 0.0):
        super().__init__()
        self.model = model
        self.sequential = sequential
        self.prefix_noise = prefix_noise  # std of the noise on the given keyframes, so sampled ones are not new

    def forward(self, z, context, seed, text_p):
        gen = torch.Generator().manual_seed(int(seed))
        x0 = to_latent(z)  # [B, D, K, gh, gw]
        prefix = 0
        if self.sequential:  # teach keyframe k from the k before it: keyframes past k are not seen
            prefix = int(torch.randint(x0.shape[2], (1,), generator=gen))
            x0 = x0[:, :, : prefix + 1]  # [B, D, k + 1, gh, gw]
            context = first_keyframes(context, prefix + 1)
            if self.prefix_noise and prefix:
                jitter = torch.randn(x0[:, :, :prefix].shape, generator=gen).to(x0)  # [B, D, k, gh, gw]
                x0 = torch.cat([x0[:, :, :prefix] + self.prefix_noise * jitter, x0[:, :, prefix:]], dim=2)
        return flow_loss(
            self.model,
            x0,
            context,
            torch.zeros_like(context[:1]),
            None,
            gen,
            dropout=Dropout(float(text_p), 0.0, 0.0),
            shift=3.0,
            prefix=prefix,
        )


class SemSemanticStage(SemLatentStage):
    name = "semgen-semantic"
    find_unused_parameters = False

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument(
            "--latent-run",
            help="semgen-semantic: the finished `--stage semgen-latent` run folder, or a SemanticGen model folder "
            "with --semantic-pools",
        )
        parser.add_argument(
            "--semantic-pools",
            action="store_true",
            help="semgen-semantic: encode its own pools (--pool short, --long-pool long clips: the frozen encoder's "
            "features and the prompts) into --out instead of reading the --latent-run's",
        )
        parser.add_argument(
            "--semantic-cues",
            action="store_true",
            help="semgen-semantic, with --semantic-pools: each keyframe's tokens read their own text, the scene and "
            "the stage of the motion that steers that keyframe (the planner's keyframe-cue rule), so the order of "
            "the stages is given rather than learned; assemble records it as semantic_cues in semanticgen.json",
        )
        parser.add_argument(
            "--semantic-sequential",
            action="store_true",
            help="semgen-semantic: learn to write one keyframe after another, each from the clean keyframes before "
            "it (as the Plan-X planner writes its plan), instead of all keyframes at once; assemble records it as "
            "semantic_sequential in semanticgen.json and stage 1 then samples keyframe by keyframe",
        )
        parser.add_argument(
            "--prefix-noise",
            type=float,
            default=0.0,
            help="semgen-semantic, with --semantic-sequential: std of Gaussian noise added to the given keyframes "
            "in training (still at timestep 0), so the keyframes stage 1 sampled itself, never exact, are not "
            "new to it (default 0: the clean ones)",
        )

    @classmethod
    def check_args(cls, args, world_size: int) -> None:
        if not 0 <= args.order_pairs <= 1:
            raise StageError(f"--order-pairs is a share of the pools' clips: between 0 and 1, got {args.order_pairs}")
        if not args.prefix_noise >= 0:
            raise StageError(f"--prefix-noise is a standard deviation: 0 or more, got {args.prefix_noise}")
        if args.prefix_noise and not args.semantic_sequential:
            raise StageError(
                "--prefix-noise perturbs the keyframes a sequential stage 1 is given: add --semantic-sequential"
            )
        if args.semantic_cues and not args.semantic_pools:
            raise StageError("--semantic-cues puts one text per keyframe in this run's pools: add --semantic-pools")
        for option, given in (("--order-pairs", args.order_pairs), ("--long-movers", args.long_movers != 1)):
            if given and not args.semantic_pools:
                raise StageError(
                    f"{option} shapes the pools this run encodes: add --semantic-pools (the --latent-run's pools are "
                    "already made)"
                )

    def __init__(self, ctx: StageContext):
        Stage.__init__(self, ctx)
        a = self.args
        if not a.latent_run:
            raise StageError("--stage semgen-semantic needs --latent-run (the --out folder of `--stage semgen-latent`)")
        self.latent = SemanticGen.load(Path(a.latent_run), need_semantic=False)
        self.text, self.vae, self.encoder = self.latent.text, self.latent.vae, self.latent.encoder
        cfg = semantic_generator_config(self.latent.spec.sem_dim, text_dim=self.text.dim)
        torch.manual_seed(a.seed)
        self.module = SemanticObjective(WanModel(cfg), sequential=a.semantic_sequential, prefix_noise=a.prefix_noise)
        source = Path(a.latent_run)
        if a.semantic_pools:
            self.build_pools(self._encode_features, a.order_pairs)
            source = Path(a.out)
        self.pools = {name: self._means(source / f"pool_{name}.safetensors") for name in ("short", "long")}

    @torch.no_grad()
    def _encode_features(self, clips):
        return encode_features(clips, self.encoder, self.text, cues=self.args.semantic_cues)

    @torch.no_grad()
    def _means(self, path: Path) -> dict[str, torch.Tensor]:
        if not path.is_file():
            raise StageError(
                f"{path} is missing: --latent-run must be the folder of a `--stage semgen-latent` run, or add "
                f"--semantic-pools to encode this run's own pools"
            )
        pool = read_safetensors(path)
        z = self.latent.compressor(pool["feats"], sample=False).mean  # [N, K, gh, gw, D]
        return {"z": z, "ids": pool["ids"], "mask": pool["mask"]}

    def fingerprint(self) -> dict:
        a = self.args
        return {
            "stage": self.name,
            "seed": a.seed,
            "global_batch": a.batch * self.ctx.world_size,
            "latent_run": str(Path(a.latent_run).resolve()),
            "long_every": a.long_every,
            **({"semantic_pools": [a.pool, a.long_pool]} if a.semantic_pools else {}),
            **({"order_pairs": a.order_pairs} if a.order_pairs else {}),
            **({"long_movers": a.long_movers} if a.long_movers != 1 else {}),
            **({"semantic_cues": True} if a.semantic_cues else {}),
            **({"semantic_sequential": True} if a.semantic_sequential else {}),
            **({"prefix_noise": a.prefix_noise} if a.prefix_noise else {}),
        }

    def init_from(self, path: Path) -> None:
        self.module.model.load_state_dict(read_safetensors(run_file(path, "semantic_generator.safetensors")))

    def shard_blocks(self, module: nn.Module) -> list:
        return list(module.model.blocks)

    @torch.no_grad()
    def eval_losses(self, sigmas) -> dict[str, float]:
        """The flow loss of the semantic generator on the short pool's first 4 clips, at fixed sigmas (sequential:
        of the last keyframe, the ones before it given)."""
        rows = {k: v[:4].to(self.ctx.device) for k, v in self.pools["short"].items()}
        context = self.context(rows["ids"], rows["mask"])
        x0 = to_latent(rows["z"])  # [4, D, K, gh, gw]
        prefix = x0.shape[2] - 1 if self.args.semantic_sequential else 0
        return flow_losses(self.module.model, x0, context, seed=self.args.seed, sigmas=sigmas, prefix=prefix)

    def batch(self, step: int):
        b = self.draw(step)
        return {
            "z": b["z"],
            "context": self.context(b["ids"], b["mask"]),
            "seed": b["seed"],
            "text_p": self.args.text_dropout,
        }, []

    @torch.no_grad()
    def evaluate(self) -> dict:
        """World scores of held-out short clips from text alone through both stages (no ground truth in)."""
        clips = [
            world.make_clip(world.clip_seed(self.args.seed, 1, i), SHORT_WORLD, split="heldout")
            for i in range(self.args.eval_clips)
        ]
        options = {name: getattr(self.args, name) for name in OPTIONS}
        model = self.latent.with_semantic(self.module.model.eval()).with_spec(**options)
        frames = [
            model.generate(c.scene, c.motion, num_frames=SHORT_WORLD.num_frames, seed=i)[0] for i, c in enumerate(clips)
        ]
        scores = world_score.score_many(frames, clips)
        self.module.train()
        return {k: round(float(scores[k]), 4) for k in ("accuracy", "fidelity", "consistency")}

    def export(self, out: Path) -> None:
        save_dit(self.module.model, Path(out) / "semantic_generator.safetensors")
        options = {name: True for name in OPTIONS if getattr(self.args, name)}
        if options:
            write_text(Path(out) / OPTIONS_FILE, json.dumps(options) + "\n")
