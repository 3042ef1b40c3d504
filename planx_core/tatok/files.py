"""TA-Tok files: the safetensors layout, loading and saving, and the converter from Tar's `ta_tok.pth`.

Source: Tar (github csuhan/Tar), `TextAlignedTokenizer.from_checkpoint`: the released file is
`{"model": {"args": {...}, "sd": state_dict}}`, a pickle. It is read once, by the converter, with
`torch.load(weights_only=True)` (Tar's EasyDict args allow-listed through a stand-in); everything
at run time is safetensors. Key names are Tar's, minus the parts encoding never uses (see
`TAR_EXTRA_PREFIXES` and `TAR_EXTRA_KEYS`: the de-tokenizer, the teacher, the position-id buffer
and the stochastic quantiser's learnable `stochastic_temperature_inv`, present in some releases).
Config comes from the file's metadata, else from the tensor shapes. An optional colour table
(`planx_tatok_colours`: a "#rrggbb" per code and the codebook hash it was measured for) gives the
plan pictures and the editor a meaningful colour per code; `load_tatok` sets it as `colour_table`
when the hash matches the loaded codebook (None otherwise), `save_tatok` writes it back.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import torch

from ..files.modules import config_in_metadata, save_module
from ..files.safetensors import (
    LORA_KEY,
    CheckpointError,
    check_keys,
    check_safetensors_header,
    read_safetensors,
    refuse_non_float,
    save_safetensors,
    torch_load_reason,
)
from .model import PathLike, TATok, TATokConfig

CONFIG_KEY = "planx_tatok"  # safetensors metadata: the TATokConfig as JSON
SOURCE_KEY = "planx_tatok_source"  # safetensors metadata: the converted file's name, Tar args, dropped keys
COLOURS_KEY = "planx_tatok_colours"  # safetensors metadata: {"codebook": hash, "colours": {code: "#rrggbb"}, "source"}
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")
TAR_EXTRA_PREFIXES = ("teacher", "decoder.", "decode_task_layer.")  # parts of ta_tok.pth that encoding never uses
_POSITION_IDS = "encoder.embeddings.position_ids"  # a non-persistent arange buffer, if a file has it
# the learnable temperature of Tar's stochastic quantiser (training only; the lookup at inference is the argmax)
_TEMPERATURE = "bottleneck.regularizer.stochastic_temperature_inv"
TAR_EXTRA_KEYS = (_POSITION_IDS, _TEMPERATURE)  # single keys of a Tar state dict that encoding never uses
_KNOWN_HEADS = {1152: 16}  # SigLIP so400m; heads cannot be read from shapes
_KNOWN_IMAGE = {(14, 27): 384}  # (patch, patch grid) -> input size; 378..391 px all give 27 patches of 14
_CONVERT_CMD = "python -m planx_core convert-tatok ta_tok.pth ta_tok.safetensors"
# --------------------------------------------------------------------------- state dicts and shapes


def strip_tar_extras(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Drop the parts of a Tar TA-Tok state dict that encoding never uses; return (kept, dropped count per part)."""
    kept, dropped = {}, collections.Counter()
    for key, value in sd.items():
        part = next((p for p in TAR_EXTRA_PREFIXES if key.startswith(p)), None)
        if part is None and key in TAR_EXTRA_KEYS:
            part = key
        if part is None:
            kept[key] = value
        else:
            dropped[part.rstrip(".")] += 1
    return kept, dict(dropped)


