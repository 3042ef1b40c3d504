"""umT5 text-encoder files in each released form: names, sizes and checks, all before a weight is read.

Sources: Wan2.2 `wan/modules/t5.py` (the official encoder: `token_embedding`, per-block
`pos_embedding`, `attn.{q,k,v,o}`, `ffn.gate.0` under the GELU, `ffn.fc1` beside it, `ffn.fc2`,
`norm1`/`norm2`, final `norm`; umT5-XXL is 24 blocks of 4096, 64 heads of 64, FFN 10240, 32
buckets over distance 128, vocabulary 256384), transformers' `UMT5EncoderModel` (the same
network: `shared`, `encoder.block.N.layer.0.SelfAttention.*`, `layer.1.DenseReluDense.wi_0/wi_1/wo`)
and ComfyUI's text-encoder files, which use transformers' names, sometimes behind a prefix,
with float8 weights and a `scale_weight` each in the fp8_scaled file, and the tokenizer's
sentencepiece model as a `spiece_model` entry.

Every form is reduced to transformers' names here (`canonical_names`), its sizes read from the
file's shapes or config.json, and checked against `UMT5EncoderModel` built on the meta device;
`text_encoder.load_text_encoder` then reads only the encoder's tensors. The tokenizer
(`tokenizer_for`) is a folder given by the caller, else one beside the file (`TOKENIZER_PLACES`:
google/umt5-xxl as in the Wan2.2 release, ...), else the `spiece_model` inside a ComfyUI file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

from ..files.safetensors import CheckpointError, check_keys, check_safetensors_header, header_shapes, resolve_shards

WAN_TEXT_LEN = 512  # Wan's text_len: prompts are padded / truncated to 512 tokens
UMT5_MAX_DISTANCE = 128  # umT5's relative_attention_max_distance (Wan's T5RelativeEmbedding max_dist); not in a file
CONVERT_CMD = "python -m planx_core convert-umt5 models_t5_umt5-xxl-enc-bf16.pth umt5-xxl-enc-bf16.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
TOKENIZER_PLACES = ("google/umt5-xxl", "umt5-xxl", "umt5_xxl", "tokenizer", ".")  # beside a single file
_HF_ANCHOR = "encoder.final_layer_norm.weight"
_OFFICIAL_ANCHOR = "token_embedding.weight"
_SCALE_MARKS = (".scale_weight", ".scale_input")
_OFFICIAL = [  # official Wan name -> transformers' name
    (r"token_embedding\.weight", "shared.weight"),
    (r"norm\.weight", "encoder.final_layer_norm.weight"),
    (r"blocks\.(\d+)\.norm1\.weight", r"encoder.block.\1.layer.0.layer_norm.weight"),
    (r"blocks\.(\d+)\.attn\.([qkvo])\.weight", r"encoder.block.\1.layer.0.SelfAttention.\2.weight"),
    (
        r"blocks\.(\d+)\.pos_embedding\.embedding\.weight",
        r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias.weight",
    ),
    (r"blocks\.(\d+)\.norm2\.weight", r"encoder.block.\1.layer.1.layer_norm.weight"),
    (r"blocks\.(\d+)\.ffn\.gate\.0\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wi_0.weight"),  # under GELU
    (r"blocks\.(\d+)\.ffn\.fc1\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wi_1.weight"),
    (r"blocks\.(\d+)\.ffn\.fc2\.weight", r"encoder.block.\1.layer.1.DenseReluDense.wo.weight"),
]
_OFFICIAL = [(re.compile(a + "$"), b) for a, b in _OFFICIAL]


def umt5_config(
    vocab_size: int, d_model: int, d_kv: int, d_ff: int, num_layers: int, num_heads: int, num_buckets: int = 32, **extra
) -> UMT5Config:
    """An encoder-only umT5 config (gated GELU, no dropout, pad 0 / end 1 as google/umt5-xxl); `extra` overrides."""
    defaults = dict(
        relative_attention_max_distance=UMT5_MAX_DISTANCE,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
    )
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        **(defaults | extra),
    )


def umt5_xxl_config() -> UMT5Config:
    """umT5-XXL, the encoder of Wan 2.1 / 2.2 (Wan's `umt5_xxl`, google/umt5-xxl)."""
    return umt5_config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)


def _config_key(config: UMT5Config) -> tuple:
    fields = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets")
    return tuple(getattr(config, f) for f in fields)


