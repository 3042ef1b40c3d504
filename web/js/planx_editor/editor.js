/**
 * PlanEditor: the editor of one Edit Plan Tokens node (or, as a `viewer`, the read-only view on a Plan
 * Preview node). Its only document state is the node's "edits" text (see web/README.md): it reads it, draws
 * replay(base, edits) and appends steps to it. What it needs of ComfyUI comes in `host` from the entry
 * module (../planx_plan_editor.js), so this module imports nothing of ComfyUI and runs nothing on import.
 *
 * host = { app,                       ComfyUI's app (graph, extensionManager)
 *          storedPayload(nodeId),     the node's last payload kept across node rebuilds, or null
 *          remember(nodeId, data),    keep a payload for that
 *          uiState(nodeId),           an object kept across node rebuilds (Ctrl+Z, Ctrl+Y): brush, selection,
 *                                     the editor's undo and redo texts, the last good view
 *          runSteps,                  WeakMap: payload -> the edit steps of the run that produced it
 *          track(kind, delta),        count live "observers" / "listeners" (for tests)
 *          forget(editor) }           drop a disposed editor from the registry
 */
import * as actions from "./actions.js";
import { fallbackColour, paintCells } from "./grid.js";
import { pickCell, renderBrush, renderPalette, setBrushFromText, showSuggestions } from "./palette.js";
import { buildDom, disabledReason, renderStatus, renderSteps, renderTools } from "./panels.js";
import { clonePlan, formatEdits, parseEdits } from "./replay.js";
import { cellCenter, headCenter, renderTimeline, timeToClientX, timelineHeight } from "./timeline.js";
import { planView } from "./view.js";
import { findWord, nearestWords } from "./words.js";

export const NODE_TYPE = "PlanX_EditPlanTokens";
const EDITS_WIDGET = "edits";
const EDITOR_WIDGET = "planx_plan_editor";
const TEXT_HEIGHTS = [48, 180];   // the edits text box: closed (two lines) / open ("Text")

export class PlanEditor {
  constructor(node, host, { viewer = false } = {}) {
    this.node = node;
    this.host = host;
    this.viewer = viewer;
    this.ownUi = {};            // the state when the host keeps none
    this.server = null;         // the last planx_editor payload, plus the steps it ran with
    this.pickMode = false;
    this.cell = 12;
    this.seenText = null;
    this.view = null;
    this.stroke = null;
    this.drag = null;
    this.grip = null;
    this.disposed = false;
    this.abort = new AbortController();   // every listener the editor adds goes with dispose()
    this.listeners = 0;       // those on elements outside the editor's own DOM
    this.observer = null;
    this.dom = buildDom(this);
    this.widget = this.addWidget();
    if (!viewer) this.hookEditsWidget();
    this.watchWidth();
    this.sync(true);
  }

  /** What survives the node being rebuilt by ComfyUI's undo and redo, looked up by the node's id each time: a
   * rebuilt node is created with id -1 and gets its own id only when the graph configures it. */
  get ui() {
    const state = this.host.uiState?.(String(this.node.id)) ?? this.ownUi;
    state.history ??= [];     // texts before each editor action, for Undo
    state.redo ??= [];        // texts Undo took back, for Redo
    return state;
  }

  // kept in host.uiState, so they survive the node being rebuilt by ComfyUI's undo and redo
  get brush() { return this.ui.brush ?? null; }
  set brush(value) { this.ui.brush = value; }
  get selected() { return this.ui.selected ?? 0; }
  set selected(value) { this.ui.selected = value; }
  get history() { return this.ui.history; }
  get redoStack() { return this.ui.redo; }

  /** A listener on one of the editor's own elements, removed by dispose(). */
  on(target, type, handler) {
    target.addEventListener(type, handler, { signal: this.abort.signal });
  }

