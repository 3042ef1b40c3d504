"""TA-Tok: parity with a direct transformers SigLIP forward, pooling, lookup, files, converter, video -> plan.

`tar_layout` writes the key names and shapes of Tar's released `ta_tok.pth` out by hand
(encoder = transformers' SigLIP vision tower, `TextAlignedTokenizer` module names), so these
tests pin `TATok` to the real checkpoint layout. All weights are random; nothing is downloaded.
"""

from __future__ import annotations

import collections
import json
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import randomize

from planx_core.files.safetensors import (
    CheckpointError,
    check_safetensors_header,
    save_safetensors,
)
from planx_core.plan.core import CodebookId, Plan
from planx_core.plan.timing import keyframe_times
from planx_core.tatok.files import (
    convert_main,
    convert_ta_tok_pth,
    expected_shapes,
    infer_config,
    load_tatok,
    save_tatok,
)
from planx_core.tatok.model import (
    TATok,
    TATokConfig,
    nearest_codes,
    pool_scale_for,
    pool_tokens,
)
from planx_core.tatok.video import frames_to_nchw, plan_from_video

TINY = TATokConfig.tiny()


def tar_layout(hidden, inter, layers, patch, grid, dim, codes, head=True) -> dict[str, tuple[int, ...]]:
    """Key -> shape of Tar's TA-Tok encoder half (`ta_tok.pth` "sd" minus decoder / teacher keys)."""
    out = {
        "encoder.embeddings.patch_embedding.weight": (hidden, 3, patch, patch),
        "encoder.embeddings.patch_embedding.bias": (hidden,),
        "encoder.embeddings.position_embedding.weight": (grid * grid, hidden),
        "encoder.post_layernorm.weight": (hidden,),
        "encoder.post_layernorm.bias": (hidden,),
        "encode_task_layer.0.weight": (hidden, hidden),
        "encode_task_layer.0.bias": (hidden,),
        "bottleneck.in_linear.weight": (dim, hidden),
        "bottleneck.in_linear.bias": (dim,),
        "bottleneck.out_linear.weight": (dim, dim),
        "bottleneck.out_linear.bias": (dim,),
        "bottleneck.regularizer.embedding.weight": (codes, dim),
        "bottleneck.regularizer.embedding_proj.weight": (dim, dim),
        "bottleneck.regularizer.embedding_proj.bias": (dim,),
        "scale_layer.shift": (1, 3, 1, 1),
        "scale_layer.scale": (1, 3, 1, 1),
    }
    for n in range(layers):
        b = f"encoder.encoder.layers.{n}."
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{b}self_attn.{p}.weight"], out[f"{b}self_attn.{p}.bias"] = (hidden, hidden), (hidden,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[f"{b}{norm}.weight"] = out[f"{b}{norm}.bias"] = (hidden,)
        out[f"{b}mlp.fc1.weight"], out[f"{b}mlp.fc1.bias"] = (inter, hidden), (inter,)
        out[f"{b}mlp.fc2.weight"], out[f"{b}mlp.fc2.bias"] = (hidden, inter), (hidden,)
    if head:
        out.update(
            {
                "encoder.head.probe": (1, 1, hidden),
                "encoder.head.attention.in_proj_weight": (3 * hidden, hidden),
                "encoder.head.attention.in_proj_bias": (3 * hidden,),
                "encoder.head.attention.out_proj.weight": (hidden, hidden),
                "encoder.head.attention.out_proj.bias": (hidden,),
                "encoder.head.layernorm.weight": (hidden,),
                "encoder.head.layernorm.bias": (hidden,),
                "encoder.head.mlp.fc1.weight": (inter, hidden),
                "encoder.head.mlp.fc1.bias": (inter,),
                "encoder.head.mlp.fc2.weight": (hidden, inter),
                "encoder.head.mlp.fc2.bias": (hidden,),
            }
        )
    return out


TINY_LAYOUT = tar_layout(32, 64, 2, 2, 27, 16, 256)
TEMPERATURE = "bottleneck.regularizer.stochastic_temperature_inv"  # in releases trained with a learnable one
TAR_EXTRAS = {
    "decoder.vision_model.embeddings.patch_embedding.weight": (32, 16),  # the de-tokenizer (dropped)
    "decoder.vision_model.post_layernorm.weight": (32,),
    "decode_task_layer.0.weight": (32, 32),
    "decode_task_layer.2.bias": (32,),
    "teacher.vision_model.post_layernorm.bias": (32,),
}


