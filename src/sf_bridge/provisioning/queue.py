"""Durable enqueue of won opportunities: one deal per opportunity, whoever sees it first.

The unique opportunity id does the deduplication (`INSERT ... ON CONFLICT DO NOTHING` on
SQLite and PostgreSQL), so the stream, the sweep and several replicas can enqueue the same
opportunity at once and exactly one deal results. The caller commits (the stream commits its
replay id in the same transaction, after the deals are enqueued).

A deal already known is never enqueued twice; the separate paths below only send a known deal
that is not provisioned yet back to the fetch step, so that it is read again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from sf_bridge.crm import ids
from sf_bridge.crm.soql import parse_salesforce_datetime
from sf_bridge.db.dialect import upsert
from sf_bridge.db.models import NEEDS_ATTENTION, RETRYING, SKIPPED, Deal, DealEvent, utcnow
from sf_bridge.errors import SfBridgeError
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.states import STEP_FETCH, STEP_MAP
from sf_bridge.provisioning.wakeup import work_added

log = get_logger(__name__)


class InvalidOpportunity(SfBridgeError):
    """The opportunity cannot be enqueued as given."""

    code = "invalid_opportunity"


def _insert(session: Session) -> Any:
    return upsert(session, Deal)


def _check_id(opportunity_id: str) -> str:
    """The 18-character form: a deal is keyed by it whichever form was given."""
    return ids.opportunity_id(opportunity_id, error=InvalidOpportunity)


def enqueue_opportunities(
    session: Session, opportunity_ids: Sequence[str], *, source: str
) -> list[str]:
    """Creates a `received` deal for each opportunity not seen before; returns the ids that
    were newly enqueued (in the order given). Does not commit."""
    ids = list(dict.fromkeys(_check_id(i) for i in opportunity_ids))
    if not ids:
        return []
    now = utcnow()
    rows = [
        {
            "opportunity_id": opp_id,
            "status": "received",
            "current_step": STEP_FETCH,
            "attempts": 0,
            "source": source,
            "writeback_pending": False,
            "created_at": now,
            "updated_at": now,
        }
        for opp_id in ids
    ]
    stmt = (
        _insert(session)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["opportunity_id"])
        .returning(Deal.id, Deal.opportunity_id)
    )
    inserted = {opp_id: deal_id for deal_id, opp_id in session.execute(stmt).all()}
    for deal_id in inserted.values():
        session.add(DealEvent(deal_id=deal_id, kind="received", message=f"Enqueued from {source}."))
    session.flush()
    new = [i for i in ids if i in inserted]
    if new:
        work_added(session)
        log.info("deals_enqueued", source=source, count=len(new), opportunity_ids=new[:20])
    return new


def enqueue_snapshot(session: Session, opportunity: dict[str, Any], *, source: str) -> Deal:
    """Enqueues an opportunity given as data (`provision --file`): the deal starts at the map
    step with this snapshot. An opportunity already enqueued keeps its deal, which is
    returned as it is. Does not commit."""
    opp_id = _check_id(opportunity.get("Id") or "")
    opportunity = ids.with_18_character_ids(opportunity, error=InvalidOpportunity)
    account_id = opportunity.get("AccountId") or (opportunity.get("Account") or {}).get("Id")
    now = utcnow()
    stmt = (
        _insert(session)
        .values(
            opportunity_id=opp_id,
            account_id=account_id,
            status="fetched",
            current_step=STEP_MAP,
            attempts=0,
            source=source,
            opportunity=opportunity,
            writeback_pending=False,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["opportunity_id"])
        .returning(Deal.id)
    )
    new_id = session.execute(stmt).scalar_one_or_none()
    if new_id is not None:
        session.add(
            DealEvent(
                deal_id=new_id,
                kind="received",
                message=f"Enqueued from {source} with the opportunity as given.",
            )
        )
        session.flush()
        work_added(session)
        log.info("deal_enqueued", source=source, opportunity_id=opp_id, deal_id=new_id)
    deal = session.execute(select(Deal).where(Deal.opportunity_id == opp_id)).scalar_one()
    return deal


def _fetch_again(
    session: Session,
    opportunity_ids: Sequence[str],
    which: ColumnElement[bool],
    *,
    source: str,
    message: str,
) -> list[str]:
    """Sends the known deals among these that match `which` (and that no worker holds right
    now) back to the fetch step; returns their opportunity ids. Does not commit."""
    ids = list(dict.fromkeys(str(i) for i in opportunity_ids if i))
    if not ids:
        return []
    now = utcnow()
    free = or_(Deal.locked_until.is_(None), Deal.locked_until < now)
    rows = session.execute(
        update(Deal)
        .where(Deal.opportunity_id.in_(ids), which, free)
        .values(
            status="received",
            current_step=STEP_FETCH,
            attempts=0,
            next_attempt_at=None,
            last_error=None,
            last_error_code=None,
            writeback_pending=False,
            updated_at=now,
        )
        .returning(Deal.id, Deal.opportunity_id)
        .execution_options(synchronize_session=False)
    ).all()
    for deal_id, _opp_id in rows:
        session.add(DealEvent(deal_id=deal_id, kind="refetch", message=message))
    session.flush()
    found = [opp_id for _deal_id, opp_id in rows]
    if found:
        work_added(session)
        log.info("deals_fetched_again", source=source, count=len(found), opportunity_ids=found[:20])
    return found


def requeue_won_again(
    session: Session, opportunity_ids: Sequence[str], *, source: str
) -> list[str]:
    """Deals skipped because they were no longer won when fetched, now reported won again
    (by the stream or the sweep): fetched again. Returns their opportunity ids."""
    return _fetch_again(
        session,
        opportunity_ids,
        and_(Deal.status == SKIPPED, Deal.last_error_code == "not_won"),
        source=source,
        message=f"Won again ({source}): fetched again.",
    )


# Statuses in which nothing has reached Stripe yet (a `received` deal is fetched anyway).
PRE_STRIPE = ("fetched", "mapped")


def refresh_unprovisioned(
    session: Session, opportunity_ids: Sequence[str], *, source: str
) -> list[str]:
    """Known deals not provisioned yet whose opportunity changed in a way that matters (its
    line items or amount: a data load adds the lines after the opportunity) go back to the
    fetch step: those before any Stripe step (received, fetched, mapped), those retrying or
    parked at the fetch or map step, and those skipped as no longer won. A deal a worker
    holds right now is left to it. Returns their opportunity ids. Does not commit."""
    return _fetch_again(
        session,
        opportunity_ids,
        _unprovisioned(),
        source=source,
        message=f"Its line items or amount changed ({source}): fetched again.",
    )


def _unprovisioned() -> ColumnElement[bool]:
    return or_(
        Deal.status.in_(PRE_STRIPE),
        and_(
            Deal.status.in_((RETRYING, NEEDS_ATTENTION)),
            Deal.current_step.in_((STEP_FETCH, STEP_MAP)),
        ),
        and_(Deal.status == SKIPPED, Deal.last_error_code == "not_won"),
    )


def refresh_modified(
    session: Session, modified: Mapping[str, datetime], *, source: str
) -> list[str]:
    """The sweep's won opportunities with their `LastModifiedDate`: a known deal not
    provisioned yet (the same ones as `refresh_unprovisioned`) whose record changed since the
    snapshot it was last fetched with goes back to the fetch step, whatever the channel
    delivered. Returns their opportunity ids. Does not commit."""
    if not modified:
        return []
    rows = session.execute(
        select(Deal.opportunity_id, Deal.opportunity).where(
            Deal.opportunity_id.in_(list(modified)), _unprovisioned()
        )
    ).all()
    stale = [
        opp_id
        for opp_id, snapshot in rows
        if _newer(modified[opp_id], (snapshot or {}).get("LastModifiedDate"))
    ]
    return _fetch_again(
        session,
        stale,
        _unprovisioned(),
        source=source,
        message=f"The opportunity changed since it was fetched ({source}): fetched again.",
    )


def _newer(modified: datetime, fetched: Any) -> bool:
    """Whether the record's `LastModifiedDate` is after the snapshot's (no snapshot: it is)."""
    if not isinstance(fetched, str):
        return True
    try:
        at = parse_salesforce_datetime(fetched)
    except ValueError:
        return True
    return modified > at


def known_opportunities(session: Session, opportunity_ids: Sequence[str]) -> set[str]:
    """Which of these opportunities have a deal."""
    ids = list(dict.fromkeys(str(i) for i in opportunity_ids if i))
    if not ids:
        return set()
    return set(
        session.execute(select(Deal.opportunity_id).where(Deal.opportunity_id.in_(ids))).scalars()
    )
