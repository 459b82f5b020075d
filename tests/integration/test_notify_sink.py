"""The dev SMTP sink keeps mail (customers' names and addresses) for its user alone."""

from __future__ import annotations

import os
import smtplib
import stat
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
