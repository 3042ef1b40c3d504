"""Wan 2.1 VAE: parity with diffusers' AutoencoderKLWan, causal chunking, shapes, loading and refusals.

No real weights are used: every model and file is built here from random weights. The official
key names are pinned by diffusers' own single-file converter (`convert_wan_vae_to_diffusers`),
which was written for the published `Wan2.1_VAE.pth`, so it is independent of `vae.py`.
"""

from __future__ import annotations

import pytest
import torch
from conftest import randomize

from planx_core.files.safetensors import CheckpointError, save_safetensors
from planx_core.wan.configs import get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.vae import VAE_PRESETS, VAEConfig, WanVAE, get_vae_preset
from planx_core.wan.vae_files import (
    diffusers_to_official,
    expected_vae_shapes,
    infer_vae_config,
    load_vae,
    official_to_diffusers,
    save_vae,
)

# 2x in time, 4x in space: diffusers' chunking (1, 4, 4, ... frames) gives 2 latent frames per chunk.
SMALL = VAEConfig(
    dim=16, z_dim=4, dim_mult=(1, 2, 2), num_res_blocks=2, temperal_downsample=(False, True), name="small"
)


@pytest.fixture(scope="module")
def small() -> WanVAE:
    return randomize(WanVAE(SMALL), std=0.2, seed=1)


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(1, 3, 9, 32, 32, generator=gen) * 2 - 1  # [B, 3, T, H, W] in [-1, 1]


def diffusers_wan():
    """diffusers' AutoencoderKLWan and its converter for the official checkpoint (an independent implementation)."""
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return AutoencoderKLWan, convert_wan_vae_to_diffusers


def shapes(sd) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


# --------------------------------------------------------------------------- architecture and parity


def test_official_key_names_match_diffusers_converter():
    """diffusers' converter for the official checkpoint turns our wan2.1 keys into exactly its own model's keys."""
    AutoencoderKLWan, convert_wan_vae_to_diffusers = diffusers_wan()
    with torch.device("meta"):
        ours, ref = WanVAE("wan2.1"), AutoencoderKLWan()
    sd = ours.state_dict()
    assert sum(t.numel() for t in sd.values()) == sum(t.numel() for t in ref.state_dict().values())
    assert shapes(convert_wan_vae_to_diffusers(sd)) == shapes(ref.state_dict())
    assert official_to_diffusers(sd, 2).keys() == convert_wan_vae_to_diffusers(sd).keys()
    assert "encoder.middle.0.residual.0.gamma" in sd and "decoder.upsamples.3.time_conv.weight" in sd
    assert tuple(sd["encoder.head.0.gamma"].shape) == (384, 1, 1, 1) and tuple(sd["conv2.weight"].shape)[:2] == (16, 16)


