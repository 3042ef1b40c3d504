"""SemanticGen's compressor: shapes (dim 8 and 64), the KL term, sampling, training, files and digest."""

from __future__ import annotations

import json

import pytest
import torch

from planx_core.files.safetensors import CheckpointError, save_safetensors
from planx_core.semanticgen.compressor import (
    CompressorConfig,
    SemanticCompressor,
    SemanticDecoder,
    autoencoder_loss,
    kl_loss,
    load_compressor,
    load_semantic_decoder,
    reconstruction_loss,
    save_compressor,
    save_semantic_decoder,
)


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


def make(dim: int = 8, seed: int = 0) -> tuple[SemanticCompressor, SemanticDecoder]:
    torch.manual_seed(seed)
    config = CompressorConfig.tiny(dim)
    return SemanticCompressor(config).eval(), SemanticDecoder(config).eval()


@pytest.mark.parametrize("dim", [8, 64])
def test_shapes(dim):
    compressor, decoder = make(dim)
    features = torch.randn(2, 3, 4, 128)  # [K, gh, gw, feature_dim]
    for sample in (False, True):
        z, mean, logvar = compressor(features, sample=sample)
        assert z.shape == mean.shape == logvar.shape == (2, 3, 4, dim)
    assert decoder(z).shape == (2, 3, 4, 128)


def test_real_width_shapes():
    compressor = SemanticCompressor(CompressorConfig(dim=64)).eval()
    out = compressor(torch.randn(5, 2048))
    assert out.mean.shape == (5, 64)
    assert SemanticDecoder(CompressorConfig(dim=64))(out.z).shape == (5, 2048)


def test_wrong_feature_width_refused():
    compressor, _ = make()
    with pytest.raises(ValueError, match="width 128"):
        compressor(torch.randn(3, 2048))


def test_kl_zero_at_standard_normal_and_positive_elsewhere():
    zeros = torch.zeros(4, 6, 8)
    assert kl_loss(zeros, zeros).item() == 0.0
    assert kl_loss(zeros + 0.1, zeros).item() > 0
    assert kl_loss(zeros, zeros - 0.5).item() > 0
    assert kl_loss(zeros, zeros + 0.5).item() > 0


def test_kl_matches_closed_form():
    mean, logvar = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    std = (0.5 * logvar).exp()
    expected = (-std.log() + (std**2 + mean**2) / 2 - 0.5).sum(-1).mean()  # log(s2/s1) + (s1^2 + m^2) / 2s2^2 - 1/2
    torch.testing.assert_close(kl_loss(mean, logvar), expected)
    by_hand = 0.5 * (mean[0, 0] ** 2 + logvar[0, 0].exp() - 1 - logvar[0, 0]).sum()
    torch.testing.assert_close(kl_loss(mean[:1, :1], logvar[:1, :1]), by_hand)


def test_reparameterisation_statistics():
    compressor, _ = make()
    features = torch.randn(1, 128).expand(40000, 128)  # one feature, many samples
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        z, mean, logvar = compressor(features, sample=True, generator=gen)
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.05 * logvar[0].exp().sqrt().max().item(), rtol=0)
    torch.testing.assert_close(z.var(0) / logvar[0].exp(), torch.ones(8), atol=0.05, rtol=0)


def test_eval_is_deterministic():
    compressor, _ = make()
    features = torch.randn(6, 128)
    a, b = compressor(features), compressor.train()(features)
    assert torch.equal(a.z, a.mean) and torch.equal(a.z, b.z)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    s1, s2 = compressor(features, True, gen()), compressor(features, True, gen())
    assert torch.equal(s1.z, s2.z) and not torch.equal(s1.z, a.z)


