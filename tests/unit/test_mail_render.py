"""Receipts are written as bytes directly; any mail reader must read back what was meant."""

from __future__ import annotations

import email
import email.policy

import pytest

from services.notify.domain import render


def _read(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


@pytest.mark.parametrize(
    ("recipient", "subject", "body"),
    [
        ("sanne@example.com", "We received your complaint", "Dear Sanne,\n\nThank you."),
        ("ayse@example.com.tr", "Şikâyetinizi aldık", "Sayın Ayşe,\n\nİlginiz için teşekkürler."),
        ("a@example.com", "Ş" * 200, "x" * 5_000),  # a long subject folds, a long body wraps
        ('"odd,name"@example.com', "Quoted", "An address that needs quoting."),
        ("jörg@exämple.de", "Ontvangen", "An address that needs SMTPUTF8."),
    ],
    ids=["ascii", "turkish", "long", "quoted address", "utf-8 address"],
)
def test_a_rendered_mail_reads_back_as_written(recipient, subject, body):
    mail = render(
        sender="complaints@example.com",
        recipient=recipient,
        subject=subject,
        body=body,
        date="Tue, 01 Dec 2026 10:00:00 -0000",
        headers=[("Message-ID", "<n-1@complaints>"), ("X-Complaint-Id", "c-1")],
    )
    message = _read(mail.data)
    assert message["From"] == "complaints@example.com"
    assert message["Subject"] == subject
    assert message["Message-ID"] == "<n-1@complaints>"
    assert message["X-Complaint-Id"] == "c-1"
    assert message.get_content().replace("\r\n", "\n").rstrip("\n") == body
    assert (mail.sender, mail.recipient) == ("complaints@example.com", recipient)
    assert all(len(line) <= 998 for line in mail.data.split(b"\r\n"))
    assert b"\n" not in mail.data.replace(b"\r\n", b"")  # CRLF only


def test_no_value_can_start_a_header_or_a_body_of_its_own():
    """A forged event could carry CR/LF in a complaint id, which reaches the subject and a
    header: it must stay inside its own line."""
    mail = render(
        sender="complaints@example.com",
        recipient="sanne@example.com",
        subject="Received c-1\r\nContent-Type: text/html\r\n\r\n<h1>pay here</h1>",
        body="Thank you.",
        date="Tue, 01 Dec 2026 10:00:00 -0000",
        headers=[("X-Complaint-Id", "c-1\r\nBcc: victim@example.org")],
    )
    message = _read(mail.data)
    assert message.get_content_type() == "text/plain"
    assert message["Bcc"] is None
    assert "pay here" not in message.get_content()
    assert message["X-Complaint-Id"].startswith("c-1")


def test_an_address_with_control_characters_is_refused():
    with pytest.raises(ValueError):
        render(
            sender="complaints@example.com",
            recipient="a\x01b@example.com",
            subject="s",
            body="b",
            date="Tue, 01 Dec 2026 10:00:00 -0000",
            headers=[],
        )
