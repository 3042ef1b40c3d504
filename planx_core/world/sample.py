"""Random compositions of the PlanShapes world: objects, stages and verbs drawn for a split and a kind.

This project's own design (docs/planshapes.md section 3); `sample_composition` redraws until the
composition is in the asked split (held-out pairs and bigrams only in `heldout`)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .scenes import (
    COLOURS,
    DIRECTIONS,
    SHAPES,
    WALL,
    Action,
    Composition,
    ObjectSpec,
    WorldConfig,
    _check_split,
    is_heldout,
)


def _pick_kind(rng: np.random.Generator, config: WorldConfig) -> str:
    if rng.random() >= config.occluder_probability:
        return "plain"
    return "behind" if config.max_objects >= 2 and rng.random() < 0.5 else "wall"


def _draw_objects(rng: np.random.Generator, config: WorldConfig, n: int) -> list[ObjectSpec]:
    colours = rng.choice(len(COLOURS), size=n, replace=False)
    return [ObjectSpec(COLOURS[c], SHAPES[rng.integers(3)], int(rng.choice(config.radii))) for c in colours]


def _draw_verb(rng: np.random.Generator, last: str | None, still_probability: float) -> str:
    """A verb other than the object's verb in the previous stage (no "right, then right")."""
    if last != "still" and rng.random() < still_probability:
        return "still"
    choices = [d for d in DIRECTIONS if d != last]
    return choices[rng.integers(len(choices))]


def _draw_stage(rng: np.random.Generator, config: WorldConfig, n: int, last: dict[int, str]) -> tuple[Action, ...]:
    actor = int(rng.integers(n))
    actions = [Action(actor, _draw_verb(rng, last.get(actor), config.still_probability))]
    if n >= 2 and rng.random() < config.while_probability:
        other = int(rng.choice([i for i in range(n) if i != actor]))
        still = 0.0 if actions[0].verb == "still" else 0.5  # one of the two moves
        actions.append(Action(other, _draw_verb(rng, last.get(other), still)))
    return tuple(actions)


def _draw_plain(
    rng: np.random.Generator, config: WorldConfig, objects: list[ObjectSpec], num_stages: int | None
) -> tuple[tuple[Action, ...], ...]:
    """Stages of a plain clip; at least one action moves (no clip where nothing happens)."""
    count = num_stages or int(rng.integers(1, config.max_stages + 1))
    for _ in range(1000):
        stages, last = [], {}
        for _ in range(count):
            stage = _draw_stage(rng, config, len(objects), last)
            last = {a.obj: a.verb for a in stage}
            stages.append(stage)
        if any(a.verb != "still" for stage in stages for a in stage):
            return tuple(stages)
    raise ValueError(f"still_probability={config.still_probability}: no moving {count}-stage plan in 1000 draws")


def _draw_wall(rng: np.random.Generator, config: WorldConfig, objects: list[ObjectSpec]) -> tuple:
    mover = int(rng.integers(len(objects)))
    actions = [Action(mover, ("left", "right")[rng.integers(2)], WALL)]
    if len(objects) >= 2 and rng.random() < config.while_probability:
        other = int(rng.choice([i for i in range(len(objects)) if i != mover]))
        actions.append(Action(other, ("still", "up", "down")[rng.integers(3)]))
    return (tuple(actions),)


def _draw_behind(rng: np.random.Generator, config: WorldConfig, objects: list[ObjectSpec]) -> tuple:
    """Smallest radius passes behind the largest, a circle or square drawn on top (higher index)."""
    objects[0] = replace(objects[0], radius=min(config.radii))
    objects[1] = replace(objects[1], radius=max(config.radii), shape=("circle", "square")[rng.integers(2)])
    return ((Action(0, ("left", "right")[rng.integers(2)], 1),),)


def _draw(rng: np.random.Generator, config: WorldConfig, kind: str | None, num_stages: int | None) -> Composition:
    kind = kind or _pick_kind(rng, config)
    low = 2 if kind == "behind" else 1
    if low > config.max_objects:
        raise ValueError(f"kind='behind' needs max_objects >= 2, got {config.max_objects}")
    objects = _draw_objects(rng, config, int(rng.integers(low, config.max_objects + 1)))
    if kind == "plain":
        stages = _draw_plain(rng, config, objects, num_stages)
    else:
        stages = _draw_wall(rng, config, objects) if kind == "wall" else _draw_behind(rng, config, objects)
    return Composition(tuple(objects), stages, bool(rng.random() < config.textured_probability))


def sample_composition(
    rng: np.random.Generator,
    config: WorldConfig | None = None,
    split: str = "train",
    kind: str | None = None,
    num_stages: int | None = None,
) -> Composition:
    """A random composition of `split` ("train" never holds a held-out feature, "heldout" always does).

    `kind` forces "plain", "wall" or "behind" (occlusion); `num_stages` forces the stage count of a
    plain clip.
    """
    config = config or WorldConfig()
    _check_split(split, kind)
    if num_stages is not None and not 1 <= num_stages <= config.max_stages:
        raise ValueError(f"num_stages={num_stages}: must be 1..max_stages={config.max_stages}")
    for _ in range(10_000):
        composition = _draw(rng, config, kind, num_stages)
        if is_heldout(composition) == (split == "heldout"):
            return composition
    raise RuntimeError(f"no {split} composition found in 10000 draws for kind={kind}; widen the config")
