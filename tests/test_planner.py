"""Semantic planner on a tiny random Qwen2 with a word-level vocabulary plus the plan tokens.

Covers: the plan grammar (token level, many seeds), seeds, greedy/top-k/top-p/temperature,
locked keyframes, prompts with image codes, guidance, progress and interruption, KV-cache
decoding against a full recomputation, loading/saving folders (and refusing bad ones),
vocabulary extension, text alignment, and `plan()` producing a Plan.
"""

from __future__ import annotations

import json
import shutil

import pytest
import tokenizers
import torch
from safetensors import safe_open
from transformers import Qwen2Config, Qwen2ForCausalLM

from planx_core.files.safetensors import CheckpointError
from planx_core.plan.core import CodebookId, PlanError, make_plan
from planx_core.plan.timing import keyframe_times
from planx_core.planner import decode as decoding
from planx_core.planner.decode import PlanningInterrupted, Sampling, _nucleus, choose, new_cache
from planx_core.planner.files import load_planner, read_bin, save_planner
from planx_core.planner.model import SemanticPlanner
from planx_core.planner.vocab import (
    PlanVocab,
    build_word_tokenizer,
    extend_vocabulary,
    scale_for_length,
    scale_index,
)

N = 64  # image tokens of the tiny planner
WORDS = (
    "you are a video planner write keyframes keyframe for of seconds second at frames per one every each is by "
    "grid visual tokens system user assistant scene motion first frame earlier the woman man cat dog cup ball "
    "red blue green table picks up drinks puts it down moves left right and"
).split()
ARGS = dict(num_keyframes=2, fps=24.0, keyframe_rate=2.0)


def tiny_model(vocab_size: int, seed: int = 0, **extra) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        **extra,
    )
    return Qwen2ForCausalLM(config).eval()


