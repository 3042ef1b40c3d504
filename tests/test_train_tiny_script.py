"""scripts/train_tiny.sh end to end as a smoke run: every stage of the embedded stack for a few steps, the two
assemblies and the evaluation, then the bundle it wrote loads and has its evaluation table (about 4 minutes on
2 CPU cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from planx_core.pipelines.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]


def test_train_tiny_script_trains_assembles_and_evaluates_a_bundle(tmp_path):
    runs = tmp_path / "tiny"
    env = {
        **os.environ,
        "RUNS": str(runs),
        "SCALE": "0.002",
        "EVAL_CLIPS": "1",
        "THREADS": "1",
        "DEVICE": "cpu",
        "PY": sys.executable,
        "PYTHONWARNINGS": "ignore",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "train_tiny.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    stages = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("== ")]
    assert stages == [
        "vae",
        "vae",
        "tatok",
        "planner",
        "dit",
        "e2e",
        "assemble",
        "dit",
        *["planner"] * 9,  # the fine-tune, three with cues, move rows, four rounds with binding pairs
        "assemble",
        "evaluate",
    ]
    # the planner fine-tune ran with the shipped recipe's options, as logged in its run
    start = json.loads((runs / "planner_ft" / "log.jsonl").read_text().splitlines()[0])
    assert {"--motion-weight", "--order-pairs", "--self-feed"} <= set(start["argv"])
    cues = json.loads((runs / "planner_cue24" / "log.jsonl").read_text().splitlines()[0])
    assert cues["argv"][cues["argv"].index("--keyframe-cues") + 1] == "24"
    bundle = load_bundle(runs / "bundle")
    assert bundle.spec.sampling.plan_scale == 3.0 and bundle.spec.planning.t2v_temperature == 0.5
    config = json.loads((runs / "bundle" / "planner" / "config.json").read_text())
    assert config["keyframe_cues"] == 24 and config["motion_in_prompt"] is False  # from the cues-only run
    assert config["move_rows"]["slots"] == 3  # from the move-row rounds, the last of them shipped
    last = json.loads((runs / "planner_mrD4" / "log.jsonl").read_text().splitlines()[0])
    assert last["argv"][last["argv"].index("--seed") + 1] == "3" and "--swap-pairs" in last["argv"]
    scores = json.loads((runs / "eval_report" / "scores.json").read_text())
    assert set(scores["rows"]) >= {"full", "text_only", "no_rope", "gt_plan"} and scores["clips"] == 1
