"""`complaints up --demo` prints URLs, shows complaints flowing, exports spans, stops on Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from shared import devinfra
from tests.conftest import ADMIN_DSN


class OtlpReceiver:
    """A real OTLP/HTTP trace receiver (protobuf), keeping (service, trace id, span name)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = next(
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    )
                    for scope in resource_spans.scope_spans:
                        for span in scope.spans:
                            receiver.spans.append((service, span.trace_id.hex(), span.name))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


async def _complaints_up(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    """`complaints up` in a process of its own, its output (stdout and stderr) piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "complaints",
        "up",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def test_up_demo_prints_urls_shows_flow_exports_spans_and_stops_cleanly(tmp_path):
    # its own database: its mailer must not deliver the other tests' receipts
    name = f"complaints_up_{uuid.uuid4().hex[:8]}"
    database = await devinfra.ensure_database(ADMIN_DSN, name)
    receiver = OtlpReceiver()
    port = devinfra.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPLAINTS_", "OTEL_"))}
    env.update(
        COMPLAINTS_STATE_DIR=str(tmp_path),
        COMPLAINTS_HTTP_PORT=str(port),
        COMPLAINTS_DATABASE_URL=database,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    proc = await _complaints_up(env, "--demo")
    lines: list[str] = []
    try:

        async def read_until(marker: str, count: int = 1) -> None:
            while sum(marker in line for line in lines) < count:
                raw = await proc.stdout.readline()
                assert raw, "complaints up ended early:\n" + "".join(lines)
                lines.append(raw.decode())

        await asyncio.wait_for(read_until("complaints is up"), 90)
        await asyncio.wait_for(read_until("notification.sent", 2), 90)
        # the first complaint's own events are printed too (the traffic waits for the printer)
        posted = next(line for line in lines if "POST /v1/complaints" in line)
        accepted = re.search(r" 202 ([0-9a-f-]{36})$", posted.rstrip())
        assert accepted, posted  # the demo's first complaint was accepted
        first = accepted.group(1)
        received = f"event {'complaint.received':<24} {first[:8]}"  # as the printer writes it
        await asyncio.wait_for(read_until(received), 30)
        # the simulated staff take cases to an outcome
        await asyncio.wait_for(read_until("staff  resolved"), 90)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert any("tansu" in " ".join(c.cmdline()) for c in children)

        async def traces_cover_all_services() -> bool:
            while True:
                by_trace: dict[str, set[str]] = {}
                for service, trace_id, _ in list(receiver.spans):
                    by_trace.setdefault(trace_id, set()).add(service)
                wanted = {"complaints-intake", "complaints-resolution", "complaints-notify"}
                if any(wanted <= services for services in by_trace.values()):
                    return True
                await asyncio.sleep(0.2)

        await asyncio.wait_for(traces_cover_all_services(), 30)

        proc.send_signal(signal.SIGINT)
        rest, _ = await asyncio.wait_for(proc.communicate(), 40)
        output = "".join(lines) + rest.decode()
        assert proc.returncode in (0, 130), output
        assert f"http://127.0.0.1:{port}" in output
        assert "key web" in output and "key phone" in output
        assert "complaint.received" in output and "complaint.routed" in output
        assert "stopped" in output
        for child in children:
            assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.returncode is None:  # a failed check: nothing of it may outlive the test
            left = psutil.Process(proc.pid).children(recursive=True)
            proc.kill()
            await proc.wait()
            for child in left:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        receiver.close()
        await devinfra.drop_database(ADMIN_DSN, name)


def _orphan_brokers() -> set[int]:
    """The tansu processes whose parent is gone (adopted by init)."""
    found = set()
    for process in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if process.info["ppid"] == 1 and "tansu" in " ".join(process.info["cmdline"] or ()):
            found.add(process.info["pid"])
    return found


async def test_up_with_a_missing_database_says_so_and_leaves_nothing_running(tmp_path):
    before = _orphan_brokers()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPLAINTS_", "OTEL_"))}
    missing = f"complaints_missing_{uuid.uuid4().hex[:8]}"
    env.update(
        COMPLAINTS_STATE_DIR=str(tmp_path),
        COMPLAINTS_HTTP_PORT=str(devinfra.free_port()),
        COMPLAINTS_DATABASE_URL=ADMIN_DSN.rsplit("/", 1)[0] + f"/{missing}",
    )
    proc = await _complaints_up(env)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = " ".join(out.decode().split())  # the console wraps long lines
    assert proc.returncode == 1, text
    assert f'database "{missing}" does not exist' in text and "COMPLAINTS_DATABASE_URL" in text
    assert "Traceback" not in text
    await asyncio.sleep(0.5)
    assert _orphan_brokers() <= before  # the broker it started was stopped
