"""Training stage `planner-sft`: supervised fine-tuning of a Tar-1.5B / Qwen2 planner on a prepared cache.

    python -m planx_core train --stage planner-sft --cache cache/ --base-planner models/planx/Tar-1.5B \\
        --out runs/planner --steps 3000 --global-batch 64 --lr 5e-5 --warmup 100 --cooldown 2500
    torchrun --standalone --nproc_per_node 8 -m planx_core train --stage planner-sft --cache cache/ \\
        --base-planner models/planx/Tar-1.5B --out runs/planner --steps 3000 --global-batch 64 --lr 5e-5

Sources: Tar (csuhan/Tar, trained with the HF Trainer: only the language model, bf16, lr 5e-5, global
batch 64, image tokens as generation targets inside the assistant turn, the loss masked elsewhere) and
Plan-X (arXiv 2511.17986, Fig. 2: the planner reads the scene, the motion and for image-to-video the
first frame's tokens, and writes the keyframes' TA-Tok tokens). The sequence is exactly what the runtime
planner is prompted with (`SemanticPlanner.build_prompt`: the system line with the keyframe count, fps,
rate, duration and grid; the cleaned scene and motion; the first frame's codes for a share `--i2v` of the
clips, drawn per clip) followed by the clip's keyframes (`<im_start><S2>` 81 `<I*>` `<im_end>` each, the
cached `keyframe_ids`). Loss: cross-entropy on the plan tokens only (`planner.PlannerObjective`).

`--base-planner` is a folder Load Planner reads (Tar's `llava_qwen` included) whose vocabulary already
has the plan tokens, or a plain Qwen2 folder: its vocabulary is then extended as Load Planner expects
(`planner.vocab.extend_vocabulary`, the `<I*>` input rows from the bundle's TA-Tok codebook when the
widths match). Every parameter of the language model trains; each decoder layer is an FSDP unit
(`--checkpointing` recomputes it); the engine's unsharded replica (evaluation, export) stays on the
CPU. Refused before loading: no cache, a planner whose image-token count is not the cache's codebook
size, a cache made with another TA-Tok than `--bundle`'s. Export: `<out>/planner/` (`save_planner`),
the folder Load Planner and `assemble --real --planner` load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..pipelines.planx import _clean as clean  # a caption as the runtime hands it to the planner (one rule)
from ..planner.model import SemanticPlanner
from ..planner.prompt import plan_ids
from ..planner.vocab import IM_START, scale_index
from .planner import IGNORE, PlannerObjective, pad
from .prepare_cache import CacheError, open_cache
from .stages import Stage, StageContext, StageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "added_tokens.json")


def has_plan_tokens(folder: Path) -> bool:
    """Does the folder's tokenizer already hold `<im_start>` (a Tar or Plan-X planner)? Read from the files."""
    return any(IM_START in (folder / n).read_text(errors="replace") for n in TOKENIZER_FILES if (folder / n).is_file())


