import torch
from conftest import randomize

from planx_core.__main__ import main
from planx_core.files.safetensors import save_safetensors
from planx_core.wan.dit import WanModel


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


def test_check_plan_summarises_and_applies_edits(tmp_path, capsys):
    from planx_core.plan.core import CodebookId, make_plan
    from planx_core.plan.timing import keyframe_times

    times = keyframe_times(17, 8.0)
    plan = make_plan(
        [[1] * 81] * len(times),
        times=times,
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        codebook=CodebookId("tiny", 100, "abc"),
    )
    (tmp_path / "plan.json").write_text(plan.to_json())
    (tmp_path / "edits.json").write_text('[{"op": "lock", "keyframe": 1}]')
    assert main(["check-plan", str(tmp_path / "plan.json"), "--edits", str(tmp_path / "edits.json")]) == 0
    out = capsys.readouterr().out
    assert "(valid)" in out and "5 at 0, 0.5, 1, 1.5, 2 s; locked [1]" in out
    (tmp_path / "bad.json").write_text(plan.to_json().replace('"tokens": [1,', '"tokens": [500,', 1))
    assert main(["check-plan", str(tmp_path / "bad.json")]) == 2
    assert "keyframe 0, cell (row 0, col 0): token 500" in capsys.readouterr().err
