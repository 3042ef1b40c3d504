/**
 * A keyframe's grid of cells: its canvas, drawing it in the plan's colours, and painting on it
 * (strokes -> fill steps, the eyedropper, the hover tip). Functions of a PlanEditor; nothing runs
 * on import.
 */
import { disabledReason, el } from "./panels.js";
import { coverCells, isContinuous, isInt } from "./replay.js";
import { plural } from "./view.js";
import { findWord, nearestWords } from "./words.js";

/** The colour of a code the payload does not name: spread round the hue circle. */
export function fallbackColour(code) {
  return `hsl(${(code * 137.508) % 360}, 45%, 48%)`;
}

/** Keyframe i's <canvas data-keyframe=i data-rows data-cols data-cell>, drawn, at geo.xs[i]. */
export function buildGrid(editor, geo, i, top) {
  const canvas = el("canvas", {
    className: `planx-ed-grid${i === editor.selected ? " sel" : ""}`, "data-keyframe": String(i),
    "data-rows": String(geo.gh), "data-cols": String(geo.gw), "data-cell": String(editor.cell),
    width: geo.thumbW, height: geo.thumbH,
  });
  canvas.style.left = `${geo.xs[i]}px`;
  canvas.style.top = `${top}px`;
  editor.on(canvas, "pointerdown", (e) => gridDown(editor, e, i));
  editor.on(canvas, "pointermove", (e) => gridMove(editor, e, i));
  editor.on(canvas, "pointerup", (e) => gridUp(editor, e));
  editor.on(canvas, "pointercancel", () => cancelStroke(editor));
  editor.on(canvas, "pointerleave", () => {
    hideTip(editor);
    if (!editor.stroke) drawGrid(editor, canvas, i);
  });
  drawGrid(editor, canvas, i);
  return canvas;
}

export function gridCanvas(editor, i) {
  return editor.dom.track.querySelector(`canvas.planx-ed-grid[data-keyframe="${i}"]`);
}

/** Draw keyframe i's cells (the stroke in progress in the brush, `hover` outlined). */
export function drawGrid(editor, canvas, i, hover = null) {
  const plan = editor.view.plan;
  const [gh, gw] = plan.grid;
  const cell = editor.cell;
  const tokens = plan.keyframes[i].tokens ?? [];
  const vectorColours = isContinuous(plan) ? (editor.view.cellColours?.[i] ?? []) : null;
  const ctx = canvas.getContext("2d");
  const painted = editor.stroke?.keyframe === i ? editor.stroke.cells : null;
  const paint = painted ? strokeStyle(editor) : null;
  for (let r = 0; r < gh; r++) {
    for (let c = 0; c < gw; c++) {
      const index = r * gw + c;
      const colour = vectorColours ? (vectorColours[index] ?? "#808080") : editor.colourOf(tokens[index]);
      ctx.fillStyle = painted?.has(index) ? paint : colour;
      ctx.fillRect(c * cell, r * cell, cell, cell);
    }
  }
  if (cell >= 8) drawCellLines(ctx, gh, gw, cell);
  if (hover) {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(hover.col * cell + 0.75, hover.row * cell + 0.75, cell - 1.5, cell - 1.5);
  }
}

function drawCellLines(ctx, gh, gw, cell) {
  ctx.strokeStyle = "rgba(0,0,0,.22)";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let c = 1; c < gw; c++) { ctx.moveTo(c * cell + 0.5, 0); ctx.lineTo(c * cell + 0.5, gh * cell); }
  for (let r = 1; r < gh; r++) { ctx.moveTo(0, r * cell + 0.5); ctx.lineTo(gw * cell, r * cell + 0.5); }
  ctx.stroke();
}

/** The brush's colour. */
function strokeStyle(editor) {
  return editor.colourOf(editor.brush?.code);
}

/** Pointer -> {row, col} on keyframe i's grid (null outside), through the node's CSS transform. */
function cellAt(editor, e, canvas) {
  const box = canvas.getBoundingClientRect();
  const [gh, gw] = editor.view.plan.grid;
  const col = Math.floor(((e.clientX - box.left) / box.width) * gw);
  const row = Math.floor(((e.clientY - box.top) / box.height) * gh);
  return row >= 0 && row < gh && col >= 0 && col < gw ? { row, col } : null;
}

// -- painting ----------------------------------------------------------------------------------
function gridDown(editor, e, i) {
  const cell = cellAt(editor, e, e.currentTarget);
  if (!cell) return;
  e.preventDefault();
  e.stopPropagation();
  editor.focus();
  editor.select(i, false);
  if (editor.pickMode || e.altKey || e.button === 2) {
    editor.pickCell(i, cell.row, cell.col);
    return;
  }
  if (e.button !== 0) return;
  const reason = disabledReason(editor, "paint");
  if (reason) return editor.say(reason, true);
  if (!editor.brush) return editor.say("Pick a brush first: a palette swatch, a typed word, or alt/right-click a cell", true);
  e.currentTarget.setPointerCapture?.(e.pointerId);
  editor.stroke = { keyframe: i, cells: new Set() };
  extendStroke(editor, i, cell);
}

