"""SemanticGen's semantic encoder: the Qwen2.5-VL vision tower, frames -> grids of merged vision features.

Source: SemanticGen (arXiv 2512.20619): the semantic representation of a video is the output of
the vision tower of Qwen2.5-VL (features of 2048 numbers for Qwen2.5-VL-3B, the width of its
vision merger), taken on frames sampled at about 2 fps, then compressed by a small learned MLP
(`planx_core.semantic_compressor`). The tower itself is transformers'
`Qwen2_5_VisionTransformerPretrainedModel`, used as is (it is not reimplemented here).

Pre-processing follows Qwen's image processor (transformers' `Qwen2VLImageProcessor`, and the
`preprocessor_config.json` released with Qwen2.5-VL): `smart_resize` to sides that are multiples
of patch_size * spatial_merge_size (28 px) with min_pixels 56*56 and max_pixels 12845056, bicubic,
CLIP mean/std normalisation, each image repeated to fill one temporal patch (2 frames), patches
flattened window by window of spatial_merge_size x spatial_merge_size patches (the order the
tower's merger expects). One merged token covers 28x28 pixels of one keyframe.

Differences from Qwen, on purpose:
- The resize is torch's antialiased bicubic on [0, 1] values (clamped), not PIL's bicubic on
  uint8; sizes that need no resize give exactly Qwen's pixel values.
- Each keyframe is encoded as a single image (grid_thw = [1, gh, gw]); the video path of
  Qwen2.5-VL, which packs two consecutive frames into one temporal patch, is not used.

Checkpoints: a Qwen2.5-VL folder (config.json with `vision_config`, one or more safetensors,
sharded with an index), of which only the keys under `visual.` (or `model.visual.`, the names of
some transformers versions) are read; or one safetensors file written by `save_semantic_encoder`
(keys `visual.*`, the vision config in its metadata). Never a pickle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_KEY = "planx_semantic_encoder"  # safetensors metadata: the vision config as JSON
VISUAL_PREFIXES = ("visual.", "model.visual.")  # Qwen2.5-VL checkpoints; the second is transformers' 4.5x naming
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OPENAI_CLIP_MEAN, Qwen's image_mean
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)  # OPENAI_CLIP_STD, Qwen's image_std
MIN_PIXELS = 56 * 56  # Qwen2.5-VL preprocessor_config.json
MAX_PIXELS = 12845056  # Qwen2.5-VL preprocessor_config.json (28 * 28 * 16384)
SEMANTIC_FPS = 2.0  # Qwen-VL's default video sampling rate, SemanticGen's ~2 fps
ARCH_FIELDS = (
    "depth",
    "hidden_size",
    "hidden_act",
    "intermediate_size",
    "num_heads",
    "in_channels",
    "patch_size",
    "spatial_merge_size",
    "temporal_patch_size",
    "tokens_per_second",
    "window_size",
    "out_hidden_size",
    "fullatt_block_indexes",
    "rope_parameters",
)
_FIX_FOLDER = (
    "pass the Qwen2.5-VL checkpoint folder (config.json, *.safetensors and the shard index, e.g. "
    "Qwen/Qwen2.5-VL-3B-Instruct) or a file written by save_semantic_encoder"
)


# --------------------------------------------------------------------------- configs


def vision_config(**fields):
    """transformers' `Qwen2_5_VLVisionConfig` from architecture fields (`in_chans` read as `in_channels`)."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
        Qwen2_5_VLVisionConfig,
    )

    if "in_chans" in fields and "in_channels" not in fields:
        fields["in_channels"] = fields["in_chans"]
    config = Qwen2_5_VLVisionConfig(**{k: v for k, v in fields.items() if k in ARCH_FIELDS})
    check_vision_config(config)
    return config


