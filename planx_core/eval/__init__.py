"""The outer ring's evaluation: the Plan-X ablation table and SemanticGen's long-video drift.

`python -m planx_core.eval` (also `python -m planx_core eval`): held-out clips of the world,
rows full / text only / no 3D RoPE / no e2e / ground-truth plans, semantic transfer and the
planner's plan accuracy (`ablations`). `python -m planx_core eval-drift`: identity and colour
drift of long SemanticGen videos (`drift`). Scores come from the decoded frames alone
(`world.score`). The runtime never imports this.
"""
