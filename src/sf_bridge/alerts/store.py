"""Notices and their deliveries in the database.

A notice is inserted, with one pending delivery per configured channel, in one transaction
and only if no notice has its (subject, reason) yet: whichever replica inserts it first owns
it, and a restart finds it there. Deliveries are then claimed with a lease (a conditional
UPDATE that only one replica wins), sent outside any transaction, and marked sent, or
rescheduled with backoff, or failed after the last attempt.

So each channel gets each notice at least once; twice only if a process dies (or a send
outlasts its lease) after the receiver took it and before "sent" is committed. Receivers
can drop such a repeat by the notice id (`Idempotency-Key` header, JSON `id`, Message-ID).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.alerts.notice import NoticeDraft
from sf_bridge.db.dialect import upsert
from sf_bridge.db.models import AlertDelivery, AlertNotice, StreamCheckpoint

PENDING, SENT, FAILED = "pending", "sent", "failed"


def record_notice(
    session: Session, draft: NoticeDraft, channels: list[str], now: datetime
) -> int | None:
    """Inserts the notice and its deliveries unless one with its key exists; returns its id
    when this call inserted it. Does not commit."""
    stmt = (
        upsert(session, AlertNotice)
        .values(
            subject=draft.subject,
            reason=draft.reason,
            kind=draft.kind,
            deal_id=draft.deal_id,
            content=draft.content,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["subject", "reason"])
        .returning(AlertNotice.id)
    )
    notice_id = session.execute(stmt).scalar()
    if notice_id is None:
        return None
    session.execute(
        insert(AlertDelivery),
        [
            {
                "notice_id": notice_id,
                "channel": channel,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for channel in channels
        ],
    )
    return int(notice_id)


def notice_exists(session: Session, subject: str, reason: str) -> bool:
    found = session.scalar(
        select(AlertNotice.id).where(AlertNotice.subject == subject, AlertNotice.reason == reason)
    )
    return found is not None


@dataclass(frozen=True)
class ClaimedDelivery:
    id: int
    notice_id: int
    channel: str
    attempt: int  # the number of this attempt (1 for the first)
    content: dict[str, Any]


def claim_due(
    session_factory: sessionmaker[Session],
    channels: list[str],
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[ClaimedDelivery]:
    """Takes up to `limit` due deliveries of these channels for `lease`, each claim
    committed; skips those another replica takes meanwhile."""
    free = or_(AlertDelivery.locked_until.is_(None), AlertDelivery.locked_until < now)
    due = (
        AlertDelivery.status == PENDING,
        AlertDelivery.next_attempt_at <= now,
        AlertDelivery.channel.in_(channels),
        free,
    )
    with session_factory() as session:
        ids = list(
            session.scalars(
                select(AlertDelivery.id).where(*due).order_by(AlertDelivery.id).limit(limit * 10)
            )
        )
    claimed: list[ClaimedDelivery] = []
    for delivery_id in ids:
        if len(claimed) >= limit:
            break
        with session_factory() as session, session.begin():
            result: Any = session.execute(
                update(AlertDelivery)
                .where(AlertDelivery.id == delivery_id, *due)
                .values(locked_until=now + lease)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # another replica took it
                continue
            row = session.execute(
                select(
                    AlertDelivery.notice_id,
                    AlertDelivery.channel,
                    AlertDelivery.attempts,
                    AlertNotice.content,
                )
                .join(AlertNotice, AlertNotice.id == AlertDelivery.notice_id)
                .where(AlertDelivery.id == delivery_id)
            ).one()
        claimed.append(ClaimedDelivery(delivery_id, row[0], row[1], int(row[2]) + 1, row[3]))
    return claimed


def mark_sent(session: Session, delivery: ClaimedDelivery, now: datetime) -> None:
    """Does not commit."""
    session.execute(
        update(AlertDelivery)
        .where(AlertDelivery.id == delivery.id)
        .values(
            status=SENT,
            attempts=delivery.attempt,
            sent_at=now,
            locked_until=None,
            last_error=None,
        )
        .execution_options(synchronize_session=False)
    )


@dataclass(frozen=True)
class Backoff:
    """Waits after a failed delivery: base * 2**(n-1), capped, randomised down by 20 %."""

    base_seconds: float = 30.0
    max_seconds: float = 3600.0
    max_attempts: int = 10

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        delay = min(self.max_seconds, self.base_seconds * 2 ** max(0, attempt - 1))
        delay *= random.uniform(0.8, 1.0)
        return max(delay, retry_after or 0.0)


def mark_failed(
    session: Session,
    delivery: ClaimedDelivery,
    reason: str,
    now: datetime,
    backoff: Backoff,
    retry_after: float | None,
) -> float | None:
    """Records a failed attempt; returns the seconds until the next one (None: given up).
    Does not commit."""
    give_up = delivery.attempt >= backoff.max_attempts
    delay = None if give_up else backoff.delay(delivery.attempt, retry_after)
    values: dict[str, Any] = {
        "attempts": delivery.attempt,
        "locked_until": None,
        "last_error": reason,
    }
    if delay is None:
        values["status"] = FAILED
    else:
        values["next_attempt_at"] = now + timedelta(seconds=delay)
    session.execute(
        update(AlertDelivery)
        .where(AlertDelivery.id == delivery.id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return delay


# The start of a stream outage, as first seen by any replica's alert pass.
def stream_down_key(channel: str) -> str:
    return f"alert:stream_down_since:{channel}"


def note_stream_down(session: Session, channel: str, now: datetime) -> datetime:
    """The start of the current outage: `now` unless a replica noted an earlier one.
    Does not commit."""
    key = stream_down_key(channel)
    session.execute(
        upsert(session, StreamCheckpoint)
        .values(name=key, value=now.isoformat(timespec="seconds"), updated_at=now)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    value = session.scalar(select(StreamCheckpoint.value).where(StreamCheckpoint.name == key))
    return datetime.fromisoformat(value) if value else now


def stream_down_since(session: Session, channel: str) -> datetime | None:
    key = stream_down_key(channel)
    value = session.scalar(select(StreamCheckpoint.value).where(StreamCheckpoint.name == key))
    return datetime.fromisoformat(value) if value else None


def clear_stream_down(session: Session, channel: str) -> None:
    key = stream_down_key(channel)
    session.execute(delete(StreamCheckpoint).where(StreamCheckpoint.name == key))
