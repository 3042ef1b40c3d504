"""The planner training stage: the tiny Qwen2 planner learns to write ground-truth keyframe plans.

This project's own recipe after Plan-X (arXiv 2511.17986, Fig. 2: the planner reads the scene and motion texts,
and for image-to-video the first frame's tokens, and writes the keyframes' TA-Tok tokens) in Tar's token format
(`<im_start><S2>` 81 `<I*>` `<im_end>` per keyframe).

Sequence = `planner_prompt.prompt_ids(scene, motion, 5 keyframes, 8 fps, 2 per second, 9x9, first frame codes for a
share `--i2v` of the clips)` + the plan of the clip's 5 keyframes. The plan's codes are the ground-truth cell labels
(`--codes labels`, the default: no TA-Tok needed) or the TA-Tok's codes of the keyframe frames (`--codes tatok`).
Loss = cross-entropy on the plan tokens only (delimiters, scale token and codes; the prompt is not scored). The
planner's word rows and `<I*>` input rows are frozen (their gradient rows are zeroed and the embeddings get no
weight decay), so the tie to the TA-Tok (`tiny.tie`) holds; everything else trains.

The TA-Tok comes from `--tatok` (a file or a finished tatok run folder; pass it to stay tied to a trained
tokenizer), else a fresh one from the seed (its codebook = the normalised word rows). It is exported next to the
planner: `<out>/planner/` (save_planner) and `<out>/ta_tok.safetensors`.

Options (issue 14's recipe changes, each in the run fingerprint): `--planner-layers` (deepened from a shallower
`--init-from`: `load_deepened`), `--motion-weight`, `--still-weight`, `--order-pairs`, `--swap-pairs`, `--self-feed`,
`--move-weight` (a training-only head reads each keyframe's object moves from the state before its cells),
`--move-rows` (the plan itself says each object's move in words before the keyframe's cells: `planner.moves`), and
the keyframe cues (`--keyframe-cues`, `--cues-only`, `--first-cue-motion`; `planner_prompt.cue_rows`).

Metrics: `training.planner_eval` (teacher-forced and greedy, on unseen `train`-split clips and held-out ones).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import world
from ..planner.files import load_planner, save_planner
from ..planner.model import SemanticPlanner
from ..planner.moves import MoveRows
from ..planner.prompt import cue_rows, plan_ids, prompt_ids
from ..planner.vocab import scale_index
from ..tatok.files import load_tatok, save_tatok
from ..world import tiny
from ..world.labels import BACKGROUND_CODE, clip_images, clip_labels
from .planner_eval import PlannerEvaluation
from .planner_objective import PlannerObjective
from .planner_targets import IGNORE, motion_weights, move_targets, pad
from .stages import (
    Stage,
    StageContext,
    StageError,
    clip_seeds,
    resolve_tatok_file,
    zero_grad_rows,
)


def load_deepened(source: nn.Module, target: nn.Module) -> None:
    """Load a causal LM into one as wide and at least as deep (in place): source layer i goes to target layer
    i * depth_t // depth_s, every other target layer becomes an identity (its attention and MLP output
    projections zero, so its residual branches add nothing) and the rest is copied, so the target computes
    what the source does (depth up-scaling; the new layers learn from the first step)."""
    src, dst = source.model.layers, target.model.layers
    placed = {i * len(dst) // len(src): layer for i, layer in enumerate(src)}
    state = {k: v for k, v in source.state_dict().items() if ".layers." not in k}
    for j, layer in enumerate(dst):
        if j in placed:
            layer.load_state_dict(placed[j].state_dict())
            continue
        with torch.no_grad():
            layer.self_attn.o_proj.weight.zero_()  # [hidden, heads*head_dim]
            layer.mlp.down_proj.weight.zero_()  # [hidden, mlp]
    missing, unexpected = target.load_state_dict(state, strict=False)
    if unexpected or any(".layers." not in k for k in missing):
        raise StageError(f"planner --init-from: the source does not fit this planner ({unexpected or missing})")


class PlannerStage(PlannerEvaluation, Stage):
    name = "planner"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument(
            "--codes",
            choices=("labels", "tatok"),
            default="labels",
            help="planner: ground-truth plans from the cell labels, or from TA-Tok encoding",
        )
        parser.add_argument(
            "--i2v",
            type=float,
            default=0.5,
            help="planner: share of sequences whose prompt holds the first frame's codes",
        )
        parser.add_argument("--eval-decode", type=int, default=2, help="planner: clips decoded greedily per eval")
        parser.add_argument(
            "--motion-weight",
            type=float,
            default=1.0,
            help="planner: loss weight of the plan cells that change from the previous keyframe (where objects "
            "appear and move; 1 = a plain mean over the plan tokens)",
        )
        parser.add_argument(
            "--still-weight",
            type=float,
            default=1.0,
            help="planner: loss weight of the object and wall cells that stay as they were (objects the text keeps "
            "still; with --motion-weight alone a spurious move costs less than a missed one; 1 = plain)",
        )
        parser.add_argument(
            "--order-pairs",
            type=float,
            default=0.0,
            help="planner: share of each batch drawn as minimal order pairs (the same scene, its stages in two "
            "orders: 'right, then up' and 'up, then right'), so the plan must follow the order of the text; "
            "semgen-semantic with --semantic-pools: the same share of its pools' clips",
        )
        parser.add_argument(
            "--swap-pairs",
            type=float,
            default=0.0,
            help="planner: share of each batch drawn as minimal binding pairs (two objects, one start, each "
            "object's actions given to the other: `world.swap_pair`), so the plan must move the object the text "
            "names and keep the other where the text keeps it",
        )
        parser.add_argument(
            "--pair-contrast",
            type=float,
            default=0.0,
            help="planner: weight of a contrast on the batch's minimal pairs (--order-pairs, --swap-pairs): each "
            "text's own plan must be likelier than its partner's plan under it (-log sigmoid of the difference "
            "of the two plans' log-probabilities), so the plan that moves the wrong object, or moves them in the "
            "wrong order, loses (0 = off)",
        )
        parser.add_argument(
            "--planner-layers",
            type=int,
            default=tiny.PLANNER_LAYERS,
            help="planner: decoder layers of the planner (4 shipped). With --init-from a shallower planner, its "
            "layers are spread over the deeper one and the new layers start as identities (their output "
            "projections zero), so training starts from the source's plans",
        )
        parser.add_argument(
            "--move-weight",
            type=float,
            default=0.0,
            help="planner: weight of an auxiliary loss (training only, not exported) that asks the state just "
            "before each keyframe's cells which way every object moves into it (0 = off)",
        )
        parser.add_argument(
            "--move-rows",
            type=float,
            default=0.0,
            metavar="W",
            help="planner: before each keyframe's cells (after its cue) the plan gets a move row, one word per "
            "object of keyframe 0 saying which way it goes (`planner.moves`), so where an object goes is one "
            "decision and its cells follow it; W weighs those words in the loss (recorded as move_rows in "
            "config.json; the runtime writes the likeliest words; 0 = off)",
        )
        parser.add_argument(
            "--blind-cues",
            type=float,
            default=0.0,
            metavar="P",
            help="planner, with --move-rows and --keyframe-cues: a share P of the clips is read with blank cues and "
            "its move words given but not scored, so the cells learn to follow the words rather than the cue "
            "(0 = off)",
        )
        parser.add_argument(
            "--keyframe-cues",
            type=int,
            default=0,
            metavar="N",
            help="planner: feed each keyframe's stage of the motion text, N ids long (padded), right before its "
            "codes (`keyframe_cues`: the stages share the video equally), so each keyframe is written under the "
            "stage that steers it; recorded in the exported config.json, and the runtime feeds the same cues "
            "(0 = off; 24 holds every PlanShapes stage)",
        )
        parser.add_argument(
            "--cues-only",
            action="store_true",
            help="planner, with --keyframe-cues: leave the prompt's Motion line out, so the motion reaches the "
            "planner only as each keyframe's cue and a combination of stages it never saw together is not new "
            "to it (recorded as motion_in_prompt false in config.json; the runtime builds the same prompt)",
        )
        parser.add_argument(
            "--first-cue-motion",
            action="store_true",
            help="planner, with --keyframe-cues: keyframe 0's cue is the whole motion text instead of empty, so a "
            "text-to-video start leaves room for every stage (recorded as first_cue_motion in config.json)",
        )
        parser.add_argument(
            "--self-feed",
            type=float,
            default=0.0,
            help="planner: share of plan codes fed back from the model's own draws while training (scheduled "
            "sampling against exposure bias; 0 = teacher forcing only)",
        )

    @classmethod
    def check_args(cls, args, world_size: int) -> None:
        if not 0 <= args.self_feed <= 1:
            raise StageError(f"--self-feed is a share of the plan codes: between 0 and 1, got {args.self_feed}")
        for flag, value in (("--motion-weight", args.motion_weight), ("--still-weight", args.still_weight)):
            if not value >= 1:
                raise StageError(f"{flag} weighs plan cells up: 1 or more, got {value}")
        shares = {"--order-pairs": args.order_pairs, "--swap-pairs": args.swap_pairs, "--blind-cues": args.blind_cues}
        for flag, share in shares.items():
            if not 0 <= share <= 1:
                raise StageError(f"{flag} is a share of each batch: between 0 and 1, got {share}")
        losses = {
            "--pair-contrast": args.pair_contrast,
            "--move-rows": args.move_rows,
            "--move-weight": args.move_weight,
        }
        for flag, value in losses.items():
            if value < 0:
                raise StageError(f"{flag} weighs a loss: 0 (off) or more, got {value}")
        if args.pair_contrast and not (args.order_pairs or args.swap_pairs):
            raise StageError("--pair-contrast contrasts the batch's minimal pairs: add --swap-pairs or --order-pairs")
        if args.blind_cues and not (args.move_rows and args.keyframe_cues):
            raise StageError("--blind-cues blanks the cues for the move words: add --move-rows 10 --keyframe-cues 24")
        if args.keyframe_cues < 0:
            raise StageError(
                f"--keyframe-cues is a number of ids per keyframe: 0 (off) or more, got {args.keyframe_cues}"
            )
        for flag, on in (("--cues-only", args.cues_only), ("--first-cue-motion", args.first_cue_motion)):
            if on and not args.keyframe_cues:
                raise StageError(f"{flag} gives the motion through the keyframe cues: add --keyframe-cues 24")
        if args.planner_layers < 1:
            raise StageError(f"--planner-layers is a number of decoder layers: 1 or more, got {args.planner_layers}")

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        a = self.args
        if a.codes == "tatok" and not a.tatok:
            raise StageError(
                "--codes tatok encodes the plans with a trained TA-Tok: pass --tatok runs/<tatok run> "
                "(or use --codes labels)"
            )
        model, self.tokenizer, self.vocab = tiny.build_planner(a.seed, a.planner_layers)
        if a.tatok:
            self.tatok = load_tatok(resolve_tatok_file(a.tatok))
        else:
            self.tatok = tiny.build_tatok(tiny.anchor_rows(model, self.tokenizer), a.seed).requires_grad_(False)
        self.tatok.eval().to(ctx.device)
        tiny.tie(model, self.tokenizer, self.vocab, self.tatok)
        self.model = model.to(ctx.device)
        self.model.config.keyframe_cues = a.keyframe_cues  # the runtime feeds cues when this is set
        self.model.config.motion_in_prompt = not a.cues_only  # and leaves the Motion line out when false
        self.model.config.first_cue_motion = a.first_cue_motion  # and cues keyframe 0 with the whole motion
        self.moves = MoveRows.for_tokenizer(self.tokenizer, BACKGROUND_CODE) if a.move_rows else None
        self.model.config.move_rows = self.moves.to_config() if self.moves else None  # the runtime writes them too
        codes = range(self.vocab.image_start, self.vocab.image_end)
        rows = tiny.frozen_rows(self.tokenizer, self.vocab)
        self.module = PlannerObjective(self.model, rows, codes, a.self_feed, a.move_weight, a.pair_contrast)
        self._eval = None

    # -- state -------------------------------------------------------------------------
    def shard_blocks(self, module: PlannerObjective) -> list:
        return list(module.model.model.layers)  # each decoder layer is an FSDP unit

    def after_backward(self, module: PlannerObjective) -> None:
        zero_grad_rows(module.model.get_input_embeddings().weight, module.frozen_rows)

    def init_from(self, path: Path) -> None:
        path = Path(path)
        folder = path / "planner" if (path / "planner").is_dir() else path
        source = load_planner(folder).model
        have, want = len(source.model.layers), len(self.model.model.layers)
        if have > want:
            raise StageError(
                f"--init-from {path}: its planner has {have} decoder layers, more than --planner-layers {want}; "
                f"pass --planner-layers {have} (or more)"
            )
        load_deepened(source, self.model)
        tiny.tie(self.model, self.tokenizer, self.vocab, self.tatok)  # re-tie to this run's TA-Tok

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            **{f"planner.{k}": v for k, v in self.model.state_dict().items()},
            **{f"tatok.{k}": v for k, v in self.tatok.state_dict().items()},
        }

    def load_state_tensors(self, sd: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict({k[8:]: v for k, v in sd.items() if k.startswith("planner.")}, strict=True)
        self.tatok.load_state_dict({k[6:]: v for k, v in sd.items() if k.startswith("tatok.")}, strict=True)

    def fingerprint(self) -> dict:
        a = self.args
        fed = {"self_feed": a.self_feed} if a.self_feed else {}  # absent when off: older runs keep resuming
        extra = {"motion_weight": a.motion_weight} if a.motion_weight != 1 else {}
        extra |= {"still_weight": a.still_weight} if a.still_weight != 1 else {}
        extra |= {k: getattr(a, k) for k in ("order_pairs", "swap_pairs", "pair_contrast") if getattr(a, k)}
        extra |= {"planner_layers": a.planner_layers} if a.planner_layers != tiny.PLANNER_LAYERS else {}
        extra |= {"move_weight": a.move_weight} if a.move_weight else {}
        extra |= {"keyframe_cues": a.keyframe_cues} if a.keyframe_cues else {}
        extra |= {"cues_only": True} if a.cues_only else {}
        extra |= {"first_cue_motion": True} if a.first_cue_motion else {}
        extra |= {k: getattr(a, k) for k in ("move_rows", "blind_cues") if getattr(a, k)}
        return {**super().fingerprint(), "codes": a.codes, "i2v": a.i2v, "tatok": self.tatok.digest(), **fed, **extra}

    # -- data --------------------------------------------------------------------------
    def plan_codes(self, clips: list[world.Clip]) -> torch.Tensor:
        """Ground-truth codes of each clip's keyframes: `[B, K, g*g]`."""
        keys, grid = tiny.VIDEO.keyframes, tiny.VIDEO.grid
        if self.args.codes == "labels":
            return torch.stack([clip_labels(c, keys, grid, self.args.label_threshold) for c in clips])  # [B, K, g*g]
        images = torch.cat([clip_images(c, keys) for c in clips]).to(self.ctx.device)  # [B*K, 3, H, W]
        return self.tatok.encode(images, grid=grid).cpu().reshape(len(clips), len(keys), -1)  # [B, K, g*g]

    def sequence(
        self, clip: world.Clip, codes: torch.Tensor, i2v: bool, blind: bool = False
    ) -> tuple[list[int], list[int]]:
        """(ids, labels) of prompt + plan; `codes` `[K, g*g]`; labels are IGNORE on the prompt. `blind`
        (--blind-cues): every cue blank and the move words given unscored, so the cells learn from the words."""
        v, grid = tiny.VIDEO, (tiny.VIDEO.grid, tiny.VIDEO.grid)
        prompt = prompt_ids(
            self.tokenizer,
            self.vocab,
            clip.scene,
            clip.motion,
            num_keyframes=codes.shape[0],
            fps=v.fps,
            keyframe_rate=v.keyframe_rate,
            grid=grid,
            duration=v.duration,
            first_frame_codes=codes[0] if i2v else None,
            motion_line=not self.args.cues_only,
        )
        length, first = self.args.keyframe_cues, self.args.first_cue_motion
        motion = "" if blind else clip.motion
        cues = cue_rows(self.tokenizer, motion, codes.shape[0], v.keyframe_rate, v.duration, length, first)
        moves = self.moves.truth(codes, self.vocab.image_start, v.grid, IGNORE) if self.moves else ()
        moves = [(ids, [IGNORE] * len(ids)) for ids, _ in moves] if blind else moves
        plan, labels = plan_ids(self.vocab, codes, scale_index(grid), cues, IGNORE, moves)
        return prompt + plan, [IGNORE] * len(prompt) + labels

    def batch(self, step: int):
        a, c = self.args, self.ctx
        seeds = clip_seeds(a.seed, self.name, step, c.rank, c.world_size, a.batch)
        clips = self.training_clips(seeds)
        codes = self.plan_codes(clips)  # [B, K, g*g]
        i2v = [np.random.default_rng([s, 1]).random() < a.i2v for s in seeds]
        blind = [np.random.default_rng([s, 2]).random() < a.blind_cues for s in seeds]
        rivals = self.rivals(len(seeds))  # [R]: the item whose text each rival row reads
        texts = [*range(len(clips)), *rivals.tolist()]  # the clip whose text every row reads
        plans = torch.cat([codes, codes[rivals ^ 1]])  # [B+R, K, g*g]: the rows' plans, a rival its partner's
        sequences = [self.sequence(clips[b], plans[r], i2v[b], blind[b]) for r, b in enumerate(texts)]
        inputs = pad(sequences, self.tokenizer.pad_token_id)
        if len(rivals):
            inputs["rivals"] = rivals
        image = range(self.vocab.image_start, self.vocab.image_end)
        if a.motion_weight != 1 or a.still_weight != 1 or a.move_rows:
            inputs["weights"] = motion_weights(inputs["labels"], plans, image, a.motion_weight, a.still_weight)
        if a.move_rows:  # the move words are the only labels that are neither codes nor delimiters
            inputs["weights"][self.moves.is_word(inputs["labels"])] = a.move_rows
        if a.move_weight:
            inputs["moves"], inputs["move_at"] = move_targets(inputs["labels"], plans, image)
        return {k: t.to(c.device) for k, t in inputs.items()}, seeds

    def rivals(self, n: int) -> torch.Tensor:
        """With --pair-contrast: the items of a batch of `n` that are in a minimal pair, each read again with its
        partner's plan (item b's partner is b ^ 1) as an extra row after the batch `[R]`; empty otherwise."""
        a = self.args
        paired = world.paired_items(n, a.order_pairs, a.swap_pairs)[1] if a.pair_contrast else 0
        return torch.arange(paired)

    def training_clips(self, seeds: list[int]) -> list[world.Clip]:
        """One clip per seed, `--order-pairs` of them as order pairs and `--swap-pairs` as binding pairs
        (`world.clips_with_pairs`)."""
        return world.clips_with_pairs(seeds, self.args.order_pairs, swap=self.args.swap_pairs)

    def export(self, out: Path) -> None:
        save_planner(SemanticPlanner(self.model, self.tokenizer, self.vocab, "planshapes-tiny"), Path(out) / "planner")
        save_tatok(self.tatok, Path(out) / "ta_tok.safetensors", source={"stage": self.name, "tied_to": "planner/"})
        self.model.train()
