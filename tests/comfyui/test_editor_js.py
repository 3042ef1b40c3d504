"""The plan editor's JavaScript (web/js/planx_plan_editor.js) without a browser.

`node --check` parses it; then node imports the module (with a stub for ComfyUI's app.js) and its
replay of edit steps is compared with planx_core.plan_edits.apply_edits on random edit lists, so
the editor draws what the Edit Plan Tokens node will compute. Skipped, saying why, without `node`.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from planx_core.plan import CodebookId, keyframe_times, make_plan
from planx_core.plan_edits import EditError, apply_edits

EDITOR_JS = Path(__file__).resolve().parents[2] / "web" / "js" / "planx_plan_editor.js"
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="`node` is not on PATH: install Node.js to check the editor's JS")
PALETTE = [{"word": "red", "code": 7}, {"word": "sky", "code": 42}, {"word": "cup", "code": 99}]

RUNNER = """
import * as editor from "./extensions/planx/js/planx_plan_editor.js";
import { readFileSync } from "node:fs";
const cases = JSON.parse(readFileSync(0, "utf8"));
const palette = cases.palette;
const lookup = (w) => palette.find((p) => p.word === w)?.code;
const replays = cases.replays.map(({ base, steps }) => editor.replayEdits(base, steps, lookup));
const covers = cases.covers.map(({ must, free, gh, gw }) => editor.coverCells(new Set(must), new Set(free), gh, gw));
const formatted = cases.formats.map((steps) => editor.formatEdits(steps));
process.stdout.write(JSON.stringify({ replays, covers, formatted }));
"""


def run_module(tmp_path: Path, cases: dict) -> dict:
    """Import the editor module in node (app.js and api.js stubbed where ComfyUI serves them) and run
    the cases through it."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text("export const app = {};\n")  # the served layout: /scripts/,
    (tmp_path / "scripts" / "api.js").write_text("export const api = {};\n")  # /extensions/<pack>/js/
    target = tmp_path / "extensions" / "planx" / "js"
    target.mkdir(parents=True)
    shutil.copy(EDITOR_JS, target / EDITOR_JS.name)
    (tmp_path / "package.json").write_text('{"type": "module"}\n')
    (tmp_path / "run.js").write_text(RUNNER)
    done = subprocess.run([NODE, "run.js"], cwd=tmp_path, input=json.dumps(cases), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def base_plan(rng: random.Random):
    fps = rng.choice([8.0, 12.0, 24.0, 30.0])
    num_frames = rng.choice([9, 17, 33, 49])
    grid = rng.choice([(3, 3), (9, 9), (2, 4)])
    times = keyframe_times(num_frames, fps, rng.choice([2.0, 4.0]))
    tokens = [[rng.randrange(100) for _ in range(grid[0] * grid[1])] for _ in times]
    return make_plan(tokens, times=times, fps=fps, num_frames=num_frames, width=64, height=64,
                     codebook=CodebookId("tiny", 100, "abc"), grid=grid)


def random_step(rng: random.Random, plan_dict: dict, count: int) -> dict:
    """One step of the kinds the editor emits or replays, sometimes invalid on purpose."""
    gh, gw = plan_dict["grid"]
    video = plan_dict["video"]
    last = (video["num_frames"] - 1) / video["fps"]
    index = rng.randrange(-1, count + 1) if rng.random() < 0.1 else rng.randrange(max(count, 1))
    top, left = rng.randrange(gh), rng.randrange(gw)
    rect = [top, left, rng.randrange(top, gh), rng.randrange(left, gw)]
    time = rng.choice([rng.uniform(0, last), round(rng.randrange(video["num_frames"]) / video["fps"], 6), 0.0]
                      if rng.random() < 0.9 else [last + 1.0, -0.5, last + 1e-7])
    op = rng.choice(["fill", "fill", "fill_word", "move_keyframe", "move_keyframe", "duplicate_keyframe",
                     "delete_keyframe", "lock", "insert_keyframe", "note", "paste"])
    if op == "fill":
        step = {"op": op, "keyframe": rng.choice([index, "all", [index]]), "rect": rect,
                "token": rng.randrange(100) if rng.random() < 0.9 else 100}
        if rng.random() < 0.2:
            del step["rect"]
        return step
    if op == "fill_word":
        return {"op": op, "keyframe": index, "rect": rect, "word": rng.choice(["red", " sky ", "cup"])}
    if op in ("move_keyframe", "duplicate_keyframe"):
        return {"op": op, "keyframe": index, "time": time}
    if op == "delete_keyframe":
        return {"op": op, "keyframe": index}
    if op == "lock":
        return {"op": op, "keyframe": index, "locked": rng.random() < 0.7}
    if op == "insert_keyframe":
        return {"op": op, "time": time}
    if op == "note":
        return {"op": op, "keyframe": index, "text": "n"}
    rows, cols = rng.randrange(1, gh + 1), rng.randrange(1, 3)
    return {"op": "paste", "keyframe": index, "at": [top, left],
            "tokens": [[rng.randrange(100) for _ in range(cols)] for _ in range(rows)]}


def python_replay(plan, steps):
    words = {p["word"]: p["code"] for p in PALETTE}
    try:
        return apply_edits(plan, steps, word_to_code=words.__getitem__).to_dict(), None
    except EditError as exc:
        return None, str(exc)


@needs_node
def test_node_check_parses_the_module():
    done = subprocess.run([NODE, "--check", str(EDITOR_JS)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@needs_node
def test_js_replay_matches_plan_edits(tmp_path):
    rng = random.Random(1234)
    replays, expected = [], []
    for _ in range(400):
        plan = base_plan(rng)
        base = plan.to_dict()
        steps, count = [], len(plan.keyframes)
        for _ in range(rng.randrange(1, 7)):
            steps.append(random_step(rng, base, count))
            count += {"duplicate_keyframe": 1, "insert_keyframe": 1, "delete_keyframe": -1}.get(steps[-1]["op"], 0)
        replays.append({"base": base, "steps": steps})
        expected.append(python_replay(plan, steps))
    out = run_module(tmp_path, {"palette": PALETTE, "replays": replays, "covers": [], "formats": []})
    failures = 0
    for case, got, (want, error) in zip(replays, out["replays"], expected):
        assert "unsupported" not in got, (case["steps"], got)
        if error is None:
            assert "error" not in got, (case["steps"], got.get("error"))
            assert got["plan"]["keyframes"] == want["keyframes"], case["steps"]
        else:
            failures += 1
            assert "error" in got, (case["steps"], error)
            assert f"edit {got['applied']} " in error, (error, got["error"])  # the same step fails
    assert 60 < failures < 340  # both outcomes well exercised


@needs_node
def test_cover_cells_and_edit_text(tmp_path):
    rng = random.Random(7)
    covers = []
    for _ in range(200):
        gh, gw = rng.choice([(9, 9), (3, 5)])
        cells = list(range(gh * gw))
        must = rng.sample(cells, rng.randrange(1, len(cells)))
        free = [c for c in cells if c not in must and rng.random() < 0.3]
        covers.append({"must": must, "free": free, "gh": gh, "gw": gw})
    steps = [{"op": "fill", "keyframe": 0, "rect": [0, 1, 2, 3], "token": 5},
             {"op": "move_keyframe", "keyframe": 2, "time": 1.25},
             {"op": "fill_word", "keyframe": 1, "word": "a \"b\""}]
    out = run_module(tmp_path, {"palette": PALETTE, "replays": [], "covers": covers, "formats": [steps, []]})
    for case, rects in zip(covers, out["covers"]):
        covered = {r * case["gw"] + c for t, l, b, rr in rects for r in range(t, b + 1) for c in range(l, rr + 1)}
        assert set(case["must"]) <= covered <= set(case["must"]) | set(case["free"])
        assert len(rects) <= len(case["must"])
    text, empty = out["formatted"]
    assert json.loads(text) == steps and json.loads(empty) == []
    assert text.splitlines()[1] == '  {"op": "fill", "keyframe": 0, "rect": [0, 1, 2, 3], "token": 5},'
    assert len(text.splitlines()) == len(steps) + 2
