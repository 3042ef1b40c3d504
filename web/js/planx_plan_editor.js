/**
 * Plan-X plan editor: a DOM widget on every "Edit Plan Tokens" node (PlanX_EditPlanTokens).
 *
 * This is the entry module, and the only one with side effects: it links planx_plan_editor.css,
 * registers the ComfyUI extension, listens to the server's run events and installs the test API
 * (window.__planx_editor). The editor itself lives in ./planx_editor/, pure modules that run
 * nothing on import (ComfyUI imports every .js under web/ on its own, so each must be harmless):
 *
 *   replay.js    edit text <-> steps, the JS replay of plan/edits.py, strokes -> rectangles
 *   view.js      what to draw for an edit text and a server payload (plan, status, marks)
 *   editor.js    PlanEditor: the state (the "edits" text), actions, dispose()
 *   timeline.js  ruler, keyframe headers (drag to retime), layout
 *   grid.js      a keyframe's cells: drawing, painting, the hover tip
 *   panels.js    DOM skeleton, tools, palette, step list
 *
 * Data contract (web/README.md has it in full). Python -> browser: when the node runs, its ui dict
 * reaches onExecuted(message) as message.planx_editor = [{base, plan, error, colours, words,
 * palette, ops, cell_colours?}], where `ops` are the names of planx_core.plan.OPS: the editor accepts
 * exactly those op names once it has a payload, and any op name before (the server checks them).
 * Browser -> Python: the "edits" text, a JSON array of steps, one per line. The editor is never
 * serialized (widget.serialize = false keeps it out of widgets_values, options.serialize = false
 * out of the API prompt), so a saved workflow carries the edit list and nothing else of ours.
 *
 * Geometry, for tests and mouse actions: each keyframe grid is a <canvas data-keyframe="i">
 * of gw*cell x gh*cell CSS pixels (cell = 10 by default), cell (row, col) at [col*cell, row*cell];
 * the node's transform scales it, so map through getBoundingClientRect. Headers are
 * <div data-keyframe="i" data-role="head">; the root carries data-planx-node=<id>.
 */
// Served at /extensions/<pack>/js/planx_plan_editor.js (WEB_DIRECTORY is ./web), so three levels up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { NODE_TYPE, PlanEditor } from "./planx_editor/editor.js";
import {
  coverCells, duplicateFrame, formatEdits, parseEdits, replayEdits, round6, roundHalfEven, snapTime,
} from "./planx_editor/replay.js";

const EDITORS = new Set();         // the editors of nodes not yet removed
const RUN_STEPS = new WeakMap();   // planx_editor payload -> the edit steps of the run that produced it
const STORED = new WeakMap();      // app.nodeOutputs object -> Map(node id -> payload read from /history)
const NO_OUTPUTS = {};             // the key while app.nodeOutputs is not an object
const LIVE = { observers: 0, listeners: 0 };  // what editors hold outside their DOM, for tests

function outputsKey() {
  const outputs = app.nodeOutputs;
  return outputs && typeof outputs === "object" ? outputs : NO_OUTPUTS;
}

function payload(message) {
  const data = message?.planx_editor;
  return Array.isArray(data) ? data[0] : data;
}

/**
 * What the editors need of ComfyUI and of each other. The frontend keeps each node's last ui
 * output in app.nodeOutputs, across Ctrl+Z (which removes and rebuilds the nodes) and workflow
 * tabs, and replaces that object when another workflow loads: a fresh editor takes its payload
 * from there. A payload read from /history is not in there, so STORED keeps it for as long as
 * the same app.nodeOutputs object is in use (so it also outlives the node's removal, for Ctrl+Z).
 */
const HOST = {
  app,
  runSteps: RUN_STEPS,
  storedPayload: (id) => payload(app.nodeOutputs?.[id]) ?? STORED.get(outputsKey())?.get(id) ?? null,
  remember(id, data) {
    const key = outputsKey();
    if (!STORED.has(key)) STORED.set(key, new Map());
    STORED.get(key).set(id, data);
  },
  track(kind, delta) {
    LIVE[kind] += delta;
  },
  forget(editor) {
    EDITORS.delete(editor);
  },
};

// ---------------------------------------------------------------------------------------------
// Registration and the test API
// ---------------------------------------------------------------------------------------------

function chain(proto, name, after) {
  const original = proto[name];
  proto[name] = function (...args) {
    const result = original?.apply(this, args);
    after.call(this, ...args);
    return result;
  };
}

function attachEditor(node) {
  if (node.planxEditor) return node.planxEditor;
  const editor = new PlanEditor(node, HOST);
  node.planxEditor = editor;
  EDITORS.add(editor);
  const size = node.computeSize?.();
  if (size) node.setSize([Math.max(node.size[0], 720, size[0]), Math.max(node.size[1], size[1])]);
  return editor;
}

/** Editors whose node is still in a graph, those of the open graph first. */
function liveEditors() {
  const open = (e) => app.graph?.getNodeById?.(e.node.id) === e.node;
  const all = [...EDITORS].filter((e) => e.node.graph);
  return [...all.filter(open), ...all.filter((e) => !open(e))];
}

