/**
 * Words for the brush: the palette in the payload's order (by frequency in the plan, then alphabetical;
 * entries flagged `hidden` are grammar words or words whose code labels nothing visible), lookups, and
 * the nearest known words to a word the planner does not know. Pure: no DOM, nothing runs on import.
 */

/** The palette entries to show: all of them when `showAll`, else those not hidden. */
export function visiblePalette(palette, showAll) {
  return (palette ?? []).filter((p) => showAll || !p.hidden);
}

/** The palette entry of a word: exact, then any case; undefined when the planner does not know it. */
export function findWord(palette, word) {
  const list = palette ?? [];
  const lower = String(word).toLowerCase();
  return list.find((p) => p.word === word) ?? list.find((p) => p.word.toLowerCase() === lower);
}

/** Edit distance with adjacent transpositions (optimal string alignment). */
export function editDistance(a, b) {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d = Array.from({ length: rows }, (_, i) => [i, ...Array(cols - 1).fill(0)]);
  for (let j = 1; j < cols; j++) d[0][j] = j;
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[rows - 1][cols - 1];
}

/**
 * The `n` known words nearest to `word`: by edit distance (a shared prefix counts as closer, a hidden word
 * as one edit further), then alphabetically.
 */
export function nearestWords(word, palette, n = 3) {
  const target = String(word).toLowerCase().trim();
  const scored = (palette ?? []).map((p) => {
    const w = p.word.toLowerCase();
    let prefix = 0;
    while (prefix < Math.min(w.length, target.length) && w[prefix] === target[prefix]) prefix++;
    const score = editDistance(target, w) - 0.5 * Math.min(prefix, 3) + (p.hidden ? 1 : 0);
    return { word: p.word, hidden: !!p.hidden, score };
  });
  scored.sort((a, b) => a.score - b.score || a.hidden - b.hidden || a.word.localeCompare(b.word));
  return [...new Set(scored.map((s) => s.word))].slice(0, n);
}
