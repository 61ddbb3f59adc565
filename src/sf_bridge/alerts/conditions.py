"""Which deals and streams are in an alerting state, read from the database.

Used by the alert pass (which deals need a notice) and by /metrics (the same conditions as
gauges, for Prometheus rules), so both agree on what "parked", "retrying since" and "stream
connected" mean.

- Parked: status `needs_attention`; its reason is the failed step and the error code.
- Retrying since: the start of the deal's current run of failures, that is the latest first
  attempt (`attempt = 1`) at the step it is retrying (attempt numbers restart at 1 when a step
  succeeds or a deal is replayed); a deal with no such attempt counts from its last update.
- Stream connected: the stream holder's status row says `connected` and is fresh (refreshed
  every SF_BRIDGE_STREAM_STATUS_INTERVAL; older than `STREAM_STATUS_STALE_SECONDS` means no
  worker holds the stream).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists, func, literal, select
from sqlalchemy.orm import Session

from sf_bridge.db.models import (
    NEEDS_ATTENTION,
    RETRYING,
    AlertNotice,
    Deal,
    StepAttempt,
    StreamCheckpoint,
)
from sf_bridge.intake.status import HEALTHY_STATE, status_key

STREAM_STATUS_PREFIX = status_key("")
# As /readyz: the holder refreshes its row every 15 s by default; two minutes without a
# refresh means no worker holds the stream.
STREAM_STATUS_STALE_SECONDS = 120.0


def _parked_reason_sql() -> Any:
    return (
        literal("needs_attention:")
        + func.coalesce(Deal.current_step, "unknown")
        + literal(":")
        + func.coalesce(Deal.last_error_code, "unknown")
    )


def _retrying_reason_sql() -> Any:
    return literal("retrying:") + func.coalesce(Deal.current_step, "unknown")


def _notified(reason: Any) -> Any:
    return exists().where(AlertNotice.deal_id == Deal.id, AlertNotice.reason == reason)


def parked_without_notice(session: Session, limit: int) -> list[Deal]:
    """Parked deals not yet notified for their current reason, oldest first."""
    query = (
        select(Deal)
        .where(Deal.status == NEEDS_ATTENTION, ~_notified(_parked_reason_sql()))
        .order_by(Deal.id)
        .limit(limit)
    )
    return list(session.execute(query).scalars())


def _retrying_since_sql() -> Any:
    first = (
        select(StepAttempt.deal_id.label("deal_id"), func.max(StepAttempt.started_at).label("at"))
        .join(Deal, Deal.id == StepAttempt.deal_id)
        .where(
            Deal.status == RETRYING,
            StepAttempt.step == Deal.current_step,
            StepAttempt.attempt == 1,
        )
        .group_by(StepAttempt.deal_id)
        .subquery()
    )
    return first, func.coalesce(first.c.at, Deal.updated_at)


def retrying_past(session: Session, cutoff: datetime, limit: int) -> list[tuple[Deal, datetime]]:
    """Deals retrying since before `cutoff` and not yet notified for that step."""
    first, since = _retrying_since_sql()
    query = (
        select(Deal, since)
        .outerjoin(first, first.c.deal_id == Deal.id)
        .where(Deal.status == RETRYING, since <= cutoff, ~_notified(_retrying_reason_sql()))
        .order_by(Deal.id)
        .limit(limit)
    )
    return [(deal, at) for deal, at in session.execute(query).all()]


def oldest_retrying_since(session: Session) -> datetime | None:
    first, since = _retrying_since_sql()
    query = (
        select(func.min(since))
        .select_from(Deal)
        .outerjoin(first, first.c.deal_id == Deal.id)
        .where(Deal.status == RETRYING)
    )
    return session.execute(query).scalar()


def parked_by_code(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Deal.last_error_code, func.count())
        .where(Deal.status == NEEDS_ATTENTION)
        .group_by(Deal.last_error_code)
    ).all()
    counts: dict[str, int] = {}
    for code, count in rows:
        counts[code or "unknown"] = counts.get(code or "unknown", 0) + int(count)
    return counts


@dataclass(frozen=True)
class StreamReport:
    """What the database says about one channel's stream."""

    channel: str
    state: str  # the holder's state word, "stale" when nobody refreshes it, "unknown" if none
    detail: str
    updated_at: datetime | None

    def age_seconds(self, now: datetime) -> float | None:
        return None if self.updated_at is None else (now - self.updated_at).total_seconds()

    def connected(self, now: datetime) -> bool:
        age = self.age_seconds(now)
        fresh = age is not None and age <= STREAM_STATUS_STALE_SECONDS
        return self.state == HEALTHY_STATE and fresh


def _report(channel: str, value: str, updated_at: datetime, now: datetime) -> StreamReport:
    state, _, detail = value.partition(":")
    report = StreamReport(channel, state.strip(), detail.strip(), updated_at)
    age = report.age_seconds(now)
    if age is not None and age > STREAM_STATUS_STALE_SECONDS:
        minutes = int(age // 60)
        return StreamReport(
            channel,
            "stale",
            f"no worker has reported the stream for {minutes} min (last: {value})",
            updated_at,
        )
    return report


def stream_report(session: Session, channel: str, now: datetime) -> StreamReport:
    row = session.get(StreamCheckpoint, STREAM_STATUS_PREFIX + channel)
    if row is None:
        return StreamReport(channel, "unknown", "no worker has reported the stream yet", None)
    return _report(channel, row.value, row.updated_at, now)


def stream_reports(session: Session, now: datetime) -> list[StreamReport]:
    rows = session.scalars(
        select(StreamCheckpoint).where(
            StreamCheckpoint.name.startswith(STREAM_STATUS_PREFIX, autoescape=True)
        )
    ).all()
    return [
        _report(row.name[len(STREAM_STATUS_PREFIX) :], row.value, row.updated_at, now)
        for row in rows
    ]
