"""Switchable faults: latency, a request-rate limit (429), a share of 500s, dropped
connections and `lock_timeout` on concurrent writes to one customer.

`Faults` is plain, mutable configuration; `FaultInjector` draws the dice (seeded when
`seed` is set) and keeps the rate-limit bucket and the set of customers being written."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

DropPhase = Literal["before", "after", "either"]
# Scripted one-off faults for one route:
#   "error"        500 before the endpoint runs (nothing saved under the idempotency key)
#   "error_after"  the endpoint runs, then 500; saved and replayed under its key, as Stripe does
#   "drop_before"  connection closed before the endpoint runs
#   "drop_after"   the endpoint runs, the connection is closed without the answer
#   "rate_limit"   429 rate_limit
#   "lock_timeout" 429 lock_timeout
FaultKind = Literal[
    "error", "error_after", "drop_before", "drop_after", "rate_limit", "lock_timeout"
]


@dataclass
class Faults:
    """What the emulator does wrong, on purpose. Change fields at any time, even mid-test."""

    latency_ms: float = 0
    rate_limit_per_second: float | None = None
    error_rate: float = 0.0  # share of requests answered 500 (before the endpoint runs)
    drop_rate: float = 0.0  # share of connections closed without an answer
    lock_timeout: bool = False  # 429 lock_timeout when two writes hit one customer at once
    seed: int | None = None
    # "before": the request is lost unprocessed; "after": processed, the answer lost;
    # "either": each drop picks one at random.
    drop_phase: DropPhase = "either"
    # Search is eventually consistent: writes become searchable this many seconds later
    # (Stripe: under a minute normally). Lists and retrieves are always current.
    search_lag_seconds: float = 0.0


class FaultInjector:
    def __init__(self, faults: Faults) -> None:
        self._lock = threading.Lock()
        self._writing: dict[str, int] = {}
        self._scripted: list[list[Any]] = []  # [route, kind, times left]
        self.configure(faults)

    def configure(self, faults: Faults) -> None:
        """Takes new fault settings: the dice are reseeded, the rate bucket starts full."""
        with self._lock:
            self.faults = faults
            self._seed = faults.seed
            self._random = random.Random(faults.seed)
            self._tokens = 0.0
            self._rate: float | None = None
            self._refilled = time.monotonic()

    def fail_next(self, route: str, kind: FaultKind, times: int = 1) -> None:
        with self._lock:
            self._scripted.append([route, kind, times])

    def take_scripted(self, route: str) -> FaultKind | None:
        """The scripted fault for this request of `route`, if one is pending."""
        with self._lock:
            for entry in self._scripted:
                if entry[0] == route and entry[2] > 0:
                    entry[2] -= 1
                    kind: FaultKind = entry[1]
                    self._scripted = [e for e in self._scripted if e[2] > 0]
                    return kind
        return None

    def _roll(self, share: float) -> bool:
        if share <= 0:
            return False
        with self._lock:
            if self.faults.seed != self._seed:  # reseeded mid-run
                self._seed = self.faults.seed
                self._random = random.Random(self._seed)
            return self._random.random() < share

    def should_fail(self) -> bool:
        return self._roll(self.faults.error_rate)

    def drop_phase(self) -> Literal["before", "after"] | None:
        if not self._roll(self.faults.drop_rate):
            return None
        phase = self.faults.drop_phase
        if phase == "either":
            with self._lock:
                return "before" if self._random.random() < 0.5 else "after"
        return phase

    def admit(self) -> bool:
        """Token bucket of `rate_limit_per_second` tokens a second (burst of one second)."""
        rate = self.faults.rate_limit_per_second
        if rate is None:
            return True
        with self._lock:
            now = time.monotonic()
            if rate != self._rate:
                self._rate = rate
                self._tokens = max(1.0, rate)
                self._refilled = now
            self._tokens = min(max(1.0, rate), self._tokens + (now - self._refilled) * rate)
            self._refilled = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def latency_seconds(self) -> float:
        return max(0.0, self.faults.latency_ms) / 1000.0

    def wait_latency(self) -> None:
        """Sleeps the configured latency in the calling request's thread (a zero sleep is
        skipped: it would still give up the GIL)."""
        seconds = self.latency_seconds()
        if seconds > 0:
            time.sleep(seconds)

    def writes_in_flight(self, customer_id: str) -> int:
        with self._lock:
            return self._writing.get(customer_id, 0)

    @contextmanager
    def writing(self, customer_id: str | None) -> Iterator[bool]:
        """Marks a write to `customer_id` in flight; yields False when `lock_timeout` is on and
        another write to the same customer is already in flight."""
        if customer_id is None:
            yield True
            return
        with self._lock:
            busy = self._writing.get(customer_id, 0) > 0
            self._writing[customer_id] = self._writing.get(customer_id, 0) + 1
        try:
            yield not (busy and self.faults.lock_timeout)
        finally:
            with self._lock:
                self._writing[customer_id] -= 1
                if not self._writing[customer_id]:
                    del self._writing[customer_id]