def test_parity_with_diffusers(small, video):
    AutoencoderKLWan, _ = diffusers_wan()
    ref = AutoencoderKLWan(
        base_dim=SMALL.dim,
        z_dim=SMALL.z_dim,
        dim_mult=list(SMALL.dim_mult),
        num_res_blocks=SMALL.num_res_blocks,
        temperal_downsample=list(SMALL.temperal_downsample),
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    ).eval()
    ref.load_state_dict(official_to_diffusers(small.state_dict(), SMALL.num_res_blocks), strict=True)
    assert diffusers_to_official(ref.state_dict()).keys() == small.state_dict().keys()
    latent = torch.randn(1, SMALL.z_dim, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        mean, logvar = small.posterior(video)
        dist = ref.encode(video).latent_dist
        out, ref_out = small.decode(latent), ref.decode(latent).sample
    assert mean.shape == (1, 4, 5, 8, 8) and out.shape == (1, 3, 5, 32, 32)
    assert mean.abs().mean() > 0.05 and (out.abs() < 0.99).float().mean() > 0.5  # the comparison has signal
    for name, a, b in (("mean", mean, dist.mean), ("logvar", logvar, dist.logvar), ("decode", out, ref_out)):
        diff = (a - b).abs().max().item()
        assert diff < 1e-5, f"{name}: max abs diff {diff:.2e} vs diffusers"


def test_chunked_equals_one_pass(small, video):
    latent = torch.randn(1, SMALL.z_dim, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(small.encode(video), small.encode(video, chunked=False), atol=1e-5)
        assert torch.allclose(
            small.decode(latent, clamp=False), small.decode(latent, clamp=False, chunked=False), atol=1e-5
        )


def test_encode_and_decode_are_causal(small, video):
    later = video.clone()
    later[:, :, 5:] = -later[:, :, 5:]  # change only the frames after frame 4
    latent = torch.randn(1, SMALL.z_dim, 3, 8, 8)
    with torch.no_grad():
        full = small.encode(video)
        assert torch.allclose(small.encode(video[:, :, :1]), full[:, :, :1], atol=1e-6)  # frame 0 encodes alone
        assert torch.allclose(small.encode(video[:, :, :5]), full[:, :, :3], atol=1e-6)
        changed = small.encode(later)
        assert torch.allclose(changed[:, :, :3], full[:, :, :3], atol=1e-6) and not torch.allclose(changed, full)
        frames = small.decode(latent, clamp=False)
        assert torch.allclose(small.decode(latent[:, :, :1], clamp=False), frames[:, :, :1], atol=1e-6)
        assert torch.allclose(small.decode(latent[:, :, :2], clamp=False), frames[:, :, :3], atol=1e-6)


def test_tiny_preset_maps_17_frames_64px_to_5x16x16_and_back():
    vae = WanVAE("tiny").eval()
    cfg = vae.config
    assert (cfg.temporal_factor, cfg.spatial_factor) == (4, 4) and cfg.latent_shape(17, 64, 64) == (16, 5, 16, 16)
    with torch.no_grad():
        latent = vae.encode(torch.rand(1, 3, 17, 64, 64) * 2 - 1)
        video = vae.decode(latent)
    assert latent.shape == (1, 16, 5, 16, 16) and latent.dtype == torch.float32
    assert video.shape == (1, 3, 17, 64, 64) and video.abs().max() <= 1.0
    real = get_vae_preset("wan2.1")
    assert (real.temporal_factor, real.spatial_factor, real.z_dim) == (4, 8, 16)
    assert real.latent_shape(81, 480, 832) == (16, 21, 60, 104)


@pytest.mark.parametrize(
    "frames, fix",
    [
        (16, "trim the clip to 13 frames or pad it to 17"),
        (18, "trim the clip to 17 frames or pad it to 21"),
        (2, "trim the clip to 1 frame or pad it to 5"),
        (0, "pad the clip to 1"),
    ],
)
def test_bad_frame_counts_are_refused(frames, fix):
    vae = WanVAE("tiny")
    with pytest.raises(ValueError, match=r"1 \+ 4n frames \(1, 5, 9, 13, \.\.\.\)") as err:
        vae.encode(torch.zeros(1, 3, frames, 64, 64))
    assert fix in str(err.value) and f"{frames} frames cannot be encoded" in str(err.value)


def test_bad_shapes_are_refused():
    vae = WanVAE("tiny")
    with pytest.raises(ValueError, match="not a multiple of 4.*resize or crop to 60x64"):
        vae.encode(torch.zeros(1, 3, 5, 62, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\].*permute"):
        vae.encode(torch.zeros(5, 64, 64, 3))
    with pytest.raises(ValueError, match=r"latent \[B, 16, t, h, w\].*Wan 2.2's has 48"):
        vae.decode(torch.zeros(1, 48, 2, 8, 8))


def test_latent_normalisation_and_sample(small, video):
    stats = small.config.with_(latents_mean=(0.5, -1.0, 2.0, 0.0), latents_std=(2.0, 0.5, 1.0, 4.0))
    vae = WanVAE(stats).eval()
    vae.load_state_dict(small.state_dict())
    m = torch.tensor(stats.latents_mean).view(1, -1, 1, 1, 1)
    s = torch.tensor(stats.latents_std).view(1, -1, 1, 1, 1)
    x = video[:, :, :5]
    with torch.no_grad():
        mean, logvar = vae.posterior(x)
        assert torch.allclose(vae.encode(x), (mean - m) / s, atol=1e-6)
        assert torch.allclose(vae.decode(vae.encode(x)), small.decode(mean), atol=1e-5)
        draw = vae.sample(x, generator=torch.Generator().manual_seed(7))
        noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(draw, (mean + torch.exp(0.5 * logvar) * noise - m) / s, atol=1e-6)
    assert VAE_PRESETS["wan2.1"].latents_mean[0] == -0.7571 and VAE_PRESETS["wan2.1"].latents_std[-1] == 1.9160


# --------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path, small, video):
    path = tmp_path / "vae.safetensors"
    save_vae(small, path)
    loaded = load_vae(path)
    assert loaded.config == SMALL and not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), small.state_dict().values()))
    half = load_vae(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    with torch.no_grad():
        z = half.encode(video[:, :, :5])
        assert z.dtype == torch.float32 and (z - small.encode(video[:, :, :5])).abs().max() < 0.2


def test_config_inferred_from_shapes(tmp_path, small):
    path = tmp_path / "plain.safetensors"
    save_safetensors(small.state_dict(), path)  # no planx metadata
    cfg = load_vae(path).config
    assert (cfg.dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks, cfg.temperal_downsample) == (
        16,
        4,
        (1, 2, 2),
        2,
        (False, True),
    )
    assert cfg.name == "custom" and cfg.latents_mean is None
    for name in ("wan2.1", "tiny"):  # meta tensors carry the shapes; the real preset brings its latent statistics
        with torch.device("meta"):
            sd = WanVAE(name).state_dict()
        assert infer_vae_config(sd) == VAE_PRESETS[name]
    attn = SMALL.with_(attn_scales=(0.5,), temperal_downsample=(True, False), name="custom")
    with torch.device("meta"):
        assert infer_vae_config(WanVAE(attn).state_dict()) == attn


def test_comfyui_prefix_and_diffusers_layout(tmp_path, small):
    sd = small.state_dict()
    files = {
        "vae": {f"vae.{k}": v for k, v in sd.items()},
        "bundle": {
            **{f"first_stage_model.{k}": v for k, v in sd.items()},
            "model.diffusion_model.patch_embedding.weight": torch.zeros(2, 2),
        },
        "diffusers": official_to_diffusers(sd, SMALL.num_res_blocks),
    }
    for name, content in files.items():
        save_safetensors(content, tmp_path / f"{name}.safetensors")
        loaded = load_vae(tmp_path / f"{name}.safetensors")
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items()), name


