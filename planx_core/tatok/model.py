"""TA-Tok, the text-aligned image tokenizer of Tar, for turning frames into plan tokens.

Source: Tar (github csuhan/Tar, Apache-2.0), `tok/ta_tok.py` (`TextAlignedTokenizer.encode`,
`avg_pool`), `tok/ar_dtok/bottleneck.py` (`Bottleneck`, `SimVectorQuantizer`), `tok/utils.py`
(`ScalingLayer`); see docs/method.md section 3. Written from that description, not copied.

Pipeline: RGB in [0, 1] -> [-1, 1] -> squash-resize to 384x384 -> SigLIP so400m/14 vision model
(transformers' SigLIP v1 architecture, which the fixed-resolution siglip2-so400m-patch14-384
checkpoint uses) -> penultimate hidden state, 27x27x1152 -> average pooling with scale 1/2/3
(27x27 / 13x13 / 9x9 = 729 / 169 / 81 tokens; pooling floors, so scale 2 drops the last row and
column) -> `encode_task_layer` Linear+Tanh -> `bottleneck.in_linear` to 1536 -> cosine-nearest
code in the 65536x1536 codebook `normalize(embedding_proj(embedding.weight))`.

Loading, saving and the converter from the released `ta_tok.pth` live in `files`; video -> plan in `video`.

Differences from Tar, on purpose:
- Only the encoder half is kept. The released `ta_tok.pth` also holds the feature de-tokenizer
  (`decoder.*`, `decode_task_layer.*`) and possibly the SigLIP2 teacher (`teacher*`); those keys
  are dropped by the converter and the loader. `bottleneck.out_linear` is kept (key parity,
  and it maps codes back to the de-tokenizer's input) but `encode` does not use it.
- The code lookup is always the deterministic argmax of the cosine similarity, computed in
  float32 and in chunks of the codebook (Tar samples codes from softmax(cos / 0.03) unless the
  model is in eval mode with `set_vq_eval_deterministic(True)`; its argmax of that softmax equals
  ours except for near-ties that fp32 softmax flattens).
- The resize uses antialiased bilinear interpolation (torchvision's `Resize` default since
  0.17); Tar's pinned torchvision 0.16 did not antialias tensors. For the downscaling of video
  frames to 384 px antialiasing is the faithful choice.
- The codebook digest of `identity()` hashes the float32 bytes of the parameters that define the
  codebook (`embedding.weight`, `embedding_proj.weight`, `embedding_proj.bias`) rather than the
  projected matrix, whose last bits depend on the device and BLAS that computed it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..files.modules import build_config
from ..files.safetensors import PathLike
from ..limits import check_config

_SIMILARITY_BLOCK = 1 << 26  # similarities computed at once by nearest_codes (256 MB in float32)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TATokConfig:
    """TA-Tok architecture: SigLIP vision sizes, feature layer, bottleneck and codebook sizes."""

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    patch_size: int = 14
    image_size: int = 384
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"
    use_head: bool = True  # SigLIP's attention-pooling head: in the checkpoint, never run here
    select_layer: int = -2  # index into the hidden states (embeddings, layer 1, ..., layer L)
    bottleneck_dim: int = 1536
    codebook_size: int = 65536
    name: str = "ta-tok-so400m"

    def __post_init__(self):
        check_config(
            f"TATokConfig {self.name!r}",
            hidden_size=("model_dim", self.hidden_size),
            intermediate_size=("ffn_dim", self.intermediate_size),
            num_hidden_layers=("model_layers", self.num_hidden_layers),
            num_attention_heads=("model_heads", self.num_attention_heads),
            patch_size=("grid", self.patch_size),
            image_size=("side", self.image_size),
            bottleneck_dim=("model_dim", self.bottleneck_dim),
            codebook_size=("codebook", self.codebook_size),
        )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"TATokConfig {self.name!r}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.image_size < self.patch_size:
            raise ValueError(
                f"TATokConfig {self.name!r}: image_size {self.image_size} is smaller than one "
                f"{self.patch_size}-pixel patch"
            )
        if not 1 <= self.layers_run <= self.num_hidden_layers:
            raise ValueError(
                f"TATokConfig {self.name!r}: select_layer {self.select_layer} picks no encoder layer "
                f"output of a {self.num_hidden_layers}-layer model (use -2 for the penultimate)"
            )
        from transformers.activations import ACT2CLS

        if self.hidden_act not in ACT2CLS:
            raise ValueError(
                f"TATokConfig {self.name!r}: hidden_act {self.hidden_act!r} is not an activation transformers knows"
            )

    @property
    def patch_grid(self) -> int:
        """Patches per side: 27 for so400m/14 at 384 px (the patch convolution drops the last 6 pixels)."""
        return self.image_size // self.patch_size

    @property
    def layers_run(self) -> int:
        """How many encoder layers produce the selected hidden state (26 of 27 for select_layer -2)."""
        n = self.num_hidden_layers
        return n + 1 + self.select_layer if self.select_layer < 0 else self.select_layer

    def vision_kwargs(self) -> dict:
        """Keyword arguments of transformers' `SiglipVisionConfig`."""
        return dict(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_channels=3,
            image_size=self.image_size,
            patch_size=self.patch_size,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            attention_dropout=0.0,
            vision_use_head=self.use_head,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, source: PathLike | None = None) -> TATokConfig:
        return build_config(cls, data, source, "TA-Tok config", "re-convert the file")

    @classmethod
    def so400m(cls) -> TATokConfig:
        """The released TA-Tok: SigLIP2 so400m/14 at 384 px, 1536-d codes, 65536 of them."""
        return cls()

    @classmethod
    def tiny(cls) -> TATokConfig:
        """Test size with the real 27x27 patch grid (patch 2 at 54 px), so grids 27/13/9 all exist."""
        return cls(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=2,
            image_size=54,
            bottleneck_dim=16,
            codebook_size=256,
            name="ta-tok-tiny",
        )

    @classmethod
    def mid(cls) -> TATokConfig:
        """Benchmark size: real input and codebook, a narrower and shallower encoder."""
        return cls(
            hidden_size=384, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=6, name="ta-tok-mid"
        )


