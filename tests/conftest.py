"""Shared fixtures: tiny random configs, deterministic seeds, and the ComfyUI checkout finder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from planx_core.wan.configs import get_preset

# The suite is the CPU suite (gloo ranks, CPU references), also on a machine with a GPU, where `--device auto`
# would otherwise put two test ranks on one GPU; the GPU checks are scripts/gpu_checks.sh. Setting
# CUDA_VISIBLE_DEVICES yourself keeps your choice. Set before torch first touches CUDA (it does so lazily).
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


def comfyui_path() -> Path | None:
    """A ComfyUI checkout: $COMFYUI_PATH, else ~/ComfyUI; None when neither holds `comfy/`."""
    for candidate in (os.environ.get("COMFYUI_PATH"), str(Path.home() / "ComfyUI")):
        if candidate and (Path(candidate) / "comfy").is_dir():
            return Path(candidate)
    return None


def skip_unless_ranks_can_train(stage: str) -> None:
    """Skip a multi-rank training test of `stage` where its steps can leave parameters unused (a dropped plan) and
    this torch's FSDP2 cannot reduce those (2.11 and older: training refuses it, `engine_dist.reduce_unused`)."""
    from planx_core.training import main as train
    from planx_core.training.engine_dist import reduces_unused

    if train.STAGES[stage].find_unused_parameters and not reduces_unused():
        pytest.skip(
            f"{stage} on several ranks needs FSDP2's unused-parameter reduction, absent in torch {torch.__version__}"
        )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny_config():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny, latency-bound models: on a shared 2-core machine,
    intra-op thread hand-offs cost more than they give."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize(module: torch.nn.Module, std: float = 0.2, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (zero-initialised layers too) so tests see real signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


def diffusers_wan_kwargs(config) -> dict:
    """Constructor arguments of diffusers' WanTransformer3DModel for one of our DiTConfigs."""
    return dict(
        patch_size=config.patch_size,
        num_attention_heads=config.num_heads,
        attention_head_dim=config.head_dim,
        in_channels=config.in_dim,
        out_channels=config.out_dim,
        text_dim=config.text_dim,
        freq_dim=config.freq_dim,
        ffn_dim=config.ffn_dim,
        num_layers=config.num_layers,
        cross_attn_norm=config.cross_attn_norm,
        qk_norm="rms_norm_across_heads" if config.qk_norm else None,
        eps=config.eps,
    )


_COMFY_SKIP = "SKIPPED: ComfyUI layers (2 and 3): no checkout found; set COMFYUI_PATH or put one at ~/ComfyUI"


@pytest.fixture(scope="session")
def comfy_modules():
    """Put the ComfyUI checkout on sys.path in CPU mode, or skip loudly."""
    path = comfyui_path()
    if path is None:
        pytest.skip(_COMFY_SKIP)
    import sys

    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (must come after args.cpu)

    return path


def pytest_terminal_summary(terminalreporter):
    if comfyui_path() is None:
        bar = "!" * len(_COMFY_SKIP)
        terminalreporter.write_line(f"{bar}\n{_COMFY_SKIP}\n{bar}", yellow=True, bold=True)