def randomize(model, std: float = 0.4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tokenizer = build_word_tokenizer(WORDS)
    model = tiny_model(len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vocab = extend_vocabulary(model, tokenizer, N)
    path = tmp_path_factory.mktemp("planner") / "tiny-qwen2"
    save_planner(SemanticPlanner(randomize(model), tokenizer, vocab, "tiny"), path)
    return path


@pytest.fixture(scope="module")
def planner(folder) -> SemanticPlanner:
    return load_planner(folder)


def sequence(planner, prompt, codes, scale) -> list[int]:
    """Prompt + the plan grammar written out for codes [K, cells]."""
    v = planner.vocab
    return prompt + [t for row in codes.tolist() for t in v.block(row, scale)]


def reference_logits(planner, seq, prompt_len, codes) -> torch.Tensor:
    """No cache: one forward over the whole sequence; the image logits before each code, [K, cells, N]."""
    with torch.no_grad():
        logits = planner.model(torch.tensor([seq])).logits[0].float()  # [L, V]
    k, cells = codes.shape
    pos = torch.tensor([prompt_len + i * (cells + 3) + 2 + c for i in range(k) for c in range(cells)])  # code slots
    v = planner.vocab
    return logits[pos - 1, v.image_start : v.image_end].reshape(k, cells, -1)


def fed_ids(planner):
    """Record every token id the model embeds (a hook on the input embedding)."""
    fed = []
    hook = planner.model.get_input_embeddings().register_forward_pre_hook(lambda m, a: fed.extend(a[0][0].tolist()))
    return fed, hook


# ----------------------------------------------------------------------------- grammar and sampling


@pytest.mark.parametrize("grid", [(3, 3), (9, 9)])
def test_grammar_at_token_level(planner, grid):
    prompt = planner.build_prompt("a red ball", "moves left", grid=grid, **ARGS)
    seeds = range(12) if grid == (3, 3) else range(2)
    for seed in seeds:
        fed, hook = fed_ids(planner)
        try:
            codes = planner.generate("a red ball", "moves left", grid=grid, seed=seed, top_k=20, **ARGS)
        finally:
            hook.remove()
        assert codes.shape == (2, grid[0] * grid[1]) and codes.dtype == torch.long
        assert int(codes.min()) >= 0 and int(codes.max()) < N
        expected = sequence(planner, prompt, codes, scale_index(grid))
        assert fed == expected[:-2]  # everything but the last code and <im_end>: nothing follows them


def test_scale_tokens():
    assert [scale_index((s, s)) for s in (27, 13, 9, 3)] == [0, 1, 2, 2]
    assert scale_for_length(81) == 2 and scale_for_length(729) == 0
    with pytest.raises(ValueError, match="square grid"):
        scale_for_length(80)


def test_seeds(planner):
    a = planner.generate("a cat", "moves right", grid=(3, 3), seed=7, **ARGS)
    b = planner.generate("a cat", "moves right", grid=(3, 3), seed=7, **ARGS)
    c = planner.generate("a cat", "moves right", grid=(3, 3), seed=8, **ARGS)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_greedy_and_its_limits(planner):
    small = dict(ARGS, num_keyframes=4, grid=(3, 3))
    greedy = planner.generate("a cat", "moves up", seed=0, temperature=0, **small)
    assert torch.equal(greedy, planner.generate("a cat", "moves up", seed=99, temperature=0, **small))
    for options in (dict(top_k=1), dict(top_p=1e-6), dict(temperature=1e-5)):
        assert torch.equal(greedy, planner.generate("a cat", "moves up", seed=3, **options, **small)), options


def test_kv_cache_equals_full_recomputation(planner):
    """Greedy with our cached loop: each code is the argmax of a no-cache full-sequence forward."""
    prompt = planner.build_prompt("the woman", "picks up the cup", **ARGS)
    codes = planner.generate("the woman", "picks up the cup", temperature=0, **ARGS)
    ref = reference_logits(planner, sequence(planner, prompt, codes, 2), len(prompt), codes)  # [K, cells, N]
    chosen = ref.gather(2, codes[..., None])[..., 0]  # [K, cells]
    assert torch.all(chosen >= ref.max(dim=2).values - 1e-4)


def test_top_k_and_top_p_respected(planner):
    prompt = planner.build_prompt("a dog", "moves down", **ARGS)
    codes = planner.generate("a dog", "moves down", seed=5, top_k=3, **ARGS)
    ref = reference_logits(planner, sequence(planner, prompt, codes, 2), len(prompt), codes)
    rank = (ref > ref.gather(2, codes[..., None]) + 1e-5).sum(2)  # better codes than the chosen one
    assert int(rank.max()) < 3
    codes = planner.generate("a dog", "moves down", seed=5, top_p=0.5, **ARGS)
    ref = reference_logits(planner, sequence(planner, prompt, codes, 2), len(prompt), codes)
    probs = torch.softmax(ref, dim=2)
    better = (probs * (probs > probs.gather(2, codes[..., None]) + 1e-6)).sum(2)  # mass ranked above the pick
    assert float(better.max()) < 0.5 + 1e-4
    assert not torch.equal(codes, planner.generate("a dog", "moves down", temperature=0, **ARGS))


def test_choose_filters():
    logits = torch.tensor([0.0, 3.0, 2.9, -1.0, 1.0])
    gen = torch.Generator().manual_seed(0)
    picks = {choose(logits, Sampling(top_k=2), gen) for _ in range(200)}
    assert picks == {1, 2}
    picks = {choose(logits, Sampling(top_p=0.5), gen) for _ in range(200)}
    assert picks <= {1, 2} and 1 in picks
    assert {choose(logits, Sampling(), gen) for _ in range(400)} == {0, 1, 2, 3, 4}
    assert choose(logits, Sampling(temperature=0), gen) == 1
    peaked = torch.randn(5000, generator=gen) * 4  # the nucleus search grows a top-k: same set as a full sort
    for p in (0.3, 0.9, 0.999):
        probs, order = torch.sort(torch.softmax(peaked, 0), descending=True)
        expected = set(order[(torch.cumsum(probs, 0) - probs) < p].tolist())
        assert set(_nucleus(peaked, None, p)[1].tolist()) == expected
    for bad in (
        dict(top_p=0.0),
        dict(top_k=-1),
        dict(temperature=-1.0),
        dict(guidance_scale=float("nan")),
        dict(persistence=float("inf")),
    ):
        with pytest.raises(ValueError, match="must be"):
            Sampling(**bad)


def test_persistence_keeps_the_cells_of_the_keyframe_before(planner):
    """A persistence bonus raises the share of cells that keep their code from the keyframe before; a bonus far
    above the logits' spread copies keyframe 0 into every later one; 0 is the plain sampler, bit for bit."""
    small = dict(ARGS, num_keyframes=4, grid=(3, 3))

    def kept(codes: torch.Tensor) -> float:
        return float((codes[1:] == codes[:-1]).float().mean())

    plain = [planner.generate("a red ball", "moves right", seed=s, **small) for s in range(6)]  # [K, 9] each
    assert torch.equal(plain[0], planner.generate("a red ball", "moves right", seed=0, persistence=0.0, **small))
    mild = [planner.generate("a red ball", "moves right", seed=s, persistence=2.0, **small) for s in range(6)]
    assert sum(map(kept, mild)) > sum(map(kept, plain))
    frozen = planner.generate("a red ball", "moves right", seed=0, persistence=1e4, **small)
    assert torch.equal(frozen, frozen[:1].expand_as(frozen))
    with pytest.raises(ValueError, match="persistence must be >= 0"):
        planner.generate("a red ball", "moves right", persistence=-1.0, **small)


def test_candidates_keep_the_likeliest_draw(planner, monkeypatch):
    """n candidates are n draws from the seed's generator, the first being the one-draw plan; the kept one has
    the highest log-probability, which is the plan's own under the model (a full forward, no cache)."""
    small = dict(ARGS, grid=(3, 3))
    drawn, original = [], decoding.decode

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(decoding, "decode", recording)
    one = planner.generate("a red ball", "moves right", seed=3, **small)  # [K, 9]
    assert len(drawn) == 1 and torch.equal(drawn[0][0], one)
    drawn.clear()
    best = planner.generate("a red ball", "moves right", seed=3, candidates=5, **small)  # [K, 9]
    plans, scores = zip(*drawn)
    assert len(plans) == 5 and torch.equal(plans[0], one) and len({tuple(p.flatten().tolist()) for p in plans}) > 1
    assert torch.equal(best, plans[max(range(5), key=lambda i: scores[i])])
    prompt = planner.build_prompt("a red ball", "moves right", **small)
    seq = sequence(planner, prompt, best, scale_index((3, 3)))
    logits = reference_logits(planner, seq, len(prompt), best)  # [K, 9, N]
    own = torch.log_softmax(logits, dim=-1).gather(-1, best[..., None]).sum()
    assert abs(float(own) - max(scores)) < 1e-3
    drawn.clear()
    greedy = planner.generate("a red ball", "moves right", temperature=0, candidates=5, **small)
    assert len(drawn) == 1 and torch.equal(
        greedy, planner.generate("a red ball", "moves right", temperature=0, **small)
    )
    for bad in (0, 65, 2.5, True):
        for temperature in (1.0, 0.0):
            with pytest.raises(ValueError, match="candidates must be a whole number from 1 to 64"):
                planner.generate("a red ball", "moves right", temperature=temperature, candidates=bad, **small)


def test_candidates_count_progress_over_every_draw(planner):
    calls = []
    planner.generate("a dog", "moves up", grid=(3, 3), candidates=3, progress=lambda d, t: calls.append((d, t)), **ARGS)
    assert calls == [(i, 54) for i in range(1, 55)]
    asked = []

    def interrupt():
        asked.append(1)
        return len(asked) > 20

    with pytest.raises(PlanningInterrupted, match="after 20 of 54"):
        planner.generate("a dog", "moves up", grid=(3, 3), candidates=3, interrupt=interrupt, **ARGS)


# ----------------------------------------------------------------------------- conditioning and control


def test_locked_keyframes_are_kept(planner):
    lock = [(7 * i) % N for i in range(81)]
    codes = planner.generate(
        "a cup", "moves left", num_keyframes=3, fps=24.0, keyframe_rate=2.0, seed=1, locked={1: lock}
    )
    assert codes[1].tolist() == lock
    free = planner.generate("a cup", "moves left", num_keyframes=3, fps=24.0, keyframe_rate=2.0, seed=1)
    assert torch.equal(codes[0], free[0]) and not torch.equal(codes[2], free[2])  # later frames see the lock
    fed, hook = fed_ids(planner)
    try:
        every = planner.generate("a cup", "moves left", seed=1, locked={0: lock, 1: lock}, **ARGS)
    finally:
        hook.remove()
    assert every.tolist() == [lock, lock] and fed == []  # nothing left to sample: no forward at all
    with pytest.raises(ValueError, match="outside"):
        planner.generate("a cup", "", locked={5: lock}, **ARGS)
    with pytest.raises(ValueError, match="needs 81"):
        planner.generate("a cup", "", locked={0: lock[:80]}, **ARGS)


def test_prompt_carries_image_codes(planner):
    v = planner.vocab
    first = [(3 * i) % N for i in range(81)]
    context = torch.tensor([[(i + j) % N for i in range(81)] for j in range(2)])
    prompt = planner.build_prompt("a cat", "moves left", first_frame_codes=first, context_codes=context, **ARGS)
    text = planner.build_prompt("a cat", "moves left", **ARGS)

    def contains(seq, sub):
        return any(seq[i : i + len(sub)] == sub for i in range(len(seq) - len(sub) + 1))

    assert contains(prompt, v.block(first, 2))
    assert all(contains(prompt, v.block(row, 2)) for row in context.tolist())
    assert not contains(text, [v.im_start]) and len(prompt) > len(text) + 3 * 84
    words = planner.tokenizer.convert_ids_to_tokens(text)
    assert "scene" in words and "motion" in words and "<unk>" not in words[:20]
    conditioned = planner.generate("a cat", "moves left", first_frame_codes=first, temperature=0, **ARGS)
    assert not torch.equal(conditioned, planner.generate("a cat", "moves left", temperature=0, **ARGS))
    with pytest.raises(ValueError, match="outside this planner's codebook"):
        planner.build_prompt("a", "b", first_frame_codes=[N] * 81, **ARGS)


def test_guidance_runs_and_changes_the_plan(planner):
    small = dict(ARGS, num_keyframes=4, grid=(3, 3))
    plain = planner.generate("a red ball", "moves right", temperature=0, **small)
    guided = planner.generate("a red ball", "moves right", temperature=0, guidance_scale=4.0, **small)
    assert guided.shape == plain.shape and not torch.equal(plain, guided)
    again = planner.generate("a red ball", "moves right", temperature=0, guidance_scale=4.0, **small)
    assert torch.equal(guided, again)


def test_progress_and_interrupt(planner):
    calls = []
    planner.generate(
        "a dog", "moves up", grid=(3, 3), progress=lambda d, t: calls.append((d, t)), locked={1: [0] * 9}, **ARGS
    )
    assert calls == [(i, 18) for i in range(1, 19)]
    asked = []

    def interrupt():
        asked.append(1)
        return len(asked) > 5

    with pytest.raises(PlanningInterrupted, match="after 5 of 18") as err:
        planner.generate("a dog", "moves up", grid=(3, 3), interrupt=interrupt, **ARGS)
    assert isinstance(err.value, RuntimeError) and (err.value.done, err.value.total) == (5, 18)


def test_sliced_head_matches_full_logits(planner):
    assert planner.sliced_head  # a plain Linear lm_head: only the <I*> rows are computed
    full = SemanticPlanner(planner.model, planner.tokenizer, planner.vocab, slice_head=False)
    assert not full.sliced_head
    ids = torch.tensor([planner.build_prompt("a cup", "moves", **ARGS)])
    with torch.no_grad():
        want = planner.model(ids).logits[0, -1, planner.vocab.image_start : planner.vocab.image_end]
        got = planner.head.forward(ids, new_cache(planner.model.config))
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    for options in (dict(temperature=0), dict(seed=3, top_k=9)):
        assert torch.equal(
            planner.generate("a cup", "moves", grid=(3, 3), **options, **ARGS),
            full.generate("a cup", "moves", grid=(3, 3), **options, **ARGS),
        )


class _SoftcappedQwen2(Qwen2ForCausalLM):
    """A plain Linear lm_head whose logits the model changes afterwards (like Gemma's softcapping)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = 10 * torch.tanh(out.logits / 10)
        return out


def test_head_probe_falls_back_to_full_logits(planner):
    model = _SoftcappedQwen2(planner.model.config)
    model.load_state_dict(planner.model.state_dict())
    other = SemanticPlanner(model.eval(), planner.tokenizer, planner.vocab)
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear) and not other.sliced_head
    prompt = other.build_prompt("a", "b", grid=(3, 3), **ARGS)
    codes = other.generate("a", "b", grid=(3, 3), temperature=0, **ARGS)
    ref = reference_logits(other, sequence(other, prompt, codes, 2), len(prompt), codes)
    assert torch.all(ref.gather(2, codes[..., None])[..., 0] >= ref.max(dim=2).values - 1e-4)


# ----------------------------------------------------------------------------- plan()


def test_plan_object(planner):
    book = CodebookId("tiny", N, "abc")
    plan = planner.plan(
        "a woman", "drinks", fps=8.0, num_frames=17, width=64, height=64, codebook=book, grid=(3, 3), seed=4, top_k=10
    )
    assert plan.times == keyframe_times(17, 8.0, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert plan.token_tensor().shape == (5, 9) and plan.provenance.planner == "tiny-qwen2"
    assert (plan.provenance.scene, plan.provenance.motion, plan.provenance.seed) == ("a woman", "drinks", 4)
    plan.keyframes[2].locked = True
    plan.keyframes[2].tokens = [1] * 9
    again = planner.plan(
        "a woman",
        "drinks",
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        codebook=book,
        grid=(3, 3),
        seed=5,
        lock_from=plan,
    )
    assert again.keyframes[2].tokens == [1] * 9 and again.keyframes[2].locked
    assert [k.locked for k in again.keyframes] == [False, False, True, False, False]
    with pytest.raises(PlanError, match="writes 64 image tokens"):
        planner.plan("a", "b", fps=8.0, num_frames=17, width=64, height=64, codebook=CodebookId("ta-tok", 65536))
    odd = make_plan(
        [[1] * 9], times=[0.25], fps=8.0, num_frames=17, width=64, height=64, codebook=book, grid=(3, 3), locked=[True]
    )
    with pytest.raises(PlanError, match="falls on none"):
        planner.plan("a", "b", fps=8.0, num_frames=17, width=64, height=64, codebook=book, grid=(3, 3), lock_from=odd)


# ----------------------------------------------------------------------------- files


def test_folder_has_real_qwen2_keys(folder):
    assert json.loads((folder / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert {
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.norm.weight",
        "model.layers.1.mlp.down_proj.weight",
        "lm_head.weight",
    } <= keys


def test_sharded_folder_loads(planner, tmp_path):
    planner.model.save_pretrained(tmp_path, max_shard_size="20KB")
    planner.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    again = load_planner(tmp_path)
    assert again.vocab == planner.vocab
    assert torch.equal(
        again.generate("a", "b", seed=2, grid=(3, 3), **ARGS), planner.generate("a", "b", seed=2, grid=(3, 3), **ARGS)
    )


def broken_copy(folder, tmp_path):
    target = tmp_path / "broken"
    shutil.copytree(folder, target)
    return target


def test_loader_refuses_bad_folders(folder, tmp_path):
    with pytest.raises(CheckpointError, match="no such planner folder"):
        load_planner(tmp_path / "nothing")
    bad = broken_copy(folder, tmp_path)
    (bad / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_planner(bad)


def test_loader_refuses_pickles(folder, tmp_path):
    bad = broken_copy(folder, tmp_path)
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*never unpickles.*convert-planner"):
        load_planner(bad)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot be read with torch\.load"):
        read_bin(bad / "pytorch_model.bin")
    import types

    torch.save({"w": torch.zeros(2), "x": types.SimpleNamespace(a=1)}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"weights_only=True.*SimpleNamespace"):
        read_bin(bad / "pytorch_model.bin")
    torch.save({"model": {"w": torch.zeros(2)}}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a flat state dict"):
        read_bin(bad / "pytorch_model.bin")


def test_loader_refuses_truncated_weights(folder, tmp_path):
    bad = broken_copy(folder, tmp_path)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_planner(bad)


def test_loader_refuses_non_causal_config(folder, tmp_path):
    bad = broken_copy(folder, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(
        json.dumps({**config, "model_type": "siglip_vision_model", "architectures": ["SiglipVisionModel"]})
    )
    with pytest.raises(CheckpointError, match="not a causal language model"):
        load_planner(bad)


def test_loader_refuses_vocabulary_without_plan_tokens(tmp_path):
    tokenizer = build_word_tokenizer(WORDS)
    model = tiny_model(len(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"no <im_start> token.*extend_vocabulary"):
        load_planner(tmp_path)


def test_loader_refuses_mismatched_tokenizer(folder, tmp_path):
    bad = broken_copy(folder, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "image_start_token_id": 3}))
    with pytest.raises(CheckpointError, match="belong to another planner"):
        load_planner(bad)


# ----------------------------------------------------------------------------- vocabulary


def test_extend_vocabulary_layout_and_init():
    tokenizer = build_word_tokenizer(WORDS)
    model = tiny_model(len(tokenizer))
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    codebook = torch.randn(16, 32)
    vocab = extend_vocabulary(model, tokenizer, 16, codebook=codebook)
    first = old_in.shape[0]
    assert (vocab.im_start, vocab.im_end, vocab.scales, vocab.image_start) == (
        first,
        first + 1,
        (first + 2, first + 3, first + 4),
        first + 5,
    )
    assert tokenizer.convert_ids_to_tokens([first, first + 5, first + 20]) == ["<im_start>", "<I0>", "<I15>"]
    added = tokenizer.added_tokens_decoder
    assert added[vocab.im_start].special and added[vocab.im_end].special and not added[vocab.image_start].special
    assert model.get_input_embeddings().weight.shape[0] == first + 21 == model.config.vocab_size
    torch.testing.assert_close(model.get_input_embeddings().weight[vocab.image_start :].detach(), codebook)
    out_rows = model.get_output_embeddings().weight[vocab.image_start :].detach()
    torch.testing.assert_close(out_rows, old_out.mean(0).expand(16, -1))
    assert model.config.image_start_token_id == vocab.image_start
    assert tokenizer("<im_start><S2><I3><im_end>", add_special_tokens=False)["input_ids"] == [
        vocab.im_start,
        vocab.scales[2],
        vocab.image_start + 3,
        vocab.im_end,
    ]
    with pytest.raises(ValueError, match="extended before"):
        extend_vocabulary(model, tokenizer, 16)


def test_extend_vocabulary_codebook_width_mismatch_keeps_mean():
    tokenizer = build_word_tokenizer(WORDS)
    model = tiny_model(len(tokenizer))
    mean = model.get_input_embeddings().weight.detach().mean(0)
    with pytest.warns(UserWarning, match="mean initialisation"):
        vocab = extend_vocabulary(model, tokenizer, 8, codebook=torch.randn(8, 48))
    torch.testing.assert_close(model.get_input_embeddings().weight[vocab.image_start :].detach(), mean.expand(8, -1))
    with pytest.raises(ValueError, match="codebook must be"):
        extend_vocabulary(tiny_model(len(tokenizer)), build_word_tokenizer(WORDS), 8, codebook=torch.randn(9, 32))


def test_extend_vocabulary_is_fast_for_tatok_size():
    import time

    tokenizer = build_word_tokenizer(WORDS)
    model = tiny_model(len(tokenizer))
    start = time.perf_counter()
    vocab = extend_vocabulary(model, tokenizer, 65536)
    # tokenizers < 0.22 (what transformers < 4.56 installs) add tokens in quadratic time: ~20 s here
    # for 65,536, in the library's own add_tokens; loading such a tokenizer takes as long there
    limit = 10 if tuple(int(p) for p in tokenizers.__version__.split(".")[:2]) >= (0, 22) else 120
    assert time.perf_counter() - start < limit and vocab.num_image_tokens == 65536
    assert PlanVocab.from_tokenizer(tokenizer, 65536) == vocab


def test_plan_vocab_errors():
    tokenizer = build_word_tokenizer(WORDS)
    with pytest.raises(ValueError, match=r"no <im_start> token.*extend_vocabulary"):
        PlanVocab.from_tokenizer(tokenizer)
    tokenizer.add_tokens(["<im_start>", "<im_end>", "<S0>", "<S1>", "<S2>", "<I0>", "<I1>", "<I3>"])
    with pytest.raises(ValueError, match="<I2> is missing"):
        PlanVocab.from_tokenizer(tokenizer)
    with pytest.raises(ValueError, match="expected"):
        PlanVocab.from_tokenizer(tokenizer, num_image_tokens=4096)


def test_planner_refuses_small_embedding():
    tokenizer = build_word_tokenizer(WORDS)
    model = tiny_model(len(tokenizer))
    vocab = extend_vocabulary(tiny_model(len(tokenizer)), tokenizer, 8)
    with pytest.raises(ValueError, match="do not belong together"):
        SemanticPlanner(model, tokenizer, vocab)


# ----------------------------------------------------------------------------- text alignment


def test_word_to_code_and_back(folder):
    planner = load_planner(folder)
    emb = planner.model.get_input_embeddings().weight
    cat = planner.tokenizer.convert_tokens_to_ids("cat")
    with torch.no_grad():
        emb[planner.vocab.image_start + 5] = emb[cat]
    assert planner.word_to_code("cat") == 5 == planner.word_to_code(" Cat ")
    assert planner.code_words([5]) == ["cat"]
    assert planner.code_words([5, 5], candidates=["dog", "cat", "red ball"]) == ["cat", "cat"]
    near = planner.nearest_words([5], top=3)[0]
    assert near[0][0] == "cat" and near[0][1] == pytest.approx(1.0, abs=1e-5) and len(near) == 3
    assert len(planner.code_words([5], top=2)[0].split("/")) == 2
    with torch.no_grad():  # the candidate cache follows in-place weight edits
        emb[planner.vocab.image_start + 5] = emb[planner.tokenizer.convert_tokens_to_ids("dog")]
    assert planner.code_words([5]) == ["dog"]
    with pytest.raises(ValueError, match="knows no token of the word 'zzzz'"):
        planner.word_to_code("zzzz")
    with pytest.raises(ValueError, match="outside this planner's codebook"):
        planner.code_words([N])


def test_keyframe_cues_give_each_step_the_stage_that_holds_its_middle():
    """`keyframe_cues`: stages are the clauses joined by "then", sharing the duration equally; keyframe 0 has no
    cue, keyframe k the stage holding the middle of the step from k-1 to k; no stage, no cue."""
    from planx_core.planner.prompt import keyframe_cues, motion_stages

    assert motion_stages("the red circle moves right, then up.") == ["the red circle moves right", "up"]
    assert motion_stages("A walks in and then sits; then waves") == ["A walks in", "sits", "waves"]
    assert keyframe_cues("a moves right, then up.", 5, 2.0) == ["", "a moves right", "a moves right", "up", "up"]
    three = keyframe_cues("a, then b, then c", 5, 2.0, duration=2.0)  # middles 0.25 0.75 1.25 1.75 of 2 s
    assert three == ["", "a", "b", "b", "c"]
    assert keyframe_cues("a, then b", 11, 2.0, duration=5.0) == [""] + ["a"] * 5 + ["b"] * 5
    assert keyframe_cues("", 3, 2.0) == ["", "", ""] and keyframe_cues("a", 1, 2.0) == [""]
