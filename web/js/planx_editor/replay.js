/**
 * Edit steps without a browser: the edit text <-> steps, the JS replay of planx_core/plan/edits.py
 * for the ops the editor draws, and the helpers that turn a stroke or a duplicate into steps.
 * Pure: no DOM, no ComfyUI, nothing runs on import.
 */

// ---------------------------------------------------------------------------------------------
// Numbers as Python rounds them
// ---------------------------------------------------------------------------------------------

/** Python's round(x): halves go to the even neighbour. */
export function roundHalfEven(x) {
  if (Math.abs(x % 1) === 0.5) return 2 * Math.round(x / 2);
  return Math.round(x);
}

/** Python's round(x, 6). */
export function round6(x) {
  const scaled = x * 1e6;
  if (Math.abs(scaled % 1) === 0.5) return roundHalfEven(scaled) / 1e6;
  return parseFloat(x.toFixed(6));
}

/** A keyframe time as planx_core.plan.picture.format_time writes it: 2 or 3 decimals ("0.50", "0.625"). */
export function formatTime(seconds) {
  const ms = roundHalfEven(seconds * 1000);
  const whole = Math.trunc(Math.abs(ms) / 1000);
  const text = `${ms < 0 ? "-" : ""}${whole}.${String(Math.abs(ms) % 1000).padStart(3, "0")}`;
  return text.endsWith("0") ? text.slice(0, -1) : text;
}

export function frameOf(plan, time) {
  return roundHalfEven(time * plan.video.fps);
}

/** _snap in plan/edits.py: a time moved onto the nearest video frame. */
export function snapTime(plan, time) {
  return round6(frameOf(plan, time) / plan.video.fps);
}

export function frameTime(plan, frame) {
  return round6(frame / plan.video.fps);
}

export function duration(plan) {
  return (plan.video.num_frames - 1) / plan.video.fps;
}

export function isInt(v) {
  return typeof v === "number" && Number.isInteger(v);
}

function isNumber(v) {
  return typeof v === "number" && Number.isFinite(v) && Math.abs(v) < 1e12;
}

// ---------------------------------------------------------------------------------------------
// Edit list text <-> steps
// ---------------------------------------------------------------------------------------------

/**
 * Widget text -> {steps, checked} or {steps: null, error}. Empty text is no edits, as in
 * planx_core.plan.parse_edits. `ops` are the op names the server knows (the payload's `ops`, from
 * planx_core.plan.OPS); without them (the node has not run yet) any op name passes, `checked: false`,
 * and the server checks it when the node runs.
 */
export function parseEdits(text, ops = null) {
  if (typeof text !== "string" || !text.trim()) return { steps: [], checked: !!ops };
  let value;
  try {
    value = JSON.parse(text);
  } catch (exc) {
    return { steps: null, error: `the edit list does not parse as JSON (${exc.message}); clear it or fix the text` };
  }
  if (!Array.isArray(value)) return { steps: null, error: "the edit list must be a JSON array of steps" };
  const known = ops ? new Set(ops) : null;
  for (const [index, step] of value.entries()) {
    const isStep = !!step && typeof step === "object" && !Array.isArray(step);  // a JSON object, as in Python
    const op = isStep ? step.op : step;
    const ok = isStep && (known ? known.has(op) : typeof op === "string" && op !== "");
    if (!ok) {
      const list = known ? `; known ops: ${[...known].sort().join(", ")}` : "";
      return { steps: null, error: `edit ${index}: unknown step ${JSON.stringify(op)}${list}` };
    }
  }
  return { steps: value, checked: !!known };
}

/** One value as compact JSON with a space after ',' and ':'. */
export function compactJson(value) {
  if (Array.isArray(value)) return `[${value.map(compactJson).join(", ")}]`;
  if (value && typeof value === "object") {
    return `{${Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${compactJson(v)}`).join(", ")}}`;
  }
  return JSON.stringify(value ?? null);
}

/** Steps -> widget text: pretty but compact, one step per line. */
export function formatEdits(steps) {
  if (!steps.length) return "[]";
  return `[\n${steps.map((s) => `  ${compactJson(s)}`).join(",\n")}\n]`;
}

export function sameStep(a, b) {
  return compactJson(a) === compactJson(b);
}

// ---------------------------------------------------------------------------------------------
// Replay: plan/edits.py semantics for the ops the editor emits
// ---------------------------------------------------------------------------------------------

/** A plan of semantic vectors (SemanticGen), not token ids. */
export function isContinuous(plan) {
  return plan?.kind === "continuous";
}

class StepError extends Error {}
class Unsupported extends Error {}

export function clonePlan(plan) {
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

/** Whether the editor replays (and so checks) steps of this op itself. */
export function replays(op) {
  return Object.hasOwn(REPLAY_OPS, op);
}

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
 * `applied` steps that went through, plus `error` (a step plan/edits.py would refuse) or
 * `unsupported` (a step this editor cannot replay: another op, a word outside the palette).
 * `offset` numbers the steps on from earlier ones (in messages and `applied`).
 */
export function replayEdits(base, steps, codeOfWord = () => undefined, offset = 0) {
  let plan = clonePlan(base);
  for (const [at, step] of steps.entries()) {
    const index = offset + at;                // steps replayed after others count on from them
    const op = step?.op;
    const apply = replays(op) ? REPLAY_OPS[op] : null;
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
export function coverCells(must, free, gh, gw) {
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
export function duplicateFrame(plan, index) {
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
