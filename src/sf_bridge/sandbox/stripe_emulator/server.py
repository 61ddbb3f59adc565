"""The HTTP side: a threaded server (one thread per connection, keep-alive), so latency is
slept per request without holding up others. Each API request goes through: drop (before),
auth, rate limit, 500s, route, parameters, idempotency, the customer lock, latency, the
operation, drop (after)."""

from __future__ import annotations

import contextlib
import html
import json
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sf_bridge.logging import get_logger

from . import routes
from .errors import StripeApiError
from .idempotency import Saved, fingerprint
from .params import decode_form, parse_params
from .stats import RequestRecord
from .store import API_VERSION, RequestContext

if TYPE_CHECKING:
    from .emulator import StripeEmulator

log = get_logger(__name__)

MAX_IDEMPOTENCY_KEY = 255


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


class Drop(Exception):
    """Close the connection without answering."""


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
        body = self.rfile.read(length).decode() if length else ""
        url = urlsplit(self.path)
        if url.path.startswith("/i/"):
            self._hosted(method, url.path, body)
            return
        emu = self.server.emulator
        rid = request_id()
        match = routes.match(method, url.path)
        route_name = match[0].name if match else f"{method} {url.path}"
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        status: int | None
        try:
            status, payload, headers, replayed = self._api(
                method, url.path, url.query, body, rid, route_name
            )
        except Drop:
            status, replayed = None, False
        except Exception:  # a defect in the emulator: answer as Stripe does, keep serving
            log.exception("stripe_emulator.internal_error", route=route_name, request_id=rid)
            error = StripeApiError.api_error()
            status, payload, headers, replayed = 500, _dumps(error.body(rid)), {}, False
        emu.stats.record(route_name, status, replayed=replayed)
        emu.record_request(RequestRecord(rid, method, route_name, self.path, status, key, replayed))
        if status is None:
            self.close_connection = True
            return
        self._send(status, payload, {**headers, "Request-Id": rid})

    def _api(
        self, method: str, path: str, query: str, body: str, rid: str, route_name: str
    ) -> tuple[int, bytes, dict[str, str], bool]:
        emu = self.server.emulator
        injector = emu.injector
        scripted = injector.take_scripted(route_name)
        drop = injector.drop_phase()
        if scripted in ("drop_before", "drop_after"):
            drop = "before" if scripted == "drop_before" else "after"
        if drop == "before":
            injector.wait_latency()
            raise Drop
        slept = False
        headers: dict[str, str] = {}
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        if key:
            headers["Idempotency-Key"] = key
        reserved = False
        try:
            self._authenticate()
            if scripted == "rate_limit" or not injector.admit():
                raise StripeApiError.rate_limited()
            if scripted == "error" or injector.should_fail():
                raise StripeApiError.api_error()
            found = routes.match(method, path)
            if found is None:
                raise StripeApiError.unrecognized_url(method, path)
            route, args = found
            params = parse_params(route.params, decode_form(body if method == "POST" else query))
            if key and len(key) > MAX_IDEMPOTENCY_KEY:
                raise StripeApiError.invalid_request(
                    f"Invalid Idempotency-Key: must be at most {MAX_IDEMPOTENCY_KEY} characters",
                )
            if key:
                saved = emu.idempotency.begin(key, fingerprint(method, path, body), rid)
                if saved is not None:
                    try:
                        replay = self._replay(saved, key, method, path, body)
                    finally:
                        injector.wait_latency()
                        slept = True
                    return (*replay, True)
                reserved = True
            with emu.store.lock:
                customer = route.lock_key(emu.store, args, params) if route.lock_key else None
            with injector.writing(customer) as granted:
                injector.wait_latency()
                slept = True
                if not granted or scripted == "lock_timeout":
                    emu.stats.record_lock_timeout()
                    raise StripeApiError.lock_timeout()
                ctx = RequestContext(rid, key)
                try:
                    with emu.store.lock:
                        result = route.handler(emu.store, args, params, ctx)
                        payload = _dumps(result)
                    status = 200
                except StripeApiError as exc:
                    status, payload = exc.status, _dumps(exc.body(rid))
                    headers.update(exc.headers)
                if scripted == "error_after":
                    status, payload = 500, _dumps(StripeApiError.api_error().body(rid))
            if reserved and key:
                emu.idempotency.finish(key, status, payload, dict(headers))
                reserved = False
            if drop == "after":
                raise Drop
            return status, payload, headers, False
        except StripeApiError as exc:
            if not slept:
                injector.wait_latency()
            headers.update(exc.headers)
            return exc.status, _dumps(exc.body(rid)), headers, False
        finally:
            if reserved and key:
                emu.idempotency.release(key)

    def _replay(
        self, saved: Saved, key: str, method: str, path: str, body: str
    ) -> tuple[int, bytes, dict[str, str]]:
        if saved.fingerprint != fingerprint(method, path, body):
            raise StripeApiError.idempotency_mismatch(key)
        if saved.status is None:
            raise StripeApiError.idempotency_in_progress(key)
        return (
            saved.status,
            saved.body,
            {
                **saved.headers,
                "Idempotent-Replayed": "true",
                "Original-Request": saved.request_id,
            },
        )

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization") or ""
        scheme, _, key = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not key.strip():
            raise StripeApiError.no_api_key()
        if not secrets.compare_digest(key.strip(), self.server.emulator.api_key):
            raise StripeApiError.bad_api_key(key.strip())

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

    def _hosted(self, method: str, path: str, body: str) -> None:
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


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _money(amount: int, currency: str) -> str:
    return f"{amount / 100:,.2f} {currency.upper()}"


def invoice_page(invoice: dict[str, Any]) -> bytes:
    rows = "".join(
        f"<tr><td>{html.escape(line['description'] or '')}</td>"
        f"<td>{_money(line['amount'], line['currency'])}</td></tr>"
        for line in invoice["lines"]["data"]
    )
    pay = (
        f'<form method="post" action="/i/{invoice["id"]}/pay"><button>Pay</button></form>'
        if invoice["status"] == "open"
        else ""
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Invoice {html.escape(invoice['number'] or invoice['id'])}</title></head><body>"
        f"<h1>Invoice {html.escape(invoice['number'] or invoice['id'])}</h1>"
        f"<p>Status: <strong>{invoice['status']}</strong></p>"
        f"<p>Amount due: {_money(invoice['amount_remaining'], invoice['currency'])}</p>"
        f"<table>{rows}</table>{pay}</body></html>"
    )
    return page.encode()


def invoice_pdf(invoice: dict[str, Any]) -> bytes:
    """A one-page PDF naming the invoice, its status and amount."""
    text = (
        f"Invoice {invoice['number'] or invoice['id']} - {invoice['status']} - "
        f"{_money(invoice['amount_due'], invoice['currency'])}"
    )
    safe = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 14 Tf 72 720 Td ({safe}) Tj ET".encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)