@lru_cache(maxsize=8)
def expected_shapes(config: TATokConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of `TATok(config).state_dict()`, built on the meta device."""
    with torch.device("meta"):
        model = TATok(config, attn="eager")
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _layer_indices(keys) -> set[int]:
    return {int(m.group(1)) for k in keys if (m := re.match(r"^encoder\.encoder\.layers\.(\d+)\.", k))}


def infer_config(
    sd: Mapping[str, torch.Tensor], source: PathLike | None = None, num_heads: int | None = None, **overrides
) -> TATokConfig:
    """A `TATokConfig` from a TA-Tok state dict's shapes (the real so400m shapes give the real config)."""
    where = f"{source}: " if source else ""
    need = (
        "encoder.embeddings.patch_embedding.weight",
        "encoder.embeddings.position_embedding.weight",
        "encoder.encoder.layers.0.mlp.fc1.weight",
        "bottleneck.in_linear.weight",
        "bottleneck.regularizer.embedding.weight",
    )
    absent = [k for k in need if k not in sd]
    if absent:
        raise CheckpointError(
            f"{where}cannot read the TA-Tok sizes: keys {absent} are missing; is this a complete "
            f"TA-Tok file? Convert Tar's ta_tok.pth with `{_CONVERT_CMD}`"
        )
    patch = tuple(sd[need[0]].shape)
    if len(patch) != 4:
        raise CheckpointError(
            f"{where}encoder patch embedding has shape {list(patch)}, not a Conv2d [hidden, 3, "
            f"patch, patch]: this is a SigLIP2 NaFlex layout, TA-Tok uses the fixed-resolution "
            f"SigLIP layout (siglip2-so400m-patch14-384)"
        )
    hidden, grid = patch[0], math.isqrt(sd[need[1]].shape[0])
    heads = num_heads or _KNOWN_HEADS.get(hidden)
    if heads is None:
        raise CheckpointError(
            f"{where}encoder width {hidden} is not a known SigLIP size, so its number of attention "
            f"heads is unknown; re-save the file with save_tatok (it records the config), pass a "
            f"TATokConfig, or give the number of heads (convert-tatok --num-heads)"
        )
    values = dict(
        hidden_size=hidden,
        intermediate_size=sd[need[2]].shape[0],
        num_hidden_layers=max(_layer_indices(sd)) + 1,
        num_attention_heads=heads,
        patch_size=patch[2],
        image_size=_KNOWN_IMAGE.get((patch[2], grid), grid * patch[2]),
        use_head="encoder.head.probe" in sd,
        bottleneck_dim=sd[need[3]].shape[0],
        codebook_size=sd[need[4]].shape[0],
    )
    base = TATokConfig()
    name = base.name if all(getattr(base, k) == v for k, v in values.items()) else "ta-tok-custom"
    return TATokConfig(**{**values, "name": name, **overrides})


def check_tatok_state_dict(sd: Mapping[str, torch.Tensor], config: TATokConfig, source: PathLike | None = None) -> None:
    """Raise a CheckpointError naming the missing, unexpected and mis-shaped keys for `TATok(config)`."""
    check_keys(
        sd,
        expected_shapes(config),
        f"{source or 'checkpoint'}: does not fit the TA-Tok config {config.name!r} (hidden {config.hidden_size}, "
        f"{config.num_hidden_layers} layers, {config.patch_grid}x{config.patch_grid} patches, codebook "
        f"{config.codebook_size}x{config.bottleneck_dim}):",
        f"The file is damaged or is not a TA-Tok tokenizer; re-convert Tar's ta_tok.pth with "
        f"`{_CONVERT_CMD}`, or pick the tokenizer file that belongs to this model.",
    )


_DIT = re.compile(
    r"^(model\.diffusion_model\.|diffusion_model\.)?(blocks\.\d+\.(self_attn|cross_attn|attn1|ffn)|"
    r"head\.modulation|time_embedding\.|condition_embedder\.)"
)


def describe_foreign(keys, metadata: Mapping[str, str]) -> str | None:
    """If a file is clearly another Plan-X/ComfyUI model, say what it is and where it goes."""
    keys = list(keys)
    if "planx_semantic_branch" in metadata:
        return "a Plan-X semantic-branch file; load it with the semantic-branch loader"
    if any(LORA_KEY.search(k) for k in keys):
        return "a LoRA (low-rank adapter); put it in models/loras and apply it with a LoRA loader"
    if any(_DIT.match(k) for k in keys):
        return "a Wan DiT (diffusion model); put it in models/diffusion_models and load it with the DiT loader"
    if not any(k.startswith(("encoder.embeddings.", "bottleneck.regularizer.")) for k in keys):
        return (
            f"not a TA-Tok tokenizer: none of its keys look like TA-Tok weights (encoder.embeddings.*, "
            f"bottleneck.regularizer.embedding.weight); first keys: {keys[:5]}"
        )
    return None


# --------------------------------------------------------------------------- files


def save_tatok(model: TATok, path: PathLike, source: Mapping | None = None) -> None:
    """Write a TA-Tok as safetensors with its config (and optional provenance and colour table) in the metadata."""
    extra = {} if source is None else {SOURCE_KEY: json.dumps(source, default=str)}
    table = getattr(model, "colour_table", None)
    if table:
        extra[COLOURS_KEY] = json.dumps({"codebook": model.digest(), "colours": {str(k): v for k, v in table.items()}})
    save_module(model.state_dict(), path, key=CONFIG_KEY, config=model.config.to_dict(), metadata=extra)


def colour_table(metadata: Mapping[str, str], path: PathLike, codebook_size: int, digest: str) -> dict | None:
    """{code: "#rrggbb"} from a file's colour table, or None: no table, or one measured for another codebook
    (the hash differs: the codebook was retrained after the colours were measured)."""
    raw = config_in_metadata(metadata, COLOURS_KEY, path, "write the colour table again")
    if raw is None or raw.get("codebook") != digest:
        return None
    colours = raw.get("colours")
    ok = isinstance(colours, dict) and all(
        str(k).isdigit() and int(k) < codebook_size and isinstance(v, str) and _HEX.match(v) for k, v in colours.items()
    )
    if not ok:
        raise CheckpointError(
            f"{path}: the '{COLOURS_KEY}' metadata must map codes 0..{codebook_size - 1} to \"#rrggbb\" colours; "
            f"write the colour table again"
        )
    return {int(k): v.lower() for k, v in colours.items()}


def write_colour_table(path: PathLike, colours: Mapping[int, str], digest: str, source: str = "") -> None:
    """Rewrite a TA-Tok file with a colour per code in its metadata (for the codebook with hash `digest`).
    Every tensor and every other metadata entry is written back unchanged."""
    meta = dict(_header(path).get("__metadata__") or {})
    meta.pop("format", None)
    meta[COLOURS_KEY] = json.dumps(
        {"codebook": digest, "colours": {str(k): colours[k] for k in sorted(colours)}, "source": source}
    )
    tensors = read_safetensors(path)
    temporary = Path(f"{path}.tmp")
    save_safetensors(tensors, temporary, metadata=meta)
    os.replace(temporary, path)


def _header(path: PathLike) -> dict:
    try:
        return check_safetensors_header(path)
    except CheckpointError as err:
        if "not safetensors" in str(err):
            raise CheckpointError(f"{err}. For Tar's ta_tok.pth run `{_CONVERT_CMD}` once") from None
        raise
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no such file; put the TA-Tok .safetensors file in the models folder "
            f"(convert Tar's ta_tok.pth with `{_CONVERT_CMD}`)"
        ) from None


