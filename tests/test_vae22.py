"""Wan 2.2 VAE (TI2V-5B, z 48): parity with diffusers' AutoencoderKLWan(is_residual=True) and ComfyUI, the
real model's keys and size on the meta device, chunking, files in every layout, and Wan 2.1 / 2.2 told apart.

No real weights are used and the real 705M-parameter model is never allocated: it is built on the meta
device only. Parity runs the real architecture at widths 16 / 24 (the `tiny2.2` preset) instead of 160 / 256.
The official key list comes from two independent sources: diffusers' model at the real config mapped through
our names, and ComfyUI's own `comfy.ldm.wan.vae2_2.WanVAE` (when a checkout is found).
"""

from __future__ import annotations

import math

import pytest
import torch

from planx_core.files.safetensors import CheckpointError, save_safetensors
from planx_core.wan import vae_files
from planx_core.wan.vae import VAE_PRESETS, WanVAE, get_vae_preset
from planx_core.wan.vae22 import WAN22_LATENTS_MEAN, WAN22_LATENTS_STD, AverageDown, DuplicateUp, patchify, unpatchify
from planx_core.wan.vae_files import (
    describe_vae_file,
    diffusers_to_official,
    infer_vae_config,
    load_vae,
    official_to_diffusers,
    save_vae,
)

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = VAE_PRESETS["tiny2.2"]  # Wan 2.2's architecture at widths 16 / 24
TOL = 1e-4


def shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def diffusers_vae(dim: int, dec_dim: int, **extra):
    """diffusers' AutoencoderKLWan in the Wan 2.2 configuration (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json)."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=dim,
        decoder_base_dim=dec_dim,
        z_dim=48,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=2,
        temperal_downsample=[False, True, True],
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        **extra,
    )


@pytest.fixture(scope="module")
def ref():
    """diffusers' model at widths 16 / 24 with random weights (every parameter, norms included)."""
    model = diffusers_vae(16, 24, latents_mean=[0.0] * 48, latents_std=[1.0] * 48).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


@pytest.fixture(scope="module")
def diffusers_file(ref, tmp_path_factory):
    path = tmp_path_factory.mktemp("vae22") / "diffusion_pytorch_model.safetensors"
    save_safetensors(ref.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def small(diffusers_file) -> WanVAE:
    """Our model loaded from diffusers' file by `load_vae` (names converted by the loader)."""
    return load_vae(diffusers_file)


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 9, 64, 64, generator=gen) * 2 - 1  # [B, 3, T, H, W] in [-1, 1]


@pytest.fixture(scope="module")
def latent() -> torch.Tensor:
    return torch.randn(1, 48, 3, 4, 4, generator=torch.Generator().manual_seed(4))  # [B, 48, t, h, w]


# --------------------------------------------------------------------------- the real model, on meta


def test_real_wan22_keys_and_shapes_equal_diffusers_mapped_to_official_names():
    with torch.device("meta"):
        ours = WanVAE("wan2.2").state_dict()
        ref = diffusers_vae(160, 256).state_dict()
    assert shapes(diffusers_to_official(ref)) == shapes(ours)
    assert official_to_diffusers(ours, 2).keys() == ref.keys()
    params = sum(math.prod(v.shape) for v in ours.values())
    assert len(ours) == 196 and abs(params - 705e6) < 1e6, (len(ours), params)  # 704,688,668
    for key, shape in {
        "encoder.conv1.weight": (160, 12, 3, 3, 3),  # after the 2x2 patchify
        "encoder.downsamples.1.downsamples.2.time_conv.weight": (320, 320, 3, 1, 1),
        "encoder.head.2.weight": (96, 640, 3, 3, 3),
        "conv1.weight": (96, 96, 1, 1, 1),
        "conv2.weight": (48, 48, 1, 1, 1),
        "decoder.conv1.weight": (1024, 48, 3, 3, 3),
        "decoder.upsamples.0.upsamples.0.residual.2.weight": (1024, 1024, 3, 3, 3),  # ComfyUI's Wan 2.2 test
        "decoder.upsamples.0.upsamples.3.time_conv.weight": (2048, 1024, 3, 1, 1),
        "decoder.upsamples.2.upsamples.3.resample.1.weight": (512, 512, 3, 3),  # the upsampler keeps the width
        "decoder.head.2.weight": (12, 256, 3, 3, 3),
    }.items():
        assert tuple(ours[key].shape) == shape, key
    cfg = get_vae_preset("wan2.2")
    assert (cfg.spatial_factor, cfg.temporal_factor, cfg.version) == (16, 4, "2.2")
    assert cfg.latent_shape(121, 704, 1280) == (48, 31, 44, 80)
    assert infer_vae_config(shapes(ours)) == cfg  # the preset, latent statistics included
    assert infer_vae_config(diffusers_to_official(shapes(ref))) == cfg


