/**
 * What the editor draws for a given edit text and server payload: the plan, the status line, and a mark
 * per step that was not applied. Pure: no DOM, nothing on import.
 *
 * The editor never reaches a dead state: a step that fails (a move onto a frame another keyframe holds, a
 * word the planner does not know, typed by hand) is skipped and marked, the steps after it are still drawn,
 * and the view stays editable; the status line says which step to remove. Edit text that does not parse
 * keeps the last good view on screen (read-only until Undo, Clear or a fix).
 */
import { formatTime, isContinuous, replayEdits, replays, sameStep } from "./replay.js";

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

/**
 * The view of `parsed` (parseEdits' result) against `server` (the last payload, or null):
 * {plan, steps, source, status, bad, editable, marks, problems, unchecked, cellColours, broken}.
 * `marks[i]` is {cls, note} for a step not applied as written ("bad": it fails; "skip": the editor does not
 * draw it, the node applies it); `unchecked` lists the steps whose op neither the editor replays nor a
 * payload's op list vouched for: the server checks them when the node runs. `lastGood` is the last view
 * with a plan, kept on screen while the text does not parse; `suggest(word)` the nearest known words.
 */
export function planView(server, parsed, codeOfWord, lastGood = null, suggest = () => []) {
  const view = baseView(server, parsed, codeOfWord, lastGood, suggest);
  view.marks ??= {};
  view.problems ??= [];
  if (!parsed.checked) view.unchecked = view.steps.flatMap((s, i) => (replays(s?.op) ? [] : [i]));
  return view;
}

function baseView(server, parsed, codeOfWord, lastGood, suggest) {
  const steps = parsed.steps ?? [];
  if (parsed.error) {
    const kept = lastGood?.plan ? " · showing the plan before the text broke" : "";
    return { plan: lastGood?.plan ?? null, steps: lastGood?.steps ?? [], source: lastGood?.plan ? "last-good" : "none",
      status: `The edit text is not valid: ${parsed.error} — Undo, Clear, or fix the text${kept}`,
      bad: true, editable: false, broken: true, cellColours: lastGood?.cellColours ?? null };
  }
  if (!server?.base) {
    return { plan: null, steps, source: "none", editable: false,
      status: `Run the workflow to see the plan; ${plural(steps.length, "edit")} kept` };
  }
  if (isContinuous(server.base)) return continuousView(server, steps);
  return tokenView(server, steps, codeOfWord, suggest);
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

/**
 * A token plan, replayed step by step. Steps the editor does not replay (another op) are drawn from the
 * server's plan when the last run covered them (its steps are a prefix of these), else skipped and left to
 * the node. A step that fails is skipped and marked; the rest are drawn.
 */
function tokenView(server, steps, codeOfWord, suggest) {
  const ran = server.steps;
  const foreign = steps.some((s) => !replays(s?.op));
  const prefix = ran && server.plan && ran.length <= steps.length && ran.every((s, i) => sameStep(s, steps[i]));
  const fromServer = foreign && prefix && !steps.slice(ran.length).some((s) => !replays(s?.op));
  let plan = fromServer ? server.plan : server.base;
  const start = fromServer ? ran.length : 0;
  const marks = {};
  const problems = [];
  for (let i = start; i < steps.length; i++) {
    const result = replayEdits(plan, [steps[i]], codeOfWord, i);
    if (result.error || result.unsupported) {
      const notDrawn = !replays(steps[i]?.op);
      let message = result.error ?? result.unsupported;
      if (!notDrawn && result.unsupported && typeof steps[i]?.word === "string") {
        const near = suggest(steps[i].word.trim());
        if (near.length) message += `; nearest known words: ${near.join(", ")}`;
      }
      marks[i] = { cls: result.error ? "bad" : "skip", note: notDrawn ? "applied when the node runs; not drawn here"
        : `not applied: ${describeProblem(message)}` };
      problems.push({ index: i, message, kind: notDrawn ? "other-op" : result.error ? "error" : "word" });
      continue;
    }
    plan = result.plan;
  }
  const source = fromServer ? "server+replay" : "replay";
  const failing = problems.filter((p) => p.kind !== "other-op");
  const head = `${plural(plan.keyframes.length, "keyframe")} · ${plan.grid.join("x")} · ${plural(steps.length, "edit")}`;
  let status = head;
  if (failing.length) {
    const first = failing[0];
    const consequence = first.kind === "error" ? "; the node fails until then" : "";
    status = `${first.message} — remove edit ${first.index} (×) or Undo${consequence}`
      + (failing.length > 1 ? ` (${failing.length} edits not applied)` : "") + ` · ${head}`;
  } else if (problems.length) {
    status = `${head} · ${plural(problems.length, "edit")} not drawn here (other ops): the node applies them`;
  } else if (fromServer) {
    status = `${head} · drawn from the last run's plan`;
  }
  return { plan, steps, source, editable: true, bad: failing.length > 0, marks, problems, status,
    fromServer: start };
}

function describeProblem(message) {
  return String(message).replace(/^edit \d+ \([^)]*\): /, "").replace(/^edit \d+: /, "");
}

/** A keyframe's header text: "#2 0.50s", "#2" when there is no room. */
export function headText(index, keyframe, roomy) {
  return roomy ? `#${index} ${formatTime(keyframe.time)}s${keyframe.locked ? " 🔒" : ""}` : `#${index}${keyframe.locked ? "🔒" : ""}`;
}
