"""A dead letter never keeps or announces a credential a record carried."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from shared import deadletters
from shared.kafka import Record


def test_an_authorization_header_is_replaced_by_a_digest():
    record = Record(
        "complaints.commands.v1",
        0,
        7,
        b"c-1",
        b"not json",
        (("Authorization", b"Bearer secret-token"), ("traceparent", b"00-abc")),
    )
    kept = deadletters.redacted(record)
    headers = dict(kept.headers)
    assert b"secret-token" not in headers["Authorization"]
    assert headers["Authorization"].startswith(b"redacted sha256:")
    assert headers["traceparent"] == b"00-abc"
    letter = deadletters.Letter(record, "not_json", "the value is not JSON", "resolution-commands")
    message = deadletters.event_message(letter, at=datetime.now(UTC), preview_bytes=1024)
    announced = json.loads(message.event.to_bytes())["data"]["headers"]["Authorization"]
    assert base64.b64decode(announced).startswith(b"redacted sha256:")