def check_vision_config(config) -> None:
    """Raise ValueError when the tower could not run with these sizes."""
    c, problems = config, []
    if c.num_heads < 1 or c.hidden_size % c.num_heads:
        problems.append(f"hidden_size {c.hidden_size} is not divisible by num_heads {c.num_heads}")
    elif (c.hidden_size // c.num_heads) % 4:
        problems.append(
            f"head width {c.hidden_size // c.num_heads} is not a multiple of 4 (the 2D rotary "
            f"embedding splits it in quarters)"
        )
    if c.window_size < c.patch_size * c.spatial_merge_size:
        problems.append(
            f"window_size {c.window_size} px is smaller than one merged token "
            f"({c.patch_size * c.spatial_merge_size} px)"
        )
    if any(not 0 <= i < c.depth for i in c.fullatt_block_indexes):
        problems.append(f"fullatt_block_indexes {list(c.fullatt_block_indexes)} are outside the {c.depth} blocks")
    if problems:
        raise ValueError("Qwen2.5-VL vision config: " + "; ".join(problems))


def vision_arch(config) -> dict:
    """The architecture fields of a vision config, as plain JSON-able values (those it has: transformers
    4.5x's vision config has no `rope_parameters`)."""
    out = {k: getattr(config, k) for k in ARCH_FIELDS if hasattr(config, k)}
    out["fullatt_block_indexes"] = list(out["fullatt_block_indexes"])
    return out


def tiny_vision_config(patch_size: int = 8):
    """Test size: 2 blocks of width 64, 8-px patches, so a 64x64 frame gives a 4x4 grid of 128-d features
    (`patch_size` 4: 4-px patches, an 8x8 grid of 8-px cells).

    window_size 32 px = 2x2 merged tokens at 8-px patches (4x4 at 4-px), so either grid has 4 attention windows
    in block 0; block 1 attends fully (as every 8th block of the real tower).
    """
    return vision_config(
        depth=2,
        hidden_size=64,
        num_heads=2,
        intermediate_size=128,
        out_hidden_size=128,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=32,
        fullatt_block_indexes=[1],
        tokens_per_second=2,
    )


def qwen2_5_vl_3b_vision_config():
    """The vision tower of Qwen2.5-VL-3B-Instruct (its config.json): 32 blocks of 1280, merger to 2048."""
    return vision_config(
        depth=32,
        hidden_size=1280,
        num_heads=16,
        intermediate_size=3420,
        out_hidden_size=2048,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
    )


# --------------------------------------------------------------------------- pre-processing


def smart_resize(
    height: int, width: int, factor: int = 28, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """Qwen's target size: sides multiples of `factor`, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frames of {width}x{height} are too elongated for Qwen2.5-VL (aspect ratio above 200)")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def qwen_patchify(images: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """Normalised images `[K, C, H, W]` -> `[K * H/p * W/p, C * temporal * p * p]` in Qwen's patch order.

    Patches go merge window by merge window (row-major over windows, then row-major inside one),
    each is (channel, time, row, column) flattened, and each image fills its temporal patch by repetition.
    """
    k, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(k, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # [K, gh/m, gw/m, m, m, C, p, p]
    x = x.unsqueeze(-3).expand(*x.shape[:6], temporal, patch, patch)  # [K, gh/m, gw/m, m, m, C, T, p, p]
    return x.reshape(k * gh * gw, c * temporal * patch * patch)


def check_frames(frames: torch.Tensor) -> None:
    if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
        raise ValueError(
            f"semantic encoder frames must be float [K, 3, H, W] in [-1, 1], got {frames.dtype} {list(frames.shape)}"
        )


# --------------------------------------------------------------------------- the encoder


def build_qwen_vision(config, attn: str = "sdpa") -> nn.Module:
    """transformers' Qwen2.5-VL vision tower (state-dict keys as in a Qwen2.5-VL checkpoint under `visual.`)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
    )

    config._attn_implementation = attn
    return Qwen2_5_VisionTransformerPretrainedModel(config)


class SemanticEncoder(nn.Module):
    """Frames in [-1, 1] -> Qwen2.5-VL merger features, one vector per merged 28x28 (real) cell."""

    def __init__(self, config, attn: str = "sdpa", min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
        super().__init__()
        check_vision_config(config)
        self.config = config
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.visual = build_qwen_vision(config, attn)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.config.out_hidden_size

    @property
    def cell(self) -> int:
        """Pixels per side of one merged token: patch_size * spatial_merge_size (28 for Qwen2.5-VL)."""
        return self.config.patch_size * self.config.spatial_merge_size

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The size, in pixels, frames of height x width are resized to (Qwen's smart_resize)."""
        return smart_resize(height, width, self.cell, self.min_pixels, self.max_pixels)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """(gh, gw) of the merged feature grid `encode` gives for frames of height x width."""
        h, w = self.target_size(height, width)
        return h // self.cell, w // self.cell

    def preprocess(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames `[K, 3, H, W]` in [-1, 1] -> (pixel_values, grid_thw), as Qwen's image processor lays them out.

        pixel_values `[K * gh * gw, 3 * T * p * p]` float32 (gh, gw in patches after the resize),
        grid_thw `[K, 3]` = (1, gh, gw) per keyframe.
        """
        check_frames(frames)
        x = ((frames.float() + 1) / 2).to(self.mean.device)  # [K, 3, H, W] in [0, 1]
        size = self.target_size(*x.shape[-2:])
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        x = (x - self.mean) / self.std  # [K, 3, H', W']
        c = self.config
        pixels = qwen_patchify(x, c.patch_size, c.spatial_merge_size, c.temporal_patch_size)
        grid = torch.tensor([[1, size[0] // c.patch_size, size[1] // c.patch_size]] * len(x), device=x.device)
        return pixels, grid  # [K*gh*gw, 3*T*p*p], [K, 3]

    def tower(self, pixels: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """transformers' vision tower: patches -> merged features `[K * gh/m * gw/m, out_dim]` in input order."""
        weight = self.visual.patch_embed.proj.weight
        out = self.visual(pixels.to(weight.device, weight.dtype), grid_thw=grid_thw.to(weight.device))
        return getattr(out, "pooler_output", out)  # transformers < 5 returns the merged tensor itself

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Keyframes `[K, 3, H, W]` in [-1, 1] -> features `[K, gh, gw, out_dim]` float32, gh = H' / cell."""
        check_frames(frames)
        parts = [self._encode_batch(frames[i : i + batch_size]) for i in range(0, len(frames), batch_size)]
        return torch.cat(parts)

    def _encode_batch(self, frames: torch.Tensor) -> torch.Tensor:
        pixels, grid = self.preprocess(frames)  # [K*gh*gw, P], [K, 3]
        merged = self.tower(pixels, grid)  # [K*gh/m*gw/m, out]
        m = self.config.spatial_merge_size
        h, w = int(grid[0, 1]) // m, int(grid[0, 2]) // m
        return merged.float().reshape(len(frames), h, w, -1)  # [K, gh, gw, out]


# --------------------------------------------------------------------------- keyframes


def semantic_keyframes(num_frames: int, fps: float, rate: float = SEMANTIC_FPS) -> tuple[list[float], list[int]]:
    """(times, frame indices) sampled every 1/rate s: frame round(t * fps), repeated frames skipped."""
    from ..plan.timing import keyframe_frames

    return keyframe_frames(num_frames, fps, rate)


def semantic_keyframe_indices(num_frames: int, fps: float, rate: float = SEMANTIC_FPS) -> list[int]:
    """Frame indices of the semantic keyframes, ~`rate` per second from frame 0 to the last frame."""
    return semantic_keyframes(num_frames, fps, rate)[1]


# --------------------------------------------------------------------------- files
