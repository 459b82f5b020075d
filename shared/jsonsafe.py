"""JSON from untrusted bytes: UTF-8 only, with size and nesting limits checked before parsing.

Python's parser recurses once per level of nesting: a document nested a few thousand levels
deep raises `RecursionError`, and one nested a few hundred levels deep parses but then breaks
whatever recurses over it next (validation, serialisation, PostgreSQL's `jsonb`). No document
of the contract nests deeper than a handful of levels, so anything past `MAX_DEPTH` is refused
with its own reason before the parser sees it.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64

# A JSON string (its escapes included), then any run of characters that are not brackets. The
# closing quote is optional so that an unterminated string matches to the end at once: with it
# required, every later quote would start a scan to the end, quadratic in the input's length.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
# Empty pairs: removed in one pass, so each pass takes away exactly one level of nesting.
_EMPTY_PAIRS = re.compile(r"\[\]|\{\}")


class JsonRejected(ValueError):
    """Input that is not acceptable JSON; `code` is `oversized`, `not_json` or `too_deep`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH, max_bytes: int | None = None) -> Any:
    """The JSON value in `data`, or `JsonRejected` saying why not (never `RecursionError`)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise JsonRejected("oversized", f"{len(data)} bytes; the limit is {max_bytes}")
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise JsonRejected("not_json", "not UTF-8 text") from None
    else:
        text = data
    if deeper_than(text, max_depth):
        # either nested too deeply or not JSON at all: the parser tells which, safely
        try:
            json.loads(text)
        except RecursionError:
            pass
        except ValueError:
            raise JsonRejected("not_json", "not JSON") from None
        raise JsonRejected("too_deep", f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except ValueError:
        raise JsonRejected("not_json", "not JSON") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise JsonRejected("too_deep", f"nested deeper than {max_depth} levels") from None


def deeper_than(text: str, limit: int) -> bool:
    """Whether the brackets of `text` (outside strings) may nest deeper than `limit`.

    True also for brackets that do not balance: the caller's parser then says which it is.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot nest deeper than it has openers: the common case, in C
    brackets = _NOT_BRACKETS.sub("", _STRING.sub("", text))
    for _ in range(limit):
        shorter = _EMPTY_PAIRS.sub("", brackets)
        if not shorter:
            return False
        if shorter == brackets:
            return True  # unbalanced: not JSON
        brackets = shorter
    return True
