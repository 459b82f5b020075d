"""The dev SMTP sink keeps mail (customers' names and addresses) for its user alone."""

from __future__ import annotations

import os
import smtplib
import socket
import stat
import subprocess
import sys
import time
from email.message import EmailMessage

from shared import devinfra


def test_sink_files_are_0600_in_a_0700_directory(tmp_path):
    maildir = tmp_path / "mail"
    maildir.mkdir(mode=0o755)  # left wide open by someone: the sink narrows it
    old_umask = os.umask(0o000)  # even with nothing masked
    try:
        sink = devinfra.SmtpSink(maildir=maildir).start()
        try:
            message = EmailMessage()
            message["From"] = "complaints@localhost"
            message["To"] = "sanne@example.com"
            message["Subject"] = "We have received your complaint"
            message.set_content("Dear Sanne de Vries,\n")
            with smtplib.SMTP(sink.host, sink.port, timeout=10) as smtp:
                smtp.send_message(message)
                smtp.send_message(message)
        finally:
            sink.stop()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(maildir.stat().st_mode) == 0o700
    files = sorted(maildir.glob("*.eml"))
    assert len(files) == 2
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert b"Sanne de Vries" in path.read_bytes()


def test_the_sink_process_saves_mail_and_ends_with_its_parent(tmp_path):
    """`complaints up` runs the sink in a process of its own: it saves what it accepts, keeps
    nothing in memory, and does not outlive a parent that was killed outright."""
    maildir = tmp_path / "mail"
    parent = subprocess.Popen(  # a stand-in for `complaints up`: starts a sink, then waits
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib; from shared import devinfra; "
            "s = devinfra.SmtpSinkProcess(pathlib.Path(sys.argv[1])).start(); "
            "print(s.port, flush=True); time.sleep(600)",
            str(maildir),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert parent.stdout is not None
        port = int(parent.stdout.readline())
        message = EmailMessage()
        message["From"] = "complaints@localhost"
        message["To"] = "sanne@example.com"
        message["Subject"] = "We have received your complaint"
        message.set_content("Dear Sanne de Vries,\n")
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            smtp.send_message(message)
        [saved] = maildir.glob("*.eml")
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert b"Sanne de Vries" in saved.read_bytes()
    finally:
        parent.kill()  # SIGKILL: no chance to stop its sink
        parent.wait()
    deadline = time.monotonic() + 10
    while _listening(port):
        assert time.monotonic() < deadline, "the sink outlived its parent"
        time.sleep(0.1)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
