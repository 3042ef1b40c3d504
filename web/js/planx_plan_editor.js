/**
 * Plan-X plan editor: a DOM widget on every "Edit Plan Tokens" node (PlanX_EditPlanTokens).
 *
 * What it shows: a timeline of the plan's keyframes, each a gh x gw grid of token cells drawn in
 * the plan's colours (hover a cell for its nearest word and code). What it edits: nothing but the
 * node's multiline STRING widget "edits", a JSON array of edit steps that
 * planx_core/plan_edits.py replays on the input plan. The editor itself is never serialized
 * (widget.serialize = false keeps it out of the workflow's widgets_values, options.serialize = false
 * out of the API prompt), so a saved workflow carries the edit list and nothing else of ours.
 *
 * Data contract, Python -> browser: when the node runs, its ui dict reaches onExecuted(message) as
 *   message.planx_editor = [{ base:  <Plan.to_dict() of the input plan, before the edits>,
 *                             plan:  <Plan.to_dict() after the edits> | null when they failed,
 *                             error: null | "edit error text",
 *                             colours: {"<code>": "#rrggbb"}, words: {"<code>": "word"},
 *                             palette: [{word, code}, ...] }]
 * Browser -> Python: the "edits" text, one step per line, e.g.
 *   [
 *     {"op": "fill", "keyframe": 0, "rect": [2, 3, 4, 5], "token": 1234},
 *     {"op": "move_keyframe", "keyframe": 2, "time": 1.25}
 *   ]
 * The editor emits fill (with rect), fill_word, move_keyframe, duplicate_keyframe,
 * delete_keyframe and lock; it replays those (plus paste, insert_keyframe and note) in JS to draw
 * replay(base, edits) with the semantics of plan_edits.py: times snap to the nearest video frame,
 * keyframes re-sort by time, keyframe indices are those at the time a step runs. A step it cannot
 * replay (another op, a word outside the palette) makes it show the server's plan as is.
 *
 * A continuous plan (SemanticGen: keyframes of semantic vectors, base.kind === "continuous") has no
 * codes: the payload then carries cell_colours: {base: [[hex per cell] per keyframe], plan: [...]},
 * the plan picture's principal-component colours, and the editor shows the server's plan read-only
 * in them (hover a cell for its vector); its edits are the text (fill with "vector", paste, ...).
 *
 * Geometry, for tests and mouse actions: each keyframe grid is a <canvas data-keyframe="i">
 * of gw*cell x gh*cell CSS pixels (cell = 10 by default, see the zoom buttons), cell (row, col)
 * at [col*cell, row*cell]; the node's transform scales it, so map through getBoundingClientRect.
 * Headers are <div data-keyframe="i" data-role="head">; the root carries data-planx-node=<id>.
 * A test API lives on window.__planx_editor (see installTestApi) and node.planxEditor.
 */
// Served at /extensions/<pack>/js/planx_plan_editor.js (WEB_DIRECTORY is ./web), so three levels up.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE_TYPE = "PlanX_EditPlanTokens";
const EDITS_WIDGET = "edits";
const EDITOR_WIDGET = "planx_plan_editor";
const ZOOMS = [6, 8, 10, 12, 16, 20, 24];
const DEFAULT_CELL = 10;
const EDITS_HEIGHT = 64;    // the edits text box keeps this height: the editor lists the steps itself
const GRID_Y = 48;          // top of the keyframe grids inside the timeline track
const HEAD_Y = 18;          // top of the keyframe headers
const HEAD_H = 18;
const HEAD_W = 58;
const GAP = 12;             // least horizontal gap between two grids
const PYTHON_OPS = new Set(["fill", "fill_word", "paste", "copy_region", "copy_keyframe",
  "insert_keyframe", "duplicate_keyframe", "delete_keyframe", "move_keyframe", "resample", "lock", "note"]);
const EDITORS = new Set();
const RUN_STEPS = new WeakMap();  // planx_editor payload -> the edit steps of the run that produced it
const LAST_DATA = new Map();      // node id -> {data, outputs: the app.nodeOutputs object it belongs to}

// ---------------------------------------------------------------------------------------------
// Numbers as Python rounds them
// ---------------------------------------------------------------------------------------------

/** Python's round(x): halves go to the even neighbour. */
function roundHalfEven(x) {
  if (Math.abs(x % 1) === 0.5) return 2 * Math.round(x / 2);
  return Math.round(x);
}

/** Python's round(x, 6). */
function round6(x) {
  const scaled = x * 1e6;
  if (Math.abs(scaled % 1) === 0.5) return roundHalfEven(scaled) / 1e6;
  return parseFloat(x.toFixed(6));
}

function frameOf(plan, time) {
  return roundHalfEven(time * plan.video.fps);
}

/** plan_edits._snap: a time moved onto the nearest video frame. */
function snapTime(plan, time) {
  return round6(frameOf(plan, time) / plan.video.fps);
}

function frameTime(plan, frame) {
  return round6(frame / plan.video.fps);
}

function duration(plan) {
  return (plan.video.num_frames - 1) / plan.video.fps;
}

function isInt(v) {
  return typeof v === "number" && Number.isInteger(v);
}

function isNumber(v) {
  return typeof v === "number" && Number.isFinite(v) && Math.abs(v) < 1e12;
}

// ---------------------------------------------------------------------------------------------
// Edit list text <-> steps
// ---------------------------------------------------------------------------------------------

/** Widget text -> {steps} or {error}. Empty text is no edits, as in plan_edits.parse_edits. */
function parseEdits(text) {
  if (typeof text !== "string" || !text.trim()) return { steps: [] };
  let value;
  try {
    value = JSON.parse(text);
  } catch (exc) {
    return { steps: null, error: `the edit list does not parse as JSON (${exc.message}); clear it or fix the text` };
  }
  if (!Array.isArray(value)) return { steps: null, error: "the edit list must be a JSON array of steps" };
  for (const [index, step] of value.entries()) {
    const op = step && typeof step === "object" ? step.op : step;
    if (!PYTHON_OPS.has(op)) return { steps: null, error: `edit ${index}: unknown step ${JSON.stringify(op)}` };
  }
  return { steps: value };
}

