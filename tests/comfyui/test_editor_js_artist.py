"""The plan editor's JavaScript for the artist's pass (issue 17), in node on the small fake DOM of
test_editor_js (no browser): the editor cannot reach a dead state.

- a word the planner does not know is refused at the brush, with the nearest known words offered;
- a step that fails (typed by hand) is skipped and marked, the rest drawn, and every control stays live;
- text that does not parse keeps the last good view; Undo, Redo and Clear still work;
- a control that cannot act looks disabled and says why; the status line always has text;
- the palette keeps the payload's order and hides grammar words until asked;
- Delete deletes the selected keyframe (and never reaches the canvas); the brush and the editor's undo
  survive the node being rebuilt (ComfyUI's Ctrl+Z / Ctrl+Y);
- times are written as Python's format_time writes them; a JSON file that is not a plan is named so.
"""

from __future__ import annotations

import json
import random

import pytest
from test_editor_js import needs_node, run_js

from planx_core.plan import OPS, CodebookId, make_plan
from planx_core.plan.picture import format_time

PALETTE = [
    {"word": "background", "code": 5, "hidden": False},
    {"word": "red", "code": 16, "hidden": False},
    {"word": "green", "code": 17, "hidden": False},
    {"word": "blue", "code": 18, "hidden": False},
    {"word": "yellow", "code": 19, "hidden": False},
    {"word": "and", "code": 1, "hidden": True},
    {"word": "the", "code": 6, "hidden": True},
]


def payload() -> dict:
    times = [0.0, 0.5, 1.0, 1.5, 2.0]
    tokens = [[5] * 81 for _ in times]
    plan = make_plan(
        tokens, times=times, fps=8.0, num_frames=17, width=64, height=64, codebook=CodebookId("ta-tok", 29, "ab")
    )
    colours = {str(p["code"]): "#123456" for p in PALETTE}
    colours["16"] = "#932829"
    return {
        "base": plan.to_dict(),
        "plan": plan.to_dict(),
        "error": None,
        "colours": colours,
        "words": {str(p["code"]): p["word"] for p in PALETTE},
        "palette": PALETTE,
        "ops": list(OPS),
        "colour_source": "table",
    }


