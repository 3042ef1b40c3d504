"""Ulysses sequence parallelism (`planx_core.wan.parallel`) on 2 and 4 gloo CPU ranks against one process.

Each spawn runs every case in its workers (starting processes is the slow part on a 2-core machine):
every rank computes the sequence-parallel forward and, alone, the single-process forward of the same
seeded model and inputs, and writes the largest difference per case; the 2-rank spawn also runs the
whole `generate` command under torchrun's environment, compared with one process here.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from planx_core.semantic_branch import BranchConfig, SemanticBranch
from planx_core.wan.configs import get_preset
from planx_core.wan.dit import WanModel
from planx_core.wan.parallel import check_split, local_layout, sequence_parallel
from planx_core.wan.windows import WindowSpec

PROMPT = "a red circle on a dark background. the red circle moves right."
TOLERANCE = 1e-5
# A whole render combines each step's passes with guidance scales 3 and 2 (u + 3 (c - u) + ...), which multiply
# a forward's <= 1e-5 difference; two steps of it stay within this.
RENDER_TOLERANCE = 5e-5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random (not zero-initialised) parameters, the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module.eval()


def tiny_model(heads: int = 4) -> WanModel:
    return seeded(WanModel(replace(get_preset("tiny"), num_heads=heads)), 0)


def tiny_plan(model: WanModel, mode: str, strength: float):
    cfg = model.config
    branch = seeded(SemanticBranch(BranchConfig(8, cfg.dim, cfg.num_heads, cfg.num_layers, mode=mode)), 1)
    vectors = torch.randn(1, 3 * 3 * 3, 8, generator=torch.Generator().manual_seed(2))  # 3 keyframes of 3x3
    return branch.condition(vectors, [0.0, 1.5, 3.0], (3, 3), strength=strength)


def cases() -> dict[str, tuple]:
    """name -> (model, inputs, forward keywords). 4 x 3 x 5 = 60 video tokens (+ 27 in-context plan tokens: 87,
    so on 4 ranks the plan tokens straddle a rank boundary and the last rank holds one padding token)."""
    gen = torch.Generator().manual_seed(3)
    model = tiny_model()
    x, context = torch.randn(2, 48, 4, 6, 10, generator=gen), torch.randn(2, 5, 32, generator=gen)
    per_frame = torch.tensor([[0.0, 300.0, 600.0, 900.0], [10.0, 20.0, 30.0, 40.0]])
    per_token = torch.rand(2, 60, generator=gen) * 1000
    odd = torch.randn(1, 48, 1, 2, 14, generator=gen)  # 7 tokens: padded on every split
    in_context = tiny_plan(model, "in_context", 1.0)
    return {
        "plain": (model, (x, torch.tensor([700.0, 100.0]), context), {}),
        "plain, padded sequence": (model, (odd, torch.tensor([500.0]), context[:1]), {}),
        "per-frame timesteps": (model, (x, per_frame, context), {}),
        "per-token timesteps": (model, (x, per_token, context), {}),
        "cross-attention plan": (model, (x, per_frame, context), {"plan": tiny_plan(model, "cross_attn", 0.7)}),
        "in-context plan": (model, (x, per_frame, context), {"plan": tiny_plan(model, "in_context", 0.5)}),
        "windowed": (model, (x, per_frame, context), {"window": 2}),
        "windowed, in-context plan (local)": (model, (x, per_frame, context), {"window": 2, "plan": in_context}),
        "windowed, in-context plan (global)": (
            model,
            (x, per_frame, context),
            {"window": WindowSpec(2, "global"), "plan": in_context},
        ),
        "windowed, in-context plan (margin 1)": (
            model,
            (x, per_frame, context),
            {"window": WindowSpec(2, margin=1), "plan": tiny_plan(model, "in_context", 0.5)},
        ),
    }


def forward_differences() -> dict[str, float]:
    """Largest |sequence-parallel - single-process| of every case, on this rank."""
    out = {}
    with torch.inference_mode():
        for name, (model, inputs, options) in cases().items():
            want = model(*inputs, **options)
            with sequence_parallel(model):
                got = model(*inputs, **options)
            out[name] = (got - want).abs().max().item()
    return out


def refusals(world: int) -> dict[str, str]:
    """The errors of splits Ulysses cannot do, as messages: 2 heads on 4 ranks, 1 token on every split."""
    out = {}
    if world == 4:
        with pytest.raises(ValueError) as err, sequence_parallel(tiny_model(heads=2)):
            pass
        out["heads"] = str(err.value)
    model = tiny_model(heads=world)
    with torch.inference_mode(), sequence_parallel(model), pytest.raises(ValueError) as err:
        model(torch.randn(1, 48, 1, 2, 2), torch.tensor([1.0]), torch.randn(1, 3, 32))  # 1 token
    out["short"] = str(err.value)
    return out


def guidance_split() -> dict[str, list]:
    """Whole renders (2 UniPC steps) with each step's guidance passes spread over groups of ranks
    (`GuidanceSplit`), against one process: (largest difference, was the step split)."""
    from planx_core.diffusion import Guidance, guidance_runner, render
    from planx_core.wan.parallel import GuidanceSplit

    model = tiny_model()
    plan = tiny_plan(model, "cross_attn", 0.7)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(1, 48, 4, 6, 10, generator=gen)
    positive, negative = torch.randn(1, 5, 32, generator=gen), torch.randn(1, 5, 32, generator=gen)
    settings = {
        "text guidance (2 passes)": (Guidance(3.0, 1.0), None),
        "text guidance with a plan (2 passes)": (Guidance(3.0, 1.0), plan),
        "text and plan guidance (3 passes)": (Guidance(3.0, 2.0), plan),
    }
    out = {}
    for name, (guidance, conditioning) in settings.items():
        with torch.inference_mode():
            one = render(model, noise, positive, negative, plan=conditioning, steps=2, guidance=guidance)
            runner = GuidanceSplit(model)
            with sequence_parallel(model), guidance_runner(runner):
                split = render(model, noise, positive, negative, plan=conditioning, steps=2, guidance=guidance)
        out[name] = [float((split - one).abs().max()), any(v is not None for v in runner._groups.values())]
    return out


def generate(out: str, ranks: int) -> int:
    from planx_core.__main__ import main

    args = ["generate", "--prompt", PROMPT, "--out", out, "--steps", "2", "--scale", "1", "--threads", "1"]
    return main([*args, "--quiet", "--sequence-parallel", str(ranks)])


def worker(rank: int, world: int, port: int, folder: str, run_generate: bool) -> None:
    torch.set_num_threads(1)
    env = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    os.environ.update({key: str(value) for key, value in env.items()})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    result = {"forward": forward_differences(), "guidance": guidance_split()}
    if world == 4 or rank == 0:
        result["refusals"] = refusals(world)
    if run_generate:  # the command tears the process group down when it is done
        result["generate"] = generate(os.path.join(folder, "parallel.mp4"), world)
    else:
        dist.destroy_process_group()
    with open(os.path.join(folder, f"rank{rank}.json"), "w") as handle:
        json.dump(result, handle)


def spawn(world: int, folder, run_generate: bool = False) -> list[dict]:
    mp.spawn(worker, args=(world, free_port(), str(folder), run_generate), nprocs=world)
    return [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sp2")
    return folder, spawn(2, folder, run_generate=True)


@pytest.mark.parametrize("name", list(cases()))
def test_two_ranks_match_one_process(two_ranks, name):
    for rank, result in enumerate(two_ranks[1]):
        assert result["forward"][name] <= TOLERANCE, f"rank {rank}, {name}"


def test_two_ranks_split_guidance_passes(two_ranks):
    """2 passes on 2 ranks: one pass per rank (then gathered); 3 passes do not split 2 ranks: as without."""
    for result in two_ranks[1]:
        for name, (diff, split) in result["guidance"].items():
            assert diff <= RENDER_TOLERANCE, name
            assert split == ("2 passes" in name), name


def test_four_ranks_match_one_process(tmp_path):
    results = spawn(4, tmp_path)
    for rank, result in enumerate(results):
        for name, (diff, split) in result["guidance"].items():  # 2 passes: 2 groups of 2 sequence-parallel ranks
            assert diff <= RENDER_TOLERANCE and split == ("2 passes" in name), (rank, name, diff)
        bad = {name: diff for name, diff in result["forward"].items() if diff > TOLERANCE}
        assert not bad, f"rank {rank}: {bad}"
        assert "model has 2 heads" in result["refusals"]["heads"] and "1, 2" in result["refusals"]["heads"]
        assert "shorter than the 4 ranks" in result["refusals"]["short"]


def test_generate_on_two_ranks_is_the_one_process_video(two_ranks, tmp_path):
    from planx_core.files.video import read_video

    folder, results = two_ranks
    assert [r["generate"] for r in results] == [0, 0]
    assert "shorter than the 2 ranks" in results[0]["refusals"]["short"]
    assert generate(str(tmp_path / "one.mp4"), 1) == 0
    parallel, one = read_video(folder / "parallel.mp4")[0], read_video(tmp_path / "one.mp4")[0]
    assert parallel.shape == one.shape
    diff = np.abs(parallel.astype(int) - one.astype(int))  # [T, H, W, 3] of the decoded mp4s
    # same frames up to a rounding: latents 1e-5 apart round a few values the other way, and the mp4 encoder's
    # predicted frames carry that some levels onwards (measured: max 3 to 19 levels in 0.01-1.2 % of values,
    # depending on the plan; 55 dB), so the two decoded videos are compared by PSNR (the same prompt at another
    # seed: 19 dB) and the plans byte for byte
    psnr = 10 * np.log10(255**2 / max(float((diff**2).mean()), 1e-12))
    assert psnr >= 50 and diff.max() <= 32, (psnr, diff.max(), (diff > 1).mean())
    assert (folder / "parallel.plan.json").read_bytes() == (tmp_path / "one.plan.json").read_bytes()
    assert not list(folder.glob("*.tmp*")), "only rank 0 writes, and atomically"


def test_bad_splits_are_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"model has 24 heads; use a number of ranks that divides 24: 1, 2, 3, 4, 6"):
        check_split(24, 5)
    with pytest.raises(ValueError, match="shorter than the 4 ranks"):
        check_split(4, 4, length=3)
    check_split(24, 8, length=8)


def test_cli_refuses_a_run_outside_torchrun_or_of_another_size(monkeypatch, tmp_path, capsys):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert generate(str(tmp_path / "a.mp4"), 2) == 2
    assert "launch with torchrun --nproc_per_node 2" in capsys.readouterr().err
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert generate(str(tmp_path / "a.mp4"), 4) == 2
    assert "torchrun started 2 processes" in capsys.readouterr().err
    for name in env:
        monkeypatch.delenv(name)
    from planx_core.__main__ import main

    split = ["generate", "--prompt", PROMPT, "--out", str(tmp_path / "a.mp4"), "--quiet", "--split-guidance"]
    assert main(split) == 2
    assert "--split-guidance spreads the guidance passes over the ranks" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("groups", [((1, 60),), ((4, 15),), ((60, 1),), ((4, 15), (1, 8)), ((3, 4), (1, 5), (2, 1))])
@pytest.mark.parametrize("ranks", [2, 3, 4, 7])
def test_local_layouts_cover_the_sequence_row_for_row(groups, ranks):
    from planx_core.wan.dit import TokenLayout

    layout = TokenLayout(groups)
    total = layout.num_tokens
    widths = [m for n, m in groups for _ in range(n)]  # tokens of each row
    row_of_token = torch.cat([torch.full((m,), row) for row, m in enumerate(widths)])  # [L]
    chunk = -(-total // ranks)
    for rank in range(ranks):
        index, local = local_layout(layout, rank * chunk, (rank + 1) * chunk)
        assert local.num_tokens == chunk
        rows = torch.cat([index[i].repeat(m) for i, (n, m) in enumerate(_expand(local.groups))])
        real = row_of_token[rank * chunk : (rank + 1) * chunk]
        assert torch.equal(rows[: len(real)], real)
    assert local_layout(TokenLayout(((1, 60),)), 30, 60)[1].groups == ((1, 30),)  # uniform stays one group


def _expand(groups):
    """Groups of n rows as n groups of one row."""
    return [(1, m) for n, m in groups for _ in range(n)]


@pytest.mark.parametrize("mode", ["cross_attn", "in_context"])
def test_bound_plan_gives_what_a_sequence_parallel_forward_needs(mode):
    """The planx_core-level hooks (BoundPlan) a sequence-parallel DiT uses for the plan tokens: positions and
    their rotation rows (in-context tokens split with the sequence), per-block keys and values (cross-attention,
    replicated on every rank), the key bias, and the sequence with the tokens appended."""
    from planx_core.wan.dit import TokenLayout, grid_rope

    model = tiny_model()
    cfg, grid = model.config, (4, 3, 5)
    bound = tiny_plan(model, mode, 0.5).bind(grid, cfg.dim, cfg.num_layers)
    count = 27
    assert bound.positions.shape == (count, 3) and bound.rope.cos.shape == (count, cfg.head_dim // 2)
    assert bound.key_bias == pytest.approx(-0.6931, abs=1e-4)
    if mode == "cross_attn":
        k, v = bound.keys_values(1, 2, torch.float32)
        assert k.shape == v.shape == (2, count, cfg.num_heads, cfg.head_dim) and bound.has_attention(1)
        return
    tokens, rows = torch.randn(2, 60, cfg.dim), torch.zeros(2, 4)
    rope = grid_rope(grid, cfg.head_dim, torch.device("cpu"))
    out = bound.append_tokens(tokens, rows, TokenLayout(((4, 15),)), rope, torch.float32)
    tokens2, rows2, layout2, rope2, mask = out
    assert tokens2.shape[1] == rope2.cos.shape[0] == layout2.num_tokens == 60 + count and rows2.shape == (2, 5)
    assert mask.shape[-1] == 60 + count
