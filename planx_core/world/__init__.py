"""The outer ring's synthetic world (PlanShapes): coloured shapes moving through staged motions.

Nothing in the runtime (`plan`, `wan`, `tatok`, `planner`, `semantic_branch`, `diffusion`,
`semanticgen`, `pipelines`) imports this package; training, evaluation and tests do. This
package's namespace is the world itself: `scenes` (vocabulary, configs, compositions, captions,
splits) and `clips` (placement, rendering, clips, datasets, order pairs) are re-exported here.
Companions, imported by name: `world.score` (the detector and metrics), `world.labels` (TA-Tok
cell labels), `world.tiny` (the tiny Plan-X configs and the planner/TA-Tok tie, `random_bundle`,
the short and long SemanticGen worlds). See docs/planshapes.md.
"""
from .clips import (
                    background,
                    clip_seed,
                    clip_video,
                    dataset,
                    id_buffer,
                    iter_dataset,
                    keyframe_layout,
                    make_clip,
                    order_pairs,
                    paint,
                    place,
                    render,
                    stamp,
                    visibility,
)
from .scenes import (
                    BACKGROUND,
                    COLOURS,
                    DIRECTIONS,
                    HELDOUT_BIGRAMS,
                    HELDOUT_PAIRS,
                    KINDS,
                    MIN_VISIBLE_PIXELS,
                    PALETTE,
                    PALETTE_RGB,
                    PUNCTUATION,
                    SHAPES,
                    SPLITS,
                    STEP,
                    VERBS,
                    WALL,
                    WALL_RGB,
                    WORDS,
                    Action,
                    Clip,
                    Composition,
                    ObjectSpec,
                    Stage,
                    WorldConfig,
                    bigrams,
                    is_heldout,
                    keyframe_frames,
                    motion_text,
                    offsets,
                    sample_composition,
                    scene_text,
                    stage_bounds,
                    tokenize,
                    validate_composition,
)

__all__ = ["BACKGROUND", "COLOURS", "DIRECTIONS", "HELDOUT_BIGRAMS", "HELDOUT_PAIRS", "KINDS", "MIN_VISIBLE_PIXELS",
           "PALETTE", "PALETTE_RGB", "PUNCTUATION", "SHAPES", "SPLITS", "STEP", "VERBS", "WALL", "WALL_RGB", "WORDS",
           "Action", "Clip", "Composition", "ObjectSpec", "Stage", "WorldConfig", "background", "bigrams",
           "clip_seed", "clip_video", "dataset", "id_buffer", "is_heldout", "iter_dataset", "keyframe_frames",
           "keyframe_layout", "make_clip", "motion_text", "offsets", "order_pairs", "paint", "place", "render",
           "sample_composition", "scene_text", "stage_bounds", "stamp", "tokenize", "validate_composition",
           "visibility"]
