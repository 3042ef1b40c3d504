import pytest
import torch

from planx_core.wan.rope import (
    apply_rope,
    grid_positions,
    rope_axes_dims,
    rope_frequencies,
)


@pytest.mark.parametrize("head_dim, expected", [(128, (44, 42, 42)), (32, (12, 10, 10)), (12, (4, 4, 4))])
def test_axes_split_follows_wan(head_dim, expected):
    assert rope_axes_dims(head_dim) == expected


def wan_reference(x, f, h, w, theta=10000.0):
    """Wan's rope_params/rope_apply on a dense integer grid, written with complex numbers."""
    d = x.shape[-1]
    dims = rope_axes_dims(d)
    tables = [
        torch.polar(
            torch.ones(1024, n // 2, dtype=torch.float64),
            torch.outer(
                torch.arange(1024, dtype=torch.float64), 1.0 / theta ** (torch.arange(0, n, 2, dtype=torch.float64) / n)
            ),
        )
        for n in dims
    ]
    freqs = torch.cat(
        [
            tables[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
            tables[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
            tables[2][:w].view(1, 1, w, -1).expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, -1)
    xc = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(-2).float()


def test_grid_rope_matches_wan_reference():
    f, h, w = 3, 4, 5
    x = torch.randn(2, f * h * w, 2, 32)
    ours = apply_rope(x, rope_frequencies(grid_positions(f, h, w), 32))
    torch.testing.assert_close(ours, wan_reference(x, f, h, w), atol=1e-5, rtol=1e-5)


def test_grid_positions_order_is_frame_row_column():
    pos = grid_positions(2, 3, 4, t_start=5)
    assert pos.shape == (24, 3)
    assert pos[0].tolist() == [5, 0, 0] and pos[1].tolist() == [5, 0, 1] and pos[4].tolist() == [5, 1, 0]
    assert pos[-1].tolist() == [6, 2, 3]


def test_fractional_positions_keep_the_relative_property():
    """q.k after rotation depends only on the offset between positions, fractional or not."""
    q, k = torch.randn(1, 1, 1, 128), torch.randn(1, 1, 1, 128)
    offset = torch.tensor([[1.25, -0.5, 3.75]], dtype=torch.float64)
    scores = []
    for base in ([0.0, 0.0, 0.0], [7.5, 2.25, 10.0], [30.0, 21.0, 39.0]):
        a = torch.tensor([base], dtype=torch.float64)
        qa = apply_rope(q, rope_frequencies(a + offset, 128))
        kb = apply_rope(k, rope_frequencies(a, 128))
        scores.append((qa * kb).sum().item())
    assert scores[0] == pytest.approx(scores[1], rel=1e-4) == pytest.approx(scores[2], rel=1e-4)


def test_rotation_preserves_norm_and_position_zero_is_identity():
    x = torch.randn(1, 6, 2, 32)
    rot = apply_rope(x, rope_frequencies(torch.rand(6, 3) * 20, 32))
    torch.testing.assert_close(rot.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(apply_rope(x, rope_frequencies(torch.zeros(6, 3), 32)), x)
