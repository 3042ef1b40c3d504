"""Checkpoint loading: official / ComfyUI / diffusers layouts, refusals, fp8 and bf16 storage, shards.

`official_wan_layout` writes the published Wan 2.1/2.2 key names and shapes out by hand,
independently of `WanModel`, so these tests pin the model to the real checkpoint layout.
No real weights are used: every file is written by the test from a tiny random model.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import diffusers_wan_kwargs

from planx_core.files.safetensors import (
    CheckpointError,
    read_safetensors,
    save_safetensors,
)
from planx_core.wan.configs import DiTConfig, get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.dit_files import (
    check_state_dict,
    describe_shapes,
    detect_layout,
    expected_shapes,
    infer_config,
    load_dit,
    match_preset,
    official_to_diffusers,
    to_official,
)

TINY = get_preset("tiny")


def official_wan_layout(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an official Wan DiT checkpoint (Wan-Video/Wan2.2 `WanModel` naming)."""
    d, f = cfg.dim, cfg.ffn_dim
    out = {
        "patch_embedding.weight": (d, cfg.in_dim, *cfg.patch_size),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.head.weight": (cfg.out_dim * math.prod(cfg.patch_size), d),
        "head.head.bias": (cfg.out_dim * math.prod(cfg.patch_size),),
        "head.modulation": (1, 2, d),
    }
    for n in range(cfg.num_layers):
        b = f"blocks.{n}."
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                out[f"{b}{attn}.{p}.weight"], out[f"{b}{attn}.{p}.bias"] = (d, d), (d,)
            out[f"{b}{attn}.norm_q.weight"] = out[f"{b}{attn}.norm_k.weight"] = (d,)
        out[f"{b}norm3.weight"] = out[f"{b}norm3.bias"] = (d,)
        out[f"{b}ffn.0.weight"], out[f"{b}ffn.0.bias"] = (f, d), (f,)
        out[f"{b}ffn.2.weight"], out[f"{b}ffn.2.bias"] = (d, f), (d,)
        out[f"{b}modulation"] = (1, 6, d)
    return out


