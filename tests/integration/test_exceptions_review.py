"""Remedies granted as policy exceptions are reviewed by managers and directors over HTTP
(`GET /v1/exceptions`, paged, newest first) and by operators with `complaints exceptions list`."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from tests.conftest import Running
from tests.support import complaints_cli_text

# Far ahead of anything else a test grants, so these are the newest exceptions of the run.
AT = datetime(2099, 1, 1, tzinfo=UTC)


async def _granted(running: Running, complaint_id: str, minutes: int, *, exception: bool) -> str:
    event_id = str(uuid.uuid4())
    await running.sql(
        """INSERT INTO resolution.remedies (event_id, complaint_id, customer_id, type, amount,
               currency, category, severity, band, proposer, authorized_by, authorized_role,
               policy_exception, justification, policy_version, at)
           VALUES ($1, $2, 'cust-x', 'refund', 900.00, 'EUR', 'product', 'high', 'EUR:<=500',
                   'a1', 'm1', 'manager', $3, 'long-standing customer', 1, $4)""",
        event_id,
        complaint_id,
        exception,
        AT + timedelta(minutes=minutes),
    )
    return event_id


async def test_only_managers_and_directors_review_exceptions(running: Running) -> None:
    suffix = uuid.uuid4().hex[:8]
    complaint_id = f"review-{suffix}"
    newest = [
        await _granted(running, complaint_id, minutes, exception=True) for minutes in (3, 2, 1)
    ]
    await _granted(running, complaint_id, 4, exception=False)  # within policy: not listed
    await running.add_member(f"agent-{suffix}", role="agent")
    await running.add_member(f"director-{suffix}", role="director")

    agent = {"Authorization": f"Bearer {running.staff_token(f'agent-{suffix}')}"}
    refused = await running.http.get("/v1/exceptions", headers=agent)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["required_role"] == "manager"
    assert (await running.http.get("/v1/exceptions")).status_code == 401

    for reviewer in ("manager-1", f"director-{suffix}"):
        headers = {"Authorization": f"Bearer {running.staff_token(reviewer)}"}
        first = await running.http.get("/v1/exceptions?limit=2", headers=headers)
        assert first.status_code == 200, first.text
        page = first.json()
        assert [row["event_id"] for row in page["exceptions"]] == newest[:2]
        assert page["exceptions"][0]["amount"] == "900.00"
        assert page["exceptions"][0]["authorized_role"] == "manager"
        rest = await running.http.get(
            f"/v1/exceptions?limit=2&before={page['next_before']}", headers=headers
        )
        assert rest.json()["exceptions"][0]["event_id"] == newest[2]

    code, out, err = await complaints_cli_text(running.settings, "exceptions", "list", "--json")
    assert code == 0, err
    listed = [row["event_id"] for row in json.loads(out)]
    assert listed[:3] == newest
    code, out, _ = await complaints_cli_text(running.settings, "exceptions", "list")
    assert code == 0 and f"{complaint_id}  refund 900.00 EUR" in out
    # none since a time to come: the listing says so, on stderr, and prints no row
    code, out, err = await complaints_cli_text(
        running.settings, "exceptions", "list", "--since", "2999-01-01T00:00:00"
    )
    assert (code, out.strip()) == (0, "") and "no policy exceptions" in err


async def test_the_review_is_in_the_openapi_document(running: Running) -> None:
    schema = (await running.http.get("/openapi.json")).json()
    responses = schema["paths"]["/v1/exceptions"]["get"]["responses"]
    assert {"200", "401", "403"} <= set(responses)
