"""Tokens and channel keys; the receipt in the customer's language."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.notify.domain import receipt, retry_delay_s
from shared import auth
from shared.events import ReceivedData, SubmittedData
from tests.support import submission

SECRET = b"unit-secret"


def test_a_staff_token_names_its_subject_until_it_expires():
    token = auth.issue_token(SECRET, kind=auth.STAFF, subject="s-1", ttl_s=60, now=1000)
    assert auth.verify_token(SECRET, token, kind=auth.STAFF, now=1059).subject == "s-1"
    with pytest.raises(auth.InvalidToken, match="expired"):
        auth.verify_token(SECRET, token, kind=auth.STAFF, now=1061)


def test_a_token_issued_for_longer_than_tokens_may_live_is_refused():
    twelve_hours = 12 * 3600
    fine = auth.issue_token(SECRET, kind=auth.STAFF, subject="s-1", ttl_s=twelve_hours)
    found = auth.verify_token(SECRET, fine, kind=auth.STAFF, max_lifetime_s=twelve_hours)
    assert found.issued_at > 0
    century = auth.issue_token(SECRET, kind=auth.STAFF, subject="s-1", ttl_s=100 * 365 * 86400)
    assert auth.verify_token(SECRET, century, kind=auth.STAFF).subject == "s-1"  # no limit asked
    with pytest.raises(auth.InvalidToken, match="longer than tokens may live"):
        auth.verify_token(SECRET, century, kind=auth.STAFF, max_lifetime_s=twelve_hours)


def test_a_token_without_an_issue_time_cannot_be_revoked_so_it_is_refused():
    body = auth._b64(b'{"k":"staff","s":"s-1","e":9999999999}')
    sig = auth._b64(auth.hmac.new(SECRET, body.encode(), auth.hashlib.sha256).digest())
    with pytest.raises(auth.InvalidToken, match="longer than tokens may live"):
        auth.verify_token(SECRET, f"{body}.{sig}", kind=auth.STAFF, max_lifetime_s=3600)


def test_two_tokens_issued_at_once_differ():
    one = auth.issue_token(SECRET, kind=auth.STAFF, subject="s-1", ttl_s=60, now=1000)
    two = auth.issue_token(SECRET, kind=auth.STAFF, subject="s-1", ttl_s=60, now=1000)
    assert one != two


@pytest.mark.parametrize(
    "mutate", [lambda t: t[:-2] + "xx", lambda t: "x" + t, lambda t: t.split(".")[0]]
)
def test_tampered_tokens_are_refused(mutate):
    token = auth.issue_token(SECRET, kind=auth.STAFF, subject="s-1", ttl_s=60)
    with pytest.raises(auth.InvalidToken):
        auth.verify_token(SECRET, mutate(token), kind=auth.STAFF)


def test_a_token_of_another_kind_or_secret_is_refused():
    token = auth.issue_token(SECRET, kind=auth.CUSTOMER, subject="c-1", ttl_s=60)
    with pytest.raises(auth.InvalidToken, match="not a staff token"):
        auth.verify_token(SECRET, token, kind=auth.STAFF)
    with pytest.raises(auth.InvalidToken, match="bad signature"):
        auth.verify_token(b"other", token, kind=auth.CUSTOMER)


def test_channel_keys_are_stored_only_as_hashes():
    key = auth.new_channel_key("web")
    assert key.startswith("ck_web_")
    assert auth.hash_key(key) != key and len(auth.hash_key(key)) == 64


def _received(locale: str, **customer) -> ReceivedData:
    data = SubmittedData.model_validate(submission("web"))
    data.customer.locale = locale
    for k, v in customer.items():
        setattr(data.customer, k, v)
    return ReceivedData(
        complaint_id="c-123", received_at=datetime(2026, 1, 1, tzinfo=UTC), **data.model_dump()
    )


@pytest.mark.parametrize(
    ("locale", "language", "subject", "greeting"),
    [
        ("en", "en", "We have received your complaint (c-123)", "Dear Sanne de Vries,"),
        ("tr-TR", "tr", "Şikâyetinizi aldık (c-123)", "Sayın Sanne de Vries,"),
        ("nl", "nl", "We hebben uw klacht ontvangen (c-123)", "Beste Sanne de Vries,"),
        ("fr", "en", "We have received your complaint (c-123)", "Dear Sanne de Vries,"),
    ],
)
def test_receipt_speaks_the_customers_language(locale, language, subject, greeting):
    message = receipt(_received(locale))
    assert message is not None
    assert (message.language, message.subject) == (language, subject)
    assert message.body.startswith(greeting)
    assert "c-123" in message.body


def test_receipt_without_a_name_or_address():
    assert receipt(_received("en", name=None)).body.startswith("Dear customer,")
    assert receipt(_received("en", email=None)) is None


def test_retry_backoff_grows_and_is_capped():
    assert [retry_delay_s(n) for n in (1, 2, 3)] == [5, 10, 20]
    assert retry_delay_s(50) == 600


@pytest.mark.parametrize("token", ["a.é", "a.b\ufffd", "é.é"])
def test_a_token_with_non_ascii_characters_is_refused_as_malformed(token):
    with pytest.raises(auth.InvalidToken, match="malformed"):
        auth.verify_token(SECRET, token, kind=auth.STAFF)


def test_an_issue_time_is_never_rounded_up_past_a_revocation():
    token = auth.issue_token(SECRET, kind=auth.STAFF, subject="s-1", ttl_s=60, now=1000.0009)
    assert auth.verify_token(SECRET, token, kind=auth.STAFF, now=1001).issued_at == 1000.0
