"""After the first close: a won deal whose line items or amount changed after a worker started
writing it to Stripe (an edit of a won, provisioned deal that never left its won stage).

Two signals say the record may have changed: the stream's `UPDATE` of `Amount` /
`HasOpportunityLineItem` without the stage, and the sweep's won opportunities whose
`LastModifiedDate` is after the snapshot the deal was fetched with. Neither is proof: a data
load's line additions may be delivered after the worker already fetched them, and any edit
moves `LastModifiedDate`. So the opportunity is read again and its lines and amount compared
with the snapshot the plan was made from; only a real difference parks a `done` deal
`needs_attention` with `changed_after_provisioning` (an amendment is needed), recorded with
what differs. A deal not provisioned yet is not concerned: it is fetched again instead
(`sf_bridge.provisioning.queue.refresh_unprovisioned`). A deal still on its way through the
Stripe steps, or held by a worker right now, is compared once done, by the sweep.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm.soql import is_salesforce_id, parse_salesforce_datetime, to_18
from sf_bridge.db.models import NEEDS_ATTENTION, utcnow
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.states import DONE
from sf_bridge.provisioning.store import CHANGED_CODE, _work_added, deals, events

log = get_logger(__name__)

LINES_KEY = "OpportunityLineItems"
# Fields that change on any save and say nothing about what is billed.
_VOLATILE = frozenset({"attributes", "LastModifiedDate", "SystemModstamp", "LastViewedDate"})

Fetch = Callable[[list[str]], list[dict[str, Any]]]


def _lines(record: Mapping[str, Any]) -> list[str]:
    value = record.get(LINES_KEY)
    items = value.get("records") if isinstance(value, Mapping) else None
    return sorted(
        json.dumps(
            {k: v for k, v in item.items() if k not in _VOLATILE}, sort_keys=True, default=str
        )
        for item in items or []
        if isinstance(item, Mapping)
    )


def difference(provisioned: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """What differs in the lines or amount between the snapshot provisioned and the record
    now, in words; None when nothing billed differs."""
    before, after = _lines(provisioned), _lines(now)
    parts: list[str] = []
    if before != after:
        parts.append(f"its line items changed ({len(before)} line(s) then, {len(after)} now)")
    if provisioned.get("Amount") != now.get("Amount"):
        parts.append(f"its amount went from {provisioned.get('Amount')} to {now.get('Amount')}")
    return " and ".join(parts) or None


def _provisioned(now: datetime) -> Any:
    """Deals provisioned (`done`) that no worker holds right now. A deal still on its way
    is compared once done: its write-back moves `LastModifiedDate`, so the next sweep reads it
    again."""
    return and_(
        deals.c.status == DONE,
        deals.c.source != "file",
        or_(deals.c.locked_until.is_(None), deals.c.locked_until < now),
    )


def _fetched_before(modified: datetime, snapshot: Mapping[str, Any]) -> bool:
    """Whether the record may have changed since the snapshot. `LastModifiedDate` counts in
    whole seconds: an edit in the same second as the fetch has the same value, so that one
    is read again too."""
    fetched = snapshot.get("LastModifiedDate")
    if not isinstance(fetched, str):
        return True
    try:
        return modified >= parse_salesforce_datetime(fetched)
    except ValueError:
        return True


def find_changed_lines(
    session_factory: sessionmaker[Session],
    fetch: Fetch,
    opportunity_ids: Collection[str],
    *,
    modified: Mapping[str, datetime] | None = None,
) -> dict[str, str]:
    """{opportunity id: what differs} for the provisioned deals among these whose lines or
    amount differ in Salesforce now from what they were provisioned with. With `modified`
    ({id: LastModifiedDate}), only those changed since their snapshot are read again. One
    read per 200 ids (the CRM's batch fetch); no write."""
    ids = sorted({to_18(i) for i in opportunity_ids if is_salesforce_id(i)})
    if not ids:
        return {}
    with session_factory() as session:
        rows = session.execute(
            select(deals.c.opportunity_id, deals.c.opportunity).where(
                deals.c.opportunity_id.in_(ids), _provisioned(utcnow())
            )
        ).all()
    snapshots = {
        str(opp_id): snapshot
        for opp_id, snapshot in rows
        if isinstance(snapshot, Mapping)
        and (modified is None or _fetched_before(modified[str(opp_id)], snapshot))
    }
    if not snapshots:
        return {}
    fresh = {to_18(str(r.get("Id"))): r for r in fetch(sorted(snapshots)) if r.get("Id")}
    found: dict[str, str] = {}
    for opp_id, snapshot in snapshots.items():
        record = fresh.get(opp_id)
        if record is None or not record.get("IsWon", True):
            continue  # gone or no longer won: the un-won handling's
        what = difference(snapshot, record)
        if what:
            found[opp_id] = what
    return found


def mark_changed_lines(session: Session, changes: Mapping[str, str], *, source: str) -> list[str]:
    """Parks these provisioned deals `needs_attention`, code `changed_after_provisioning`,
    with what differs, in the caller's transaction; a deal a worker took meanwhile is left.
    Returns the opportunity ids parked."""
    if not changes:
        return []
    conn = session.connection()
    now = utcnow()
    rows = conn.execute(
        select(deals.c.id, deals.c.opportunity_id).where(
            deals.c.opportunity_id.in_(list(changes)), _provisioned(now)
        )
    ).all()
    for deal_id, opp_id in rows:
        what = changes[str(opp_id)]
        message = (
            f"The opportunity changed after it was provisioned: {what}. The subscription "
            "still bills what was provisioned; an amendment is needed. Compare it with Stripe "
            f"(`sf-bridge deals show {deal_id}`), then `sf-bridge deals keep {deal_id}` to "
            f"keep billing as is, or `sf-bridge deals cancel {deal_id}`."
        )
        conn.execute(
            update(deals)
            .where(deals.c.id == deal_id)
            .values(
                status=NEEDS_ATTENTION,
                current_step=None,
                last_error=message,
                last_error_code=CHANGED_CODE,
                writeback_pending=deals.c.source != "file",
                next_attempt_at=None,
                updated_at=now,
            )
        )
        conn.execute(
            insert(events).values(
                deal_id=deal_id,
                at=now,
                kind="needs_attention",
                message=message,
                detail={"code": CHANGED_CODE, "source": source, "changed": what},
            )
        )
    parked = [str(r[1]) for r in rows]
    if parked:
        _work_added(session)
        log.warning("deals_changed_after_provisioning", source=source, opportunities=parked[:20])
    return parked
