/**
 * The timeline: keyframes placed by time over 0 .. (num_frames-1)/fps, a ruler, a header per keyframe (drag
 * it sideways to retime) and the keyframe grids under it. Cells are sized to the node: every keyframe fits
 * the timeline's width (between MIN_CELL and MAX_CELL pixels a cell; below that it scrolls). Functions of a
 * PlanEditor; nothing runs on import.
 */
import { buildGrid, gridCanvas } from "./grid.js";
import { el } from "./panels.js";
import { duration, formatTime, frameOf, frameTime, roundHalfEven } from "./replay.js";
import { headText } from "./view.js";

export const GRID_Y = 58;   // top of the keyframe grids inside the track
const HEAD_Y = 24;          // top of the keyframe headers (26 px tall: .planx-ed-head in the CSS)
const HEAD_H = 26;
const HEAD_ROOM = 112;      // px between keyframes for a header with its time ("#2 0.625s 🔒")
const GAP = 14;             // least horizontal gap between two grids
const PAD = 8;
export const MIN_CELL = 6;
export const MAX_CELL = 30;

/** The cell size that fits every keyframe of `plan` into `width` pixels. */
export function fitCell(plan, width) {
  const n = plan.keyframes.length;
  const fit = Math.floor((width - 2 * PAD - (n - 1) * GAP) / (n * plan.grid[1]));
  return Math.max(MIN_CELL, Math.min(MAX_CELL, fit));
}

/** Where everything goes: grid size, track width, pixels per second, each grid's left edge. */
export function layout(editor, plan) {
  const [gh, gw] = plan.grid;
  const viewport = editor.dom.timeline.clientWidth || (editor.node.size?.[0] ?? 600) - 30;
  editor.cell = fitCell(plan, viewport);
  const thumbW = gw * editor.cell;
  const n = plan.keyframes.length;
  const pad = Math.max(thumbW / 2, 40) + PAD;   // room for a grid (and a header) at either end of the ruler
  const width = Math.max(viewport, n * (thumbW + GAP) + 2 * PAD, 200);
  const span = duration(plan);
  const pps = span > 0 ? (width - 2 * pad) / span : 0;
  const timeX = (t) => pad + t * pps;
  const xs = plan.keyframes.map((k) => timeX(k.time) - thumbW / 2);
  for (let i = 0; i < n; i++) xs[i] = Math.max(xs[i], i ? xs[i - 1] + thumbW + GAP : PAD);
  for (let i = n - 1; i >= 0; i--) xs[i] = Math.min(xs[i], i < n - 1 ? xs[i + 1] - thumbW - GAP : width - PAD - thumbW);
  const spacing = Math.min(...plan.keyframes.map((k, i) => (i ? (k.time - plan.keyframes[i - 1].time) * pps : Infinity)));
  return { gh, gw, thumbW, thumbH: gh * editor.cell, pad, width, pps, timeX, xs, roomy: spacing >= HEAD_ROOM,
    height: GRID_Y + gh * editor.cell + 8 };
}

/** The timeline's height in the editor (for the widget's minimum height). */
export function timelineHeight(editor) {
  const gh = editor.view?.plan?.grid?.[0] ?? 9;
  return editor.view?.plan ? GRID_Y + gh * editor.cell + 8 + 16 : 30;
}

/** Rebuild the track: ruler, headers, grids (an empty strip when there is no plan). */
export function renderTimeline(editor) {
  const { dom, view } = editor;
  dom.track.replaceChildren();
  editor.geometry = null;
  if (!view.plan) {
    dom.track.style.cssText = "height: 26px";
    dom.timeline.style.height = "28px";
    return;
  }
  const plan = view.plan;
  const geo = layout(editor, plan);
  editor.geometry = geo;
  dom.track.style.cssText = `width:${geo.width}px;height:${geo.height}px`;
  dom.timeline.style.height = `${geo.height + (geo.width > dom.timeline.clientWidth + 1 ? 16 : 2)}px`;
  const ruler = el("canvas", { className: "planx-ed-ruler", width: geo.width, height: GRID_Y });
  dom.track.append(ruler);
  drawRuler(ruler, plan, geo);
  plan.keyframes.forEach((k, i) => {
    dom.track.append(buildHead(editor, plan, geo, i), buildGrid(editor, geo, i, GRID_Y));
  });
}

