"""umT5 from its released forms: ComfyUI's files (plain, prefixed, fp8_scaled), Wan's own names and .pth, a
google/umt5-xxl style folder; each gives transformers' `UMT5EncoderModel` features on the same weights.

All weights are random at a small umT5 size (2 blocks of 32, 4 heads of 8, FFN 48, the real 32
buckets over distance 128) and every file is written here in its released layout. The official
layout is also checked against `wan_t5_forward`, an independent forward written from Wan2.2's
`wan/modules/t5.py`, so the name map is tested for meaning (which FFN matrix sits under the GELU),
not only for shapes. Max |diff| values are fp32.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize
from transformers import UMT5EncoderModel

from planx_core.files.safetensors import CheckpointError, check_safetensors_header, save_safetensors
from planx_core.planner.vocab import build_word_tokenizer
from planx_core.wan.text_encoder import load_text_encoder
from planx_core.wan.text_encoder_convert import convert_main
from planx_core.wan.text_encoder_files import (
    describe_text_encoder,
    expected_shapes,
    is_umt5_keys,
    umt5_config,
    umt5_xxl_config,
)
from planx_core.wan.text_encoder_prompt import clean_prompt
from planx_core.world.scenes import WORDS

TEXTS = ["the red circle moves right, then up.", "a blue square on a dark background."]
LAYERS, DIM, HEADS, DKV, FFN = 2, 32, 4, 8, 48

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(list(WORDS))


@pytest.fixture(scope="module")
def reference(tokenizer) -> UMT5EncoderModel:
    config = umt5_config(len(tokenizer) + 3, DIM, DKV, FFN, LAYERS, HEADS)  # a few spare rows, as umT5 has
    torch.manual_seed(0)
    return randomize(UMT5EncoderModel(config), std=0.3)


def hf_state(model) -> dict[str, torch.Tensor]:
    """The encoder's weights as ComfyUI stores them: transformers' names, the embedding once (shared.weight)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}


def tokenizer_beside(tokenizer, folder):
    """The tokenizer where a Wan release keeps it: google/umt5-xxl next to the weights."""
    tokenizer.save_pretrained(folder / "google" / "umt5-xxl")
    return folder


def features(model, encoder, texts=TEXTS) -> torch.Tensor:
    """transformers' own forward on the encoder's ids and mask, zeroed past each prompt."""
    ids, mask = encoder.tokenize(texts)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, L, dim]
    return hidden * mask[..., None]


def max_diff(a, b) -> float:
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------- ComfyUI's files


@pytest.mark.parametrize("prefix", ["", "text_encoders.umt5xxl.transformer."])
def test_comfyui_file_matches_transformers(reference, tokenizer, tmp_path, prefix):
    sd = {prefix + k: v for k, v in hf_state(reference).items()}
    sd["spiece_model"] = torch.frombuffer(bytearray(b"sentencepiece model bytes"), dtype=torch.uint8)
    path = tokenizer_beside(tokenizer, tmp_path) / "umt5_xxl_fp16.safetensors"
    save_safetensors(sd, path)
    encoder = load_text_encoder(path)
    assert encoder.text_len == 512 and encoder.source["left_out"] == ["spiece_model"]
    with torch.no_grad():
        diff = max_diff(encoder(TEXTS), features(reference, encoder))
    print(f"ComfyUI layout (prefix {prefix!r}) vs UMT5EncoderModel: max |diff| {diff:.2e}")
    assert diff <= 1e-6