/** One value as compact JSON with a space after ',' and ':'. */
function compactJson(value) {
  if (Array.isArray(value)) return `[${value.map(compactJson).join(", ")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${compactJson(v)}`).join(", ")}}`;
  }
  return JSON.stringify(value ?? null);
}

/** Steps -> widget text: pretty but compact, one step per line. */
function formatEdits(steps) {
  if (!steps.length) return "[]";
  return `[\n${steps.map((s) => `  ${compactJson(s)}`).join(",\n")}\n]`;
}

function sameStep(a, b) {
  return compactJson(a) === compactJson(b);
}

// ---------------------------------------------------------------------------------------------
// Replay: plan_edits.py semantics for the ops the editor emits
// ---------------------------------------------------------------------------------------------

/** A plan of semantic vectors (SemanticGen), not token ids. */
function isContinuous(plan) {
  return plan?.kind === "continuous";
}

class StepError extends Error {}
class Unsupported extends Error {}

function clonePlan(plan) {
  return JSON.parse(JSON.stringify(plan));
}

function field(step, key, fallback) {
  if (!(key in step)) {
    if (fallback === undefined) throw new StepError(`missing field '${key}'`);
    return fallback;
  }
  return step[key];
}

function keyframeIndex(plan, value, key = "keyframe") {
  if (!isInt(value) || value < 0 || value >= plan.keyframes.length) {
    throw new StepError(`${key} ${JSON.stringify(value)} does not exist: the plan has keyframes 0..${plan.keyframes.length - 1}`);
  }
  return value;
}

function targets(plan, step) {
  const value = field(step, "keyframe");
  if (value === "all") return plan.keyframes.map((_, i) => i);
  return (Array.isArray(value) ? value : [value]).map((v) => keyframeIndex(plan, v));
}

function checkToken(plan, value) {
  if (!isInt(value) || value < 0 || value >= plan.codebook.size) {
    throw new StepError(`token ${JSON.stringify(value)} is outside the codebook range 0..${plan.codebook.size - 1}`);
  }
  return value;
}

function stepRect(plan, step) {
  const [gh, gw] = plan.grid;
  const rect = field(step, "rect", [0, 0, gh - 1, gw - 1]);
  const ok = Array.isArray(rect) && rect.length === 4 && rect.every(isInt)
    && rect[0] >= 0 && rect[0] <= rect[2] && rect[2] < gh && rect[1] >= 0 && rect[1] <= rect[3] && rect[3] < gw;
  if (!ok) throw new StepError(`field 'rect' must be [top, left, bottom, right] inside the ${gh}x${gw} grid`);
  return rect;
}

function setCells(plan, index, [top, left, bottom, right], tokenAt) {
  const gw = plan.grid[1];
  const tokens = plan.keyframes[index].tokens;
  for (let r = top; r <= bottom; r++) {
    for (let c = left; c <= right; c++) tokens[r * gw + c] = tokenAt(r, c);
  }
}

function checkFree(plan, time, moving = null) {
  const frame = frameOf(plan, time);
  plan.keyframes.forEach((other, index) => {
    if (other !== moving && frameOf(plan, other.time) === frame) {
      throw new StepError(`keyframe ${index} already sits at ${other.time} s (video frame ${frame})`);
    }
  });
}

function sortByTime(plan) {
  plan.keyframes.sort((a, b) => a.time - b.time);  // stable, like Python's sort
}

function opFill(plan, step) {
  const token = checkToken(plan, field(step, "token"));
  const rect = stepRect(plan, step);
  for (const index of targets(plan, step)) setCells(plan, index, rect, () => token);
  return plan;
}

function opFillWord(plan, step, ctx) {
  const word = field(step, "word");
  if (typeof word !== "string" || !word.trim()) throw new StepError("field 'word' must be a non-empty word");
  const code = ctx.codeOfWord(word.trim());
  if (code === undefined) throw new Unsupported(`the word "${word.trim()}" is not in the palette`);
  return opFill(plan, { ...step, token: code });
}

function opPaste(plan, step) {
  const rows = field(step, "tokens");
  const ok = Array.isArray(rows) && rows.length && rows.every((r) => Array.isArray(r) && r.length)
    && new Set(rows.map((r) => r.length)).size === 1;
  if (!ok) throw new StepError("field 'tokens' must be a non-empty rectangle of rows");
  const at = field(step, "at");
  const [gh, gw] = plan.grid;
  if (!(Array.isArray(at) && at.length === 2 && at.every(isInt) && at[0] >= 0 && at[0] < gh && at[1] >= 0 && at[1] < gw)) {
    throw new StepError(`field 'at' must be [row, col] inside the ${gh}x${gw} grid`);
  }
  const [top, left] = at;
  const bottom = top + rows.length - 1;
  const right = left + rows[0].length - 1;
  if (bottom >= gh || right >= gw) throw new StepError("the block runs off the grid");
  const block = rows.map((r) => r.map((v) => checkToken(plan, v)));
  for (const index of targets(plan, step)) {
    setCells(plan, index, [top, left, bottom, right], (r, c) => block[r - top][c - left]);
  }
  return plan;
}

function opInsert(plan, step) {
  const raw = field(step, "time");
  if (!isNumber(raw)) throw new StepError(`field 'time' must be a number, got ${JSON.stringify(raw)}`);
  const time = snapTime(plan, raw);
  let tokens = field(step, "tokens", null);
  if (tokens === null) {
    let nearest = 0;
    plan.keyframes.forEach((k, i) => {
      if (Math.abs(k.time - time) < Math.abs(plan.keyframes[nearest].time - time)) nearest = i;
    });
    tokens = [...plan.keyframes[nearest].tokens];
  }
  const note = field(step, "note", "");
  checkFree(plan, time);
  plan.keyframes.push({ time, tokens, locked: false, note });
  sortByTime(plan);
  return plan;
}

function opDuplicate(plan, step) {
  const original = plan.keyframes[keyframeIndex(plan, field(step, "keyframe"))];
  return opInsert(plan, { time: field(step, "time"), tokens: [...original.tokens], note: original.note });
}

function opDelete(plan, step) {
  const index = keyframeIndex(plan, field(step, "keyframe"));
  if (plan.keyframes.length === 1) throw new StepError("cannot delete the only keyframe");
  plan.keyframes.splice(index, 1);
  return plan;
}

function opMove(plan, step) {
  const keyframe = plan.keyframes[keyframeIndex(plan, field(step, "keyframe"))];
  const raw = field(step, "time");
  if (!isNumber(raw)) throw new StepError(`field 'time' must be a number, got ${JSON.stringify(raw)}`);
  const time = snapTime(plan, raw);
  checkFree(plan, time, keyframe);
  keyframe.time = time;
  sortByTime(plan);
  return plan;
}

function opLock(plan, step) {
  const locked = field(step, "locked", true);
  if (typeof locked !== "boolean") throw new StepError("field 'locked' must be true or false");
  for (const index of targets(plan, step)) plan.keyframes[index].locked = locked;
  return plan;
}

function opNote(plan, step) {
  const text = field(step, "text");
  if (typeof text !== "string") throw new StepError("field 'text' must be a string");
  plan.keyframes[keyframeIndex(plan, field(step, "keyframe"))].note = text;
  return plan;
}

const REPLAY_OPS = {
  fill: opFill, fill_word: opFillWord, paste: opPaste, insert_keyframe: opInsert,
  duplicate_keyframe: opDuplicate, delete_keyframe: opDelete, move_keyframe: opMove, lock: opLock, note: opNote,
};

/** Plan.validate's checks that a replayed step can break: times inside the video, sorted, one per frame. */
function checkPlan(plan) {
  const last = duration(plan);
  plan.keyframes.forEach((k, i) => {
    if (k.time < 0 || k.time > last + 1e-6) throw new StepError(`keyframe ${i} at ${k.time} s is outside the video (0..${last} s)`);
    if (k.tokens.length !== plan.grid[0] * plan.grid[1]) throw new StepError(`keyframe ${i} has ${k.tokens.length} tokens`);
    if (i && (k.time <= plan.keyframes[i - 1].time || frameOf(plan, k.time) === frameOf(plan, plan.keyframes[i - 1].time))) {
      throw new StepError(`keyframes ${i - 1} and ${i} fall on the same video frame or out of order`);
    }
  });
  return plan;
}

/**
 * Replay `steps` on a copy of `base`. Returns {plan, applied} where plan is the state after the
 * `applied` steps that went through, plus `error` (a step plan_edits.py would refuse) or
 * `unsupported` (a step this editor cannot replay: another op, a word outside the palette).
 * `offset` numbers the steps on from earlier ones (in messages and `applied`).
 */
function replayEdits(base, steps, codeOfWord = () => undefined, offset = 0) {
  let plan = clonePlan(base);
  for (const [at, step] of steps.entries()) {
    const index = offset + at;                // steps replayed after others count on from them
    const op = step?.op;
    const apply = REPLAY_OPS[op];
    if (!apply) return { plan, applied: index, unsupported: `edit ${index}: the editor does not replay '${op}'` };
    try {
      plan = checkPlan(apply(clonePlan(plan), step, { codeOfWord }));
    } catch (exc) {
      const key = exc instanceof Unsupported ? "unsupported" : "error";
      if (!(exc instanceof StepError || exc instanceof Unsupported)) throw exc;
      return { plan, applied: index, [key]: `edit ${index} (${op}): ${exc.message}` };
    }
  }
  return { plan, applied: offset + steps.length };
}

// ---------------------------------------------------------------------------------------------
// Editing helpers: a painted stroke -> fewest rectangles, where a duplicate goes
// ---------------------------------------------------------------------------------------------

/**
 * Cover the cells of `must` (a Set of r*gw+c) with few rectangles [top, left, bottom, right].
 * Cells in `free` may be covered too (they already hold the brush). One rectangle when the
 * bounding box allows it, else row runs merged downwards.
 */
function coverCells(must, free, gh, gw) {
  if (!must.size) return [];
  const ok = (r, c) => must.has(r * gw + c) || free.has(r * gw + c);
  const rows = [...must].map((i) => Math.floor(i / gw));
  const cols = [...must].map((i) => i % gw);
  const box = [Math.min(...rows), Math.min(...cols), Math.max(...rows), Math.max(...cols)];
  if (allCells(box, ok)) return [box];
  const rects = [];
  let open = [];
  for (let r = 0; r < gh; r++) {
    const runs = rowRuns(r, gw, must, ok);
    const next = [];
    for (const [left, right] of runs) {
      const rect = open.find((o) => o[1] === left && o[3] === right);
      if (rect) {
        rect[2] = r;
        next.push(rect);
      } else {
        const fresh = [r, left, r, right];
        rects.push(fresh);
        next.push(fresh);
      }
    }
    open = next;
  }
  return rects;
}

function allCells([top, left, bottom, right], ok) {
  for (let r = top; r <= bottom; r++) for (let c = left; c <= right; c++) if (!ok(r, c)) return false;
  return true;
}

/** Runs [left, right] of row r that start and end on a must-cell and cross only paintable cells. */
function rowRuns(r, gw, must, ok) {
  const runs = [];
  let c = 0;
  while (c < gw) {
    if (!must.has(r * gw + c)) { c++; continue; }
    let end = c;
    for (let k = c; k < gw && ok(r, k); k++) if (must.has(r * gw + k)) end = k;
    runs.push([c, end]);
    c = end + 1;
  }
  return runs;
}

/** Where "duplicate" puts a copy of keyframe i: midway to the next keyframe, else +1 frame. */
function duplicateFrame(plan, index) {
  const frames = plan.keyframes.map((k) => frameOf(plan, k.time));
  const taken = new Set(frames);
  const here = frames[index];
  const last = plan.video.num_frames - 1;
  const next = index + 1 < frames.length ? frames[index + 1] : null;
  if (next !== null && next - here >= 2) return Math.floor((here + next) / 2);
  for (let f = here + 1; f <= last; f++) if (!taken.has(f)) return f;
  for (let f = here - 1; f >= 0; f--) if (!taken.has(f)) return f;
  return null;
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function fallbackColour(code) {
  return `hsl(${(code * 137.508) % 360}, 45%, 48%)`;
}

function describeKeyframes(value) {
  if (value === "all") return "all";
  return Array.isArray(value) ? value.map((v) => `#${v}`).join(",") : `#${value}`;
}

