"""A few kept-alive SMTP connections shared by the mailer's deliveries."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import aiosmtplib

from services.notify.domain import Mail

# The server closes the session (RFC 5321 4.2.2): the connection is gone, not the message.
_CLOSING = 421
# A connection idle longer than this is checked before it carries a message.
IDLE_S = 5.0


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


async def _envelope(client: aiosmtplib.SMTP, message: Mail) -> None:
    """MAIL and RCPT: nothing is delivered yet, so a broken connection may be retried."""
    utf8 = not (message.sender.isascii() and message.recipient.isascii())
    encoding = "utf-8" if utf8 else "ascii"
    await client.mail(message.sender, options=["SMTPUTF8"] if utf8 else [], encoding=encoding)
    await client.rcpt(message.recipient, encoding=encoding)


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
        is first checked with a NOOP (servers close idle sessions). A connection found broken
        before the message's DATA is opened afresh and the message tried once more on it;
        once DATA is under way a failure is never retried here, since the server may have
        taken the message: the mailer's retry, with the same Message-ID, decides.
        """
        client = await self._idle.get()
        try:
            if not still_ours():
                raise LeaseLost
            await self._ready(client)
            try:
                await _envelope(client, message)
            except Exception as exc:
                if not _broken(exc) or not still_ours():
                    raise
                client.close()
                await self._ready(client)
                await _envelope(client, message)
            await client.data(message.data)
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

    async def close(self) -> None:
        """Say goodbye on every open connection."""
        for client in self._all:
            if client.is_connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.quit(), 2)
                client.close()
