"""What the plan nodes show: the plan picture and the web editor's payload (plans, colours, words, palette, ops).

The payload's layout is the editor's data contract (web/README.md); `ops` is `plan_edits.OPS`, so the
editor's list of known steps is never copied by hand.
"""

from __future__ import annotations

from planx_core.plan import OPS, Plan, code_colours, plan_picture, vector_colours

from .model_files import codebook_for


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(float(v) * 255)):02x}" for v in rgb)


def token_planner(planner):
    """The planner when it is a Plan-X (token) planner, with words and a codebook; None for none or SemanticGen's."""
    return planner if getattr(planner, "kind", None) == "tokens" else None


def _cell_hex(plan: Plan) -> list[list[str]]:
    """A continuous plan's cell colours (principal components of its vectors, as the plan picture) as hex."""
    return [[_hex(rgb) for rgb in keyframe] for keyframe in vector_colours(plan).tolist()]


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
        }
    planner = token_planner(planner)
    palette = planner.palette() if planner is not None else []
    codes = {int(c) for p in (base, edited) for k in p.keyframes for c in k.tokens} | {e["code"] for e in palette}
    colours = _colours(base, planner)
    words = planner.words(codes) if planner is not None else {}
    return {
        "base": base.to_dict(),
        "plan": edited.to_dict(),
        "error": None,
        "colours": {str(c): _hex(colours[c]) for c in sorted(codes)},
        "words": {str(c): w for c, w in words.items()},
        "palette": palette,
        "ops": list(OPS),
    }


def _colours(plan: Plan, planner):
    """Colour of every code `[N, 3]`: the planner's codebook, else the TA-Tok file the plan's hash names."""
    planner = token_planner(planner)
    if planner is not None:
        return planner.colours()
    return code_colours(codebook_for(plan), key=plan.codebook.digest)


def picture_of(plan: Plan, planner):
    """The plan picture `[1, H, W, 3]`, with words when a planner is connected (token plans); a continuous
    plan is coloured by its own vectors."""
    if plan.kind == "continuous":
        return plan_picture(plan)[None]
    planner = token_planner(planner)
    return planner.picture(plan) if planner is not None else plan_picture(plan, _colours(plan, planner))[None]
