/**
 * The editor's panels: the DOM skeleton (status, tools, timeline box, info, palette, step list,
 * tooltip) and what fills the tools, the palette and the step list. Functions of a PlanEditor;
 * nothing runs on import. The look is in ../planx_plan_editor.css.
 */
import { compactJson, isContinuous } from "./replay.js";

/** A DOM element with attributes ("text", "style", data-*, ... or a property) and children. */
export function el(tag, attrs = {}, children = []) {
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

const TOOLS = [["pick", "Pick", "eyedropper: click a cell to take its token (or alt/right-click)"],
  ["duplicate", "Duplicate", "copy the selected keyframe to the next free frame"],
  ["delete", "Delete", "delete the selected keyframe"], ["lock", "Lock", "lock / unlock the selected keyframe"],
  ["undo", "Undo", "undo the last edit"], ["clear", "Clear", "remove every edit (undo brings them back)"],
  ["zoom-out", "−", "smaller cells"], ["zoom-in", "+", "bigger cells"]];

/** The editor's elements: {root, status, brush, word, buttons, tools, track, timeline, info, palette, steps, tip}. */
export function buildDom(editor) {
  const dom = {};
  dom.status = el("div", { className: "planx-ed-status", "data-role": "status" });
  dom.brush = el("span", { className: "planx-ed-brush", "data-role": "brush" });
  dom.word = el("input", { type: "text", placeholder: "word or code, Enter", "data-role": "word" });
  editor.on(dom.word, "keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Enter") editor.setBrushFromText(dom.word.value);
  });
  dom.buttons = {};
  for (const [action, label, title] of TOOLS) {
    const button = el("button", { text: label, title, "data-action": action, type: "button" });
    editor.on(button, "click", () => editor.runAction(action));
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
  editor.on(dom.root, "contextmenu", (e) => e.preventDefault());
  return dom;
}

/** The status line: the view's status, or why the editor is read-only. */
export function renderStatus(editor) {
  const { dom, view } = editor;
  dom.status.textContent = editor.editsLinked() ? "The edits come from a link; the editor is read-only" : view.status;
  dom.status.classList.toggle("bad", !!view.bad);
  dom.status.title = view.status;
}

/** The brush chip and label, the pick toggle, Lock/Unlock, which buttons work. */
export function renderTools(editor) {
  const { dom, view } = editor;
  const brush = editor.brush;
  const known = brush?.code != null;
  const label = !brush ? "no brush" : known ? `${brush.word || "code"} · ${brush.code}` : `word "${brush.word}"`;
  const chip = el("span", { className: `planx-ed-chip${known ? "" : " word"}` });
  if (known) chip.style.background = editor.colourOf(brush.code);
  dom.brush.replaceChildren(chip, el("span", { text: label }));
  dom.buttons.pick.classList.toggle("on", editor.pickMode);
  const kf = view.plan?.keyframes?.[editor.selected];
  dom.buttons.lock.textContent = kf?.locked ? "Unlock" : "Lock";
  for (const action of ["pick", "duplicate", "delete", "lock"]) dom.buttons[action].disabled = !editor.canEdit();
  dom.buttons.undo.disabled = !editor.history.length && !view.steps.length;
}

/** The eyedropper: keyframe i's cell (row, col) becomes the brush; returns its code. */
export function pickCell(editor, i, row, col) {
  const plan = editor.view.plan;
  if (isContinuous(plan)) return editor.say("A continuous plan has no codes to pick; edit it in the text");
  const code = plan.keyframes[i].tokens[row * plan.grid[1] + col];
  editor.setBrush({ code, word: editor.wordOf(code) });
  editor.pickMode = false;
  renderTools(editor);
  editor.say(`Brush: ${editor.wordOf(code) || "code"} ${code} (picked from keyframe ${i}, row ${row}, col ${col})`);
  return code;
}

/** Typed text -> brush: a palette word (exact, then any case) or a code paints with `fill`, else fill_word. */
export function setBrushFromText(editor, text) {
  const word = String(text ?? "").trim();
  if (!word) return editor.setBrush(null);
  const palette = editor.server?.palette ?? [];
  const hit = palette.find((p) => p.word === word) ?? palette.find((p) => p.word.toLowerCase() === word.toLowerCase());
  if (hit) return editor.setBrush({ code: hit.code, word: hit.word });
  if (/^\d+$/.test(word)) {
    const code = Number(word);
    const size = editor.server?.base?.codebook?.size;
    if (size !== undefined && code >= size) return editor.say(`Code ${code} is outside the codebook (0..${size - 1})`);
    return editor.setBrush({ code, word: editor.wordOf(code) });
  }
  editor.setBrush({ word });
  editor.say(`"${word}" is not in the palette: painting it adds fill_word steps, coloured after the next run`);
}

/** One swatch per palette word, in its code's colour; the brush's swatch is marked. */
export function renderPalette(editor) {
  const palette = editor.server?.palette ?? [];
  editor.dom.palette.replaceChildren(...palette.map((p) => {
    const swatch = el("button", {
      type: "button", text: p.word, title: `${p.word} · code ${p.code}`,
      "data-code": String(p.code), "data-word": p.word,
      className: editor.brush?.code === p.code ? "on" : "",
    });
    swatch.style.background = editor.colourOf(p.code);
    editor.on(swatch, "click", () => editor.setBrush({ code: p.code, word: p.word }));
    return swatch;
  }));
}

/** The step list: one line per step; the failing one red, the first not replayed amber. */
export function renderSteps(editor) {
  const { dom, view } = editor;
  const unchecked = new Set(view.unchecked ?? []);
  dom.steps.replaceChildren(...view.steps.map((step, i) => {
    const later = unchecked.has(i) ? " — checked when the node runs" : "";
    const item = el("li", { text: describeStep(step, (code) => editor.wordOf(code)) + later,
      title: compactJson(step), "data-step": String(i) });
    if (i === view.failedAt) item.classList.add("bad");
    else if (i === view.skipFrom) item.classList.add("skip");
    else if (later) item.classList.add("unchecked");
    return item;
  }));
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

/** A step in words, e.g. `fill #1 cell 2,3 ← 27 "sky"`; other ops as compact JSON. */
export function describeStep(step, wordOf = () => "") {
  const kf = describeKeyframes(step?.keyframe);
  switch (step?.op) {
    case "fill": {
      const word = wordOf(step.token);
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
