"""SemanticGen's semantic compressor: a KL-regularised MLP from vision features to a few numbers per cell.

Source: SemanticGen (arXiv 2512.20619): the Qwen2.5-VL vision features (2048 numbers per merged
cell for Qwen2.5-VL-3B, `planx_core.semantic_encoder`) are too wide to be generated directly, so a
learnable MLP compresses each to a small width (8 or 64 in the paper's experiments) and outputs
a mean and a log-variance; a KL term towards N(0, I) regularises the compressed space, and a
decoder back to feature space trains it. The paper does not give the MLP's depth and width nor
the KL weight; the choices below are this project's own.

Choices (see `CompressorConfig`):
- Compressor: LayerNorm(feature_dim) -> `depth` x [Linear -> GELU(tanh)] of width `hidden` ->
  Linear(hidden, 2 * dim), split into mean and log-variance. Default hidden 1024, depth 2 (about
  3.2 M parameters for 2048 -> 8). The input LayerNorm makes the MLP indifferent to the scale of
  the merger outputs, which is not normalised in Qwen2.5-VL.
- Log-variance clamped to [-30, 20] (as the diagonal Gaussian of latent-diffusion VAEs).
- Decoder: the mirror, `depth` x [Linear -> GELU(tanh)] of width `hidden` -> Linear(hidden,
  feature_dim); used for training only.
- Losses: reconstruction = mean squared error over all feature elements; KL = per token the sum
  over the `dim` latent numbers of KL(N(mean, exp(logvar)) || N(0, 1)), then the mean over tokens.
  total = reconstruction + kl_weight * KL with kl_weight 1e-3 by default: with the MSE averaged
  over 2048 features, the ELBO of a Gaussian decoder of variance 1/2 on unit-scale features has
  the KL weighted 1/2048 ~ 5e-4, so 1e-3 is a beta-VAE of beta ~ 2, which keeps the latents
  close to unit scale for the diffusion model that generates them without starving reconstruction.

Files: safetensors with the config in the metadata; compressor keys `compressor.*`, decoder
keys `decoder.*` (training only: beside the compressor, or alone via `save_semantic_decoder`);
`digest()` names the compressor a continuous plan was made with.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..files.modules import (
    build_config,
    config_in_metadata,
    describe_file_kind,
    file_metadata,
    save_module,
)
from ..files.safetensors import (
    CheckpointError,
    PathLike,
    check_keys,
    read_safetensors,
)
from ..limits import check_config

CONFIG_KEY = "planx_semantic_compressor"  # safetensors metadata: the CompressorConfig as JSON
DIGEST_KEY = "planx_semantic_compressor_digest"  # safetensors metadata: the compressor's digest when saved
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0
ARCH_FIELDS = ("feature_dim", "dim", "hidden", "depth")  # what the digest covers besides the weights


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class CompressorConfig:
    """Sizes of the compressor / decoder MLPs and the KL weight of the training loss."""

    feature_dim: int = 2048  # Qwen2.5-VL-3B merger width
    dim: int = 8  # compressed width (SemanticGen: 8 or 64)
    hidden: int = 1024  # width of the hidden layers
    depth: int = 2  # hidden layers in each MLP (0: a single Linear)
    kl_weight: float = 1e-3  # total = reconstruction + kl_weight * KL
    name: str = "semanticgen"

    def __post_init__(self):
        check_config(
            f"CompressorConfig {self.name!r}",
            feature_dim=("model_dim", self.feature_dim),
            dim=("vector_width", self.dim),
            hidden=("model_dim", self.hidden),
        )
        if not (isinstance(self.depth, int) and 0 <= self.depth <= 64):
            raise ValueError(f"CompressorConfig {self.name!r}: depth must be an integer >= 0, got {self.depth!r}")
        if not (isinstance(self.kl_weight, (int, float)) and math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(
                f"CompressorConfig {self.name!r}: kl_weight must be finite and >= 0, got {self.kl_weight!r}"
            )
        if not (isinstance(self.name, str) and self.name):
            raise ValueError(f"CompressorConfig: name must be a non-empty string, got {self.name!r}")

    @property
    def space_name(self) -> str:
        """Name of the compressed space for plans, e.g. "semanticgen-kl8"."""
        return f"{self.name}-kl{self.dim}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping, source: PathLike | None = None) -> CompressorConfig:
        return build_config(cls, data, source, "compressor config", "train or export the compressor again")

    @classmethod
    def tiny(cls, dim: int = 8) -> CompressorConfig:
        """Test size, on the 128-d features of `semantic_encoder.tiny_vision_config()`."""
        return cls(feature_dim=128, dim=dim, hidden=64, depth=2, name="semanticgen-tiny")


# --------------------------------------------------------------------------- the MLPs


def mlp(width_in: int, hidden: int, depth: int, width_out: int) -> list[nn.Module]:
    """`depth` x [Linear -> GELU(tanh)] of width `hidden`, then Linear to `width_out`."""
    layers, width = [], width_in
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.GELU(approximate="tanh")]
        width = hidden
    return layers + [nn.Linear(width, width_out)]


class CompressorOutput(NamedTuple):
    z: torch.Tensor  # [..., dim]: a sample when sampling, else the mean
    mean: torch.Tensor  # [..., dim]
    logvar: torch.Tensor  # [..., dim], clamped to [LOGVAR_MIN, LOGVAR_MAX]


class SemanticCompressor(nn.Module):
    """Features `[..., feature_dim]` -> diagonal Gaussian `[..., dim]` (mean, log-variance)."""

    def __init__(self, config: CompressorConfig):
        super().__init__()
        self.config = c = config
        self.net = nn.Sequential(nn.LayerNorm(c.feature_dim), *mlp(c.feature_dim, c.hidden, c.depth, 2 * c.dim))

    def forward(
        self, features: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> CompressorOutput:
        """(z, mean, logvar); z = mean + exp(logvar / 2) * eps when `sample`, else the mean."""
        if features.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"semantic compressor takes features of width {self.config.feature_dim}, got "
                f"{list(features.shape)}; use the compressor trained on this encoder's features"
            )
        weight = self.net[1].weight
        mean, logvar = self.net(features.to(weight.device, weight.dtype)).chunk(2, dim=-1)  # [..., dim] x 2
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        if not sample:
            return CompressorOutput(mean, mean, logvar)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)  # [..., dim]
        return CompressorOutput(mean + torch.exp(0.5 * logvar) * eps, mean, logvar)

    def digest(self) -> str:
        """First 16 hex digits of sha256 over the architecture and the float32 weights (device independent)."""
        return compressor_digest(self.config, self.state_dict())

    def save(self, path: PathLike, decoder: SemanticDecoder | None = None) -> None:
        """`save_compressor(self, path, decoder)`."""
        save_compressor(self, path, decoder)

    def identity(self, name: str | None = None):
        """The `CodebookId` a continuous plan made with this compressor carries: space name, dim, digest."""
        from ..plan.core import CodebookId

        return CodebookId(name=name or self.config.space_name, size=self.config.dim, digest=self.digest())


class SemanticDecoder(nn.Module):
    """Compressed vectors `[..., dim]` -> features `[..., feature_dim]`; trains the compressor."""

    def __init__(self, config: CompressorConfig):
        super().__init__()
        self.config = c = config
        self.net = nn.Sequential(*mlp(c.dim, c.hidden, c.depth, c.feature_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        weight = self.net[0].weight
        return self.net(z.to(weight.device, weight.dtype))  # [..., feature_dim]

    def reconstruction_loss(self, z: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Mean squared error between decode(z) and the features z was made from (float32 scalar)."""
        return reconstruction_loss(self(z), features)

    def save(self, path: PathLike) -> None:
        """`save_semantic_decoder(self, path)`."""
        save_semantic_decoder(self, path)


