"""Plan pictures: code colours from the codebook's principal components, grids per keyframe, labels, words."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from planx_core.plan.core import CodebookId, make_plan
from planx_core.plan.picture import (
    WORD_CELL,
    code_colours,
    plan_picture,
    plan_picture_frames,
    principal_axes,
)

BOOK = F.normalize(torch.randn(512, 24, generator=torch.Generator().manual_seed(0)), dim=-1)


def a_plan(keyframes: int = 3, grid=(9, 9), locked=None, size: int = 512):
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, size, (keyframes, grid[0] * grid[1]), generator=gen)
    return make_plan(
        tokens,
        times=[0.5 * k for k in range(keyframes)],
        fps=24.0,
        num_frames=121,
        width=1280,
        height=704,
        codebook=CodebookId("ta-tok", size, "0123456789abcdef"),
        grid=grid,
        locked=locked,
    )


def test_colours_are_deterministic_and_in_range():
    colours = code_colours(BOOK, key="test-a")
    assert colours.shape == (512, 3) and colours.dtype == torch.float32
    assert colours.min() >= 0 and colours.max() <= 1
    assert code_colours(BOOK, key="test-a") is colours  # cached by key
    assert torch.equal(code_colours(BOOK.clone()), colours)  # recomputed (hashed key): the same colours
    assert colours.std(0).min() > 0.05  # three informative channels


def test_similar_codes_get_similar_colours():
    gen = torch.Generator().manual_seed(2)
    near = F.normalize(BOOK + 0.02 * torch.randn(BOOK.shape, generator=gen), dim=-1)
    colours = code_colours(torch.cat([BOOK, near]), key="test-b")
    close = (colours[:512] - colours[512:]).norm(dim=1)
    far = (colours[:512] - colours[torch.randperm(512, generator=gen)]).norm(dim=1)
    assert close.median() < 0.2 * far.median()


def test_principal_axes_have_fixed_signs():
    mean, axes = principal_axes(BOOK)
    _, flipped = principal_axes(-BOOK)  # the same directions, opposite signs of the data
    assert axes.shape == (24, 3)
    torch.testing.assert_close(axes.abs(), flipped.abs())
    assert (axes[axes.abs().argmax(0), torch.arange(3)] > 0).all()
    narrow = code_colours(torch.randn(10, 2), key="test-c")  # fewer than three dimensions still works
    assert narrow.shape == (10, 3)


def test_picture_layout_and_cell_colours():
    plan = a_plan()
    colours = code_colours(BOOK, key="test-a")
    img = plan_picture(plan, colours, cell=24, gap=6)
    label = 18
    assert img.shape == (label + 9 * 24, 3 * 216 + 2 * 6, 3) and img.dtype == torch.float32
    assert 0 <= img.min() and img.max() <= 1
    expect = (colours * 255).round() / 255
    for k in range(3):
        for cell in (0, 40, 80):
            r, c = divmod(cell, 9)
            y, x = label + r * 24 + 12, k * 222 + c * 24 + 12
            torch.testing.assert_close(img[y, x], expect[plan.keyframes[k].tokens[cell]])
    assert torch.equal(img, plan_picture(plan, colours, cell=24, gap=6))  # deterministic
    assert torch.equal(img[:, 216:222], torch.full((234, 6, 3), 30 / 255))  # the separator
    assert img[:label].max() > 0.5  # a time label is drawn


def test_frames_are_the_panels_and_locks_are_marked():
    colours = code_colours(BOOK, key="test-a")
    plan = a_plan(locked=[False, True, False])
    frames = plan_picture_frames(plan, colours)
    img = plan_picture(plan, colours)
    assert frames.shape == (3, 234, 216, 3)
    for k in range(3):
        assert torch.equal(frames[k], img[:, k * 222 : k * 222 + 216])
    unlocked = plan_picture_frames(a_plan(), colours)
    assert torch.equal(frames[0], unlocked[0]) and not torch.equal(frames[1], unlocked[1])
    gold = torch.tensor([240, 190, 40]) / 255
    torch.testing.assert_close(frames[1, 18 + 50, 0], gold)  # the lock border


def test_words_are_drawn_in_larger_cells():
    plan = a_plan(keyframes=2, grid=(3, 4))
    colours = code_colours(BOOK, key="test-a")
    words = [[f"word{i}" for i in range(12)] for _ in range(2)]
    img = plan_picture(plan, colours, words=words)
    label = round(WORD_CELL * 0.75)
    assert img.shape == (label + 3 * WORD_CELL, 2 * 4 * WORD_CELL + 6, 3)
    plain = plan_picture(plan, colours, cell=WORD_CELL)
    assert img.shape == plain.shape and not torch.equal(img, plain)
    with pytest.raises(ValueError, match="one list of 12 strings per keyframe"):
        plan_picture(plan, colours, words=[["a"] * 12])


def test_colours_must_cover_the_plans_codebook():
    plan = a_plan(size=512)
    with pytest.raises(ValueError, match="colours cover 100 codes"):
        plan_picture(plan, torch.rand(100, 3))
    with pytest.raises(ValueError, match=r"colours must be \[N, 3\]"):
        plan_picture(plan, torch.rand(512, 4))