def _save(tmp_path, name: str, sd: dict) -> str:
    path = tmp_path / f"{name}.safetensors"
    save_safetensors(sd, path)
    return str(path)


def test_refusals(tmp_path, small):
    sd = small.state_dict()
    dit = WanModel(get_preset("tiny")).state_dict()
    cases = {
        "a Wan DiT": ("dit", dit),
        "a text encoder": (
            "t5",
            {"shared.weight": torch.zeros(4, 2), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2, 2)},
        ),
        "cannot infer the Wan 2.2 VAE size": (  # a Wan 2.2 VAE loads (test_vae22.py); an incomplete one does not
            "wan22",
            {
                "encoder.conv1.weight": torch.zeros(4, 12, 3, 3, 3),
                "encoder.downsamples.0.downsamples.0.residual.0.gamma": torch.zeros(4, 1, 1, 1),
            },
        ),
        "none of its keys look like Wan VAE": ("other", {"foo.weight": torch.zeros(2)}),
        r"1 missing keys: decoder.head.2.bias": (
            "missing",
            {k: v for k, v in sd.items() if k != "decoder.head.2.bias"},
        ),
        r"mis-shaped keys: decoder.head.0.gamma \(expected \[16, 1, 1, 1\], found \[16\]\)": (
            "misshaped",
            {**sd, "decoder.head.0.gamma": torch.ones(16)},
        ),
    }
    for message, (name, content) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_vae(_save(tmp_path, name, content))
    good = _save(tmp_path, "good", sd)
    raw = open(good, "rb").read()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_vae(tmp_path / "cut.safetensors")
    torch.save(sd, tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="not safetensors.*convert it"):
        load_vae(tmp_path / "vae.pth")
    with pytest.raises(CheckpointError, match="does not fit the VAE config 'tiny'"):
        load_vae(good, config="tiny")
    with pytest.raises(CheckpointError, match="dtype"):
        load_vae(good, dtype=torch.float8_e4m3fn)
    with pytest.raises(CheckpointError, match="a folder; pass the VAE .safetensors file"):
        load_vae(tmp_path)
    assert expected_vae_shapes(SMALL) == shapes(sd)
