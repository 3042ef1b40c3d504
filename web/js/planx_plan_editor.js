/**
 * Plan-X in the ComfyUI frontend: the plan editor (a DOM widget on every "Edit Plan Tokens" node,
 * PlanX_EditPlanTokens), Load Plan's upload button and Save Plan's line naming the file it wrote.
 *
 * This is the entry module, and the only one with side effects: it links planx_plan_editor.css,
 * registers the ComfyUI extension, listens to the server's run events and installs the test API
 * (window.__planx_editor). The editor itself lives in ./planx_editor/, pure modules that run
 * nothing on import (ComfyUI imports every .js under web/ on its own, so each must be harmless):
 *
 *   replay.js    edit text <-> steps, the JS replay of plan/edits.py, strokes -> rectangles, times
 *   view.js      what to draw for an edit text and a server payload (plan, status, marks)
 *   words.js     the palette's words: lookups, the nearest known words to an unknown one
 *   editor.js    PlanEditor: the state (the "edits" text), widgets, rendering, dispose()
 *   actions.js   what the buttons and keys do (retime, duplicate, delete, lock, undo, redo, ...)
 *   timeline.js  ruler, keyframe headers (drag to retime), layout (cells sized to the node)
 *   grid.js      a keyframe's cells: drawing, painting, the hover tip
 *   palette.js   the brush, the swatches, typed words, the eyedropper
 *   panels.js    DOM skeleton, status line, tools (disabled ones say why), step list, grip
 *   files.js     Load Plan's upload, Save Plan's saved-file line
 *
 * Data contract (web/README.md has it in full). Python -> browser: when the node runs, its ui dict
 * reaches onExecuted(message) as message.planx_editor = [{base, plan, error, colours, words,
 * palette, ops, colour_source, cell_colours?}], where `ops` are the names of planx_core.plan.OPS: the
 * editor accepts exactly those op names once it has a payload, and any op name before (the server checks
 * them). Browser -> Python: the "edits" text, a JSON array of steps, one per line. The editor is never
 * serialized (widget.serialize = false keeps it out of widgets_values, options.serialize = false out of
 * the API prompt), so a saved workflow carries the edit list and nothing else of ours.
 */
// Served at /extensions/<pack>/js/planx_plan_editor.js (WEB_DIRECTORY is ./web), so three levels up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";
import { NODE_TYPE, PlanEditor } from "./planx_editor/editor.js";
import {
  buildSavedPanel, buildUploadPanel, LOAD_PLAN, notAPlan, SAVE_PLAN, showSaved, uploadPlan,
} from "./planx_editor/files.js";
import {
  coverCells, duplicateFrame, formatEdits, formatTime, parseEdits, replayEdits, round6, roundHalfEven, snapTime,
} from "./planx_editor/replay.js";

const EDITORS = new Set();         // the editors of nodes not yet removed
const RUN_STEPS = new WeakMap();   // planx_editor payload -> the edit steps of the run that produced it
const UI_STATE = new Map();        // "<workflow>|<node id>" -> what an editor keeps across node rebuilds
const LIVE = { observers: 0, listeners: 0 };  // what editors hold outside their DOM, for tests
const PANELS = new WeakMap();      // Load Plan / Save Plan node -> its panel

function payload(message) {
  const data = message?.planx_editor;
  return Array.isArray(data) ? data[0] : data;
}

/** The open workflow's identity: undo, redo and tab switches rebuild its nodes but keep it. */
function workflowKey() {
  const workflow = app.extensionManager?.workflow?.activeWorkflow;
  return String(workflow?.path ?? workflow?.key ?? "");
}

/**
 * What the editors need of ComfyUI and of each other. The frontend keeps each node's last ui output in
 * app.nodeOutputs, but not one read from /history (a cached run), and may swap that object on undo, redo
 * or a tab switch. So the host also keeps, per workflow and node, the last payload and the editor's own
 * state (brush, selection, its undo and redo texts, the last good view): a node rebuilt by Ctrl+Z or Ctrl+Y
 * gets its editor back as it was.
 */
