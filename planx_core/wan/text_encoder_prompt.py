r"""Wan's prompt cleaning for the umT5 text encoder, with a documented fallback when ftfy is not installed.

Source: Wan 2.1/2.2 `wan/modules/tokenizers.py`, `HuggingfaceTokenizer(clean="whitespace")`: the
prompt goes through `ftfy.fix_text`, then `html.unescape` twice, then every whitespace run
becomes one space and the ends are stripped.

ftfy is optional here (`pip install ftfy` gives Wan's exact cleaning). Without it,
`fix_text_fallback` applies ftfy's deterministic default repairs in ftfy's order (C1 controls
read as Windows-1252, Latin ligatures split, half/full-width forms to standard width, curly
quotes straightened, line breaks unified, surrogate pairs joined, terminal escapes and
unintended control characters removed, NFC). Not reproduced: ftfy's mojibake repair (text
decoded in the wrong encoding, e.g. "cafÃ©") and its all-caps HTML entities (`&EACUTE;`); prompts
typed by a person rarely carry either. Whitespace is collapsed with Python's `re` (Wan uses the
`regex` package; their `\s` differ only on U+001C..U+001F, which fix_text has removed already).
"""

from __future__ import annotations

import html
import re
import unicodedata

_TERMINAL_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")  # modifier apostrophe and the curly single quotes
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\x85]")
_C1 = re.compile("[\x80-\x9f]")
_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHITESPACE = re.compile(r"\s+")


def _mapping(codes, value) -> dict[int, str | None]:
    return {code: value(code) for code in codes}


# Latin typographic ligatures and the legacy Latin digraphs (Dutch IJ, Croatian DZ/LJ/NJ), as two letters
_LIGATURES = _mapping(
    [0x132, 0x133, 0x149, *range(0x1C4, 0x1CD), *range(0x1F1, 0x1F4), *range(0xFB00, 0xFB07)],
    lambda c: "\u017ft" if c == 0xFB05 else unicodedata.normalize("NFKC", chr(c)),
)
# halfwidth and fullwidth forms -> standard width; the ideographic space -> a space
_WIDTH = {0x3000: " "} | {
    c: unicodedata.normalize("NFKC", chr(c))
    for c in range(0xFF01, 0xFFF0)
    if unicodedata.normalize("NFKC", chr(c)) != chr(c)
}
# control characters nobody means to type (tab, line feed, form feed, carriage return are kept)
_CONTROL = _mapping(
    [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFD)],
    lambda c: None,
)


def _c1_as_cp1252(match: re.Match) -> str:
    try:
        return bytes([ord(match.group(0))]).decode("cp1252")
    except UnicodeDecodeError:  # 0x81, 0x8d, 0x8f, 0x90, 0x9d have no Windows-1252 character: kept
        return match.group(0)


def _join_surrogates(text: str) -> str:
    if not _SURROGATE.search(text):
        return text
    text = _SURROGATE_PAIR.sub(lambda m: m.group(0).encode("utf-16-le", "surrogatepass").decode("utf-16-le"), text)
    return _SURROGATE.sub("\ufffd", text)  # unpaired halves


def fix_text_fallback(text: str) -> str:
    """ftfy.fix_text's deterministic default repairs, in its order (see the module docstring for what is not done)."""
    text = _C1.sub(_c1_as_cp1252, text)
    text = text.translate(_LIGATURES).translate(_WIDTH)
    text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))
    text = _LINE_BREAKS.sub("\n", text)
    text = _join_surrogates(text)
    text = _TERMINAL_ESCAPE.sub("", text).translate(_CONTROL)
    return unicodedata.normalize("NFC", text)


def fix_text(text: str) -> str:
    """`ftfy.fix_text` when ftfy is installed, else `fix_text_fallback`."""
    try:
        import ftfy
    except ImportError:
        return fix_text_fallback(text)
    return ftfy.fix_text(text)


def clean_prompt(text: str) -> str:
    """Wan's cleaning of a prompt: fix_text, HTML entities unescaped twice, whitespace runs to one space, stripped."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()