def test_real_wan22_keys_and_shapes_equal_comfyui(comfy_modules):
    from comfy.ldm.wan.vae2_2 import WanVAE as ComfyWanVAE

    with torch.device("meta"):  # ComfyUI's own constructor call for wan2.2_vae.safetensors (comfy/sd.py)
        comfy = ComfyWanVAE(dim=160, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[0, 1, 1])
        ours = WanVAE("wan2.2")
    assert shapes(comfy.state_dict()) == shapes(ours.state_dict())


# --------------------------------------------------------------------------- parity


def test_parity_with_diffusers(small, ref, video, latent):
    assert small.config == SMALL and small.config.name == "tiny2.2"  # inferred from the shapes
    with torch.no_grad():
        mean, logvar = small.posterior(video)
        dist = ref.encode(video).latent_dist
        out, ref_out = small.decode(latent), ref.decode(latent).sample
    assert mean.shape == (1, 48, 3, 4, 4) and out.shape == (1, 3, 9, 64, 64)
    assert mean.abs().mean() > 0.05 and out.abs().max() < 0.99  # signal, and no clamping hides a difference
    diffs = {
        "encode mean": (mean - dist.mean).abs().max().item(),
        "encode logvar": (logvar - dist.logvar).abs().max().item(),
        "decode": (out - ref_out).abs().max().item(),
    }
    print("max |diff| vs diffusers:", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert all(v <= TOL for v in diffs.values()), diffs


def test_parity_with_comfyui(comfy_modules, small, video, latent):
    """ComfyUI's port of the official vae2_2.py, on our weights in the official names (no conversion)."""
    from comfy.ldm.wan.vae2_2 import WanVAE as ComfyWanVAE

    comfy = ComfyWanVAE(dim=16, dec_dim=24, z_dim=48, dim_mult=[1, 2, 4, 4], temperal_downsample=[0, 1, 1]).eval()
    comfy.load_state_dict(small.state_dict(), strict=True)
    with torch.no_grad():
        encode = (small.posterior(video)[0] - comfy.encode(video)).abs().max().item()
        decode = (small.decode(latent, clamp=False) - comfy.decode(latent)).abs().max().item()
    assert encode <= TOL and decode <= TOL, (encode, decode)


def test_patchify_and_shortcuts_match_diffusers():
    pytest.importorskip("diffusers")
    from diffusers.models.autoencoders import autoencoder_kl_wan as ref

    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 5, 8, 6, generator=gen)  # [B, C, T, H, W]
    assert torch.equal(patchify(x, 2), ref.patchify(x, 2)) and torch.equal(unpatchify(patchify(x, 2), 2), x)
    for cin, cout, ft, fs, frames in ((8, 16, 2, 2, 5), (8, 8, 1, 2, 3), (16, 16, 1, 1, 2), (8, 16, 2, 2, 4)):
        y = torch.randn(1, cin, frames, 8, 8, generator=gen)
        assert torch.equal(AverageDown(cin, cout, ft, fs)(y), ref.AvgDown3D(cin, cout, ft, fs)(y))
        z = torch.randn(1, cout, frames, 4, 4, generator=gen)
        for first in (True, False):
            assert torch.equal(DuplicateUp(cout, cin, ft, fs)(z, first), ref.DupUp3D(cout, cin, ft, fs)(z, first))
    assert not list(AverageDown(8, 16, 2, 2).parameters()) and not list(DuplicateUp(16, 8, 2, 2).parameters())


