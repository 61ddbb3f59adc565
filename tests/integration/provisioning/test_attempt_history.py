"""Old step attempts are pruned to the first and last of each step of each deal, with a count
of the pruned ones, and /metrics reports the same figures before and after folding and
pruning (it reads totals plus the attempts since, not the whole table)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge import metrics
from sf_bridge.db.models import StepAttempt
from sf_bridge.provisioning.attempt_history import SETTLE, fold, maintain, prune
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import find_deal
from sf_bridge.provisioning.report import deal_story

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
KEEP = timedelta(days=30)
OLD = NOW - timedelta(days=40)


def _deal(factory: sessionmaker[Session], opp: str) -> int:
    with factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="test")
        return find_deal(session, opp).id


def _attempt(
    factory: sessionmaker[Session],
    deal_id: int,
    step: str,
    n: int,
    at: datetime,
    outcome: str = "retry",
    duration_ms: int | None = 120,
) -> None:
    with factory() as session, session.begin():
        session.add(
            StepAttempt(
                deal_id=deal_id,
                step=step,
                attempt=n,
                started_at=at,
                finished_at=at + timedelta(milliseconds=duration_ms or 0),
                duration_ms=duration_ms,
                outcome=outcome,
                error="rate limited" if outcome == "retry" else None,
            )
        )


def _step_lines(factory: sessionmaker[Session]) -> list[str]:
    text = metrics.render(factory).decode()
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith(("sf_bridge_step_attempts", "sf_bridge_step_duration_seconds"))
    )


def _attempts(factory: sessionmaker[Session], deal_id: int) -> list[tuple[str, int, int]]:
    with factory() as session:
        rows = session.execute(
            select(StepAttempt.step, StepAttempt.attempt, StepAttempt.pruned_before)
            .where(StepAttempt.deal_id == deal_id)
            .order_by(StepAttempt.id)
        ).all()
    return [(r.step, r.attempt, r.pruned_before) for r in rows]


def test_old_attempts_keep_first_and_last_per_step_and_metrics_do_not_change(
    session_factory: sessionmaker[Session],
) -> None:
    old = _deal(session_factory, "006000000000001AAA")
    for n in range(1, 6):  # five customer attempts, 40 days ago: four retries, then ok
        outcome = "ok" if n == 5 else "retry"
        _attempt(session_factory, old, "customer", n, OLD + timedelta(minutes=n), outcome)
    _attempt(session_factory, old, "map", 1, OLD, "ok", duration_ms=3)
    _attempt(session_factory, old, "fetch", 1, OLD, "running", duration_ms=None)
    recent = _deal(session_factory, "006000000000002AAA")
    for n in range(1, 5):  # recent retries: kept however many
        _attempt(session_factory, recent, "invoice", n, NOW - timedelta(days=2, minutes=-n))
    # One that straddles: three old attempts and a recent last one.
    both = _deal(session_factory, "006000000000003AAA")
    for n in range(1, 4):
        _attempt(session_factory, both, "subscription", n, OLD + timedelta(minutes=n), "retry", 900)
    _attempt(session_factory, both, "subscription", 4, NOW - timedelta(hours=1), "ok", 70_000)

    before = _step_lines(session_factory)
    assert 'sf_bridge_step_attempts_total{outcome="retry",step="customer"} 4.0' in before

    with session_factory() as session:
        # Nothing folded yet: nothing is pruned, however old.
        assert prune(session, NOW, KEEP) == 0
    assert len(_attempts(session_factory, old)) == 7

    folded_to, pruned = maintain(session_factory, NOW, KEEP)
    assert folded_to > 0
    assert pruned == 3 + 2  # the middle customer and subscription attempts
    assert _attempts(session_factory, old) == [
        ("customer", 1, 0),
        ("customer", 5, 3),
        ("map", 1, 0),
        ("fetch", 1, 0),
    ]
    assert [a[1] for a in _attempts(session_factory, recent)] == [1, 2, 3, 4]
    assert _attempts(session_factory, both) == [("subscription", 1, 0), ("subscription", 4, 2)]
    assert _step_lines(session_factory) == before

    with session_factory() as session:
        story = deal_story(session, find_deal(session, "006000000000001AAA"))
    customer = [t for t in story.timeline if t.kind == "step" and t.step == "customer"]
    assert [t.attempt for t in customer] == [1, 5]
    assert customer[1].message.startswith("(3 earlier attempts pruned)")


def test_metrics_count_attempts_after_the_fold_and_refold_is_idempotent(
    session_factory: sessionmaker[Session],
) -> None:
    deal = _deal(session_factory, "006000000000004AAA")
    _attempt(session_factory, deal, "customer", 1, NOW - SETTLE * 3, "retry", 40)
    with session_factory() as session:
        fold(session, NOW)
    # After the fold: a new attempt, too young to fold, still counted.
    _attempt(session_factory, deal, "customer", 2, NOW - timedelta(seconds=5), "ok", 300)
    lines = _step_lines(session_factory)
    assert 'sf_bridge_step_attempts_total{outcome="retry",step="customer"} 1.0' in lines
    assert 'sf_bridge_step_attempts_total{outcome="ok",step="customer"} 1.0' in lines
    assert 'sf_bridge_step_duration_seconds_count{step="customer"} 2.0' in lines
    assert 'sf_bridge_step_duration_seconds_bucket{le="0.05",step="customer"} 1.0' in lines
    with session_factory() as session:
        fold(session, NOW)  # the young one stays out of the totals
        fold(session, NOW)
    assert _step_lines(session_factory) == lines
    with session_factory() as session:
        fold(session, NOW + SETTLE)
    assert _step_lines(session_factory) == lines
