"""Planner folders: load a Hugging Face causal LM folder with the plan vocabulary, and save one.

Transformers' own `from_pretrained` on a checked folder (config.json, safetensors weights, a
tokenizer), never a pickle; the vocabulary must carry Tar's plan tokens (`vocab.PlanVocab`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..files.safetensors import CheckpointError, check_safetensors_header, resolve_shards
from .model import _TOKENIZER_FILES, SemanticPlanner
from .vocab import PlanVocab


def _check_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{folder}: no config.json; a planner folder holds config.json, *.safetensors and the "
            f"tokenizer files (save one with save_planner or copy the whole model folder)"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); re-copy the model folder") from None
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind, archs = config.get("model_type"), config.get("architectures") or []
    causal = [a for a in archs if a.endswith(("ForCausalLM", "LMHeadModel"))]
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (archs and not causal):
        raise CheckpointError(
            f"{path}: model_type {kind!r} / architectures {archs} is not a causal language model "
            f"transformers can load; a planner is a causal LM such as Qwen2ForCausalLM (for a "
            f"Qwen2-based checkpoint saved under another name, set model_type 'qwen2' and "
            f"architectures ['Qwen2ForCausalLM'] in config.json)"
        )
    return config


def _check_files(folder: Path) -> None:
    for shard in resolve_shards(folder):  # refuses .bin/.pt-only folders: "convert it to .safetensors first"
        check_safetensors_header(shard)
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(
            f"{folder}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); copy the tokenizer "
            f"that was saved with the planner into the folder"
        )


_PROBE_TEXT = "Scene: A red cup, 24 fps; the woman drinks.\n<im_start><S2><I0><I1><im_end>"


def _load_tokenizer(folder: Path):
    """AutoTokenizer, unless it rebuilt tokenizer.json into something else; then the file as it is.

    transformers maps some model types (qwen2 among them) to their own tokenizer class whatever
    tokenizer_config.json says, which turns e.g. a word-level tokenizer into a broken BPE one.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    spec = folder / "tokenizer.json"
    if not spec.is_file():
        return tokenizer
    reference = Tokenizer.from_file(str(spec)).encode(_PROBE_TEXT, add_special_tokens=False).ids
    if tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"] == reference:
        return tokenizer
    return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)


def load_planner(
    folder,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    name: str | None = None,
    attn_implementation: str | None = None,
) -> SemanticPlanner:
    """Load a local Hugging Face / Tar planner folder, checking it before the weights are read.

    `attn_implementation`: transformers' attention backend ("sdpa", "eager", "flash_attention_2");
    None keeps transformers' default."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such planner folder; put the planner's config.json, *.safetensors and "
            f"tokenizer files in one folder (models/planx/<name>)"
        )
    config = _check_config(folder)
    _check_files(folder)
    tokenizer = _load_tokenizer(folder)
    try:
        vocab = PlanVocab.from_tokenizer(tokenizer)
    except ValueError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    recorded = config.get("image_start_token_id")
    if recorded is not None and recorded != vocab.image_start:
        raise CheckpointError(
            f"{folder}: config.json says <I0> is id {recorded} but the tokenizer has it at "
            f"{vocab.image_start}; the tokenizer files belong to another planner"
        )
    backend = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_pretrained(
        folder, local_files_only=True, use_safetensors=True, dtype=dtype, **backend
    )
    return SemanticPlanner(model.to(device), tokenizer, vocab, name=name or folder.name)


def save_planner(planner: SemanticPlanner, folder) -> Path:
    """Write the planner as a Hugging Face folder: config.json, model.safetensors, tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planner.model.save_pretrained(folder)
    planner.tokenizer.save_pretrained(folder)
    return folder
