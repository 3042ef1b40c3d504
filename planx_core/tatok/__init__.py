"""TA-Tok, Tar's text-aligned image tokenizer: SigLIP features -> scale pooling -> nearest code.

Source: csuhan/Tar (`tok/ta_tok.py`); see `model` for the details and `files` for the released
`ta_tok.pth` converter and the safetensors layout.

Public API: `TATok`, `TATokConfig`, `codebook_vectors` (ids -> codebook rows), `frames_to_nchw`,
`plan_from_video` (a token plan of a video's keyframes), `load_tatok`, `save_tatok`,
`convert_ta_tok_pth`.
"""

from .files import convert_ta_tok_pth, load_tatok, save_tatok
from .model import (
    TATok,
    TATokConfig,
    codebook_digest,
    codebook_vectors,
)
from .video import frames_to_nchw, plan_from_video

__all__ = [
    "TATok",
    "TATokConfig",
    "codebook_digest",
    "codebook_vectors",
    "convert_ta_tok_pth",
    "frames_to_nchw",
    "load_tatok",
    "plan_from_video",
    "save_tatok",
]