@lru_cache(maxsize=8)
def _shapes(key: tuple) -> dict[str, tuple[int, ...]]:
    sizes = dict(zip(("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "num_buckets"), key))
    with torch.device("meta"):
        model = UMT5EncoderModel(umt5_config(**sizes))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes.pop("encoder.embed_tokens.weight")  # the same tensor as shared.weight
    return shapes


def expected_shapes(config: UMT5Config) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of `UMT5EncoderModel(config)` (built on the meta device), the tied embedding once."""
    return _shapes(_config_key(config))


# ----------------------------------------------------------------------------- names


def _is_scale(key: str) -> bool:
    return key.endswith(_SCALE_MARKS) or key.rsplit(".", 1)[-1] == "scaled_fp8"


def _prefix(keys: list[str], anchor: str, source) -> str | None:
    found = [k[: -len(anchor)] for k in keys if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == ".")]
    if len(found) > 1:
        raise CheckpointError(
            f"{source}: several umT5 encoders in one file (prefixes {found[:3]}); save the text encoder alone"
        )
    return found[0] if found else None


def _official_name(name: str) -> str:
    for pattern, target in _OFFICIAL:
        if pattern.match(name):
            return pattern.sub(target, name)
    return name  # reported as unexpected by the check


def canonical_names(keys: Iterable[str], source) -> tuple[dict[str, str], list[str], str]:
    """(file key -> transformers key, keys left out, layout) for the keys of a umT5 encoder file or folder.

    Left out: fp8 scales (folded into their weights), ComfyUI's `spiece_model`, the decoder and
    LM head of an encoder-decoder checkpoint, and a second copy of the tied embedding.
    """
    keys = [k for k in keys if not _is_scale(k)]
    hf, official = _prefix(keys, _HF_ANCHOR, source), _prefix(keys, _OFFICIAL_ANCHOR, source)
    if hf is None and official is None:
        raise CheckpointError(
            f"{source}: not a umT5 text encoder: neither transformers' names ({_HF_ANCHOR}) nor Wan's "
            f"({_OFFICIAL_ANCHOR}, blocks.N.attn.q.weight) are in it; first keys: {sorted(keys)[:5]}. Pick "
            f"umt5_xxl_fp8_e4m3fn_scaled / umt5_xxl_fp16 (ComfyUI), a google/umt5-xxl folder, or convert Wan's "
            f".pth with `{CONVERT_CMD}`"
        )
    prefix, layout = (hf, "transformers") if hf is not None else (official, "official")
    if layout == "official" and f"{prefix}pos_embedding.embedding.weight" in keys:
        raise CheckpointError(
            f"{source}: a T5 encoder with one shared position bias, not umT5 (which has one per block); "
            f"Wan's text encoder is umT5-XXL (models_t5_umt5-xxl-enc-bf16.pth)"
        )
    names, left_out = {}, []
    for key in keys:
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if key.endswith("spiece_model") or (layout == "transformers" and name.startswith(("decoder.", "lm_head."))):
            left_out.append(key)
            continue
        names[key] = _official_name(name) if layout == "official" and key.startswith(prefix) else name
    return _one_embedding(names, left_out), left_out, layout


def _one_embedding(names: dict[str, str], left_out: list[str]) -> dict[str, str]:
    """`encoder.embed_tokens.weight` is `shared.weight` tied: keep one copy, named `shared.weight`."""
    inverse = {v: k for k, v in names.items()}
    copy = inverse.get("encoder.embed_tokens.weight")
    if copy is not None and "shared.weight" in inverse:
        left_out.append(copy)
        del names[copy]
    elif copy is not None:
        names[copy] = "shared.weight"
    return names


# ----------------------------------------------------------------------------- sizes and checks


def infer_config(shapes: Mapping[str, tuple[int, ...]], source) -> UMT5Config:
    """The umT5 config of transformers-named shapes (max distance 128, umT5's: it is not in the file)."""
    need = {
        "shared.weight": 2,
        "encoder.block.0.layer.0.SelfAttention.q.weight": 2,
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": 2,
        "encoder.block.0.layer.1.DenseReluDense.wi_0.weight": 2,
    }
    bad = [k for k, rank in need.items() if len(shapes.get(k, ())) != rank]
    if bad:
        raise CheckpointError(
            f"{source}: cannot read the umT5 sizes: {bad} missing or not matrices; the file is incomplete or not "
            f"a gated-GELU umT5 encoder: re-download it, or convert Wan's .pth with `{CONVERT_CMD}`"
        )
    (vocab, dim), (inner, _), (buckets, heads), (ffn, _) = (shapes[k] for k in need)
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k))}
    if inner % heads:
        raise CheckpointError(f"{source}: attention width {inner} is not a multiple of the {heads} heads; not umT5")
    return umt5_config(vocab, dim, inner // heads, ffn, max(layers) + 1, heads, buckets)


def check_encoder(shapes: Mapping[str, tuple[int, ...]], config: UMT5Config, source) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped keys against `UMT5EncoderModel(config)`."""
    check_keys(
        shapes,
        expected_shapes(config),
        f"{source}: does not fit a umT5 encoder of {config.num_layers} blocks of {config.d_model} "
        f"({config.num_heads} heads of {config.d_kv}, FFN {config.d_ff}, vocabulary {config.vocab_size}):",
        f"The file is damaged, another model, or mixes models: re-download it (ComfyUI's umt5_xxl_*.safetensors, "
        f"a google/umt5-xxl folder), or convert Wan's .pth with `{CONVERT_CMD}`.",
    )


# ----------------------------------------------------------------------------- forms


def _header(path: Path) -> dict:
    try:
        return check_safetensors_header(path)
    except CheckpointError as err:
        if "not safetensors" in str(err):
            raise CheckpointError(
                f"{path}: a PyTorch pickle, which Plan-X never loads at run time; convert it once with "
                f"`python -m planx_core convert-umt5 {path} {path.with_suffix('.safetensors')}` "
                f"(reads it with torch.load(weights_only=True))"
            ) from None
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None


def _folder_config(folder: Path) -> dict:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: cannot read it as JSON ({e}); re-copy the folder") from None
    kind = data.get("model_type") if isinstance(data, dict) else None
    if kind in ("t5", "mt5"):
        raise CheckpointError(
            f"{folder}: a {kind} checkpoint (one shared position bias), not umT5; Wan's text encoder is umT5-XXL "
            f"(google/umt5-xxl)"
        )
    if kind != "umt5":
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type {kind!r} is not umT5; pick a google/umt5-xxl folder, a folder "
            f"written by save_text_encoder, or a single umT5 .safetensors file"
        )
    return data


def locate(path, text_len: int | None = None) -> dict:
    """What a text-encoder path holds: shards, names, config, text_len and a tokenizer folder candidate.

    Returns a dict with `files`, `names` (file key -> transformers key), `left_out`, `layout`,
    `config`, `text_len`, `scaled` (fp8 scales present) and `spiece` ((file, key) of ComfyUI's
    embedded sentencepiece tokenizer, or None).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    folder = path if path.is_dir() else None
    if folder is not None and not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder}: a text-encoder folder holds config.json, model.safetensors and tokenizer.json (write one "
            f"with save_text_encoder, or use a google/umt5-xxl folder); for a single file pass the file"
        )
    data = _folder_config(folder) if folder is not None else None
    if folder is not None and not any(folder.glob("*.safetensors")) and any(folder.glob("pytorch_model*.bin")):
        raise CheckpointError(
            f"{folder}: the weights are PyTorch pickles only (pytorch_model*.bin), which Plan-X never loads at run "
            f"time; convert the encoder once with `python -m planx_core convert-umt5 {folder} "
            f"{folder / 'umt5-encoder.safetensors'}` and load that file (tokenizer={folder})"
        )
    files = resolve_shards(folder) if folder is not None else [path]
    headers = {f: _header(f) for f in files}
    keys = [k for h in headers.values() for k in h if k != "__metadata__"]
    names, left_out, layout = canonical_names(keys, path)
    shapes = {names[k]: s for h in headers.values() for k, s in header_shapes(h).items() if k in names}
    if data is not None:
        config = UMT5Config.from_pretrained(folder, local_files_only=True)
        length = text_len or data.get("planx_text_len") or WAN_TEXT_LEN
    else:
        config, length = infer_config(shapes, path), text_len or WAN_TEXT_LEN
    check_encoder(shapes, config, path)
    spiece = next(((f, k) for f, h in headers.items() for k in h if k.endswith("spiece_model")), None)
    return dict(
        files=files,
        names=names,
        left_out=left_out,
        layout=layout,
        config=config,
        text_len=int(length),
        scaled=any(_is_scale(k) for k in keys),
        spiece=spiece,
    )


def is_umt5_keys(keys: Iterable[str]) -> bool:
    """Whether a file's keys look like a umT5 encoder in transformers' / ComfyUI's or Wan's names (nothing read)."""
    keys = list(keys)
    hf = any(k.endswith(_HF_ANCHOR) for k in keys) and any(".SelfAttention.relative_attention_bias." in k for k in keys)
    return hf or (any(k.endswith(_OFFICIAL_ANCHOR) for k in keys) and any(".attn.q.weight" in k for k in keys))


def describe_text_encoder(path) -> str:
    """One line naming a umT5 file or folder (layout, sizes, fp8 scaling), for `inspect`; CheckpointError if not one."""
    found = locate(path)
    c = found["config"]
    name = "umT5-XXL" if _config_key(c) == _config_key(umt5_xxl_config()) else "umT5"
    names = "Wan" if found["layout"] == "official" else "transformers / ComfyUI"
    scaled = ", fp8_scaled" if found["scaled"] else ""
    sizes = f"{c.num_layers} blocks of {c.d_model}, {c.num_heads} heads of {c.d_kv}, FFN {c.d_ff}"
    return f"{name} text encoder ({names} names{scaled}): {sizes}, vocabulary {c.vocab_size}"


def find_tokenizer(path, given=None) -> Path:
    """The tokenizer folder of a text encoder: `given`, the folder itself, or one of TOKENIZER_PLACES beside a file."""
    path = Path(path)
    if given is not None:
        given = Path(given)
        folder = given.parent if given.is_file() else given
        if not any((folder / f).is_file() for f in TOKENIZER_FILES):
            raise CheckpointError(
                f"{given}: no umT5 tokenizer there (tokenizer.json or spiece.model); use the google/umt5-xxl "
                f"tokenizer folder (in the Wan2.2 release: Wan2.2-TI2V-5B/google/umt5-xxl)"
            )
        return folder
    base = path if path.is_dir() else path.parent
    places = ["."] if path.is_dir() else list(TOKENIZER_PLACES)
    for place in places:
        if any((base / place / f).is_file() for f in TOKENIZER_FILES):
            return (base / place).resolve()
    looked = ", ".join(str(base / p) for p in places)
    raise CheckpointError(
        f"{path}: no umT5 tokenizer found (looked for tokenizer.json or spiece.model in {looked}). A single-file "
        f"text encoder needs the google/umt5-xxl tokenizer files (tokenizer.json, tokenizer_config.json, "
        f"special_tokens_map.json, spiece.model; the folder google/umt5-xxl of the Wan2.2 release): put that "
        f"folder beside the file as google/umt5-xxl, or pass its path (load_text_encoder(..., tokenizer=FOLDER)). "
        f"ComfyUI's own umT5 files carry their tokenizer (spiece_model) and need none"
    )


def _folder_tokenizer(folder: Path):
    """tokenizer.json as it is; else transformers' AutoTokenizer on spiece.model, else sentencepiece itself."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if (folder / "tokenizer.json").is_file():
        try:
            return PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(
                f"{folder}: transformers cannot load tokenizer.json ({str(e).splitlines()[0][:200]}); re-copy the "
                f"google/umt5-xxl tokenizer folder"
            ) from None
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, ImportError, KeyError):  # no tokenizer_config.json, or no protobuf to convert
        from .text_encoder_spiece import from_file

        return from_file(folder / "spiece.model")


def tokenizer_for(path, given, found: dict):
    """The tokenizer of a text encoder: `given` (a folder), a folder beside it (`find_tokenizer`), else the
    sentencepiece model ComfyUI stores inside its umT5 files; the vocabulary checked against the embedding."""
    try:
        tokenizer = _folder_tokenizer(find_tokenizer(path, given))
    except CheckpointError:
        if given is not None or found["spiece"] is None:
            raise
        from safetensors import safe_open

        from .text_encoder_spiece import from_tensor

        file, key = found["spiece"]
        with safe_open(str(file), framework="pt", device="cpu") as f:
            tokenizer = from_tensor(f.get_tensor(key), file)
    return check_tokenizer(tokenizer, found["config"].vocab_size, path)


def check_tokenizer(tokenizer, vocab_size: int, source):
    """Refuse a tokenizer whose ids reach past the model's embedding."""
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but this text encoder embeds only "
            f"{vocab_size}; the tokenizer belongs to another model (umT5-XXL's is google/umt5-xxl's)"
        )
    return tokenizer
