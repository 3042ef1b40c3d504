"""The training engine (torchrun + FSDP2 + DCP) on a frozen tiny Wan DiT with a trainable Plan-X branch.

`ToyBranchStage` has the shape of `--stage branch`: a frozen Wan-architecture DiT (each block an
FSDP unit), a zero-initialised cross-attention `SemanticBranch` trained beside it, `replica =
False` (evaluation through the sharded module, export from the gathered trainable state), and
data drawn by global index, so any number of ranks with the same global batch sees the same
clips. Covered: 2 gloo ranks equal 1 process (losses and updated weights), and 1 process equals a
plain PyTorch loop; the zero-initialised branch leaves the wrapped DiT's output bitwise unchanged;
a run killed with SIGKILL on 2 ranks resumes on 1 (resharded) and continues the same loss curve;
a clean 2 -> 1 resume; frozen weights stay out of the checkpoint; refusals before any work; the
fixed-noise evaluation loss, log and curves.png.

Run as a script (`torchrun ... tests/test_engine.py --stage toy-branch ...`), it trains the toy stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from planx_core.semantic_branch import BranchConfig, SemanticBranch, load_branch, save_branch
from planx_core.training import checkpoint
from planx_core.training import main as train
from planx_core.training.engine_eval import flow_losses
from planx_core.training.flow import noise_latents
from planx_core.training.stages import Stage, StageError, decay_groups
from planx_core.wan.configs import get_preset
from planx_core.wan.dit import WanModel

ROOT = Path(__file__).resolve().parents[1]
LATENT = (3, 8, 8)  # latent frames, height, width
GRID, FRAMES, CODE_DIM, TEXT_LEN = (2, 2), [0.0, 1.0, 2.0], 16, 8
FAST = ["--log-every", "1", "--eval-clips", "0", "--lr", "1e-3", "--warmup", "1", "--threads", "1", "--no-progress"]


class ToyObjective(nn.Module):
    """Flow matching of a frozen DiT conditioned by a trainable branch; per-item noise from per-item seeds."""

    def __init__(self, dit: WanModel, branch: SemanticBranch):
        super().__init__()
        self.dit, self.branch = dit, branch

    def velocity(self, x_t, t, context, vectors=None):
        plan = None if vectors is None else self.branch.condition(vectors, FRAMES, GRID)
        return self.dit(x_t, t, context, plan=plan)  # [B, C, F, H, W]

    def forward(self, x0, context, vectors, seeds):
        samples = [
            noise_latents(x0[i : i + 1], torch.Generator().manual_seed(s), shift=3.0) for i, s in enumerate(seeds)
        ]
        x_t, t, target = (torch.cat([getattr(s, k) for s in samples]) for k in ("x_t", "t", "target"))
        return ((self.velocity(x_t, t, context, vectors).float() - target.float()) ** 2).mean()


def build_toy(seed: int = 1234) -> ToyObjective:
    """The frozen base is the same on every rank (as if read from a file); the branch starts as Plan-X's does."""
    torch.manual_seed(seed)
    cfg = get_preset("tiny")
    dit = WanModel(cfg).requires_grad_(False)
    branch = SemanticBranch(BranchConfig(CODE_DIM, cfg.dim, cfg.num_heads, cfg.num_layers, mode="cross_attn"))
    return ToyObjective(dit, branch)


def toy_item(seed: int, index: int) -> dict:
    gen = torch.Generator().manual_seed(seed * 100_003 + index)
    cfg = get_preset("tiny")
    return {
        "x0": torch.randn(1, cfg.in_dim, *LATENT, generator=gen),
        "context": torch.randn(1, TEXT_LEN, cfg.text_dim, generator=gen),
        "vectors": torch.randn(1, len(FRAMES) * GRID[0] * GRID[1], CODE_DIM, generator=gen),
        "seeds": [int(torch.randint(0, 2**31, (1,), generator=gen))],
    }


def toy_batch(seed: int, indices) -> dict:
    items = [toy_item(seed, i) for i in indices]
    return {
        k: sum((it[k] for it in items), []) if k == "seeds" else torch.cat([it[k] for it in items]) for k in items[0]
    }


