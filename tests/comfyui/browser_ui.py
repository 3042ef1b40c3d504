"""What the browser tests do on a ComfyUI page, for every frontend they run against: open the page, load or
open a workflow, run it with the mouse, read where the nodes are, take screenshots.

Frontends: "pinned" is the comfyui-frontend-package ComfyUI's requirements install (1.27.10 with ComfyUI
0.3.64); "newest" and "newest-vue" are the build in $PLANX_NEWEST_FRONTEND (the `static/` folder of the
newest comfyui-frontend-package, served with --front-end-root), with its classic canvas nodes and with its
Vue-rendered nodes ("Nodes 2.0", the Comfy.VueNodes.Enabled setting).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1600, "height": 1000}
NEWEST = os.environ.get("PLANX_NEWEST_FRONTEND") or None
FRONTENDS = ["pinned", "newest", "newest-vue"]
READY = "window.app && window.app.graph && window.__planx_editor && window.__planx_editor.ready"


def frontend_root(frontend: str) -> str | None:
    if frontend == "pinned":
        return None
    if not NEWEST or not Path(NEWEST, "index.html").is_file():
        pytest.skip(
            "SKIPPED: newest frontend: set PLANX_NEWEST_FRONTEND to the static/ folder of the newest "
            "comfyui-frontend-package (pip download comfyui-frontend-package --no-deps -d DIR, unzip the wheel: "
            "DIR/.../comfyui_frontend_package/static)"
        )
    return NEWEST


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("PLANX_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page, folder: Path, name: str, clip: dict | None = None) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), clip=clip)
    print(f"screenshot: {path}")
    return path


def open_page(browser, server, frontend: str):
    """A fresh page on `server`; Vue-rendered nodes on or off as the frontend variant says."""
    if frontend != "pinned":
        server.post("/settings", {"Comfy.VueNodes.Enabled": frontend == "newest-vue", "Comfy.Minimap.Visible": True})
    page = browser.new_page(viewport=VIEWPORT)
    page.on("dialog", lambda dialog: dialog.dismiss())
    page.goto(server.base_url)
    page.wait_for_function(READY, timeout=90_000)
    page.wait_for_timeout(1500)
    version = page.evaluate("window.__COMFYUI_FRONTEND_VERSION__ || ''")
    vue = page.evaluate("document.querySelector('[data-node-id]') != null")
    print(f"frontend {frontend}: {version}{' (Vue nodes)' if vue else ''}")
    if frontend != "pinned":
        assert vue == (frontend == "newest-vue"), f"{frontend}: Vue-rendered nodes {'on' if vue else 'off'}"
    return page


def load(page, workflow: dict, name: str = "workflow") -> None:
    page.evaluate("async ([wf, name]) => { await window.app.loadGraphData(wf, true, true, name); }", [workflow, name])
    page.wait_for_timeout(800)


def load_file(page, filename: str) -> dict:
    workflow = json.loads((ROOT / "workflows" / filename).read_text(encoding="utf-8"))
    load(page, workflow, Path(filename).stem)
    return workflow


def node_id(page, type_: str) -> int:
    return page.evaluate(f"window.app.graph._nodes.find((n) => n.type === {json.dumps(type_)}).id")


def click_run(page) -> None:
    """Queue the graph with the mouse: the frontend's Run button (or, in a frontend without one, Ctrl+Enter)."""
    button = page.locator("button:has-text('Run'), [data-testid=queue-button]").first
    if button.count():
        button.click()
    else:
        page.mouse.click(VIEWPORT["width"] - 200, VIEWPORT["height"] - 60)
        page.keyboard.press("Control+Enter")


def run(page, server, *, expect="success", timeout: float = 300) -> dict:
    """Run the page's graph with the mouse and wait for the server to finish it; its /history entry."""
    before = set(server.get("/history"))
    click_run(page)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = [pid for pid in server.get("/history") if pid not in before]
        if new:
            entry = server.get(f"/history/{new[0]}")[new[0]]
            status = entry["status"]
            if status.get("completed") or status.get("status_str") == "error":
                assert status["status_str"] == expect, json.dumps(status)[-3000:]
                page.wait_for_timeout(1500)
                return entry
        time.sleep(0.5)
    pytest.fail(f"the queued graph did not finish:\n{server.log_tail()}")


NODE_BOXES = """() => {
  const canvas = window.app.canvasEl ?? window.app.canvas.canvas;
  const rect = canvas.getBoundingClientRect();
  const ds = window.app.canvas.ds;
  const title = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  return window.app.graph._nodes.map((n) => {
    const el = document.querySelector(`[data-node-id="${n.id}"]`);
    if (el && el.getBoundingClientRect().width > 0) {
      const b = el.getBoundingClientRect();
      return { id: n.id, type: n.type, x0: b.left, y0: b.top, x1: b.right, y1: b.bottom, dom: true };
    }
    const x = (n.pos[0] + ds.offset[0]) * ds.scale + rect.left;
    const y = (n.pos[1] - title + ds.offset[1]) * ds.scale + rect.top;
    return { id: n.id, type: n.type, x0: x, y0: y, x1: x + n.size[0] * ds.scale,
      y1: y + (n.size[1] + title) * ds.scale, dom: false };
  });
}"""


def node_boxes(page) -> list[dict]:
    """Every node's box on screen (title bar included), from the DOM for Vue-rendered nodes."""
    return page.evaluate(NODE_BOXES)


def overlaps(boxes: list[dict], slack: float = 1.0) -> list[tuple[int, int]]:
    found = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            apart = (
                a["x1"] <= b["x0"] + slack
                or b["x1"] <= a["x0"] + slack
                or a["y1"] <= b["y0"] + slack
                or b["y1"] <= a["y0"] + slack
            )
            if not apart:
                found.append((a["id"], b["id"]))
    return found


EMPTY_SPOT = """() => {
  const r = (window.app.canvasEl ?? window.app.canvas.canvas).getBoundingClientRect();
  for (let y = r.bottom - 60; y > r.top + 60; y -= 20) {
    for (let x = r.left + 80; x < r.right - 80; x += 20) {
      const hit = document.elementFromPoint(x, y);
      if (hit !== (window.app.canvasEl ?? window.app.canvas.canvas)) continue;
      const [gx, gy] = window.app.canvas.convertEventToCanvasOffset({ clientX: x, clientY: y });
      if (!window.app.graph.getNodeOnPos(gx, gy, window.app.graph._nodes, 40)) return { x, y };
    }
  }
  return null;
}"""


def empty_spot(page) -> dict:
    """A point of the canvas with no node, widget or overlay on it (to click before a canvas shortcut)."""
    spot = page.evaluate(EMPTY_SPOT)
    assert spot, "no empty spot on the canvas"
    return spot


def canvas_rect(page) -> dict:
    return page.evaluate(
        "(() => { const r = (window.app.canvasEl ?? window.app.canvas.canvas).getBoundingClientRect();"
        " return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom}; })()"
    )


def element_box(page, selector: str) -> dict | None:
    return page.evaluate(
        "(s) => { const e = document.querySelector(s); if (!e) return null; const r = e.getBoundingClientRect();"
        " return {x0: r.left, y0: r.top, x1: r.right, y1: r.bottom, w: r.width, h: r.height}; }",
        selector,
    )


def pixel(path: Path, x: float, y: float) -> tuple[int, int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB").getpixel((int(x), int(y)))
