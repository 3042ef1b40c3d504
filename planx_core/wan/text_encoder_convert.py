"""Convert Wan's umT5 encoder `models_t5_umt5-xxl-enc-bf16.pth` (or a transformers `.bin`) to safetensors, once.

Source: Wan2.2 `wan/modules/t5.py`: `T5EncoderModel` loads the file with a plain `torch.load` of
the encoder's `state_dict` (official names: `token_embedding`, `blocks.N.attn.q`, ...). Here it
is read with `torch.load(weights_only=True)` (tensors and plain containers only, memory-mapped),
renamed to transformers' T5 names (`text_encoder_files.canonical_names`; the layout ComfyUI's
umT5 files use, so the output is a ComfyUI-layout file), checked against the `UMT5EncoderModel`
its shapes imply, and written with the source file's name and layout in the metadata.
Everything at run time is safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..files.safetensors import CheckpointError, save_safetensors, torch_load_reason
from .text_encoder_files import canonical_names, check_encoder, infer_config

SOURCE_KEY = "planx_umt5_source"  # safetensors metadata: the converted file's name, its layout, the keys left out


def read_pickled_state(src: Path) -> dict[str, torch.Tensor]:
    """A flat state dict from a torch.save file, read with `torch.load(weights_only=True)`."""
    try:
        try:
            sd = torch.load(src, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # mmap needs torch's zip format; a legacy pickle is read whole
            if "mmap" not in str(e):
                raise
            sd = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{src}: no such file") from None
    except Exception as err:  # UnpicklingError, RuntimeError of torch's zip reader, EOFError, ...
        raise CheckpointError(
            f"{src}: cannot be read with torch.load(weights_only=True): {torch_load_reason(err)}. Only tensors and "
            f"plain containers are accepted (nothing else is unpickled); use Wan's models_t5_umt5-xxl-enc-bf16.pth "
            f"and re-download it if it is truncated"
        ) from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{src}: not a flat state dict of tensors (Wan's umT5 .pth is the encoder's state_dict)")
    return sd


def _read_source(src: Path) -> dict[str, torch.Tensor]:
    """One pickle, or every pytorch_model*.bin of a folder (a google/umt5-xxl release without safetensors)."""
    if not src.is_dir():
        return read_pickled_state(src)
    shards = sorted(src.glob("pytorch_model*.bin"))
    if not shards:
        raise CheckpointError(f"{src}: no pytorch_model*.bin files in this folder to convert")
    sd = {}
    for shard in shards:
        sd.update(read_pickled_state(shard))
    return sd


def convert_umt5_pth(src, dst, dtype: torch.dtype | None = None):
    """Convert a umT5 encoder pickle (or a folder of `pytorch_model*.bin` shards) to one safetensors file in
    transformers' names; returns its UMT5Config.

    `dtype` None keeps the stored dtypes (bfloat16 for Wan's file). Keys outside the encoder
    (a decoder, an LM head) are left out and listed in the `planx_umt5_source` metadata.
    """
    src, dst = Path(src), Path(dst)
    sd = _read_source(src)
    names, left_out, layout = canonical_names(sd.keys(), src)
    renamed = {names[k]: sd[k] for k in names}
    config = infer_config({k: tuple(v.shape) for k, v in renamed.items()}, src)
    check_encoder(renamed, config, src)
    if dtype is not None:
        renamed = {k: v.to(dtype) if v.is_floating_point() else v for k, v in renamed.items()}
    source = {"file": src.name, "layout": layout, "left_out": left_out}
    save_safetensors(renamed, dst, metadata={SOURCE_KEY: json.dumps(source)})
    return config


def convert_main(argv: list[str] | None = None) -> int:
    """`python -m planx_core convert-umt5 SRC DST [--dtype ...]`: 0 on success, 2 on a refused file."""
    parser = argparse.ArgumentParser(
        prog="python -m planx_core convert-umt5",
        description="Convert Wan's models_t5_umt5-xxl-enc-bf16.pth (or a umT5 pytorch_model.bin) to a "
        ".safetensors text encoder (transformers' names, ComfyUI's layout).",
    )
    parser.add_argument(
        "src", help="Wan's models_t5_umt5-xxl-enc-bf16.pth (the Wan2.2 release), or a folder of pytorch_model*.bin"
    )
    parser.add_argument(
        "dst", help="output .safetensors, e.g. ComfyUI/models/text_encoders/umt5-xxl-enc-bf16.safetensors"
    )
    parser.add_argument(
        "--dtype",
        default="keep",
        choices=["keep", "float32", "bfloat16", "float16"],
        help="storage dtype (default: as stored in the .pth)",
    )
    args = parser.parse_args(argv)
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    try:
        config = convert_umt5_pth(args.src, args.dst, dtype)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.dst}: umT5 encoder, {config.num_layers} blocks of {config.d_model}, {config.num_heads} heads, "
        f"vocabulary {config.vocab_size}; put the google/umt5-xxl tokenizer folder beside it as google/umt5-xxl"
    )
    return 0
