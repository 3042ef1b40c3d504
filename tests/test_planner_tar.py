"""Tar's planner as released: a `llava_qwen` config read as Qwen2, `.bin`-only folders refused and converted.

Folders are the tiny random planner of test_planner.py rewritten in the released layouts: the
config.json Tar's LLaVA-based trainer saves (model_type llava_qwen, `mm_*` fields, projector and
vision-tower weights beside the language model), `pytorch_model.bin` and sharded `.bin` with an
index. Each loads to the same plans as the plain Qwen2 folder.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from test_planner import ARGS, WORDS, N, randomize, tiny_model

from planx_core.files.safetensors import CheckpointError, save_safetensors
from planx_core.plan.core import CodebookId
from planx_core.planner.files import convert_main, load_planner, save_planner
from planx_core.planner.model import SemanticPlanner
from planx_core.planner.vocab import build_word_tokenizer, extend_vocabulary

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


LLAVA_FIELDS = {
    "model_type": "llava_qwen",
    "architectures": ["LlavaQwenForCausalLM"],
    "mm_vision_tower": "google/siglip2-so400m-patch14-384",
    "mm_projector_type": "mlp2x_gelu",
    "mm_hidden_size": 1152,
    "mm_vision_select_layer": -2,
    "image_aspect_ratio": "square",
}
LLAVA_EXTRAS = {
    "model.mm_projector.0.weight": (32, 16),
    "model.mm_projector.2.weight": (32, 32),
    "model.vision_tower.vision_tower.vision_model.post_layernorm.weight": (16,),
}


def as_llava(folder, target, extras: bool = True):
    """A copy of the planner folder as Tar's trainer saves it: llava_qwen config, projector / tower weights."""
    from safetensors.torch import load_file

    shutil.copytree(folder, target)
    config = json.loads((target / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, **LLAVA_FIELDS}))
    if extras:
        state = load_file(target / "model.safetensors")
        state.update({k: torch.randn(shape) for k, shape in LLAVA_EXTRAS.items()})
        save_safetensors(state, target / "model.safetensors")
    return target


def test_llava_qwen_folder_loads_as_qwen2_and_plans(folder, planner, tmp_path):
    tar = as_llava(folder, tmp_path / "Tar-tiny")
    with pytest.warns(
        UserWarning, match=r"llava_qwen checkpoint: 3 weights of model\.mm_projector, model\.vision_tower"
    ):
        loaded = load_planner(tar)
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM" and loaded.vocab == planner.vocab
    for options in (dict(temperature=0), dict(seed=4, top_k=9)):
        assert torch.equal(
            loaded.generate("a red ball", "moves left", grid=(3, 3), **options, **ARGS),
            planner.generate("a red ball", "moves left", grid=(3, 3), **options, **ARGS),
        )
    book = CodebookId("tiny", N, "abc")
    plan = loaded.plan("a cat", "moves up", fps=8.0, num_frames=9, width=64, height=64, codebook=book, grid=(3, 3))
    assert plan.token_tensor().shape == (3, 9) and plan.provenance.planner == "Tar-tiny"
    bare = as_llava(folder, tmp_path / "no-extras", extras=False)  # no vision weights: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert load_planner(bare).vocab == planner.vocab


def bin_release(folder, target, shards: int):
    """The planner folder as a .bin-only release: pytorch_model.bin, or shards with their index."""
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("*.safetensors"))
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    if shards == 1:
        torch.save(state, target / "pytorch_model.bin")
        return target
    keys, weight_map = sorted(state), {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state[k] for k in keys[i::shards]}
        torch.save(part, target / name)
        weight_map.update(dict.fromkeys(part, name))
    (target / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return target


def test_bin_release_is_refused_then_converted(folder, planner, tmp_path, capsys):
    single = bin_release(folder, tmp_path / "single", shards=1)
    with pytest.raises(CheckpointError, match=rf"never unpickles.*`python -m planx_core convert-planner {single}`"):
        load_planner(single)
    assert convert_main([str(single)]) == 0 and "model.safetensors" in capsys.readouterr().out
    want = planner.generate("a dog", "moves up", grid=(3, 3), seed=3, **ARGS)
    assert torch.equal(load_planner(single).generate("a dog", "moves up", grid=(3, 3), seed=3, **ARGS), want)

    tar = bin_release(as_llava(folder, tmp_path / "tar-safetensors"), tmp_path / "tar-bin", shards=3)
    out = tmp_path / "tar-converted"
    assert convert_main([str(tar), str(out)]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert not list(out.glob("*.bin")) and (out / "tokenizer.json").is_file()
    with pytest.warns(UserWarning, match="llava_qwen checkpoint: 3 weights"):
        converted = load_planner(out)
    assert torch.equal(converted.generate("a dog", "moves up", grid=(3, 3), seed=3, **ARGS), want)
    assert convert_main([str(tmp_path / "nothing")]) == 2 and "no config.json" in capsys.readouterr().err
