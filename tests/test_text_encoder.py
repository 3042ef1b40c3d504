"""The umT5 text encoder: token features, zero padding, order sensitivity, folder round trip."""

import pytest
import torch
from conftest import randomize

from planx_core.files.safetensors import CheckpointError
from planx_core.planner.vocab import build_word_tokenizer
from planx_core.wan.text_encoder import (
    load_text_encoder,
    save_text_encoder,
    tiny_text_encoder,
)
from planx_core.world.scenes import WORDS


@pytest.fixture
def encoder():
    enc = tiny_text_encoder(build_word_tokenizer(list(WORDS)), dim=32, layers=2, heads=2, text_len=24)
    randomize(enc.model, std=0.3)
    return enc


def test_features_are_per_token_zero_padded_and_order_sensitive(encoder):
    texts = ["the red circle moves right, then up.", "the red circle moves up, then right."]
    feats = encoder(texts)  # [2, 24, 32]
    ids, mask = encoder.tokenize(texts)
    assert feats.shape == (2, 24, 32) and mask.sum(1).tolist() == [9, 9]  # 7 words, 2 marks
    assert feats[:, 9:].abs().max() == 0 and (feats[:, :9].abs().sum(-1) > 0).all()
    assert (feats[0] - feats[1]).abs().max() > 1e-3  # same words, another order, other features
    alone = encoder(texts[:1])
    torch.testing.assert_close(alone[0], feats[0])  # batching does not leak between prompts


def test_too_long_prompt_is_refused(encoder):
    with pytest.raises(ValueError, match="prompt 0 has 30 tokens, more than this text encoder's 24"):
        encoder(["red " * 30])


def test_folder_round_trip_and_refusal(encoder, tmp_path):
    save_text_encoder(encoder, tmp_path / "te")
    loaded = load_text_encoder(tmp_path / "te")
    assert loaded.text_len == 24
    text = ["a blue square and a green circle on a dark background."]
    torch.testing.assert_close(loaded(text), encoder(text))
    with pytest.raises(CheckpointError, match="text-encoder folder holds config.json"):
        load_text_encoder(tmp_path)


def test_join_prompt():
    from planx_core.wan.text_encoder import join_prompt

    assert (
        join_prompt("a red circle on a dark background", "the red circle moves up.")
        == "a red circle on a dark background. the red circle moves up."
    )
    assert join_prompt("", "moves up") == "moves up." and join_prompt("", "") == ""
