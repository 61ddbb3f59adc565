"""The org's daily API budget, as Salesforce reports it in `Sforce-Limit-Info`.

Every REST response says `api-usage=used/limit`. When the remaining share falls under the
reserve, or Salesforce answered REQUEST_LIMIT_EXCEEDED, calls are refused locally with
`RateLimitedError` (a transient error: deals wait and retry) until a probe interval has passed,
so sf-bridge never spends the last of an org's budget that other integrations also need.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sf_bridge.errors import RateLimitedError
from sf_bridge.logging import get_logger

log = get_logger(__name__)

USAGE_PATTERN = re.compile(r"(?:^|[^-])api-usage=(\d+)/(\d+)")


def parse_limit_info(header: str | None) -> tuple[int, int] | None:
    """`api-usage=18/5000` -> (18, 5000); None when absent or unreadable."""
    if not header:
        return None
    match = USAGE_PATTERN.search(header)
    if not match:
        return None
    used, total = int(match.group(1)), int(match.group(2))
    return (used, total) if total > 0 else None


@dataclass
class ApiBudget:
    """Decides whether a REST call may go out now. Thread-safe."""

    reserve_fraction: float = 0.05  # keep this share of the daily limit untouched
    probe_interval: float = 60.0  # seconds between probes while the budget is low
    exceeded_backoff: float = 300.0  # seconds to wait after REQUEST_LIMIT_EXCEEDED
    clock: Callable[[], float] = time.monotonic
    used: int | None = None
    total: int | None = None
    _blocked_until: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def remaining_fraction(self) -> float | None:
        if self.used is None or not self.total:
            return None
        return max(0.0, (self.total - self.used) / self.total)

    def before_call(self) -> None:
        """Raises RateLimitedError when calls are paused."""
        with self._lock:
            wait = self._blocked_until - self.clock()
            if wait > 0:
                raise RateLimitedError(
                    "The Salesforce API budget of the org is nearly spent; calls are paused.",
                    hint="the worker resumes on its own; raise the org's API limit or lower "
                    "other integrations' usage if this persists.",
                    retry_after=wait,
                )

    def record_header(self, header: str | None) -> None:
        parsed = parse_limit_info(header)
        if parsed is not None:
            self.record_usage(*parsed)

    def record_usage(self, used: int, total: int) -> None:
        if total <= 0:
            return
        with self._lock:
            self.used, self.total = used, total
            remaining = self.remaining_fraction
            if remaining is not None and remaining < self.reserve_fraction:
                if self._blocked_until <= self.clock():
                    log.warning(
                        "salesforce_api_budget_low",
                        used=self.used,
                        limit=self.total,
                        pause_seconds=self.probe_interval,
                    )
                self._blocked_until = self.clock() + self.probe_interval

    def record_limit_exceeded(self) -> RateLimitedError:
        with self._lock:
            self._blocked_until = self.clock() + self.exceeded_backoff
        log.warning("salesforce_request_limit_exceeded", pause_seconds=self.exceeded_backoff)
        return RateLimitedError(
            "Salesforce answered REQUEST_LIMIT_EXCEEDED: the org's daily API limit is spent.",
            hint="the worker resumes on its own once the limit resets or is raised.",
            retry_after=self.exceeded_backoff,
        )