class ToyBranchStage(Stage):
    name = "toy-branch"
    replica = False
    forward_methods = ("velocity",)

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--toy-sleep", type=float, default=0.0, help="toy: seconds to wait in each batch")

    def __init__(self, ctx):
        super().__init__(ctx)
        self.module = build_toy().to(ctx.device)

    def shard_blocks(self, module):
        return list(module.dit.blocks)  # frozen blocks as units; the branch stays with the root

    def batch(self, step: int):
        a, c = self.args, self.ctx
        first = (step * c.world_size + c.rank) * a.batch
        if getattr(a, "toy_sleep", 0):
            time.sleep(a.toy_sleep)
        inputs = toy_batch(a.seed, range(first, first + a.batch))
        return {k: v.to(c.device) if torch.is_tensor(v) else v for k, v in inputs.items()}, inputs["seeds"]

    def eval_losses(self, sigmas):
        b = toy_batch(self.args.seed, range(10**6, 10**6 + 2))
        model = lambda x_t, t, context, plan: self.module.velocity(x_t, t, context, b["vectors"])  # noqa: E731
        return flow_losses(model, b["x0"], b["context"], seed=self.args.seed, sigmas=sigmas)

    def export_state(self, out: Path, state: dict) -> None:
        cfg = get_preset("tiny")
        branch = SemanticBranch(BranchConfig(CODE_DIM, cfg.dim, cfg.num_heads, cfg.num_layers, mode="cross_attn"))
        branch.load_state_dict({k[len("branch.") :]: v for k, v in state.items() if k.startswith("branch.")})
        save_branch(branch, Path(out) / "branch.safetensors")


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def toy_stage(monkeypatch):
    monkeypatch.setitem(train.STAGES, "toy-branch", ToyBranchStage)


def run_toy(out: Path, *extra: str) -> int:
    return train.main(["--stage", "toy-branch", "--out", str(out), *FAST, *extra])


def toy_cmd(out: Path, ranks: int, *extra: str) -> list[str]:
    launch = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else []
    return [sys.executable, *launch, str(Path(__file__)), "--stage", "toy-branch", "--out", str(out), *FAST, *extra]


def toy_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += parents.get(child, [])
    return out


