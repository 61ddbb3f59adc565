"""The HTTP side: a threaded server (one thread per connection, keep-alive), so latency is
slept per request without holding up others. API requests go to `pipeline.process`; the
hosted invoice page and PDF are served here too."""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from sf_bridge.logging import get_logger

from . import routes
from .errors import StripeApiError
from .hosted import invoice_page, invoice_pdf
from .pipeline import Answer, ApiRequest, Drop, dumps, process
from .stats import RequestRecord
from .store import API_VERSION

if TYPE_CHECKING:
    from .emulator import StripeEmulator

log = get_logger(__name__)


def request_id() -> str:
    return "req_" + secrets.token_hex(7)


class EmulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], emulator: StripeEmulator) -> None:
        self.emulator = emulator
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Answers go out in one segment; without this, delayed ACKs cost ~40 ms a request.
        with contextlib.suppress(OSError):
            request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            open_ = list(self.connections)
        for conn in open_:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer
    server_version = "nginx"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ------------------------------------------------------------------------ dispatch

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            # The client went away before its body arrived (e.g. it was killed between the
            # headers and the body): a server never acts on half a request.
            self.close_connection = True
            return
        body = raw.decode()
        url = urlsplit(self.path)
        if url.path.startswith("/i/"):
            self._hosted(method, url.path)
            return
        emu = self.server.emulator
        match = routes.match(method, url.path)
        req = ApiRequest(
            method=method,
            path=url.path,
            query=url.query,
            body=body,
            request_id=request_id(),
            route_name=match[0].name if match else f"{method} {url.path}",
            authorization=self.headers.get("Authorization"),
            idempotency_key=self.headers.get("Idempotency-Key") if method == "POST" else None,
        )
        answer: Answer | None
        try:
            answer = process(emu, req)
        except Drop:
            answer = None
        except Exception:  # a defect in the emulator: answer as Stripe does, keep serving
            log.exception("stripe_emulator.internal_error", route=req.route_name)
            answer = Answer(500, dumps(StripeApiError.api_error().body(req.request_id)))
        status = answer.status if answer else None
        replayed = answer.replayed if answer else False
        emu.stats.record(req.route_name, status, replayed=replayed)
        record = RequestRecord(
            req.request_id,
            method,
            req.route_name,
            self.path,
            status,
            req.idempotency_key,
            replayed,
            tuple(parse_qsl(body if method == "POST" else url.query, keep_blank_values=True)),
        )
        emu.record_request(record)
        if answer is None:
            self.close_connection = True
            return
        self._send(answer.status, answer.payload, {**answer.headers, "Request-Id": req.request_id})

    # ------------------------------------------------------------------------ responses

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Stripe-Version", self.headers.get("Stripe-Version") or API_VERSION)
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Cache-Control", "no-cache, no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self._write(payload)

    def _write(self, payload: bytes) -> None:
        """Ends the headers and writes them with the body in one write."""
        buffered: list[bytes] = getattr(self, "_headers_buffer", [])
        self._headers_buffer: list[bytes] = []
        self.wfile.write(b"".join(buffered) + b"\r\n" + payload)

    def _hosted(self, method: str, path: str) -> None:
        """The hosted invoice page and PDF a finalized invoice links to; `POST /i/<id>/pay`
        is the customer paying on that page."""
        emu = self.server.emulator
        parts = path.strip("/").split("/")
        invoice_id = parts[1] if len(parts) > 1 else ""
        with emu.store.lock:
            invoice = emu.store.objects["invoice"].get(invoice_id)
            invoice = dict(invoice) if invoice and invoice["status"] != "draft" else None
        if invoice is None:
            self._send_raw(404, "text/plain", b"Not found\n")
            return
        action = parts[2] if len(parts) > 2 else ""
        if action == "pdf" and method == "GET":
            self._send_raw(200, "application/pdf", invoice_pdf(invoice))
        elif action == "pay" and method == "POST":
            try:
                emu.pay_invoice(invoice_id)
            except StripeApiError as exc:
                self._send_raw(409, "text/plain", exc.message.encode())
                return
            self._send_raw(303, "text/plain", b"", {"Location": f"/i/{invoice_id}"})
        elif action == "" and method == "GET":
            self._send_raw(200, "text/html; charset=utf-8", invoice_page(invoice))
        else:
            self._send_raw(404, "text/plain", b"Not found\n")

    def _send_raw(
        self, status: int, content_type: str, payload: bytes, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self._write(payload)