def test_chunked_equals_one_pass_and_is_causal(small, video, latent):
    later = video.clone()
    later[:, :, 5:] = -later[:, :, 5:]  # change only the frames after frame 4
    with torch.no_grad():
        full = small.encode(video)
        assert (full - small.encode(video, chunked=False)).abs().max() < 1e-5
        assert (small.encode(video[:, :, :1]) - full[:, :, :1]).abs().max() < 1e-6  # frame 0 encodes alone
        changed = small.encode(later)
        assert torch.allclose(changed[:, :, :2], full[:, :, :2], atol=1e-6) and not torch.allclose(changed, full)
        frames = small.decode(latent, clamp=False)
        assert (frames - small.decode(latent, clamp=False, chunked=False)).abs().max() < 1e-5
        assert (small.decode(latent[:, :, :1], clamp=False) - frames[:, :, :1]).abs().max() < 1e-6
        assert (small.decode(latent[:, :, :2], clamp=False) - frames[:, :, :5]).abs().max() < 1e-6


def test_latent_statistics_and_input_checks(small, video):
    assert len(WAN22_LATENTS_MEAN) == len(WAN22_LATENTS_STD) == 48
    assert (WAN22_LATENTS_MEAN[0], WAN22_LATENTS_STD[-1]) == (-0.2289, 0.7744)
    stats = SMALL.with_(latents_mean=WAN22_LATENTS_MEAN, latents_std=WAN22_LATENTS_STD)
    vae = WanVAE(stats).eval()
    vae.load_state_dict(small.state_dict())
    m, s = torch.tensor(WAN22_LATENTS_MEAN).view(1, -1, 1, 1, 1), torch.tensor(WAN22_LATENTS_STD).view(1, -1, 1, 1, 1)
    x = video[:, :, :5]
    with torch.no_grad():
        mu = vae.posterior(x)[0]
        assert torch.allclose(vae.encode(x), (mu - m) / s, atol=1e-6)
        assert torch.allclose(vae.decode(vae.encode(x)), small.decode(mu), atol=1e-5)
    with pytest.raises(ValueError, match="not a multiple of 16.*resize or crop to 48x64"):
        small.encode(torch.zeros(1, 3, 5, 56, 64))
    with pytest.raises(ValueError, match=r"latent \[B, 48, t, h, w\].*Wan 2.1's has 16"):
        small.decode(torch.zeros(1, 16, 2, 4, 4))
    with pytest.raises(ValueError, match="no attention"):
        SMALL.with_(attn_scales=(0.5,))


# --------------------------------------------------------------------------- files


def test_official_layout_files_load_and_round_trip(tmp_path, small, video):
    sd = small.state_dict()
    files = {
        "wan2.2_vae": sd,  # ComfyUI's models/vae file: the official names
        "prefixed": {f"first_stage_model.{k}": v for k, v in sd.items()},
        "saved": None,
    }
    for name, content in files.items():
        path = tmp_path / f"{name}.safetensors"
        save_vae(small, path) if content is None else save_safetensors(content, path)
        loaded = load_vae(path)
        assert loaded.config == SMALL, name
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items()), name
        with torch.no_grad():
            assert torch.equal(loaded.encode(video[:, :, :5]), small.encode(video[:, :, :5])), name
        described = describe_vae_file(path)
        assert described.startswith("kind:       Wan 2.2 VAE (z_dim 48"), described
        assert "official/ComfyUI" in described and "[3, 1 + 4n, H, W] -> [48, 1 + n, H / 16, W / 16]" in described
    assert "behind the prefix 'first_stage_model.'" in describe_vae_file(tmp_path / "prefixed.safetensors")
    assert "Plan-X save_vae" in describe_vae_file(tmp_path / "saved.safetensors")
    half = load_vae(tmp_path / "wan2.2_vae.safetensors", dtype=torch.bfloat16)
    with torch.no_grad():
        assert (
            half.dtype == torch.bfloat16
            and (half.encode(video[:, :, :5]) - small.encode(video[:, :, :5])).abs().max() < 0.2
        )


