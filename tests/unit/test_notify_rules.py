"""Notify's pure rules: receipts per address and the digest, and the mailer's lease timing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.notify.domain import (
    NO_WINDOW,
    HoldReceipt,
    ReceiptPolicy,
    SendReceipt,
    Window,
    address_key,
    digest,
    heartbeat_every_s,
    may_send,
    route_receipt,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
POLICY = ReceiptPolicy(limit=5, interval=HOUR)


@pytest.mark.parametrize(
    ("window", "now", "expected"),
    [
        # first receipt ever: an interval begins
        (NO_WINDOW, T0, SendReceipt(Window(T0, 1, None))),
        # within the interval and under the limit: sent, counted
        (Window(T0, 1, None), T0 + timedelta(minutes=5), SendReceipt(Window(T0, 2, None))),
        (Window(T0, 4, None), T0 + timedelta(minutes=59), SendReceipt(Window(T0, 5, None))),
        # the limit reached: held for the digest due when the interval ends
        (
            Window(T0, 5, None),
            T0 + timedelta(minutes=10),
            HoldReceipt(Window(T0, 5, None), T0 + HOUR),
        ),
        # a digest already open: held for it, still due at the interval's end
        (
            Window(T0, 5, "d-1"),
            T0 + timedelta(minutes=59),
            HoldReceipt(Window(T0, 5, "d-1"), T0 + HOUR),
        ),
        # the interval over (its end belongs to the next): a new one, the old digest left to go
        (Window(T0, 5, "d-1"), T0 + HOUR, SendReceipt(Window(T0 + HOUR, 1, None))),
        (Window(T0, 2, None), T0 + 3 * HOUR, SendReceipt(Window(T0 + 3 * HOUR, 1, None))),
    ],
)
def test_receipts_per_address_and_interval(window, now, expected):
    assert route_receipt(window, now=now, policy=POLICY) == expected


def test_a_flood_gets_limit_receipts_and_one_digest_per_interval():
    window, sent, held_due = NO_WINDOW, 0, set()
    # one complaint every 5 minutes for three hours, then a burst of ten 3 h 30 s in
    for n in range(40):
        now = T0 + timedelta(minutes=5 * n) if n < 30 else T0 + timedelta(hours=3, seconds=n)
        decision = route_receipt(window, now=now, policy=ReceiptPolicy(3, HOUR))
        if isinstance(decision, SendReceipt):
            sent += 1
        else:
            held_due.add(decision.digest_due)
        window = decision.window
    # hours 0 and 1 (12 complaints each), hour 2 (6) and the burst (10): 3 receipts each
    assert sent == 3 * 4
    burst = T0 + 3 * HOUR + timedelta(seconds=30)
    assert held_due == {T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR, burst + HOUR}


@pytest.mark.parametrize(
    ("given", "key"),
    [
        ("Sanne@Example.COM", "sanne@example.com"),
        ("  sanne@example.com\t", "sanne@example.com"),
        ("SANNE@EXAMPLE.COM ", "sanne@example.com"),
    ],
)
def test_addresses_are_compared_trimmed_and_case_insensitively(given, key):
    assert address_key(given) == key


@pytest.mark.parametrize(
    ("language", "subject", "greeting"),
    [
        ("en", "We have received 3 further complaints from your address", "Dear customer,"),
        ("tr", "Adresinizden 3 şikâyet daha aldık", "Değerli müşterimiz,"),
        ("nl", "We hebben nog 3 klachten van uw adres ontvangen", "Beste klant,"),
        ("fr", "We have received 3 further complaints from your address", "Dear customer,"),
    ],
)
def test_the_digest_lists_the_references_in_the_customers_language(language, subject, greeting):
    message = digest("Sanne@Example.com", language, ["c-1", "c-2", "c-3"])
    assert message.kind == "digest" and message.recipient == "Sanne@Example.com"
    assert message.subject == subject
    assert message.body.startswith(greeting + "\n")
    assert [line for line in message.body.splitlines() if line.startswith("- ")] == [
        "- c-1",
        "- c-2",
        "- c-3",
    ]


def test_heartbeat_renews_three_times_a_lease():
    assert heartbeat_every_s(10.0) == pytest.approx(10 / 3)
    assert heartbeat_every_s(3.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("since_renewal_s", "allowed"),
    [
        (0.0, True),
        (10 / 3, True),  # one heartbeat late: still fine
        (4.99, True),
        (5.0, False),  # half the lease gone without a renewal: another may take it soon
        (9.0, False),
        (30.0, False),
    ],
)
def test_a_message_goes_to_smtp_only_while_half_its_lease_is_left(since_renewal_s, allowed):
    assert may_send(renewal_asked_s=100.0, now_s=100.0 + since_renewal_s, lease_s=10.0) is allowed


def test_heartbeats_keep_a_live_mailer_able_to_send():
    # renewed every heartbeat, a message never reaches the point where it may not be sent
    lease = 10.0
    assert may_send(renewal_asked_s=0.0, now_s=heartbeat_every_s(lease) + 1.0, lease_s=lease)
