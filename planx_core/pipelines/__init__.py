"""What a user runs: bundles of trained parts and the Plan-X text-to-video pipeline.

`bundle`: a folder with every part `generate` needs (planner, TA-Tok, text encoder, VAE, DiT,
semantic branch, bundle.json) and the checks that they fit together. `planx`: plan with the
planner, render with the DiT and the branch, decode with the VAE (Plan-X, arXiv 2511.17986,
Fig. 2). `commands`: the `generate` and `semanticgen` command lines.

Public API: `Bundle`, `BundleSpec`, `BundleError`, `VideoDefaults`, `SamplingDefaults`,
`PlanningDefaults`, `FILES`, `load_bundle`, `save_bundle`, `read_spec`, `write_spec`;
`PlanXPipeline`, `Generation`, `FirstFrame`, `split_prompt`, `prompt_text`, `load_plan_file`.
"""

from .bundle import (
    FILES,
    Bundle,
    BundleError,
    BundleSpec,
    PlanningDefaults,
    SamplingDefaults,
    VideoDefaults,
    load_bundle,
    read_spec,
    save_bundle,
    write_spec,
)
from .planx import (
    FirstFrame,
    Generation,
    PlanXPipeline,
    load_plan_file,
    prompt_text,
    split_prompt,
)

__all__ = [
    "FILES",
    "Bundle",
    "BundleError",
    "BundleSpec",
    "FirstFrame",
    "Generation",
    "PlanXPipeline",
    "PlanningDefaults",
    "SamplingDefaults",
    "VideoDefaults",
    "load_bundle",
    "load_plan_file",
    "prompt_text",
    "read_spec",
    "save_bundle",
    "split_prompt",
    "write_spec",
]