def meta_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = WanModel(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def tiny_model(cfg: DiTConfig = TINY, seed: int = 0) -> WanModel:
    torch.manual_seed(seed)
    model = WanModel(cfg).eval()
    with torch.no_grad():  # make every parameter non-trivial (norm weights start at 1, biases at 0)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tiny_inputs(cfg: DiTConfig = TINY, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 2, 4, 4, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 5, cfg.text_dim, generator=g)
    return x, t, ctx


@torch.no_grad()
def run(model: WanModel, cfg: DiTConfig = TINY) -> torch.Tensor:
    return model(*tiny_inputs(cfg))


def assert_same_weights(model: WanModel, ref: dict[str, torch.Tensor]) -> None:
    sd = model.state_dict()
    assert sd.keys() == ref.keys()
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype, k
        assert torch.equal(sd[k], v), k


@pytest.fixture(scope="module")
def tiny() -> tuple[WanModel, dict[str, torch.Tensor], torch.Tensor]:
    model = tiny_model()
    return model, {k: v.clone() for k, v in model.state_dict().items()}, run(model)


# --------------------------------------------------------------------------- layout pins


@pytest.mark.parametrize("name", ["wan2.2-ti2v-5b", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "tiny", "tiny-wan21"])
def test_wanmodel_has_exact_official_layout(name):
    cfg = get_preset(name)
    assert meta_shapes(cfg) == official_wan_layout(cfg)  # built on meta: the 5B/14B cost no memory
    assert expected_shapes(cfg) == official_wan_layout(cfg)


def test_5b_official_layout_numbers():
    shapes = official_wan_layout(get_preset("wan2.2-ti2v-5b"))
    assert shapes["patch_embedding.weight"] == (3072, 48, 1, 2, 2)
    assert shapes["head.head.weight"] == (192, 3072)
    assert shapes["blocks.29.ffn.0.weight"] == (14336, 3072)
    assert "blocks.30.modulation" not in shapes
    assert sum(math.prod(s) for s in shapes.values()) == pytest.approx(5.0e9, rel=0.03)


def test_diffusers_naming_matches_official():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    ref = diffusers.WanTransformer3DModel(**diffusers_wan_kwargs(TINY))
    dsd = ref.state_dict()
    assert detect_layout(dsd) == "diffusers"
    off = to_official(dsd)
    assert {k: tuple(v.shape) for k, v in off.items()} == official_wan_layout(TINY)
    back = official_to_diffusers(off)
    assert back.keys() == dsd.keys()
    assert all(back[k] is dsd[k] for k in dsd)
    cfg = infer_config(off)
    assert (cfg.dim, cfg.num_heads, cfg.num_layers, cfg.in_dim, cfg.text_dim, cfg.freq_dim) == (64, 2, 2, 48, 32, 32)


def test_detect_layout():
    keys = list(official_wan_layout(TINY))
    assert detect_layout(keys) == "official"
    assert detect_layout(["model.diffusion_model." + k for k in keys]) == "comfyui"
    assert detect_layout(["diffusion_model." + k for k in keys]) == "comfyui"
    assert detect_layout(list(official_to_diffusers(dict.fromkeys(keys)))) == "diffusers"


def test_unknown_keys_are_kept():
    sd = {k: torch.zeros(s) for k, s in official_wan_layout(TINY).items()}
    sd["something.else"] = torch.zeros(1)
    assert "something.else" in to_official(sd)
    assert "something.else" in to_official({"model.diffusion_model." + k: v for k, v in sd.items()})


def test_i2v_image_keys_round_trip():
    keys = [
        "img_emb.proj.0.weight",
        "img_emb.proj.1.bias",
        "img_emb.proj.3.weight",
        "img_emb.proj.4.bias",
        "img_emb.emb_pos",
        "blocks.3.cross_attn.k_img.weight",
        "blocks.3.cross_attn.v_img.bias",
        "blocks.3.cross_attn.norm_k_img.weight",
        "head.head.weight",
    ]
    sd = dict.fromkeys(keys)
    dif = official_to_diffusers(sd)
    assert "condition_embedder.image_embedder.ff.net.0.proj.bias" in dif
    assert "blocks.3.attn2.norm_added_k.weight" in dif
    assert list(to_official(dif)) == keys


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", ["official", "comfyui", "comfyui-short", "diffusers"])
def test_round_trip_layouts(tmp_path, tiny, layout):
    model, ref, out = tiny
    if layout == "official":
        sd = ref
    elif layout == "comfyui":
        sd = {"model.diffusion_model." + k: v for k, v in ref.items()}
        sd["first_stage_model.encoder.conv1.weight"] = torch.zeros(2)  # bundled VAE: dropped
    elif layout == "comfyui-short":
        sd = {"diffusion_model." + k: v for k, v in ref.items()}
    else:
        sd = official_to_diffusers(ref)
    path = tmp_path / f"{layout}.safetensors"
    save_safetensors(sd, path, metadata={"layout": layout})
    loaded = load_dit(path)
    assert not loaded.training
    assert loaded.config.name == "tiny" and loaded.config.num_heads == 2
    assert_same_weights(loaded, ref)
    torch.testing.assert_close(run(loaded), out, rtol=1e-5, atol=1e-5)  # CPU kernels vary in the last bits


def test_config_argument_forms(tmp_path, tiny):
    _, ref, out = tiny
    path = tmp_path / "m.safetensors"
    save_safetensors(ref, path)
    for cfg in ("tiny", TINY, None):
        torch.testing.assert_close(run(load_dit(path, config=cfg)), out, rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="unknown DiT preset"):
        load_dit(path, config="nope")


def test_infer_and_match_preset(tiny):
    _, ref, _ = tiny
    assert match_preset(ref) == "tiny"
    assert infer_config(ref) == TINY
    sd3 = {k: v for k, v in ref.items() if not k.startswith("blocks.1.")}
    assert match_preset(sd3) is None
    cfg = infer_config(sd3)  # tiny width: heads from the preset of the same dim
    assert (cfg.num_layers, cfg.num_heads, cfg.name) == (1, 2, "custom")
    assert "sizes are those of preset tiny" in describe_shapes({k: v for k, v in ref.items() if k != "head.head.bias"})
    assert "look like tiny" in describe_shapes(sd3)


def test_infer_real_size_heads_from_dim():
    cfg = DiTConfig(dim=2048, ffn_dim=256, num_heads=16, num_layers=1, in_dim=36, out_dim=16, text_dim=32, freq_dim=32)
    sd = {k: torch.empty(s, device="meta") for k, s in official_wan_layout(cfg).items()}
    got = infer_config(sd)
    assert (got.num_heads, got.in_dim, got.out_dim) == (16, 36, 16)
    odd = {k: torch.empty(s, device="meta") for k, s in official_wan_layout(cfg.with_(dim=96, num_heads=2)).items()}
    with pytest.raises(CheckpointError, match="heads"):
        infer_config(odd)
    assert infer_config(odd, num_heads=3).num_heads == 3


# --------------------------------------------------------------------------- refusals


def test_pickle_refused(tmp_path, tiny):
    _, ref, _ = tiny
    path = tmp_path / "wan_dit.pth"
    torch.save(ref, path)
    with pytest.raises(CheckpointError, match="safetensors") as e:
        load_dit(path)
    assert "wan_dit.pth" in str(e.value) and "convert" in str(e.value)


@pytest.mark.parametrize("length", [640, 896, 1152, 1408])
def test_header_lengths_that_start_like_a_pickle_still_load(tmp_path, length):
    """A header of 640 bytes makes the file start 0x80 0x02, like a pickle; the JSON "{" decides."""
    import json
    import struct

    body = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", length) + body.ljust(length) + struct.pack("<2f", 1.0, 2.0))
    assert path.read_bytes()[:2] == bytes([0x80, length // 256])
    assert read_safetensors(path)["w"].tolist() == [1.0, 2.0]


def test_garbage_refused(tmp_path):
    path = tmp_path / "page.safetensors"
    path.write_text("<!DOCTYPE html><html>not found</html>")
    with pytest.raises(CheckpointError, match="page.safetensors") as e:
        read_safetensors(path)
    assert "safetensors" in str(e.value)


@pytest.mark.parametrize("cut", ["data", "header", "tiny"])
def test_truncated_refused(tmp_path, tiny, cut):
    _, ref, _ = tiny
    good = tmp_path / "good.safetensors"
    save_safetensors(ref, good)
    raw = good.read_bytes()
    keep = {"data": len(raw) - 1000, "header": 100, "tiny": 5}[cut]
    bad = tmp_path / "dit_half.safetensors"
    bad.write_bytes(raw[:keep])
    with pytest.raises(CheckpointError, match="truncated") as e:
        load_dit(bad)
    assert "dit_half.safetensors" in str(e.value)


def test_bogus_header_length_refused(tmp_path):
    bad = tmp_path / "bogus.safetensors"
    bad.write_bytes((2**60).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="bogus.safetensors.*(truncated|corrupted)"):
        read_safetensors(bad)


def test_mismatch_message(tmp_path, tiny):
    _, ref, _ = tiny
    sd = dict(ref)
    del sd["blocks.0.ffn.2.bias"]
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    sd["blocks.1.ffn.0.weight"] = torch.zeros(100, 64)
    path = tmp_path / "odd_dit.safetensors"
    save_safetensors(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_dit(path, config="tiny")
    msg = str(e.value)
    for part in (
        "odd_dit.safetensors",
        "1 missing keys",
        "blocks.0.ffn.2.bias",
        "1 unexpected keys",
        "blocks.0.extra.weight",
        "1 mis-shaped keys",
        "blocks.1.ffn.0.weight (expected [128, 64], found [100, 64])",
        "sizes are those of preset tiny",
        "Pick the preset",
    ):
        assert part in msg, part


def test_wrong_preset_names_nearest(tmp_path, tiny):
    _, ref, _ = tiny
    path = tmp_path / "tiny_dit.safetensors"
    save_safetensors(ref, path)
    with pytest.raises(CheckpointError) as e:
        load_dit(path, config="tiny-wan21")
    msg = str(e.value)
    assert "tiny_dit.safetensors" in msg and "patch_embedding.weight (expected [64, 16, 1, 2, 2]" in msg
    assert "shapes match preset tiny" in msg


def test_many_missing_keys_listed_briefly(tiny):
    _, ref, _ = tiny
    sd = {k: v for k, v in ref.items() if not k.startswith("blocks.1.")}
    with pytest.raises(CheckpointError, match=r"missing keys: .*\(\+\d+ more\)") as e:
        check_state_dict(sd, TINY, "x.safetensors")
    assert "x.safetensors" in str(e.value)


@pytest.mark.parametrize(
    "keys, what",
    [
        (["encoder.conv1.weight", "decoder.head.0.gamma", "conv1.weight", "conv2.weight"], "VAE"),
        (["encoder.conv_in.weight", "decoder.up_blocks.0.resnets.0.conv1.weight", "quant_conv.weight"], "VAE"),
        (["shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"], "text encoder"),
        (["visual.transformer.resblocks.0.attn.in_proj_weight"], "CLIP vision"),
        (
            [
                "diffusion_model.blocks.0.self_attn.q.lora_A.weight",
                "diffusion_model.blocks.0.self_attn.q.lora_B.weight",
            ],
            "LoRA",
        ),
        (["some.random.weight"], "not a Wan DiT"),
    ],
)
def test_not_a_dit_refused(tmp_path, keys, what):
    path = tmp_path / "other.safetensors"
    save_safetensors({k: torch.zeros(2) for k in keys}, path)
    with pytest.raises(CheckpointError, match=what) as e:
        load_dit(path)
    assert "other.safetensors" in str(e.value)


def test_vae_message_names_folder():
    with pytest.raises(CheckpointError, match="models/vae"):
        detect_layout(["encoder.conv1.weight", "decoder.conv1.weight"])


# --------------------------------------------------------------------------- storage dtypes


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.bfloat16], ids=str)
def test_low_precision_storage_kept(tmp_path, tiny, dtype):
    _, ref, out = tiny
    stored = {k: v.to(dtype) for k, v in ref.items()}
    path = tmp_path / "low.safetensors"
    save_safetensors(stored, path)
    model = load_dit(path)  # dtype=None: storage dtype is kept
    assert all(p.dtype == dtype for p in model.parameters())
    dequant = tiny_model()
    dequant.load_state_dict({k: v.float() for k, v in stored.items()})
    got = run(model)  # float32 compute, weights upcast per layer
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, run(dequant), rtol=1e-5, atol=1e-5)
    err = (got - out).abs().max() / out.abs().max()
    assert err < (0.5 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else 0.05)


def test_dtype_converts_while_loading(tmp_path, tiny):
    _, ref, _ = tiny
    path = tmp_path / "f32.safetensors"
    save_safetensors(ref, path)
    bf = load_dit(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf.parameters())
    f8 = load_dit(path, dtype=torch.float8_e4m3fn)
    sd = f8.state_dict()
    assert sd["blocks.0.ffn.0.weight"].dtype == torch.float8_e4m3fn
    assert sd["patch_embedding.weight"].dtype == torch.float8_e4m3fn
    for k in ("blocks.0.ffn.0.bias", "blocks.0.modulation", "blocks.0.norm3.weight", "head.modulation"):
        assert sd[k].dtype == torch.float32, k
    assert run(f8).isfinite().all()


def test_fp8_scaled_folded(tmp_path, tiny):
    _, ref, out = tiny
    sd = dict(ref)
    w = ref["blocks.0.ffn.0.weight"]
    scale = w.abs().max() / 448.0
    sd["blocks.0.ffn.0.weight"] = (w / scale).to(torch.float8_e4m3fn)
    sd["blocks.0.ffn.0.scale_weight"] = scale.reshape(1)
    sd["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "scaled.safetensors"
    save_safetensors({"model.diffusion_model." + k: v for k, v in sd.items()}, path)
    model = load_dit(path)
    got = model.state_dict()["blocks.0.ffn.0.weight"]
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), w, rtol=0.07, atol=1e-3)


