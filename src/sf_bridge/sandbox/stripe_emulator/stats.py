"""Request counters: what a test or a benchmark asks the emulator afterwards."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestRecord:
    """One API request as the emulator saw it (status None: dropped without an answer).

    `form` holds its parameters as sent, in order: the form-encoded body of a POST, the query
    string of a GET or DELETE, one `(name, value)` pair each with the SDK's bracketed names
    (`items[0][price]`, `phases[1][items][0][quantity]`). The API key travels in a header and
    is never part of it."""

    request_id: str
    method: str
    route: str  # "POST /v1/subscriptions", "GET /v1/customers/{id}"
    path: str  # as requested, with its query string
    status: int | None
    idempotency_key: str | None
    replayed: bool
    form: tuple[tuple[str, str], ...] = ()

    @property
    def params(self) -> dict[str, str]:
        """The parameters by name (a name sent twice keeps its last value)."""
        return dict(self.form)

    def param(self, name: str) -> str | None:
        """The value sent for `name` (`proration_behavior`, `discounts[0][coupon]`), or None."""
        return self.params.get(name)

    def indices(self, name: str) -> int:
        """How many entries the list parameter `name` has (`phases`, `items`): the distinct
        indices sent as `name[<n>]...`."""
        prefix = f"{name}["
        found = {k[len(prefix) :].split("]", 1)[0] for k, _ in self.form if k.startswith(prefix)}
        return len(found)


@dataclass(frozen=True)
class StatsSnapshot:
    total: int
    by_route: dict[str, int]
    by_status: dict[int, int]
    rate_limited: int  # 429s sent (rate limit and lock_timeout)
    lock_timeouts: int
    server_errors: int  # 500s sent
    dropped: int  # connections closed without an answer
    replayed: int  # idempotent replays


@dataclass
class Stats:
    """Thread-safe counters. Routes are keyed "METHOD /v1/path/{id}"."""

    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _routes: Counter[str] = field(default_factory=Counter)
    _statuses: Counter[int] = field(default_factory=Counter)
    _dropped: int = 0
    _replayed: int = 0
    _lock_timeouts: int = 0

    def record(self, route: str, status: int | None, *, replayed: bool = False) -> None:
        with self._lock:
            self._routes[route] += 1
            if status is None:
                self._dropped += 1
            else:
                self._statuses[status] += 1
            if replayed:
                self._replayed += 1

    def record_lock_timeout(self) -> None:
        with self._lock:
            self._lock_timeouts += 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                total=sum(self._routes.values()),
                by_route=dict(self._routes),
                by_status=dict(self._statuses),
                rate_limited=self._statuses[429],
                lock_timeouts=self._lock_timeouts,
                server_errors=self._statuses[500],
                dropped=self._dropped,
                replayed=self._replayed,
            )

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self._statuses.clear()
            self._dropped = self._replayed = self._lock_timeouts = 0

    # Convenience read-outs.
    @property
    def total(self) -> int:
        return self.snapshot().total

    @property
    def rate_limited(self) -> int:
        return self.snapshot().rate_limited

    @property
    def server_errors(self) -> int:
        return self.snapshot().server_errors

    @property
    def dropped(self) -> int:
        return self.snapshot().dropped

    @property
    def by_route(self) -> dict[str, int]:
        return self.snapshot().by_route

    def count(self, route: str) -> int:
        with self._lock:
            return self._routes[route]
