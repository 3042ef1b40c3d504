"""SemanticGen: compact continuous semantic plans, generated with full attention, then rendered.

Source: SemanticGen (arXiv 2512.20619): a VLM's vision features (`encoder`, the Qwen2.5-VL tower)
compressed by a KL-regularised MLP (`compressor`), a diffusion generator of those features for the
whole video (`generator`, stage 1), and the video latents conditioned in context with
shifted-window attention (`model.SemanticGen`, stage 2 through the Plan-X semantic branch).

Public API: `SemanticGen`, `SemanticGenSpec`, `SemanticStart` (image-to-video inputs), `drawn_start` (those inputs
from a video another model drew for the prompt), `best_of`, `keep_nearest` (the best of several videos by their
own plan), `FILES` (model folder); `SemanticEncoder`, `load_semantic_encoder`, `save_semantic_encoder`;
`SemanticCompressor`, `CompressorConfig`, `load_compressor`, `save_compressor`; `generate_semantics`,
`semantic_generator_config`.
"""

from .candidates import best_of, keep_nearest
from .compressor import (
    CompressorConfig,
    SemanticCompressor,
    load_compressor,
    save_compressor,
)
from .drawn import drawn_start
from .encoder import SemanticEncoder
from .encoder_files import load_semantic_encoder, save_semantic_encoder
from .generator import generate_semantics, semantic_generator_config
from .model import FILES, SemanticGen, SemanticGenSpec, SemanticStart

__all__ = [
    "FILES",
    "CompressorConfig",
    "SemanticCompressor",
    "SemanticEncoder",
    "SemanticGen",
    "SemanticGenSpec",
    "SemanticStart",
    "best_of",
    "drawn_start",
    "generate_semantics",
    "keep_nearest",
    "load_compressor",
    "load_semantic_encoder",
    "save_compressor",
    "save_semantic_encoder",
    "semantic_generator_config",
]
