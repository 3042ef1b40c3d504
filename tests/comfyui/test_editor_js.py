"""The plan editor's JavaScript (web/js: the entry planx_plan_editor.js and the pure modules under
planx_editor/) without a browser.

`node --check` parses every module; then node imports them from a copy of web/js laid out as
ComfyUI serves it (stubs for ComfyUI's app.js and api.js at /scripts/), and:
- the JS replay of edit steps is compared with planx_core.plan.apply_edits on random edit lists;
- the op names the editor accepts are exactly the payload's `ops` (planx_core.plan.OPS);
- continuous plans: the editor parses their edit lists (interpolate included) and shows the server's
  plan read-only, with the keyframe times apply_edits gives;
- dispose(): removing a node releases its editor's ResizeObserver and listeners;
- each pure module imports on its own without touching a global.
The last three run the entry module on a small fake DOM (FAKE_DOM below). Skipped, saying why,
without `node`.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from planx_core.plan import (
    OPS,
    CodebookId,
    EditError,
    apply_edits,
    keyframe_times,
    make_plan,
    parse_edits,
)
from planx_core.plan.continuous import make_continuous_plan

WEB_JS = Path(__file__).resolve().parents[2] / "web" / "js"
EDITOR_JS = WEB_JS / "planx_plan_editor.js"
PURE_MODULES = sorted((WEB_JS / "planx_editor").glob("*.js"))
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="`node` is not on PATH: install Node.js to check the editor's JS")
PALETTE = [{"word": "red", "code": 7}, {"word": "sky", "code": 42}, {"word": "cup", "code": 99}]
ENTRY = "./extensions/planx/js/planx_plan_editor.js"

RUNNER = """
import * as editor from "./extensions/planx/js/planx_editor/replay.js";
import { readFileSync } from "node:fs";
const cases = JSON.parse(readFileSync(0, "utf8"));
const palette = cases.palette;
const lookup = (w) => palette.find((p) => p.word === w)?.code;
const replays = cases.replays.map(({ base, steps }) => editor.replayEdits(base, steps, lookup));
const covers = cases.covers.map(({ must, free, gh, gw }) => editor.coverCells(new Set(must), new Set(free), gh, gw));
const formatted = cases.formats.map((steps) => editor.formatEdits(steps));
const parsed = (cases.parses ?? []).map(({ text, ops }) => editor.parseEdits(text, ops));
process.stdout.write(JSON.stringify({ replays, covers, formatted, parsed }));
"""

# Just enough of a browser for the editor: elements with attributes, classes, children, listeners
# (with AbortSignal), canvases whose 2d context takes any call, a counted ResizeObserver; plus a
# ComfyUI app stub that records the extension, and a graph whose nodes the test creates and removes.
FAKE_DOM = """
const camel = (s) => s.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
const ctx2d = new Proxy({}, { get: (t, k) => (k in t ? t[k] : () => ({})), set: (t, k, v) => ((t[k] = v), true) });
class ClassList {
  constructor(el) { this.el = el; }
  get names() { return String(this.el.className).split(/\\s+/).filter(Boolean); }
  contains(c) { return this.names.includes(c); }
  add(c) { if (!this.contains(c)) this.el.className = [...this.names, c].join(" "); }
  remove(c) { this.el.className = this.names.filter((n) => n !== c).join(" "); }
  toggle(c, on = !this.contains(c)) { on ? this.add(c) : this.remove(c); return on; }
}
export class El {
  constructor(tag) {
    Object.assign(this, { tagName: tag.toUpperCase(), children: [], attrs: {}, dataset: {}, style: {},
      className: "", textContent: "", listeners: [], clientWidth: 800, offsetWidth: 800 });
    this.classList = new ClassList(this);
  }
  setAttribute(k, v) {
    this.attrs[k] = String(v);
    if (k.startsWith("data-")) this.dataset[camel(k.slice(5))] = String(v);
  }
  getAttribute(k) { return this.attrs[k] ?? null; }
  append(...nodes) {
    for (const n of nodes) { if (typeof n === "string") this.textContent += n; else this.children.push(n); }
  }
  replaceChildren(...nodes) { this.children = []; this.append(...nodes); }
  addEventListener(type, fn, options) {
    const signal = options?.signal;
    if (signal?.aborted) return;
    const entry = { type, fn };
    this.listeners.push(entry);
    signal?.addEventListener("abort", () => { this.listeners = this.listeners.filter((e) => e !== entry); });
  }
  removeEventListener(type, fn) { this.listeners = this.listeners.filter((e) => e.type !== type || e.fn !== fn); }
  dispatch(type, extra = {}) {
    const event = { type, currentTarget: this, target: this, preventDefault() {}, stopPropagation() {}, ...extra };
    for (const e of this.listeners.filter((l) => l.type === type)) e.fn(event);
  }
  all() { return this.children.flatMap((c) => [c, ...c.all()]); }
  matches(selector) {
    const m = selector.match(/^([a-z]*)((?:\\.[\\w-]+)*)((?:\\[[^\\]]+\\])*)$/);
    if (!m) throw new Error(`fake DOM: selector ${selector}`);
    if (m[1] && this.tagName !== m[1].toUpperCase()) return false;
    if (!m[2].split(".").filter(Boolean).every((c) => this.classList.contains(c))) return false;
    return [...m[3].matchAll(/\\[([\\w-]+)(?:="?([^"\\]]*)"?)?\\]/g)].every(([, k, v]) => {
      const have = this.getAttribute(k);
      return v === undefined ? have !== null : have === v;
    });
  }
  querySelectorAll(selector) { return this.all().filter((e) => e.matches(selector)); }
  querySelector(selector) { return this.querySelectorAll(selector)[0] ?? null; }
  getContext() { return ctx2d; }
  getBoundingClientRect() { return { left: 0, top: 0, width: this.offsetWidth, height: 100 }; }
}
export const observers = { created: 0, connected: 0 };
globalThis.ResizeObserver = class {
  constructor(callback) { this.callback = callback; this.on = false; observers.created++; }
  observe() { if (!this.on) { this.on = true; observers.connected++; } }
  disconnect() { if (this.on) { this.on = false; observers.connected--; } }
};
const head = new El("head");
globalThis.document = { head, createElement: (tag) => new El(tag),
  getElementById: (id) => head.children.find((e) => e.id === id) ?? null };
