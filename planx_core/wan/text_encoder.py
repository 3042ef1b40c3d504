"""The DiT's text encoder: a umT5 encoder (transformers' `UMT5EncoderModel`) and its tokenizer.

Source: Wan 2.1/2.2 (`wan/modules/t5.py`): umT5-XXL encodes the prompt, each sequence is cut to
its true length and the DiT zero-pads it to `text_len` (512) before its text embedding. Same
class here at any size: the embedded tiny model uses a small umT5 over the synthetic world's
word-level tokenizer; the real umT5-XXL is ComfyUI's own text-encoder loader's business.

Features are token-level, never pooled: a pooled sentence vector barely sees word order
("right, then up" vs "up, then right"; see docs/planshapes.md section 3.2), and the order is the point.
A folder holds `config.json`, `model.safetensors` and the tokenizer files (Hugging Face layout).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from ..files.safetensors import CheckpointError, check_safetensors_header


def join_prompt(scene: str, motion: str) -> str:
    """The DiT's prompt for a scene text and a motion text: "scene. motion." (either may be empty)."""
    parts = [p.strip().rstrip(".").strip() for p in (scene, motion)]
    return " ".join(f"{p}." for p in parts if p)


class TextEncoder(torch.nn.Module):
    """Prompts -> token features `[B, text_len, dim]`, zero after each prompt's last token."""

    def __init__(self, model: UMT5EncoderModel, tokenizer, text_len: int):
        super().__init__()
        self.model, self.tokenizer, self.text_len = model, tokenizer, int(text_len)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask `[B, text_len]`; a prompt longer than text_len tokens is refused."""
        rows = self.tokenizer(list(texts))["input_ids"]
        ids = torch.full((len(rows), self.text_len), self.tokenizer.pad_token_id or 0)  # [B, L]
        mask = torch.zeros(len(rows), self.text_len, dtype=torch.long)  # [B, L]
        for i, row in enumerate(rows):
            if len(row) > self.text_len:
                raise ValueError(
                    f"prompt {i} has {len(row)} tokens, more than this text encoder's "
                    f"{self.text_len}; shorten the prompt"
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


def load_text_encoder(folder, dtype: torch.dtype = torch.float32, device="cpu") -> TextEncoder:
    """Load a folder written by `save_text_encoder`, checking it first."""
    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not (folder / "config.json").is_file() or not weights.is_file():
        raise CheckpointError(
            f"{folder}: a text-encoder folder holds config.json, model.safetensors and "
            f"tokenizer.json (write one with save_text_encoder)"
        )
    check_safetensors_header(weights)
    config = UMT5Config.from_pretrained(folder, local_files_only=True)
    if getattr(config, "model_type", None) != "umt5" or not hasattr(config, "planx_text_len"):
        raise CheckpointError(
            f"{folder}: config.json is not a Plan-X umT5 text encoder (model_type "
            f"{getattr(config, 'model_type', None)!r}); pick the embedded model's text-encoder folder"
        )
    model = UMT5EncoderModel.from_pretrained(folder, local_files_only=True, use_safetensors=True, dtype=dtype)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return TextEncoder(model.to(device).eval(), tokenizer, config.planx_text_len)