# --------------------------------------------------------------------------- shards


def _shard(ref: dict, tmp_path, n: int = 3, index: bool = True):
    keys = list(ref)
    names = [f"diffusion_pytorch_model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
    weight_map = {}
    for i, name in enumerate(names):
        part = {k: ref[k] for k in keys[i::n]}
        save_safetensors(part, tmp_path / name)
        weight_map.update(dict.fromkeys(part, name))
    if index:
        (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
    return [tmp_path / n for n in names]


def test_sharded_folder_with_index(tmp_path, tiny):
    _, ref, out = tiny
    _shard(ref, tmp_path)
    (tmp_path / "notes.txt").write_text("unrelated")
    for src in (tmp_path, tmp_path / "diffusion_pytorch_model.safetensors.index.json"):
        model = load_dit(src)
        assert_same_weights(model, ref)
        torch.testing.assert_close(run(model), out, rtol=1e-5, atol=1e-5)  # CPU kernels vary in the last bits


def test_sharded_folder_and_list_without_index(tmp_path, tiny):
    _, ref, out = tiny
    files = _shard(official_to_diffusers(ref), tmp_path, index=False)
    assert_same_weights(load_dit(tmp_path), ref)
    assert_same_weights(load_dit(files), ref)
    pipeline = tmp_path.parent / (tmp_path.name + "_pipe")
    shutil.copytree(tmp_path, pipeline / "transformer")
    assert_same_weights(load_dit(pipeline), ref)  # diffusers pipeline root: uses transformer/


def test_duplicate_key_across_shards_refused(tmp_path, tiny):
    _, ref, _ = tiny
    files = _shard(ref, tmp_path, n=2, index=False)
    save_safetensors({"head.modulation": ref["head.modulation"]}, tmp_path / "extra.safetensors")
    with pytest.raises(CheckpointError, match="head.modulation") as e:
        load_dit([*files, tmp_path / "extra.safetensors"])
    assert "extra.safetensors" in str(e.value) and "overlap" in str(e.value)


def test_index_with_missing_shard_refused(tmp_path, tiny):
    _, ref, _ = tiny
    files = _shard(ref, tmp_path)
    files[1].unlink()
    with pytest.raises(CheckpointError, match=files[1].name):
        load_dit(tmp_path)


def test_folder_without_safetensors(tmp_path, tiny):
    torch.save({"a": torch.zeros(1)}, tmp_path / "model.pth")
    with pytest.raises(CheckpointError, match="no .safetensors.*model.pth"):
        load_dit(tmp_path)


# --------------------------------------------------------------------------- memory behaviour


def test_load_assigns_without_copy(tmp_path, tiny, monkeypatch):
    """The loaded tensors become the parameters (assign=True): no second copy of the weights."""
    import planx_core.wan.dit_files as ck

    _, ref, _ = tiny
    path = tmp_path / "m.safetensors"
    save_safetensors(ref, path)
    seen = {}
    real = ck.read_safetensors

    def spy(*a, **kw):
        sd = real(*a, **kw)
        seen.update({k: v.data_ptr() for k, v in sd.items()})
        return sd

    monkeypatch.setattr(ck, "read_safetensors", spy)
    model = ck.load_dit(path)
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == seen


def test_save_safetensors_shared_and_noncontiguous(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"a": base, "b": base.t(), "c": base[0]}
    save_safetensors(sd, tmp_path / "s.safetensors", metadata={"n": 3})
    back = read_safetensors(tmp_path / "s.safetensors")
    for k, v in sd.items():
        assert torch.equal(back[k], v)
