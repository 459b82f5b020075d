"""A few kept-alive SMTP connections shared by the mailer's deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

import aiosmtplib
import aiosmtplib.protocol
from aiosmtplib import SMTPResponse
from aiosmtplib.email import quote_address

from services.notify.domain import Mail

log = logging.getLogger(__name__)

# The server closes the session (RFC 5321 4.2.2): the connection is gone, not the message.
_CLOSING = 421
# A connection idle longer than this is checked before it carries a message.
IDLE_S = 5.0
# What pipelining uses of aiosmtplib beyond its documented API; with an aiosmtplib lacking any
# of it every message goes unpipelined
_MODULE_PARTS = ("COMMAND_INJECTION_REGEX", "PERIOD_REGEX", "normalize_message_line_endings")
_PROTOCOL_PARTS = (
    "_buffer",
    "_command_lock",
    "_read_response_from_buffer",
    "_response_pending",
    "_response_waiter",
)


class LeaseLost(Exception):
    """The message's lease may have run out before a connection was free: it was not sent."""


def _broken(exc: BaseException) -> bool:
    """Whether `exc` leaves the connection unusable (rather than refusing one message)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return exc.code == _CLOSING
    return isinstance(exc, OSError | TimeoutError | aiosmtplib.SMTPServerDisconnected)


def describe(exc: BaseException) -> str:
    """What went wrong, without the server's text (it may repeat the address)."""
    name = type(exc).__name__
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{name} {exc.code}"
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        return f"{name} {exc.recipients[0].code}"
    return name


class _Pipelining(aiosmtplib.protocol.SMTPProtocol):
    """aiosmtplib's protocol, also able to write several commands at once and read their
    replies in order (RFC 2920).

    aiosmtplib reads one reply per command written: bytes that arrive while a parsed reply
    waits to be read are dropped, and a reply that came in the same segment as the one before
    stays in the buffer until more bytes come. Under pipelining both are the next reply, so
    while replies are due every byte is kept and the buffer is read first."""

    _due = 0  # replies still to come to commands written together

    def data_received(self, data: bytes) -> None:
        waiter = self._response_waiter
        if self._due and waiter is not None and waiter.done():
            self._buffer.extend(data)
        else:
            super().data_received(data)

    async def pipeline(
        self, commands: Sequence[bytes], *, timeout_s: float | None
    ) -> list[SMTPResponse]:
        """Write `commands` in one go and read their replies in order, up to a 421 (the server
        is closing: no further reply comes)."""
        if any(aiosmtplib.protocol.COMMAND_INJECTION_REGEX.search(c) for c in commands):
            raise ValueError("Command arg contains a prohibited control character")
        replies: list[SMTPResponse] = []
        async with self._lock():
            self._due = len(commands)
            try:
                self._response_pending = True
                self.write(b"".join(c + b"\r\n" for c in commands))
                while self._due:
                    reply = self._read_response_from_buffer()
                    if reply is None:
                        reply = await self.read_response(timeout=timeout_s)
                    self._due -= 1
                    replies.append(reply)
                    if reply.code == _CLOSING:
                        break
            finally:
                self._due = 0
        return replies

    async def content(self, message: bytes | None, *, timeout_s: float | None) -> SMTPResponse:
        """After a 354: `message` as `execute_data_command` sends it (None: only the "." that
        ends the data); the server's reply."""
        data = b""
        if message is not None:
            data = aiosmtplib.protocol.normalize_message_line_endings(message)
            data = aiosmtplib.protocol.PERIOD_REGEX.sub(b"..", data)
        async with self._lock():
            self._response_pending = True
            self.write(data + b".\r\n")
            return await self.read_response(timeout=timeout_s)

    def _lock(self) -> asyncio.Lock:
        if self._command_lock is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        return self._command_lock


@functools.cache
def _say_unpipelined() -> None:
    """Log, once (it is cached), that this aiosmtplib lacks what pipelining relies on."""
    log.warning(
        "aiosmtplib %s lacks the protocol parts SMTP pipelining relies on: sending unpipelined",
        aiosmtplib.__version__,
    )


def _pipelining(client: aiosmtplib.SMTP) -> _Pipelining | None:
    """The connection's protocol, able to pipeline, when its server offers PIPELINING and this
    aiosmtplib has the parts that needs; else None."""
    protocol = client.protocol
    if protocol is None or client.is_ehlo_or_helo_needed:
        return None
    if not client.supports_extension("pipelining"):
        return None
    if isinstance(protocol, _Pipelining):
        return protocol
    if (
        type(protocol) is not aiosmtplib.protocol.SMTPProtocol
        or not all(hasattr(aiosmtplib.protocol, name) for name in _MODULE_PARTS)
        or not all(hasattr(protocol, name) for name in _PROTOCOL_PARTS)
    ):
        _say_unpipelined()
        return None
    # aiosmtplib builds its protocol itself; the subclass only adds behaviour and a class-level
    # counter, so the connection's own protocol can take it on as it is
    protocol.__class__ = _Pipelining
    return cast(_Pipelining, protocol)


def _encoding(message: Mail) -> str:
    """UTF-8 for a non-ASCII address (with SMTPUTF8 on MAIL), else ASCII."""
    return "ascii" if message.sender.isascii() and message.recipient.isascii() else "utf-8"


