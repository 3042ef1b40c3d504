"""A bundle from files in the released layouts, at reduced sizes: every file is generated here as its release
ships it (a ComfyUI-prefixed Wan DiT in bf16, a Wan 2.2 VAE in the official names without our metadata, a
ComfyUI umT5 file with the tokenizer beside it as in the Wan release, Tar's llava_qwen planner folder, a
TA-Tok file, a branch), `assemble --real` builds the folder, `generate --bundle` runs it end to end, and
`inspect` names every file kind."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import UMT5EncoderModel

from planx_core.__main__ import main
from planx_core.files.safetensors import save_safetensors
from planx_core.planner.files import save_planner
from planx_core.planner.model import SemanticPlanner
from planx_core.semantic_branch import BranchConfig, SemanticBranch, save_branch
from planx_core.tatok.files import save_tatok
from planx_core.wan import VAE_PRESETS, DiTConfig, WanModel, WanVAE
from planx_core.wan.text_encoder_files import umt5_config
from planx_core.world.tiny import build_pair

pytestmark = pytest.mark.usefixtures("one_thread")
TEXT = 32  # the small umT5's width, the DiT's text width
DIT = DiTConfig(dim=64, ffn_dim=192, num_heads=2, num_layers=2, in_dim=48, out_dim=48, text_dim=TEXT, freq_dim=32)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict:
    """The files a user would put in their models folders, in the layouts of the releases."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    dit = {f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in WanModel(DIT).state_dict().items()}
    save_safetensors(dit, root / "wan2.2_ti2v_small_bf16.safetensors")
    save_safetensors(WanVAE(VAE_PRESETS["tiny2.2"]).state_dict(), root / "wan2.2_vae_small.safetensors")
    model, tokenizer, vocab, tatok = build_pair(0)
    text = UMT5EncoderModel(umt5_config(len(tokenizer) + 3, TEXT, 8, 64, 2, 4))
    weights = {k: v for k, v in text.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_safetensors(weights, root / "umt5_small_bf16.safetensors")
    tokenizer.save_pretrained(root / "google" / "umt5-xxl")  # where the Wan release keeps the tokenizer
    save_planner(SemanticPlanner(model, tokenizer, vocab, "tar-small"), root / "Tar-small")
    config = json.loads((root / "Tar-small" / "config.json").read_text())
    (root / "Tar-small" / "config.json").write_text(json.dumps({**config, "model_type": "llava_qwen"}))
    save_tatok(tatok, root / "ta_tok.safetensors")
    branch = SemanticBranch(BranchConfig(code_dim=tatok.config.bottleneck_dim, dim=64, num_heads=2, num_layers=2))
    save_branch(branch, root / "planx_branch.safetensors")
    return {
        "dit": root / "wan2.2_ti2v_small_bf16.safetensors",
        "vae": root / "wan2.2_vae_small.safetensors",
        "text-encoder": root / "umt5_small_bf16.safetensors",
        "planner": root / "Tar-small",
        "tatok": root / "ta_tok.safetensors",
        "branch": root / "planx_branch.safetensors",
    }


def assemble(released: dict, out, *extra) -> int:
    flags = [item for name, path in released.items() for item in (f"--{name}", str(path))]
    return main(
        [
            "assemble",
            "--real",
            *flags,
            "--out",
            str(out),
            "--frames",
            "17",
            "--width",
            "64",
            "--height",
            "64",
            "--fps",
            "8",
            *extra,
        ]
    )


def test_assemble_real_then_generate(released, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert assemble(released, bundle) == 0
    spec = json.loads((bundle / "bundle.json").read_text())
    assert spec["dit"]["dim"] == 64 and spec["sampling"]["schedule"] == "wan" and spec["video"]["num_frames"] == 17
    assert (bundle / "dit.safetensors").stat().st_ino == released["dit"].stat().st_ino  # linked, not copied
    assert (bundle / "text_encoder" / "tokenizer.json").is_file()
    code = main(
        [
            "generate",
            "--bundle",
            str(bundle),
            "--prompt",
            "a red circle. the red circle moves right.",
            "--out",
            str(tmp_path / "clip.mp4"),
            "--steps",
            "2",
            "--quiet",
            "--scale",
            "1",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "clip.mp4").stat().st_size > 0 and (tmp_path / "clip.plan.json").is_file()


def test_parts_that_do_not_fit_are_refused_before_writing(released, tmp_path, capsys):
    other = tmp_path / "branch_other.safetensors"
    save_branch(SemanticBranch(BranchConfig(code_dim=128, dim=128, num_heads=2, num_layers=2)), other)
    assert assemble({**released, "branch": other}, tmp_path / "b") == 2
    assert "the branch was trained for a DiT of width 128, this one is 64" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "part,kind",
    [
        ("dit", "layout:     comfyui"),
        ("vae", "Wan 2.2 VAE"),
        ("text-encoder", "umT5 text encoder"),
        ("planner", "planner (causal LM) folder, model_type 'llava_qwen'"),
        ("tatok", "a TA-Tok tokenizer"),
        ("branch", "a Plan-X semantic-branch file"),
    ],
)
def test_inspect_names_every_released_file_kind(released, part, kind, capsys):
    assert main(["inspect", str(released[part])]) == 0
    assert kind in capsys.readouterr().out