def losses(out: Path) -> dict[int, float]:
    """Step -> loss from log.jsonl; a resumed segment's records replace the killed run's."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["last_loss"] for r in records if r["event"] == "step"}


def branch_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_branch(out / "branch.safetensors").state_dict()


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "two"
    done = subprocess.run(
        toy_cmd(out, 2, "--steps", "2", "--batch", "1"), env=toy_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


# ----------------------------------------------------------------------------- tests


def test_two_ranks_equal_one_process_and_a_plain_loop(two_rank_run, tmp_path, toy_stage):
    one = tmp_path / "one"
    assert run_toy(one, "--steps", "2", "--batch", "2") == 0
    a, b = losses(two_rank_run), losses(one)
    assert list(a) == list(b) == [1, 2] and all(abs(a[s] - b[s]) <= 1e-6 * abs(b[s]) for s in a), (a, b)
    assert_close(branch_weights(two_rank_run), branch_weights(one), atol=5e-6)
    start = [json.loads(line) for line in (two_rank_run / "log.jsonl").read_text().splitlines()][0]
    assert start["world"] == 2 and start["global_batch"] == 2

    model = build_toy()  # the same two steps without torch.distributed
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(decay_groups(named, 0.01), lr=1e-3, weight_decay=0.01)
    for step in range(2):
        loss = model(**toy_batch(0, range(2 * step, 2 * step + 2)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        optimizer.step()
        optimizer.zero_grad()
        assert abs(float(loss.detach()) - b[step + 1]) <= 1e-6 * abs(b[step + 1])
    plain = {k[len("branch.") :]: v for k, v in model.state_dict().items() if k.startswith("branch.")}
    assert_close(plain, branch_weights(one), atol=5e-6)


def test_a_zero_branch_leaves_the_wrapped_dit_bitwise_unchanged(tmp_path, toy_stage):
    args = train.parse_args(["--stage", "toy-branch", "--out", str(tmp_path), *FAST, "--steps", "0", "--batch", "1"])
    trainer = train.Trainer(args, train.setup(args))
    wrapped = trainer.model  # FSDP2: the DiT blocks and the root sharded (one rank here)
    b = toy_batch(0, [0, 1])
    x_t, t = b["x0"], torch.full((2, LATENT[0]), 500.0)
    with torch.no_grad():
        with_plan = wrapped.velocity(x_t, t, b["context"], b["vectors"])
        without = wrapped.velocity(x_t, t, b["context"])
        plain = build_toy().dit(x_t, t, b["context"])
    assert torch.equal(with_plan, without) and torch.equal(without, plain)
    assert not torch.equal(plain, torch.zeros_like(plain))


def test_killed_two_rank_run_resumes_on_one_rank_on_the_same_curve(tmp_path, toy_stage):
    killed = tmp_path / "killed"
    slow = ["--steps", "8", "--batch", "1", "--save-every-min", "0", "--toy-sleep", "0.4"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(toy_cmd(killed, 2, *slow), env=toy_env(), **quiet)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            state = checkpoint.read_state(killed / "checkpoint")
            if state and state["step"] >= 3:
                break
            time.sleep(0.1)
    finally:
        for pid in [*descendants(proc.pid), proc.pid]:  # torchrun's workers run in sessions of their own
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    saved = checkpoint.read_state(checkpoint.newest(killed))
    assert saved and 3 <= saved["step"] < 8 and saved["world"] == 2, saved
    assert not any(json.loads(x)["event"] == "end" for x in (killed / "log.jsonl").read_text().splitlines())

    assert run_toy(killed, "--steps", "6", "--batch", "2") == 0  # resharded onto one rank, same global batch
    straight = tmp_path / "straight"
    assert run_toy(straight, "--steps", "6", "--batch", "2") == 0
    a, b = losses(killed), losses(straight)
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(abs(a[s] - b[s]) <= 1e-5 * abs(b[s]) for s in b), (a, b)
    assert_close(branch_weights(killed), branch_weights(straight), atol=1e-5)


def test_two_ranks_resume_on_one(two_rank_run, tmp_path, toy_stage):
    import shutil

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    shutil.copytree(two_rank_run, resumed)
    assert run_toy(resumed, "--steps", "4", "--global-batch", "2") == 0
    assert run_toy(straight, "--steps", "4", "--batch", "2") == 0
    a, b = losses(resumed), losses(straight)
    assert sorted(a) == [1, 2, 3, 4] and all(abs(a[s] - b[s]) <= 1e-6 * abs(b[s]) for s in b), (a, b)
    assert_close(branch_weights(resumed), branch_weights(straight), atol=5e-6)
    start = [json.loads(x) for x in (resumed / "log.jsonl").read_text().splitlines() if '"start"' in x][-1]
    assert start["step"] == 2 and start["world"] == 1 and start["resumed_from"].endswith("checkpoint")


def test_checkpoint_holds_the_trained_state_only(two_rank_run):
    folder = two_rank_run / "checkpoint"
    keys = set(checkpoint.read_tensors(folder))
    assert any(k.startswith("model.branch.attn.") for k in keys) and any(k.startswith("optim.branch.") for k in keys)
    assert not any(k.startswith(("model.dit.", "optim.dit.")) for k in keys), "the frozen DiT was checkpointed"
    assert {"rng_rank0.safetensors", "rng_rank1.safetensors", "state.json"} <= {p.name for p in folder.iterdir()}
    assert not (two_rank_run / "checkpoint.tmp").exists() and not (two_rank_run / "checkpoint.old").exists()


def test_eval_loss_log_and_curves(two_rank_run):
    from PIL import Image

    records = [json.loads(x) for x in (two_rank_run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval_loss"]
    assert evals and evals[-1]["step"] == 2 and list(evals[-1]["sigma"]) == ["0.1", "0.3", "0.5", "0.7", "0.9"]
    assert Image.open(two_rank_run / "curves.png").size[0] > 400


def test_refusals_before_any_work(two_rank_run, tmp_path, toy_stage, capsys):
    args = train.parse_args(["--stage", "toy-branch", "--out", str(tmp_path), "--steps", "1", "--global-batch", "3"])
    with pytest.raises(StageError, match="does not divide over 2 ranks"):
        train.check_settings(args, 2)
    import shutil

    other = tmp_path / "other"
    shutil.copytree(two_rank_run, other)
    assert run_toy(other, "--steps", "4", "--batch", "3") == 2
    assert "global_batch: checkpoint 2 vs now 3" in capsys.readouterr().err
    assert run_toy(tmp_path / "x", "--steps", "1", "--preview-every", "1") == 2
    assert "no preview" in capsys.readouterr().err


def test_sigterm_finishes_the_step_saves_and_exits_130(tmp_path):
    out = tmp_path / "term"
    cmd = toy_cmd(out, 1, "--steps", "40", "--batch", "1", "--toy-sleep", "0.3", "--save-every-min", "100")
    proc = subprocess.Popen(cmd, env=toy_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not (out / "log.jsonl").is_file():
            time.sleep(0.1)
        while time.monotonic() < deadline and proc.poll() is None and '"step"' not in (out / "log.jsonl").read_text():
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    end = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end" and end["stopped"] is True and 1 <= end["step"] < 40
    assert checkpoint.read_state(out / "checkpoint")["step"] == end["step"] and (out / "branch.safetensors").is_file()


def test_bf16_and_activation_checkpointing_train(tmp_path, toy_stage):
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    assert run_toy(fp32, "--steps", "1", "--batch", "2", "--eval-loss-every", "0") == 0
    assert run_toy(bf16, "--steps", "1", "--batch", "2", "--precision", "bf16", "--checkpointing") == 0
    a, b = losses(fp32)[1], losses(bf16)[1]
    assert abs(a - b) < 0.02 * a, (a, b)  # the same step in bf16 compute
    assert all(v.dtype == torch.float32 for v in checkpoint.read_tensors(bf16 / "checkpoint", "model.").values())


def test_unused_parameter_reduction_on_a_torch_without_the_switch(monkeypatch):
    """FSDP2's set_reduce_scatter_unused_params (newer torch) is used where it exists; on a torch without it (the
    lent GPU's 2.11) one rank trains without it and several ranks are refused naming the switch and the fix."""
    from planx_core.training import engine_dist

    calls = []

    class Sharded(nn.Module):
        def set_reduce_scatter_unused_params(self, on):
            calls.append(on)

    monkeypatch.setattr(engine_dist.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(engine_dist, "reduces_unused", lambda: True)
    engine_dist.reduce_unused(Sharded())
    assert calls == [True]
    monkeypatch.setattr(engine_dist, "reduces_unused", lambda: False)
    with pytest.raises(StageError, match="set_reduce_scatter_unused_params.*newer"):
        engine_dist.reduce_unused(Sharded())
    monkeypatch.setattr(engine_dist.dist, "get_world_size", lambda: 1)
    engine_dist.reduce_unused(Sharded())  # one rank: nothing to reduce across
    assert calls == [True]


def test_more_ranks_than_gpus_are_refused_before_cuda_is_touched(monkeypatch):
    """torchrun --nproc_per_node 2 on a one-GPU machine (met on the lent H200): a StageError naming the GPU count
    and the fix, not CUDA's 'invalid device ordinal'."""
    from planx_core.training import engine_dist

    monkeypatch.setattr(engine_dist.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine_dist.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(engine_dist.torch.cuda, "set_device", lambda d: pytest.fail(f"set_device({d}) was called"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    args = train.parse_args(["--stage", "planner", "--out", "unused", "--steps", "1", "--device", "cuda"])
    with pytest.raises(StageError, match=r"1 CUDA device.*--nproc_per_node 1.*--device cpu"):
        engine_dist.setup(args)


if __name__ == "__main__":
    train.STAGES["toy-branch"] = ToyBranchStage
    sys.exit(train.main())
