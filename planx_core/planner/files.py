"""Planner folders: load a Hugging Face causal LM folder with the plan vocabulary, save one, convert `.bin` releases.

Transformers' own `from_pretrained` on a checked folder (config.json, safetensors weights, a
tokenizer), never a pickle at run time; the vocabulary must carry Tar's plan tokens
(`vocab.PlanVocab`). Tar's released folders (github csuhan/Tar, Tar-1.5B) say
`model_type: llava_qwen`, the class of its LLaVA-based trainer; Tar itself loads the language
model with `Qwen2ForCausalLM`, and so does this loader: the config is read as a Qwen2 config and
vision-tower / projector weights, if any, are left out with a warning that names them. A folder
with only `pytorch_model*.bin` weights is refused with the command of `convert_bin_folder`
(`python -m planx_core convert-planner FOLDER`), which reads them once with
`torch.load(weights_only=True)` and writes safetensors beside them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import warnings
from pathlib import Path

import torch

from ..files.safetensors import (
    CheckpointError,
    check_safetensors_header,
    resolve_shards,
    save_safetensors,
    torch_load_reason,
)
from .decode import dtype_kwargs
from .model import _TOKENIZER_FILES, SemanticPlanner
from .vocab import PlanVocab

LLAVA_TYPES = {"llava_qwen": "qwen2"}  # Tar's trainer's model_type -> the language model transformers loads
_LLAVA_PARTS = ("model.vision_tower.", "model.mm_projector.", "model.vision_resampler.", "model.image_newline")
_CONVERT = "python -m planx_core convert-planner"


def _read_config(folder: Path) -> dict:
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
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a model config (a JSON {type(config).__name__}); re-copy the model folder")
    return config


def _check_config(folder: Path) -> dict:
    config = _read_config(folder)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    kind, archs = config.get("model_type"), config.get("architectures") or []
    causal = [a for a in archs if a.endswith(("ForCausalLM", "LMHeadModel"))]
    known = kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or kind in LLAVA_TYPES
    if not known or (archs and not causal):
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type {kind!r} / architectures {archs} is not a causal language "
            f"model transformers can load; a planner is a causal LM such as Qwen2ForCausalLM, or Tar's "
            f"llava_qwen (for a Qwen2-based checkpoint saved under another name, set model_type 'qwen2' and "
            f"architectures ['Qwen2ForCausalLM'] in config.json)"
        )
    return config


def language_model_config(config: dict, source: Path):
    """The transformers config of the language model: Tar's `llava_qwen` read as Qwen2 (LLaVA's `mm_*`
    fields dropped), None for a model_type transformers knows itself."""
    base = LLAVA_TYPES.get(config.get("model_type"))
    if base is None:
        return None
    from transformers import AutoConfig

    fields = {k: v for k, v in config.items() if not k.startswith("mm_") and k not in ("model_type", "architectures")}
    try:
        lm = AutoConfig.for_model(base, **fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{source / 'config.json'}: a {config['model_type']} config whose language-model fields are not a "
            f"valid {base} config ({e}); re-copy the model folder"
        ) from None
    lm.architectures = ["Qwen2ForCausalLM"]
    return lm


def _bin_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("pytorch_model*.bin"))


def _check_files(folder: Path) -> list[str]:
    """Check the weights and the tokenizer files; return the weight names of every shard."""
    if not any(folder.glob("*.safetensors")) and _bin_files(folder):
        names = [p.name for p in _bin_files(folder)]
        raise CheckpointError(
            f"{folder}: the weights are PyTorch pickles only ({', '.join(names[:3])}"
            f"{' ...' if len(names) > 3 else ''}), and Plan-X never unpickles weights at run time; convert them "
            f"once with `{_CONVERT} {folder}` (reads them with torch.load(weights_only=True) and writes "
            f"model.safetensors beside them)"
        )
    keys = []
    for shard in resolve_shards(folder):
        keys += [k for k in check_safetensors_header(shard) if k != "__metadata__"]
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise CheckpointError(
            f"{folder}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); copy the tokenizer "
            f"that was saved with the planner into the folder"
        )
    return keys


def _warn_llava_parts(folder: Path, keys: list[str]) -> None:
    extra = sorted(k for k in keys if k.startswith(_LLAVA_PARTS))
    if extra:
        parts = sorted({next(p for p in _LLAVA_PARTS if k.startswith(p)).strip(".") for k in extra})
        warnings.warn(
            f"{folder}: llava_qwen checkpoint: {len(extra)} weights of {', '.join(parts)} are not loaded; the "
            f"planner is the Qwen2 language model alone (as Tar loads it), images come in as TA-Tok tokens",
            stacklevel=3,
        )


_PROBE_TEXT = "Scene: A red cup, 24 fps; the woman drinks.\n<im_start><S2><I0><I1><im_end>"


def _load_tokenizer(folder: Path):
    """AutoTokenizer, unless it rebuilt tokenizer.json into something else; then the file as it is.

    transformers maps some model types (qwen2 among them) to their own tokenizer class whatever
    tokenizer_config.json says, which turns e.g. a word-level tokenizer into a broken BPE one.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError):  # a tokenizer class this transformers does not know
        tokenizer = None
    spec = folder / "tokenizer.json"
    if not spec.is_file():
        if tokenizer is None:
            raise CheckpointError(f"{folder}: transformers cannot load the tokenizer files; re-copy the tokenizer")
        return tokenizer
    reference = Tokenizer.from_file(str(spec)).encode(_PROBE_TEXT, add_special_tokens=False).ids
    if tokenizer is not None and tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"] == reference:
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
    from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such planner folder; put the planner's config.json, *.safetensors and "
            f"tokenizer files in one folder (models/planx/<name>)"
        )
    config = _check_config(folder)
    keys = _check_files(folder)
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
    options = dict(local_files_only=True, use_safetensors=True, **dtype_kwargs(dtype))
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    lm_config = language_model_config(config, folder)
    if lm_config is None:
        model = AutoModelForCausalLM.from_pretrained(folder, **options)
    else:
        _warn_llava_parts(folder, keys)
        model = _quietly(lambda: Qwen2ForCausalLM.from_pretrained(folder, config=lm_config, **options))
    return SemanticPlanner(model.to(device), tokenizer, vocab, name=name or folder.name)


