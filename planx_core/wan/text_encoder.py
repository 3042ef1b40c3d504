"""The DiT's text encoder: a umT5 encoder (transformers' `UMT5EncoderModel`), its tokenizer and Wan's prompt rules.

Source: Wan 2.1/2.2 (`wan/modules/t5.py`, `wan/modules/tokenizers.py`): umT5-XXL encodes the
prompt after Wan's cleaning (`text_encoder_prompt.clean_prompt`: ftfy, HTML unescaped twice,
whitespace collapsed), padded and truncated to `text_len` (512) tokens with the tokenizer's end
token kept; each sequence is cut to its true length and the DiT zero-pads it to `text_len` before
its text embedding. Same class at any size: the embedded tiny model uses a small umT5 over the
synthetic world's word-level tokenizer.

Features are token-level, never pooled: a pooled sentence vector barely sees word order
("right, then up" vs "up, then right"; see docs/planshapes.md section 3.2), and the order is the point.

Files (`load_text_encoder`; forms, names and checks in `text_encoder_files`): a folder written by
`save_text_encoder` (config.json, model.safetensors, tokenizer files); a google/umt5-xxl style
Hugging Face folder; one safetensors file in transformers' names, as ComfyUI ships umT5-XXL
(`umt5_xxl_fp8_e4m3fn_scaled.safetensors`, fp16 / bf16), or in Wan's own names; Wan's
`models_t5_umt5-xxl-enc-bf16.pth` once converted (`text_encoder_convert`, `convert-umt5`). The
tokenizer always comes from the user's files, never a hub.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import UMT5Config, UMT5EncoderModel

from ..files.safetensors import CheckpointError, cast_tensor, check_finite, fold_fp8_scales, refuse_non_float
from .text_encoder_files import locate, tokenizer_for
from .text_encoder_prompt import clean_prompt


def join_prompt(scene: str, motion: str) -> str:
    """The DiT's prompt for a scene text and a motion text: "scene. motion." (either may be empty)."""
    parts = [p.strip().rstrip(".").strip() for p in (scene, motion)]
    return " ".join(f"{p}." for p in parts if p)


class TextEncoder(torch.nn.Module):
    """Prompts -> token features `[B, text_len, dim]`, zero after each prompt's last token.

    `source` says where the weights came from (form, files, keys left out), for messages."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, text_len: int, source: dict | None = None):
        super().__init__()
        self.model, self.tokenizer, self.text_len = model, tokenizer, int(text_len)
        self.source = dict(source or {})

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def _rows(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, truncated to text_len (the end token kept); truncation is reported."""
        out = self.tokenizer(texts, truncation=True, max_length=self.text_len, return_overflowing_tokens=True)
        if "overflow_to_sample_mapping" in out:  # a fast tokenizer: one row per window, overflow after its prompt
            owners = list(out["overflow_to_sample_mapping"])
            rows = [out["input_ids"][owners.index(i)] for i in range(len(texts))]
            cut = sorted({i for i in owners if owners.count(i) > 1})
        else:  # sentencepiece (and transformers' slow tokenizers) count the tokens cut
            rows = list(out["input_ids"])
            cut = [i for i, n in enumerate(out.get("num_truncated_tokens") or []) if n > 0]
        if cut:
            warnings.warn(
                f"prompt(s) {cut} are longer than the text encoder's {self.text_len} tokens; only the first "
                f"{self.text_len} are encoded (Wan truncates the same way)",
                stacklevel=4,
            )
        return rows

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask `[B, text_len]` of the cleaned prompts, each truncated to text_len tokens."""
        rows = self._rows([clean_prompt(t) for t in texts])
        ids = torch.full((len(rows), self.text_len), self.tokenizer.pad_token_id or 0)  # [B, L]
        mask = torch.zeros(len(rows), self.text_len, dtype=torch.long)  # [B, L]
        for i, row in enumerate(rows):
            if len(row) > self.text_len:  # a tokenizer that could not truncate (its own tokens need more)
                raise ValueError(
                    f"prompt {i} has {len(row)} tokens even after truncation, more than this text encoder's "
                    f"{self.text_len}; its tokenizer adds more special tokens than text_len allows: raise text_len"
                )
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row, dtype=torch.long), 1
        return ids, mask

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = self.model.get_input_embeddings().weight.device
        ids, mask = (t.to(device) for t in self.tokenize(texts))  # [B, L]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, dim]
        return hidden * mask[..., None].to(hidden.dtype)  # [B, L, dim], zero past each prompt


def tiny_text_encoder(
    tokenizer, *, dim: int = 64, layers: int = 2, heads: int = 4, text_len: int = 32, seed: int = 0
) -> TextEncoder:
    """A small, seeded umT5 encoder over `tokenizer` (gated-GELU, relative position buckets, as umT5)."""
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=dim,
        d_kv=dim // heads,
        d_ff=4 * dim,
        num_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=64,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config)
    return TextEncoder(model.eval(), tokenizer, text_len)


def save_text_encoder(encoder: TextEncoder, folder) -> Path:
    """Write the encoder folder: config.json (with text_len), model.safetensors, tokenizer files."""
    folder = Path(folder)
    encoder.model.config.planx_text_len = encoder.text_len
    encoder.model.save_pretrained(folder)
    encoder.tokenizer.save_pretrained(folder)
    return folder


def _scale_key(key: str) -> str:
    return key[: -len("weight")] + "scale_weight"


def read_weights(found: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The encoder's tensors of `locate`'s files, renamed to transformers' names, cast to `dtype` as read;
    fp8_scaled weights are folded with their scale (`fold_fp8_scales`). Other keys are never read."""
    sd = {}
    for file in found["files"]:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:  # memory-mapped
                keys = set(f.keys())
                for key in sorted(keys & set(found["names"])):
                    t = f.get_tensor(key)
                    if _scale_key(key) in keys:
                        t = fold_fp8_scales({key: t, _scale_key(key): f.get_tensor(_scale_key(key))}, dtype)[key]
                    check_finite(key, t, file)
                    sd[found["names"][key]] = cast_tensor(key, t, dtype)
        except Exception as e:  # safetensors' own error types
            raise CheckpointError(
                f"{file}: safetensors could not read it ({e}); the file is corrupted or truncated, re-download it"
            ) from e
    refuse_non_float(sd, found["files"][0], "pick the umT5 encoder file itself")
    return sd


def load_text_encoder(
    path, dtype: torch.dtype = torch.float32, device="cpu", *, tokenizer=None, text_len: int | None = None
) -> TextEncoder:
    """Load a umT5 text encoder from any released form (see the module docstring), checked before reading.

    `tokenizer`: a tokenizer folder (or a loaded tokenizer) for a single file; by default the
    folder itself, or google/umt5-xxl (and the other `TOKENIZER_PLACES`) beside the file, else
    the sentencepiece model inside ComfyUI's umT5 files (`text_encoder_spiece`).
    `text_len`: tokens per prompt; by default the folder's recorded value, else Wan's 512.
    """
    found = locate(path, text_len)
    config = found["config"]
    if tokenizer is None or isinstance(tokenizer, (str, Path)):
        tokenizer = tokenizer_for(path, tokenizer, found)
    sd = read_weights(found, dtype)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]  # tied
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model.load_state_dict(sd, strict=True, assign=True)
    source = {k: found[k] for k in ("layout", "left_out")} | {"files": [str(f) for f in found["files"]]}
    return TextEncoder(model.to(device).eval(), tokenizer, found["text_len"], source)
