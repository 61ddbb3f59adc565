"""Read models for ops: the list of deals and one deal's story (timeline of steps, attempts,
errors, ids and links), as plain data the CLI renders."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.db.models import Deal, DealEvent, EntitlementGrant, StepAttempt


@dataclass(frozen=True)
class TimelineEntry:
    at: datetime
    kind: str  # "step" or an event kind (received, replayed, needs_attention)
    step: str | None
    attempt: int | None
    outcome: str
    message: str
    duration_ms: int | None = None
    idempotency_key: str | None = None
    stripe_request_id: str | None = None
    detail: dict[str, Any] | None = None


@dataclass(frozen=True)
class DealStory:
    deal: Deal
    timeline: list[TimelineEntry]
    grants: list[EntitlementGrant] = field(default_factory=list)


def list_deals(session: Session, *, status: str | None = None, limit: int = 200) -> list[Deal]:
    query = select(Deal).order_by(Deal.id.desc()).limit(limit)
    if status:
        query = query.where(Deal.status == status)
    return list(session.execute(query).scalars())


def deal_story(session: Session, deal: Deal) -> DealStory:
    attempts = session.execute(
        select(StepAttempt).where(StepAttempt.deal_id == deal.id).order_by(StepAttempt.id)
    ).scalars()
    events = session.execute(
        select(DealEvent).where(DealEvent.deal_id == deal.id).order_by(DealEvent.id)
    ).scalars()
    timeline = [
        TimelineEntry(
            at=a.started_at,
            kind="step",
            step=a.step,
            attempt=a.attempt,
            outcome=a.outcome,
            message=_pruned_note(a.pruned_before) + (a.error or _describe(a.detail)),
            duration_ms=a.duration_ms,
            idempotency_key=a.idempotency_key,
            stripe_request_id=a.stripe_request_id,
            detail=a.detail,
        )
        for a in attempts
    ]
    timeline += [
        TimelineEntry(
            at=e.at,
            kind=e.kind,
            step=(e.detail or {}).get("step"),
            attempt=None,
            outcome=e.kind,
            message=e.message,
            detail=e.detail,
        )
        for e in events
    ]
    timeline.sort(key=lambda t: t.at)
    grants = list(
        session.execute(
            select(EntitlementGrant)
            .where(EntitlementGrant.deal_id == deal.id)
            .order_by(EntitlementGrant.id)
        ).scalars()
    )
    return DealStory(deal, timeline, grants)


def _pruned_note(pruned: int | None) -> str:
    """On the last kept attempt of a step whose older attempts were pruned."""
    if not pruned:
        return ""
    return f"({pruned} earlier attempt{'s' if pruned != 1 else ''} pruned) "


def _describe(detail: dict[str, Any] | None) -> str:
    if not detail:
        return ""
    return ", ".join(f"{k}={v}" for k, v in detail.items() if not isinstance(v, dict | list))