def config_from_metadata(metadata: Mapping[str, str], path: PathLike) -> TATokConfig | None:
    raw = config_in_metadata(metadata, CONFIG_KEY, path, "re-convert the file")
    return None if raw is None else TATokConfig.from_dict(raw, path)


def _cast_parts(sd: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Encoder and task layer in `dtype`; bottleneck, codebook and scale buffers stay float32."""
    wide = ("encoder.", "encode_task_layer.")
    return {
        k: v.to(dtype if k.startswith(wide) else torch.float32) if v.is_floating_point() else v for k, v in sd.items()
    }


def load_tatok(
    path: PathLike,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    config: TATokConfig | None = None,
    attn: str = "sdpa",
) -> TATok:
    """Load a TA-Tok from safetensors, in eval mode with gradients off.

    The config comes from `config`, else the file's metadata, else the tensor shapes. Tar's
    de-tokenizer / teacher keys, if present, are dropped. `dtype` applies to the SigLIP encoder
    and task layer; the bottleneck and codebook stay float32 for an exact nearest-code search.
    """
    meta = _header(path).get("__metadata__") or {}
    sd = read_safetensors(path, device=device)
    what = describe_foreign(sd.keys(), meta)
    if what:
        raise CheckpointError(f"{path}: this is {what}" if what.startswith("a ") else f"{path}: {what}")
    sd, _ = strip_tar_extras(sd)
    refuse_non_float(sd, path, "convert the TA-Tok file again with `python -m planx_core convert-tatok`")
    config = config or config_from_metadata(meta, path) or infer_config(sd, path)
    check_tatok_state_dict(sd, config, path)
    with torch.device("meta"):
        model = TATok(config, attn=attn)
    model.load_state_dict(_cast_parts(sd, dtype), strict=True, assign=True)
    _materialise_buffers(model, device)
    model.colour_table = colour_table(meta, path, config.codebook_size, model.digest()) if COLOURS_KEY in meta else None
    return model.requires_grad_(False).eval()


def _materialise_buffers(model: TATok, device) -> None:
    """Recreate non-persistent buffers left on the meta device (SigLIP's position_ids arange)."""
    emb = model.encoder.embeddings
    if getattr(emb, "position_ids", None) is not None and emb.position_ids.is_meta:
        emb.position_ids = torch.arange(emb.position_ids.shape[-1], device=device).expand(1, -1)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(
            f"TA-Tok kept tensors on the meta device after loading: {left[:5]}; this transformers "
            f"version adds state the loader does not know, report it with the version number"
        )


# --------------------------------------------------------------------------- converting Tar's ta_tok.pth


class _EasyDictStandIn:
    """Unpickles `easydict.EasyDict` as an OrderedDict, so the `easydict` package is not needed.

    torch's weights_only unpickler lets SETITEMS fill only dict / OrderedDict / Counter and BUILD
    set attributes only on OrderedDict or allow-listed classes; an OrderedDict takes both.
    """

    def __new__(cls, *args, **kwargs):
        return collections.OrderedDict()


def _plain(value):
    """EasyDict/OrderedDict trees -> plain dicts and lists (for JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def read_tar_checkpoint(src: PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(args, state dict) of Tar's `ta_tok.pth` = {"model": {"args": EasyDict, "sd": state_dict}}, read safely."""
    try:
        with torch.serialization.safe_globals([(_EasyDictStandIn, "easydict.EasyDict")]):
            ckpt = torch.load(src, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{src}: no such file") from None
    except Exception as err:  # UnpicklingError, RuntimeError from torch's zip reader, ...
        raise CheckpointError(
            f"{src}: cannot be read as a Tar ta_tok.pth with torch.load(weights_only=True): "
            f"{torch_load_reason(err)}. Only tensors, plain containers and EasyDict are accepted "
            f"(nothing else is unpickled); use the ta_tok.pth released in csuhan/TA-Tok, and "
            f"re-download it if it is truncated"
        ) from None
    model = ckpt.get("model") if isinstance(ckpt, Mapping) else None
    if not (isinstance(model, Mapping) and isinstance(model.get("sd"), Mapping)):
        top = list(ckpt)[:5] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(
            f"{src}: not Tar's ta_tok.pth layout {{'model': {{'args': ..., 'sd': ...}}}} (found "
            f"{top}); use the tokenizer file ta_tok.pth from csuhan/TA-Tok"
        )
    bad = [k for k, v in model["sd"].items() if not isinstance(v, torch.Tensor)][:5]
    if bad:
        raise CheckpointError(f"{src}: state-dict entries {bad} are not tensors; the file is not a ta_tok.pth")
    return _plain(model.get("args") or {}), dict(model["sd"])


def config_from_tar(
    args: Mapping, sd: Mapping[str, torch.Tensor], source: PathLike | None = None, num_heads: int | None = None
) -> TATokConfig:
    """The config from the shapes, cross-checked with Tar's constructor args (sizes, quantiser, feature layer)."""
    where = f"{source}: " if source else ""
    reg = ((args.get("bottleneck") or {}).get("args") or {}).get("regularizer") or {}
    reg_args = reg.get("args") or {}
    if reg and (reg.get("name", "simvq") != "simvq" or reg_args.get("l2_normalized", True) is not True):
        raise CheckpointError(
            f"{where}quantiser {reg.get('name')!r} with l2_normalized="
            f"{reg_args.get('l2_normalized')!r} is not supported; TA-Tok's is an L2-normalised "
            f"'simvq' (cosine lookup)"
        )
    overrides = {"select_layer": int(args.get("select_layer_id", -2))}
    patch = sd.get("encoder.embeddings.patch_embedding.weight")
    if args.get("input_size") and patch is not None and patch.ndim == 4:
        overrides["image_size"] = int(args["input_size"])  # the exact size: shapes only give it up to a patch
        if int(args["input_size"]) // patch.shape[-1] != math.isqrt(
            sd["encoder.embeddings.position_embedding.weight"].shape[0]
        ):
            raise CheckpointError(
                f"{where}Tar args say input_size {args['input_size']}, which does not give the "
                f"{list(sd['encoder.embeddings.position_embedding.weight'].shape)} position "
                f"embeddings with patch {patch.shape[-1]}; the file is inconsistent, re-download it"
            )
    config = infer_config(sd, source, num_heads, **overrides)
    claims = {
        "codebook_size": reg_args.get("codebook_size"),
        "bottleneck_dim": ((args.get("bottleneck") or {}).get("args") or {}).get("bottleneck_dim"),
    }
    clash = {k: (v, getattr(config, k)) for k, v in claims.items() if v is not None and int(v) != getattr(config, k)}
    if clash:
        pairs = ", ".join(f"{k} args {a} vs shapes {b}" for k, (a, b) in clash.items())
        raise CheckpointError(
            f"{where}Tar args and tensor shapes disagree: {pairs}; the file is inconsistent, re-download it"
        )
    return config


def convert_ta_tok_pth(
    src: PathLike, dst: PathLike, dtype: torch.dtype | None = None, num_heads: int | None = None
) -> TATokConfig:
    """Convert Tar's `ta_tok.pth` to a Plan-X TA-Tok safetensors file (encoder half, config in metadata).

    Reads with `torch.load(weights_only=True)` (EasyDict allow-listed by a stand-in); drops
    `teacher*`, `decoder.*`, `decode_task_layer.*` and the quantiser's `stochastic_temperature_inv`;
    records Tar's args and what was dropped in
    the `planx_tatok_source` metadata. `dtype` None keeps the stored dtypes. `num_heads` is only
    needed for an encoder width other than so400m's (heads cannot be read from shapes).
    """
    args, sd = read_tar_checkpoint(src)
    kept, dropped = strip_tar_extras(sd)
    what = describe_foreign(kept.keys(), {})
    if what:
        raise CheckpointError(f"{src}: this is {what}" if what.startswith("a ") else f"{src}: {what}")
    config = config_from_tar(args, kept, src, num_heads)
    check_tatok_state_dict(kept, config, src)
    if dtype is not None:
        kept = {k: v.to(dtype) if v.is_floating_point() else v for k, v in kept.items()}
    source = {"file": Path(src).name, "args": args, "dropped": dropped}
    save_safetensors(
        kept, dst, metadata={CONFIG_KEY: json.dumps(config.to_dict()), SOURCE_KEY: json.dumps(source, default=str)}
    )
    return config


def convert_main(argv: list[str] | None = None) -> int:
    """`python -m planx_core convert-tatok SRC DST [--dtype ...]`: 0 on success, 2 on a refused file."""
    parser = argparse.ArgumentParser(
        prog="python -m planx_core convert-tatok",
        description="Convert Tar's ta_tok.pth to a Plan-X TA-Tok .safetensors file.",
    )
    parser.add_argument("src", help="Tar's ta_tok.pth (from the csuhan/TA-Tok release)")
    parser.add_argument("dst", help="output .safetensors, e.g. ComfyUI/models/planx/ta_tok.safetensors")
    parser.add_argument(
        "--dtype",
        default="keep",
        choices=["keep", "float32", "bfloat16", "float16"],
        help="storage dtype (default: as stored in the .pth)",
    )
    parser.add_argument(
        "--num-heads", type=int, default=None, help="attention heads, only for an encoder that is not SigLIP so400m"
    )
    args = parser.parse_args(argv)
    dtype = None if args.dtype == "keep" else getattr(torch, args.dtype)
    try:
        config = convert_ta_tok_pth(args.src, args.dst, dtype, args.num_heads)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.dst}: {config.name} (hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"{config.patch_grid}x{config.patch_grid} patches, codebook {config.codebook_size}x{config.bottleneck_dim})"
    )
    return 0
