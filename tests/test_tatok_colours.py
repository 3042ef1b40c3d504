"""The TA-Tok colour table: the embedded tokenizer's colour per code (scripts/tatok_colours.py) with its weights
untouched, the table's round trip through the file's metadata, and its use in plan pictures."""

from __future__ import annotations

import colorsys
import hashlib
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from planx_core import EMBEDDED
from planx_core.plan.core import CodebookId, make_plan
from planx_core.plan.picture import code_colours, format_time, parse_hex, plan_picture
from planx_core.tatok.files import COLOURS_KEY, load_tatok, save_tatok, write_colour_table
from planx_core.world.scenes import PALETTE, WORDS

TATOK = EMBEDDED / "ta_tok.safetensors"
# sha256 over (key, dtype, shape, bytes) of every tensor of the embedded TA-Tok as trained (before its colour
# table was written): the table changes the metadata only.
WEIGHTS_SHA256 = "3bcf9643f8ab16592ef941ba9dfd7c07e0e380bc342d22b2bf98ca7f030ec4a3"


def weights_sha256(path) -> str:
    sd = load_file(str(path))
    h = hashlib.sha256()
    for key in sorted(sd):
        t = sd[key].contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metadata(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*rgb)[0] * 360


def test_embedded_tatok_weights_are_unchanged_and_carry_a_colour_table():
    assert weights_sha256(TATOK) == WEIGHTS_SHA256
    tatok = load_tatok(TATOK)
    table = tatok.colour_table
    assert json.loads(metadata(TATOK)[COLOURS_KEY])["codebook"] == tatok.digest()
    labelled = {WORDS.index(w) for w in ("background", "wall", *PALETTE)}
    assert set(table) == labelled  # the codes that label cells; grammar words, shapes and directions have none
    for word, rgb in PALETTE.items():  # a colour word's code is drawn in that colour's hue
        got = parse_hex(table[WORDS.index(word)])
        want = tuple(v / 255 for v in rgb)
        assert abs((hue(got) - hue(want) + 180) % 360 - 180) < 20, (word, table[WORDS.index(word)])
        assert colorsys.rgb_to_hsv(*got)[1] > 0.4
    background, wall = (parse_hex(table[WORDS.index(w)]) for w in ("background", "wall"))
    assert max(background) < 0.25 and 0.4 < min(wall) and max(wall) - min(wall) < 0.05  # dark / gray


def test_colour_table_round_trip(tmp_path):
    path = tmp_path / "ta_tok.safetensors"
    shutil.copyfile(TATOK, path)
    tatok = load_tatok(path)
    before = metadata(path)
    write_colour_table(path, {3: "#102030", 5: "#ABCDEF"}, tatok.digest(), "a test")
    after = metadata(path)
    assert weights_sha256(path) == WEIGHTS_SHA256
    assert {k: v for k, v in after.items() if k != COLOURS_KEY} == {k: v for k, v in before.items() if k != COLOURS_KEY}
    assert load_tatok(path).colour_table == {3: "#102030", 5: "#abcdef"}
    write_colour_table(path, {3: "#102030"}, "0" * 16)  # measured for another codebook: ignored
    assert load_tatok(path).colour_table is None
    saved = tmp_path / "saved.safetensors"
    tatok.colour_table = {7: "#010203"}
    save_tatok(tatok, saved)  # a saved TA-Tok keeps its table
    assert load_tatok(saved).colour_table == {7: "#010203"}
    write_colour_table(path, {3: "red"}, tatok.digest())
    with pytest.raises(Exception, match="#rrggbb"):
        load_tatok(path)


def test_table_overrides_the_projection_and_pictures_wrap_with_a_legend():
    book = torch.nn.functional.normalize(torch.randn(29, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    plain = code_colours(book, key="table-test")
    coloured = code_colours(book, key="table-test", table={2: "#ff0000", 4: (0.0, 0.0, 1.0)})
    assert torch.equal(coloured[2], torch.tensor([1.0, 0.0, 0.0])) and torch.equal(
        coloured[4], torch.tensor([0, 0, 1.0])
    )
    keep = [i for i in range(29) if i not in (2, 4)]
    assert torch.equal(coloured[keep], plain[keep]) and not torch.equal(plain[2], coloured[2])
    plan = make_plan(
        [[2] * 81] * 5,
        times=[0, 0.5, 1.0, 1.5, 2.0],
        fps=8.0,
        num_frames=17,
        width=64,
        height=64,
        codebook=CodebookId("t", 29, "x"),
    )
    row = plan_picture(plan, coloured, cell=24)
    sheet = plan_picture(plan, coloured, cell=24, columns=3, legend=[("#ff0000", "red"), ((0, 0, 1), "blue")])
    panel_w, panel_h = 9 * 24, 18 + 9 * 24
    assert row.shape[:2] == (panel_h, 5 * panel_w + 4 * 6)
    assert sheet.shape[1] == 3 * panel_w + 2 * 6 and sheet.shape[0] > 2 * panel_h + 6
    torch.testing.assert_close(sheet[panel_h + 6 + 18 + 5, 5], torch.tensor([1.0, 0, 0]))  # keyframe 3, row 2
    legend = sheet[2 * panel_h + 6 :]
    assert (legend == torch.tensor([1.0, 0, 0])).all(-1).any() and (legend == torch.tensor([0, 0, 1.0])).all(-1).any()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.00"),
        (0.5, "0.50"),
        (0.625, "0.625"),
        (1.0, "1.00"),
        (1 / 3, "0.333"),
        (0.0625, "0.062"),
        (2.125, "2.125"),
    ],
)
def test_times_are_written_with_up_to_three_decimals(seconds, text):
    assert format_time(seconds) == text
