/**
 * PlanEditor: the editor of one Edit Plan Tokens node. Its only state is the node's "edits" text
 * (see web/README.md): it reads it, draws replay(base, edits) and appends steps to it. What it
 * needs of ComfyUI comes in `host` from the entry module (../planx_plan_editor.js), so this module
 * imports nothing of ComfyUI and runs nothing on import.
 *
 * host = { app,                       ComfyUI's app (graph, extensionManager)
 *          storedPayload(nodeId),     the node's last payload kept across node rebuilds, or null
 *          remember(nodeId, data),    keep a payload for that
 *          runSteps,                  WeakMap: payload -> the edit steps of the run that produced it
 *          track(kind, delta),        count live "observers" / "listeners" (for tests)
 *          forget(editor) }           drop a disposed editor from the registry
 */
import { fallbackColour, paintCells } from "./grid.js";
import { buildDom, pickCell, renderPalette, renderStatus, renderSteps, renderTools, setBrushFromText } from "./panels.js";
import { clonePlan, duplicateFrame, formatEdits, frameOf, frameTime, isInt, parseEdits } from "./replay.js";
import { cellCenter, frameHolder, GRID_Y, headCenter, renderTimeline, timeToClientX } from "./timeline.js";
import { planView } from "./view.js";

export const NODE_TYPE = "PlanX_EditPlanTokens";
const EDITS_WIDGET = "edits";
const EDITOR_WIDGET = "planx_plan_editor";
const ZOOMS = [6, 8, 10, 12, 16, 20, 24];
const DEFAULT_CELL = 10;
const EDITS_HEIGHT = 64;    // the edits text box keeps this height: the editor lists the steps itself

export class PlanEditor {
  constructor(node, host) {
    this.node = node;
    this.host = host;
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
    this.disposed = false;
    this.abort = new AbortController();   // every listener the editor adds goes with dispose()
    this.listeners = 0;       // those on elements outside the editor's own DOM
    this.observer = null;
    this.dom = buildDom(this);
    this.widget = this.addWidget();
    this.hookEditsWidget();
    this.watchWidth();
    this.sync(true);
  }

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
   * Release what the editor holds outside its own DOM: the ResizeObserver, every listener, the
   * hook on the edits widget's callback, its place in the registry. The node calls this from
   * onRemoved; the editor draws nothing afterwards.
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

  /** Re-lay the timeline when the node's width changes (not in the middle of a stroke or drag). */
  watchWidth() {
    if (typeof ResizeObserver === "undefined") return;
    let width = 0;
    this.observer = new ResizeObserver(() => {
      const now = this.dom.timeline.clientWidth;
      if (this.disposed || Math.abs(now - width) < 8 || this.stroke || this.drag || !this.view) return;
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
    this.previousCallback = previous;
    this.editsCallback = function (...args) {
      const result = previous?.apply(this, args);
      editor.sync(false);
      return result;
    };
    widget.callback = this.editsCallback;
    this.listen(widget.inputEl ?? widget.element, "input", () => this.sync(false));
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
    const app = this.host.app;
    app?.graph?.setDirtyCanvas(true, true);
    try {
      app?.extensionManager?.workflow?.activeWorkflow?.changeTracker?.checkState?.();
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
    };
    this.render();
  }

  /**
   * A fresh editor (Ctrl+Z and workflow tabs rebuild the nodes) takes the node's last payload that
   * the host kept (see storedPayload in the entry module). Returns whether it found one.
   */
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
    const hit = (this.server?.palette ?? []).find((p) => p.word === word);
    return hit ? hit.code : undefined;
  }

  colourOf(code) {
    return this.server?.colours?.[String(code)] ?? fallbackColour(code);
  }

  wordOf(code) {
    return this.server?.words?.[String(code)] ?? "";
  }

  /** What to draw: {plan, steps, source, status, bad, editable, failedAt, skipFrom, unchecked}. */
  computeView() {
    const view = planView(this.server, this.parse(), (w) => this.codeOfWord(w));
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
    renderStatus(this);
    if (view.plan) this.selected = Math.min(this.selected, view.plan.keyframes.length - 1);
    renderTools(this);
    renderTimeline(this);
    renderPalette(this);
    renderSteps(this);
  }

  canEdit() {
    return !!(this.view?.editable && this.view.plan && !this.editsLinked());
  }

  say(text) {
    this.dom.info.textContent = text;
  }

  // -- brush (see panels.js) ----------------------------------------------------------------
  pickCell(i, row, col) {
    return pickCell(this, i, row, col);
  }

  setBrush(brush) {
    this.brush = brush;
    renderTools(this);
    renderPalette(this);
  }

  setBrushFromText(text) {
    return setBrushFromText(this, text);
  }

  // -- actions -------------------------------------------------------------------------------
  append(steps) {
    const parsed = this.parse();
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
    renderTools(this);
  }

  runAction(action) {
    const handlers = {
      pick: () => { this.pickMode = !this.pickMode; renderTools(this); },
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
    const holder = frameHolder(plan, frame, i);
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

  /** Paint cells [[row, col], ...] of keyframe i with a brush {code} or {word}, as one stroke. */
  paintCells(i, cells, brush) {
    return paintCells(this, i, cells, brush);
  }

  /** Undo: restore the text before the editor's last action, or drop the last step. */
  undo() {
    const text = this.readText();
    if (this.history.length && text === this.lastWritten) {
      this.writeText(this.history.pop(), false);
      return { ok: true };
    }
    const steps = this.parse(text).steps;
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
    this.host.app?.graph?.setDirtyCanvas(true, true);
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
      unchecked: view.unchecked ?? [], ops: this.server?.ops ?? null, disposed: this.disposed,
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