def random_state(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(shape, generator=gen) * 0.2 for k, shape in layout.items()}
    sd["scale_layer.shift"], sd["scale_layer.scale"] = torch.full((1, 3, 1, 1), 0.5), torch.full((1, 3, 1, 1), 0.5)
    return sd


@pytest.fixture(scope="module")
def model() -> TATok:
    torch.manual_seed(0)
    m = randomize(TATok(TINY))
    with torch.no_grad():
        m.scale_layer.shift.fill_(0.5)
        m.scale_layer.scale.fill_(0.5)
    return m


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 54, 54, generator=torch.Generator().manual_seed(1))


# --- layout ----------------------------------------------------------------------------------------


def test_state_dict_has_tars_key_names_and_shapes():
    assert expected_shapes(TINY) == TINY_LAYOUT
    real = TATokConfig.so400m()
    assert expected_shapes(real) == tar_layout(1152, 4304, 27, 14, 27, 1536, 65536)
    assert real.patch_grid == 27 and real.layers_run == 26


def test_real_shapes_give_the_real_config():
    shapes = tar_layout(1152, 4304, 27, 14, 27, 1536, 65536)
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert infer_config(sd) == TATokConfig.so400m()
    assert infer_config(sd).image_size == 384  # 27 patches of 14 px: the exact size is SigLIP2's 384


# --- the encoder against transformers --------------------------------------------------------------


