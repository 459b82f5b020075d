"""Intake reads a good submitted record in one pass (`handlers.read_at_once`) and leaves any
other to the careful path, which says why it is refused: the fast path must never accept a
record the careful one refuses, nor read different values from one it accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.intake.handlers import MAX_RECORD_BYTES, read_at_once, read_carefully
from shared.events import EventType, SubmittedData, new_event
from shared.kafka import Rejected
from tests.support import submission

# where a mutation may land: the envelope's attributes, the submission's fields, nested ones
PATHS = [
    ("specversion",),
    ("id",),
    ("source",),
    ("type",),
    ("subject",),
    ("time",),
    ("datacontenttype",),
    ("data",),
    ("extension",),
    *(("data", name) for name in (*SubmittedData.model_fields, "unknown")),
    *(("data", "customer", name) for name in ("id", "name", "email", "phone", "locale", "tier")),
    ("data", "amount_at_stake", "amount"),
    ("data", "amount_at_stake", "currency"),
]
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["phone", "service", "EUR", "12.50", "2026-11-20T08:00:00Z", "nl", "gold"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _envelope() -> dict[str, Any]:
    event = new_event(type=EventType.SUBMITTED, source="phone/ivr", data=submission("phone"))
    return json.loads(event.to_bytes())


def _careful(value: bytes) -> tuple[Any, ...]:
    try:
        data, source = read_carefully(value)
    except Rejected as refused:
        return ("refused", refused.code)
    return (data.model_dump(), data.model_fields_set, data.customer.model_fields_set, source)


def _at_once(value: bytes) -> tuple[Any, ...] | None:
    read = read_at_once(value)
    if read is None:
        return None
    data, source = read
    return (data.model_dump(), data.model_fields_set, data.customer.model_fields_set, source)


# Wrong values a producer might plausibly send, where random JSON rarely lands: another event
# type, numbers for strings, enums in another case, times as numbers or without an offset.
PLAUSIBLE = st.sampled_from(
    [
        "complaint.routed",
        "COMPLAINT.SUBMITTED",
        "Web",
        "PHONE",
        12,
        12.5,
        "12.50",
        " 12.50",
        "1e2",
        1700000000,
        "2026-11-02T09:00:00",
        "2026-11-02T09:00:00Z",
        "\ud800",
        "",
        None,
        True,
        [],
        {},
    ]
)


def _agree(value: bytes) -> None:
    fast = _at_once(value)
    assert fast is None or fast == _careful(value), value


@given(
    changes=st.lists(
        st.tuples(
            st.sampled_from(PATHS),
            st.none() | st.just("delete") | (PLAUSIBLE | JSON_VALUES).map(lambda v: ("set", v)),
        ),
        max_size=4,
    ),
    splice=st.none() | st.tuples(st.integers(min_value=0), st.binary(max_size=4)),
    ascii_only=st.booleans(),
)
def test_the_fast_path_agrees_with_the_careful_one(changes, splice, ascii_only):
    doc = _envelope()
    for path, change in changes:
        parent = doc
        for name in path[:-1]:
            parent = parent.get(name) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or change is None:
            continue
        if change == "delete":
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = change[1]
    # escaped (\\ud800 reaches the parsers as an escape) or raw
    value = json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    if splice is not None:
        at = splice[0] % (len(value) + 1)
        value = value[:at] + splice[1] + value[at:]
    _agree(value)


def test_a_good_record_is_read_at_once():
    value = json.dumps(_envelope()).encode()
    assert _at_once(value) is not None
    assert _at_once(value) == _careful(value)


@pytest.mark.parametrize(
    "text",
    [
        # the last of duplicate keys counts, in the envelope and in the data
        '{{"specversion":"1.0","id":"1","source":"s","type":"x","type":"complaint.submitted",'
        '"data":{data}}}',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"data":{{"channel":"web",{rest}}}}}',
        # what Python's parser takes and a stricter one may not
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted","x":NaN,'
        '"y":-Infinity,"z":1e999,"data":{data}}}',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted","x":"\\ud800",'
        '"data":{data}}}',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"data":{data}, "x": ' + "[" * 40 + "]" * 40 + "}}",
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"data":{data}, "x": ' + "[" * 70 + "]" * 70 + "}}",
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"data":{data}}}  \n\t',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"data":{data}}} x',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted","data":{data},}}',
        '\ufeff{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"data":{data}}}',
        # a duplicate key spelled with an escape; another type; a lone surrogate in the text;
        # an integer past Python's digit limit
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"typ\\u0065":"x","data":{data}}}',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.routed","data":{data}}}',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted",'
        '"data":{{{rest},"description":"\\ud800 kapot"}}}}',
        '{{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted","n":'
        + "9" * 4301
        + ',"data":{data}}}',
    ],
)
def test_odd_documents_read_the_same_either_way(text):
    data = json.dumps(submission("web"), ensure_ascii=False)
    value = text.format(data=data, rest=data[1:-1]).encode("utf-8", "surrogatepass")
    _agree(value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"\xff",
        b'{"specversion":"1.0","id":"1","source":"s","type":"complaint.submitted","data":"\xed\xa0\x80"}',
        b'{"pad": "' + b"x" * MAX_RECORD_BYTES + b'"}',
    ],
)
def test_what_the_fast_path_cannot_read_is_left_to_the_careful_one(value):
    assert read_at_once(value) is None
