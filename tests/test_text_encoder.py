"""The umT5 text encoder: token features, zero padding, order sensitivity, Wan's prompt cleaning and truncation,
folder round trip. The released file forms are in test_text_encoder_files.py."""

import builtins

import pytest
import torch
from conftest import randomize
from tokenizers.processors import TemplateProcessing

from planx_core.files.safetensors import CheckpointError
from planx_core.planner.vocab import build_word_tokenizer
from planx_core.wan.text_encoder import (
    load_text_encoder,
    save_text_encoder,
    tiny_text_encoder,
)
from planx_core.wan.text_encoder_prompt import clean_prompt, fix_text, fix_text_fallback
from planx_core.world.scenes import WORDS


@pytest.fixture
def encoder():
    enc = tiny_text_encoder(build_word_tokenizer(list(WORDS)), dim=32, layers=2, heads=2, text_len=24)
    randomize(enc.model, std=0.3)
    return enc


def with_end_token(tokenizer):
    """The word tokenizer with an end token after every prompt, as umT5's tokenizer appends `</s>`."""
    eos = tokenizer.convert_tokens_to_ids("<eos>")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", eos)])
    return tokenizer, eos


def test_features_are_per_token_zero_padded_and_order_sensitive(encoder):
    texts = ["the red circle moves right, then up.", "the red circle moves up, then right."]
    feats = encoder(texts)  # [2, 24, 32]
    ids, mask = encoder.tokenize(texts)
    assert feats.shape == (2, 24, 32) and mask.sum(1).tolist() == [9, 9]  # 7 words, 2 marks
    assert feats[:, 9:].abs().max() == 0 and (feats[:, :9].abs().sum(-1) > 0).all()
    assert (feats[0] - feats[1]).abs().max() > 1e-3  # same words, another order, other features
    alone = encoder(texts[:1])
    torch.testing.assert_close(alone[0], feats[0])  # batching does not leak between prompts


def test_long_prompts_are_truncated_like_wan(encoder):
    with pytest.warns(UserWarning, match=r"prompt\(s\) \[1\] are longer than the text encoder's 24 tokens"):
        ids, mask = encoder.tokenize(["red circle", "red " * 30])
    assert mask.sum(1).tolist() == [2, 24]
    red = encoder.tokenizer.convert_tokens_to_ids("red")
    assert ids[1].tolist() == [red] * 24
    with pytest.warns(UserWarning):
        torch.testing.assert_close(encoder(["red " * 30])[0], encoder(["red " * 24])[0])
    _, eos = with_end_token(encoder.tokenizer)  # the end token is kept, as Wan's tokenizer call keeps </s>
    with pytest.warns(UserWarning, match="longer than"):
        ids, mask = encoder.tokenize(["blue " * 40])
    assert int(mask.sum()) == 24 and ids[0, 23] == eos and ids[0, 22] != eos


def test_refused_only_where_truncation_is_impossible(encoder):
    tokenizer, eos = with_end_token(encoder.tokenizer)
    bos = tokenizer.convert_tokens_to_ids("<bos>")
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> <bos> $A <eos>", special_tokens=[("<eos>", eos), ("<bos>", bos)]
    )
    encoder.text_len = 2  # three special tokens cannot fit in two: the tokenizer leaves the row whole
    with pytest.raises(ValueError, match="prompt 0 has 4 tokens even after truncation.*raise text_len"):
        encoder.tokenize(["red"])


def test_prompts_are_cleaned_like_wan(encoder):
    assert clean_prompt("  a red\tcircle\n\n moves   up  ") == "a red circle moves up"
    assert clean_prompt("cats &amp;amp; dogs &lt;3") == "cats & dogs <3"  # unescaped twice
    assert clean_prompt("\u201cquoted\u201d \u2018it\u2019s\u2019 \ufb01ne") == "\"quoted\" 'it's' fine"
    assert clean_prompt("\uff21\uff22\uff23\u3000x\x1b[31m!\x1b[0m\x00") == "ABC x!"
    ids, _ = encoder.tokenize(["  The RED circle\n moves &amp;amp; up "])
    assert torch.equal(ids, encoder.tokenize(["the red circle moves & up"])[0])


FTFY_CASES = [
    "plain text, nothing to fix",
    "\u201ccurly\u201d and \u2018single\u2019 quotes, \u02bcmodifier",
    "ligatures: \ufb01 \ufb02 \ufb03 \ufb04 \ufb00 \ufb06 \u0132 \u01c4 \u01c9",
    "\uff26\uff55\uff4c\uff4c\uff57\uff49\uff44\uff54\uff48\uff01 \uff8a\uff9d\uff76\uff78 \u3000space",
    "line\r\nbreaks\rand\u2028separators\u2029here",
    "controls\x00\x07\x0b\x1f\x7f\ufeff\u206a gone, tab\tkept",
    "terminal \x1b[1;31mcolour\x1b[0m codes",
    "C1 \x80 and \x9f controls",
    "composed e\u0301 and cafe\u0301",
    "emoji \U0001f600 and \u00e9t\u00e9 stay",
]


def test_fallback_matches_ftfy_on_what_it_repairs():
    try:
        import ftfy
    except ImportError:
        pytest.skip("ftfy is not installed here (the fallback's fixed expectations are in the next test)")
    for text in FTFY_CASES:
        assert fix_text_fallback(text) == ftfy.fix_text(text), repr(text)


def test_fallback_without_ftfy(monkeypatch):
    real_import = builtins.__import__

    def no_ftfy(name, *args, **kwargs):
        if name == "ftfy":
            raise ImportError("no ftfy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ftfy)
    assert fix_text("\ufb01ne \u201cdone\u201d") == 'fine "done"'
    assert fix_text_fallback(FTFY_CASES[4]) == "line\nbreaks\nand\nseparators\nhere"
    assert fix_text_fallback(FTFY_CASES[7]) == "C1 \u20ac and \u0178 controls"  # read as Windows-1252
    assert fix_text_fallback(FTFY_CASES[8]) == "composed \u00e9 and caf\u00e9"  # NFC
    assert fix_text_fallback("\ud83d\ude00 \ud800") == "\U0001f600 \ufffd"  # surrogates joined, lone ones replaced
    assert clean_prompt(FTFY_CASES[5]) == "controls gone, tab kept"


def test_folder_round_trip_and_refusal(encoder, tmp_path):
    save_text_encoder(encoder, tmp_path / "te")
    loaded = load_text_encoder(tmp_path / "te")
    assert loaded.text_len == 24 and loaded.source["layout"] == "transformers"
    text = ["a blue square and a green circle on a dark background."]
    torch.testing.assert_close(loaded(text), encoder(text))
    assert load_text_encoder(tmp_path / "te", text_len=40).text_len == 40
    half = load_text_encoder(tmp_path / "te", dtype=torch.bfloat16)
    assert half.model.shared.weight.dtype == torch.bfloat16
    with pytest.raises(CheckpointError, match="text-encoder folder holds config.json"):
        load_text_encoder(tmp_path)


def test_join_prompt():
    from planx_core.wan.text_encoder import join_prompt

    assert (
        join_prompt("a red circle on a dark background", "the red circle moves up.")
        == "a red circle on a dark background. the red circle moves up."
    )
    assert join_prompt("", "moves up") == "moves up." and join_prompt("", "") == ""
