/**
 * The brush and the palette: the swatches (in the payload's order: by frequency in the plan, then
 * alphabetical; grammar words behind "all words"), the typed word (refused when the planner does not know it,
 * with the nearest known words offered), the eyedropper. Functions of a PlanEditor; nothing runs on import.
 */
import { el } from "./panels.js";
import { isContinuous } from "./replay.js";
import { findWord, nearestWords, visiblePalette } from "./words.js";

/** Black or white text on a background colour ("#rrggbb" or anything else: white). */
export function inkFor(colour) {
  const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(String(colour));
  if (!m) return "#fff";
  const [r, g, b] = m.slice(1).map((h) => parseInt(h, 16));
  return 0.299 * r + 0.587 * g + 0.114 * b > 140 ? "#000" : "#fff";
}

/** The brush chip and its label. */
export function renderBrush(editor) {
  const brush = editor.brush;
  const chip = el("span", { className: `planx-ed-chip${brush ? "" : " none"}`, "data-role": "brush-chip" });
  if (brush) chip.style.background = editor.colourOf(brush.code);
  const label = !brush ? "no brush" : `${brush.word || "code"} · ${brush.code}`;
  editor.dom.brush.replaceChildren(chip, el("span", { text: label }));
  editor.dom.brush.title = brush ? `painting with "${brush.word || `code ${brush.code}`}"` : "pick a word to paint with";
}

/** One swatch per shown palette word, in its code's colour; a toggle for the hidden (grammar) words. */
export function renderPalette(editor) {
  const palette = editor.server?.palette ?? [];
  const shown = visiblePalette(palette, editor.ui.showAll);
  const hidden = palette.filter((p) => p.hidden).length;
  const swatches = shown.map((p) => {
    const colour = editor.colourOf(p.code);
    const swatch = el("button", {
      type: "button", text: p.word, "data-code": String(p.code), "data-word": p.word,
      title: `${p.word} · code ${p.code}${p.hidden ? " (a grammar word, or one that labels nothing visible)" : ""}`,
      className: `swatch${editor.brush?.code === p.code && editor.brush?.word === p.word ? " on" : ""}`
        + `${p.hidden ? " hidden-word" : ""}`,
    });
    swatch.style.background = colour;
    swatch.style.color = inkFor(colour);
    editor.on(swatch, "click", () => {
      editor.setBrush({ code: p.code, word: p.word });
      editor.say(`Brush: "${p.word}" (code ${p.code})`);
    });
    return swatch;
  });
  const extra = [];
  if (hidden) {
    const toggle = el("button", { type: "button", "data-action": "all-words",
      text: editor.ui.showAll ? "fewer words" : `all words (+${hidden})`,
      title: editor.ui.showAll ? "hide the grammar words again" : "also list grammar words and words that label nothing visible" });
    editor.on(toggle, "click", () => {
      editor.ui.showAll = !editor.ui.showAll;
      renderPalette(editor);
    });
    extra.push(toggle);
  }
  editor.dom.palette.replaceChildren(...swatches, ...extra);
}

/** The eyedropper: keyframe i's cell (row, col) becomes the brush; returns its code. */
export function pickCell(editor, i, row, col) {
  const plan = editor.view.plan;
  if (!plan) return editor.refuse("Run the workflow first: there is no plan to pick from");
  if (isContinuous(plan)) return editor.refuse("A continuous plan has no codes to pick; edit it in the text");
  const code = plan.keyframes[i].tokens[row * plan.grid[1] + col];
  editor.setBrush({ code, word: editor.wordOf(code) });
  editor.pickMode = false;
  editor.renderTools();
  editor.say(`Brush: "${editor.wordOf(code) || "code"}" ${code} (picked from keyframe ${i}, row ${row}, col ${col})`);
  return code;
}

/**
 * Typed text -> brush: a palette word (exact, then any case) or a code number. A word the planner does not
 * know is refused here, before it reaches the plan: the brush stays, and the nearest known words are offered
 * as buttons. Returns {ok, brush} or {ok: false, reason, suggestions}.
 */
export function setBrushFromText(editor, text) {
  const word = String(text ?? "").trim();
  showSuggestions(editor, []);
  editor.dom.word.setAttribute("aria-invalid", "false");
  if (!word) {
    editor.setBrush(null);
    return { ok: true, brush: null };
  }
  const palette = editor.server?.palette ?? [];
  if (!editor.server) return editor.refuse("Run the workflow first: the words come with the plan");
  const hit = findWord(palette, word);
  if (hit) {
    editor.setBrush({ code: hit.code, word: hit.word });
    editor.say(`Brush: "${hit.word}" (code ${hit.code})`);
    return { ok: true, brush: editor.brush };
  }
  if (/^\d+$/.test(word)) {
    const code = Number(word);
    const size = editor.server?.base?.codebook?.size;
    if (size !== undefined && code >= size) return editor.refuse(`Code ${code} is outside the codebook (0..${size - 1})`);
    editor.setBrush({ code, word: editor.wordOf(code) });
    editor.say(`Brush: code ${code}${editor.wordOf(code) ? ` ("${editor.wordOf(code)}")` : ""}`);
    return { ok: true, brush: editor.brush };
  }
  const suggestions = nearestWords(word, palette);
  editor.dom.word.setAttribute("aria-invalid", "true");
  showSuggestions(editor, suggestions, word);
  const reason = `"${word}" is not a word the planner knows, so it cannot be painted; `
    + (suggestions.length ? `nearest known words: ${suggestions.join(", ")}` : "pick a palette word");
  return { ...editor.refuse(reason), suggestions };
}

/** The row under the tools offering the nearest known words to a refused one (empty: hidden). */
export function showSuggestions(editor, words, refused = "") {
  if (!words.length) return editor.dom.suggest.replaceChildren();
  const buttons = words.map((w) => {
    const entry = findWord(editor.server?.palette, w);
    const colour = editor.colourOf(entry?.code);
    const button = el("button", { type: "button", text: w, "data-suggest": w, title: `paint with "${w}" instead` });
    button.style.background = colour;
    button.style.color = inkFor(colour);
    editor.on(button, "click", () => {
      editor.dom.word.value = w;
      setBrushFromText(editor, w);
    });
    return button;
  });
  editor.dom.suggest.replaceChildren(el("span", { text: `"${refused}" is unknown; nearest:` }), ...buttons);
}
