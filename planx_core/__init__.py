"""planx_core: Plan-X and SemanticGen as a plain PyTorch library (no ComfyUI import anywhere).

Modules: `configs` (DiT presets), `dit` (Wan 2.1/2.2 WanModel), `rope` (3D RoPE with explicit
positions), `attention` (one entry point, several backends), `semantic_branch` (plan tokens into
the DiT), `sampling` (flow matching, Euler/UniPC, text+plan guidance), `checkpoint` (safetensors
loading of official, ComfyUI and diffusers layouts), `plan` / `plan_schema` / `plan_edits` /
`plan_picture` (the keyframe plan, its JSON, edits and picture), `tokenizer` / `tokenizer_files`
(TA-Tok), `planner*` (the semantic planner and its constrained decoding), `world` /
`world_score` (the synthetic world and its scorer), `vae` / `vae_files` (the Wan 2.1 video VAE),
`text_encoder` (umT5 features), `tiny` / `cell_labels` / `flow_training` / `train*` (the embedded
model and its training entry point, `train_e2e` the end-to-end stage), `assemble` (a bundle from
the training runs), `bundle` / `pipeline` / `video_io` (the generate job), `eval` (the ablations).
"""

from pathlib import Path

__version__ = "0.1.0"
EMBEDDED = Path(__file__).resolve().parent / "embedded"  # the shipped tiny models (Plan-X bundle, SemanticGen)
