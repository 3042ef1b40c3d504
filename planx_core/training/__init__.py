"""The outer ring's training: one entry point for every stage of the tiny models, and `assemble`.

`python -m planx_core train --stage {vae,tatok,planner,dit,e2e,semgen-latent,semgen-semantic}`
(or `python -m planx_core.training`), on torchrun when launched with it; checkpoints and resume in
`checkpoint`, the stage protocol in `stages`, flow-matching loss pieces in `flow`; `assemble`
builds a bundle (and its model card) from the run folders. The runtime never imports this.
"""
