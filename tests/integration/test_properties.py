"""Any input is accepted or refused with a reason: never a 5xx, never a stuck consumer."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import topics
from shared.events import EventType, SubmittedData, new_event
from tests.conftest import Running
from tests.support import eventually, read_topic, submission

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def _mutated_submission() -> st.SearchStrategy[dict]:
    """Valid submissions with one field replaced by arbitrary JSON (or removed)."""
    fields = list(SubmittedData.model_fields)
    return st.builds(
        lambda field, value, drop: _mutate(field, value, drop),
        st.sampled_from(fields),
        JSON,
        st.booleans(),
    )


def _mutate(field: str, value: object, drop: bool) -> dict:
    data = submission("web")
    if drop:
        data.pop(field, None)
    else:
        data[field] = value
    return data


MAX_DEPTH = 64  # the nesting limit the API promises


_LEVELS = {
    "array": (("[", "]"),),
    "object": (('{"n":', "}"),),
    "mixed": (("[", "]"), ('{"n":', "}")),  # arrays and objects in turn
}


def _deep(depth: int, inner: str, kind: str) -> str:
    """`inner` nested `depth` levels of arrays, objects or both in turn, built as text
    (Python's encoder stops near 1,000 levels)."""
    levels = _LEVELS[kind]
    pairs = [levels[i % len(levels)] for i in range(depth)]
    return "".join(o for o, _ in pairs) + inner + "".join(c for _, c in reversed(pairs))


def _deep_body(depth: int, kind: str, extra_field: bool) -> tuple[str, int]:
    """A body nested `depth` levels: a valid submission with an extra field that deep, or the
    submission itself that deep inside; with how deeply the whole body nests."""
    valid = json.dumps(submission("web"))
    if extra_field:
        return valid[:-1] + ', "extra": ' + _deep(depth, "null", kind) + "}", depth + 1
    return _deep(depth, valid, kind), depth + 2  # the submission and its customer add two


DEEP = st.builds(
    _deep_body,
    st.one_of(
        st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3), st.integers(MAX_DEPTH, 20_000), st.just(10_000)
    ),
    st.sampled_from(sorted(_LEVELS)),
    st.booleans(),
)
# Each body as text, with how deeply it nests when that is known to matter.
BODIES = st.one_of(
    JSON.map(lambda v: (json.dumps(v), 0)),
    _mutated_submission().map(lambda v: (json.dumps(v), 0)),
    DEEP,
)


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODIES)
async def test_http_any_body_is_accepted_or_refused_with_reasons(running: Running, body):
    text, depth = body
    key = running.web_key
    answer = await running.http.post(
        "/v1/complaints",
        content=text,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    assert answer.status_code in (202, 403, 413, 422), answer.text
    if answer.status_code == 202:
        assert answer.json()["complaint_id"]
        assert depth <= MAX_DEPTH
    else:
        problem = answer.json()
        assert answer.headers["content-type"] == "application/problem+json"
        assert problem["status"] == answer.status_code and problem["detail"]
        assert problem["type"] and problem["title"] and problem["instance"] == "/v1/complaints"
        if answer.status_code == 422:
            assert all(e["field"] and e["message"] for e in problem["errors"])
    if depth > MAX_DEPTH:
        assert answer.status_code == 422
        assert [(e["field"], e["rule"]) for e in problem["errors"]] == [("(body)", "json_too_deep")]


def _deep_record(depth: int, kind: str) -> bytes:
    """A submitted event whose data has an extra field nested `depth` levels."""
    event = new_event(type=EventType.SUBMITTED, source="fuzz/deep", data=submission("phone"))
    text = event.to_bytes().decode()
    at = text.index('"data":{') + len('"data":{')
    return (text[:at] + '"extra":' + _deep(depth, "null", kind) + "," + text[at:]).encode()


RECORDS = st.lists(
    st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda v: json.dumps(v).encode()),
        _mutated_submission().map(
            lambda d: new_event(type=EventType.SUBMITTED, source="fuzz", data=d).to_bytes()
        ),
        st.builds(_deep_record, st.integers(MAX_DEPTH, 12_000), st.sampled_from(sorted(_LEVELS))),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(values=RECORDS)
async def test_kafka_any_record_is_accepted_or_dead_lettered(running: Running, values):
    run = uuid.uuid4().hex[:8]
    key = f"fuzz:{run}".encode()
    sentinel = submission("phone", external_id=f"sentinel-{run}")
    producer = AIOKafkaProducer(bootstrap_servers=running.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topics.SUBMITTED, value, key=key)
        await producer.send_and_wait(
            topics.SUBMITTED,
            new_event(type=EventType.SUBMITTED, source="fuzz", data=sentinel).to_bytes(),
            key=key,
        )
    finally:
        await producer.stop()

    async def sentinel_accepted():
        rows = await running.sql(
            "SELECT 1 FROM intake.complaints WHERE external_id = $1", sentinel["external_id"]
        )
        return bool(rows)

    await eventually(sentinel_accepted, what="the record behind the fuzz to be processed")

    unaccounted: list[bytes] = []

    async def accounted_for() -> tuple[list[dict]] | None:
        """The dead letters once every record is a complaint or has one (the relay publishes
        dead letters after the commit that made them: the sentinel may be seen first)."""
        letters = [
            json.loads(r.value)["data"]
            for r in await read_topic(running.settings.kafka_bootstrap, topics.DEADLETTER)
            if r.key == key
        ]
        # a letter carries the first 64 KiB of a value: whole values are known by their digest
        dead_digests = {letter["value_sha256"] for letter in letters}
        for value in values:
            if hashlib.sha256(value).hexdigest() in dead_digests:
                continue
            # not dead-lettered (yet?): then it should be a valid submission, now a complaint
            try:
                external_id = json.loads(value)["data"]["external_id"].strip()
                rows = await running.sql(
                    "SELECT 1 FROM intake.complaints WHERE external_id = $1", external_id
                )
            except (ValueError, LookupError, TypeError, AttributeError):
                rows = []
            if not rows:
                unaccounted[:] = [value]
                return None
        return (letters,)

    try:
        (letters,) = await eventually(
            accounted_for, what="every record accepted as a complaint or dead-lettered"
        )
    except AssertionError:
        raise AssertionError(
            f"record neither accepted nor dead-lettered: {unaccounted[0][:80]!r}"
        ) from None
    dead = [base64.b64decode(letter["value_base64"]) for letter in letters]
    assert all(letter["reason"] and letter["reason_code"] for letter in letters)
    for letter, value in zip(letters, dead, strict=True):
        if b'"source":"fuzz/deep"' in value:
            assert letter["reason_code"] == "too_deep", letter["reason"]


async def test_schemathesis_finds_no_server_error_and_no_undocumented_status(running: Running):
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])),
        # deep bodies mixed into the generated ones; errors_are_problem_documents
        "SCHEMATHESIS_HOOKS": "tests.integration.schemathesis_hooks",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{running.settings.base_url()}/openapi.json",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,errors_are_problem_documents",
        "-H",
        f"Authorization: Bearer {running.web_key}",
        "--max-examples",
        "40",
        "--seed",
        "7",
        "--request-timeout",
        "10",
        "--exclude-path",
        "/v1/stream",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=root,
        env=env,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    text = out.decode()
    assert proc.returncode == 0, text[-6000:]
    assert "Tested: 9" in text, text[-3000:]  # every operation but the endless stream was hit