const HOST = {
  app,
  runSteps: RUN_STEPS,
  uiState(id) {
    const key = `${workflowKey()}|${id}`;
    if (!UI_STATE.has(key)) UI_STATE.set(key, {});
    return UI_STATE.get(key);
  },
  storedPayload: (id) => payload(app.nodeOutputs?.[id]) ?? HOST.uiState(id).payload ?? null,
  remember(id, data) {
    HOST.uiState(id).payload = data;
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
  if (size) node.setSize([Math.max(node.size[0], 760, size[0]), Math.max(node.size[1], size[1])]);
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

async function postUpload(form) {
  const response = await api.fetchApi("/upload/image", { method: "POST", body: form });
  if (response.status !== 200) throw new Error(`the server answered ${response.status} ${response.statusText}`);
  return response.json();
}

function attachPanel(node, kind) {
  if (PANELS.has(node)) return PANELS.get(node);
  const panel = kind === LOAD_PLAN
    ? buildUploadPanel((file) => uploadPlan(node, panel, file, postUpload))
    : buildSavedPanel();
  const widget = node.addDOMWidget("planx_plan_file", "planx_plan_file", panel.root, {
    serialize: false, hideOnZoom: true, getMinHeight: () => (kind === LOAD_PLAN ? 70 : 54),
  });
  widget.serialize = false;
  PANELS.set(node, panel);
  return panel;
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
    redo: (nodeId) => editorFor(nodeId).redo(),
    clear: (nodeId) => editorFor(nodeId).clear(),
    removeStep: (nodeId, index) => editorFor(nodeId).removeStep(index),
    cellCenter: (nodeId, keyframe, row, col) => editorFor(nodeId).cellCenter(keyframe, row, col),
    headCenter: (nodeId, keyframe) => editorFor(nodeId).headCenter(keyframe),
    timeToClientX: (nodeId, time) => editorFor(nodeId).timeToClientX(time),
    replay: (base, steps, palette = []) => replayEdits(base, steps, (w) => palette.find((p) => p.word === w)?.code),
    formatEdits,
    parseEdits,
    formatTime,
    notAPlan,
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

function registerEditor(nodeType) {
  chain(nodeType.prototype, "onNodeCreated", function () { attachEditor(this); });
  chain(nodeType.prototype, "onExecuted", function (message) {
    const data = payload(message);
    if (data) attachEditor(this).setServerData(data);
  });
  chain(nodeType.prototype, "onConfigure", function () {
    if (!this.planxEditor?.adoptStoredOutput()) this.planxEditor?.sync(true);
  });
  chain(nodeType.prototype, "onRemoved", function () { this.planxEditor?.dispose(); });
}

function registerFiles(nodeType, kind) {
  chain(nodeType.prototype, "onNodeCreated", function () { attachPanel(this, kind); });
  if (kind === SAVE_PLAN) {
    chain(nodeType.prototype, "onExecuted", function (message) {
      const saved = message?.planx_plans?.[0];
      if (!saved) return;
      const query = new URLSearchParams({ filename: saved.filename, subfolder: saved.subfolder ?? "", type: "output" });
      showSaved(attachPanel(this, kind), saved, api.apiURL(`/view?${query}`));
    });
    return;
  }
  nodeType.prototype.onDragOver = function (e) {
    return !!e?.dataTransfer?.types?.includes?.("Files");
  };
  nodeType.prototype.onDragDrop = function (e) {
    const file = [...(e?.dataTransfer?.files ?? [])].find((f) => f.name.toLowerCase().endsWith(".json"));
    if (!file) return false;
    uploadPlan(this, attachPanel(this, kind), file, postUpload);
    return true;
  };
}

if (typeof window !== "undefined" && app?.registerExtension) {
  installStyle();
  app.registerExtension({
    name: "planx.plan_editor",
    async beforeRegisterNodeDef(nodeType, nodeData) {
      if (nodeData?.name === NODE_TYPE) registerEditor(nodeType);
      else if (nodeData?.name === LOAD_PLAN || nodeData?.name === SAVE_PLAN) registerFiles(nodeType, nodeData.name);
    },
    setup() {
      watchRuns();
      installTestApi();
    },
  });
}

export { replayEdits, formatEdits, parseEdits, coverCells, duplicateFrame, snapTime, roundHalfEven, round6 };
