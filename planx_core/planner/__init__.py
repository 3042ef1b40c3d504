"""The semantic planner: a causal LM (Qwen2 through transformers) that writes a plan's keyframe tokens.

Sources: Plan-X (arXiv 2511.17986) for the planner's role and prompt; Tar (csuhan/Tar) for the
`<im_start><S2><I..>...<im_end>` token text and the vocabulary extension.

Public API: `SemanticPlanner` (model); `load_planner`, `save_planner`, `convert_bin_folder` (folders,
Tar's `llava_qwen` included; `.bin` releases converted once); `Sampling`,
`PlanningInterrupted`, `MAX_CANDIDATES` (constrained decoding); `PlanVocab`, `extend_vocabulary`,
`build_word_tokenizer` (vocabulary).
"""

from .decode import MAX_CANDIDATES, PlanningInterrupted, Sampling
from .files import convert_bin_folder, load_planner, save_planner
from .model import SemanticPlanner
from .vocab import PlanVocab, build_word_tokenizer, extend_vocabulary

__all__ = [
    "MAX_CANDIDATES",
    "convert_bin_folder",
    "PlanVocab",
    "PlanningInterrupted",
    "Sampling",
    "SemanticPlanner",
    "build_word_tokenizer",
    "extend_vocabulary",
    "load_planner",
    "save_planner",
]
