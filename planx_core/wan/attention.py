"""The single attention entry point of planx_core, with selectable backends.

Backends: PyTorch `scaled_dot_product_attention` ("sdpa", the default), flash-attn ("flash"),
SageAttention ("sage") and `torch.nn.attention.flex_attention` ("flex", for block masks). A
backend that is not installed or cannot run these inputs (CPU tensors, fp32, a dense mask)
falls back to SDPA and logs one line saying why, once per backend and reason; it never crashes.
Layout everywhere: `[B, L, H, D]` in, `[B, L, H, D]` out (Wan's `flash_attention` layout).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("planx_core.attention")

BACKENDS = ("sdpa", "flash", "sage", "flex")
_default_backend = "sdpa"
_warned: set[tuple[str, str]] = set()


def set_default_backend(name: str) -> None:
    global _default_backend
    _default_backend = _check_name(name)


def get_default_backend() -> str:
    return _default_backend


@contextlib.contextmanager
def use_backend(name: str):
    """Run a block of code with another default backend."""
    global _default_backend
    previous, _default_backend = _default_backend, _check_name(name)
    try:
        yield
    finally:
        _default_backend = previous


def _check_name(name: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


def available_backends() -> list[str]:
    """Backends whose packages import here (whether a call can use them also depends on the inputs)."""
    found = ["sdpa"]
    if importlib.util.find_spec("flash_attn") is not None:
        found.append("flash")
    if importlib.util.find_spec("sageattention") is not None:
        found.append("sage")
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None:
        found.append("flex")
    return found


def _fallback(backend: str, reason: str) -> str:
    if (backend, reason) not in _warned:
        _warned.add((backend, reason))
        log.warning("attention backend %r unavailable (%s); using PyTorch SDPA", backend, reason)
    return "sdpa"


def _resolve(backend: str, q: torch.Tensor, attn_mask, block_mask) -> str:
    if block_mask is not None:
        return "flex"  # only flex_attention understands a BlockMask
    if backend == "flex":
        return "sdpa"  # flex without a block mask is plain attention
    if backend in ("flash", "sage"):
        package = "flash_attn" if backend == "flash" else "sageattention"
        if importlib.util.find_spec(package) is None:
            return _fallback(backend, f"package {package} is not installed")
        if not q.is_cuda:
            return _fallback(backend, "tensors are not on a CUDA device")
        if q.dtype not in (torch.float16, torch.bfloat16):
            return _fallback(backend, f"dtype {q.dtype} (needs fp16 or bf16)")
        if attn_mask is not None:
            return _fallback(backend, "a dense attention mask was given")
    return backend


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: str | None = None,
    attn_mask: torch.Tensor | None = None,
    block_mask=None,
) -> torch.Tensor:
    """Softmax attention of `q` `[B, Lq, H, D]` over `k`, `v` `[B, Lk, H, D]` -> `[B, Lq, H, D]`.

    `attn_mask` is an additive float (or boolean keep) mask broadcastable to `[B, H, Lq, Lk]`;
    `block_mask` is a flex_attention BlockMask and selects the flex backend.
    """
    name = _resolve(_check_name(backend or _default_backend), q, attn_mask, block_mask)
    if name == "flash":
        from flash_attn import flash_attn_func

        return flash_attn_func(q, k, v)
    if name == "sage":
        from sageattention import sageattn

        return sageattn(q, k, v, tensor_layout="NHD")
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, D]
    if name == "flex":
        from torch.nn.attention.flex_attention import flex_attention

        return flex_attention(qt, kt, vt, block_mask=block_mask).transpose(1, 2)
    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=attn_mask).transpose(1, 2)