# --------------------------------------------------------------------------- pooling and lookup


def pool_scale_for(patch_grid: int, grid: int) -> int:
    """The pooling scale s with floor(patch_grid / s) == grid (the largest such s, which covers the most).

    27 -> grid 27 / 13 / 9 -> scale 1 / 2 / 3, Tar's `<S0>` / `<S1>` / `<S2>`.
    """
    scales = [s for s in range(1, patch_grid + 1) if patch_grid // s == grid]
    if not scales:
        options = sorted({patch_grid // s for s in range(1, patch_grid + 1)}, reverse=True)
        raise ValueError(
            f"a {patch_grid}x{patch_grid} patch grid cannot be pooled to a {grid}x{grid} token grid; "
            f"possible grids: {options[:8]}{' ...' if len(options) > 8 else ''} (27, 13, 9 for TA-Tok)"
        )
    return max(scales)


def pool_tokens(features: torch.Tensor, grid: int) -> torch.Tensor:
    """Average-pool a square patch map `[B, p*p, C]` to `[B, grid*grid, C]` (kernel = stride = scale)."""
    b, n, c = features.shape
    p = math.isqrt(n)
    if p * p != n:
        raise ValueError(f"pool_tokens needs a square patch map, got {n} tokens")
    scale = pool_scale_for(p, grid)
    if scale == 1:
        return features
    maps = features.transpose(1, 2).reshape(b, c, p, p)  # [B, C, p, p]
    pooled = F.avg_pool2d(maps, kernel_size=scale, stride=scale)  # [B, C, grid, grid]
    return pooled.flatten(2).transpose(1, 2)  # [B, grid*grid, C]


def nearest_codes(z: torch.Tensor, codebook: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Cosine-nearest row of an L2-normalised codebook `[N, D]` for each vector of `z` `[..., D]`.

    Float32, in blocks of `chunk` codes and at most ~64 M similarities at a time (a [M, N] matrix
    is never built whole); ties go to the lowest index, like argmax. Returns LongTensor `[...]`.
    """
    flat = F.normalize(z.reshape(-1, z.shape[-1]).float(), dim=-1)  # [M, D]
    rows = max(1, _SIMILARITY_BLOCK // chunk)
    parts = [_nearest_block(flat[i : i + rows], codebook, chunk) for i in range(0, flat.shape[0], rows)]
    index = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=flat.device)
    return index.reshape(z.shape[:-1])


def _nearest_block(flat: torch.Tensor, codebook: torch.Tensor, chunk: int) -> torch.Tensor:
    best = torch.full((flat.shape[0],), -math.inf, device=flat.device)  # [m]
    index = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)  # [m]
    for start in range(0, codebook.shape[0], chunk):
        sims = flat @ codebook[start : start + chunk].float().T  # [m, chunk]
        value, arg = sims.max(dim=1)  # [m], [m]
        better = value > best
        best = torch.where(better, value, best)
        index = torch.where(better, arg + start, index)
    return index


def to_unit_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float passes through."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] or uint8, got {images.dtype}")
    return images


# --------------------------------------------------------------------------- the model


class ScaleLayer(nn.Module):
    """(x - shift) / scale per channel; Tar's buffers map [0, 1] to [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("scale", torch.full((1, 3, 1, 1), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class SimVQ(nn.Module):
    """Tar's `SimVectorQuantizer` parameters: codebook = normalize(embedding_proj(embedding.weight))."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)
        self.embedding_proj = nn.Linear(dim, dim)


class Bottleneck(nn.Module):
    """Tar's `Bottleneck`: in_linear (hidden -> dim), the quantiser, out_linear (dim -> dim)."""

    def __init__(self, hidden: int, dim: int, size: int):
        super().__init__()
        self.in_linear = nn.Linear(hidden, dim)
        self.regularizer = SimVQ(dim, size)
        self.out_linear = nn.Linear(dim, dim)


def build_siglip_vision(config: TATokConfig, attn: str = "sdpa") -> nn.Module:
    """transformers' SigLIP vision tower whose state-dict keys are Tar's `encoder.*` keys."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    vision_config = SiglipVisionConfig(**config.vision_kwargs())
    vision_config._attn_implementation = attn
    model = SiglipVisionModel(vision_config)
    return getattr(model, "vision_model", model)  # transformers < 5 wraps the tower in `.vision_model`


class TATok(nn.Module):
    """The encoder half of Tar's TextAlignedTokenizer; submodule names give Tar's state-dict keys."""

    def __init__(self, config: TATokConfig, attn: str = "sdpa"):
        super().__init__()
        self.config = config
        self.encoder = build_siglip_vision(config, attn)
        self.encode_task_layer = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.Tanh())
        self.bottleneck = Bottleneck(config.hidden_size, config.bottleneck_dim, config.codebook_size)
        self.scale_layer = ScaleLayer()
        self._codebook: tuple[tuple, torch.Tensor] | None = None
        self._digest: tuple[tuple, str] | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module.clear_caches())

    def clear_caches(self) -> None:
        """Forget the cached codebook and digest (done on every load_state_dict)."""
        self._codebook = self._digest = None

    # -- images -> features ----------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """`[B, 3, H, W]` or video `[B, 3, T, H, W]` in [0, 1] -> `[B(*T), 3, S, S]` in [-1, 1], S = image_size."""
        if images.ndim == 5:
            images = images.transpose(1, 2).flatten(0, 1)  # [B*T, 3, H, W]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"TA-Tok takes RGB images [B, 3, H, W] or video [B, 3, T, H, W], got "
                f"{list(images.shape)}; move the channel axis to position 1"
            )
        x = self.scale_layer(to_unit_images(images).to(self.scale_layer.shift.device).float())  # [B, 3, H, W]
        size = self.config.image_size
        if tuple(x.shape[-2:]) != (size, size):  # squash: the aspect ratio is not kept (as in Tar)
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x  # [B, 3, S, S]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Selected SigLIP hidden state (penultimate by default), `[B, p*p, hidden]`; p = 27 for the real model."""
        x = self.preprocess(images)  # [B, 3, S, S]
        weight = self.encoder.embeddings.patch_embedding.weight
        hidden = self.encoder.embeddings(x.to(weight.dtype))  # [B, p*p, h]
        for layer in self.encoder.encoder.layers[: self.config.layers_run]:  # later layers and the head are unused
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out  # [B, p*p, h]
        return hidden

    # -- features -> codes -----------------------------------------------------------------
    def project(self, features: torch.Tensor, grid: int) -> torch.Tensor:
        """Patch features `[B, p*p, h]` -> pooled, task layer, in_linear: `[B, grid*grid, bottleneck_dim]` fp32."""
        pooled = pool_tokens(features, grid)  # [B, g*g, h]
        z = self.encode_task_layer(pooled.to(self.encode_task_layer[0].weight.dtype))  # [B, g*g, h]
        lin = self.bottleneck.in_linear
        return F.linear(z.float(), lin.weight.float(), lin.bias.float())  # [B, g*g, D]

    @torch.no_grad()
    def encode(self, images: torch.Tensor, grid: int = 9, chunk: int = 8192) -> torch.Tensor:
        """Images `[B, 3, H, W]` (or video `[B, 3, T, H, W]`) in [0, 1] -> token ids `[B(*T), grid*grid]`, row-major.

        Deterministic: cosine argmax in float32, whatever the encoder's dtype.
        """
        z = self.project(self.features(images), grid)  # [B, g*g, D]
        return nearest_codes(z, self.codebook(), chunk)  # [B, g*g]

    # -- the codebook ----------------------------------------------------------------------
    def _codebook_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reg = self.bottleneck.regularizer
        return reg.embedding.weight, reg.embedding_proj.weight, reg.embedding_proj.bias

    def _params_key(self) -> tuple:
        """Storage, version, device and dtype of the codebook parameters (inference tensors have no version)."""
        return tuple(
            (p.data_ptr(), -1 if p.is_inference() else p._version, str(p.device), p.dtype)
            for p in self._codebook_params()
        )

    @torch.no_grad()
    def codebook(self) -> torch.Tensor:
        """The effective codebook `normalize(embedding_proj(embedding.weight))`, `[N, D]` float32, cached.

        The cache is keyed on the parameters' storage and version and cleared by load_state_dict,
        so loading weights, moving the model or editing the parameters in place recomputes it.
        """
        key = self._params_key()
        if self._codebook is None or self._codebook[0] != key:
            emb, weight, bias = (p.float() for p in self._codebook_params())
            self._codebook = (key, F.normalize(F.linear(emb, weight, bias), dim=-1))  # [N, D]
        return self._codebook[1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids `[...]` -> codebook vectors `[..., D]`: what the DiT semantic branch consumes."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.codebook().device)
        return codebook_vectors(ids, self.codebook())

    def digest(self) -> str:
        """First 16 hex digits of sha256 over the float32 codebook parameters (device independent)."""
        key = self._params_key()
        if self._digest is None or self._digest[0] != key:
            self._digest = (key, codebook_digest(*self._codebook_params()))
        return self._digest[1]

    def identity(self, name: str = "ta-tok"):
        """The `CodebookId` that plans made with this tokenizer carry."""
        from ..plan.core import CodebookId

        return CodebookId(name=name, size=self.config.codebook_size, digest=self.digest())


def codebook_digest(embedding: torch.Tensor, proj_weight: torch.Tensor, proj_bias: torch.Tensor) -> str:
    """sha256 of the shapes and float32 bytes of the three codebook parameters, first 16 hex digits."""
    h = hashlib.sha256(b"planx-tatok-codebook-v1")
    for t in (embedding, proj_weight, proj_bias):
        arr = t.detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(repr(tuple(arr.shape)).encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


def codebook_vectors(token_ids: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Plan token ids `[B, P]` -> frozen codebook rows `[B, P, code_dim]`, refusing out-of-range ids."""
    bad = (token_ids < 0) | (token_ids >= codebook.shape[0])
    if bad.any():
        first = tuple(bad.nonzero()[0].tolist())
        raise ValueError(
            f"plan token {int(token_ids[first])} at {first} is outside the codebook's "
            f"0..{codebook.shape[0] - 1}; the plan was made with another tokenizer"
        )
    return codebook[token_ids]
