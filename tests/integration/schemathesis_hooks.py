"""Schemathesis hooks for the property tests (loaded with SCHEMATHESIS_HOOKS): deep bodies mixed
into the generated ones, and a check that every error answer is a problem document."""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from hypothesis import strategies as st

PROBLEM = "application/problem+json"
MAX_DEPTH = 64  # the limit the API promises (shared.jsonsafe.MAX_DEPTH)
# Python's own JSON encoder (which serialises the generated bodies) stops near 1,000 levels;
# deeper bodies are sent by tests/integration/test_bad_input.py.
DEEPEST = 900


def _nested(depth: int, inner: Any) -> Any:
    for level in range(depth):
        inner = [inner] if level % 2 else {"n": inner}
    return inner


def _bury(body: Any, depth: int) -> Any:
    """`body` with an extra field nested `depth` levels (or inside that many levels); raw
    bytes (some negative cases) stay as they are."""
    if isinstance(body, bytes | bytearray | str):
        return body
    if isinstance(body, dict):
        return {**body, "extra": _nested(depth, None)}
    return _nested(depth, body)


def depth_of(value: Any) -> int:
    """How deeply `value` nests (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            deepest = max(deepest, depth)
            stack.extend(
                (child, depth) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _bury_drawn(drawn: Any, depth: int) -> Any:
    # schemathesis draws its own wrapper (value plus provenance) or a plain value
    if hasattr(drawn, "map_value"):
        return drawn.map_value(lambda value: _bury(value, depth))
    return _bury(drawn, depth)


@schemathesis.hook
def before_generate_body(context: Any, strategy: st.SearchStrategy[Any]) -> Any:
    deep = st.tuples(strategy, st.integers(MAX_DEPTH + 1, DEEPEST)).map(lambda p: _bury_drawn(*p))
    return st.one_of(strategy, deep)


def _sent_depth(body: bytes | str | None) -> int:
    if not body:
        return 0
    try:
        return depth_of(json.loads(body))
    except ValueError:
        return 0


@schemathesis.check
def errors_are_problem_documents(ctx: Any, response: Any, case: Any) -> None:
    """Every answer of 400 or more is an RFC 9457 problem; a body nested past the limit gets 422
    `json_too_deep`."""
    too_deep = _sent_depth(response.request.body) > MAX_DEPTH
    if too_deep and response.status_code != 422:
        raise AssertionError(f"a body nested past {MAX_DEPTH} got {response.status_code}")
    if response.status_code < 400:
        return
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.split(";")[0].strip() != PROBLEM:
        raise AssertionError(f"{response.status_code} answered as {content_type!r}, not {PROBLEM}")
    doc = json.loads(response.content)
    if doc.get("status") != response.status_code or not all(
        isinstance(doc.get(name), str) and doc[name]
        for name in ("type", "title", "detail", "instance")
    ):
        raise AssertionError(f"not a complete problem document: {sorted(doc)}")
    rules = [e.get("rule") for e in doc.get("errors", [])]
    if too_deep and rules != ["json_too_deep"]:
        raise AssertionError(f"a body nested past {MAX_DEPTH} was refused for {rules}")