def compressor_digest(config: CompressorConfig, state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the architecture fields and the shapes and float32 bytes of the weights (sorted keys)."""
    h = hashlib.sha256(b"planx-semantic-compressor-v1")
    h.update(json.dumps({k: getattr(config, k) for k in ARCH_FIELDS}, sort_keys=True).encode())
    for key in sorted(state):
        arr = state[key].detach().to("cpu", torch.float32).contiguous().numpy()
        h.update(f"{key}{tuple(arr.shape)}".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- losses


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)): sum over the last axis, mean over all others; float32 scalar."""
    mean, logvar = mean.float(), logvar.float()
    per_token = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum(dim=-1)  # [...]
    return per_token.mean()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements, in float32."""
    return F.mse_loss(pred.float(), target.float())


class LossParts(NamedTuple):
    total: torch.Tensor  # reconstruction + kl_weight * kl
    reconstruction: torch.Tensor
    kl: torch.Tensor


def autoencoder_loss(
    compressor: SemanticCompressor,
    decoder: SemanticDecoder,
    features: torch.Tensor,
    generator: torch.Generator | None = None,
) -> LossParts:
    """Training loss on features `[..., feature_dim]`: sample z, decode, reconstruction + weighted KL."""
    z, mean, logvar = compressor(features, sample=True, generator=generator)  # [..., dim] x 3
    recon = reconstruction_loss(decoder(z), features)
    kl = kl_loss(mean, logvar)
    return LossParts(recon + compressor.config.kl_weight * kl, recon, kl)


# --------------------------------------------------------------------------- files


def save_compressor(compressor: SemanticCompressor, path: PathLike, decoder: SemanticDecoder | None = None) -> None:
    """Write the compressor (and optionally its decoder) as safetensors, config and digest in the metadata."""
    if decoder is not None and decoder.config != compressor.config:
        raise ValueError(f"decoder config {decoder.config} differs from the compressor's {compressor.config}")
    state = {f"compressor.{k}": v for k, v in compressor.state_dict().items()}
    if decoder is not None:
        state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    save_module(
        state, path, key=CONFIG_KEY, config=compressor.config.to_dict(), metadata={DIGEST_KEY: compressor.digest()}
    )


def save_semantic_decoder(decoder: SemanticDecoder, path: PathLike) -> None:
    """Write a decoder alone (keys `decoder.*`, config in the metadata); `load_semantic_decoder` reads it."""
    state = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}
    save_module(state, path, key=CONFIG_KEY, config=decoder.config.to_dict())


def _file_config(path: PathLike) -> tuple[CompressorConfig, dict]:
    """(config, metadata) of a compressor file, refusing other files."""
    meta = file_metadata(path)
    raw = config_in_metadata(meta, CONFIG_KEY, path, "re-save the file")
    if raw is None:
        other = describe_file_kind(meta, but_not=CONFIG_KEY)
        raise CheckpointError(
            f"{path}: not a Plan-X semantic compressor file (no '{CONFIG_KEY}' metadata)"
            f"{f'; this is {other}' if other else ''}; choose the compressor file saved with "
            f"save_compressor"
        )
    try:
        return CompressorConfig.from_dict(raw, path), meta
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unusable compressor config ({err}); re-save the file") from None


def _part(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _load_part(module: nn.Module, state: dict, path: PathLike, what: str) -> None:
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_keys(
        state,
        expected,
        f"{path}: the {what} weights do not fit the file's own config {module.config}:",
        "The file is damaged; re-save it with save_compressor.",
    )
    module.load_state_dict(state)


def load_compressor(path: PathLike, dtype: torch.dtype | None = None) -> SemanticCompressor:
    """A compressor from a `save_compressor` file, in eval mode; its digest must match the saved one."""
    config, meta = _file_config(path)
    state = read_safetensors(path)
    unknown = sorted(k for k in state if not k.startswith(("compressor.", "decoder.")))
    if unknown:
        raise CheckpointError(
            f"{path}: unexpected keys {unknown[:5]} in a compressor file; the file is damaged, "
            f"re-save it with save_compressor"
        )
    if not any(k.startswith("compressor.") for k in state):
        raise CheckpointError(
            f"{path}: this file holds only a semantic decoder (training only); load the "
            f"compressor file saved with save_compressor"
        )
    compressor = SemanticCompressor(config)
    _load_part(compressor, _part(state, "compressor."), path, "compressor")
    saved = meta.get(DIGEST_KEY)
    if saved and saved != compressor.digest():
        raise CheckpointError(
            f"{path}: the compressor weights do not match the digest recorded when the file was "
            f"saved ({saved} vs {compressor.digest()}); the file was altered or damaged, re-save "
            f"or re-download it"
        )
    return (compressor if dtype is None else compressor.to(dtype)).eval()


def load_semantic_decoder(path: PathLike, dtype: torch.dtype | None = None) -> SemanticDecoder:
    """A decoder from `save_semantic_decoder` or stored beside a compressor by `save_compressor(..., decoder)`."""
    config, _ = _file_config(path)
    state = _part(read_safetensors(path), "decoder.")
    if not state:
        raise CheckpointError(
            f"{path}: this compressor file has no decoder (it was saved for inference only); use "
            f"the file from save_semantic_decoder or save_compressor(compressor, path, decoder)"
        )
    decoder = SemanticDecoder(config)
    _load_part(decoder, state, path, "decoder")
    return (decoder if dtype is None else decoder.to(dtype)).eval()
