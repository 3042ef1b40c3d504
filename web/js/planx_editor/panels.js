/**
 * The editor's panels: the DOM skeleton (status line, tools, word suggestions, timeline box, message line,
 * palette, step list, grip, tooltip) and what fills the status line, the tools and the step list. Functions
 * of a PlanEditor; nothing runs on import. The look is in ../planx_plan_editor.css.
 *
 * A control that cannot act now stays in place, looks disabled (class "off", aria-disabled) and says why:
 * on hover (its title) and, when clicked, on the message line.
 */
import { compactJson } from "./replay.js";

/** A DOM element with attributes ("text", "style", data-*, ... or a property) and children. */
export function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("data-") || key.startsWith("aria-") || ["title", "type", "placeholder", "tabindex"].includes(key)) {
      node.setAttribute(key, value);
    } else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

export const TOOLS = [
  ["pick", "Pick", "eyedropper: click a cell to take its word (or alt/right-click a cell)"],
  ["duplicate", "Duplicate", "copy the selected keyframe to the next free frame"],
  ["delete", "Delete", "delete the selected keyframe (the Delete key does the same)"],
  ["lock", "Lock", "lock / unlock the selected keyframe: the planner keeps a locked keyframe"],
  ["undo", "Undo", "undo the editor's last edit (Ctrl+Z undoes the graph's last change)"],
  ["redo", "Redo", "redo what Undo took back (Ctrl+Y redoes the graph's last change)"],
  ["clear", "Clear", "remove every edit (Undo brings them back)"],
  ["text", "Text", "show or hide the edit list as JSON text"],
];

/** The editor's elements: {root, status, brush, word, buttons, tools, suggest, track, timeline, info, palette,
 * steps, grip, tip}. */
export function buildDom(editor) {
  const dom = {};
  dom.status = el("div", { className: "planx-ed-status", "data-role": "status" });
  dom.brush = el("span", { className: "planx-ed-brush", "data-role": "brush" });
  dom.word = el("input", { type: "text", placeholder: "type a word, Enter", "data-role": "word" });
  editor.on(dom.word, "keydown", (e) => {
    e.stopPropagation();
    if (e.key === "Enter") editor.setBrushFromText(dom.word.value);
  });
  dom.buttons = {};
  for (const [action, label, title] of TOOLS) {
    const button = el("button", { text: label, title, "data-action": action, type: "button" });
    button.dataset.help = title;
    editor.on(button, "click", () => editor.runAction(action));
    dom.buttons[action] = button;
  }
  dom.tools = el("div", { className: "planx-ed-tools" }, [dom.brush, dom.word, ...Object.values(dom.buttons)]);
  dom.suggest = el("div", { className: "planx-ed-suggest", "data-role": "suggest" });
  dom.track = el("div", { className: "planx-ed-track" });
  dom.timeline = el("div", { className: "planx-ed-timeline", "data-role": "timeline" }, [dom.track]);
  dom.info = el("div", { className: "planx-ed-info", "data-role": "info" });
  dom.palette = el("div", { className: "planx-ed-palette", "data-role": "palette" });
  dom.steps = el("ol", { className: "planx-ed-steps", "data-role": "steps", start: 0 });
  dom.grip = el("div", { className: "planx-ed-grip", "data-role": "grip", title: "drag to make the step list taller" });
  dom.tip = el("div", { className: "planx-ed-tip" });
  dom.root = el("div", { className: `planx-ed${editor.viewer ? " planx-ed-viewer" : ""}`, tabindex: "0" },
    [dom.status, dom.tools, dom.suggest, dom.timeline, dom.info, dom.palette, dom.steps, dom.grip, dom.tip]);
  editor.on(dom.root, "contextmenu", (e) => e.preventDefault());
  editor.on(dom.root, "keydown", (e) => editor.onKey(e));
  editor.on(dom.grip, "pointerdown", (e) => gripDown(editor, e));
  editor.on(dom.grip, "pointermove", (e) => gripMove(editor, e));
  editor.on(dom.grip, "pointerup", (e) => gripUp(editor, e));
  return dom;
}

/** The status line: always one line, always there; red for an error, amber for a warning. */
export function renderStatus(editor) {
  const { dom, view } = editor;
  const text = editor.editsLinked() ? "The edits come from a link; the editor is read-only" : view.status;
  dom.status.textContent = text;
  dom.status.title = text;
  dom.status.classList.toggle("bad", !!view.bad);
  dom.status.classList.toggle("warn", !view.bad && !!view.problems?.length);
}

