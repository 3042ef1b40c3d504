"""JSON text from untrusted files and widgets, read without any exception but the caller's own.

One reader for every JSON boundary (plans, edit lists, safetensors headers and shard indexes,
bundle.json, model configs in metadata): bytes are decoded as UTF-8 with an optional BOM (Notepad
writes one), and every way `json.loads` can fail (bad syntax, integers past Python's 4,300-digit
limit, nesting deeper than the recursion limit, lone surrogates) becomes the caller's error
type with `what` and `fix` in the message.
"""

from __future__ import annotations

import json

MAX_JSON_BYTES = 64 * 2**20  # a plan, an edit list or a header larger than this is not one


def decode_text(data, what: str, error: type[Exception], fix: str) -> str:
    """`data` (str or bytes) as text: UTF-8, a leading BOM dropped; `error` naming `what` and `fix` otherwise."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > MAX_JSON_BYTES:
            raise error(f"{what} is {len(data)} bytes, more than {MAX_JSON_BYTES} a JSON file of Plan-X may be; {fix}")
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise error(f"{what} is not UTF-8 text ({err.reason} at byte {err.start}); {fix}") from None
    if not isinstance(data, str):
        raise error(f"{what} must be JSON text, got {type(data).__name__}; {fix}")
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{what} is {len(data)} characters, more than {MAX_JSON_BYTES}; {fix}")
    return data.removeprefix("\ufeff")


def parse_json(data, what: str, error: type[Exception], fix: str):
    """The JSON value of `data`; `error(message)` for anything that is not well-formed, finite, UTF-8 JSON."""
    text = decode_text(data, what, error, fix)
    try:
        value = json.loads(text)  # NaN / Infinity pass: the fields' own checks name them
    except RecursionError:
        raise error(f"{what} is nested too deeply to be a Plan-X file; {fix}") from None
    except ValueError as err:  # JSONDecodeError, the integer-digits limit, NaN / Infinity
        raise error(f"{what} does not parse as JSON ({str(err).splitlines()[0][:160]}); {fix}") from None
    check_strings(value, what, error, fix)
    return value


def check_strings(value, what: str, error: type[Exception], fix: str, depth: int = 0) -> None:
    """Refuse strings that cannot be written back as UTF-8 (lone surrogates from `\\ud800` escapes)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise error(f"{what} holds a string that is not valid Unicode (a lone surrogate); {fix}") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            check_strings(key, what, error, fix, depth + 1)
            check_strings(item, what, error, fix, depth + 1)
    elif isinstance(value, list) and (not value or not isinstance(value[0], (int, float))):
        for item in value:
            check_strings(item, what, error, fix, depth + 1)
