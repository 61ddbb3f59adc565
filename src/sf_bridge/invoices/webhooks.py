"""Processing a verified Stripe event exactly once: dedupe by event id, apply, commit together.

The event id is inserted in the same transaction that applies the event: a failure rolls both
back (Stripe delivers again), and a second delivery, even concurrent with the first, finds the
id and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.dialect import upsert
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import WebhookEvent, utcnow
from sf_bridge.invoices.events import apply_stripe_event
from sf_bridge.logging import get_logger

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway

log = get_logger(__name__)


@dataclass(frozen=True)
class WebhookResult:
    event_id: str
    type: str
    duplicate: bool
    outcome: str


def _created(event: Mapping[str, Any]) -> datetime | None:
    created = event.get("created")
    return datetime.fromtimestamp(created, UTC) if isinstance(created, int | float) else None


def process_event(
    session_factory: sessionmaker[Session],
    event: Mapping[str, Any],
    billing: BillingGateway | None = None,
) -> WebhookResult:
    event_id = str(event.get("id", ""))
    kind = str(event.get("type", ""))
    obj = (event.get("data") or {}).get("object") or {}
    with transaction(session_factory) as session:
        inserted = session.execute(
            upsert(session, WebhookEvent)
            .values(
                id=event_id,
                type=kind[:64],
                object_id=str(obj.get("id", ""))[:255] or None,
                created_at=_created(event),
                received_at=utcnow(),
                outcome="processing",
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(WebhookEvent.id)
        ).first()
        if inserted is None:
            log.info("stripe_event_duplicate", event_id=event_id, type=kind)
            return WebhookResult(event_id, kind, duplicate=True, outcome="duplicate")
        outcome = apply_stripe_event(session, event, billing)
        row = session.get(WebhookEvent, event_id)
        if row is not None:
            row.outcome = outcome
    log.info("stripe_event_applied", event_id=event_id, type=kind, outcome=outcome)
    return WebhookResult(event_id, kind, duplicate=False, outcome=outcome)
