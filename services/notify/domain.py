"""What to tell whom, in their language (pure): the receipt a customer gets at once, the digest
a flooded address gets instead, and the mailer's lease timing."""

from __future__ import annotations

import base64
import email.policy
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from email.header import Header
from email.message import EmailMessage

from shared.events import ReceivedData

FALLBACK_LANGUAGE = "en"

# (subject, greeting with a name, greeting without, body, sign-off)
_RECEIPT: dict[str, tuple[str, str, str, str, str]] = {
    "en": (
        "We have received your complaint ({ref})",
        "Dear {name},",
        "Dear customer,",
        "Thank you for telling us about this, and we are sorry for the trouble it has caused. "
        "We have received your complaint and given it the reference {ref}. A member of our "
        "team will look into it and get back to you as soon as possible.",
        "Kind regards,\nCustomer Care",
    ),
    "tr": (
        "Şikâyetinizi aldık ({ref})",
        "Sayın {name},",
        "Değerli müşterimiz,",
        "Bunu bize bildirdiğiniz için teşekkür ederiz; yaşadığınız sorun için özür dileriz. "
        "Şikâyetinizi aldık ve {ref} referans numarasını verdik. Ekibimizden biri konuyu "
        "inceleyip en kısa sürede size dönüş yapacak.",
        "Saygılarımızla,\nMüşteri Hizmetleri",
    ),
    "nl": (
        "We hebben uw klacht ontvangen ({ref})",
        "Beste {name},",
        "Beste klant,",
        "Dank u dat u ons dit laat weten, en onze excuses voor het ongemak. We hebben uw "
        "klacht ontvangen onder referentie {ref}. Een medewerker van ons team zoekt het uit "
        "en neemt zo snel mogelijk contact met u op.",
        "Met vriendelijke groet,\nKlantenservice",
    ),
}


@dataclass(frozen=True)
class Message:
    kind: str
    medium: str
    recipient: str
    language: str
    subject: str
    body: str


def receipt(data: ReceivedData) -> Message | None:
    """The receipt e-mail for a received complaint, or None when there is no address."""
    if not data.customer.email:
        return None
    language = data.customer.language()
    if language not in _RECEIPT:
        language = FALLBACK_LANGUAGE
    subject, named, unnamed, body, sign_off = _RECEIPT[language]
    ref = data.complaint_id
    greeting = named.format(name=data.customer.name) if data.customer.name else unnamed
    return Message(
        kind="receipt",
        medium="email",
        recipient=data.customer.email,
        language=language,
        subject=subject.format(ref=ref),
        body=f"{greeting}\n\n{body.format(ref=ref)}\n\n{sign_off}\n",
    )


# (subject, greeting, body before the references, body after them, sign-off). The greeting is
# never personal: whoever floods an address writes the names in the complaints it gets.
_DIGEST: dict[str, tuple[str, str, str, str, str]] = {
    "en": (
        "We have received {n} further complaints from your address",
        "Dear customer,",
        "We have received {n} further complaints from this e-mail address in a short time. So "
        "as not to fill your inbox, we confirm them together. Their references:",
        "A member of our team will look into each of them. If you did not send these "
        "complaints, please let us know.",
        "Kind regards,\nCustomer Care",
    ),
    "tr": (
        "Adresinizden {n} şikâyet daha aldık",
        "Değerli müşterimiz,",
        "Kısa bir süre içinde bu e-posta adresinden {n} şikâyet daha aldık. Gelen kutunuzu "
        "doldurmamak için hepsini birlikte onaylıyoruz. Referans numaraları:",
        "Ekibimizden biri her birini inceleyecek. Bu şikâyetleri siz göndermediyseniz lütfen "
        "bize bildirin.",
        "Saygılarımızla,\nMüşteri Hizmetleri",
    ),
    "nl": (
        "We hebben nog {n} klachten van uw adres ontvangen",
        "Beste klant,",
        "We hebben in korte tijd nog {n} klachten van dit e-mailadres ontvangen. Om uw inbox "
        "niet te vullen, bevestigen we ze samen. De referenties:",
        "Een medewerker van ons team zoekt ze allemaal uit. Hebt u deze klachten niet "
        "gestuurd, laat het ons dan weten.",
        "Met vriendelijke groet,\nKlantenservice",
    ),
}


def digest(recipient: str, language: str, refs: Sequence[str]) -> Message:
    """One e-mail confirming the held complaints `refs` of one address, in its language."""
    if language not in _DIGEST:
        language = FALLBACK_LANGUAGE
    subject, greeting, before, after, sign_off = _DIGEST[language]
    listed = "\n".join(f"- {ref}" for ref in refs)
    n = len(refs)
    return Message(
        kind="digest",
        medium="email",
        recipient=recipient,
        language=language,
        subject=subject.format(n=n),
        body=f"{greeting}\n\n{before.format(n=n)}\n\n{listed}\n\n{after}\n\n{sign_off}\n",
    )


