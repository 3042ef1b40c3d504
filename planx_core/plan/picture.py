"""A picture of a plan: each keyframe's token grid as coloured cells, side by side, with times and locks.

This project's own visualisation (Plan-X shows plans as grids of TA-Tok codes, Fig. 2, but gives
no colouring). Colours come from a fixed projection of the codebook: the top three principal
components of an evenly spaced subsample of its rows, with eigenvector signs fixed, squashed
into [0, 1] by tanh. The map is linear then smooth, so similar code vectors get similar colours,
and it is deterministic for a given codebook. Optional words (e.g. the nearest vocabulary word of
each code) are drawn inside the cells with OpenCV.

A continuous plan (SemanticGen's vectors, `planx_core.plan_continuous`) has no codebook to colour:
its cells are coloured by the top three principal components of the plan's own vectors (signs
fixed as above), each scaled linearly so the plan's range spans 0..255 (`vector_colours`).

A tokenizer file may carry a colour per code (`colour_table`: the mean colour of the cells each code
labels, measured on real frames); those codes take that colour instead of the projection's, so a
code that means "yellow" is drawn yellow. Codes the table leaves out keep the projection's colour.

A picture may wrap its keyframes into rows (`columns`) and end in a legend (colour swatch and word
per entry), so a preview stays readable when the node shows it at a few hundred pixels wide. Times are
written by `format_time` (3 decimals at most, 0.625 s stays 0.625 s), the rule the web editor shares.

Images are float32 torch tensors `[H, W, 3]` in [0, 1], the layout of a ComfyUI IMAGE without its
batch axis.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import cv2
import numpy as np
import torch

BACKGROUND = (30, 30, 30)  # uint8 RGB behind labels and between keyframes
LOCK_COLOUR = (240, 190, 40)
TEXT_COLOUR = (235, 235, 235)
FONT = cv2.FONT_HERSHEY_SIMPLEX
WORD_CELL = 64  # minimum cell size in pixels when words are drawn
_CACHE: OrderedDict[str, torch.Tensor] = OrderedDict()
_CACHE_SIZE = 4


# --------------------------------------------------------------------------- colours


def tensor_key(codebook: torch.Tensor) -> str:
    """sha256 of a tensor's shape and float32 bytes, first 16 hex digits (a cache key)."""
    arr = codebook.detach().to("cpu", torch.float32).contiguous().numpy()
    h = hashlib.sha256(repr(tuple(arr.shape)).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()[:16]


def principal_axes(codebook: torch.Tensor, sample: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean `[D]`, top-3 principal axes `[D, 3]`) of an evenly spaced subsample of the rows, float64.

    Each axis is signed so that its largest-magnitude entry is positive; a codebook narrower than
    3 gets zero axes for the missing components.
    """
    n, d = codebook.shape
    rows = torch.linspace(0, n - 1, min(n, sample)).round().long()
    x = codebook[rows].detach().to("cpu", torch.float64)  # [S, D]
    mean = x.mean(0)  # [D]
    centred = x - mean  # [S, D]
    cov = centred.T @ centred / max(len(rows) - 1, 1)  # [D, D]
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    axes = vecs[:, -3:].flip(1)  # [D, min(D, 3)]
    pick = axes.abs().argmax(0)  # [3]
    axes = axes * torch.sign(axes[pick, torch.arange(axes.shape[1])])  # [D, 3]
    if axes.shape[1] < 3:
        axes = torch.cat([axes, axes.new_zeros(d, 3 - axes.shape[1])], 1)  # [D, 3]
    return mean, axes


def hex_colour(rgb) -> str:
    """`(r, g, b)` in [0, 1] -> "#rrggbb"."""
    return "#" + "".join(f"{int(round(min(max(float(v), 0.0), 1.0) * 255)):02x}" for v in rgb)


def parse_hex(text: str) -> tuple[float, float, float]:
    """ "#rrggbb" -> `(r, g, b)` in [0, 1]; ValueError for anything else."""
    value = str(text).strip()
    if len(value) != 7 or value[0] != "#":
        raise ValueError(f"colour {text!r} is not #rrggbb")
    return tuple(int(value[i : i + 2], 16) / 255 for i in (1, 3, 5))


def code_colours(
    codebook: torch.Tensor, key: str | None = None, sample: int = 8192, table: dict | None = None
) -> torch.Tensor:
    """An RGB colour per code, `[N, 3]` float32 in [0, 1], from the codebook's top-3 principal components.

    `key` identifies the codebook for the cache (e.g. `CodebookId.digest`); without it the
    codebook's bytes are hashed. Component k maps to channel k by 0.5 + 0.5 tanh(p / 2 sigma_k).
    `table` ({code: "#rrggbb" or (r, g, b)}, a tokenizer file's colour table) overrides the codes it names.
    """
    if codebook.ndim != 2 or codebook.shape[0] < 1:
        raise ValueError(f"code_colours needs a codebook [N, D], got {list(codebook.shape)}")
    colours = _projected_colours(codebook, key or tensor_key(codebook), sample)
    if not table:
        return colours
    colours = colours.clone()
    for code, rgb in table.items():
        if 0 <= int(code) < len(colours):
            colours[int(code)] = torch.tensor(parse_hex(rgb) if isinstance(rgb, str) else rgb, dtype=torch.float32)
    return colours


def _projected_colours(codebook: torch.Tensor, key: str, sample: int) -> torch.Tensor:
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    mean, axes = principal_axes(codebook, sample)
    flat = codebook.detach().to("cpu", torch.float32)  # [N, D]
    proj = flat @ axes.float() - (mean @ axes).float()  # [N, 3]
    rows = torch.linspace(0, len(flat) - 1, min(len(flat), sample)).round().long()
    spread = proj[rows].std(0, unbiased=False).clamp_min(1e-12)  # [3]
    colours = 0.5 + 0.5 * torch.tanh(proj / (2 * spread))  # [N, 3]
    _CACHE[key] = colours
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return colours


def vector_colours(plan) -> torch.Tensor:
    """An RGB colour per cell of a continuous plan, `[K, gh*gw, 3]` float32 in [0, 1].

    Principal components 1..3 of all the plan's vectors map to R, G, B, each min-max scaled over the
    plan; a component without spread (constant vectors, or D < 3) is mid grey 0.5.
    """
    vectors = plan.vector_tensor()  # [K, C, D]
    flat = vectors.reshape(-1, vectors.shape[-1]).double()  # [K*C, D]
    mean, axes = principal_axes(flat, sample=len(flat))
    proj = (flat - mean) @ axes  # [K*C, 3]
    low, high = proj.min(0).values, proj.max(0).values  # [3]
    span = high - low
    flat_channel = span <= 1e-9 * (1 + proj.abs().max())
    scaled = torch.where(flat_channel, torch.full_like(proj, 0.5), (proj - low) / span.clamp_min(1e-300))
    return scaled.clamp(0, 1).float().reshape(vectors.shape[0], vectors.shape[1], 3)  # [K, C, 3]


# --------------------------------------------------------------------------- drawing


def format_time(seconds: float) -> str:
    """A keyframe time as the editor writes it: milliseconds rounded half-to-even, 2 or 3 decimals
    ("0.50", "0.625", "1.00")."""
    ms = round(float(seconds) * 1000)
    text = f"{'-' if ms < 0 else ''}{abs(ms) // 1000}.{abs(ms) % 1000:03d}"
    return text[:-1] if text.endswith("0") else text


def _fit_scale(text: str, width: int, height: int, thickness: int = 1) -> float:
    """The largest Hershey font scale at which `text` fits in width x height pixels."""
    (w, h), base = cv2.getTextSize(text, FONT, 1.0, thickness)
    return max(0.2, min((width - 2) / max(w, 1), (height - 2) / max(h + base, 1)))


def _put_centred(
    img: np.ndarray, text: str, box: tuple[int, int, int, int], colour, max_scale: float, thickness: int = 1
) -> None:
    x0, y0, w, h = box
    scale = min(max_scale, _fit_scale(text, w, h, thickness))
    (tw, th), base = cv2.getTextSize(text, FONT, scale, thickness)
    org = (x0 + max((w - tw) // 2, 0), y0 + (h + th) // 2 - base // 2)
    cv2.putText(img, text, org, FONT, scale, colour, thickness, cv2.LINE_AA)


def _shorten(word: str, width: int, scale: float) -> str:
    """Cut a word (adding '.') until it fits `width` pixels at `scale`."""
    while len(word) > 1 and cv2.getTextSize(word, FONT, scale, 1)[0][0] > width - 2:
        word = word[:-2] + "."
    return word


def _draw_lock(img: np.ndarray, x: int, y: int, size: int) -> None:
    """A small padlock with its top-left corner at (x, y)."""
    body_top = y + size // 2
    cv2.rectangle(img, (x, body_top), (x + size, y + size), LOCK_COLOUR, -1)
    radius = max(size // 3, 2)
    cv2.ellipse(img, (x + size // 2, body_top), (radius, radius), 0, 180, 360, LOCK_COLOUR, max(size // 8, 1))


def _draw_words(img: np.ndarray, cells: np.ndarray, words: list[str], top: int, cell: int) -> None:
    gh, gw = cells.shape[:2]
    scale = 0.35 * cell / 32
    for i in range(gh):
        for j in range(gw):
            luma = float(cells[i, j] @ np.array([0.299, 0.587, 0.114]))
            ink = (0, 0, 0) if luma > 140 else (255, 255, 255)
            word = _shorten(str(words[i * gw + j]), cell, scale)
            _put_centred(img, word, (j * cell, top + i * cell, cell, cell), ink, scale)


def _label_height(cell: int) -> int:
    return max(18, int(round(cell * 0.75)))


def _panel(plan, index: int, colours: np.ndarray, cell: int, words, text: int | None = None) -> np.ndarray:
    """One keyframe: a label strip (time, lock) over its gh x gw colour grid; uint8 `[H, gw*cell, 3]`.

    `colours`: uint8 cell colours of every keyframe, `[K, gh*gw, 3]`; `text`: the label's text height in pixels
    (default: from the cell size).
    """
    gh, gw = plan.grid
    keyframe = plan.keyframes[index]
    label = text + 16 if text else _label_height(cell)
    img = np.empty((label + gh * cell, gw * cell, 3), np.uint8)
    img[:] = BACKGROUND
    cells = colours[index].reshape(gh, gw, 3)  # [gh, gw, 3]
    img[label:] = cells.repeat(cell, axis=0).repeat(cell, axis=1)  # [gh*cell, gw*cell, 3]
    if text:  # an outline, so a grid shows against a background of its own colour
        cv2.rectangle(img, (0, label), (gw * cell - 1, img.shape[0] - 1), (90, 90, 90), 1)
    lock = label - 6 if keyframe.locked else 0
    _put_centred(
        img,
        f"{format_time(keyframe.time)} s",
        (lock, 0, gw * cell - 2 * lock, label),
        TEXT_COLOUR,
        text / 22 if text else max(0.45, label / 40),
        2 if text and text >= 24 else 1,
    )
    if keyframe.locked:
        _draw_lock(img, 3, 3, label - 6)
        cv2.rectangle(img, (0, label), (gw * cell - 1, img.shape[0] - 1), LOCK_COLOUR, 2)
    if words is not None:
        _draw_words(img, cells, words[index], label, cell)
    return img


def _cell_colours(plan, colours: torch.Tensor | None) -> torch.Tensor:
    """Colour of every cell of every keyframe, `[K, gh*gw, 3]` in [0, 1]: codebook colours looked up by
    token (token plans), or the plan's own principal components (continuous plans, `colours` None)."""
    if plan.kind == "continuous":
        if colours is None:
            return vector_colours(plan)
        shape = [len(plan.keyframes), plan.grid[0] * plan.grid[1], 3]
        if list(colours.shape) != shape:
            raise ValueError(
                f"a continuous plan has no codebook to colour by: pass colours=None (principal "
                f"components of its vectors) or per-cell colours {shape}, got {list(colours.shape)}"
            )
        return colours
    if colours is None:
        raise ValueError(
            f"a token plan needs the colour of every code of {plan.codebook.describe()}: pass "
            f"code_colours(codebook) of the tokenizer the plan was made with"
        )
    if colours.ndim != 2 or colours.shape[1] != 3:
        raise ValueError(f"colours must be [N, 3], got {list(colours.shape)}")
    tokens = plan.token_tensor()  # [K, gh*gw]
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= colours.shape[0]):
        raise ValueError(
            f"plan token {int(tokens.max())} has no colour: the colours cover {colours.shape[0]} codes "
            f"but the plan indexes {plan.codebook.describe()}; compute the colours from the codebook "
            f"of the tokenizer the plan was made with"
        )
    return colours.detach().cpu()[tokens]  # [K, gh*gw, 3]


def _prepare(plan, colours: torch.Tensor | None, cell: int, words) -> tuple[np.ndarray, int]:
    if not plan.keyframes:
        raise ValueError("the plan has no keyframes to draw")
    cells_rgb = _cell_colours(plan, colours)  # [K, gh*gw, 3]
    if words is not None:
        cells = plan.grid[0] * plan.grid[1]
        if len(words) != len(plan.keyframes) or any(len(w) != cells for w in words):
            raise ValueError(
                f"words must hold one list of {cells} strings per keyframe ({len(plan.keyframes)} keyframes)"
            )
        cell = max(cell, WORD_CELL)
    table = (cells_rgb.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()  # [K, gh*gw, 3]
    return table, cell


def _to_image(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).float() / 255.0  # [..., H, W, 3]


def plan_picture(
    plan,
    colours: torch.Tensor | None = None,
    *,
    cell: int = 24,
    words=None,
    gap: int = 6,
    columns: int | None = None,
    legend=None,
    text: int | None = None,
) -> torch.Tensor:
    """All keyframes side by side, `gap` pixels apart: float `[H, W, 3]` in [0, 1].

    `colours`: a token plan's code colours `[N, 3]` (`code_colours`); None for a continuous plan
    (its vectors' principal components).
    `words`: optional list per keyframe of gh*gw strings, drawn in the cells (cells grow to 64 px).
    `columns`: keyframes per row (default: all in one row); rows are `gap` pixels apart.
    `legend`: optional `[(rgb in [0, 1] or "#rrggbb", word), ...]` drawn under the keyframes, one swatch and
    word per entry, its text as tall as a cell.
    `text`: the height in pixels of the time labels' and the legend's text (default: from the cell size), so a
    picture shown small stays readable.
    """
    table, cell = _prepare(plan, colours, cell, words)
    panels = [_panel(plan, k, table, cell, words, text) for k in range(len(plan.keyframes))]
    height, width = panels[0].shape[0], panels[0].shape[1]
    per_row = max(1, min(columns or len(panels), len(panels)))
    rows = -(-len(panels) // per_row)
    img = np.empty((rows * height + (rows - 1) * gap, per_row * width + (per_row - 1) * gap, 3), np.uint8)
    img[:] = BACKGROUND
    for k, panel in enumerate(panels):
        y, x = (k // per_row) * (height + gap), (k % per_row) * (width + gap)
        img[y : y + height, x : x + width] = panel
    if legend:
        img = np.concatenate([img, _legend(legend, img.shape[1], text or max(cell, 16), gap)], axis=0)
    return _to_image(img)  # [H, W, 3]


def _legend(entries, width: int, size: int, gap: int) -> np.ndarray:
    """Rows of (swatch, word) entries filling `width` pixels, text `size` pixels tall: uint8 `[H, width, 3]`."""
    scale = 0.9 * size / 22
    weight = 2 if size >= 24 else 1
    items = []
    for rgb, word in entries:
        colour = parse_hex(rgb) if isinstance(rgb, str) else tuple(float(v) for v in rgb)
        text_w = cv2.getTextSize(str(word), FONT, scale, weight)[0][0]
        items.append((tuple(int(round(v * 255)) for v in colour), str(word), size + 6 + text_w + 2 * size // 2))
    lines, line, used = [], [], 0
    for item in items:
        if line and used + item[2] > width:
            lines.append(line)
            line, used = [], 0
        line.append(item)
        used += item[2]
    lines.append(line)
    img = np.empty((gap + len(lines) * (size + gap), width, 3), np.uint8)
    img[:] = BACKGROUND
    for i, line in enumerate(lines):
        y, x = gap + i * (size + gap), 0
        for colour, word, step in line:
            cv2.rectangle(img, (x, y), (x + size - 1, y + size - 1), colour, -1)
            cv2.rectangle(img, (x, y), (x + size - 1, y + size - 1), (0, 0, 0), 1)
            (_, th), base = cv2.getTextSize(word, FONT, scale, weight)
            org = (x + size + 6, y + (size + th) // 2 - base // 2)
            cv2.putText(img, word, org, FONT, scale, TEXT_COLOUR, weight, cv2.LINE_AA)
            x += step
    return img


def plan_picture_frames(plan, colours: torch.Tensor | None = None, *, cell: int = 24, words=None) -> torch.Tensor:
    """One picture per keyframe, float `[K, H, W, 3]` in [0, 1] (a ComfyUI IMAGE batch)."""
    table, cell = _prepare(plan, colours, cell, words)
    return _to_image(np.stack([_panel(plan, k, table, cell, words) for k in range(len(plan.keyframes))]))


__all__ = [
    "code_colours",
    "format_time",
    "hex_colour",
    "parse_hex",
    "plan_picture",
    "plan_picture_frames",
    "principal_axes",
    "tensor_key",
    "vector_colours",
]
