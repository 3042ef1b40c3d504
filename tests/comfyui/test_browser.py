"""Layer 3 in a browser: the plan editor on a real ComfyUI page, in Debian's Chromium driven by Playwright.

Load the edit-plan workflow, run it, paint a cell and retime a keyframe with the mouse, save the
workflow (the frontend's own serialisation), reload the page, load the saved file: the edits are in
the "edits" widget and change the plan that reaches the sampler (Save Plan's file). Screenshots go
to $PLANX_ARTIFACTS (default: the test's tmp folder) and their paths are printed.
"""

import json
import os
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui
ROOT = Path(__file__).resolve().parents[2]
EDIT_NODE = 4  # PlanX_EditPlanTokens in workflows/Plan-X edit a plan.json
SAVE_PLAN_NODE = 5  # PlanX_SavePlan


def _open(browser, server):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.goto(server.base_url)
    page.wait_for_function(
        "window.app && window.app.graph && window.__planx_editor && window.__planx_editor.ready", timeout=60_000
    )
    return page


def _load(page, workflow: dict) -> None:
    page.evaluate("async (wf) => { await window.app.loadGraphData(wf); }", workflow)
    page.wait_for_function(f"window.app.graph.getNodeById({EDIT_NODE}) != null")


def _run(page, server) -> dict:
    """Queue the page's graph, wait for the server to finish it; the /history entry."""
    before = set(server.get("/history"))
    page.evaluate("window.app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        new = [pid for pid in server.get("/history") if pid not in before]
        if new:
            entry = server.get(f"/history/{new[0]}")[new[0]]
            if entry["status"].get("completed") or entry["status"].get("status_str") == "error":
                assert entry["status"]["status_str"] == "success", entry["status"]
                return entry
        time.sleep(0.5)
    pytest.fail(f"the queued graph did not finish:\n{server.log_tail()}")


def _saved_plan(server, entry: dict) -> dict:
    saved = entry["outputs"][str(SAVE_PLAN_NODE)]["planx_plans"][0]
    return json.loads((server.dirs["output"] / saved["subfolder"] / saved["filename"]).read_text())


def _shot(page, tmp_path, name: str) -> Path:
    folder = Path(os.environ.get("PLANX_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    print(f"screenshot: {path}")
    return path


def _drag(page, start: dict, end_x: float) -> None:
    page.mouse.move(start["x"], start["y"])
    page.mouse.down()
    for step in range(1, 6):
        page.mouse.move(start["x"] + (end_x - start["x"]) * step / 5, start["y"])
    page.mouse.up()


def test_editor_edits_survive_save_and_reload_and_reach_the_sampler(browser, comfy_server, tmp_path):
    workflow = json.loads((ROOT / "workflows" / "Plan-X edit a plan.json").read_text())
    page = _open(browser, comfy_server)
    _load(page, workflow)
    first = _saved_plan(comfy_server, _run(page, comfy_server))
    page.wait_for_function(f"window.__planx_editor.get({EDIT_NODE}).hasRun")
    _shot(page, tmp_path, "editor_after_run")

    editor = page.evaluate(f"window.__planx_editor.get({EDIT_NODE})")
    steps_before = len(editor["steps"])
    brush = page.evaluate(f"window.__planx_editor.pick({EDIT_NODE}, 0, 0, 0)")  # eyedropper: keyframe 0's corner
    code = editor["plan"]["keyframes"][0]["tokens"][0]
    cell = next(i for i, token in enumerate(editor["plan"]["keyframes"][1]["tokens"]) if token != code)
    row, col = divmod(cell, 9)  # a cell of keyframe 1 that the brush changes
    target = page.evaluate(f"window.__planx_editor.cellCenter({EDIT_NODE}, 1, {row}, {col})")
    page.mouse.click(target["x"], target["y"])
    head = page.evaluate(f"window.__planx_editor.headCenter({EDIT_NODE}, 3)")
    _drag(page, head, page.evaluate(f"window.__planx_editor.timeToClientX({EDIT_NODE}, 1.25)"))
    edited = page.evaluate(f"window.__planx_editor.get({EDIT_NODE})")
    _shot(page, tmp_path, "editor_after_edits")
    ops = [step["op"] for step in edited["steps"][steps_before:]]
    assert "fill" in ops and "move_keyframe" in ops, (brush, edited["text"])

    saved = page.evaluate("async () => (await window.app.graphToPrompt()).workflow")
    page.reload()
    page.wait_for_function(
        "window.app && window.app.graph && window.__planx_editor && window.__planx_editor.ready", timeout=60_000
    )
    _load(page, saved)
    reloaded = page.evaluate(f"window.__planx_editor.get({EDIT_NODE})")
    assert reloaded["text"] == edited["text"]
    after = _saved_plan(comfy_server, _run(page, comfy_server))
    _shot(page, tmp_path, "editor_after_reload_and_run")

    times = [k["time"] for k in after["keyframes"]]
    assert 1.25 in times and times != [k["time"] for k in first["keyframes"]]
    moved = next(k for k in after["keyframes"] if k["time"] == 1.25)
    painted = [k for k in after["keyframes"] if k["time"] == first["keyframes"][1]["time"]][0]
    assert painted["tokens"][cell] == code != first["keyframes"][1]["tokens"][cell]
    assert moved["tokens"] == first["keyframes"][3]["tokens"]