def address_key(address: str) -> str:
    """The form in which receipts to an address are counted: trimmed, case-insensitive."""
    return address.strip().lower()


@dataclass(frozen=True)
class Window:
    """The receipts one address got in its current interval (`start` None: none yet), and the
    digest holding the interval's further receipts (None until the limit is passed)."""

    start: datetime | None
    receipts: int
    digest_id: str | None


NO_WINDOW = Window(start=None, receipts=0, digest_id=None)


@dataclass(frozen=True)
class ReceiptPolicy:
    limit: int  # receipts per address per interval
    interval: timedelta


@dataclass(frozen=True)
class SendReceipt:
    window: Window


@dataclass(frozen=True)
class HoldReceipt:
    """The receipt waits for the address's digest, which goes out when the interval ends."""

    window: Window
    digest_due: datetime


def route_receipt(
    window: Window, *, now: datetime, policy: ReceiptPolicy
) -> SendReceipt | HoldReceipt:
    """Send a receipt while its address has had fewer than `limit` in the interval (which
    begins with the first receipt after the last interval ended); past that, hold it for the
    interval's one digest."""
    if window.start is None or now >= window.start + policy.interval:
        return SendReceipt(Window(start=now, receipts=1, digest_id=None))
    if window.receipts < policy.limit:
        return SendReceipt(replace(window, receipts=window.receipts + 1))
    return HoldReceipt(window, digest_due=window.start + policy.interval)


def heartbeat_every_s(lease_s: float) -> float:
    """How often a mailer renews its leases: three times a lease, so one failed renewal
    leaves time for the next."""
    return lease_s / 3


def may_send(*, renewal_asked_s: float, now_s: float, lease_s: float) -> bool:
    """Whether a leased message may still go to SMTP: only while more than half its lease is
    left, counted from when the last successful renewal was asked for (monotonic seconds), so
    a mailer whose renewals stopped never sends what another may have taken over."""
    return now_s - renewal_asked_s < lease_s / 2


def retry_delay_s(attempts: int) -> float:
    """Back-off before delivery attempt `attempts + 1`: 5 s, 10 s, 20 s … capped at 10 min."""
    return float(min(5 * 2 ** max(attempts - 1, 0), 600))


MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Mail:
    """A message ready for SMTP: envelope and the bytes of the message itself."""

    sender: str
    recipient: str
    data: bytes


# Characters that would make a bare address in a header mean something else (a list, a group,
# a comment): such an address is written by the `email` package instead.
_ADDRESS_SPECIALS = frozenset('"(),:;<>[\\] ')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def render(
    *,
    sender: str,
    recipient: str,
    subject: str,
    body: str,
    date: str,
    headers: Sequence[tuple[str, str]],
) -> Mail:
    """An RFC 5322 plain-text message in UTF-8 (base64 body; subject as an encoded word when
    not ASCII), written directly: the `email` package's header objects cost more CPU than
    everything else a receipt needs. Addresses that need quoting or SMTPUTF8 go through it."""
    if _CONTROL.search(sender) or _CONTROL.search(recipient):
        raise ValueError("an address with control characters cannot be written in a header")
    # header values on one line: a CR or LF smuggled into a subject (or a complaint id) must not
    # start a header, or a body, of its own
    subject = _CONTROL.sub(" ", subject)
    headers = [(name, _CONTROL.sub(" ", value)) for name, value in headers]
    if not _plain_address(sender) or not _plain_address(recipient):
        return _render_with_email_package(sender, recipient, subject, body, date, headers)
    if subject.isascii() and len(subject) < 900:
        subject_line = subject
    else:
        subject_line = Header(subject, "utf-8", header_name="Subject").encode(linesep="\r\n")
    encoded = base64.encodebytes(body.encode("utf-8")).replace(b"\n", b"\r\n")
    head = [
        f"From: {sender}",
        f"To: {recipient}",
        f"Subject: {subject_line}",
        f"Date: {date}",
        *(f"{name}: {value}" for name, value in headers),
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: base64",
    ]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + encoded
    return Mail(sender, recipient, data)


def _plain_address(address: str) -> bool:
    return address.isascii() and not _ADDRESS_SPECIALS.intersection(address)


def _render_with_email_package(
    sender: str,
    recipient: str,
    subject: str,
    body: str,
    date: str,
    headers: Sequence[tuple[str, str]],
) -> Mail:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = date
    for name, value in headers:
        message[name] = value
    message.set_content(body)
    policy = email.policy.SMTPUTF8 if not recipient.isascii() else email.policy.SMTP
    return Mail(sender, recipient, message.as_bytes(policy=policy))
