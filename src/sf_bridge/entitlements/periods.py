"""Calendar periods of metered features: usage counts reset at each period's start (UTC)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

PeriodName = Literal["day", "month", "year"]


@dataclass(frozen=True)
class Period:
    name: PeriodName
    key: str  # "2026-11-25", "2026-11" or "2026"
    start: datetime
    end: datetime  # exclusive


def period_name(unit: str | None) -> PeriodName:
    """The period a limit's unit names ("calls/month", "per day", "rows/year"); month otherwise."""
    text = (unit or "").lower()
    names: tuple[PeriodName, ...] = ("day", "year")
    for name in names:
        if text.endswith(name) or f"/{name}" in text or f"per {name}" in text:
            return name
    if "daily" in text:
        return "day"
    if "yearly" in text or "annual" in text:
        return "year"
    return "month"


def period_of(unit: str | None, at: datetime) -> Period:
    """The calendar period (UTC) that contains `at` for a limit with this unit."""
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    name = period_name(unit)
    if name == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        return Period(name, start.strftime("%Y-%m-%d"), start, start + timedelta(days=1))
    if name == "year":
        start = at.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        return Period(name, f"{start.year:04d}", start, start.replace(year=start.year + 1))
    start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return Period(name, start.strftime("%Y-%m"), start, end)