def fp8_scaled(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(ComfyUI's fp8_scaled file, its dequantised weights): linear weights as float8 e4m3 with a scale each."""
    stored, dequantised = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}, {}
    for key, w in sd.items():
        if w.ndim == 2 and key.startswith("encoder.block.") and "relative_attention_bias" not in key:
            scale = w.abs().max() / 448
            q = (w / scale).to(torch.float8_e4m3fn)
            stored[key], stored[key[: -len("weight")] + "scale_weight"] = q, scale.reshape(())
            dequantised[key] = q.float() * scale
        else:
            stored[key] = dequantised[key] = w
    return stored, dequantised


def test_comfyui_fp8_scaled_file_is_folded(reference, tokenizer, tmp_path):
    stored, dequantised = fp8_scaled(hf_state(reference))
    path = tokenizer_beside(tokenizer, tmp_path) / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
    save_safetensors(stored, path)
    encoder = load_text_encoder(path)
    assert encoder.model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float32
    quantised = UMT5EncoderModel(reference.config).eval()
    quantised.load_state_dict({**dequantised, "encoder.embed_tokens.weight": dequantised["shared.weight"]})
    with torch.no_grad():
        diff = max_diff(encoder(TEXTS), features(quantised, encoder))
        drift = max_diff(encoder(TEXTS), features(reference, encoder))
    print(f"fp8_scaled vs UMT5EncoderModel on the dequantised weights: max |diff| {diff:.2e} (fp8 drift {drift:.2e})")
    assert diff <= 1e-6 and drift > 1e-4  # folded exactly; really quantised
    half = load_text_encoder(path, dtype=torch.bfloat16)
    assert half.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- Wan's own layout


def official_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """A random umT5 encoder in Wan's names and shapes (wan/modules/t5.py, T5Encoder with shared_pos=False)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"token_embedding.weight": (len(build_word_tokenizer(list(WORDS))) + 3, DIM), "norm.weight": (DIM,)}
    for n in range(LAYERS):
        b = f"blocks.{n}."
        shapes |= {b + f"attn.{x}.weight": (HEADS * DKV, DIM) for x in "qkv"}
        shapes |= {b + "attn.o.weight": (DIM, HEADS * DKV), b + "norm1.weight": (DIM,), b + "norm2.weight": (DIM,)}
        shapes |= {
            b + "ffn.gate.0.weight": (FFN, DIM),
            b + "ffn.fc1.weight": (FFN, DIM),
            b + "ffn.fc2.weight": (DIM, FFN),
        }
        shapes |= {b + "pos_embedding.embedding.weight": (32, HEADS)}
    return {k: torch.randn(s, generator=gen) * 0.3 for k, s in shapes.items()}


def _bucket(rel: torch.Tensor, buckets: int = 32, max_dist: int = 128) -> torch.Tensor:
    """Bidirectional T5 position buckets (wan/modules/t5.py, T5RelativeEmbedding)."""
    half = buckets // 2
    out = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
    return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))


def wan_t5_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan's umT5 encoder on official names: RMS norms, unscaled attention with a per-block position bias,
    gated tanh-GELU FFN (GELU on gate.0), final norm. `[B, L]` ids -> `[B, L, dim]`."""

    def norm(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    b, length = ids.shape
    x = sd["token_embedding.weight"][ids]  # [B, L, dim]
    pos = torch.arange(length)
    bucket = _bucket(pos[None, :] - pos[:, None])  # [L, L]
    blocked = (mask[:, None, None, :] == 0) * torch.finfo(x.dtype).min  # [B, 1, 1, L]
    for n in range(LAYERS):
        p = f"blocks.{n}."
        h = norm(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{t}.weight"]).view(b, length, HEADS, DKV) for t in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # [1, heads, L, L]
        attn = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias + blocked, dim=-1)
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, length, -1), sd[p + "attn.o.weight"])
        h = norm(x, sd[p + "norm2.weight"])
        gate = F.gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]), approximate="tanh")
        x = x + F.linear(F.linear(h, sd[p + "ffn.fc1.weight"]) * gate, sd[p + "ffn.fc2.weight"])
    return norm(x, sd["norm.weight"]) * mask[..., None]