function describeRect(rect) {
  if (!rect) return "all cells";
  const [t, l, b, r] = rect;
  return t === b && l === r ? `cell ${t},${l}` : `rows ${t}-${b} cols ${l}-${r}`;
}

// ---------------------------------------------------------------------------------------------
// Small DOM helpers
// ---------------------------------------------------------------------------------------------

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("data-") || key === "title" || key === "type" || key === "placeholder") node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function installStyle() {
  if (document.getElementById("planx-editor-style")) return;
  const css = `
.planx-ed { position: relative; display: flex; flex-direction: column; gap: 4px; box-sizing: border-box;
  font: 11px/1.35 sans-serif; color: var(--input-text, #ddd); background: var(--comfy-input-bg, #222);
  border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 4px; overflow: hidden; }
.planx-ed-status { font-weight: bold; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.planx-ed-status.bad { color: #f77; }
.planx-ed-info { min-height: 14px; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; opacity: .85; }
.planx-ed-tools { display: flex; flex-wrap: wrap; gap: 3px; align-items: center; }
.planx-ed-tools button, .planx-ed-tools input { font: inherit; color: inherit; background: var(--comfy-menu-bg, #333);
  border: 1px solid var(--border-color, #555); border-radius: 3px; padding: 1px 6px; }
.planx-ed-tools button.on { outline: 2px solid #6af; }
.planx-ed-tools input { width: 110px; }
.planx-ed-brush { display: inline-flex; align-items: center; gap: 4px; margin-right: 4px; }
.planx-ed-chip { display: inline-block; width: 14px; height: 14px; border: 1px solid #000; border-radius: 2px; }
.planx-ed-timeline { position: relative; flex: 0 0 auto; overflow-x: auto; overflow-y: hidden;
  background: rgba(0,0,0,.18); border-radius: 3px; }
.planx-ed-track { position: relative; }
.planx-ed-track canvas.planx-ed-grid { position: absolute; image-rendering: pixelated; cursor: crosshair;
  outline: 1px solid rgba(0,0,0,.6); }
.planx-ed-track canvas.planx-ed-grid.sel { outline: 2px solid #6af; }
.planx-ed-head { position: absolute; height: ${HEAD_H}px; width: ${HEAD_W}px; box-sizing: border-box; text-align: center;
  border-radius: 3px; background: #444; border: 1px solid #666; cursor: ew-resize; user-select: none;
  white-space: nowrap; overflow: hidden; font-size: 10px; line-height: ${HEAD_H - 2}px; }
.planx-ed-head.sel { background: #2a4f7a; border-color: #6af; z-index: 2; }
.planx-ed-head.locked { border-style: dashed; }
.planx-ed-head.refused { background: #7a2a2a; border-color: #f66; }
.planx-ed-palette { display: flex; flex-wrap: wrap; gap: 2px; max-height: 58px; overflow: auto; flex: 0 0 auto; }
.planx-ed-palette button { font: 10px sans-serif; color: #fff; text-shadow: 0 0 2px #000; border: 1px solid #000;
  border-radius: 2px; padding: 0 4px; cursor: pointer; }
.planx-ed-palette button.on { outline: 2px solid #fff; }
.planx-ed-steps { margin: 0; padding: 0 0 0 22px; min-height: 36px; overflow: auto; flex: 1 1 0;
  font: 10px/1.3 monospace; }
.planx-ed-steps li.bad { color: #f77; }
.planx-ed-steps li.skip { color: #fc6; }
.planx-ed-tip { position: absolute; pointer-events: none; background: #000d; color: #fff; padding: 1px 5px;
  border-radius: 3px; font-size: 11px; white-space: nowrap; display: none; z-index: 5; }`;
  document.head.append(el("style", { id: "planx-editor-style", text: css }));
}

// ---------------------------------------------------------------------------------------------
// The editor
// ---------------------------------------------------------------------------------------------

class PlanEditor {
  constructor(node) {
    this.node = node;
    this.server = null;       // the last planx_editor payload, plus the steps it ran with
    this.selected = 0;
    this.brush = null;        // {code, word} | {word} (fill_word) | null
    this.pickMode = false;
    this.cell = DEFAULT_CELL;
    this.history = [];        // texts before each editor action, for undo
    this.lastWritten = null;
    this.seenText = null;
    this.view = null;
    this.stroke = null;
    this.drag = null;
    installStyle();
    this.dom = this.buildDom();
    this.widget = this.addWidget();
    this.hookEditsWidget();
    this.watchWidth();
    this.sync(true);
  }

  /** Re-lay the timeline when the node's width changes (not in the middle of a stroke or drag). */
  watchWidth() {
    if (typeof ResizeObserver === "undefined") return;
    let width = 0;
    new ResizeObserver(() => {
      const now = this.dom.timeline.clientWidth;
      if (Math.abs(now - width) < 8 || this.stroke || this.drag || !this.view) return;
      width = now;
      this.renderTimeline();
    }).observe(this.dom.timeline);
  }

