/**
 * What the editor's controls do: retime, duplicate, delete, lock, undo, redo, clear, remove one step, and the
 * keys (Delete, arrows, Escape). Each action appends steps to the edit text (or restores an earlier text),
 * says what it did on the message line, and returns {ok: true, ...} or {ok: false, reason}. Functions of a
 * PlanEditor; nothing runs on import.
 */
import { disabledReason } from "./panels.js";
import { duplicateFrame, formatTime, frameOf, frameTime, isInt } from "./replay.js";
import { frameHolder } from "./timeline.js";

export function refuse(editor, reason) {
  editor.say(reason, true);
  return { ok: false, reason };
}

/** Refuse an action on keyframe i that cannot act now (saying why), else null. */
export function guard(editor, i, action = "") {
  const reason = disabledReason(editor, action);
  if (reason) return refuse(editor, reason);
  if (!isInt(i) || i < 0 || i >= editor.view.plan.keyframes.length) return refuse(editor, `No keyframe ${i}`);
  return null;
}

export function runAction(editor, action) {
  const reason = disabledReason(editor, action);
  if (reason) return refuse(editor, reason);
  const handlers = {
    pick: () => {
      editor.pickMode = !editor.pickMode;
      editor.renderTools();
      editor.say(editor.pickMode ? "Pick: click a cell to take its word" : "Pick cancelled");
      return { ok: true };
    },
    duplicate: () => duplicate(editor, editor.selected),
    delete: () => remove(editor, editor.selected),
    lock: () => lock(editor, editor.selected, !editor.view.plan?.keyframes[editor.selected]?.locked),
    undo: () => undo(editor),
    redo: () => redo(editor),
    clear: () => clear(editor),
    text: () => editor.toggleText(),
  };
  return handlers[action]?.();
}

function append(editor, steps, message) {
  const parsed = editor.parse();
  editor.writeSteps([...(parsed.steps ?? []), ...steps]);
  editor.say(message);
}

export function retime(editor, i, time) {
  const refused = guard(editor, i, "retime");
  if (refused) return refused;
  const plan = editor.view.plan;
  const frame = Math.max(0, Math.min(plan.video.num_frames - 1, frameOf(plan, time)));
  const snapped = frameTime(plan, frame);
  const holder = frameHolder(plan, frame, i);
  if (holder !== null) return refuse(editor, `Frame ${frame} holds keyframe ${holder}: cannot move keyframe ${i} there`);
  if (frame === frameOf(plan, plan.keyframes[i].time)) return refuse(editor, `Keyframe ${i} already sits on frame ${frame}`);
  const after = plan.keyframes.filter((k, j) => j !== i && k.time < snapped).length;
  editor.selected = after;
  append(editor, [{ op: "move_keyframe", keyframe: i, time: snapped }],
    `Moved keyframe ${i} to ${formatTime(snapped)} s (frame ${frame})${after !== i ? `: it is keyframe ${after} now` : ""}`);
  return { ok: true, time: snapped, frame, index: after };
}

export function duplicate(editor, i) {
  const refused = guard(editor, i, "duplicate");
  if (refused) return refused;
  const plan = editor.view.plan;
  const frame = duplicateFrame(plan, i);
  if (frame === null) return refuse(editor, "Every video frame already holds a keyframe");
  const time = frameTime(plan, frame);
  editor.selected = plan.keyframes.filter((k) => k.time < time).length;
  append(editor, [{ op: "duplicate_keyframe", keyframe: i, time }],
    `Duplicated keyframe ${i} to ${formatTime(time)} s: the copy is keyframe ${editor.selected}`);
  editor.reveal(editor.selected);
  return { ok: true, time, frame, index: editor.selected };
}

export function remove(editor, i) {
  const refused = guard(editor, i, "delete");
  if (refused) return refused;
  const time = editor.view.plan.keyframes[i].time;
  append(editor, [{ op: "delete_keyframe", keyframe: i }], `Deleted keyframe ${i} (${formatTime(time)} s)`);
  editor.selected = Math.max(0, Math.min(i, editor.view.plan.keyframes.length - 1));
  editor.render();
  return { ok: true };
}

export function lock(editor, i, locked = true) {
  const refused = guard(editor, i, "lock");
  if (refused) return refused;
  append(editor, [{ op: "lock", keyframe: i, locked: !!locked }], `${locked ? "Locked" : "Unlocked"} keyframe ${i}`);
  return { ok: true };
}

/** Undo: restore the text before the editor's last action, or drop the last step (text changed by hand or
 * by the graph's own undo since). What it takes back can be redone. */
export function undo(editor) {
  const text = editor.readText();
  if (editor.history.length && text === editor.ui.lastWritten) {
    editor.redoStack.push(text);
    editor.writeText(editor.history.pop(), "undo");
    editor.say("Undid the last edit");
    return { ok: true };
  }
  const parsed = editor.parse(text);
  if (parsed.error) {  // text broken by hand: back to the last list the editor wrote
    const back = editor.ui.lastWritten ?? editor.history.at(-1);
    if (back == null || back === text) return refuse(editor, "The edit text is not valid JSON: fix it, or Clear");
    editor.redoStack.push(text);
    editor.writeText(back, "undo");
    editor.say("Restored the last edit list the editor wrote");
    return { ok: true };
  }
  const steps = parsed.steps;
  if (!steps?.length) return refuse(editor, "Nothing to undo");
  editor.redoStack.push(text);
  editor.writeSteps(steps.slice(0, -1), "undo");
  editor.say(`Removed the last edit (${steps.at(-1)?.op})`);
  return { ok: true };
}

export function redo(editor) {
  if (!editor.redoStack.length) return refuse(editor, "Nothing to redo");
  editor.writeText(editor.redoStack.pop(), "redo");
  editor.say("Redid the edit");
  return { ok: true };
}

export function clear(editor) {
  const count = editor.view?.steps?.length ?? 0;
  editor.writeSteps([]);
  editor.say(`Removed ${count} edit${count === 1 ? "" : "s"}; Undo brings them back`);
  return { ok: true };
}

/** Remove step `index` from the list (the × on its line). */
export function removeStep(editor, index) {
  if (editor.editsLinked()) return refuse(editor, "The edits come from a link: change them on the node they come from");
  const steps = editor.parse().steps;
  if (!steps) return refuse(editor, "The edit text is not valid JSON: Undo, Clear, or fix the text first");
  if (!isInt(index) || index < 0 || index >= steps.length) return refuse(editor, `No edit ${index}`);
  editor.writeSteps(steps.filter((_, i) => i !== index));
  editor.say(`Removed edit ${index} (${steps[index]?.op}); Undo brings it back`);
  return { ok: true };
}

/**
 * Keys while the editor has the focus: Delete/Backspace delete the selected keyframe (and never reach the
 * canvas, which would delete the node), arrows select, Escape leaves the eyedropper. Ctrl+Z and Ctrl+Y go on
 * to ComfyUI, whose undo rebuilds the node; the editor's brush and selection survive that.
 */
export function onKey(editor, e) {
  if (e.target !== editor.dom.root || e.ctrlKey || e.metaKey || e.altKey) return;
  const plan = editor.view?.plan;
  const keys = {
    Delete: () => remove(editor, editor.selected),
    Backspace: () => remove(editor, editor.selected),
    ArrowLeft: () => plan && editor.select(editor.selected - 1),
    ArrowRight: () => plan && editor.select(editor.selected + 1),
    Escape: () => { editor.pickMode = false; editor.renderTools(); },
  };
  if (!keys[e.key]) return;
  e.preventDefault();
  e.stopPropagation();
  keys[e.key]();
}