  /** A listener on something outside the editor (window, document, another widget), counted. */
  listen(target, type, handler) {
    if (!target?.addEventListener) return;
    this.on(target, type, handler);
    this.listeners++;
    this.host.track?.("listeners", 1);
  }

  /**
   * Release what the editor holds outside its own DOM: the ResizeObserver, every listener, the hook on the
   * edits widget's callback, its place in the registry. The node calls this from onRemoved; the editor
   * draws nothing afterwards.
   */
  dispose() {
    if (this.disposed) return;
    this.disposed = true;
    this.stroke = null;
    this.drag = null;
    if (this.observer) {
      this.observer.disconnect();
      this.observer = null;
      this.host.track?.("observers", -1);
    }
    this.abort.abort();
    this.host.track?.("listeners", -this.listeners);
    this.listeners = 0;
    const widget = this.editsWidget();
    if (widget && this.editsCallback && widget.callback === this.editsCallback) widget.callback = this.previousCallback;
    this.editsCallback = null;
    this.previousCallback = null;
    this.host.forget?.(this);
  }

  /** Re-lay the timeline (cells sized to the node) when its width changes, not mid-stroke or mid-drag. */
  watchWidth() {
    if (typeof ResizeObserver === "undefined") return;
    let width = 0;
    this.observer = new ResizeObserver(() => {
      const now = this.dom.timeline.clientWidth;
      if (this.disposed || Math.abs(now - width) < 4 || this.stroke || this.drag || !this.view) return;
      width = now;
      renderTimeline(this);
    });
    this.observer.observe(this.dom.timeline);
    this.host.track?.("observers", 1);
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
   * Follow the edits widget: re-read on its callback and on typing. Its height is fixed (two lines, or
   * taller with "Text"), so the preview of a run never shifts the timeline under the pointer.
   */
  hookEditsWidget() {
    const widget = this.editsWidget();
    if (!widget) return;
    if (widget.options && "element" in widget) {
      widget.options.getMinHeight = () => this.textHeight();
      widget.options.getMaxHeight = () => this.textHeight();
    }
    const input = widget.inputEl ?? widget.element;
    if (input?.style) input.style.fontSize = "15px";
    const editor = this;
    const previous = widget.callback;
    this.previousCallback = previous;
    this.editsCallback = function (...args) {
      const result = previous?.apply(this, args);
      editor.sync(false);
      return result;
    };
    widget.callback = this.editsCallback;
    this.listen(input, "input", () => this.sync(false));
  }

  textHeight() {
    return TEXT_HEIGHTS[this.ui.showText ? 1 : 0];
  }

  toggleText() {
    this.ui.showText = !this.ui.showText;
    this.node.setSize?.([this.node.size[0], this.node.size[1]]);
    this.host.app?.graph?.setDirtyCanvas(true, true);
    renderTools(this);
    this.say(this.ui.showText ? "The edit list as JSON text is open above" : "The JSON text is folded to two lines");
    return { ok: true };
  }

  editsLinked() {
    return !!this.node.inputs?.some((i) => i.name === EDITS_WIDGET && i.link != null);
  }

  readText() {
    const value = this.editsWidget()?.value;
    return typeof value === "string" ? value : "";
  }

  /** The edit text as steps, checked against the server's op list once a payload has one. */
  parse(text = this.readText()) {
    return parseEdits(text, Array.isArray(this.server?.ops) ? this.server.ops : null);
  }

  writeSteps(steps, why = "edit") {
    this.writeText(formatEdits(steps), why);
  }

  /**
   * Set the "edits" widget's text: callback, dirty canvas, workflow change tracking, redraw. `why`: "edit"
   * (remember the text before for Undo, forget Redo), "undo" or "redo" (keep the stacks as the action left them).
   */
  writeText(text, why = "edit") {
    const widget = this.editsWidget();
    if (!widget) return;
    if (why === "edit") {
      this.history.push(this.readText());
      this.redoStack.length = 0;
    } else if (why === "redo") {
      this.history.push(this.readText());
    }
    this.ui.lastWritten = text;
    this.seenText = text;
    widget.value = text;                      // a DOM widget's setter also calls its callback
    if (!("element" in widget)) widget.callback?.(text);
    const app = this.host.app;
    app?.graph?.setDirtyCanvas(true, true);
    try {
      app?.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
    } catch (exc) {
      console.debug("planx editor: change tracker", exc);
    }
    this.render();
  }

  /** Status, tools, suggestions, timeline, message line, palette, three step lines, grip, gaps, padding. */
  minHeight() {
    if (this.viewer) return 22 + timelineHeight(this) + 22 + 40 + 3 * 6 + 14;
    return 22 + 64 + timelineHeight(this) + 22 + 72 + 3 * 22 + 10 + 7 * 6 + 14;
  }

  // -- state ---------------------------------------------------------------------------------
  /** Re-read the edits text; recompute and redraw when it changed (or when forced). */
  sync(force) {
    if (this.disposed) return;
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
    const ops = Array.isArray(data.ops) ? data.ops : null;
    const runSteps = this.host.runSteps;
    if (!runSteps.has(data) && promptId !== "stored") runSteps.set(data, parseEdits(this.readText(), ops).steps);
    this.host.remember?.(String(this.node.id), data);
    this.server = {
      base: data.base ?? null, plan: data.plan ?? null, error: data.error ?? null,
      colours: data.colours ?? {}, words: data.words ?? {}, palette: data.palette ?? [],
      cellColours: data.cell_colours ?? null, steps: runSteps.get(data) ?? null, ops,
      colourSource: data.colour_source ?? null,
    };
    this.render();
  }

  /** A fresh editor (Ctrl+Z, Ctrl+Y and workflow tabs rebuild the nodes) takes the node's last payload that
   * the host kept (see storedPayload in the entry module). Returns whether it found one. */
  adoptStoredOutput() {
    const data = this.host.storedPayload?.(String(this.node.id));
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
    return findWord(this.server?.palette, word)?.code;
  }

  colourOf(code) {
    return this.server?.colours?.[String(code)] ?? fallbackColour(code ?? 0);
  }

  wordOf(code) {
    return this.server?.words?.[String(code)] ?? "";
  }

  /** What to draw: see view.js. The last view with a plan stays on screen while the text does not parse. */
  computeView() {
    const suggest = (word) => nearestWords(word, this.server?.palette ?? []);
    const view = planView(this.server, this.parse(), (w) => this.codeOfWord(w), this.ui.lastGood, suggest);
    if (view.plan && !view.broken) {
      this.ui.lastGood = { plan: view.plan, steps: view.steps, cellColours: view.cellColours ?? null };
    }
    if (this.runError && this.runError.text === this.readText()) {
      view.status = `The last run failed: ${this.runError.message} · ${view.status}`;
      view.bad = true;
    }
    return view;
  }

  render() {
    if (this.disposed) return;
    this.view = this.computeView();
    const { dom, view } = this;
    dom.root.dataset.planxNode = String(this.node.id);
    dom.root.dataset.source = view.source;
    if (view.plan) this.selected = Math.max(0, Math.min(this.selected, view.plan.keyframes.length - 1));
    renderStatus(this);
    renderTools(this);
    renderTimeline(this);
    renderPalette(this);
    renderSteps(this);
  }

  renderTools() {
    renderTools(this);
  }

  renderBrush() {
    renderBrush(this);
  }

  canEdit() {
    return !disabledReason(this, "paint");
  }

  /** The message line: what the last action did, or why it could not. */
  say(text, bad = false) {
    this.dom.info.textContent = text;
    this.dom.info.title = text;
    this.dom.info.classList.toggle("bad", !!bad);
  }

  refuse(reason) {
    return actions.refuse(this, reason);
  }

  guard(i, action = "paint") {
    return actions.guard(this, i, action);
  }

  // -- brush (see palette.js) ----------------------------------------------------------------
  pickCell(i, row, col) {
    return pickCell(this, i, row, col);
  }

  setBrush(brush) {
    this.brush = brush;
    if (brush) showSuggestions(this, []);
    renderTools(this);
    renderPalette(this);
  }

  setBrushFromText(text) {
    return setBrushFromText(this, text);
  }

  // -- actions (see actions.js) ----------------------------------------------------------------
  select(i, redraw = true) {
    if (!this.view?.plan) return;
    this.selected = Math.max(0, Math.min(i, this.view.plan.keyframes.length - 1));
    const k = this.view.plan.keyframes[this.selected];
    this.say(`Keyframe ${this.selected} selected (${k.time} s${k.locked ? ", locked" : ""})`);
    if (redraw) this.render();
    else this.markSelection();
  }

  markSelection() {
    for (const node of this.dom.track.querySelectorAll("[data-keyframe]")) {
      node.classList.toggle("sel", Number(node.dataset.keyframe) === this.selected);
    }
    renderTools(this);
  }

  /** Scroll keyframe i's grid into view (a duplicate lands where it can be seen). */
  reveal(i) {
    const grid = this.dom.track.querySelector(`canvas[data-keyframe="${i}"]`);
    grid?.scrollIntoView?.({ block: "nearest", inline: "nearest" });
  }

  focus() {
    this.dom.root.focus?.({ preventScroll: true });
  }

  runAction(action) { return actions.runAction(this, action); }
  retime(i, time) { return actions.retime(this, i, time); }
  duplicate(i) { return actions.duplicate(this, i); }
  remove(i) { return actions.remove(this, i); }
  lock(i, locked = true) { return actions.lock(this, i, locked); }
  undo() { return actions.undo(this); }
  redo() { return actions.redo(this); }
  clear() { return actions.clear(this); }
  removeStep(i) { return actions.removeStep(this, i); }
  onKey(e) { return actions.onKey(this, e); }

  /** Paint cells [[row, col], ...] of keyframe i with a brush {code} or {word}, as one stroke. */
  paintCells(i, cells, brush) {
    return paintCells(this, i, cells, brush);
  }

  // -- for tests -----------------------------------------------------------------------------
  describe() {
    this.sync(false);
    const view = this.view;
    const buttons = Object.fromEntries(Object.keys(this.dom.buttons).map((a) => [a, disabledReason(this, a)]));
    return {
      nodeId: this.node.id, source: view.source, status: view.status, info: this.dom.info.textContent,
      editable: this.canEdit(), selected: this.selected, brush: this.brush, cell: this.cell, text: this.readText(),
      steps: view.steps, plan: view.plan ? clonePlan(view.plan) : null, grid: view.plan?.grid ?? null,
      times: view.plan?.keyframes.map((k) => k.time) ?? [], locked: view.plan?.keyframes.map((k) => k.locked) ?? [],
      serverPlan: this.server?.plan ?? null, serverError: this.server?.error ?? null, hasRun: !!this.server,
      unchecked: view.unchecked ?? [], ops: this.server?.ops ?? null, disposed: this.disposed, marks: view.marks,
      problems: view.problems, buttons, showAll: !!this.ui.showAll, bad: !!view.bad,
      palette: [...this.dom.palette.querySelectorAll("button[data-word]")].map((b) => b.dataset.word),
      suggestions: [...this.dom.suggest.querySelectorAll("button[data-suggest]")].map((b) => b.dataset.suggest),
      colourSource: this.server?.colourSource ?? null, viewer: this.viewer,
    };
  }

  /** Client coordinates of a cell's centre / a header's centre / a time on the ruler. */
  cellCenter(i, row, col) {
    return cellCenter(this, i, row, col);
  }

  headCenter(i) {
    return headCenter(this, i);
  }

  timeToClientX(time) {
    return timeToClientX(this, time);
  }
}
