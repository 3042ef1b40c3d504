"""umT5's tokenizer from a sentencepiece model: the `spiece_model` entry of ComfyUI's files, or a lone spiece.model.

Source: ComfyUI `comfy/text_encoders/spiece_tokenizer.py` and `wan.py`: every umT5 file ComfyUI
loads for Wan carries the tokenizer's serialized sentencepiece model as a uint8 tensor named
`spiece_model`, tokenized with sentencepiece directly, the end token appended. Here the same
model answers the calls `TextEncoder` makes of a transformers tokenizer: ids with the end token,
truncation to `max_length` keeping the end token (as Wan's `truncation=True` does), and the
count of tokens cut. A google/umt5-xxl tokenizer folder (tokenizer.json), when there is one, is
preferred: it is what Wan tokenizes with; the two agree on ordinary text.

Needs the `sentencepiece` package (in ComfyUI's requirements; optional for Plan-X).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..files.safetensors import CheckpointError


class SentencePieceTokenizer:
    """A sentencepiece model with the slice of a transformers tokenizer's interface the text encoder uses."""

    is_fast = False

    def __init__(self, proto: bytes, source=None):
        try:
            import sentencepiece
        except ImportError:
            raise CheckpointError(
                f"{source}: its tokenizer is a sentencepiece model, which needs the sentencepiece package "
                f"(`pip install sentencepiece`; ComfyUI installs it); or give the google/umt5-xxl tokenizer folder"
            ) from None
        self.proto, self.source = bytes(proto), source
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_proto=self.proto)
        except (RuntimeError, OSError) as e:
            raise CheckpointError(f"{source}: the tokenizer's sentencepiece model does not load ({e})") from None
        self.eos_token_id = self.sp.eos_id()
        self.pad_token_id = max(self.sp.pad_id(), 0)
        if self.eos_token_id < 0:
            raise CheckpointError(f"{source}: the sentencepiece model has no end token; it is not umT5's tokenizer")

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def __call__(self, texts, truncation: bool = False, max_length: int | None = None, **_) -> dict:
        """{"input_ids": rows, "num_truncated_tokens": per row}: each row the pieces' ids and the end token."""
        rows, cut = [], []
        for text in [texts] if isinstance(texts, str) else texts:
            ids = [*self.sp.encode(text), self.eos_token_id]
            over = len(ids) - max_length if truncation and max_length and max_length >= 1 else 0
            if over > 0:
                ids = [*ids[: max_length - 1], self.eos_token_id]
            rows.append(ids)
            cut.append(max(over, 0))
        return {"input_ids": rows, "num_truncated_tokens": cut}

    def save_pretrained(self, folder) -> None:
        """Write the model as `spiece.model` (what load_tokenizer reads when there is no tokenizer.json)."""
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "spiece.model").write_bytes(self.proto)


def from_tensor(tensor: torch.Tensor, source) -> SentencePieceTokenizer:
    """The tokenizer of a ComfyUI `spiece_model` entry (the model's bytes as a uint8 tensor)."""
    if tensor.dtype != torch.uint8 or tensor.ndim != 1:
        raise CheckpointError(
            f"{source}: spiece_model is {tensor.dtype} {list(tensor.shape)}, not the bytes of a model"
        )
    return SentencePieceTokenizer(tensor.numpy().tobytes(), source)


def from_file(path: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(Path(path).read_bytes(), path)
