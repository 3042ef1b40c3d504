"""What the plan nodes show: the plan picture and the web editor's payload (plans, colours, words, palette, ops).

The payload's layout is the editor's data contract (web/README.md); `ops` is `plan_edits.OPS`, so the
editor's list of known steps is never copied by hand.

Colours: a tokenizer file with a colour table (the mean colour of the cells each code labels) gives those
codes their true colour; other codes keep the codebook projection's colour (`code_colours`). The palette
is ordered by how often each code occurs in the plan, then alphabetically, so it does not reshuffle when
the planner is loaded again; grammar words, and with a colour table the words whose code labels nothing
visible, are flagged `hidden` (the editor lists them only when asked).
"""

from __future__ import annotations

import difflib
import math
from collections import Counter

from planx_core.plan import OPS, Plan, code_colours, plan_picture, vector_colours

from .model_files import codebook_for, colour_table_for

LEGEND_SIZE = 6  # most frequent codes named under a preview picture
PICTURE_TEXT = 32  # px: a preview's times and legend stay >= 12 px on screen when a node shows it ~400 px wide
GRAMMAR = frozenset(
    "a an the and or but nor so yet on in at to of off by for from with into onto over under behind while then "
    "when as is are was were be it its this that these those there here not no".split()
)


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(float(v) * 255)):02x}" for v in rgb)


def token_planner(planner):
    """The planner when it is a Plan-X (token) planner, with words and a codebook; None for none or SemanticGen's."""
    return planner if getattr(planner, "kind", None) == "tokens" else None


def _cell_hex(plan: Plan) -> list[list[str]]:
    """A continuous plan's cell colours (principal components of its vectors, as the plan picture) as hex."""
    return [[_hex(rgb) for rgb in keyframe] for keyframe in vector_colours(plan).tolist()]


def _table(plan: Plan, planner) -> dict | None:
    """The tokenizer's colour table ({code: "#rrggbb"}), or None."""
    planner = token_planner(planner)
    if planner is not None:
        return getattr(planner.tatok, "colour_table", None)
    return colour_table_for(plan)


def code_counts(plan: Plan) -> Counter:
    return Counter(int(c) for k in plan.keyframes for c in k.tokens)


def ordered_palette(palette: list[dict], counts: Counter, table: dict | None) -> list[dict]:
    """{word, code, hidden} by frequency of the code in the plan, then alphabetically (one entry per word)."""
    seen, out = set(), []
    for entry in sorted(palette, key=lambda p: (-counts.get(int(p["code"]), 0), p["word"])):
        if entry["word"] in seen:
            continue
        seen.add(entry["word"])
        hidden = entry["word"] in GRAMMAR or (bool(table) and int(entry["code"]) not in table)
        out.append({"word": entry["word"], "code": int(entry["code"]), "hidden": hidden})
    return out


def editor_view(base: Plan, edited: Plan, planner) -> dict:
    """What the web editor draws: both plans, colours and words of every code it may show, the palette.
    A continuous plan has no codes: no words or palette, and `cell_colours` gives each plan's cells the
    colours of its plan picture (the editor shows it read-only; its edits are the text)."""
    if base.kind == "continuous":
        return {
            "base": base.to_dict(),
            "plan": edited.to_dict(),
            "error": None,
            "colours": {},
            "words": {},
            "palette": [],
            "cell_colours": {"base": _cell_hex(base), "plan": _cell_hex(edited)},
            "ops": list(OPS),
            "colour_source": "vectors",
        }
    planner = token_planner(planner)
    table = _table(base, planner)
    palette = ordered_palette(planner.palette() if planner is not None else [], code_counts(edited), table)
    codes = {int(c) for p in (base, edited) for k in p.keyframes for c in k.tokens} | {e["code"] for e in palette}
    colours = plan_colours(base, planner)
    words = planner.words(codes) if planner is not None else {}
    return {
        "base": base.to_dict(),
        "plan": edited.to_dict(),
        "error": None,
        "colours": {str(c): _hex(colours[c]) for c in sorted(codes)},
        "words": {str(c): w for c, w in words.items()},
        "palette": palette,
        "ops": list(OPS),
        "colour_source": "table" if table else "projection",
    }


def plan_colours(plan: Plan, planner):
    """Colour of every code `[N, 3]`: the planner's TA-Tok, else the TA-Tok file the plan's hash names; the
    tokenizer's colour table where it has one."""
    planner = token_planner(planner)
    if planner is not None:
        tatok = planner.tatok
        return code_colours(tatok.codebook(), key=planner.codebook.digest, table=getattr(tatok, "colour_table", None))
    return code_colours(codebook_for(plan), key=plan.codebook.digest, table=colour_table_for(plan))


def columns_for(keyframes: int) -> int:
    """Keyframes per row of a preview: about square, at least 3 (5 keyframes: 3 + 2; 17: 5 rows of up to 5)."""
    return min(keyframes, max(3, math.ceil(math.sqrt(keyframes))))


def picture_of(plan: Plan, planner):
    """The plan picture `[1, H, W, 3]`: keyframes wrapped into rows (readable when a node shows it a few hundred
    pixels wide) and, for a token plan, a legend naming its most frequent codes (words with a planner). A
    continuous plan is coloured by its own vectors."""
    columns = columns_for(len(plan.keyframes))
    if plan.kind == "continuous":
        return plan_picture(plan, columns=columns, text=PICTURE_TEXT)[None]
    planner = token_planner(planner)
    colours = plan_colours(plan, planner)
    counts = code_counts(plan)
    top = [code for code, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))][:LEGEND_SIZE]
    words = planner.words(top) if planner is not None else {}
    legend = [(colours[c].tolist(), words.get(c) or f"code {c}") for c in top]
    if len(counts) > len(top):
        legend.append(((0.12, 0.12, 0.12), f"+{len(counts) - len(top)} more"))
    return plan_picture(plan, colours, columns=columns, legend=legend, text=PICTURE_TEXT)[None]


def word_lookup(planner, palette: list[dict]):
    """The planner's word -> code for `fill_word`, whose failure names the nearest known words in plain words."""

    def lookup(word: str) -> int:
        try:
            return planner.planner.word_to_code(word)
        except ValueError:
            known = [p["word"] for p in palette if not p.get("hidden")] or [p["word"] for p in palette]
            near = difflib.get_close_matches(word.lower(), known, n=3, cutoff=0.0)
            raise ValueError(
                "the planner does not know this word"
                + (f"; the nearest known words are {', '.join(near)}" if near else "")
                + "; paint with one of the palette's words"
            ) from None

    return lookup