class PlannerSFTStage(Stage):
    name = "planner-sft"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--cache", help="branch/planner-sft: the prepared cache folder (`planx_core prepare`)")
        parser.add_argument(
            "--base-planner", help="planner-sft: the planner folder to fine-tune (Tar-1.5B, or a Qwen2 LM folder)"
        )
        parser.add_argument(
            "--bundle", help="branch/planner-sft: the bundle the cache was prepared with (default: the manifest's)"
        )
        parser.add_argument(
            "--i2v",
            type=float,
            default=0.5,
            help="planner/planner-sft: share of sequences whose prompt holds the first frame's codes",
        )

    @classmethod
    def check_args(cls, args, world_size: int) -> None:
        if not args.cache or not args.base_planner:
            raise StageError("--stage planner-sft needs --cache (a prepare output) and --base-planner (a folder)")
        try:
            cache = open_cache(args.cache)
        except CacheError as err:
            raise StageError(f"--cache: {err}") from None
        if len(cache) == 0:
            raise StageError(f"--cache {args.cache}: holds no clips (see its dropped.json); prepare more videos")
        folder = Path(args.base_planner)
        if not (folder / "config.json").is_file():
            raise StageError(f"--base-planner {folder}: no config.json; pass the planner's folder (Tar-1.5B, Qwen2)")
        bundle = Path(args.bundle or cache.model["bundle"])
        if bundle.is_dir():
            cache.check_bundle(bundle)
        size = int(cache.model["codebook"]["size"])
        recorded = json.loads((folder / "config.json").read_text()).get("num_image_tokens")
        if has_plan_tokens(folder) and recorded is not None and int(recorded) != size:
            raise StageError(
                f"--base-planner {folder} writes {recorded} image tokens but the cache's TA-Tok has {size} codes: "
                f"fine-tune a planner of this TA-Tok, or prepare the clips with the TA-Tok of this planner"
            )
        if not 0.0 <= args.i2v <= 1.0:
            raise StageError(f"--i2v {args.i2v} must be within 0..1")

    def __init__(self, ctx: StageContext):
        super().__init__(ctx)
        a = self.args
        self.cache = open_cache(a.cache)
        self.planner = self._load(Path(a.base_planner))
        if self.planner.num_image_tokens != int(self.cache.model["codebook"]["size"]):
            raise StageError(
                f"--base-planner {a.base_planner} writes {self.planner.num_image_tokens} image tokens, the cache's "
                f"TA-Tok has {self.cache.model['codebook']['size']} codes; prepare with this planner's TA-Tok"
            )
        model = self.planner.model.float().train().requires_grad_(True)
        model.config.use_cache = False
        self.module = PlannerObjective(model, frozen_rows=[])
        s = self.cache.settings
        self.fps, self.rate, self.grid = float(s["fps"]), float(s["keyframe_rate"]), (int(s["grid"]), int(s["grid"]))
        self.duration = (int(s["frames"]) - 1) / self.fps

    def _load(self, folder: Path) -> SemanticPlanner:
        """The planner as Load Planner reads it; a plain Qwen2 folder gets the plan tokens first."""
        from ..planner.files import load_planner

        if has_plan_tokens(folder):
            return load_planner(folder)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ..planner.vocab import extend_vocabulary
        from ..tatok.files import load_tatok

        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        bundle = Path(self.args.bundle or self.cache.model["bundle"])
        codebook = load_tatok(bundle / "ta_tok.safetensors").codebook().detach()  # [N, D]
        vocab = extend_vocabulary(model, tokenizer, codebook.shape[0], codebook)
        return SemanticPlanner(model, tokenizer, vocab, name=folder.name)

    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "cache": self.cache.digest, "i2v": self.args.i2v}

    def shard_blocks(self, module: PlannerObjective) -> list:
        return list(module.model.model.layers)  # each decoder layer is an FSDP unit

    # -- data ------------------------------------------------------------------------------
    def sequence(self, index: int, i2v: bool) -> tuple[list[int], list[int]]:
        """(ids, labels) of clip `index`: the runtime's prompt, then its keyframes; labels IGNORE on the prompt."""
        clip = self.cache[index]
        codes, motion = clip.keyframe_ids, clean(clip.motion)  # [K, g*g], the motion text
        prompt = self.planner.build_prompt(
            clean(clip.scene),
            motion,
            num_keyframes=codes.shape[0],
            fps=self.fps,
            keyframe_rate=self.rate,
            grid=self.grid,
            duration=self.duration,
            first_frame_codes=codes[0] if i2v else None,
        )
        cues = self.planner.cues(motion, codes.shape[0], self.rate, self.duration)
        plan, labels = plan_ids(self.planner.vocab, codes, scale_index(self.grid), cues, IGNORE)
        return prompt + plan, [IGNORE] * len(prompt) + labels

    def _seed(self, *parts: int) -> int:
        return int(np.random.SeedSequence([self.args.seed, *parts]).generate_state(1)[0])

    def batch(self, step: int):
        """Global item (step * world + rank) * batch + i: clip `order[item % n]` of epoch `item // n`."""
        a, c, n = self.args, self.ctx, len(self.cache)
        first, rows, parts = (step * c.world_size + c.rank) * a.batch, [], []
        for item in range(first, first + a.batch):
            epoch, place = divmod(item, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self._seed(2, epoch)))
            rows.append(int(order[place]))
            i2v = np.random.default_rng(self._seed(4, item)).random() < a.i2v
            parts.append(self.sequence(rows[-1], i2v))
        inputs = pad(parts, self.planner.tokenizer.pad_token_id or 0)
        return {k: t.to(c.device) for k, t in inputs.items()}, rows

    # -- evaluation and export -------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Teacher-forced accuracy of the plan tokens (argmax over the `<I*>` logits) of the first clips."""
        vocab, model = self.planner.vocab, self.module.model
        device = next(model.parameters()).device  # the engine's replica: on the CPU, so it costs no GPU memory
        model.eval()
        hits = total = 0
        for index in range(min(self.args.eval_clips, len(self.cache))):
            inputs = pad([self.sequence(index, False)], self.planner.tokenizer.pad_token_id or 0)
            inputs = {k: t.to(device) for k, t in inputs.items()}
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits  # [1, S, V]
            image = logits[:, :-1, vocab.image_start : vocab.image_end].argmax(-1) + vocab.image_start  # [1, S-1]
            targets = inputs["labels"][:, 1:]  # [1, S-1]
            is_code = (targets >= vocab.image_start) & (targets < vocab.image_end)
            hits += int((image == targets)[is_code].sum())
            total += int(is_code.sum())
        model.train()
        return {"tf_code_acc": round(hits / max(total, 1), 4), "codes_scored": total}

    def export(self, out: Path) -> None:
        from ..planner.files import save_planner

        p = self.planner
        save_planner(SemanticPlanner(self.module.model, p.tokenizer, p.vocab, p.name), Path(out) / "planner")