function drawRuler(canvas, plan, geo) {
  const ctx = canvas.getContext("2d");
  const fps = plan.video.fps;
  ctx.strokeStyle = "#888";
  ctx.fillStyle = "#bbb";
  ctx.font = "16px sans-serif";
  ctx.beginPath();
  ctx.moveTo(geo.timeX(0), 20.5);
  ctx.lineTo(geo.timeX(duration(plan)), 20.5);
  const framePx = geo.pps / fps;
  const labelEvery = Math.max(1, Math.ceil(40 / Math.max(geo.pps, 1e-9)));  // a label every n seconds, 40 px apart
  for (let f = 0; f < plan.video.num_frames; f++) {
    const t = f / fps;
    const second = Math.abs(t - Math.round(t)) < 1e-9;
    if (!second && framePx < 3) continue;
    const x = Math.round(geo.timeX(t)) + 0.5;
    ctx.moveTo(x, second ? 14 : 17);
    ctx.lineTo(x, 20.5);
    if (second && Math.round(t) % labelEvery === 0) ctx.fillText(`${Math.round(t)}s`, x + 3, 15);
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

function buildHead(editor, plan, geo, i) {
  const k = plan.keyframes[i];
  const frame = frameOf(plan, k.time);
  const head = el("div", {
    className: `planx-ed-head${i === editor.selected ? " sel" : ""}${k.locked ? " locked" : ""}`,
    "data-keyframe": String(i), "data-role": "head", "data-time": String(k.time), "data-frame": String(frame),
    title: `keyframe ${i} at ${formatTime(k.time)} s (video frame ${frame})${k.locked ? ", locked" : ""}`
      + `${k.note ? `: ${k.note}` : ""}${editor.viewer ? "" : " — drag to retime"}`,
    text: headText(i, k, geo.roomy),
  });
  head.style.left = `${geo.timeX(k.time)}px`;
  head.style.top = `${HEAD_Y}px`;
  editor.on(head, "pointerdown", (e) => headDown(editor, e, i));
  editor.on(head, "pointermove", (e) => headMove(editor, e));
  editor.on(head, "pointerup", (e) => headUp(editor, e));
  editor.on(head, "pointercancel", () => cancelDrag(editor));
  return head;
}

function headElement(editor, i) {
  return editor.dom.track.querySelector(`.planx-ed-head[data-keyframe="${i}"]`);
}

// -- retiming by dragging a header ---------------------------------------------------------------
function headDown(editor, e, i) {
  if (e.button !== 0) return;
  e.preventDefault();
  e.stopPropagation();
  editor.focus();
  editor.select(i, true);
  if (!editor.canEdit()) return;
  const head = headElement(editor, i);
  head?.setPointerCapture?.(e.pointerId);
  const frame = frameOf(editor.view.plan, editor.view.plan.keyframes[i].time);
  editor.drag = { keyframe: i, head, startX: e.clientX, frame, moved: false };
}

/** Client x -> the video frame under it on the ruler. */
function frameAtClientX(editor, clientX) {
  const plan = editor.view.plan;
  const geo = editor.geometry;
  const box = editor.dom.track.getBoundingClientRect();
  const x = (clientX - box.left) * (editor.dom.track.offsetWidth / (box.width || 1));
  const t = geo.pps > 0 ? (x - geo.pad) / geo.pps : 0;
  return Math.max(0, Math.min(plan.video.num_frames - 1, roundHalfEven(t * plan.video.fps)));
}

function headMove(editor, e) {
  const drag = editor.drag;
  if (!drag) return;
  if (!drag.moved && Math.abs(e.clientX - drag.startX) < 3) return;
  drag.moved = true;
  const plan = editor.view.plan;
  drag.frame = frameAtClientX(editor, e.clientX);
  const t = frameTime(plan, drag.frame);
  const holder = frameHolder(plan, drag.frame, drag.keyframe);
  drag.head.style.left = `${editor.geometry.timeX(t)}px`;
  drag.head.classList.toggle("refused", holder !== null);
  drag.head.textContent = `#${drag.keyframe} ${formatTime(t)}s`;
  editor.say(holder !== null ? `Frame ${drag.frame} holds keyframe ${holder}: cannot drop here`
    : `Move keyframe ${drag.keyframe} to ${formatTime(t)} s (frame ${drag.frame})`, holder !== null);
}

function headUp(editor, e) {
  const drag = editor.drag;
  if (!drag) return;
  editor.drag = null;
  drag.head.releasePointerCapture?.(e.pointerId);
  if (!drag.moved) return;
  const result = editor.retime(drag.keyframe, frameTime(editor.view.plan, drag.frame));
  if (!result.ok) {
    editor.render();
    editor.say(result.reason, true);
  }
}

function cancelDrag(editor) {
  if (!editor.drag) return;
  editor.drag = null;
  editor.render();
}

/** The keyframe (other than `except`) on video frame `frame`, or null. */
export function frameHolder(plan, frame, except) {
  const index = plan.keyframes.findIndex((k, i) => i !== except && frameOf(plan, k.time) === frame);
  return index < 0 ? null : index;
}

// -- client coordinates, for tests and mouse actions -----------------------------------------------
export function cellCenter(editor, i, row, col) {
  const canvas = gridCanvas(editor, i);
  if (!canvas) return null;
  canvas.scrollIntoView?.({ block: "nearest", inline: "nearest" });
  const box = canvas.getBoundingClientRect();
  const [gh, gw] = editor.view.plan.grid;
  return { x: box.left + ((col + 0.5) / gw) * box.width, y: box.top + ((row + 0.5) / gh) * box.height };
}

export function headCenter(editor, i) {
  const head = headElement(editor, i);
  if (!head) return null;
  head.scrollIntoView?.({ block: "nearest", inline: "nearest" });
  const box = head.getBoundingClientRect();
  return { x: box.left + box.width / 2, y: box.top + box.height / 2 };
}

export function timeToClientX(editor, time) {
  if (!editor.geometry) return null;
  const box = editor.dom.track.getBoundingClientRect();
  return box.left + editor.geometry.timeX(time) * (box.width / (editor.dom.track.offsetWidth || 1));
}