def test_features_match_a_direct_transformers_forward(model, images):
    with torch.no_grad():
        ref = model.encoder(pixel_values=(images - 0.5) / 0.5, output_hidden_states=True).hidden_states[-2]
        ours = model.features(images)
    assert ours.shape == (3, 729, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_frames_are_squashed_like_torchvision_resize(model):
    from torchvision.transforms import Resize

    wide = torch.rand(2, 3, 40, 90, generator=torch.Generator().manual_seed(2))
    squashed = Resize((54, 54), antialias=True)((wide - 0.5) / 0.5)
    with torch.no_grad():
        ref = model.encoder(pixel_values=squashed, output_hidden_states=True).hidden_states[-2]
        torch.testing.assert_close(model.features(wide), ref, atol=1e-5, rtol=1e-5)


def reference_tokens(model: TATok, images: torch.Tensor, grid: int) -> torch.Tensor:
    """Tar's encode path written out independently: loops over pooled cells, full argmax of cosine."""
    sd = {k: v.double() for k, v in model.state_dict().items()}
    with torch.no_grad():
        feats = model.encoder(pixel_values=(images - 0.5) / 0.5, output_hidden_states=True).hidden_states[-2]
    p, s = 27, {27: 1, 13: 2, 9: 3}[grid]
    maps = feats.double().reshape(len(images), p, p, -1)
    cells = torch.stack(
        [maps[:, i * s : (i + 1) * s, j * s : (j + 1) * s].mean((1, 2)) for i in range(grid) for j in range(grid)], 1
    )  # [B, g*g, h]
    task = torch.tanh(cells @ sd["encode_task_layer.0.weight"].T + sd["encode_task_layer.0.bias"])
    z = task @ sd["bottleneck.in_linear.weight"].T + sd["bottleneck.in_linear.bias"]
    book = (
        sd["bottleneck.regularizer.embedding.weight"] @ sd["bottleneck.regularizer.embedding_proj.weight"].T
        + sd["bottleneck.regularizer.embedding_proj.bias"]
    )
    sims = F.normalize(z, dim=-1) @ F.normalize(book, dim=-1).T  # [B, g*g, N]
    return sims.argmax(-1)


@pytest.mark.parametrize("grid", [27, 13, 9])
def test_encode_matches_the_reference_pipeline(model, images, grid):
    ids = model.encode(images, grid=grid, chunk=100)  # chunked over the 256 codes
    assert ids.shape == (3, grid * grid) and ids.dtype == torch.long
    assert torch.equal(ids, reference_tokens(model, images, grid))


# --- pooling and lookup ----------------------------------------------------------------------------


def test_pool_scales_of_the_27x27_grid():
    assert [pool_scale_for(27, g) for g in (27, 13, 9)] == [1, 2, 3]
    feats = torch.randn(2, 729, 5)
    assert [pool_tokens(feats, g).shape[1] for g in (27, 13, 9)] == [729, 169, 81]
    maps = feats.reshape(2, 27, 27, 5)
    torch.testing.assert_close(pool_tokens(feats, 13)[:, 0], maps[:, :2, :2].mean((1, 2)))
    torch.testing.assert_close(pool_tokens(feats, 9)[:, -1], maps[:, 24:, 24:].mean((1, 2)))
    edited = maps.clone()
    edited[:, 26] += 100.0  # the 13x13 scale drops the 27th row and column; 9x9 uses them
    assert torch.equal(pool_tokens(edited.reshape(2, 729, 5), 13), pool_tokens(feats, 13))
    assert not torch.equal(pool_tokens(edited.reshape(2, 729, 5), 9), pool_tokens(feats, 9))
    assert pool_scale_for(7, 3) == 2 and pool_scale_for(9, 4) == 2
    with pytest.raises(ValueError, match="cannot be pooled to a 10x10"):
        pool_scale_for(27, 10)


def test_chunked_lookup_equals_a_full_argmax(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    book = F.normalize(torch.randn(1000, 8, generator=gen), dim=-1)
    z = torch.randn(4, 50, 8, generator=gen)
    expect = (F.normalize(z, dim=-1) @ book.T).argmax(-1)
    assert torch.equal(nearest_codes(z, book, chunk=300), expect)
    assert torch.equal(nearest_codes(book[[5, 5, 999]] * 3.0, book), torch.tensor([5, 5, 999]))
    monkeypatch.setattr("planx_core.tatok.model._SIMILARITY_BLOCK", 256 * 60)  # blocks of 60 of the 200 rows of z
    assert torch.equal(nearest_codes(z, book, chunk=256), expect)
    assert nearest_codes(torch.zeros(0, 8), book).shape == (0,)


def test_encode_is_deterministic_and_batch_independent(model, images):
    first = model.encode(images)
    assert torch.equal(first, model.encode(images))
    assert torch.equal(first[1:2], model.encode(images[1:2]))
    video = torch.stack([images, images.flip(0)], 2)  # [B, 3, T=2, H, W]
    assert torch.equal(model.encode(video), torch.stack([first, first.flip(0)], 1).flatten(0, 1))


def test_uint8_images_are_scaled(model, images):
    as_bytes = (images * 255).round().to(torch.uint8)
    assert torch.equal(model.encode(as_bytes), model.encode(as_bytes.float() / 255))
    with pytest.raises(ValueError, match="channel axis"):
        model.encode(images.permute(0, 2, 3, 1))


def test_codebook_rows_embed_and_refuse_out_of_range(model):
    book = model.codebook()
    assert book.shape == (256, 16) and book.dtype == torch.float32
    torch.testing.assert_close(book.norm(dim=-1), torch.ones(256))
    ids = torch.tensor([[0, 5, 255], [7, 7, 1]])
    vectors = model.embed(ids)
    assert vectors.shape == (2, 3, 16) and torch.equal(vectors, book[ids])
    for bad in (256, -1):
        with pytest.raises(ValueError, match="outside the codebook"):
            model.embed(torch.tensor([1, bad]))


def test_codebook_cache_and_digest_follow_the_weights():
    m = randomize(TATok(TINY), seed=4)
    book, digest = m.codebook().clone(), m.digest()
    assert m.codebook() is m.codebook()  # cached
    other = randomize(TATok(TINY), seed=5)
    m.load_state_dict(other.state_dict())
    assert not torch.equal(m.codebook(), book) and m.digest() != digest
    torch.testing.assert_close(m.codebook(), other.codebook())
    assert m.identity("ta-tok") == CodebookId("ta-tok", 256, other.digest())
    assert len(m.digest()) == 16 and int(m.digest(), 16) >= 0


def test_works_inside_inference_mode_like_comfyui(model, images, tmp_path):
    path = tmp_path / "t.safetensors"
    save_tatok(model, path)
    with torch.inference_mode():  # ComfyUI loads and runs nodes in inference mode
        loaded = load_tatok(path)
        ids = loaded.encode(images)
        before = loaded.digest()
        loaded.load_state_dict(randomize(TATok(TINY), seed=9).state_dict())
        assert loaded.digest() != before
    assert torch.equal(ids, model.encode(images)) and loaded.codebook().shape == (256, 16)


# --- files -----------------------------------------------------------------------------------------


def test_save_load_round_trip(model, images, tmp_path):
    path = tmp_path / "ta_tok_tiny.safetensors"
    save_tatok(model, path)
    meta = check_safetensors_header(path)["__metadata__"]
    assert json.loads(meta["planx_tatok"])["name"] == "ta-tok-tiny"
    loaded = load_tatok(path)
    assert loaded.config == TINY and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert loaded.identity() == model.identity()
    half = load_tatok(path, dtype=torch.bfloat16)
    assert half.encoder.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert half.bottleneck.regularizer.embedding.weight.dtype == torch.float32  # exact lookup stays fp32
    assert half.encode(images).shape == (3, 81) and half.identity() == model.identity()


def test_loader_takes_tars_key_names_without_metadata(tmp_path):
    sd = random_state(TINY_LAYOUT)
    extras = {k: torch.zeros(s) for k, s in TAR_EXTRAS.items()}
    path = tmp_path / "plain.safetensors"
    extras[TEMPERATURE] = torch.tensor(33.3)
    save_safetensors({**sd, **extras, "encoder.embeddings.position_ids": torch.arange(729)[None]}, path)
    with pytest.raises(CheckpointError, match="number of attention heads"):
        load_tatok(path)  # width 32 is no known SigLIP: the heads cannot be read from shapes
    loaded = load_tatok(path, config=TINY)
    reference = TATok(TINY).eval()
    reference.load_state_dict(sd)
    x = torch.rand(2, 3, 60, 60)
    assert torch.equal(loaded.encode(x, grid=13), reference.encode(x, grid=13))


def write_bad(tmp_path, name, sd, metadata=None):
    path = tmp_path / name
    save_safetensors(sd, path, metadata)
    return path


def test_wrong_files_are_refused_with_the_fix(tmp_path, model):
    from planx_core.wan.configs import get_preset
    from planx_core.wan.dit import WanModel

    dit = write_bad(tmp_path, "dit.safetensors", WanModel(get_preset("tiny")).state_dict())
    with pytest.raises(CheckpointError, match=r"dit\.safetensors: this is a Wan DiT .*DiT loader"):
        load_tatok(dit)
    lora = write_bad(tmp_path, "lora.safetensors", {"blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, 8)})
    with pytest.raises(CheckpointError, match="LoRA"):
        load_tatok(lora)
    vae = write_bad(tmp_path, "vae.safetensors", {"conv_in.weight": torch.zeros(4, 3, 3, 3)})
    with pytest.raises(CheckpointError, match=r"not a TA-Tok tokenizer.*conv_in\.weight"):
        load_tatok(vae)
    branch = write_bad(
        tmp_path, "branch.safetensors", {"proj.0.weight": torch.zeros(4)}, {"planx_semantic_branch": "{}"}
    )
    with pytest.raises(CheckpointError, match="semantic-branch file"):
        load_tatok(branch)
    good = tmp_path / "good.safetensors"
    save_tatok(model, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tatok(cut)
    pth = tmp_path / "ta_tok.pth"
    torch.save({"model": {}}, pth)
    with pytest.raises(CheckpointError, match="convert-tatok"):
        load_tatok(pth)


def test_incomplete_or_misshaped_tokenizers_name_the_keys(tmp_path, model):
    sd = dict(model.state_dict())
    meta = {"planx_tatok": json.dumps(TINY.to_dict())}
    del sd["bottleneck.in_linear.bias"], sd["encoder.encoder.layers.1.mlp.fc2.weight"]
    sd["encoder.extra.weight"] = torch.zeros(2)
    sd["bottleneck.regularizer.embedding.weight"] = torch.zeros(128, 16)
    path = write_bad(tmp_path, "broken.safetensors", sd, meta)
    with pytest.raises(CheckpointError) as err:
        load_tatok(path)
    text = str(err.value)
    assert "broken.safetensors: does not fit the TA-Tok config 'ta-tok-tiny'" in text
    assert "2 missing keys: bottleneck.in_linear.bias, encoder.encoder.layers.1.mlp.fc2.weight" in text
    assert "unexpected keys: encoder.extra.weight" in text
    assert "bottleneck.regularizer.embedding.weight (expected [256, 16], found [128, 16])" in text
    assert "convert-tatok" in text
    future = write_bad(
        tmp_path,
        "future.safetensors",
        dict(model.state_dict()),
        {"planx_tatok": json.dumps({**TINY.to_dict(), "rope": True})},
    )
    with pytest.raises(CheckpointError, match=r"unknown TA-Tok config fields \['rope'\]"):
        load_tatok(future)


# --- the converter ---------------------------------------------------------------------------------


class _FakeEasyDict(dict):
    """Pickles like easydict.EasyDict: a dict whose items are mirrored as attributes."""

    def __init__(self, d=None):
        super().__init__()
        for k, v in (d or {}).items():
            setattr(self, k, v)

    def __setattr__(self, name, value):
        if isinstance(value, dict) and not isinstance(value, _FakeEasyDict):
            value = _FakeEasyDict(value)
        super().__setattr__(name, value)
        super().__setitem__(name, value)


def released_args() -> dict:
    reg = {
        "name": "simvq",
        "args": {
            "codebook_size": 256,
            "commitment_loss_weight": 0.25,
            "l2_normalized": True,
            "stochastic": True,
            "stochastic_temperature": 0.03,
        },
    }
    return {
        "bottleneck": {"name": "bottleneck", "args": {"bottleneck_dim": 16, "norm": "none", "regularizer": reg}},
        "bottleneck_token_num": 729,
        "input_size": 54,
        "teacher": "google/siglip2-so400m-patch14-384",
        "pool_scale": 1,
        "rand_scale": True,
    }


def save_released(path, args: dict, sd: dict) -> None:
    """torch.save Tar's layout with `args` as an `easydict.EasyDict` (a stand-in module, removed afterwards)."""
    module = types.ModuleType("easydict")
    _FakeEasyDict.__module__, _FakeEasyDict.__qualname__ = "easydict", "EasyDict"
    module.EasyDict = _FakeEasyDict
    sys.modules["easydict"] = module
    try:
        torch.save({"model": {"args": _FakeEasyDict(args), "sd": collections.OrderedDict(sd)}}, path)
    finally:
        del sys.modules["easydict"]
        _FakeEasyDict.__module__, _FakeEasyDict.__qualname__ = __name__, "_FakeEasyDict"


def test_converter_reads_tars_pth_safely_and_drops_the_decoder(tmp_path):
    sd = random_state(TINY_LAYOUT, seed=7)
    extras = {k: torch.randn(s) for k, s in TAR_EXTRAS.items()}
    extras[TEMPERATURE] = torch.tensor(33.3)  # a release with the learnable quantiser temperature
    src, dst = tmp_path / "ta_tok.pth", tmp_path / "ta_tok.safetensors"
    save_released(src, released_args(), {**sd, **extras})
    assert b"easydict" in src.read_bytes()  # the pickle really names easydict.EasyDict
    assert "easydict" not in sys.modules
    config = convert_ta_tok_pth(src, dst, num_heads=2)
    assert config == TATokConfig(**{**TINY.to_dict(), "name": "ta-tok-custom"})
    meta = check_safetensors_header(dst)["__metadata__"]
    source = json.loads(meta["planx_tatok_source"])
    assert source["args"]["bottleneck"]["args"]["regularizer"]["args"]["codebook_size"] == 256
    assert source["dropped"] == {"decoder": 2, "decode_task_layer": 2, "teacher": 1, TEMPERATURE: 1}
    assert TEMPERATURE not in check_safetensors_header(dst)
    loaded = load_tatok(dst)
    assert set(loaded.state_dict()) == set(TINY_LAYOUT)
    reference = TATok(TINY).eval()
    reference.load_state_dict(sd)
    x = torch.rand(2, 3, 54, 54)
    assert torch.equal(loaded.encode(x), reference.encode(x))
    assert loaded.digest() == reference.digest()


def test_converter_refuses_other_pickles(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save(random_state(TINY_LAYOUT), plain)
    with pytest.raises(CheckpointError, match="not Tar's ta_tok.pth layout"):
        convert_ta_tok_pth(plain, tmp_path / "out.safetensors")
    odd = tmp_path / "odd.pth"
    torch.save({"model": {"args": collections.Counter(a=1), "sd": {}, "x": types.SimpleNamespace(a=1)}}, odd)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*SimpleNamespace"):
        convert_ta_tok_pth(odd, tmp_path / "out.safetensors")
    whole = tmp_path / "whole.pth"
    save_released(whole, released_args(), random_state(TINY_LAYOUT))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: cannot be read .*re-download"):
        convert_ta_tok_pth(cut, tmp_path / "out.safetensors")
    bad_args = released_args()
    bad_args["bottleneck"]["args"]["regularizer"]["args"]["l2_normalized"] = False
    save_released(tmp_path / "l2.pth", bad_args, random_state(TINY_LAYOUT))
    with pytest.raises(CheckpointError, match="l2_normalized=False is not supported"):
        convert_ta_tok_pth(tmp_path / "l2.pth", tmp_path / "out.safetensors", num_heads=2)
    clash = released_args()
    clash["bottleneck"]["args"]["regularizer"]["args"]["codebook_size"] = 512
    save_released(tmp_path / "clash.pth", clash, random_state(TINY_LAYOUT))
    with pytest.raises(CheckpointError, match="codebook_size args 512 vs shapes 256"):
        convert_ta_tok_pth(tmp_path / "clash.pth", tmp_path / "out.safetensors", num_heads=2)
    assert not (tmp_path / "out.safetensors").exists()


def test_convert_command(tmp_path, capsys):
    src = tmp_path / "ta_tok.pth"
    save_released(src, released_args(), random_state(TINY_LAYOUT))
    assert convert_main([str(src), str(tmp_path / "a.safetensors"), "--num-heads", "2", "--dtype", "bfloat16"]) == 0
    assert "codebook 256x16" in capsys.readouterr().out
    assert load_tatok(tmp_path / "a.safetensors").codebook().shape == (256, 16)
    assert convert_main([str(src), str(tmp_path / "b.safetensors")]) == 2  # heads unknown for width 32
    assert "--num-heads" in capsys.readouterr().err


# --- video -> plan ---------------------------------------------------------------------------------


def test_plan_from_video(model):
    frames = torch.rand(25, 40, 64, 3, generator=torch.Generator().manual_seed(8))  # 25 frames at 8 fps = 3 s
    plan = plan_from_video(model, frames, fps=8.0)
    assert isinstance(plan, Plan) and plan.validate() is plan
    assert plan.times == keyframe_times(25, 8.0, 2.0) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert (plan.width, plan.height, plan.num_frames, plan.grid) == (64, 40, 25, (9, 9))
    assert plan.codebook == model.identity("ta-tok")
    frame_ids = [round(t * 8) for t in plan.times]
    expect = model.encode(frames[frame_ids].permute(0, 3, 1, 2))
    assert torch.equal(plan.token_tensor(), expect)
    as_bytes = (frames * 255).round().to(torch.uint8)
    same = plan_from_video(model, as_bytes.permute(0, 3, 1, 2), fps=8.0, batch_size=3)
    assert torch.equal(same.token_tensor(), plan_from_video(model, as_bytes, fps=8.0).token_tensor())
    coarse = plan_from_video(
        model, frames, fps=8.0, keyframe_rate=1.0, grid=13, codebook_name="mine", width=1280, height=704
    )
    assert coarse.times == [0.0, 1.0, 2.0, 3.0] and coarse.grid == (13, 13)
    assert coarse.codebook.name == "mine" and (coarse.width, coarse.height) == (1280, 704)
    slow = plan_from_video(model, frames[:4], fps=1.5, keyframe_rate=2.0)  # fps below the rate: no repeated frame
    assert len({round(t * 1.5) for t in slow.times}) == len(slow.times)


def test_frame_layouts():
    t = torch.rand(2, 5, 7, 3)
    assert torch.equal(frames_to_nchw(t), t.permute(0, 3, 1, 2))
    assert torch.equal(frames_to_nchw(t.permute(0, 3, 1, 2)), t.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        frames_to_nchw(torch.rand(2, 5, 7, 4))
    assert math.isclose(float(frames_to_nchw(torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)).max()), 1.0)