  // -- the widgets ---------------------------------------------------------------------------
  addWidget() {
    const widget = this.node.addDOMWidget(EDITOR_WIDGET, "planx_editor", this.dom.root, {
      serialize: false,                       // keep it out of the API prompt (graphToPrompt)
      hideOnZoom: true,
      getMinHeight: () => this.minHeight(),
      onDraw: () => this.sync(false),         // cheap: re-reads the edits text only when it changed
    });
    widget.serialize = false;                 // keep it out of the workflow's widgets_values
    return widget;
  }

  editsWidget() {
    return this.node.widgets?.find((w) => w.name === EDITS_WIDGET) ?? null;
  }

  /**
   * Follow the edits widget: re-read on its callback and on typing. Its height is fixed, so that a
   * change in the node's free space (the preview picture appearing after a run) resizes the step
   * list at the editor's bottom instead of shifting the timeline under the pointer.
   */
  hookEditsWidget() {
    const widget = this.editsWidget();
    if (!widget) return;
    if (widget.options && "element" in widget) {
      widget.options.getMinHeight = () => EDITS_HEIGHT;
      widget.options.getMaxHeight = () => EDITS_HEIGHT;
    }
    const editor = this;
    const previous = widget.callback;
    widget.callback = function (...args) {
      const result = previous?.apply(this, args);
      editor.sync(false);
      return result;
    };
    (widget.inputEl ?? widget.element)?.addEventListener?.("input", () => this.sync(false));
  }

  editsLinked() {
    return !!this.node.inputs?.some((i) => i.name === EDITS_WIDGET && i.link != null);
  }

  readText() {
    const value = this.editsWidget()?.value;
    return typeof value === "string" ? value : "";
  }

  /** Write steps into the "edits" widget, remembering the text before for undo. */
  writeSteps(steps) {
    this.writeText(formatEdits(steps), true);
  }

  /** Set the "edits" widget's text: callback, dirty canvas, workflow change tracking, redraw. */
  writeText(text, remember) {
    const widget = this.editsWidget();
    if (!widget) return;
    if (remember) this.history.push(this.readText());
    this.lastWritten = text;
    this.seenText = text;
    widget.value = text;                      // a DOM widget's setter also calls its callback
    if (!("element" in widget)) widget.callback?.(text);
    app.graph?.setDirtyCanvas(true, true);
    try {
      app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
    } catch (exc) {
      console.debug("planx editor: change tracker", exc);
    }
    this.render();
  }

  /** Status, tools, timeline (+ scrollbar), info, palette, three step lines, gaps and padding. */
  minHeight() {
    const gh = this.view?.plan?.grid?.[0] ?? 9;
    return 16 + 26 + (GRID_Y + gh * this.cell + 6 + 14) + 16 + 58 + 40 + 6 * 4 + 12;
  }

  // -- state ---------------------------------------------------------------------------------
  /** Re-read the edits text; recompute and redraw when it changed (or when forced). */
  sync(force) {
    if (!this.server && this.adoptStoredOutput()) return;
    const text = this.readText();
    if (!force && text === this.seenText) return;
    this.seenText = text;
    this.render();
  }

  /** A run's payload. The run used the edits as they are now, unless the payload is an old one. */
  setServerData(data, promptId = null) {
    this.receivedFor = promptId ?? this.runningPrompt ?? "?";
    this.runError = null;
    if (!RUN_STEPS.has(data) && promptId !== "stored") RUN_STEPS.set(data, parseEdits(this.readText()).steps);
    LAST_DATA.set(String(this.node.id), { data, outputs: app.nodeOutputs });
    this.server = {
      base: data.base ?? null, plan: data.plan ?? null, error: data.error ?? null,
      colours: data.colours ?? {}, words: data.words ?? {}, palette: data.palette ?? [],
      cellColours: data.cell_colours ?? null, steps: RUN_STEPS.get(data) ?? null,
    };
    this.render();
  }

  /**
   * The frontend keeps each node's last ui output in app.nodeOutputs, across Ctrl+Z (which rebuilds
   * the nodes) and workflow tabs, and empties it when another workflow loads: use it when a fresh
   * editor has no server data yet. A payload read from /history is not in there, so LAST_DATA keeps
   * it while app.nodeOutputs stays the same object (loading another workflow replaces it).
   * Returns whether it found some.
   */
  adoptStoredOutput() {
    const id = String(this.node.id);
    const last = LAST_DATA.get(id);
    const data = payload(app.nodeOutputs?.[id]) ?? (last && last.outputs === app.nodeOutputs ? last.data : null);
    if (!data?.base) return false;
    this.setServerData(data, "stored");
    return true;
  }

  /** The node raised (e.g. a word the planner does not know): say so while the edits are unchanged. */
  setRunError(message, promptId) {
    this.receivedFor = promptId;
    this.runError = { message: String(message ?? "the node failed").trim(), text: this.readText() };
    this.render();
  }

  codeOfWord(word) {
    const hit = (this.server?.palette ?? []).find((p) => p.word === word);
    return hit ? hit.code : undefined;
  }

  colourOf(code) {
    return this.server?.colours?.[String(code)] ?? fallbackColour(code);
  }

  wordOf(code) {
    return this.server?.words?.[String(code)] ?? "";
  }

  /** What to draw: {plan, steps, source, status, bad, editable, failedAt, skipFrom}. */
  computeView() {
    const view = this.planView(parseEdits(this.readText()));
    if (this.runError && this.runError.text === this.readText()) {
      view.status = `The last run failed: ${this.runError.message} · ${view.status}`;
      view.bad = true;
    }
    return view;
  }

  planView(parsed) {
    const steps = parsed.steps ?? [];
    if (parsed.error) return { plan: null, steps, source: "none", status: parsed.error, bad: true, editable: false };
    if (!this.server?.base) {
      const n = steps.length;
      return { plan: null, steps, source: "none", editable: false,
        status: `Run the workflow to see the plan; ${plural(n, "edit")} kept` };
    }
    if (isContinuous(this.server.base)) return this.continuousView(steps);
    const lookup = (w) => this.codeOfWord(w);
    const replay = replayEdits(this.server.base, steps, lookup);
    return replay.unsupported ? this.serverView(replay, steps, lookup) : this.replayView(replay, steps);
  }

  /** A continuous plan: the server's plan (the edited one, else the input), read-only. */
  continuousView(steps) {
    const server = this.server;
    const plan = server.plan ?? server.base;
    const space = server.base.codebook ?? {};
    const ran = server.steps;
    const current = ran && ran.length === steps.length && ran.every((s, i) => sameStep(s, steps[i]));
    const status = `continuous plan (${space.name ?? "semantic vectors"}, ${space.size ?? "?"}-dim vectors per cell): `
      + `read-only here, coloured by its principal components · ${plural(steps.length, "edit")} in the text`
      + (server.error ? ` · ${server.error}` : current ? "" : " — run the workflow to see them applied");
    return { plan, steps, source: "server", editable: false, bad: !!server.error, status,
      cellColours: server.cellColours?.[server.plan ? "plan" : "base"] ?? null };
  }

  replayView(replay, steps) {
    const n = steps.length;
    const view = { plan: replay.plan, steps, source: "replay", editable: !replay.error, failedAt: null };
    if (replay.error) {
      view.failedAt = replay.applied;
      view.bad = true;
      view.status = `${replay.error} — undo or fix it`;
    } else {
      view.status = `${plural(replay.plan.keyframes.length, "keyframe")} · ${replay.plan.grid.join("x")} · ${plural(n, "edit")}`;
    }
    return view;
  }

