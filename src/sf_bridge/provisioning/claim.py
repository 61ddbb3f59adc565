"""Claiming work through a caller's session: which deals may run now.

The worker claims, leases and renews through `sf_bridge.provisioning.store.DealStore`, which
applies the same rules in fewer statements; these session-level functions remain for code and
tests that hold a session of their own.

A claim is a lease (`locked_by`, `locked_until`) on the deal row. PostgreSQL picks candidates
with `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other; SQLite (one process,
`BEGIN IMMEDIATE`) uses the same guarded UPDATE and checks the row count. Every later write of
a step is guarded by the lease too (`load_owned`), so a worker whose lease expired and was
taken over cannot overwrite the new owner's progress.

The account's lease is on the deal row too (`account_until`, taken and given back by
`DealStore`): see that module.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sf_bridge.db.models import CANCELLED, Customer, Deal, utcnow
from sf_bridge.provisioning.states import SETTLED


def due(now: datetime) -> Any:
    """Deals a worker may take now: not settled, due, and not leased by someone else."""
    return and_(
        Deal.status.not_in(SETTLED),
        or_(Deal.next_attempt_at.is_(None), Deal.next_attempt_at <= now),
        or_(Deal.locked_until.is_(None), Deal.locked_until < now),
    )


def claim_deals(
    session: Session,
    *,
    steps: Collection[str],
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int,
) -> list[int]:
    """Leases up to `limit` due deals whose next step is one of `steps`; returns their ids,
    oldest first. Commits."""
    with session.begin():
        query = (
            select(Deal.id)
            .where(Deal.current_step.in_(list(steps)), due(now))
            .order_by(Deal.id)
            .limit(limit)
        )
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True, of=Deal)
        candidates = list(session.execute(query).scalars())
        if not candidates:
            return []
        # The guard repeats the conditions: on SQLite (no row locks) a row another worker
        # claimed in between no longer matches, and RETURNING says which rows we got.
        result = session.execute(
            update(Deal)
            .where(Deal.id.in_(candidates), Deal.current_step.in_(list(steps)), due(now))
            .values(locked_by=owner, locked_until=now + lease)
            .returning(Deal.id)
            .execution_options(synchronize_session=False)
        )
        claimed = sorted(result.scalars())
    return claimed


def load_owned(session: Session, deal_id: int, owner: str) -> Deal | None:
    """The deal, locked for this transaction, when `owner` still holds its lease; else None.

    A deal cancelled meanwhile (its subscription ended by a webhook or the overdue policy) is
    no longer anyone's to move on: its `cancelled` status must not be overwritten."""
    query = select(Deal).where(
        Deal.id == deal_id, Deal.locked_by == owner, Deal.status != CANCELLED
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(of=Deal)
    return session.execute(query).scalar_one_or_none()


def release_deal(session: Session, deal_id: int, owner: str) -> None:
    """Gives the lease back (no commit)."""
    session.execute(
        update(Deal)
        .where(Deal.id == deal_id, Deal.locked_by == owner)
        .values(locked_by=None, locked_until=None)
        .execution_options(synchronize_session=False)
    )


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def ensure_customer_row(
    session: Session,
    *,
    customer_key: str,
    account_id: str,
    name: str,
    email: str | None,
) -> Customer:
    """The customers row of `customer_key`, created (for `account_id`) unless it exists
    (concurrent-safe; no commit)."""
    session.execute(
        _insert(session, Customer)
        .values(
            customer_key=customer_key,
            sf_account_id=account_id,
            name=name[:255],
            email=email,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["customer_key"])
    )
    return session.execute(
        select(Customer).where(Customer.customer_key == customer_key)
    ).scalar_one()


def renew_leases(
    session: Session, *, owner: str, until: datetime, deal_ids: Collection[int]
) -> int:
    """Extends the leases `owner` holds on the deals it is working on now (and their
    account's lease) to `until`; returns how many of those deals it still holds. A live worker calls
    this periodically, so leases can be short and the deals of a worker that died are taken
    over quickly. Only the deals in work are renewed: a deal a failed run or batch left leased
    runs out its lease and is claimed again. Commits."""
    ids = sorted(deal_ids)
    if not ids:
        return 0
    with session.begin():
        result = session.execute(
            update(Deal)
            .where(Deal.locked_by == owner, Deal.id.in_(ids))
            .values(
                locked_until=until,
                account_until=case((Deal.account_until.is_(None), None), else_=until),
            )
            .execution_options(synchronize_session=False)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
