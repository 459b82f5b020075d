"""SMTP pipelining (RFC 2920) against a real aiosmtpd server that notes what the wire carried:
with a server that offers PIPELINING, MAIL, RCPT and DATA reach it in one read and the message
in the next; without, each command waits for its reply; a refusal sends no message and leaves
the connection usable."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer

from services.notify import smtp
from services.notify.domain import Mail, render
from services.notify.smtp import SmtpPool, describe
from shared import devinfra

SENDER = "complaints@localhost"


class _Recording(SMTPServer):
    """aiosmtpd's server, noting each chunk it reads from the client and each reply it sends."""

    def __init__(self, handler: Server, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.wire: list[tuple[str, bytes]] = []
        handler.wires.append(self.wire)

    def data_received(self, data: bytes) -> None:
        self.wire.append(("client", bytes(data)))
        super().data_received(data)

    async def push(self, status: str | bytes) -> None:
        reply = status.encode() if isinstance(status, str) else status
        self.wire.append(("server", reply))
        await super().push(status)
        if reply.startswith(b"354") and self.event_handler.on_start_input:
            self.event_handler.on_start_input()


class _Controller(Controller):
    def factory(self) -> _Recording:
        return _Recording(self.handler, **self.SMTP_kwargs)


@dataclass
class Server:
    """An SMTP server keeping what it accepts and, per connection, what the wire carried. It
    offers PIPELINING when `pipelining`; answers 550 to RCPT for the addresses in `refuse`
    (and when `lenient` still answers DATA with 354, as a server ignoring RFC 2920 would);
    answers 421 to RCPT for an address in `hang_up` and closes the connection (once each);
    calls `on_start_input` (on its own thread) once it has sent a 354."""

    pipelining: bool = True
    refuse: set[str] = field(default_factory=set)
    lenient: bool = False
    hang_up: set[str] = field(default_factory=set)
    on_start_input: Callable[[], None] | None = None
    port: int = field(default_factory=devinfra.free_port)
    wires: list[list[tuple[str, bytes]]] = field(default_factory=list)  # one per connection
    accepted: list[tuple[list[str], bytes]] = field(default_factory=list)
    _controller: Any = None

    def start(self) -> Server:
        self._controller = _Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    async def handle_EHLO(self, server, session, envelope, hostname, responses) -> list[str]:
        session.host_name = hostname  # aiosmtpd leaves it to a handler that answers EHLO
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, options) -> str:
        if address in self.hang_up:
            self.hang_up.discard(address)
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply
            return "421 4.3.2 closing"
        if address in self.refuse:
            if self.lenient:
                envelope.rcpt_tos.append(address)
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        if self.refuse.intersection(envelope.rcpt_tos):
            return "554 5.5.1 no valid recipients"
        self.accepted.append((list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"

    @property
    def connections(self) -> list[list[tuple[str, bytes]]]:
        """The wires of the connections a client spoke on (aiosmtpd's controller opens one
        itself at start, to see the server answer)."""
        return [wire for wire in self.wires if any(side == "client" for side, _ in wire)]

    def sent(self, connection: int = 0) -> list[bytes]:
        """What the client wrote on a connection after its EHLO, a chunk per server read."""
        chunks = [data for side, data in self.connections[connection] if side == "client"]
        assert chunks[0].startswith(b"EHLO ")
        return chunks[1:]

    def codes(self, connection: int = 0) -> list[int]:
        """The server's reply codes on a connection after the greeting and EHLO."""
        replies = [data for side, data in self.connections[connection] if side == "server"]
        final = [r for r in replies if r[3:4] != b"-"]  # a multi-line reply's last line
        return [int(r[:3]) for r in final[2:]]


def mail(recipient: str, subject: str = "Receipt") -> Mail:
    return render(
        sender=SENDER,
        recipient=recipient,
        subject=subject,
        body="Thank you.\n",
        date=formatdate(),
        headers=[("Message-ID", f"<{subject}@complaints>")],
    )


def envelope(recipient: str) -> bytes:
    return f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{recipient}>\r\nDATA\r\n".encode()


def content(message: Mail) -> bytes:
    return message.data + b".\r\n"  # render ends its lines with CRLF and no line starts with "."


async def send(pool: SmtpPool, message: Mail) -> None:
    await pool.send(message, still_ours=lambda: True)


@pytest.fixture
def pool_for() -> Any:
    pools: list[SmtpPool] = []

    def make(server: Server) -> SmtpPool:
        pools.append(SmtpPool(host="127.0.0.1", port=server.port, timeout_s=5, size=1))
        return pools[-1]

    yield make
    for pool in pools:
        for client in pool._all:
            client.close()


async def test_a_pipelining_server_reads_mail_rcpt_and_data_at_once_then_the_message(pool_for):
    server = Server().start()
    try:
        pool = pool_for(server)
        first, second = mail("a@example.com", "first"), mail("b@example.com", "second")
        await send(pool, first)
        await send(pool, second)
    finally:
        server.stop()
    assert server.sent() == [
        envelope("a@example.com"),
        content(first),
        envelope("b@example.com"),
        content(second),
    ]
    assert server.codes() == [250, 250, 354, 250] * 2
    assert server.accepted == [(["a@example.com"], first.data), (["b@example.com"], second.data)]


async def test_without_pipelining_each_command_waits_for_its_reply(pool_for):
    server = Server(pipelining=False).start()
    try:
        pool = pool_for(server)
        first, second = mail("a@example.com", "first"), mail("b@example.com", "second")
        await send(pool, first)
        await send(pool, second)
    finally:
        server.stop()
    plain = [
        f"MAIL FROM:<{SENDER}>\r\n".encode(),
        b"RCPT TO:<a@example.com>\r\n",
        b"DATA\r\n",
        content(first),
        f"MAIL FROM:<{SENDER}>\r\n".encode(),
        b"RCPT TO:<b@example.com>\r\n",
        b"DATA\r\n",
        content(second),
    ]
    assert server.sent() == plain
    # and each after the reply to the one before
    turns = [side for side, _ in itertools.groupby(server.connections[0], key=lambda e: e[0])]
    assert turns == ["server", "client"] * (1 + len(plain)) + ["server"]
    assert len(server.accepted) == 2


async def test_a_refused_recipient_fails_its_message_alone_and_the_message_is_not_sent(pool_for):
    server = Server(refuse={"gone@example.com"}).start()
    try:
        pool = pool_for(server)
        refused, good = mail("gone@example.com", "refused"), mail("ok@example.com", "good")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as caught:
            await send(pool, refused)
        await send(pool, good)
    finally:
        server.stop()
    assert describe(caught.value) == "SMTPRecipientRefused 550"
    # DATA refused (RFC 2920: no recipient), so the message stays unsent and RSET ends the
    # transaction; the next message goes on the same connection (no NOOP first: it has just
    # answered)
    assert server.sent() == [
        envelope("gone@example.com"),
        b"RSET\r\n",
        envelope("ok@example.com"),
        content(good),
    ]
    assert server.codes() == [250, 550, 503, 250, 250, 250, 354, 250]
    assert len(server.connections) == 1
    assert server.accepted == [(["ok@example.com"], good.data)]


async def test_a_server_taking_data_after_a_refusal_gets_an_empty_one(pool_for):
    """A server that answers DATA with 354 although the recipient was refused gets the lone
    "." that ends the data (RFC 2920 3.1), never the message."""
    server = Server(refuse={"gone@example.com"}, lenient=True).start()
    try:
        pool = pool_for(server)
        refused, good = mail("gone@example.com", "refused"), mail("ok@example.com", "good")
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await send(pool, refused)
        await send(pool, good)
    finally:
        server.stop()
    assert server.sent() == [
        envelope("gone@example.com"),
        b".\r\n",
        b"RSET\r\n",
        envelope("ok@example.com"),
        content(good),
    ]
    assert server.codes() == [250, 550, 354, 554, 250, 250, 250, 354, 250]
    assert server.accepted == [(["ok@example.com"], good.data)]


async def test_a_421_closes_the_connection_and_the_message_goes_on_a_fresh_one(pool_for):
    server = Server(hang_up={"busy@example.com"}).start()
    try:
        pool = pool_for(server)
        message = mail("busy@example.com")
        await send(pool, message)
    finally:
        server.stop()
    assert len(server.connections) == 2
    assert server.sent(0) == [envelope("busy@example.com")]
    assert server.codes(0)[:2] == [250, 421]
    assert server.sent(1) == [envelope("busy@example.com"), content(message)]
    assert server.accepted == [(["busy@example.com"], message.data)]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_non_ascii_recipient_goes_with_smtputf8(pool_for, pipelining):
    server = Server(pipelining=pipelining).start()  # aiosmtpd's Controller enables SMTPUTF8
    try:
        pool = pool_for(server)
        message = mail("zoë@example.com")
        await send(pool, message)
    finally:
        server.stop()
    mail_from = f"MAIL FROM:<{SENDER}> SMTPUTF8\r\n".encode()
    rcpt_to = "RCPT TO:<zoë@example.com>\r\n".encode()
    commands = (
        [mail_from + rcpt_to + b"DATA\r\n"] if pipelining else [mail_from, rcpt_to, b"DATA\r\n"]
    )
    assert server.sent() == [*commands, content(message)]
    assert server.accepted == [(["zoë@example.com"], message.data)]


async def test_replies_arriving_a_few_bytes_at_a_time_are_each_read(pool_for):
    """The client reads at most 3 bytes a time, only once the server has sent all three
    replies: a reply completes while the next bytes are already there. aiosmtplib alone drops
    those bytes (its reply is parsed and not yet read), and the read after fails."""
    loop = asyncio.get_running_loop()
    server = Server().start()
    try:
        pool = pool_for(server)
        await send(pool, mail("warm@example.com"))  # connected
        transport = pool._all[0].transport
        assert isinstance(transport, asyncio.Transport)
        transport.max_size = 3  # what asyncio's socket transport asks recv() for
        server.on_start_input = lambda: loop.call_soon_threadsafe(transport.resume_reading)
        for n in range(5):
            transport.pause_reading()
            await send(pool, mail(f"r{n}@example.com"))
    finally:
        server.stop()
    assert len(server.connections) == 1
    assert [recipients for recipients, _ in server.accepted] == [
        ["warm@example.com"],
        *([f"r{n}@example.com"] for n in range(5)),
    ]


async def test_without_the_protocol_parts_it_relies_on_it_sends_unpipelined_and_says_so_once(
    pool_for, monkeypatch, caplog
):
    """As with an aiosmtplib whose protocol has changed."""
    monkeypatch.setattr(smtp, "_PROTOCOL_PARTS", (*smtp._PROTOCOL_PARTS, "_gone"))
    smtp._say_unpipelined.cache_clear()
    server = Server().start()
    try:
        pool = pool_for(server)
        with caplog.at_level(logging.WARNING, logger=smtp.__name__):
            await send(pool, mail("a@example.com", "first"))
            await send(pool, mail("b@example.com", "second"))
    finally:
        server.stop()
        smtp._say_unpipelined.cache_clear()
    assert server.sent()[:3] == [
        f"MAIL FROM:<{SENDER}>\r\n".encode(),
        b"RCPT TO:<a@example.com>\r\n",
        b"DATA\r\n",
    ]
    assert len(server.sent()) == 8
    assert ["unpipelined" in r.getMessage() for r in caplog.records] == [True]


async def test_the_dev_sink_offers_pipelining_and_keeps_what_it_is_sent():
    sink = devinfra.SmtpSink().start()
    pool = SmtpPool(host=sink.host, port=sink.port, timeout_s=5, size=1)
    try:
        await send(pool, mail("a@example.com", "first"))
        await send(pool, mail("b@example.com", "second"))
        assert pool._all[0].supports_extension("pipelining")
    finally:
        await pool.close()
        sink.stop()
    assert [m["Message-ID"] for m in sink.messages] == ["<first@complaints>", "<second@complaints>"]