  /** A step the editor cannot replay: build on the server's plan when its run covers a prefix. */
  serverView(replay, steps, lookup) {
    const server = this.server;
    const ran = server.steps;
    const prefix = ran && ran.length <= steps.length && ran.every((s, i) => sameStep(s, steps[i]));
    if (server.plan && prefix) {
      const tail = replayEdits(server.plan, steps.slice(ran.length), lookup, ran.length);
      if (!tail.unsupported) {
        const view = this.replayView(tail, steps);
        view.source = "server+replay";
        view.skipFrom = replay.applied;
        view.status = `${view.status} · ${replay.unsupported}: drawn from the server's plan`;
        return view;
      }
    }
    const plan = server.plan ?? replay.plan;
    return { plan, steps, source: server.plan ? "server" : "partial", editable: false, bad: !server.plan,
      skipFrom: replay.applied,
      status: `${replay.unsupported}; showing the ${server.plan ? "server's plan as is" : "plan before it"}`
        + " — run the workflow to refresh" };
  }

  // -- DOM -----------------------------------------------------------------------------------
  buildDom() {
    const dom = {};
    dom.status = el("div", { className: "planx-ed-status", "data-role": "status" });
    dom.brush = el("span", { className: "planx-ed-brush", "data-role": "brush" });
    dom.word = el("input", { type: "text", placeholder: "word or code, Enter", "data-role": "word" });
    dom.word.addEventListener("keydown", (e) => {
      e.stopPropagation();
      if (e.key === "Enter") this.setBrushFromText(dom.word.value);
    });
    dom.buttons = {};
    const tools = [["pick", "Pick", "eyedropper: click a cell to take its token (or alt/right-click)"],
      ["duplicate", "Duplicate", "copy the selected keyframe to the next free frame"],
      ["delete", "Delete", "delete the selected keyframe"], ["lock", "Lock", "lock / unlock the selected keyframe"],
      ["undo", "Undo", "undo the last edit"], ["clear", "Clear", "remove every edit (undo brings them back)"],
      ["zoom-out", "−", "smaller cells"], ["zoom-in", "+", "bigger cells"]];
    for (const [action, label, title] of tools) {
      const button = el("button", { text: label, title, "data-action": action, type: "button" });
      button.addEventListener("click", () => this.runAction(action));
      dom.buttons[action] = button;
    }
    dom.tools = el("div", { className: "planx-ed-tools" }, [dom.brush, dom.word, ...Object.values(dom.buttons)]);
    dom.track = el("div", { className: "planx-ed-track" });
    dom.timeline = el("div", { className: "planx-ed-timeline", "data-role": "timeline" }, [dom.track]);
    dom.info = el("div", { className: "planx-ed-info", "data-role": "info" });
    dom.palette = el("div", { className: "planx-ed-palette", "data-role": "palette" });
    dom.steps = el("ol", { className: "planx-ed-steps", "data-role": "steps", start: 0 });
    dom.tip = el("div", { className: "planx-ed-tip" });
    dom.root = el("div", { className: "planx-ed" },
      [dom.status, dom.tools, dom.timeline, dom.info, dom.palette, dom.steps, dom.tip]);
    dom.root.addEventListener("contextmenu", (e) => e.preventDefault());
    return dom;
  }

  render() {
    this.view = this.computeView();
    const { dom, view } = this;
    dom.root.dataset.planxNode = String(this.node.id);
    dom.root.dataset.source = view.source;
    dom.status.textContent = this.editsLinked() ? "The edits come from a link; the editor is read-only" : view.status;
    dom.status.classList.toggle("bad", !!view.bad);
    dom.status.title = view.status;
    if (view.plan) this.selected = Math.min(this.selected, view.plan.keyframes.length - 1);
    this.renderTools();
    this.renderTimeline();
    this.renderPalette();
    this.renderSteps();
  }

  renderTools() {
    const { dom, view } = this;
    const brush = this.brush;
    const known = brush?.code != null;
    const chip = known ? this.colourOf(brush.code) : "repeating-linear-gradient(45deg,#888 0 3px,#444 3px 6px)";
    const label = !brush ? "no brush" : known ? `${brush.word || "code"} · ${brush.code}` : `word "${brush.word}"`;
    dom.brush.replaceChildren(el("span", { className: "planx-ed-chip", style: `background:${chip}` }),
      el("span", { text: label }));
    dom.buttons.pick.classList.toggle("on", this.pickMode);
    const kf = view.plan?.keyframes?.[this.selected];
    dom.buttons.lock.textContent = kf?.locked ? "Unlock" : "Lock";
    for (const action of ["pick", "duplicate", "delete", "lock"]) dom.buttons[action].disabled = !this.canEdit();
    dom.buttons.undo.disabled = !this.history.length && !view.steps.length;
  }

  canEdit() {
    return !!(this.view?.editable && this.view.plan && !this.editsLinked());
  }

  // -- timeline ------------------------------------------------------------------------------
  layout(plan) {
    const [gh, gw] = plan.grid;
    const thumbW = gw * this.cell;
    const n = plan.keyframes.length;
    const pad = HEAD_W / 2 + 4;              // room for a header at either end of the ruler
    const viewport = this.dom.timeline.clientWidth || (this.node.size?.[0] ?? 600) - 30;
    const width = Math.max(viewport, n * (thumbW + GAP) + 8, 200);
    const span = duration(plan);
    const pps = span > 0 ? (width - 2 * pad) / span : 0;
    const timeX = (t) => pad + t * pps;
    const xs = plan.keyframes.map((k) => timeX(k.time) - thumbW / 2);
    for (let i = 0; i < n; i++) xs[i] = Math.max(xs[i], i ? xs[i - 1] + thumbW + GAP : 4);
    for (let i = n - 1; i >= 0; i--) xs[i] = Math.min(xs[i], i < n - 1 ? xs[i + 1] - thumbW - GAP : width - 4 - thumbW);
    return { gh, gw, thumbW, thumbH: gh * this.cell, pad, width, pps, timeX, xs,
      height: GRID_Y + gh * this.cell + 6 };
  }

  renderTimeline() {
    const { dom, view } = this;
    dom.track.replaceChildren();
    this.geometry = null;
    if (!view.plan) {
      dom.track.style.cssText = "height: 20px";
      dom.timeline.style.height = "22px";
      return;
    }
    const plan = view.plan;
    const geo = this.layout(plan);
    this.geometry = geo;
    dom.track.style.cssText = `width:${geo.width}px;height:${geo.height}px`;
    dom.timeline.style.height = `${geo.height + (geo.width > dom.timeline.clientWidth ? 14 : 2)}px`;
    const ruler = el("canvas", { className: "planx-ed-ruler", width: geo.width, height: GRID_Y,
      style: "position:absolute;left:0;top:0" });
    dom.track.append(ruler);
    this.drawRuler(ruler, plan, geo);
    plan.keyframes.forEach((k, i) => {
      dom.track.append(this.buildHead(plan, geo, i), this.buildGrid(plan, geo, i));
    });
  }

  drawRuler(canvas, plan, geo) {
    const ctx = canvas.getContext("2d");
    const fps = plan.video.fps;
    ctx.strokeStyle = "#888";
    ctx.fillStyle = "#aaa";
    ctx.font = "9px sans-serif";
    ctx.beginPath();
    ctx.moveTo(geo.timeX(0), 14.5);
    ctx.lineTo(geo.timeX(duration(plan)), 14.5);
    const framePx = geo.pps / fps;
    for (let f = 0; f < plan.video.num_frames; f++) {
      const t = f / fps;
      const second = Math.abs(t - Math.round(t)) < 1e-9;
      if (!second && framePx < 3) continue;
      const x = Math.round(geo.timeX(t)) + 0.5;
      ctx.moveTo(x, second ? 8 : 11);
      ctx.lineTo(x, 14.5);
      if (second) ctx.fillText(`${Math.round(t)}s`, x + 2, 8);
    }
    ctx.stroke();
    ctx.strokeStyle = "#6af8";
    ctx.beginPath();
    plan.keyframes.forEach((k, i) => {
      ctx.moveTo(geo.timeX(k.time), HEAD_Y + HEAD_H);
      ctx.lineTo(geo.xs[i] + geo.thumbW / 2, GRID_Y);
    });
    ctx.stroke();
  }