async def _envelope(client: aiosmtplib.SMTP, message: Mail) -> _Pipelining | None:
    """MAIL and RCPT, and with a pipelining server DATA too (its protocol is returned, its 354
    read): nothing is delivered yet, so a broken connection may be retried."""
    protocol = _pipelining(client)
    if protocol is not None:
        await _pipelined_envelope(client, protocol, message)
        return protocol
    encoding = _encoding(message)
    options = ["SMTPUTF8"] if encoding == "utf-8" else []
    await client.mail(message.sender, options=options, encoding=encoding)
    await client.rcpt(message.recipient, encoding=encoding)
    return None


async def _pipelined_envelope(
    client: aiosmtplib.SMTP, protocol: _Pipelining, message: Mail
) -> None:
    """MAIL, RCPT and DATA in one write, their replies taken as `SMTP.mail`, `rcpt` and `data`
    take them; after a refusal the server answers DATA with 503 or 554 and the message is not
    sent (one that answers 354 gets a lone "." ending the data)."""
    encoding = _encoding(message)
    mail = b"MAIL FROM:" + quote_address(message.sender).encode(encoding)
    if encoding == "utf-8":
        mail += b" SMTPUTF8"
    rcpt = b"RCPT TO:" + quote_address(message.recipient).encode(encoding)
    try:
        replies = await protocol.pipeline([mail, rcpt, b"DATA"], timeout_s=client.timeout)
    except Exception:
        client.close()  # a reply left unread would answer a later command
        raise
    refusal = _refusal(message, replies)
    if refusal is None:
        return
    if refusal.code == _CLOSING:
        client.close()
    elif replies[-1].code == 354:
        await _content(client, protocol, None)
    raise refusal


def _refusal(message: Mail, replies: list[SMTPResponse]) -> aiosmtplib.SMTPResponseException | None:
    """The error `SMTP.mail`, `rcpt` or `data` raises for the first of `replies` (to MAIL, RCPT
    and DATA) that refuses, if one does."""
    accepted = ({250}, {250, 251}, {354})
    refused: tuple[Callable[[SMTPResponse], aiosmtplib.SMTPResponseException], ...] = (
        lambda r: aiosmtplib.SMTPSenderRefused(r.code, r.message, message.sender),
        lambda r: aiosmtplib.SMTPRecipientRefused(r.code, r.message, message.recipient),
        lambda r: aiosmtplib.SMTPDataError(r.code, r.message),
    )
    for reply, codes, error in zip(replies, accepted, refused, strict=False):
        if reply.code not in codes:
            return error(reply)
    return None


async def _content(client: aiosmtplib.SMTP, protocol: _Pipelining, data: bytes | None) -> None:
    """The message after a pipelined DATA's 354 (or None: only the "." that ends the data)."""
    try:
        reply = await protocol.content(data, timeout_s=client.timeout)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise
    if reply.code == _CLOSING:
        client.close()
    if reply.code != 250 and data is not None:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


class SmtpPool:
    """`size` connections to one server, opened when first needed and kept open; a broken one
    is closed and opened afresh for the next message."""

    def __init__(self, *, host: str, port: int, timeout_s: float, size: int) -> None:
        self._all = [
            aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout_s) for _ in range(size)
        ]
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        self._used: dict[int, float] = {}  # when each connection last delivered
        for client in self._all:
            self._idle.put_nowait(client)

    async def send(self, message: Mail, *, still_ours: Callable[[], bool]) -> None:
        """Hand `message` to the server on the next free connection, if `still_ours()` then.

        Raises `LeaseLost` (not sent), or the SMTP or network error. A connection that sat idle
        is first checked with a NOOP (servers close idle sessions). When the server offers
        PIPELINING, MAIL, RCPT and DATA go in one write (RFC 2920) and the message in the next.
        A connection found broken before the message's DATA (before the message itself, when
        DATA went with MAIL and RCPT) is opened afresh and the message tried once more on it;
        after that a failure is never retried here, since the server may have taken the
        message: the mailer's retry, with the same Message-ID, decides.
        """
        client = await self._idle.get()
        try:
            if not still_ours():
                raise LeaseLost
            await self._ready(client)
            try:
                pipelined = await _envelope(client, message)
            except Exception as exc:
                if not _broken(exc) or not still_ours():
                    raise
                client.close()
                await self._ready(client)
                pipelined = await _envelope(client, message)
            if pipelined is None:
                await client.data(message.data)
            else:
                await _content(client, pipelined, message.data)
            self._used[id(client)] = time.monotonic()
        except BaseException as exc:
            if _broken(exc) or isinstance(exc, asyncio.CancelledError):
                client.close()
            elif client.is_connected:
                with contextlib.suppress(Exception):
                    await client.rset()  # a refused message leaves no transaction open
            raise
        finally:
            self._idle.put_nowait(client)

    async def _ready(self, client: aiosmtplib.SMTP) -> None:
        """Connect `client`, or make sure a connection idle for a while still answers."""
        if client.is_connected and time.monotonic() - self._used.get(id(client), 0.0) > IDLE_S:
            try:
                await client.noop()
            except Exception as exc:
                if not _broken(exc):
                    raise
                client.close()
        if not client.is_connected:
            await client.connect()
            self._used[id(client)] = time.monotonic()  # it just answered: no NOOP before use

    async def close(self) -> None:
        """Say goodbye on every open connection."""
        for client in self._all:
            if client.is_connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.quit(), 2)
                client.close()