function gridMove(editor, e, i) {
  const cell = cellAt(editor, e, e.currentTarget);
  if (editor.stroke?.keyframe === i) {
    if (cell) extendStroke(editor, i, cell);
    return;
  }
  if (editor.stroke || editor.drag) return;
  if (!cell) return hideTip(editor);
  showCellTip(editor, e, i, cell);
  drawGrid(editor, e.currentTarget, i, cell);
}

function gridUp(editor, e) {
  if (!editor.stroke) return;
  e.currentTarget.releasePointerCapture?.(e.pointerId);
  const stroke = editor.stroke;
  editor.stroke = null;
  commitStroke(editor, stroke.keyframe, stroke.cells);
}

function cancelStroke(editor) {
  if (!editor.stroke) return;
  const i = editor.stroke.keyframe;
  editor.stroke = null;
  const canvas = gridCanvas(editor, i);
  if (canvas) drawGrid(editor, canvas, i);
}

function extendStroke(editor, i, { row, col }) {
  const gw = editor.view.plan.grid[1];
  const index = row * gw + col;
  if (editor.stroke.cells.has(index)) return;
  editor.stroke.cells.add(index);
  drawGrid(editor, gridCanvas(editor, i), i);
}

/** Painted cells -> the fewest fill steps (rectangles), appended as one action. */
export function commitStroke(editor, i, cells) {
  const plan = editor.view.plan;
  const [gh, gw] = plan.grid;
  const tokens = plan.keyframes[i].tokens;
  const code = editor.brush.code;
  const must = new Set([...cells].filter((c) => tokens[c] !== code));
  const free = new Set(tokens.flatMap((t, c) => (t === code ? [c] : [])));
  const steps = coverCells(must, free, gh, gw).map((rect) => ({ op: "fill", keyframe: i, rect, token: code }));
  if (!steps.length) {
    editor.say("Those cells already hold the brush");
    return editor.render();
  }
  const parsed = editor.parse();
  editor.writeSteps([...(parsed.steps ?? []), ...steps]);
  const word = editor.brush.word ? `"${editor.brush.word}"` : `code ${code}`;
  editor.say(`Painted ${plural(must.size, "cell")} of keyframe ${i} with ${word} in ${plural(steps.length, "step")}`);
}

export function paintCells(editor, i, cells, brush) {
  const refused = editor.guard(i, "paint");
  if (refused) return refused;
  const [gh, gw] = editor.view.plan.grid;
  const set = new Set();
  for (const [row, col] of cells) {
    if (!(isInt(row) && isInt(col) && row >= 0 && row < gh && col >= 0 && col < gw)) return editor.refuse(`No cell ${row},${col}`);
    set.add(row * gw + col);
  }
  editor.select(i, false);
  if (brush?.code != null) editor.setBrush({ code: brush.code, word: editor.wordOf(brush.code) });
  else if (brush?.word) {
    const entry = findWord(editor.server?.palette, brush.word);
    if (!entry) {
      const near = nearestWords(brush.word, editor.server?.palette ?? []);
      return { ...editor.refuse(`"${brush.word}" is not a word the planner knows; nearest known words: ${near.join(", ")}`),
        suggestions: near };
    }
    editor.setBrush({ code: entry.code, word: entry.word });
  }
  if (!editor.brush) return editor.refuse("No brush: pick a palette word first");
  const before = editor.parse().steps?.length ?? 0;
  commitStroke(editor, i, set);
  const after = editor.parse().steps?.length ?? 0;
  return { ok: true, steps: after - before };
}

// -- the hover tip -----------------------------------------------------------------------------
function showCellTip(editor, e, i, { row, col }) {
  const plan = editor.view.plan;
  const index = row * plan.grid[1] + col;
  let text, short;
  if (isContinuous(plan)) {
    const vector = (plan.keyframes[i].vectors?.[index] ?? []).map((v) => Number(v).toFixed(2)).join(", ");
    short = `[${vector}]`;
    text = `vector ${short} — keyframe ${i}, row ${row}, col ${col}`;
  } else {
    const code = plan.keyframes[i].tokens[index];
    const word = editor.wordOf(code);
    short = word ? `${word} · ${code}` : `code ${code}`;
    text = `${word ? `"${word}" · ` : ""}code ${code} — keyframe ${i}, row ${row}, col ${col}`;
  }
  editor.dom.info.textContent = text;
  const tip = editor.dom.tip;
  const box = editor.dom.root.getBoundingClientRect();
  const scale = box.width / (editor.dom.root.offsetWidth || box.width || 1);
  tip.textContent = short;
  tip.style.display = "block";
  tip.style.left = `${(e.clientX - box.left) / scale + 12}px`;
  tip.style.top = `${(e.clientY - box.top) / scale + 12}px`;
}

export function hideTip(editor) {
  editor.dom.tip.style.display = "none";
}
