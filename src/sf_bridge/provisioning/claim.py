"""Claiming work, in one place: which deals a worker may run now, and the per-account lock.

A claim is a lease (`locked_by`, `locked_until`) on the deal row. PostgreSQL picks candidates
with `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other; SQLite (one process,
`BEGIN IMMEDIATE`) uses the same guarded UPDATE and checks the row count. Every later write of
a step is guarded by the lease too (`load_owned`), so a worker whose lease expired and was
taken over cannot overwrite the new owner's progress.

The per-account lock is the same kind of lease on the `customers` row: the customer,
subscription and invoice steps of two deals of one account never run at once (Stripe answers
`lock_timeout` to concurrent writes on one customer, and two deals could both create it).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
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


def ensure_customer_row(
    session: Session, *, account_id: str, name: str, customer_key: str | None, email: str | None
) -> None:
    """Creates the account's customers row unless it exists (concurrent-safe; no commit)."""
    dialect = session.get_bind().dialect.name
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(Customer)
    session.execute(
        insert.values(
            sf_account_id=account_id,
            name=name[:255],
            customer_key=customer_key,
            email=email,
            created_at=utcnow(),
            updated_at=utcnow(),
        ).on_conflict_do_nothing(index_elements=["sf_account_id"])
    )


def try_lock_account(
    session: Session, *, account_id: str, holder: str, now: datetime, lease: timedelta
) -> bool:
    """Takes (or renews) the account's lease for `holder`; False when someone else holds it
    (no commit)."""
    result = session.execute(
        update(Customer)
        .where(
            Customer.sf_account_id == account_id,
            or_(
                Customer.locked_by.is_(None),
                Customer.locked_by == holder,
                Customer.locked_until < now,
            ),
        )
        .values(locked_by=holder, locked_until=now + lease)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def unlock_account(session: Session, *, account_id: str, holder: str) -> None:
    """Gives the account's lease back (no commit)."""
    session.execute(
        update(Customer)
        .where(Customer.sf_account_id == account_id, Customer.locked_by == holder)
        .values(locked_by=None, locked_until=None)
        .execution_options(synchronize_session=False)
    )


def renew_leases(
    session: Session, *, owner: str, until: datetime, deal_ids: Collection[int]
) -> int:
    """Extends the leases `owner` holds on the deals it is working on now (and their account
    locks) to `until`; returns how many of those deals it still holds. A live worker calls
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
            .values(locked_until=until)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Customer)
            .where(Customer.locked_by.in_([f"{owner}:{i}" for i in ids]))
            .values(locked_until=until)
            .execution_options(synchronize_session=False)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
