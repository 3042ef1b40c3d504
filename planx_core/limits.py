"""The limits of every input, in one table: checked before anything is allocated for it.

A plan, an edit list, a model file's config or a command's option beyond these is refused with
the limit's name and the fix, instead of running for minutes or exhausting memory. The bounds are
far above anything a real model or video needs (Wan 2.2 5B: dim 3072, 30 layers; 121 frames at
1280x704) and far below what would fill memory.
"""

from __future__ import annotations

LIMITS = {
    "frames": 1025,  # video frames of one render (128 s at 8 fps; Wan 2.2 renders 121)
    "side": 8192,  # pixels of a video side
    "steps": 1000,  # sampling steps
    "scale": 16,  # nearest-neighbour enlargement of a written video
    "keyframes": 2048,  # keyframes of one plan
    "grid": 64,  # cells of a plan grid side
    "edit_steps": 100_000,  # steps of one edit list
    "plan_cells": 4_000_000,  # keyframes x cells of one plan (tokens or vectors)
    "vector_width": 4096,  # numbers per cell of a continuous plan
    "model_dim": 16384,  # widths of a model (DiT, branch, VAE, text, TA-Tok)
    "model_layers": 256,  # layers / blocks of a model
    "model_heads": 512,
    "ffn_dim": 131072,
    "channels": 4096,  # latent channels, code widths
    "text_len": 8192,  # text tokens
    "codebook": 1_048_576,  # codes of a tokenizer
    "best_of": 64,  # whole videos rendered for one prompt to keep the best (semanticgen --best-of)
}


def check_limit(name: str, value, what: str, error: type[Exception] = ValueError, fix: str = "") -> None:
    """Refuse `value` above `LIMITS[name]` (or below 1), naming the limit and the fix."""
    top = LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= top:
        raise error(f"{what} is {value!r}; it must be 1..{top} (limit '{name}'){'; ' + fix if fix else ''}")


def check_config(owner: str, **sizes: tuple[str, object]) -> None:
    """A model config's sizes, each `field=(limit name, value)`: whole numbers within the limits; ValueError (the
    config constructors' own error) naming the config, the field and the limit otherwise. Checked when the config
    is built, so a file whose metadata asks for a 40,000-wide model is refused before anything is allocated."""
    for field, (limit, value) in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMITS[limit]:
            raise ValueError(
                f"{owner}: {field} must be a positive whole number up to {LIMITS[limit]} (limit '{limit}'), "
                f"got {value!r}"
            )


def bounded(name: str):
    """An argparse `type` for a whole-number option within `LIMITS[name]` (the refusal names the limit)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not 1 <= value <= LIMITS[name]:
            raise argparse.ArgumentTypeError(f"{value} is outside 1..{LIMITS[name]} (limit '{name}')")
        return value

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def number_in(low: float, high: float, what: str):
    """An argparse `type` for a number from `low` to `high` (`what` names it in the refusal)."""
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value:g} is outside {low:g}..{high:g} ({what})")
        return value

    return parse


share = number_in(0.0, 1.0, "a share")
sketch_level = number_in(0.01, 1.0, "a noise level: 1 is pure noise, lower keeps more of the sketch")
guidance_scale = number_in(0.0, 20.0, "a guidance scale, as ComfyUI's cfg widgets take; 1 is off")
