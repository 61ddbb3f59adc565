"""Claiming work through a caller's session: which deals may run now, and the per-account lock.

The worker claims, leases and renews through `sf_bridge.provisioning.store.DealStore`, which
applies the same rules in fewer statements; these session-level functions remain for code and
tests that hold a session of their own.

A claim is a lease (`locked_by`, `locked_until`) on the deal row. PostgreSQL picks candidates
with `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other; SQLite (one process,
`BEGIN IMMEDIATE`) uses the same guarded UPDATE and checks the row count. Every later write of
a step is guarded by the lease too (`load_owned`), so a worker whose lease expired and was
taken over cannot overwrite the new owner's progress.

The per-account lock is the same kind of lease, on a `provisioning_locks` row: the customer,
subscription and invoice steps of two deals of one account never run at once. The deal's
Stripe customer (its `customers` row, one per customer key, which accounts may share) is
leased with it, in the same statement: Stripe answers `lock_timeout` to concurrent writes on
one customer, and two deals could both create it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sf_bridge.db.models import CANCELLED, Customer, Deal, ProvisioningLock, utcnow
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


def _lock_names(account_id: str, customer_id: int | None) -> list[str]:
    names = [f"account:{account_id}"]
    if customer_id is not None:
        names.append(f"customer:{customer_id}")
    return names


def try_lock_account(
    session: Session,
    *,
    account_id: str,
    customer_id: int | None,
    holder: str,
    now: datetime,
    lease: timedelta,
) -> bool:
    """Takes (or renews) for `holder` the account's lease and, when given, the lease of the
    customers row `customer_id`, in one statement; False, holding neither, when someone else
    holds one (no commit)."""
    names = _lock_names(account_id, customer_id)

    def take() -> int:
        result = session.execute(
            update(ProvisioningLock)
            .where(
                ProvisioningLock.name.in_(names),
                or_(
                    ProvisioningLock.locked_by.is_(None),
                    ProvisioningLock.locked_by == holder,
                    ProvisioningLock.locked_until < now,
                ),
            )
            .values(locked_by=holder, locked_until=now + lease)
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    if take() == len(names):
        return True
    # A first deal of the account or customer (its lock rows are made once), or a busy one.
    session.execute(
        _insert(session, ProvisioningLock)
        .values([{"name": name} for name in names])
        .on_conflict_do_nothing(index_elements=["name"])
    )
    if take() == len(names):
        return True
    release_locks(session, holder)
    return False


def unlock_account(session: Session, *, account_id: str, holder: str) -> None:
    """Gives the account's lease, and the customer lease taken with it, back (no commit)."""
    release_locks(session, holder)


def release_locks(session: Session, holder: str) -> None:
    """Gives back every account and customer lease `holder` holds (no commit)."""
    session.execute(
        update(ProvisioningLock)
        .where(ProvisioningLock.locked_by == holder)
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
            update(ProvisioningLock)
            .where(ProvisioningLock.locked_by.in_([f"{owner}:{i}" for i in ids]))
            .values(locked_until=until)
            .execution_options(synchronize_session=False)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
