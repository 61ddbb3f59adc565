"""Webhook delivery: each event goes to every endpoint that wants it, signed with
`Stripe-Signature: t=...,v1=...` as `stripe.Webhook.construct_event` verifies, from one
background thread, retried with backoff until a 2xx or the attempts run out."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sf_bridge.logging import get_logger

log = get_logger(__name__)

DEFAULT_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header value for `payload`."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@dataclass(frozen=True)
class WebhookEndpoint:
    url: str
    secret: str
    enabled_events: tuple[str, ...] = ("*",)
    id: str | None = None

    def wants(self, event_type: str) -> bool:
        return any(
            e == "*" or e == event_type or (e.endswith(".*") and event_type.startswith(e[:-1]))
            for e in self.enabled_events
        )


@dataclass(frozen=True)
class DeliveryAttempt:
    event_id: str
    event_type: str
    url: str
    attempt: int
    status: int | None  # None: connection failed
    error: str | None = None


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    endpoint: WebhookEndpoint = field(compare=False)
    event: dict[str, Any] = field(compare=False)
    attempt: int = field(default=1, compare=False)


class WebhookDispatcher:
    def __init__(
        self,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        timeout: float = 5.0,
        on_delivered: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.retry_delays = retry_delays
        self.timeout = timeout
        self.attempts: list[DeliveryAttempt] = []
        self._on_delivered = on_delivered
        self._queue: list[_Pending] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = 0
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------------- wiring

    def publish(self, event: dict[str, Any], targets: list[WebhookEndpoint]) -> int:
        """Queues `event` for each of `targets`; returns how many will receive it."""
        with self._cond:
            for endpoint in targets:
                heapq.heappush(
                    self._queue, _Pending(time.monotonic(), next(self._seq), endpoint, event)
                )
            if targets:
                self._ensure_thread()
                self._cond.notify()
            return len(targets)

    def _ensure_thread(self) -> None:
        if self._thread is None and not self._stopping:
            self._thread = threading.Thread(
                target=self._run, name="stripe-emulator-webhooks", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Waits until nothing is queued for now or in flight (retries later may remain)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or (self._queue and self._queue[0].due <= time.monotonic()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # -------------------------------------------------------------------- the loop

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._queue and self._queue[0].due <= time.monotonic():
                        break
                    wait = self._queue[0].due - time.monotonic() if self._queue else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                pending = heapq.heappop(self._queue)
                self._busy += 1
            try:
                self._deliver(pending)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _deliver(self, pending: _Pending) -> None:
        event, endpoint = pending.event, pending.endpoint
        payload = json.dumps(event, indent=2).encode()
        status: int | None = None
        error: str | None = None
        try:
            status = _post(endpoint.url, payload, sign(payload, endpoint.secret, int(time.time())),
                           self.timeout)  # fmt: skip
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.attempts.append(
            DeliveryAttempt(
                event["id"], event["type"], endpoint.url, pending.attempt, status, error
            )
        )
        if status is not None and 200 <= status < 300:
            if self._on_delivered is not None:
                self._on_delivered(event)
            return
        log.info(
            "stripe_emulator.webhook_failed",
            event_id=event["id"],
            url=endpoint.url,
            attempt=pending.attempt,
            status=status,
            error=error,
        )
        if pending.attempt > len(self.retry_delays):
            return
        delay = self.retry_delays[pending.attempt - 1]
        with self._cond:
            heapq.heappush(
                self._queue,
                _Pending(
                    time.monotonic() + delay,
                    next(self._seq),
                    endpoint,
                    event,
                    pending.attempt + 1,
                ),
            )
            self._cond.notify()


def _post(url: str, payload: bytes, signature: str, timeout: float) -> int:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request(
            "POST",
            path,
            body=payload,
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": signature,
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            },
        )
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()