def test_training_reduces_loss():
    compressor, decoder = make()
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(8, 128, generator=gen)
    features = torch.randn(256, 8, generator=gen) @ basis  # [256, 128] on an 8-d subspace
    params = [*compressor.parameters(), *decoder.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    compressor.train(), decoder.train()
    first = autoencoder_loss(compressor, decoder, features, generator=gen)
    for _ in range(40):
        loss = autoencoder_loss(compressor, decoder, features, generator=gen)
        opt.zero_grad()
        loss.total.backward()
        opt.step()
    last = autoencoder_loss(compressor, decoder, features, generator=gen)
    assert last.total < 0.7 * first.total
    torch.testing.assert_close(last.total, last.reconstruction + 1e-3 * last.kl)
    assert reconstruction_loss(features, features).item() == 0.0
    z = compressor(features).z
    torch.testing.assert_close(decoder.reconstruction_loss(z, features), reconstruction_loss(decoder(z), features))


def test_config_validation():
    with pytest.raises(ValueError, match="positive"):
        CompressorConfig(dim=0)
    with pytest.raises(ValueError, match="kl_weight"):
        CompressorConfig(kl_weight=-1.0)
    with pytest.raises(ValueError, match="depth"):
        CompressorConfig(depth=-1)
    with pytest.raises(CheckpointError, match="unknown"):
        CompressorConfig.from_dict({"dim": 8, "width": 3})
    assert CompressorConfig.from_dict(CompressorConfig.tiny(64).to_dict()) == CompressorConfig.tiny(64)
    assert CompressorConfig(dim=8, depth=0).dim == 8


def test_digest_and_identity():
    compressor, _ = make()
    digest = compressor.digest()
    assert len(digest) == 16 and int(digest, 16) >= 0
    twin = SemanticCompressor(compressor.config)
    twin.load_state_dict(compressor.state_dict())
    assert twin.digest() == digest
    with torch.no_grad():
        twin.net[1].weight[0, 0] += 1e-3
    assert twin.digest() != digest
    assert make(seed=1)[0].digest() != digest
    ident = compressor.identity()
    assert (ident.name, ident.size, ident.digest) == ("semanticgen-tiny-kl8", 8, digest)


def test_save_load_round_trip(tmp_path):
    compressor, decoder = make(64)
    path = tmp_path / "compressor.safetensors"
    save_compressor(compressor, path, decoder)
    loaded, loaded_dec = load_compressor(path), load_semantic_decoder(path)
    features = torch.randn(3, 128)
    assert loaded.config == compressor.config and loaded.digest() == compressor.digest()
    assert torch.equal(loaded(features).mean, compressor(features).mean)
    z = torch.randn(3, 64)
    assert torch.equal(loaded_dec(z), decoder(z))
    assert load_compressor(path, dtype=torch.bfloat16).net[1].weight.dtype == torch.bfloat16


def test_separate_compressor_and_decoder_files(tmp_path):
    compressor, decoder = make()
    path, dec_path = tmp_path / "c.safetensors", tmp_path / "d.safetensors"
    compressor.save(path)
    decoder.save(dec_path)
    assert load_compressor(path).digest() == compressor.digest()
    z = torch.randn(2, 8)
    assert torch.equal(load_semantic_decoder(dec_path)(z), decoder(z))
    with pytest.raises(CheckpointError, match="no decoder"):
        load_semantic_decoder(path)
    with pytest.raises(CheckpointError, match="only a semantic decoder"):
        load_compressor(dec_path)
    save_semantic_decoder(decoder, dec_path)
    assert torch.equal(load_semantic_decoder(dec_path)(z), decoder(z))


def test_wrong_files_refused(tmp_path):
    compressor, decoder = make()
    path = tmp_path / "c.safetensors"
    save_compressor(compressor, path, decoder)

    plain = tmp_path / "plain.safetensors"
    save_safetensors({"net.0.weight": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a Plan-X semantic compressor"):
        load_compressor(plain)
    encoder_like = tmp_path / "encoder.safetensors"
    save_safetensors({"visual.x": torch.zeros(3)}, encoder_like, metadata={"planx_semantic_encoder": "{}"})
    with pytest.raises(CheckpointError, match="semantic encoder"):
        load_compressor(encoder_like)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_compressor(truncated)

    meta = {"planx_semantic_compressor": json.dumps(compressor.config.to_dict())}
    state = {f"compressor.{k}": v for k, v in compressor.state_dict().items()}
    missing = tmp_path / "missing.safetensors"
    save_safetensors({k: v for k, v in state.items() if "net.3" not in k}, missing, metadata=meta)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_compressor(missing)

    tampered = tmp_path / "tampered.safetensors"
    state["compressor.net.1.bias"] = state["compressor.net.1.bias"] + 1
    save_safetensors(state, tampered, metadata={**meta, "planx_semantic_compressor_digest": compressor.digest()})
    with pytest.raises(CheckpointError, match="digest"):
        load_compressor(tampered)