function editorFor(nodeId) {
  const editor = liveEditors().find((e) => String(e.node.id) === String(nodeId));
  if (!editor) throw new Error(`no Plan-X editor on node ${nodeId}`);
  return editor;
}

/**
 * A node whose outputs were cached gets no "executed" message, so after a fully cached run (say,
 * Run right after reopening a workflow) fetch its ui output from /history instead.
 */
function watchRuns() {
  api.addEventListener("execution_start", ({ detail }) => {
    for (const editor of EDITORS) editor.runningPrompt = detail?.prompt_id ?? null;
  });
  api.addEventListener("execution_error", ({ detail }) => {
    const failed = String(detail?.node_id ?? "");
    for (const editor of liveEditors()) {
      if (String(editor.node.id) === failed) editor.setRunError(detail.exception_message, detail.prompt_id);
    }
  });
  api.addEventListener("execution_success", async ({ detail }) => {
    const promptId = detail?.prompt_id;
    const missing = liveEditors().filter((e) => e.receivedFor !== promptId);
    if (!promptId || !missing.length) return;
    try {
      const response = await api.fetchApi(`/history/${encodeURIComponent(promptId)}`);
      const outputs = (await response.json())?.[promptId]?.outputs ?? {};
      for (const editor of missing) {
        const data = payload(outputs[String(editor.node.id)]);
        if (data) editor.setServerData(data, promptId);
      }
    } catch (exc) {
      console.warn("planx editor: could not read the cached plan from /history", exc);
    }
  });
}

function installTestApi() {
  window.__planx_editor = {
    ready: true,
    editors: () => liveEditors().map((e) => e.describe()),
    get: (nodeId) => editorFor(nodeId).describe(),
    paint: (nodeId, keyframe, row, col, code) => editorFor(nodeId).paintCells(keyframe, [[row, col]], { code }),
    paintCells: (nodeId, keyframe, cells, code) => editorFor(nodeId).paintCells(keyframe, cells, { code }),
    paintWord: (nodeId, keyframe, cells, word) => editorFor(nodeId).paintCells(keyframe, cells, { word }),
    setBrush: (nodeId, text) => { editorFor(nodeId).setBrushFromText(String(text)); return editorFor(nodeId).brush; },
    pick: (nodeId, keyframe, row, col) => editorFor(nodeId).pickCell(keyframe, row, col),
    select: (nodeId, keyframe) => { editorFor(nodeId).select(keyframe); return editorFor(nodeId).selected; },
    retime: (nodeId, keyframe, time) => editorFor(nodeId).retime(keyframe, time),
    duplicate: (nodeId, keyframe) => editorFor(nodeId).duplicate(keyframe),
    remove: (nodeId, keyframe) => editorFor(nodeId).remove(keyframe),
    lock: (nodeId, keyframe, locked = true) => editorFor(nodeId).lock(keyframe, locked),
    undo: (nodeId) => editorFor(nodeId).undo(),
    clear: (nodeId) => editorFor(nodeId).clear(),
    cellCenter: (nodeId, keyframe, row, col) => editorFor(nodeId).cellCenter(keyframe, row, col),
    headCenter: (nodeId, keyframe) => editorFor(nodeId).headCenter(keyframe),
    timeToClientX: (nodeId, time) => editorFor(nodeId).timeToClientX(time),
    replay: (base, steps, palette = []) => replayEdits(base, steps, (w) => palette.find((p) => p.word === w)?.code),
    formatEdits,
    parseEdits,
    /** What the editors hold: editors not disposed, their ResizeObservers and outside listeners. */
    live: () => ({ editors: EDITORS.size, ...LIVE }),
  };
}

/** Link planx_plan_editor.css (once) from beside this module. */
function installStyle() {
  if (document.getElementById("planx-editor-style")) return;
  const link = document.createElement("link");
  link.id = "planx-editor-style";
  link.rel = "stylesheet";
  link.href = new URL("./planx_plan_editor.css", import.meta.url).href;
  document.head.append(link);
}

if (typeof window !== "undefined" && app?.registerExtension) {
  installStyle();
  app.registerExtension({
    name: "planx.plan_editor",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name !== NODE_TYPE) return;
      chain(nodeType.prototype, "onNodeCreated", function () { attachEditor(this); });
      chain(nodeType.prototype, "onExecuted", function (message) {
        const data = payload(message);
        if (data) attachEditor(this).setServerData(data);
      });
      chain(nodeType.prototype, "onConfigure", function () {
        if (!this.planxEditor?.adoptStoredOutput()) this.planxEditor?.sync(true);
      });
      chain(nodeType.prototype, "onRemoved", function () { this.planxEditor?.dispose(); });
    },
    setup() {
      watchRuns();
      installTestApi();
    },
  });
}

export { replayEdits, formatEdits, parseEdits, coverCells, duplicateFrame, snapTime, roundHalfEven, round6 };