def test_official_layout_matches_wan_and_transformers(tokenizer, tmp_path):
    sd = official_state()
    path = tokenizer_beside(tokenizer, tmp_path) / "umt5-xxl-enc.safetensors"
    save_safetensors(sd, path)
    encoder = load_text_encoder(path)
    assert encoder.source["layout"] == "official"
    ids, mask = encoder.tokenize(TEXTS)
    with torch.no_grad():
        ours = encoder(TEXTS)
        wan = wan_t5_forward(sd, ids, mask)
        model = UMT5EncoderModel(encoder.model.config).eval()
        model.load_state_dict(encoder.model.state_dict())
        transformers_diff, wan_diff = max_diff(ours, features(model, encoder)), max_diff(ours, wan)
    print(f"official layout vs Wan's forward: max |diff| {wan_diff:.2e}; vs UMT5EncoderModel {transformers_diff:.2e}")
    assert wan_diff <= 2e-5 and transformers_diff <= 1e-6
    swapped = dict(sd)  # the map has meaning: fc1 and gate.0 exchanged give other features
    swapped["blocks.0.ffn.fc1.weight"], swapped["blocks.0.ffn.gate.0.weight"] = (
        sd["blocks.0.ffn.gate.0.weight"],
        sd["blocks.0.ffn.fc1.weight"],
    )
    assert max_diff(wan_t5_forward(swapped, ids, mask), wan) > 1e-3