  buildHead(plan, geo, i) {
    const k = plan.keyframes[i];
    const frame = frameOf(plan, k.time);
    const head = el("div", {
      className: `planx-ed-head${i === this.selected ? " sel" : ""}${k.locked ? " locked" : ""}`,
      "data-keyframe": String(i), "data-role": "head", "data-time": String(k.time), "data-frame": String(frame),
      title: `keyframe ${i} at ${k.time} s (video frame ${frame})${k.locked ? ", locked" : ""}`
        + `${k.note ? `: ${k.note}` : ""} — drag to retime`,
      text: `#${i} ${k.time.toFixed(2)}s${k.locked ? " 🔒" : ""}`,
      style: `left:${geo.timeX(k.time) - HEAD_W / 2}px;top:${HEAD_Y}px`,
    });
    head.addEventListener("pointerdown", (e) => this.headDown(e, i));
    head.addEventListener("pointermove", (e) => this.headMove(e));
    head.addEventListener("pointerup", (e) => this.headUp(e));
    head.addEventListener("pointercancel", () => this.cancelDrag());
    return head;
  }

  buildGrid(plan, geo, i) {
    const canvas = el("canvas", {
      className: `planx-ed-grid${i === this.selected ? " sel" : ""}`, "data-keyframe": String(i),
      "data-rows": String(geo.gh), "data-cols": String(geo.gw), "data-cell": String(this.cell),
      width: geo.thumbW, height: geo.thumbH, style: `left:${geo.xs[i]}px;top:${GRID_Y}px`,
    });
    canvas.addEventListener("pointerdown", (e) => this.gridDown(e, i));
    canvas.addEventListener("pointermove", (e) => this.gridMove(e, i));
    canvas.addEventListener("pointerup", (e) => this.gridUp(e));
    canvas.addEventListener("pointercancel", () => this.cancelStroke());
    canvas.addEventListener("pointerleave", () => {
      this.hideTip();
      if (!this.stroke) this.drawGrid(canvas, i);
    });
    this.drawGrid(canvas, i);
    return canvas;
  }

  drawGrid(canvas, i, hover = null) {
    const plan = this.view.plan;
    const [gh, gw] = plan.grid;
    const cell = this.cell;
    const tokens = plan.keyframes[i].tokens ?? [];
    const vectorColours = isContinuous(plan) ? (this.view.cellColours?.[i] ?? []) : null;
    const ctx = canvas.getContext("2d");
    const painted = this.stroke?.keyframe === i ? this.stroke.cells : null;
    const paint = painted ? this.strokeStyle(ctx) : null;
    for (let r = 0; r < gh; r++) {
      for (let c = 0; c < gw; c++) {
        const index = r * gw + c;
        const colour = vectorColours ? (vectorColours[index] ?? "#808080") : this.colourOf(tokens[index]);
        ctx.fillStyle = painted?.has(index) ? paint : colour;
        ctx.fillRect(c * cell, r * cell, cell, cell);
      }
    }
    if (cell >= 8) this.drawCellLines(ctx, gh, gw, cell);
    if (hover) {
      ctx.strokeStyle = "#fff";
      ctx.lineWidth = 1.5;
      ctx.strokeRect(hover.col * cell + 0.75, hover.row * cell + 0.75, cell - 1.5, cell - 1.5);
    }
  }

  drawCellLines(ctx, gh, gw, cell) {
    ctx.strokeStyle = "rgba(0,0,0,.22)";
    ctx.lineWidth = 1;
    ctx.beginPath();
    for (let c = 1; c < gw; c++) { ctx.moveTo(c * cell + 0.5, 0); ctx.lineTo(c * cell + 0.5, gh * cell); }
    for (let r = 1; r < gh; r++) { ctx.moveTo(0, r * cell + 0.5); ctx.lineTo(gw * cell, r * cell + 0.5); }
    ctx.stroke();
  }

  strokeStyle(ctx) {
    if (this.brush?.code != null) return this.colourOf(this.brush.code);
    const tile = document.createElement("canvas");
    tile.width = tile.height = 6;
    const t = tile.getContext("2d");
    t.fillStyle = "#555";
    t.fillRect(0, 0, 6, 6);
    t.strokeStyle = "#ccc";
    t.beginPath(); t.moveTo(0, 6); t.lineTo(6, 0); t.stroke();
    return ctx.createPattern(tile, "repeat");
  }

  gridCanvas(i) {
    return this.dom.track.querySelector(`canvas.planx-ed-grid[data-keyframe="${i}"]`);
  }

  /** Pointer -> {row, col} on keyframe i's grid (null outside), through the node's CSS transform. */
  cellAt(e, canvas) {
    const box = canvas.getBoundingClientRect();
    const [gh, gw] = this.view.plan.grid;
    const col = Math.floor(((e.clientX - box.left) / box.width) * gw);
    const row = Math.floor(((e.clientY - box.top) / box.height) * gh);
    return row >= 0 && row < gh && col >= 0 && col < gw ? { row, col } : null;
  }

  // -- painting ------------------------------------------------------------------------------
  gridDown(e, i) {
    const cell = this.cellAt(e, e.currentTarget);
    if (!cell) return;
    e.preventDefault();
    e.stopPropagation();
    this.select(i, false);
    if (this.pickMode || e.altKey || e.button === 2) {
      this.pickCell(i, cell.row, cell.col);
      return;
    }
    if (e.button !== 0) return;
    if (!this.canEdit()) return this.say("This view cannot be edited; see the status line");
    if (!this.brush) return this.say("Pick a brush first: a palette swatch, a typed word, or alt/right-click a cell");
    e.currentTarget.setPointerCapture?.(e.pointerId);
    this.stroke = { keyframe: i, cells: new Set() };
    this.extendStroke(i, cell);
  }

  gridMove(e, i) {
    const cell = this.cellAt(e, e.currentTarget);
    if (this.stroke?.keyframe === i) {
      if (cell) this.extendStroke(i, cell);
      return;
    }
    if (this.stroke || this.drag) return;
    if (!cell) return this.hideTip();
    this.showCellTip(e, i, cell);
    this.drawGrid(e.currentTarget, i, cell);
  }

  gridUp(e) {
    if (!this.stroke) return;
    e.currentTarget.releasePointerCapture?.(e.pointerId);
    const stroke = this.stroke;
    this.stroke = null;
    this.commitStroke(stroke.keyframe, stroke.cells);
  }

  cancelStroke() {
    if (!this.stroke) return;
    const i = this.stroke.keyframe;
    this.stroke = null;
    const canvas = this.gridCanvas(i);
    if (canvas) this.drawGrid(canvas, i);
  }

  extendStroke(i, { row, col }) {
    const gw = this.view.plan.grid[1];
    const index = row * gw + col;
    if (this.stroke.cells.has(index)) return;
    this.stroke.cells.add(index);
    this.drawGrid(this.gridCanvas(i), i);
  }