def _quietly(load):
    """Run `load` with transformers' "weights not used" report off (the left-out weights were named above)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return load()
    finally:
        hf_logging.set_verbosity(level)


def save_planner(planner: SemanticPlanner, folder) -> Path:
    """Write the planner as a Hugging Face folder: config.json, model.safetensors, tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    planner.model.save_pretrained(folder)
    planner.tokenizer.save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- converting .bin releases


def _bin_shards(folder: Path) -> list[Path]:
    """The `.bin` shards of a folder: those its `pytorch_model.bin.index.json` lists, else every pytorch_model*.bin."""
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a valid shard index (needs a JSON 'weight_map'): {e}") from None
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{index}: lists shard(s) not in {folder}: {missing[:3]}; download every shard")
        return [folder / n for n in names]
    shards = _bin_files(folder)
    if not shards:
        raise CheckpointError(f"{folder}: no pytorch_model*.bin files to convert")
    return shards


def read_bin(path: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict read with `torch.load(weights_only=True)`: tensors and plain containers only."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # mmap needs the zip format; a legacy pickle is read whole
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError of torch's zip reader, EOFError, ...
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({torch_load_reason(e)}); only tensors and "
            f"plain containers are accepted: re-download the file if it is truncated"
        ) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a flat state dict of tensors (Hugging Face's pytorch_model*.bin layout)")
    return sd


def convert_bin_folder(src, dst=None) -> Path:
    """Write safetensors for a folder's `pytorch_model*.bin` weights, in `dst` (default: beside them).

    Shards stay shards (`model-0000i-of-0000n.safetensors` and an index); the config,
    tokenizer and other small files are copied when `dst` is another folder. Tensors that
    share storage (tied embeddings) are stored once each, as safetensors requires.
    """
    src = Path(src)
    dst = Path(dst) if dst is not None else src
    _read_config(src)
    shards = _bin_shards(src)
    dst.mkdir(parents=True, exist_ok=True)
    if dst.resolve() != src.resolve():
        for item in src.iterdir():
            if item.is_file() and not item.name.startswith("pytorch_model") and item.suffix != ".safetensors":
                shutil.copy2(item, dst / item.name)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        sd = read_bin(shard)
        save_safetensors(sd, dst / name, metadata={"planx_converted_from": shard.name})
        weight_map.update(dict.fromkeys(sd, name))
        total += sum(t.numel() * t.element_size() for t in sd.values())
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return dst


def convert_main(argv: list[str] | None = None) -> int:
    """`python -m planx_core convert-planner SRC [DST]`: 0 on success, 2 on a refused folder."""
    parser = argparse.ArgumentParser(
        prog=_CONVERT,
        description="Convert a planner folder's pytorch_model*.bin weights (e.g. a Tar release) to safetensors.",
    )
    parser.add_argument("src", help="the planner folder (config.json, pytorch_model*.bin, tokenizer files)")
    parser.add_argument("dst", nargs="?", help="output folder (default: write the safetensors into SRC)")
    args = parser.parse_args(argv)
    try:
        out = convert_bin_folder(args.src, args.dst)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('model*.safetensors*')))} in {out}")
    return 0