/** Why `action` cannot act now, or "" when it can. */
export function disabledReason(editor, action) {
  const view = editor.view ?? {};
  const plan = view.plan;
  if (action === "text") return "";
  if (editor.viewer) return "This is a preview: edit the plan on a Plan-X Edit Plan Tokens node";
  if (action === "undo") return editor.history.length || view.steps?.length ? "" : "Nothing to undo";
  if (action === "redo") return editor.redoStack.length ? "" : "Nothing to redo: Undo first";
  if (action === "clear") return view.steps?.length ? "" : "There are no edits to clear";
  if (editor.editsLinked()) return "The edits come from a link: change them on the node they come from";
  if (view.broken) return "The edit text is not valid JSON: Undo, Clear, or fix the text first";
  if (!plan) return "Run the workflow first: the editor works on the plan of the last run";
  if (!view.editable) return "A continuous plan is read-only here: edit its text";
  if (action === "delete" && plan.keyframes.length === 1) return "Cannot delete the only keyframe";
  return "";
}

/** The brush, which tools can act (and why not), Lock/Unlock, the Text toggle. */
export function renderTools(editor) {
  const { dom, view } = editor;
  const kf = view.plan?.keyframes?.[editor.selected];
  dom.buttons.lock.textContent = kf?.locked ? "Unlock" : "Lock";
  dom.buttons.pick.classList.toggle("on", editor.pickMode);
  dom.buttons.text.classList.toggle("on", !!editor.ui.showText);
  for (const [action, button] of Object.entries(dom.buttons)) {
    const reason = disabledReason(editor, action);
    button.classList.toggle("off", !!reason);
    button.setAttribute("aria-disabled", reason ? "true" : "false");
    button.title = reason ? `${button.dataset.help} — ${reason}` : button.dataset.help;
  }
  editor.renderBrush();
}

/** The step list: one line per step with a × that removes it; marked when it is not applied as written. */
export function renderSteps(editor) {
  const { dom, view } = editor;
  const unchecked = new Set(view.unchecked ?? []);
  const marks = view.marks ?? {};
  const removable = !editor.editsLinked() && !view.broken;
  dom.steps.replaceChildren(...view.steps.map((step, i) => {
    const later = unchecked.has(i) ? " — checked when the node runs" : "";
    const note = marks[i] ? ` — ${marks[i].note}` : "";
    const remove = el("button", { type: "button", text: "×", title: `remove edit ${i}`, "data-action": "remove-step",
      "data-step": String(i) });
    if (!removable) remove.classList.add("off");
    editor.on(remove, "click", (e) => { e.stopPropagation(); editor.removeStep(i); });
    const item = el("li", { title: compactJson(step), "data-step": String(i) },
      [remove, describeStep(step, (code) => editor.wordOf(code)) + later + note]);
    if (marks[i]) item.classList.add(marks[i].cls);
    else if (later) item.classList.add("unchecked");
    return item;
  }));
}

// -- the grip: drag to make the node (and so the step list) taller ----------------------------------------------
function gripDown(editor, e) {
  if (e.button !== 0) return;
  e.preventDefault();
  e.stopPropagation();
  editor.dom.grip.setPointerCapture?.(e.pointerId);
  editor.grip = { y: e.clientY, height: editor.node.size?.[1] ?? 0 };
}

function gripMove(editor, e) {
  if (!editor.grip) return;
  e.stopPropagation();
  const box = editor.dom.root.getBoundingClientRect();
  const scale = box.height / (editor.dom.root.offsetHeight || box.height || 1) || 1;
  const height = Math.max(editor.grip.height + (e.clientY - editor.grip.y) / scale, editor.node.computeSize?.()[1] ?? 0);
  editor.node.setSize?.([editor.node.size[0], height]);
  editor.host.app?.graph?.setDirtyCanvas(true, true);
}

function gripUp(editor, e) {
  if (!editor.grip) return;
  editor.grip = null;
  editor.dom.grip.releasePointerCapture?.(e.pointerId);
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

/** A step in words, e.g. `fill #1 cell 2,3 ← "red" (16)`; other ops as compact JSON. */
export function describeStep(step, wordOf = () => "") {
  const kf = describeKeyframes(step?.keyframe);
  switch (step?.op) {
    case "fill": {
      const word = wordOf(step.token);
      return `fill ${kf} ${describeRect(step.rect)} ← ${word ? `"${word}" (${step.token})` : `code ${step.token}`}`;
    }
    case "fill_word": return `fill ${kf} ${describeRect(step.rect)} ← word "${step.word}"`;
    case "move_keyframe": return `move ${kf} → ${step.time} s`;
    case "duplicate_keyframe": return `duplicate ${kf} → ${step.time} s`;
    case "delete_keyframe": return `delete ${kf}`;
    case "lock": return `${step.locked === false ? "unlock" : "lock"} ${kf}`;
    default: return compactJson(step);
  }
}
