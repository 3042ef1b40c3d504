"""planx_core: Plan-X and SemanticGen as a plain PyTorch library (no ComfyUI import anywhere).

The runtime, each subpackage naming its public API in its `__init__`: `plan` (the keyframe plan,
its JSON, edits, picture and the one alignment rule, `plan.timing`), `files` (safetensors and
video files, model files with their config in the metadata), `wan` (the Wan DiT, VAE, umT5, 3D
RoPE, attention, windows, DiT file layouts), `tatok` (Tar's TA-Tok), `planner` (the semantic
planner), `semantic_branch` (plan tokens into the DiT), `diffusion` (flow sigmas, solvers,
guidance, render), `semanticgen` (continuous plans, two stages), `pipelines` (bundles, the Plan-X
pipeline, the generate and semanticgen commands). `python -m planx_core` holds every command.

The outer ring, which the runtime never imports (tests/test_layout.py checks it): `world` (the
synthetic world, its scorer, the tiny configs), `training` (every stage, assemble), `eval` (the
ablation table, long-video drift). `EMBEDDED` is the folder of the shipped tiny models.
"""

from pathlib import Path

__version__ = "0.1.0"
EMBEDDED = Path(__file__).resolve().parent / "embedded"  # the shipped tiny models (Plan-X bundle, SemanticGen)
