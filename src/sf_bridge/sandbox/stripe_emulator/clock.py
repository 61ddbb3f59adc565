"""The emulator's clock: the wall clock (or a given one) plus an offset tests can advance."""

from __future__ import annotations

import calendar
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

SECONDS_PER_DAY = 86_400


class Clock:
    """Unix seconds as the emulator sees them; `advance` moves them forward."""

    def __init__(self, now: Callable[[], float] | None = None) -> None:
        self._source = now or time.time
        self._offset = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return int(self._source() + self._offset)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds


def add_interval(start: int, interval: str, count: int = 1) -> int:
    """`start` moved by `count` intervals (day, week, month, year), months clamped as Stripe
    does (31 Jan + 1 month = 28/29 Feb)."""
    if interval == "day":
        return start + count * SECONDS_PER_DAY
    if interval == "week":
        return start + count * 7 * SECONDS_PER_DAY
    months = count * (12 if interval == "year" else 1)
    moment = datetime.fromtimestamp(start, tz=UTC)
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())