  /** Painted cells -> the fewest fill / fill_word steps (rectangles), appended as one action. */
  commitStroke(i, cells) {
    const plan = this.view.plan;
    const [gh, gw] = plan.grid;
    const tokens = plan.keyframes[i].tokens;
    const code = this.brush?.code;
    const must = new Set([...cells].filter((c) => code == null || tokens[c] !== code));
    const free = new Set(code == null ? [] : tokens.flatMap((t, c) => (t === code ? [c] : [])));
    const steps = coverCells(must, free, gh, gw).map((rect) => (code != null
      ? { op: "fill", keyframe: i, rect, token: code }
      : { op: "fill_word", keyframe: i, rect, word: this.brush.word }));
    if (!steps.length) {
      this.say("Those cells already hold the brush");
      return this.render();
    }
    this.append(steps);
    this.say(`Painted ${plural(must.size, "cell")} of keyframe ${i} in ${plural(steps.length, "step")}`);
  }

  pickCell(i, row, col) {
    if (isContinuous(this.view.plan)) return this.say("A continuous plan has no codes to pick; edit it in the text");
    const code = this.view.plan.keyframes[i].tokens[row * this.view.plan.grid[1] + col];
    this.setBrush({ code, word: this.wordOf(code) });
    this.pickMode = false;
    this.renderTools();
    this.say(`Brush: ${this.wordOf(code) || "code"} ${code} (picked from keyframe ${i}, row ${row}, col ${col})`);
    return code;
  }

  setBrush(brush) {
    this.brush = brush;
    this.renderTools();
    this.renderPalette();
  }

  /** Typed text -> brush: a palette word (exact, then any case) or a code paints with `fill`, else fill_word. */
  setBrushFromText(text) {
    const word = String(text ?? "").trim();
    if (!word) return this.setBrush(null);
    const palette = this.server?.palette ?? [];
    const hit = palette.find((p) => p.word === word) ?? palette.find((p) => p.word.toLowerCase() === word.toLowerCase());
    if (hit) return this.setBrush({ code: hit.code, word: hit.word });
    if (/^\d+$/.test(word)) {
      const code = Number(word);
      const size = this.server?.base?.codebook?.size;
      if (size !== undefined && code >= size) return this.say(`Code ${code} is outside the codebook (0..${size - 1})`);
      return this.setBrush({ code, word: this.wordOf(code) });
    }
    this.setBrush({ word });
    this.say(`"${word}" is not in the palette: painting it adds fill_word steps, coloured after the next run`);
  }

  showCellTip(e, i, { row, col }) {
    const plan = this.view.plan;
    const index = row * plan.grid[1] + col;
    let text, short;
    if (isContinuous(plan)) {
      const vector = (plan.keyframes[i].vectors?.[index] ?? []).map((v) => Number(v).toFixed(2)).join(", ");
      short = `[${vector}]`;
      text = `vector ${short} — keyframe ${i}, row ${row}, col ${col}`;
    } else {
      const code = plan.keyframes[i].tokens[index];
      const word = this.wordOf(code);
      short = word ? `${word} · ${code}` : `code ${code}`;
      text = `${word ? `${word} · ` : ""}code ${code} — keyframe ${i}, row ${row}, col ${col}`;
    }
    this.dom.info.textContent = text;
    const tip = this.dom.tip;
    const box = this.dom.root.getBoundingClientRect();
    const scale = box.width / (this.dom.root.offsetWidth || box.width || 1);
    tip.textContent = short;
    tip.style.display = "block";
    tip.style.left = `${(e.clientX - box.left) / scale + 12}px`;
    tip.style.top = `${(e.clientY - box.top) / scale + 12}px`;
  }

  hideTip() {
    this.dom.tip.style.display = "none";
  }

  say(text) {
    this.dom.info.textContent = text;
  }

  // -- retiming by dragging a header ------------------------------------------------------------
  headDown(e, i) {
    if (e.button !== 0) return;
    e.preventDefault();
    e.stopPropagation();
    this.select(i, true);
    if (!this.canEdit()) return;
    const head = this.dom.track.querySelector(`.planx-ed-head[data-keyframe="${i}"]`);
    head?.setPointerCapture?.(e.pointerId);
    const frame = frameOf(this.view.plan, this.view.plan.keyframes[i].time);
    this.drag = { keyframe: i, head, startX: e.clientX, frame, moved: false };
  }

  /** Client x -> the video frame under it on the ruler. */
  frameAtClientX(clientX) {
    const plan = this.view.plan;
    const geo = this.geometry;
    const box = this.dom.track.getBoundingClientRect();
    const x = (clientX - box.left) * (this.dom.track.offsetWidth / (box.width || 1));
    const t = geo.pps > 0 ? (x - geo.pad) / geo.pps : 0;
    return Math.max(0, Math.min(plan.video.num_frames - 1, roundHalfEven(t * plan.video.fps)));
  }

  headMove(e) {
    const drag = this.drag;
    if (!drag) return;
    if (!drag.moved && Math.abs(e.clientX - drag.startX) < 3) return;
    drag.moved = true;
    const plan = this.view.plan;
    drag.frame = this.frameAtClientX(e.clientX);
    const t = frameTime(plan, drag.frame);
    const holder = this.frameHolder(drag.frame, drag.keyframe);
    drag.head.style.left = `${this.geometry.timeX(t) - HEAD_W / 2}px`;
    drag.head.classList.toggle("refused", holder !== null);
    drag.head.textContent = `#${drag.keyframe} ${t.toFixed(2)}s`;
    this.say(holder !== null ? `Frame ${drag.frame} holds keyframe ${holder}: cannot drop here`
      : `Move keyframe ${drag.keyframe} to ${t} s (frame ${drag.frame})`);
  }

