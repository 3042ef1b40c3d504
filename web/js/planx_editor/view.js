/**
 * What the editor draws for a given edit text and server payload: the plan (replayed, or the
 * server's), the status line, which steps failed or were skipped. Pure: no DOM, nothing on import.
 */
import { isContinuous, replayEdits, replays, sameStep } from "./replay.js";

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/**
 * The view of `parsed` (parseEdits' result) against `server` (the last payload, or null):
 * {plan, steps, source, status, bad, editable, failedAt, skipFrom, unchecked, cellColours}.
 * `unchecked` lists the steps whose op neither the editor replays nor a payload's op list vouched
 * for: the server checks them when the node runs.
 */
export function planView(server, parsed, codeOfWord) {
  const view = baseView(server, parsed, codeOfWord);
  if (!parsed.checked) view.unchecked = view.steps.flatMap((s, i) => (replays(s?.op) ? [] : [i]));
  return view;
}

function baseView(server, parsed, codeOfWord) {
  const steps = parsed.steps ?? [];
  if (parsed.error) return { plan: null, steps, source: "none", status: parsed.error, bad: true, editable: false };
  if (!server?.base) {
    const n = steps.length;
    return { plan: null, steps, source: "none", editable: false,
      status: `Run the workflow to see the plan; ${plural(n, "edit")} kept` };
  }
  if (isContinuous(server.base)) return continuousView(server, steps);
  const replay = replayEdits(server.base, steps, codeOfWord);
  return replay.unsupported ? serverView(server, replay, steps, codeOfWord) : replayView(replay, steps);
}

/** A continuous plan: the server's plan (the edited one, else the input), read-only. */
export function continuousView(server, steps) {
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

function replayView(replay, steps) {
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
function serverView(server, replay, steps, codeOfWord) {
  const ran = server.steps;
  const prefix = ran && ran.length <= steps.length && ran.every((s, i) => sameStep(s, steps[i]));
  if (server.plan && prefix) {
    const tail = replayEdits(server.plan, steps.slice(ran.length), codeOfWord, ran.length);
    if (!tail.unsupported) {
      const view = replayView(tail, steps);
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
