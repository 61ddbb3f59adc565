"""Keeping step_attempts bounded: totals for /metrics, and old attempts pruned.

- **Fold**: attempts started more than `SETTLE` ago (finished, or from a worker long dead) are
  added to `step_attempt_totals` (counts by step and outcome, duration sum and histogram
  buckets) up to an id recorded in `step_attempt_rollup.folded_to`. /metrics reads the totals
  plus the attempts after `folded_to` only: its cost is bounded by what happened since the
  last fold, not by the table's history.
- **Prune**: attempts older than the retention (SF_BRIDGE_KEEP_ATTEMPTS_DAYS, default 30) and
  already folded are deleted, except the first and the last attempt of each step of each
  deal; the kept last one records in `pruned_before` how many were pruned between them, so
  `sf-bridge deals show` still tells the whole story in a few lines.

Both run in `sf-bridge run` on a schedule, on one replica at a time (an advisory lock on
PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from sf_bridge.db.models import StepAttempt, StepAttemptRollup, StepAttemptTotal

# Histogram bounds of sf_bridge_step_duration_seconds.
STEP_BUCKETS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Attempts younger than this may still change (a running step): they are not folded yet.
SETTLE = timedelta(minutes=10)
PRUNE_GROUPS_PER_TRANSACTION = 500


@dataclass
class StepFigures:
    """What /metrics says of one step and outcome."""

    attempts: int = 0
    timed: int = 0
    duration_ms: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(STEP_BUCKETS_SECONDS))

    def add(self, other: StepFigures) -> None:
        self.attempts += other.attempts
        self.timed += other.timed
        self.duration_ms += other.duration_ms
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


def _aggregate(session: Session, *where: Any) -> dict[tuple[str, str], StepFigures]:
    timed = StepAttempt.duration_ms.is_not(None)
    bucket_columns = [
        func.sum(case((StepAttempt.duration_ms <= int(b * 1000), 1), else_=0))
        for b in STEP_BUCKETS_SECONDS
    ]
    rows = session.execute(
        select(
            StepAttempt.step,
            StepAttempt.outcome,
            func.count(),
            func.sum(case((timed, 1), else_=0)),
            func.coalesce(func.sum(StepAttempt.duration_ms), 0),
            *bucket_columns,
        )
        .where(*where)
        .group_by(StepAttempt.step, StepAttempt.outcome)
    ).all()
    return {
        (step, outcome): StepFigures(
            int(count), int(n_timed or 0), int(total or 0), [int(c or 0) for c in cumulative]
        )
        for step, outcome, count, n_timed, total, *cumulative in rows
    }


def _rollup(session: Session) -> StepAttemptRollup | None:
    return session.get(StepAttemptRollup, 1)


def figures(session: Session) -> dict[tuple[str, str], StepFigures]:
    """Step attempts by step and outcome, all of them: the folded totals plus the attempts
    after them (bounded queries: a small table and an id range)."""
    rollup = _rollup(session)
    folded_to = rollup.folded_to if rollup is not None else 0
    result = _aggregate(session, StepAttempt.id > folded_to)
    for row in session.execute(select(StepAttemptTotal)).scalars():
        total = StepFigures(row.attempts, row.timed, row.duration_ms, list(row.buckets))
        result.setdefault((row.step, row.outcome), StepFigures()).add(total)
    return result


def fold(session: Session, now: datetime) -> int:
    """Adds attempts started before `now - SETTLE` to the totals; returns the new `folded_to`.
    Commits."""
    with session.begin():
        rollup = _rollup(session)
        if rollup is None:
            rollup = StepAttemptRollup(id=1, folded_to=0)
            session.add(rollup)
            session.flush()
        start = rollup.folded_to
        upto = session.execute(
            select(func.max(StepAttempt.id)).where(
                StepAttempt.id > start, StepAttempt.started_at < now - SETTLE
            )
        ).scalar()
        if upto is None:
            return start
        added = _aggregate(session, StepAttempt.id > start, StepAttempt.id <= upto)
        existing = {
            (t.step, t.outcome): t for t in session.execute(select(StepAttemptTotal)).scalars()
        }
        for key, more in added.items():
            row = existing.get(key)
            if row is None:
                session.add(
                    StepAttemptTotal(
                        step=key[0],
                        outcome=key[1],
                        attempts=more.attempts,
                        timed=more.timed,
                        duration_ms=more.duration_ms,
                        buckets=more.buckets,
                    )
                )
                continue
            total = StepFigures(row.attempts, row.timed, row.duration_ms, list(row.buckets))
            total.add(more)
            row.attempts, row.timed, row.duration_ms = (
                total.attempts,
                total.timed,
                total.duration_ms,
            )
            row.buckets = total.buckets
        rollup.folded_to = int(upto)
        rollup.folded_at = now
    return int(upto)


def prune(session: Session, now: datetime, keep: timedelta) -> int:
    """Deletes folded attempts started before `now - keep`, but the first and last attempt
    of each step of each deal; returns how many were deleted. Commits in batches."""
    cutoff = now - keep
    deleted = 0
    after: tuple[int, str] = (0, "")
    while True:
        with session.begin():
            rollup = _rollup(session)
            folded_to = rollup.folded_to if rollup is not None else 0
            prunable = (StepAttempt.started_at < cutoff, StepAttempt.id <= folded_to)
            groups: Sequence[Any] = session.execute(
                select(StepAttempt.deal_id, StepAttempt.step)
                .where(*prunable)
                .group_by(StepAttempt.deal_id, StepAttempt.step)
                .having(func.count() > 1)
                .order_by(StepAttempt.deal_id, StepAttempt.step)
                .where(
                    (StepAttempt.deal_id > after[0])
                    | ((StepAttempt.deal_id == after[0]) & (StepAttempt.step > after[1]))
                )
                .limit(PRUNE_GROUPS_PER_TRANSACTION)
            ).all()
            for deal_id, step in groups:
                deleted += _prune_group(session, deal_id, step, prunable)
            if rollup is not None:
                rollup.pruned_at = now
        if len(groups) < PRUNE_GROUPS_PER_TRANSACTION:
            return deleted
        after = (groups[-1][0], groups[-1][1])


def _prune_group(session: Session, deal_id: int, step: str, prunable: tuple[Any, ...]) -> int:
    same = (StepAttempt.deal_id == deal_id, StepAttempt.step == step)
    first, last = session.execute(
        select(func.min(StepAttempt.id), func.max(StepAttempt.id)).where(*same)
    ).one()
    result = session.execute(
        delete(StepAttempt)
        .where(*same, *prunable, StepAttempt.id > first, StepAttempt.id < last)
        .execution_options(synchronize_session=False)
    )
    count = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if count:
        session.execute(
            update(StepAttempt)
            .where(StepAttempt.id == last)
            .values(pruned_before=StepAttempt.pruned_before + count)
            .execution_options(synchronize_session=False)
        )
    return count


def maintain(session_factory: Any, now: datetime, keep: timedelta) -> tuple[int, int]:
    """One scheduled pass: fold, then prune. Returns (folded_to, attempts pruned)."""
    with session_factory() as session:
        folded_to = fold(session, now)
    with session_factory() as session:
        pruned = prune(session, now, keep)
    return folded_to, pruned
