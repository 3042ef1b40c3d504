import torch

from conftest import randomize
from planx_core.__main__ import main
from planx_core.checkpoint import save_safetensors
from planx_core.dit import WanModel


def test_info_lists_presets_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "wan2.2-ti2v-5b" in out and "dim  3072" in out and "sdpa" in out


def test_inspect_names_the_preset_of_a_comfyui_file(tmp_path, tiny_config, capsys):
    path = tmp_path / "tiny.safetensors"
    state = randomize(WanModel(tiny_config)).state_dict()
    save_safetensors({f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in state.items()}, path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "layout:     comfyui" in out and "match preset tiny" in out and "bfloat16" in out


def test_inspect_refuses_a_pickle_with_the_fix(tmp_path, capsys):
    path = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(1)}, path)
    assert main(["inspect", str(path)]) == 2
    assert "safetensors" in capsys.readouterr().err