  headUp(e) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    drag.head.releasePointerCapture?.(e.pointerId);
    if (!drag.moved) return;
    const result = this.retime(drag.keyframe, frameTime(this.view.plan, drag.frame));
    if (!result.ok) {
      this.render();
      this.say(result.reason);
    }
  }

  cancelDrag() {
    if (!this.drag) return;
    this.drag = null;
    this.render();
  }

  frameHolder(frame, except) {
    const plan = this.view.plan;
    const index = plan.keyframes.findIndex((k, i) => i !== except && frameOf(plan, k.time) === frame);
    return index < 0 ? null : index;
  }

  // -- actions -------------------------------------------------------------------------------
  append(steps) {
    const parsed = parseEdits(this.readText());
    this.writeSteps([...(parsed.steps ?? []), ...steps]);
  }

  select(i, redraw = true) {
    if (!this.view?.plan) return;
    this.selected = Math.max(0, Math.min(i, this.view.plan.keyframes.length - 1));
    if (redraw) this.render();
    else this.markSelection();
  }

  markSelection() {
    for (const node of this.dom.track.querySelectorAll("[data-keyframe]")) {
      node.classList.toggle("sel", Number(node.dataset.keyframe) === this.selected);
    }
    this.renderTools();
  }

  runAction(action) {
    const handlers = {
      pick: () => { this.pickMode = !this.pickMode; this.renderTools(); },
      duplicate: () => this.duplicate(this.selected),
      delete: () => this.remove(this.selected),
      lock: () => this.lock(this.selected, !this.view.plan?.keyframes[this.selected]?.locked),
      undo: () => this.undo(),
      clear: () => this.clear(),
      "zoom-out": () => this.zoom(-1),
      "zoom-in": () => this.zoom(1),
    };
    const result = handlers[action]?.();
    if (result && result.ok === false) this.say(result.reason);
    return result;
  }

  refuse(reason) {
    this.say(reason);
    return { ok: false, reason };
  }

  guard(i) {
    if (!this.canEdit()) {
      return this.refuse(this.view?.plan ? "This view cannot be edited; see the status line" : "Run the workflow first");
    }
    if (!isInt(i) || i < 0 || i >= this.view.plan.keyframes.length) return this.refuse(`No keyframe ${i}`);
    return null;
  }

  retime(i, time) {
    const refused = this.guard(i);
    if (refused) return refused;
    const plan = this.view.plan;
    const frame = Math.max(0, Math.min(plan.video.num_frames - 1, frameOf(plan, time)));
    const snapped = frameTime(plan, frame);
    const holder = this.frameHolder(frame, i);
    if (holder !== null) return this.refuse(`Frame ${frame} holds keyframe ${holder}: cannot move keyframe ${i} there`);
    if (frame === frameOf(plan, plan.keyframes[i].time)) return this.refuse(`Keyframe ${i} already sits on frame ${frame}`);
    const after = plan.keyframes.filter((k, j) => j !== i && k.time < snapped).length;
    this.selected = after;
    this.append([{ op: "move_keyframe", keyframe: i, time: snapped }]);
    return { ok: true, time: snapped, frame, index: after };
  }

  duplicate(i) {
    const refused = this.guard(i);
    if (refused) return refused;
    const plan = this.view.plan;
    const frame = duplicateFrame(plan, i);
    if (frame === null) return this.refuse("Every video frame already holds a keyframe");
    const time = frameTime(plan, frame);
    this.selected = plan.keyframes.filter((k) => k.time < time).length;
    this.append([{ op: "duplicate_keyframe", keyframe: i, time }]);
    return { ok: true, time, frame, index: this.selected };
  }

  remove(i) {
    const refused = this.guard(i);
    if (refused) return refused;
    if (this.view.plan.keyframes.length === 1) return this.refuse("Cannot delete the only keyframe");
    this.append([{ op: "delete_keyframe", keyframe: i }]);
    return { ok: true };
  }

  lock(i, locked = true) {
    const refused = this.guard(i);
    if (refused) return refused;
    this.append([{ op: "lock", keyframe: i, locked: !!locked }]);
    return { ok: true };
  }

  paintCells(i, cells, brush) {
    const refused = this.guard(i);
    if (refused) return refused;
    const [gh, gw] = this.view.plan.grid;
    const set = new Set();
    for (const [row, col] of cells) {
      if (!(isInt(row) && isInt(col) && row >= 0 && row < gh && col >= 0 && col < gw)) return this.refuse(`No cell ${row},${col}`);
      set.add(row * gw + col);
    }
    this.select(i, false);
    if (brush?.code != null) this.setBrush({ code: brush.code, word: this.wordOf(brush.code) });
    else if (brush?.word) this.setBrush({ word: brush.word });
    if (!this.brush) return this.refuse("No brush");
    const before = parseEdits(this.readText()).steps?.length ?? 0;
    this.commitStroke(i, set);
    const after = parseEdits(this.readText()).steps?.length ?? 0;
    return { ok: true, steps: after - before };
  }

  /** Undo: restore the text before the editor's last action, or drop the last step. */
  undo() {
    const text = this.readText();
    if (this.history.length && text === this.lastWritten) {
      this.writeText(this.history.pop(), false);
      return { ok: true };
    }
    const steps = parseEdits(text).steps;
    if (!steps?.length) return this.refuse("Nothing to undo");
    this.writeSteps(steps.slice(0, -1));
    return { ok: true };
  }

  clear() {
    this.writeSteps([]);
    return { ok: true };
  }

  zoom(direction) {
    const at = ZOOMS.indexOf(this.cell);
    this.cell = ZOOMS[Math.max(0, Math.min(ZOOMS.length - 1, (at < 0 ? 2 : at) + direction))];
    this.render();
    const size = this.node.computeSize?.();
    if (size) this.node.setSize([Math.max(this.node.size[0], size[0]), Math.max(this.node.size[1], size[1])]);
    app.graph?.setDirtyCanvas(true, true);
  }

  // -- palette and step list -----------------------------------------------------------------
  renderPalette() {
    const { dom } = this;
    const palette = this.server?.palette ?? [];
    dom.palette.replaceChildren(...palette.map((p) => {
      const swatch = el("button", {
        type: "button", text: p.word, title: `${p.word} · code ${p.code}`,
        "data-code": String(p.code), "data-word": p.word,
        className: this.brush?.code === p.code ? "on" : "",
        style: `background:${this.colourOf(p.code)}`,
      });
      swatch.addEventListener("click", () => this.setBrush({ code: p.code, word: p.word }));
      return swatch;
    }));
  }

  renderSteps() {
    const { dom, view } = this;
    dom.steps.replaceChildren(...view.steps.map((step, i) => {
      const item = el("li", { text: this.describeStep(step), title: compactJson(step), "data-step": String(i) });
      if (i === view.failedAt) item.classList.add("bad");
      else if (i === view.skipFrom) item.classList.add("skip");
      return item;
    }));
  }

  describeStep(step) {
    const kf = describeKeyframes(step.keyframe);
    switch (step.op) {
      case "fill": {
        const word = this.wordOf(step.token);
        return `fill ${kf} ${describeRect(step.rect)} ← ${step.token}${word ? ` "${word}"` : ""}`;
      }
      case "fill_word": return `fill ${kf} ${describeRect(step.rect)} ← word "${step.word}"`;
      case "move_keyframe": return `move ${kf} → ${step.time} s`;
      case "duplicate_keyframe": return `duplicate ${kf} → ${step.time} s`;
      case "delete_keyframe": return `delete ${kf}`;
      case "lock": return `${step.locked === false ? "unlock" : "lock"} ${kf}`;
      default: return compactJson(step);
    }
  }

  // -- for tests -----------------------------------------------------------------------------
  describe() {
    this.sync(false);
    const view = this.view;
    return {
      nodeId: this.node.id, source: view.source, status: view.status, editable: this.canEdit(),
      selected: this.selected, brush: this.brush, cell: this.cell, text: this.readText(), steps: view.steps,
      plan: view.plan ? clonePlan(view.plan) : null, grid: view.plan?.grid ?? null,
      times: view.plan?.keyframes.map((k) => k.time) ?? [], locked: view.plan?.keyframes.map((k) => k.locked) ?? [],
      serverPlan: this.server?.plan ?? null, serverError: this.server?.error ?? null, hasRun: !!this.server,
    };
  }

  /** Client coordinates of a cell's centre / a header's centre / a time on the ruler. */
  cellCenter(i, row, col) {
    const canvas = this.gridCanvas(i);
    if (!canvas) return null;
    canvas.scrollIntoView?.({ block: "nearest", inline: "nearest" });
    const box = canvas.getBoundingClientRect();
    const [gh, gw] = this.view.plan.grid;
    return { x: box.left + ((col + 0.5) / gw) * box.width, y: box.top + ((row + 0.5) / gh) * box.height };
  }

  headCenter(i) {
    const head = this.dom.track.querySelector(`.planx-ed-head[data-keyframe="${i}"]`);
    if (!head) return null;
    head.scrollIntoView?.({ block: "nearest", inline: "nearest" });
    const box = head.getBoundingClientRect();
    return { x: box.left + box.width / 2, y: box.top + box.height / 2 };
  }

  timeToClientX(time) {
    if (!this.geometry) return null;
    const box = this.dom.track.getBoundingClientRect();
    return box.left + this.geometry.timeX(time) * (box.width / (this.dom.track.offsetWidth || 1));
  }
}

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
  const editor = new PlanEditor(node);
  node.planxEditor = editor;
  EDITORS.add(editor);
  const size = node.computeSize?.();
  if (size) node.setSize([Math.max(node.size[0], 720, size[0]), Math.max(node.size[1], size[1])]);
  return editor;
}

function payload(message) {
  const data = message?.planx_editor;
  return Array.isArray(data) ? data[0] : data;
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
  if (typeof window === "undefined") return;
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
  };
}

if (typeof window !== "undefined" && app?.registerExtension) {
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
      chain(nodeType.prototype, "onRemoved", function () { if (this.planxEditor) EDITORS.delete(this.planxEditor); });
    },
    setup() {
      watchRuns();
      installTestApi();
    },
  });
}

export { replayEdits, formatEdits, parseEdits, coverCells, duplicateFrame, snapTime, roundHalfEven, round6 };
