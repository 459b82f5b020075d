"""Untrusted JSON: UTF-8 only, size and nesting limits with their own reasons, never a crash."""

from __future__ import annotations

import time

import pytest

from shared import jsonsafe


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe{}", "not_json"),
        (b"{", "not_json"),
        (b"[" * 10_000 + b"]" * 10_000, "too_deep"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "too_deep"),
        (b"[" * 100 + b"}" * 100, "not_json"),  # deep-looking but unbalanced: not JSON
        (b"[" * 5_000, "too_deep"),  # unclosed, but 5,000 deep before that shows
        (b"x" * 2_000, "oversized"),
        (b'[{"a":' * 33 + b"1" + b"}]" * 33, "too_deep"),  # arrays and objects in turn
    ],
    ids=[
        "not utf-8",
        "truncated",
        "10k deep",
        "65 deep",
        "mismatched",
        "unclosed",
        "large",
        "66 deep, alternating",
    ],
)
def test_bad_documents_are_refused_with_their_reason(data, code):
    with pytest.raises(jsonsafe.JsonRejected) as caught:
        jsonsafe.loads(data, max_bytes=1_000 if code == "oversized" else None)
    assert caught.value.code == code


def test_nesting_up_to_the_limit_parses():
    doc = b'{"a":' * 64 + b"1" + b"}" * 64
    value = jsonsafe.loads(doc)
    for _ in range(64):
        value = value["a"]
    assert value == 1


def test_alternating_nesting_up_to_the_limit_parses():
    assert jsonsafe.loads(b'[{"a":' * 32 + b"1" + b"}]" * 32)


def test_brackets_inside_strings_do_not_count():
    text = '{"description": "' + "[[[{{{" * 1_000 + '\\" ]]"}'
    assert jsonsafe.loads(text)["description"].startswith("[[[{{{")


def test_many_shallow_brackets_are_fine():
    doc = "[" + ",".join(["{}"] * 5_000) + "]"
    assert len(jsonsafe.loads(doc)) == 5_000


@pytest.mark.parametrize(
    "text",
    [
        "[" * 65 + '"' + '\\"' * 500_000,  # an unterminated string full of escaped quotes
        "[" * 65 + '"a' * 500_000,  # a quote every other character, none closing
        "[" * 65 + '"' + "\\" * 1_000_001,  # a run of backslashes
    ],
    ids=["escaped quotes", "many quotes", "backslashes"],
)
def test_the_depth_check_takes_linear_time_on_hostile_strings(text):
    """A review found the check quadratic on unterminated strings: 80 KB took 27 s, blocking
    the event loop. A megabyte must take a moment, not minutes."""
    started = time.perf_counter()
    with pytest.raises(jsonsafe.JsonRejected):
        jsonsafe.loads(text)
    assert time.perf_counter() - started < 2.0
