"""Layer 2: our WanModel against ComfyUI's native `comfy.ldm.wan.model.WanModel`, same weights.

This pins planx_core to the host the plan patch will run in: the Inject 3D RoPE Guidance node
patches ComfyUI's model, so both must agree on the base computation first.
"""

import pytest
import torch
from conftest import randomize

from planx_core.files.safetensors import save_safetensors
from planx_core.wan.dit import WanModel
from planx_core.wan.dit_files import load_dit

pytestmark = pytest.mark.comfyui


@pytest.fixture(scope="module")
def comfy_wan(comfy_modules):
    import comfy.ops
    from comfy.ldm.wan.model import WanModel as ComfyWanModel

    def build(cfg):
        return ComfyWanModel(
            model_type="t2v",
            patch_size=cfg.patch_size,
            text_len=cfg.text_len,
            in_dim=cfg.in_dim,
            dim=cfg.dim,
            ffn_dim=cfg.ffn_dim,
            freq_dim=cfg.freq_dim,
            text_dim=cfg.text_dim,
            out_dim=cfg.out_dim,
            num_heads=cfg.num_heads,
            num_layers=cfg.num_layers,
            eps=cfg.eps,
            operations=comfy.ops.disable_weight_init,
            dtype=torch.float32,
        )

    return build


@pytest.mark.parametrize(
    "timestep", [torch.tensor([650.0]), torch.tensor([[0.0, 650.0, 650.0]])], ids=["per_sample", "per_frame"]
)
def test_matches_comfyui_native_wan(tiny_config, comfy_wan, timestep):
    ours = randomize(WanModel(tiny_config))
    native = comfy_wan(tiny_config).eval()
    native.load_state_dict(ours.state_dict(), strict=True)  # same key names: both follow the official layout
    x, context = torch.randn(1, 48, 3, 8, 12), torch.randn(1, 16, tiny_config.text_dim)
    with torch.no_grad():
        got = ours(x, timestep, context)
        want = native(x, timestep, context)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_comfyui_single_file_loads_into_planx(tmp_path, tiny_config):
    """A ComfyUI repackaged single file (`model.diffusion_model.` prefix) loads through our loader."""
    ours = randomize(WanModel(tiny_config))
    path = tmp_path / "wan_tiny_comfy.safetensors"
    save_safetensors({f"model.diffusion_model.{k}": v for k, v in ours.state_dict().items()}, path)
    loaded = load_dit(path, config="tiny")
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