def test_pth_converter_and_its_refusals(tokenizer, tmp_path, capsys):
    sd = {k: v.to(torch.bfloat16) for k, v in official_state(seed=2).items()}  # Wan's file is bfloat16
    pth = tokenizer_beside(tokenizer, tmp_path) / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(sd, pth)
    with pytest.raises(
        CheckpointError, match=r"never loads at run time.*convert-umt5 .*models_t5_umt5-xxl-enc-bf16\.pth"
    ):
        load_text_encoder(pth)
    out = tmp_path / "umt5-xxl-enc-bf16.safetensors"
    assert convert_main([str(pth), str(out)]) == 0
    assert "2 blocks of 32" in capsys.readouterr().out
    header = check_safetensors_header(out)
    assert "shared.weight" in header and "encoder.block.1.layer.1.DenseReluDense.wi_0.weight" in header
    assert json.loads(header["__metadata__"]["planx_umt5_source"])["layout"] == "official"
    encoder = load_text_encoder(out)
    assert encoder.source["layout"] == "transformers" and encoder.model.shared.weight.dtype == torch.float32
    ids, mask = encoder.tokenize(TEXTS)
    with torch.no_grad():
        diff = max_diff(encoder(TEXTS), wan_t5_forward({k: v.float() for k, v in sd.items()}, ids, mask))
    with capsys.disabled():
        print(f"converted .pth vs Wan's forward on the same bfloat16 weights: max |diff| {diff:.2e}")
    assert diff <= 2e-5
    import types

    torch.save({"w": torch.zeros(1), "x": types.SimpleNamespace(a=1)}, tmp_path / "odd.pth")
    assert convert_main([str(tmp_path / "odd.pth"), str(tmp_path / "odd.safetensors")]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    del sd["blocks.1.ffn.fc2.weight"]
    torch.save(sd, tmp_path / "cut.pth")
    assert convert_main([str(tmp_path / "cut.pth"), str(tmp_path / "cut.safetensors")]) == 2
    assert "missing keys: encoder.block.1.layer.1.DenseReluDense.wo.weight" in capsys.readouterr().err
    assert not (tmp_path / "cut.safetensors").exists()


# ----------------------------------------------------------------------------- Hugging Face folders


def test_google_umt5_style_folder(tokenizer, tmp_path):
    from transformers import UMT5ForConditionalGeneration

    config = umt5_config(
        len(tokenizer) + 3, DIM, DKV, FFN, LAYERS, HEADS, is_encoder_decoder=True, num_decoder_layers=1
    )
    torch.manual_seed(3)
    full = randomize(UMT5ForConditionalGeneration(config), std=0.3)
    folder = tmp_path / "umt5-xxl"
    full.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    encoder = load_text_encoder(folder)
    assert any(k.startswith("decoder.") for k in encoder.source["left_out"]) and encoder.text_len == 512
    own = UMT5EncoderModel.from_pretrained(folder, local_files_only=True).eval()  # transformers' own loader
    with torch.no_grad():
        diff = max_diff(encoder(TEXTS), features(own, encoder))
    print(f"google/umt5-xxl style folder vs UMT5EncoderModel.from_pretrained: max |diff| {diff:.2e}")
    assert diff <= 1e-6
    pickles = tmp_path / "umt5-bin"  # the same release with .bin shards only: refused, then converted
    pickles.mkdir()
    state = {k: v.detach().clone() for k, v in full.state_dict().items()}
    for i, part in enumerate((dict(list(state.items())[::2]), dict(list(state.items())[1::2]))):
        torch.save(part, pickles / f"pytorch_model-0000{i + 1}-of-00002.bin")
    (pickles / "config.json").write_text((folder / "config.json").read_text())
    tokenizer.save_pretrained(pickles)
    with pytest.raises(CheckpointError, match=r"pickles only .*`python -m planx_core convert-umt5 .*umt5-bin"):
        load_text_encoder(pickles)
    assert convert_main([str(pickles), str(tmp_path / "encoder.safetensors")]) == 0
    converted = load_text_encoder(tmp_path / "encoder.safetensors", tokenizer=pickles)
    with torch.no_grad():
        assert max_diff(converted(TEXTS), encoder(TEXTS)) == 0


# ----------------------------------------------------------------------------- ComfyUI's embedded tokenizer


def spiece_bytes() -> bytes:
    """A small unigram sentencepiece model with umT5's special ids (pad 0, end 1, unknown 2, no start token)."""
    spm = pytest.importorskip("sentencepiece", reason="sentencepiece (ComfyUI installs it) is not installed here")
    import io

    corpus = [" ".join(WORDS[i : i + 7]) for i in range(0, len(WORDS), 3)] + TEXTS * 3
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=out,
        vocab_size=60,
        hard_vocab_limit=False,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    return out.getvalue()


def test_comfyui_file_carries_its_tokenizer(reference, tokenizer, tmp_path):
    proto = spiece_bytes()
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_proto=proto)
    sd = hf_state(reference) | {"spiece_model": torch.frombuffer(bytearray(proto), dtype=torch.uint8)}
    path = tmp_path / "umt5_xxl_fp16.safetensors"  # alone in its folder, as in ComfyUI's models/text_encoders
    save_safetensors(sd, path)
    encoder = load_text_encoder(path, text_len=24)
    assert type(encoder.tokenizer).__name__ == "SentencePieceTokenizer" and len(encoder.tokenizer) <= 78
    ids, mask = encoder.tokenize(TEXTS)
    assert ids[0, : int(mask[0].sum())].tolist() == [*sp.encode(clean_prompt(TEXTS[0])), 1]  # ComfyUI's ids: + end
    with torch.no_grad():
        assert max_diff(encoder(TEXTS), features(reference, encoder)) <= 1e-6
    with pytest.warns(UserWarning, match=r"prompt\(s\) \[0\] are longer than the text encoder's 24 tokens"):
        ids, mask = encoder.tokenize([" ".join(WORDS[:40])])
    assert int(mask.sum()) == 24 and ids[0, 23] == 1  # truncated, the end token kept
    tokenizer_beside(tokenizer, tmp_path)  # a tokenizer folder beside the file is preferred (Wan's own)
    assert type(load_text_encoder(path).tokenizer).__name__ != "SentencePieceTokenizer"
    lone = tmp_path / "spiece-only"
    encoder.tokenizer.save_pretrained(lone)  # a folder with spiece.model alone
    again = load_text_encoder(path, tokenizer=lone, text_len=24)
    assert torch.equal(again.tokenize(TEXTS)[0], encoder.tokenize(TEXTS)[0])