globalThis.window = globalThis;
const extensions = [];
const handlers = {};
const nodes = new Map();
export const app = { registerExtension: (ext) => extensions.push(ext), nodeOutputs: {},
  graph: { getNodeById: (id) => nodes.get(id) ?? null, setDirtyCanvas() {} } };
export const api = { addEventListener: (type, fn) => { handlers[type] = fn; },
  fetchApi: async () => ({ json: async () => ({}) }) };
globalThis.__planxStub = { app, api };
export const NodeType = class {};
export async function register() {
  await import("__ENTRY__");
  for (const ext of extensions) {
    await ext.beforeRegisterNodeDef?.(NodeType, { name: "PlanX_EditPlanTokens" });
    ext.setup?.();
  }
  return window.__planx_editor;
}
/** A node as LiteGraph makes one: its "edits" widget (a DOM widget), then onNodeCreated. */
export function makeNode(id, text = "") {
  const node = new NodeType();
  const element = new El("textarea");
  const edits = { name: "edits", value: text, element, inputEl: element, options: {}, callback() {} };
  Object.assign(node, { id, graph: app.graph, size: [400, 300], inputs: [{ name: "plan", link: 1 }], widgets: [edits],
    addDOMWidget: (name, type, el, options) => {
      const w = { name, type, element: el, options };
      node.widgets.push(w);
      return w;
    },
    computeSize: () => [500, 400], setSize: (size) => { node.size = size; } });
  nodes.set(id, node);
  node.onNodeCreated();
  return node;
}
/** LGraph.remove: onRemoved, then the node leaves the graph. */
export function removeNode(node) { node.onRemoved?.(); node.graph = null; nodes.delete(node.id); }
export function fire(type, detail) { return handlers[type]?.({ detail }); }
export function stepLines(node) {
  return node.planxEditor.dom.steps.children.map((li) => ({ text: li.textContent, cls: li.className }));
}
""".replace("__ENTRY__", ENTRY)


def run_js(tmp_path: Path, runner: str, cases: dict | None = None) -> dict:
    """Run `runner` (an ES module) in node next to a copy of web/js laid out as ComfyUI serves it:
    /scripts/app.js and api.js (stubs: those of FAKE_DOM once it is imported, else {}) and
    /extensions/<pack>/js/. Its stdout, as JSON."""
    if not (tmp_path / "scripts").exists():
        (tmp_path / "scripts").mkdir()
        for name in ("app", "api"):
            stub = f"export const {name} = globalThis.__planxStub?.{name} ?? {{}};\n"
            (tmp_path / "scripts" / f"{name}.js").write_text(stub)
        shutil.copytree(WEB_JS, tmp_path / "extensions" / "planx" / "js")
        (tmp_path / "package.json").write_text('{"type": "module"}\n')
        (tmp_path / "fake_dom.js").write_text(FAKE_DOM)
    (tmp_path / "run.js").write_text(runner)
    done = subprocess.run(
        [NODE, "run.js"],
        check=False,
        cwd=tmp_path,
        input=json.dumps(cases or {}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def run_module(tmp_path: Path, cases: dict) -> dict:
    return run_js(tmp_path, RUNNER, {"replays": [], "covers": [], "formats": [], **cases})


def base_plan(rng: random.Random):
    fps = rng.choice([8.0, 12.0, 24.0, 30.0])
    num_frames = rng.choice([9, 17, 33, 49])
    grid = rng.choice([(3, 3), (9, 9), (2, 4)])
    times = keyframe_times(num_frames, fps, rng.choice([2.0, 4.0]))
    tokens = [[rng.randrange(100) for _ in range(grid[0] * grid[1])] for _ in times]
    return make_plan(
        tokens,
        times=times,
        fps=fps,
        num_frames=num_frames,
        width=64,
        height=64,
        codebook=CodebookId("tiny", 100, "abc"),
        grid=grid,
    )


def random_time(rng: random.Random, video: dict) -> float:
    last = (video["num_frames"] - 1) / video["fps"]
    return rng.choice(
        [rng.uniform(0, last), round(rng.randrange(video["num_frames"]) / video["fps"], 6), 0.0]
        if rng.random() < 0.9
        else [last + 1.0, -0.5, last + 1e-7]
    )


def random_step(rng: random.Random, plan_dict: dict, count: int) -> dict:
    """One step of the kinds the editor emits or replays, sometimes invalid on purpose."""
    gh, gw = plan_dict["grid"]
    index = rng.randrange(-1, count + 1) if rng.random() < 0.1 else rng.randrange(max(count, 1))
    top, left = rng.randrange(gh), rng.randrange(gw)
    rect = [top, left, rng.randrange(top, gh), rng.randrange(left, gw)]
    time = random_time(rng, plan_dict["video"])
    op = rng.choice(
        [
            "fill",
            "fill",
            "fill_word",
            "move_keyframe",
            "move_keyframe",
            "duplicate_keyframe",
            "delete_keyframe",
            "lock",
            "insert_keyframe",
            "note",
            "paste",
        ]
    )
    if op == "fill":
        step = {
            "op": op,
            "keyframe": rng.choice([index, "all", [index]]),
            "rect": rect,
            "token": rng.randrange(100) if rng.random() < 0.9 else 100,
        }
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
    return {
        "op": "paste",
        "keyframe": index,
        "at": [top, left],
        "tokens": [[rng.randrange(100) for _ in range(cols)] for _ in range(rows)],
    }


def python_replay(plan, steps):
    words = {p["word"]: p["code"] for p in PALETTE}
    try:
        return apply_edits(plan, steps, word_to_code=words.__getitem__).to_dict(), None
    except EditError as exc:
        return None, str(exc)


@needs_node
@pytest.mark.parametrize("module", [EDITOR_JS, *PURE_MODULES], ids=lambda p: p.relative_to(WEB_JS).as_posix())
def test_node_check_parses_the_module(module):
    done = subprocess.run([NODE, "--check", str(module)], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_only_the_entry_imports_comfyui_and_the_op_list_is_not_hand_kept():
    names = {p.name for p in PURE_MODULES}
    assert names >= {"replay.js", "view.js", "editor.js", "timeline.js", "grid.js", "panels.js"}
    assert "scripts/app.js" in EDITOR_JS.read_text()
    for module in PURE_MODULES:
        text = module.read_text()
        assert "scripts/app.js" not in text and "scripts/api.js" not in text, module.name
        assert '"interpolate"' not in text and '"resample"' not in text, f"{module.name} lists Python's ops by hand"
    assert (WEB_JS / "planx_plan_editor.css").is_file()


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
    out = run_module(tmp_path, {"palette": PALETTE, "replays": replays})
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
    steps = [
        {"op": "fill", "keyframe": 0, "rect": [0, 1, 2, 3], "token": 5},
        {"op": "move_keyframe", "keyframe": 2, "time": 1.25},
        {"op": "fill_word", "keyframe": 1, "word": 'a "b"'},
    ]
    out = run_module(tmp_path, {"palette": PALETTE, "covers": covers, "formats": [steps, []]})
    for case, rects in zip(covers, out["covers"]):
        covered = {r * case["gw"] + c for t, left, b, rr in rects for r in range(t, b + 1) for c in range(left, rr + 1)}
        assert set(case["must"]) <= covered <= set(case["must"]) | set(case["free"])
        assert len(rects) <= len(case["must"])
    text, empty = out["formatted"]
    assert json.loads(text) == steps and json.loads(empty) == []
    assert text.splitlines()[1] == '  {"op": "fill", "keyframe": 0, "rect": [0, 1, 2, 3], "token": 5},'
    assert len(text.splitlines()) == len(steps) + 2


# -- the op list comes from Python ------------------------------------------------------------------------------


@needs_node
def test_js_op_list_is_the_payloads_plan_edits_ops(tmp_path):
    """Given the payload's `ops` (list(OPS), as editor_view sends it), parseEdits accepts exactly those op
    names and refuses any other the way parse_edits does; before a payload it refuses no op name."""
    ops = list(OPS)
    others = ["interpolatee", "FILL", "", "constructor", "toString", "__proto__", "hasOwnProperty", "fill ", None, 5]
    names = ops + others
    parses = [{"text": json.dumps([{"op": name, "time": 0.25}]), "ops": ops} for name in names]
    parses += [{"text": json.dumps([{"op": name, "time": 0.25}]), "ops": None} for name in names]
    parses += [
        {"text": '[{"op":"interpolate","time":0.25}]', "ops": ops},  # the example
        {"text": '["fill"]', "ops": ops},
        {"text": '[{"op": "fill"}, 3]', "ops": None},
    ]
    out = run_module(tmp_path, {"parses": parses})["parsed"]
    with_ops, without, tail = out[: len(names)], out[len(names) : 2 * len(names)], out[2 * len(names) :]
    assert [name for name, got in zip(names, with_ops) if got["steps"] is not None] == ops
    python_known = None
    for name, got in zip(names, with_ops):
        if name in OPS:
            assert got == {"steps": [{"op": name, "time": 0.25}], "checked": True}
            continue
        with pytest.raises(EditError) as refused:
            parse_edits([{"op": name}])
        python_known = str(refused.value).split("; known ops: ")[1]
        assert got["steps"] is None
        assert got["error"] == f"edit 0: unknown step {json.dumps(name)}; known ops: {python_known}"
    assert python_known == ", ".join(sorted(OPS))
    accepted = [name for name, got in zip(names, without) if got["steps"] is not None]
    assert accepted == [n for n in names if isinstance(n, str) and n]  # the server checks them when the node runs
    assert all(got["checked"] is False for got in without if got["steps"] is not None)
    assert tail[0]["steps"] == [{"op": "interpolate", "time": 0.25}]
    assert tail[1]["error"].startswith('edit 0: unknown step "fill"') and tail[2]["error"] == "edit 1: unknown step 3"


# -- continuous plans -------------------------------------------------------------------------------------------

SPACE = CodebookId("semanticgen-tiny-kl8", 8, "5be0c1d2e3f40516")


def continuous_plan(rng: random.Random):
    fps, num_frames = rng.choice([(8.0, 17), (12.0, 25), (24.0, 33)])
    grid, dim = rng.choice([((3, 3), 8), ((2, 4), 8)])
    times = keyframe_times(num_frames, fps, rng.choice([2.0, 4.0]))
    vectors = [[[round(rng.uniform(-2, 2), 3) for _ in range(dim)] for _ in range(grid[0] * grid[1])] for _ in times]
    return make_continuous_plan(
        vectors, times=times, fps=fps, num_frames=num_frames, width=64, height=64, space=SPACE, grid=grid
    )


def continuous_step(rng: random.Random, plan_dict: dict, count: int) -> dict:
    """One step of every op a continuous plan takes (interpolate included), sometimes one it refuses."""
    gh, gw = plan_dict["grid"]
    dim = plan_dict["codebook"]["size"]
    index = rng.randrange(max(count, 1))
    top, left = rng.randrange(gh), rng.randrange(gw)
    rect = [top, left, rng.randrange(top, gh), rng.randrange(left, gw)]
    video = plan_dict["video"]
    time = rng.uniform(0, (video["num_frames"] - 1) / video["fps"]) if rng.random() < 0.8 else random_time(rng, video)
    vector = [round(rng.uniform(-1, 1), 2) for _ in range(dim)]
    coin = rng.random() < 0.5
    op = (
        "fill_word"
        if rng.random() < 0.04
        else rng.choice(
            [
                "interpolate",
                "interpolate",
                "move_keyframe",
                "duplicate_keyframe",
                "delete_keyframe",
                "insert_keyframe",
                "fill",
                "paste",
                "copy_region",
                "copy_keyframe",
                "resample",
                "lock",
                "note",
            ]
        )
    )
    steps = {
        "interpolate": {"op": op, "time": time, "note": "between"},
        "move_keyframe": {"op": op, "keyframe": index, "time": time},
        "duplicate_keyframe": {"op": op, "keyframe": index, "time": time},
        "delete_keyframe": {"op": op, "keyframe": index},
        "insert_keyframe": {"op": op, "time": time, **({"vectors": [vector] * (gh * gw)} if coin else {})},
        "fill": {"op": op, "keyframe": rng.choice([index, "all"]), "rect": rect, "vector": vector},
        "paste": {"op": op, "keyframe": index, "at": [top, left], "vectors": [[vector]]},
        "copy_region": {"op": op, "from_keyframe": 0, "keyframe": index, "rect": rect},
        "copy_keyframe": {"op": op, "from_keyframe": 0, **({"time": time} if coin else {"keyframe": index})},
        "resample": {"op": op, "rate": rng.choice([1.0, 2.0, 4.0])},
        "lock": {"op": op, "keyframe": index, "locked": rng.random() < 0.7},
        "note": {"op": op, "keyframe": index, "text": "n"},
        "fill_word": {"op": op, "keyframe": index, "word": "cup"},  # refused on a continuous plan
    }
    return steps[op]


CONTINUOUS_RUNNER = """
import { readFileSync } from "node:fs";
import { fire, makeNode, register, stepLines } from "./fake_dom.js";
const cases = JSON.parse(readFileSync(0, "utf8"));
const api = await register();
const out = [];
for (const [n, c] of cases.entries()) {
  const node = makeNode(100 + n, c.text);
  const before = { ...api.get(node.id), lines: stepLines(node) };
  if (c.payload) node.onExecuted({ planx_editor: [c.payload] });
  else fire("execution_error", { node_id: String(node.id), exception_message: c.error, prompt_id: "p" });
  const after = { ...api.get(node.id), lines: stepLines(node), parsed: api.parseEdits(c.text, c.ops) };
  node.widgets[0].value = c.text.replace(/\\]\\s*$/, ', {"op": "lock", "keyframe": 0}]');  // one more step
  out.push({ before, after, changed: api.get(node.id) });
}
process.stdout.write(JSON.stringify(out));
"""


def editor_payload(base, edited) -> dict:
    """What editor_view (nodes/plan_nodes.py) sends for a continuous plan; cell colours are stand-ins."""

    def colours(plan):
        return [["#808080"] * plan.cells for _ in plan.keyframes]

    return {
        "base": base.to_dict(),
        "plan": edited.to_dict(),
        "error": None,
        "colours": {},
        "words": {},
        "palette": [],
        "cell_colours": {"base": colours(base), "plan": colours(edited)},
        "ops": list(OPS),
    }


@needs_node
def test_continuous_plans_parse_and_show_the_servers_plan(tmp_path):
    """A continuous plan is read-only in the editor: it parses the edit text (every op, interpolate
    included), lists the steps, and draws the server's plan, whose keyframe times are apply_edits'."""
    rng = random.Random(99)
    cases, expected = [], []
    for _ in range(80):
        plan = continuous_plan(rng)
        base = plan.to_dict()
        steps, count = [], len(plan.keyframes)
        for _ in range(rng.randrange(1, 6)):
            steps.append(continuous_step(rng, base, count))
            count += {"duplicate_keyframe": 1, "insert_keyframe": 1, "interpolate": 1, "delete_keyframe": -1}.get(
                steps[-1]["op"], 0
            )
        text = json.dumps(steps, indent=1)
        try:
            edited, error = apply_edits(plan, text), None
        except EditError as exc:
            edited, error = None, str(exc)
        cases.append(
            {
                "text": text,
                "ops": list(OPS),
                "error": error,
                "payload": editor_payload(plan, edited) if edited is not None else None,
            }
        )
        expected.append((steps, edited, error))
    assert 30 < sum(error is None for *_, error in expected) < 75  # both outcomes exercised
    assert {s["op"] for steps, _, error in expected if error is None for s in steps} >= set(OPS) - {"fill_word"}
    out = run_js(tmp_path, CONTINUOUS_RUNNER, cases)
    for got, (steps, edited, error) in zip(out, expected):
        before, after, changed = got["before"], got["after"], got["changed"]
        # before the node runs: every op passes, the ones the editor does not replay are left to the server
        assert before["steps"] == steps and not before["hasRun"] and before["plan"] is None
        assert before["status"] == f"Run the workflow to see the plan; {len(steps)} edit{'s' * (len(steps) != 1)} kept"
        unchecked = [
            i for i, s in enumerate(steps) if s["op"] in ("interpolate", "copy_region", "copy_keyframe", "resample")
        ]  # ops the editor does not replay
        assert unchecked == [i for i, line in enumerate(before["lines"]) if line["cls"] == "unchecked"]
        assert all(
            ("checked when the node runs" in line["text"]) == (line["cls"] == "unchecked") for line in before["lines"]
        )
        assert after["parsed"] == {"steps": steps, "checked": True}  # with the payload's op list
        assert after["steps"] == steps and len(after["lines"]) == len(steps) and not after["editable"]
        if error is None:  # the run's payload: the server's plan, read-only, current
            assert after["unchecked"] == [] and not any(line["cls"] for line in after["lines"])
            assert after["ops"] == list(OPS)
            assert after["source"] == "server" and after["hasRun"]
            assert after["times"] == [k.time for k in edited.keyframes]
            assert after["plan"]["keyframes"] == edited.to_dict()["keyframes"]
            assert after["status"].startswith("continuous plan (semanticgen-tiny-kl8, 8-dim vectors per cell)")
            assert "run the workflow" not in after["status"] and "edit" in after["status"]
            assert changed["steps"] == [*steps, {"op": "lock", "keyframe": 0}]
            assert changed["status"].endswith("run the workflow to see them applied")
        else:  # the node raised: the editor says so while the text is unchanged
            assert after["status"].startswith(f"The last run failed: {error}")
            assert not changed["status"].startswith("The last run failed")


# -- dispose and side effects -----------------------------------------------------------------------------------

DISPOSE_RUNNER = """
import { makeNode, NodeType, observers, register, removeNode } from "./fake_dom.js";
let removedBefore = 0;
NodeType.prototype.onRemoved = function () { removedBefore++; };  // a handler that was there first
const api = await register();
const out = { start: api.live() };
const [a, b] = [makeNode(1, "[]"), makeNode(2, "")];
const edits = a.widgets[0];
const hooked = edits.callback;
out.two = { ...api.live(), connected: observers.connected, inputListeners: edits.element.listeners.length };
const editor = a.planxEditor;
removeNode(a);
out.one = { ...api.live(), connected: observers.connected, inputListeners: edits.element.listeners.length,
  callbackRestored: edits.callback !== hooked, removedBefore, disposed: editor.disposed,
  rootListeners: editor.dom.root.listeners.length, listed: api.editors().map((e) => e.nodeId) };
