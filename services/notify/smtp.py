"""A few kept-alive SMTP connections shared by the mailer's deliveries."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiosmtplib

from services.notify.domain import Mail

# The server closes the session (RFC 5321 4.2.2): the connection is gone, not the message.
_CLOSING = 421


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


class SmtpPool:
    """`size` connections to one server, opened when first needed and kept open; a broken one
    is closed and opened afresh for the next message."""

    def __init__(self, *, host: str, port: int, timeout_s: float, size: int) -> None:
        self._all = [
            aiosmtplib.SMTP(hostname=host, port=port, timeout=timeout_s) for _ in range(size)
        ]
        self._idle: asyncio.Queue[aiosmtplib.SMTP] = asyncio.Queue()
        for client in self._all:
            self._idle.put_nowait(client)

    async def send(self, message: Mail, *, still_ours: Callable[[], bool]) -> None:
        """Hand `message` to the server on the next free connection, if `still_ours()` then.

        Raises `LeaseLost` (not sent), or the SMTP or network error. A connection that was
        idle and turns out closed by the server is reopened and the message tried once more.
        """
        client = await self._idle.get()
        try:
            if not still_ours():
                raise LeaseLost
            reused = client.is_connected
            try:
                await self._send_on(client, message)
            except Exception as exc:
                if not _broken(exc):
                    raise
                client.close()
                if not reused:
                    raise
                await self._send_on(client, message)
        except BaseException as exc:
            if _broken(exc) or isinstance(exc, asyncio.CancelledError):
                client.close()
            raise
        finally:
            self._idle.put_nowait(client)

    @staticmethod
    async def _send_on(client: aiosmtplib.SMTP, message: Mail) -> None:
        if not client.is_connected:
            await client.connect()
        options = [] if message.recipient.isascii() else ["SMTPUTF8"]
        await client.sendmail(
            message.sender, [message.recipient], message.data, mail_options=options
        )

    async def close(self) -> None:
        """Say goodbye on every open connection."""
        for client in self._all:
            if client.is_connected:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.quit(), 2)
                client.close()
