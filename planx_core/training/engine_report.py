"""What a user sees of a training run: log.jsonl, a progress bar, and the loss curves as a PNG.

* `Log`: one JSON line per event in `<out>/log.jsonl` and a short line on stdout (rank 0 only).
* `Progress`: a tqdm bar on rank 0 (steps, it/s, ETA, loss and learning rate); log lines are
  printed above it.
* `plot_curves`: `<out>/curves.png` from log.jsonl: the training loss (each logged mean and a
  running average) and the evaluation loss at each fixed noise level (`eval_loss` events), on a
  log scale. Drawn with matplotlib when it is installed, else with PIL.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


class Log:
    """JSON lines in <out>/log.jsonl and a short stdout line; rank 0 only."""

    def __init__(self, out: Path, enabled: bool):
        self.path, self.enabled = Path(out) / "log.jsonl", enabled

    def __call__(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        record = {"event": event, "time": round(time.time(), 1), **fields}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
        shown = {k: v for k, v in fields.items() if not isinstance(v, (dict, list)) or event in ("end", "eval_loss")}
        write(f"[{event}] " + " ".join(f"{k}={v}" for k, v in shown.items()))


def write(line: str) -> None:
    """Print a line above the progress bar (plain print when tqdm is missing)."""
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()
    except ImportError:
        print(line, flush=True)


class Progress:
    """A tqdm bar of the global step (rank 0, when enabled); `update(loss, lr)` after each step."""

    def __init__(self, start: int, total: int, enabled: bool, desc: str):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, loss: float, lr: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4g}", lr=f"{lr:.2e}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_curves(log: Path) -> tuple[list[tuple[int, float]], dict[str, list[tuple[int, float]]]]:
    """(training loss per logged step, {sigma: [(step, eval loss)]}) of a log.jsonl (the last run segment wins)."""
    train: dict[int, float] = {}
    evals: dict[str, dict[int, float]] = {}
    for line in Path(log).read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["event"] == "step":
            train[r["step"]] = r["loss"]
        elif r["event"] == "eval_loss":
            for sigma, value in r.get("sigma", {}).items():
                evals.setdefault(sigma, {})[r["step"]] = value
    return sorted(train.items()), {s: sorted(v.items()) for s, v in evals.items()}


def running_mean(values: list[float], width: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def plot_curves(log: Path, png: Path, title: str = "") -> Path | None:
    """Draw `png` from `log` (None when the log holds no losses yet)."""
    train, evals = read_curves(log)
    if not train and not evals:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pil(train, evals, Path(png), title)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), squeeze=False)
    for ax, (name, series) in zip(axes[0], _panels(train, evals)):
        for label, points, colour in series:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label, color=[c / 255 for c in colour])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


def _panels(train, evals) -> list[tuple[str, list]]:
    width = max(1, len(train) // 20)
    smooth = list(zip([s for s, _ in train], running_mean([v for _, v in train], width)))
    logged = [("logged", train, (170, 170, 170) if width > 1 else COLOURS[0])]
    panels = [("training loss", logged + ([(f"mean of {width}", smooth, COLOURS[0])] if width > 1 else []))]
    if evals:
        ordered = sorted(evals, key=float)
        series = [(f"sigma {s}", evals[s], COLOURS[i % len(COLOURS)]) for i, s in enumerate(ordered)]
        panels.append(("eval loss at fixed noise levels", series))
    return panels


def _plot_pil(train, evals, png: Path, title: str) -> Path:
    from PIL import Image, ImageDraw

    panels = _panels(train, evals)
    w, h, pad = 520, 360, 56
    img = Image.new("RGB", (w * len(panels), h + 24), "white")
    draw = ImageDraw.Draw(img)
    draw.text((8, 4), title, fill="black")
    for k, (name, series) in enumerate(panels):
        _panel(draw, series, name, (k * w + pad, 24 + 26, k * w + w - 16, 24 + h - 36))
    img.save(png)
    return png


def _panel(draw, series, name: str, box: tuple[int, int, int, int]) -> None:
    """One log-scale line chart in `box` (left, top, right, bottom) with axes, ticks and a legend."""
    left, top, right, bottom = box
    points = [p for _, pts, _ in series for p in pts if p[1] > 0]
    if not points:
        return
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = (math.log10(f(p[1] for p in points)) for f in (min, max))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 0.1)

    def at(step, value):
        fx = (step - x0) / (x1 - x0)
        fy = (math.log10(max(value, 1e-30)) - y0) / (y1 - y0)
        return left + fx * (right - left), bottom - fy * (bottom - top)

    draw.text((left, top - 22), name, fill="black")
    draw.rectangle((left, top, right, bottom), outline=(90, 90, 90))
    for i in range(5):
        y = y0 + (y1 - y0) * i / 4
        py = bottom - (bottom - top) * i / 4
        draw.line((left - 4, py, left, py), fill=(90, 90, 90))
        draw.text((left - 52, py - 6), f"{10**y:.3g}", fill="black")
        step = x0 + (x1 - x0) * i / 4
        px = left + (right - left) * i / 4
        draw.line((px, bottom, px, bottom + 4), fill=(90, 90, 90))
        draw.text((px - 10, bottom + 6), f"{step:.0f}", fill="black")
    for i, (label, pts, colour) in enumerate(series):
        xy = [at(s, v) for s, v in pts if v > 0]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        for x, y in xy if len(xy) <= 40 else ():
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.rectangle((right - 120, top + 6 + 14 * i, right - 110, top + 16 + 14 * i), fill=colour)
        draw.text((right - 104, top + 4 + 14 * i), label, fill="black")