editor.sync(true);  // a late draw of a removed node does nothing
edits.value = '[{"op": "lock", "keyframe": 0}]';
edits.element.dispatch("input");
out.late = { steps: editor.view?.steps ?? null };
removeNode(b);
out.none = { ...api.live(), connected: observers.connected, removedBefore };
process.stdout.write(JSON.stringify(out));
"""


@needs_node
def test_dispose_on_node_removal_releases_observer_and_listeners(tmp_path):
    out = run_js(tmp_path, DISPOSE_RUNNER)
    assert out["start"] == {"editors": 0, "observers": 0, "listeners": 0}
    assert out["two"]["editors"] == 2 and out["two"]["observers"] == 2 and out["two"]["listeners"] == 2
    assert out["two"]["connected"] == 2 and out["two"]["inputListeners"] == 1
    one = out["one"]
    assert (one["editors"], one["observers"], one["listeners"], one["connected"]) == (1, 1, 1, 1)
    assert one["inputListeners"] == 0 and one["callbackRestored"] and one["disposed"] and one["rootListeners"] == 0
    assert one["removedBefore"] == 1 and one["listed"] == [2]
    assert out["late"]["steps"] == []  # not re-read after removal
    assert out["none"] == {"editors": 0, "observers": 0, "listeners": 0, "connected": 0, "removedBefore": 2}


IMPORT_ALONE_RUNNER = """
const names = () => Object.getOwnPropertyNames(globalThis).sort();
const before = names();
const out = {};
for (const module of JSON.parse(process.argv[2] ?? "[]")) {
  try {
    const exports = await import(module);
    out[module] = { exports: Object.keys(exports).sort(), globals: names().filter((n) => !before.includes(n)) };
  } catch (exc) {
    out[module] = { error: String(exc?.stack ?? exc) };
  }
}
process.stdout.write(JSON.stringify(out));
"""


@needs_node
@pytest.mark.parametrize("module", [*PURE_MODULES, EDITOR_JS], ids=lambda p: p.relative_to(WEB_JS).as_posix())
def test_each_module_imports_alone_without_side_effects(tmp_path, module):
    """ComfyUI's frontend imports every .js under web/ on its own: each must load without a DOM and
    touch no global. (The entry registers the extension only where there is a window and an app.)"""
    run_js(tmp_path, "process.stdout.write('{}');")  # lay out the served tree
    target = "./extensions/planx/js/" + module.relative_to(WEB_JS).as_posix()
    (tmp_path / "run.js").write_text(IMPORT_ALONE_RUNNER)
    done = subprocess.run(
        [NODE, "run.js", json.dumps([target])], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)[target]
    assert "error" not in got, got.get("error")
    assert got["exports"] and got["globals"] == []