def test_diffusers_layout_file_and_folder(diffusers_file, small):
    assert vae_files.is_vae_file(diffusers_file.parent)
    described = describe_vae_file(diffusers_file.parent)  # a diffusers vae/ folder
    assert described.startswith("kind:       Wan 2.2 VAE") and "diffusers (AutoencoderKLWan)" in described
    assert (
        "'tiny2.2'" in described and f"{sum(v.numel() for v in small.state_dict().values()) / 1e6:.1f} M" in described
    )
    assert load_vae(diffusers_file.parent).config == SMALL


def test_wan21_and_wan22_files_are_told_apart(tmp_path, small):
    v21 = WanVAE("tiny").state_dict()
    save_safetensors(v21, tmp_path / "wan_2.1_vae.safetensors")
    save_safetensors(small.state_dict(), tmp_path / "wan2.2_vae.safetensors")
    assert load_vae(tmp_path / "wan_2.1_vae.safetensors").config.version == "2.1"
    assert describe_vae_file(tmp_path / "wan_2.1_vae.safetensors").startswith("kind:       Wan 2.1 VAE (z_dim 16")
    with pytest.raises(CheckpointError, match=r"wan_2.1_vae.safetensors: this file is the Wan 2.1 VAE.*'wan2.2'"):
        load_vae(tmp_path / "wan_2.1_vae.safetensors", config="wan2.2")
    with pytest.raises(CheckpointError, match=r"wan2.2_vae.safetensors: this file is the Wan 2.2 VAE.*'wan2.1'"):
        load_vae(tmp_path / "wan2.2_vae.safetensors", config="wan2.1")
    assert vae_files.is_vae_file(tmp_path / "wan_2.1_vae.safetensors") and not vae_files.is_vae_file(tmp_path)
    save_safetensors({"patch_embedding.weight": torch.zeros(2, 2)}, tmp_path / "dit.safetensors")
    assert not vae_files.is_vae_file(tmp_path / "dit.safetensors") and not vae_files.is_vae_file(tmp_path / "none")
    with torch.device("meta"):
        assert infer_vae_config(shapes(WanVAE("wan2.1").state_dict())).name == "wan2.1"
        assert vae_files.vae_version(WanVAE("wan2.2").state_dict()) == "2.2"


def test_wrong_files_are_refused_before_a_tensor_is_read(tmp_path, small, monkeypatch):
    sd = small.state_dict()
    cases = {
        r"1 missing keys: decoder.head.2.bias": {k: v for k, v in sd.items() if k != "decoder.head.2.bias"},
        r"mis-shaped keys: decoder.conv1.weight \(expected \[96, 48, 3, 3, 3\]": {
            **sd,
            "decoder.conv1.weight": torch.zeros(96, 16, 3, 3, 3),
        },
        "cannot infer the Wan 2.2 VAE size": {"encoder.downsamples.0.downsamples.0.residual.0.gamma": torch.zeros(4)},
        "does not fit the VAE config 'tiny2.2'": {**sd, "decoder.extra.weight": torch.zeros(2)},
    }
    monkeypatch.setattr(vae_files, "read_safetensors", lambda *a, **k: pytest.fail("tensors read before the check"))
    for i, (message, content) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.safetensors"
        save_safetensors(content, path)
        with pytest.raises(CheckpointError, match=message) as err:
            load_vae(path)
        assert str(path) in str(err.value)
        with pytest.raises(CheckpointError, match=message):
            describe_vae_file(path)