RUNNER = """
import { readFileSync } from "node:fs";
import { makeNode, register, removeNode } from "./fake_dom.js";
const { payload } = JSON.parse(readFileSync(0, "utf8"));
const api = await register();
const out = {};
const get = (node) => api.get(node.id);
const setText = (node, text) => { node.widgets[0].value = text; node.widgets[0].element.dispatch("input"); };

// before a run: every control but Text says why it cannot act
const fresh = makeNode(1, "");
out.fresh = get(fresh);
out.freshButtons = Object.fromEntries(Object.entries(fresh.planxEditor.dom.buttons).map(([a, b]) =>
  [a, { off: b.classList.contains("off"), title: b.title, aria: b.getAttribute("aria-disabled") }]));

// an unknown word at the brush
const node = makeNode(2, "");
node.onExecuted({ planx_editor: [payload] });
api.setBrush(2, "red");
const brushBefore = get(node).brush;
api.setBrush(2, "tree");
out.unknown = { ...get(node), brushBefore };
out.unknownPaint = api.paintWord(2, 0, [[0, 0]], "tree");
out.paletteShown = get(node).palette;
node.planxEditor.dom.palette.querySelector("button[data-action=all-words]").dispatch("click");
out.paletteAll = get(node).palette;

// a failing step typed by hand, then a fill after it: skipped, marked, the rest drawn, controls live
setText(node, JSON.stringify([
  { op: "move_keyframe", keyframe: 1, time: 1.0 },
  { op: "fill_word", keyframe: 0, rect: [0, 0, 0, 0], word: "tree" },
  { op: "fill", keyframe: 2, rect: [1, 1, 1, 1], token: 16 },
]));
out.failing = get(node);
out.duplicate = api.duplicate(2, 0);
out.afterDuplicate = get(node);
out.removeStep = api.removeStep(2, 0);
out.afterRemove = get(node);

// text that does not parse keeps the last good view; undo brings the text back
const good = get(node).text;
setText(node, "[{");
out.broken = get(node);
out.brokenPaint = api.paint(2, 0, 0, 0, 16);
out.undoBroken = api.undo(2);
out.afterUndoBroken = { text: get(node).text, good };

// undo / redo, and a new edit forgets redo
api.clear(2);
const cleared = get(node).text;
api.undo(2);
const undone = get(node).text;
out.redo = api.redo(2);
out.redoText = { cleared, undone, now: get(node).text };
api.undo(2);
api.lock(2, 0, true);
out.redoAfterEdit = { result: api.redo(2), buttons: get(node).buttons };

// the Delete key on the focused editor deletes the selected keyframe and stops there
api.select(2, 3);
let stopped = false;
const root = node.planxEditor.dom.root;
root.dispatch("keydown", { key: "Delete", target: root, stopPropagation() { stopped = true; } });
out.deleteKey = { times: get(node).times, stopped, info: get(node).info };

// ComfyUI's undo rebuilds the node: the brush, the selection and the editor's undo survive
api.setBrush(2, "blue");
api.select(2, 1);
const textNow = get(node).text;
removeNode(node);
const again = makeNode(2, textNow);
again.onConfigure?.();
out.rebuilt = get(again);
out.rebuiltUndo = api.undo(2);

// a linked edits input: read-only, and every editing control says so
const linked = makeNode(3, "");
linked.inputs.push({ name: "edits", link: 7 });
linked.onExecuted({ planx_editor: [payload] });
out.linked = get(linked);

out.times = JSON.parse(readFileSync("times.json", "utf8")).map(api.formatTime);
out.notAPlan = [api.notAPlan(JSON.stringify({ nodes: [], links: [] }), "wf.json"),
  api.notAPlan("{", "broken.json"), api.notAPlan(JSON.stringify({ keyframes: [] }), "p.json")];
process.stdout.write(JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("editor_js")
    rng = random.Random(3)
    times = [f / fps for fps in (8.0, 12.0, 16.0, 24.0, 30.0) for f in range(0, 70)] + [
        rng.uniform(0, 9) for _ in range(300)
    ]
    (tmp / "times.json").write_text(json.dumps(times))
    result = run_js(tmp, "process.stdout.write('{}');")  # lay out the served tree
    assert result == {}
    result = run_js(tmp, RUNNER, {"payload": payload()})
    result["_times"] = times
    return result


@needs_node
def test_before_a_run_controls_look_disabled_and_say_why(out):
    assert out["fresh"]["status"].startswith("Run the workflow to see the plan")
    for action in ("pick", "duplicate", "delete", "lock"):
        button = out["freshButtons"][action]
        assert button["off"] and button["aria"] == "true" and "Run the workflow first" in button["title"], action
    assert "Nothing to undo" in out["freshButtons"]["undo"]["title"]
    assert not out["freshButtons"]["text"]["off"]


@needs_node
def test_an_unknown_word_is_refused_at_the_brush_with_the_nearest_known_words(out):
    unknown = out["unknown"]
    assert unknown["brush"] == out["unknown"]["brushBefore"] == {"code": 16, "word": "red"}  # the brush stays
    assert "not a word the planner knows" in unknown["info"] and "green" in unknown["info"]
    assert unknown["suggestions"][0] == "green" and len(unknown["suggestions"]) == 3
    assert unknown["text"] == ""  # nothing reached the edit list
    assert out["unknownPaint"]["ok"] is False and out["unknownPaint"]["suggestions"]


@needs_node
def test_the_palette_keeps_the_payloads_order_and_hides_grammar_words(out):
    assert out["paletteShown"] == ["background", "red", "green", "blue", "yellow"]
    assert out["paletteAll"] == [p["word"] for p in PALETTE]


@needs_node
def test_a_failing_step_is_marked_and_the_editor_stays_live(out):
    failing = out["failing"]
    assert failing["editable"] and failing["source"] == "replay"
    assert failing["marks"]["0"]["cls"] == "bad" and failing["marks"]["1"]["cls"] == "skip"
    assert "nearest known words: green" in failing["marks"]["1"]["note"]
    assert "remove edit 0" in failing["status"] and "keyframe 1 already sits" not in failing["status"][:0]
    assert failing["plan"]["keyframes"][2]["tokens"][10] == 16  # the fill after the failures is drawn
    assert failing["times"] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(reason == "" for action, reason in failing["buttons"].items() if action != "redo")
    assert out["duplicate"]["ok"] and out["afterDuplicate"]["steps"][-1]["op"] == "duplicate_keyframe"
    assert "Duplicated keyframe 0" in out["afterDuplicate"]["info"]
    assert out["removeStep"]["ok"] and out["afterRemove"]["steps"][0]["op"] == "fill_word"
    assert "0" not in out["afterRemove"]["marks"] or out["afterRemove"]["marks"]["0"]["cls"] == "skip"


@needs_node
def test_text_that_does_not_parse_keeps_the_last_good_view(out):
    broken = out["broken"]
    assert broken["bad"] and broken["status"].startswith("The edit text is not valid")
    assert broken["plan"] is not None and broken["source"] == "last-good"
    assert "not valid JSON" in broken["buttons"]["duplicate"] and broken["buttons"]["undo"] == ""
    assert out["brokenPaint"]["ok"] is False and "not valid JSON" in out["brokenPaint"]["reason"]
    assert out["undoBroken"]["ok"] and out["afterUndoBroken"]["text"] == out["afterUndoBroken"]["good"]


@needs_node
def test_undo_redo_and_a_new_edit_forgets_redo(out):
    assert out["redo"]["ok"]
    texts = out["redoText"]
    assert texts["now"] == texts["cleared"] != texts["undone"]
    assert out["redoAfterEdit"]["result"]["ok"] is False
    assert "Nothing to redo" in out["redoAfterEdit"]["buttons"]["redo"]


@needs_node
def test_the_delete_key_deletes_the_selected_keyframe_and_stops_there(out):
    deleted = out["deleteKey"]
    assert deleted["stopped"] and len(deleted["times"]) == 5 and "Deleted keyframe 3" in deleted["info"]


@needs_node
def test_brush_selection_and_undo_survive_a_rebuilt_node(out):
    rebuilt = out["rebuilt"]
    assert rebuilt["hasRun"] and rebuilt["brush"] == {"code": 18, "word": "blue"} and rebuilt["selected"] == 1
    assert out["rebuiltUndo"]["ok"]


@needs_node
def test_linked_edits_are_read_only_and_say_so(out):
    linked = out["linked"]
    assert not linked["editable"]
    assert "come from a link" in linked["buttons"]["duplicate"]


@needs_node
def test_times_are_written_as_python_writes_them_and_non_plans_are_named(out):
    assert out["times"] == [format_time(t) for t in out["_times"]]
    workflow, broken, plan = out["notAPlan"]
    assert workflow.startswith("wf.json is not a Plan-X plan: it is a ComfyUI workflow")
    assert broken.startswith("broken.json cannot be read as JSON") and plan is None
