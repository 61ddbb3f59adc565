"""Local receivers for the alert channels: an HTTP server on loopback (Slack and the JSON
webhook) and an SMTP server (aiosmtpd), both recording exactly what they were sent."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_USER = "alerts@acme.example"
SMTP_PASSWORD = "smtp-Pa55-SECRET-7781"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class HttpReceiver:
    """Answers 200 `ok` (as Slack does) unless told to fail the next requests to a path."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    scripted: dict[str, list[tuple[int, dict[str, str], str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(
        self, path_prefix: str, status: int, body: str = "", headers: dict[str, str] | None = None
    ) -> None:
        with self.lock:
            self.scripted.setdefault(path_prefix, []).append((status, headers or {}, body))

    def to(self, path_prefix: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(path_prefix)]

    def answer(self, path: str) -> tuple[int, dict[str, str], str]:
        with self.lock:
            for prefix, queue in self.scripted.items():
                if path.startswith(prefix) and queue:
                    return queue.pop(0)
        return 200, {}, "ok"


@pytest.fixture
def http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            status, headers, body = receiver.answer(self.path)
            if status == 200:
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), json.loads(raw))
                    )
            payload = body.encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield receiver
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@dataclass
class SmtpReceiver:
    host: str
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)


class _Handler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.receiver = receiver

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.original_content, policy=policy.default)
        self.receiver.messages.append(message)  # type: ignore[arg-type]
        self.receiver.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_receiver() -> Iterator[SmtpReceiver]:
    """An SMTP server on loopback that takes a login (user and password above, no TLS)."""
    receiver = SmtpReceiver("127.0.0.1", _free_port())

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == SMTP_USER
            and data.password.decode() == SMTP_PASSWORD
        )
        if ok:
            receiver.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # aiosmtpd answers 535 on failure

    controller = Controller(
        _Handler(receiver),
        hostname=receiver.host,
        port=receiver.port,
        authenticator=authenticate,
        auth_require_tls=False,
    )
    controller.start()
    yield receiver
    controller.stop()