# ----------------------------------------------------------------------------- refusals and sizes


def test_real_size_on_the_meta_device():
    shapes = expected_shapes(umt5_xxl_config())
    assert len(shapes) == 1 + 24 * 10 + 1 and shapes["shared.weight"] == (256384, 4096)
    assert shapes["encoder.block.23.layer.1.DenseReluDense.wi_0.weight"] == (10240, 4096)
    assert shapes["encoder.block.5.layer.0.SelfAttention.relative_attention_bias.weight"] == (32, 64)
    assert sum(math.prod(s) for s in shapes.values()) == 5_680_910_336  # umT5-XXL's encoder: 5.68 B parameters


def test_inspect_helpers(reference, tmp_path):
    stored, _ = fp8_scaled(hf_state(reference))
    save_safetensors(stored, tmp_path / "fp8.safetensors")
    save_safetensors(official_state(), tmp_path / "wan.safetensors")
    assert is_umt5_keys(stored) and is_umt5_keys(official_state()) and not is_umt5_keys(["blocks.0.self_attn.q.weight"])
    assert describe_text_encoder(tmp_path / "fp8.safetensors") == (
        "umT5 text encoder (transformers / ComfyUI names, fp8_scaled): 2 blocks of 32, 4 heads of 8, FFN 48, "
        f"vocabulary {reference.config.vocab_size}"
    )
    assert describe_text_encoder(tmp_path / "wan.safetensors").startswith("umT5 text encoder (Wan names): 2 blocks")


def test_wrong_files_are_refused_with_the_fix(reference, tokenizer, tmp_path):
    sd = hf_state(reference)
    bare = tmp_path / "bare"
    bare.mkdir()
    save_safetensors(sd, bare / "umt5.safetensors")
    with pytest.raises(CheckpointError, match=r"no umT5 tokenizer found.*google/umt5-xxl.*tokenizer=FOLDER"):
        load_text_encoder(bare / "umt5.safetensors")
    tokenizer.save_pretrained(tmp_path / "tok")
    assert load_text_encoder(bare / "umt5.safetensors", tokenizer=tmp_path / "tok").text_len == 512
    small = build_word_tokenizer(["red"])
    small.add_tokens([f"w{i}" for i in range(200)])
    small.save_pretrained(tmp_path / "big")
    with pytest.raises(CheckpointError, match="tokenizer has 2.. tokens but this text encoder embeds only 78"):
        load_text_encoder(bare / "umt5.safetensors", tokenizer=tmp_path / "big")
    bad = dict(sd, **{"encoder.block.1.layer.0.SelfAttention.k.weight": torch.zeros(16, DIM)})
    save_safetensors(bad, tmp_path / "bad.safetensors")
    with pytest.raises(
        CheckpointError, match=r"mis-shaped keys: encoder\.block\.1\.layer\.0\.SelfAttention\.k\.weight"
    ):
        load_text_encoder(tmp_path / "bad.safetensors", tokenizer=tmp_path / "tok")
    save_safetensors({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, tmp_path / "dit.safetensors")
    with pytest.raises(CheckpointError, match="not a umT5 text encoder.*convert-umt5"):
        load_text_encoder(tmp_path / "dit.safetensors")
    data = (bare / "umt5.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_text_encoder(tmp_path / "cut.safetensors", tokenizer=tmp_path / "tok")


def test_t5_folders_are_not_umt5(reference, tmp_path):
    reference.save_pretrained(tmp_path / "t5")
    config = json.loads((tmp_path / "t5" / "config.json").read_text())
    (tmp_path / "t5" / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(CheckpointError, match="a t5 checkpoint .*not umT5"):
        load_text_encoder(tmp_path / "t5")
