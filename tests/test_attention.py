import logging

import pytest
import torch

from planx_core.wan import attention as attn_mod
from planx_core.wan.attention import (
    attention,
    available_backends,
    get_default_backend,
    use_backend,
)


def reference(q, k, v, bias=None):
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / q.shape[-1] ** 0.5
    if bias is not None:
        scores = scores + bias
    return torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v)


def qkv(lq=7, lk=5):
    return torch.randn(2, lq, 3, 8), torch.randn(2, lk, 3, 8), torch.randn(2, lk, 3, 8)


def test_sdpa_matches_softmax_attention():
    q, k, v = qkv()
    torch.testing.assert_close(attention(q, k, v), reference(q, k, v), atol=1e-5, rtol=1e-5)
    bias = torch.zeros(1, 1, 1, 5)
    bias[..., -2:] = -1.5
    torch.testing.assert_close(attention(q, k, v, attn_mask=bias), reference(q, k, v, bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["flash", "sage"])
def test_unusable_backend_falls_back_to_sdpa_with_one_log_line(backend, caplog):
    attn_mod._warned.clear()
    q, k, v = qkv()
    with caplog.at_level(logging.WARNING, logger="planx_core.attention"):
        first = attention(q, k, v, backend=backend)
        attention(q, k, v, backend=backend)
    torch.testing.assert_close(first, attention(q, k, v, backend="sdpa"))
    lines = [r for r in caplog.records if backend in r.getMessage()]
    assert len(lines) == 1 and "using PyTorch SDPA" in lines[0].getMessage()


def test_unknown_backend_is_an_error_that_lists_the_choices():
    with pytest.raises(ValueError, match="sdpa, flash, sage, flex"):
        attention(*qkv(), backend="xformers")


def test_use_backend_restores_the_default():
    assert get_default_backend() == "sdpa"
    with use_backend("flex"):
        assert get_default_backend() == "flex"
    assert get_default_backend() == "sdpa"
    assert "sdpa" in available_backends()


def test_flex_block_mask_matches_dense_masked_reference():
    from torch.nn.attention.flex_attention import create_block_mask

    q, k, v = (torch.randn(1, 256, 2, 16) for _ in range(3))
    window = 64

    def same_window(b, h, qi, ki):
        return qi // window == ki // window

    block_mask = create_block_mask(same_window, B=None, H=None, Q_LEN=256, KV_LEN=256, device="cpu")
    idx = torch.arange(256)
    dense = torch.where(idx[:, None] // window == idx[None] // window, 0.0, float("-inf"))
    torch.testing.assert_close(
        attention(q, k, v, block_mask=block_mask), reference(q, k, v, dense), atol=1e-4, rtol=1e-4
    )
