"""Idempotency as Stripe does it: a key remembers the first response of the request that
used it (status and body) for 24 hours; the same key with other parameters is refused, and a
second request while the first is still running gets a 409."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

KEY_LIFETIME = 24 * 3600


@dataclass
class Saved:
    fingerprint: str
    created: int
    request_id: str
    status: int | None = None  # None while the first request is still running
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def fingerprint(method: str, path: str, body: str) -> str:
    """What "the same request" means: method, path and the parameters, in any order."""
    pairs = "&".join(sorted(body.split("&"))) if body else ""
    return hashlib.sha256(f"{method} {path}\n{pairs}".encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._saved: dict[str, Saved] = {}

    def begin(self, key: str, fp: str, request_id: str) -> Saved | None:
        """Reserves `key` for this request, or returns what the key already holds (a finished
        or running request). Expired keys are forgotten first."""
        now = self._clock()
        with self._lock:
            saved = self._saved.get(key)
            if saved is not None and now - saved.created >= KEY_LIFETIME:
                del self._saved[key]
                saved = None
            if saved is not None:
                return saved
            self._saved[key] = Saved(fingerprint=fp, created=now, request_id=request_id)
            return None

    def finish(self, key: str, status: int, body: bytes, headers: dict[str, str]) -> None:
        with self._lock:
            saved = self._saved.get(key)
            if saved is not None:
                saved.status = status
                saved.body = body
                saved.headers = headers

    def release(self, key: str) -> None:
        """Forgets a key whose request never reached the endpoint (nothing is saved then)."""
        with self._lock:
            saved = self._saved.get(key)
            if saved is not None and saved.status is None:
                del self._saved[key]

    def in_progress(self, key: str) -> bool:
        """True while the first request with `key` is still running."""
        with self._lock:
            saved = self._saved.get(key)
            return saved is not None and saved.status is None

    def __len__(self) -> int:
        return len(self._saved)
