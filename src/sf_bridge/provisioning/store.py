"""The deal store: every write of a per-deal step's state, in SQLAlchemy Core.

    claim   one UPDATE ... RETURNING leases a batch of due deals and returns their views
    start   before a Stripe step: takes the account's and the customer's lease and records the
            attempt, in one transaction, *before* the request (a later attempt then knows an
            earlier one may have reached Stripe, and searches before creating)
    commit  a step's outcome: one guarded UPDATE of the deal (this worker's lease, not
            cancelled; the row count says whether it held), the customers link, the grants
            and the attempt row, in one transaction; a lost lease commits nothing
    fail    a failed attempt: retrying or needs_attention, in one transaction

SQLite and PostgreSQL differ here only in `_insert` and in the `FOR UPDATE SKIP LOCKED` of
the claim's subquery (replicas never wait on each other's candidates on PostgreSQL; SQLite
has one writer, `BEGIN IMMEDIATE`, and the claim repeats its conditions in the UPDATE).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import (
    CANCELLED,
    Customer,
    Deal,
    DealEvent,
    EntitlementGrant,
    ProvisioningLock,
    StepAttempt,
    utcnow,
)
from sf_bridge.entitlements.ledger import grant_entitlements
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.dbscope import SessionScope
from sf_bridge.provisioning.outcome import CustomerView, DealView, Outcome
from sf_bridge.provisioning.states import SETTLED, STEP_CUSTOMER
from sf_bridge.provisioning.wakeup import work_added

deals: Table = Deal.__table__  # type: ignore[assignment]
attempts: Table = StepAttempt.__table__  # type: ignore[assignment]
customers: Table = Customer.__table__  # type: ignore[assignment]
locks: Table = ProvisioningLock.__table__  # type: ignore[assignment]
events: Table = DealEvent.__table__  # type: ignore[assignment]
grants: Table = EntitlementGrant.__table__  # type: ignore[assignment]

_VIEW = [deals.c[name] for name in DealView.columns()]
log = get_logger(__name__)


class _NotHeld(Exception):
    """Rolls the transaction back: the deal or its account is not this worker's."""


@dataclass(frozen=True)
class Started:
    """A Stripe step under way: its attempt row, and the deal's customers row (customer step)."""

    attempt_id: int | None
    resumed: bool
    customer: CustomerView | None = None


def _insert(conn: Connection, table: Any) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _due(now: datetime) -> Any:
    return and_(
        deals.c.status.not_in(SETTLED),
        or_(deals.c.next_attempt_at.is_(None), deals.c.next_attempt_at <= now),
        or_(deals.c.locked_until.is_(None), deals.c.locked_until < now),
    )


class DealStore:
    """Writes deal state for one worker (`owner` names its leases)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        owner: str,
        lease: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self.db = SessionScope(session_factory)
        self.owner = owner
        self.lease = lease
        self.clock = clock

    # claims --------------------------------------------------------------------------------

    def claim(self, steps: Collection[str], limit: int) -> list[DealView]:
        """Leases up to `limit` due deals whose next step is one of `steps`, oldest first, in
        one statement; returns them as views."""
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            candidates = (
                select(deals.c.id)
                .where(deals.c.current_step.in_(list(steps)), _due(now))
                .order_by(deals.c.id)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            rows = conn.execute(
                update(deals)
                .where(
                    deals.c.id.in_(candidates.scalar_subquery()),
                    deals.c.current_step.in_(list(steps)),
                    _due(now),
                )
                .values(locked_by=self.owner, locked_until=now + self.lease)
                .returning(*_VIEW)
            ).mappings()
            views = [DealView.from_row(dict(row)) for row in rows]
        return sorted(views, key=lambda v: v.id)

    def load(self, deal_ids: Collection[int]) -> list[DealView]:
        if not deal_ids:
            return []
        with self.db() as session:
            rows = session.connection().execute(
                select(*_VIEW).where(deals.c.id.in_(list(deal_ids))).order_by(deals.c.id)
            )
            return [DealView.from_row(dict(row)) for row in rows.mappings()]

    def release(self, deal_id: int, holder: str | None = None) -> None:
        """Gives the deal's lease back (and the account leases `holder` holds)."""
        with self.db() as session, session.begin():
            conn = session.connection()
            conn.execute(
                update(deals)
                .where(deals.c.id == deal_id, deals.c.locked_by == self.owner)
                .values(locked_by=None, locked_until=None)
            )
            if holder is not None:
                _release_locks(conn, holder)

    def reschedule(self, deal_id: int, delay: timedelta) -> None:
        """The deal's account stayed busy: give the deal back, to be claimed after `delay`."""
        with self.db() as session, session.begin():
            session.connection().execute(
                update(deals)
                .where(
                    deals.c.id == deal_id,
                    deals.c.locked_by == self.owner,
                    deals.c.status != CANCELLED,
                )
                .values(next_attempt_at=self.clock() + delay, locked_by=None, locked_until=None)
            )

    # a Stripe step -------------------------------------------------------------------------

    def start(
        self,
        deal: DealView,
        step: str,
        attempt_no: int,
        *,
        account: str,
        identity: Any,
        holder: str,
        held: bool = False,
    ) -> Started | None:
        """Takes the account's lease and its Stripe customer's (unless `held`: kept by the
        previous step of this deal, renewed by the heartbeat) and records the attempt, in one
        transaction; None (holding nothing) when the account or the customer is busy."""
        try:
            return self._start(deal, step, attempt_no, account, identity, holder, held)
        except _NotHeld:
            return None

    def _start(
        self,
        deal: DealView,
        step: str,
        attempt_no: int,
        account: str,
        identity: Any,
        holder: str,
        held: bool,
    ) -> Started:
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            known: CustomerView | None = None
            customer_id = deal.customer_id
            if step == STEP_CUSTOMER:
                known = ensure_customer(conn, identity)
                customer_id = known.id
            if not held and not _try_lock(
                conn, account, customer_id, holder, now, now + self.lease
            ):
                raise _NotHeld
            if step == STEP_CUSTOMER:
                earlier = (
                    select(attempts.c.id)
                    .join(deals, deals.c.id == attempts.c.deal_id)
                    .where(attempts.c.step == step, deals.c.customer_id == customer_id)
                )
                if deal.account_id != account or deal.customer_id != customer_id:
                    conn.execute(
                        update(deals)
                        .where(deals.c.id == deal.id, deals.c.locked_by == self.owner)
                        .values(account_id=account, customer_id=customer_id)
                    )
            else:
                earlier = select(attempts.c.id).where(
                    attempts.c.step == step, attempts.c.deal_id == deal.id
                )
            resumed = conn.execute(earlier.limit(1)).first() is not None
            attempt_id = _running_attempt(conn, deal.id, step, attempt_no, now)
        return Started(attempt_id, resumed, known)

    # outcomes ------------------------------------------------------------------------------

    def commit(
        self,
        deal: DealView,
        step: str,
        outcome: Outcome,
        *,
        status: str,
        next_step: str | None,
        attempt_id: int | None,
        attempt_no: int,
        duration: int,
        holder: str | None,
        detail: Mapping[str, Any],
        before_commit: Callable[[], None],
        start_next: bool = False,
    ) -> tuple[DealView, Started | None] | None:
        """Records a step's outcome and moves the deal on; the deal as committed, or None when
        this worker no longer holds it (lease taken over, or cancelled meanwhile). With
        `start_next` (the next step also writes to Stripe and the account's lease is kept) the
        next step's attempt is recorded in the same transaction, before its request."""
        now = self.clock()
        changes: dict[str, Any] = dict(outcome.changes)
        try:
            return self._commit(
                deal,
                step,
                outcome,
                changes,
                status,
                next_step,
                attempt_id,
                attempt_no,
                duration,
                holder,
                detail,
                before_commit,
                now,
                start_next,
            )
        except _NotHeld:
            return None

    def _commit(
        self,
        deal: DealView,
        step: str,
        outcome: Outcome,
        changes: dict[str, Any],
        status: str,
        next_step: str | None,
        attempt_id: int | None,
        attempt_no: int,
        duration: int,
        holder: str | None,
        detail: Mapping[str, Any],
        before_commit: Callable[[], None],
        now: datetime,
        start_next: bool,
    ) -> tuple[DealView, Started | None]:
        with self.db() as session, session.begin():
            conn = session.connection()
            if outcome.ensure_customer is not None:
                changes["customer_id"] = ensure_customer(conn, outcome.ensure_customer).id
            in_flight = next_step is not None and _is_deal_step(next_step)
            values = {
                **changes,
                "status": status,
                "current_step": next_step,
                "attempts": 0,
                "next_attempt_at": None,
                "last_error": None,
                "last_error_code": None,
                "locked_by": self.owner if in_flight else None,
                "locked_until": now + self.lease if in_flight else None,
                "updated_at": now,
            }
            held = conn.execute(
                update(deals)
                .where(
                    deals.c.id == deal.id,
                    deals.c.locked_by == self.owner,
                    deals.c.status != CANCELLED,
                )
                .values(**values)
            ).rowcount
            if held != 1:
                raise _NotHeld
            customer_id = changes.get("customer_id", deal.customer_id)
            if outcome.stripe_customer_id and customer_id is not None:
                conn.execute(
                    update(customers)
                    .where(customers.c.id == customer_id, customers.c.stripe_customer_id.is_(None))
                    .values(stripe_customer_id=outcome.stripe_customer_id, updated_at=now)
                )
            if outcome.grants and customer_id is not None:
                grant_entitlements(
                    conn,
                    deal_id=deal.id,
                    opportunity_id=deal.opportunity_id,
                    customer_id=customer_id,
                    entitlements=outcome.grants,
                    subscription_id=changes.get(
                        "stripe_subscription_id", deal.stripe_subscription_id
                    ),
                )
            dated_to: int | None = customer_id
            for dated in outcome.dated_grants:
                if dated_to is None:
                    break
                grant_entitlements(
                    conn,
                    deal_id=deal.id,
                    opportunity_id=deal.opportunity_id,
                    customer_id=dated_to,
                    entitlements=dated.entitlements,
                    subscription_id=changes.get(
                        "stripe_subscription_id", deal.stripe_subscription_id
                    ),
                    valid_from=dated.valid_from,
                    valid_until=dated.valid_until,
                    phase=dated.phase,
                )
            _finish_attempt(
                conn,
                attempt_id,
                deal.id,
                step,
                attempt_no,
                now,
                outcome="ok",
                duration_ms=duration,
                idempotency_key=outcome.idempotency_key,
                stripe_request_id=outcome.stripe_request_id,
                detail=dict(detail),
            )
            started = (
                _mark(conn, deal.id, next_step, 1, now)
                if start_next and next_step is not None
                else None
            )
            if holder is not None:
                _release_locks(conn, holder)
            before_commit()
        return deal.with_changes({**values, "customer_id": customer_id}), started

    def fail(
        self,
        *,
        deal_id: int,
        step: str,
        attempt_id: int | None,
        attempt_no: int,
        retry_at: datetime | None,
        reason: str,
        code: str,
        duration: int,
        holder: str | None,
        stripe_request_id: str | None,
        idempotency_key: str | None,
        detail: dict[str, Any] | None,
    ) -> bool:
        """Records a failed attempt: `retrying` until `retry_at`, or (None) `needs_attention`
        with an event; gives the leases back. False when this worker no longer held the deal."""
        now = self.clock()
        retrying = retry_at is not None
        with self.db() as session, session.begin():
            conn = session.connection()
            if holder is not None:
                _release_locks(conn, holder)
            values: dict[str, Any] = {
                "status": "retrying" if retrying else "needs_attention",
                "current_step": step,
                "attempts": attempt_no,
                "last_error": reason,
                "last_error_code": code,
                "locked_by": None,
                "locked_until": None,
                "next_attempt_at": retry_at,
                "updated_at": now,
            }
            if not retrying:
                values["writeback_pending"] = deals.c.source != "file"  # tell Salesforce too
            held = conn.execute(
                update(deals)
                .where(
                    deals.c.id == deal_id,
                    deals.c.locked_by == self.owner,
                    deals.c.status != CANCELLED,
                )
                .values(**values)
            ).rowcount
            if held != 1:
                return False  # nothing of this attempt is ours to record; leases go back
            _finish_attempt(
                conn,
                attempt_id,
                deal_id,
                step,
                attempt_no,
                now,
                outcome="retry" if retrying else "failed",
                duration_ms=duration,
                error=reason,
                error_code=code,
                stripe_request_id=stripe_request_id,
                idempotency_key=idempotency_key,
                detail=detail,
            )
            if not retrying:
                conn.execute(
                    insert(events).values(
                        deal_id=deal_id,
                        at=now,
                        kind="needs_attention",
                        message=reason,
                        detail={"step": step, "code": code},
                    )
                )
        return True

    # batches -------------------------------------------------------------------------------

    def settle_batch(
        self,
        rows: list[dict[str, Any]],
        attempt_rows: list[dict[str, Any]],
        *,
        duration: int,
        event_rows: list[dict[str, Any]] | None = None,
        before_commit: Callable[[int], None] | None = None,
    ) -> set[int]:
        """Records a batch step's success for the deals this worker still holds (and were not
        cancelled meanwhile): one guarded bulk UPDATE of the deals (clearing errors and
        leases), one bulk INSERT of their attempts and of their events. Returns their ids."""
        if not rows:
            return set()
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            candidates = select(deals.c.id).where(
                deals.c.id.in_([r["id"] for r in rows]),
                deals.c.locked_by == self.owner,
                deals.c.status != CANCELLED,
            )
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update()
            owned = set(conn.execute(candidates).scalars())
            if not owned:
                return owned
            common = {
                "attempts": 0,
                "next_attempt_at": None,
                "last_error": None,
                "last_error_code": None,
                "locked_by": None,
                "locked_until": None,
                "updated_at": now,
            }
            session.execute(update(Deal), [{**common, **r} for r in rows if r["id"] in owned])
            conn.execute(
                insert(attempts),
                [
                    {
                        "started_at": now,
                        "finished_at": now,
                        "duration_ms": duration,
                        "outcome": "ok",
                        **a,
                    }
                    for a in attempt_rows
                    if a["deal_id"] in owned
                ],
            )
            chosen = [e for e in event_rows or [] if e["deal_id"] in owned]
            if chosen:
                conn.execute(insert(events), chosen)
            if before_commit is not None:
                for deal_id in sorted(owned):
                    before_commit(deal_id)
        return owned

    def retry_later(
        self,
        deal: DealView,
        step: str,
        *,
        at: datetime,
        reason: str,
        code: str,
        duration: int,
        snapshot: dict[str, Any] | None = None,
    ) -> bool:
        """A batch step to try again at `at` for a reason that is not a failure (waiting for a
        data load's line items): the deal is `retrying`, the attempt recorded. `snapshot` (the
        record as just fetched) is kept, so a sweep sees when the record changed since."""
        kept = {} if snapshot is None else {"opportunity": snapshot}
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            held = conn.execute(
                update(deals)
                .where(
                    deals.c.id == deal.id,
                    deals.c.locked_by == self.owner,
                    deals.c.status != CANCELLED,
                )
                .values(
                    status="retrying",
                    current_step=step,
                    next_attempt_at=at,
                    last_error=reason,
                    last_error_code=code,
                    locked_by=None,
                    locked_until=None,
                    updated_at=now,
                    **kept,
                )
            ).rowcount
            if held != 1:
                return False
            _finish_attempt(
                conn,
                None,
                deal.id,
                step,
                deal.attempts + 1,
                now,
                duration_ms=duration,
                outcome="retry",
                error=reason,
                error_code=code,
            )
        return True

    def keep_snapshot(self, deal: DealView, snapshot: dict[str, Any]) -> None:
        """Stores the record as just fetched on a deal this worker holds."""
        with self.db() as session, session.begin():
            session.connection().execute(
                update(deals)
                .where(deals.c.id == deal.id, deals.c.locked_by == self.owner)
                .values(opportunity=snapshot)
            )

    def events_of_kind(self, deal_ids: Collection[int], kinds: Collection[str]) -> set[int]:
        """Which of these deals have a history event of one of these kinds."""
        if not deal_ids:
            return set()
        with self.db() as session:
            found = session.connection().execute(
                select(events.c.deal_id)
                .where(events.c.deal_id.in_(list(deal_ids)), events.c.kind.in_(kinds))
                .distinct()
            )
            return set(found.scalars())

    def latest_event_at(self, deal_id: int, kinds: Collection[str]) -> datetime | None:
        """When the deal's latest history event of one of these kinds happened."""
        with self.db() as session:
            at = (
                session.connection()
                .execute(
                    select(func.max(events.c.at)).where(
                        events.c.deal_id == deal_id, events.c.kind.in_(kinds)
                    )
                )
                .scalar()
            )
        if at is None:
            return None
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    def parked_to_report(self, limit: int) -> list[DealView]:
        """Deals newly parked whose opportunity is still to be told."""
        with self.db() as session:
            rows = session.connection().execute(
                select(*_VIEW)
                .where(deals.c.status == "needs_attention", deals.c.writeback_pending.is_(True))
                .order_by(deals.c.id)
                .limit(limit)
            )
            return [DealView.from_row(dict(row)) for row in rows.mappings()]

    def parked_reported(self, deal_ids: Collection[int]) -> None:
        with self.db() as session, session.begin():
            session.connection().execute(
                update(deals)
                .where(deals.c.id.in_(list(deal_ids)), deals.c.status == "needs_attention")
                .values(writeback_pending=False)
            )

    def ready_for_write_back(self, step: str) -> tuple[int, datetime | None]:
        """How many deals wait for the write-back now, and since when the oldest has."""
        now = self.clock()
        with self.db() as session:
            count, oldest = (
                session.connection()
                .execute(
                    select(func.count(deals.c.id), func.min(deals.c.updated_at)).where(
                        deals.c.current_step == step, _due(now)
                    )
                )
                .one()
            )
        return int(count or 0), oldest

    def renew(self, deal_ids: Collection[int], until: datetime) -> int:
        """Extends this worker's leases on the deals in work (and their account leases)."""
        ids = sorted(deal_ids)
        if not ids:
            return 0
        with self.db() as session, session.begin():
            conn = session.connection()
            result = conn.execute(
                update(deals)
                .where(deals.c.locked_by == self.owner, deals.c.id.in_(ids))
                .values(locked_until=until)
            )
            conn.execute(
                update(locks)
                .where(locks.c.locked_by.in_([f"{self.owner}:{i}" for i in ids]))
                .values(locked_until=until)
            )
        return int(result.rowcount or 0)

    # changes from outside the steps: replay, cancellation, the overdue policy ----------------

    def requeue(
        self,
        deal_id: int,
        *,
        expected_status: str,
        values: Mapping[str, Any],
        events: list[dict[str, Any]],
        claimable: bool = True,
    ) -> bool:
        """Replay's write: the deal's new state (`values`) and its history events, in one
        guarded UPDATE. It holds only while the deal is still in `expected_status` (the one
        replay read), not cancelled, and not leased by a worker: a deal another worker is
        running, or that changed meanwhile, is left as it is (False). A `claimable` deal
        wakes the workers (every replica's, on PostgreSQL) when the transaction commits."""
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            held = conn.execute(
                update(deals)
                .where(
                    deals.c.id == deal_id,
                    deals.c.status == expected_status,
                    deals.c.status != CANCELLED,
                    or_(deals.c.locked_until.is_(None), deals.c.locked_until < now),
                )
                .values(**values, locked_by=None, locked_until=None, updated_at=now)
            ).rowcount
            if held != 1:
                return False
            _add_events(conn, deal_id, events, now)
            if claimable:
                work_added(session)
        return True

    def cancel(
        self,
        deal_id: int,
        reason: str,
        by: str,
        *,
        code: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> bool:
        """Ends the deal: `cancelled`, with an event saying why and by whom, in one guarded
        UPDATE (a deal already cancelled stays as it is: False). A deal a worker is running
        is cancelled too; the worker's commit then finds it cancelled and records nothing."""
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            return _cancel_deal(conn, deal_id, reason, by, now, code=code, detail=detail)

    def cancel_subscription(
        self, subscription_id: str, reason: str, by: str
    ) -> tuple[list[int], int]:
        """The subscription ended: its grants revoked and its deals cancelled, in one
        transaction; the deals newly cancelled and how many grants were revoked."""
        now = self.clock()
        with self.db() as session, session.begin():
            return cancel_subscription_deals(session.connection(), subscription_id, reason, by, now)

    def overdue(self, cutoff: datetime) -> list[tuple[DealView, datetime]]:
        """The deals `claim_overdue` would take now, with their invoices' due dates; reads only
        (a dry run of the overdue policy)."""
        with self.db() as session:
            rows = session.connection().execute(
                select(*_VIEW, deals.c.invoice_due_at).where(_overdue(cutoff, self.clock()))
            )
            found = [
                (DealView.from_row(dict(r)), _utc(r["invoice_due_at"])) for r in rows.mappings()
            ]
        return sorted(found, key=lambda c: (c[1], c[0].id))

    def claim_overdue(
        self, cutoff: datetime, limit: int, *, exclude: Collection[int] = ()
    ) -> list[tuple[DealView, datetime]]:
        """Leases up to `limit` deals whose invoice is open and was due at `cutoff` or before
        (not those in `exclude`), in one statement, as `claim` leases work: a deal leased by
        another replica (or by a worker) is not taken, so exactly one replica acts on an
        invoice; the lease of one that died runs out and the deal is taken again. With their
        invoices' due dates."""
        now = self.clock()
        overdue = _overdue(cutoff, now)
        if exclude:
            overdue = and_(overdue, deals.c.id.not_in(list(exclude)))
        with self.db() as session, session.begin():
            conn = session.connection()
            candidates = select(deals.c.id).where(overdue).order_by(deals.c.id).limit(limit)
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            # The candidates first, then the guarded UPDATE of those: as one statement
            # (`id IN (subquery ... LIMIT ... SKIP LOCKED)`) PostgreSQL may run the subquery
            # more than once and lease more than `limit` deals.
            ids = list(conn.execute(candidates).scalars())
            if not ids:
                return []
            rows = conn.execute(
                update(deals)
                .where(deals.c.id.in_(ids), overdue)
                .values(locked_by=self.owner, locked_until=now + self.lease)
                .returning(*_VIEW, deals.c.invoice_due_at)
            ).mappings()
            claimed = [(DealView.from_row(dict(r)), _utc(r["invoice_due_at"])) for r in rows]
        return sorted(claimed, key=lambda c: (c[1], c[0].id))

    def cancel_overdue(self, deal: DealView, reason: str, by: str) -> tuple[bool, int]:
        """The overdue policy's decision on a deal it holds (`claim_overdue`), after Stripe
        cancelled the subscription: the grants revoked, the deal cancelled with the reason
        and its event, the lease given back, in one transaction. (False, 0) when the lease
        was lost; a deal cancelled meanwhile (the subscription's webhook) stays cancelled,
        and gets the reason."""
        now = self.clock()
        subscription_id = deal.stripe_subscription_id or ""
        with self.db() as session, session.begin():
            conn = session.connection()
            mine = conn.execute(
                update(deals)
                .where(deals.c.id == deal.id, deals.c.locked_by == self.owner)
                .values(
                    locked_by=None,
                    locked_until=None,
                    last_error=f"Subscription cancelled: {reason}.",
                    last_error_code="invoice_overdue",
                )
            ).rowcount
            if mine != 1:
                return False, 0
            _, revoked = cancel_subscription_deals(conn, subscription_id, reason, by, now)
        return True, revoked

    def invoice_found(
        self,
        deal: DealView,
        *,
        status: str,
        due_at: datetime | None,
        stored_due_at: datetime | None,
        how: str,
    ) -> bool:
        """What the overdue policy read from Stripe about a deal it holds whose invoice is not
        overdue after all: its status (paid, void...) with an event, or its new due date; the
        lease given back. False when the lease was lost."""
        now = self.clock()
        invoice_id = deal.stripe_invoice_id
        values: dict[str, Any] = {"locked_by": None, "locked_until": None}
        changed_status = status != "open" and status != deal.invoice_status
        if changed_status:
            values.update(invoice_status=status, updated_at=now)
        elif status == "open" and due_at is not None and due_at != stored_due_at:
            values["invoice_due_at"] = due_at
        with self.db() as session, session.begin():
            conn = session.connection()
            held = conn.execute(
                update(deals)
                .where(deals.c.id == deal.id, deals.c.locked_by == self.owner)
                .values(**values)
            ).rowcount
            if held != 1:
                return False
            if changed_status:
                _add_events(
                    conn,
                    deal.id,
                    [
                        {
                            "kind": f"invoice_{status}",
                            "message": f"Invoice {invoice_id} is {status} ({how}).",
                            "detail": {
                                "invoice_id": invoice_id,
                                "status": status,
                                "previous_status": deal.invoice_status,
                            },
                        }
                    ],
                    now,
                )
        return True

    def cancellations_written_back(self, results: Mapping[int, str | None]) -> None:
        """The Opportunity told of its deal's cancellation (None) or why it could not be
        (an event on the deal)."""
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            told = [deal_id for deal_id, error in results.items() if error is None]
            if told:
                conn.execute(update(deals).where(deals.c.id.in_(told)).values(written_back_at=now))
            for deal_id, error in results.items():
                if error is not None:
                    _add_events(
                        conn,
                        deal_id,
                        [
                            {
                                "kind": "write_back_failed",
                                "message": "Writing the cancellation to the Opportunity "
                                f"failed: {error}",
                                "detail": {"error": error},
                            }
                        ],
                        now,
                    )


def _overdue(cutoff: datetime, now: datetime) -> Any:
    """Deals whose invoice is open and was due at `cutoff` or before, not leased now."""
    return and_(
        deals.c.invoice_status == "open",
        deals.c.stripe_invoice_id.is_not(None),
        deals.c.stripe_subscription_id.is_not(None),
        deals.c.status != CANCELLED,
        deals.c.invoice_due_at.is_not(None),
        deals.c.invoice_due_at <= cutoff,
        or_(deals.c.locked_until.is_(None), deals.c.locked_until < now),
    )


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _add_events(conn: Connection, deal_id: int, rows: list[dict[str, Any]], now: datetime) -> None:
    if rows:
        conn.execute(insert(events), [{"at": now, **row, "deal_id": deal_id} for row in rows])


def _cancel_deal(
    conn: Connection,
    deal_id: int,
    reason: str,
    by: str,
    now: datetime,
    *,
    code: str | None = None,
    detail: Mapping[str, Any] | None = None,
    message: str | None = None,
    kind: str = "cancelled",
) -> bool:
    previous = conn.execute(select(deals.c.status).where(deals.c.id == deal_id)).scalar()
    if previous is None or previous == CANCELLED:
        return False
    values: dict[str, Any] = {"status": CANCELLED, "updated_at": now}
    if code is not None:
        values.update(last_error=reason, last_error_code=code)
    held = conn.execute(
        update(deals).where(deals.c.id == deal_id, deals.c.status == previous).values(**values)
    ).rowcount
    if held != 1:
        return False  # changed in between (cancelled by someone else, or moved on): not ours
    _add_events(
        conn,
        deal_id,
        [
            {
                "kind": kind,
                "message": message or f"Cancelled ({by}): {reason}.",
                "detail": {
                    "reason": reason,
                    "by": by,
                    "previous_status": previous,
                    **(detail or {}),
                },
            }
        ],
        now,
    )
    return True


def cancel_subscription_deals(
    conn: Connection, subscription_id: str, reason: str, by: str, now: datetime
) -> tuple[list[int], int]:
    """Revokes the subscription's active grants and cancels its deals (each with its event),
    in the caller's transaction; idempotent. The deals newly cancelled, and how many grants
    were revoked."""
    revoked = int(
        conn.execute(
            update(grants)
            .where(grants.c.stripe_subscription_id == subscription_id, grants.c.active.is_(True))
            .values(active=False, revoked_at=now, revoked_reason=reason)
        ).rowcount
        or 0
    )
    log.info(
        "entitlements_revoked",
        stripe_subscription_id=subscription_id,
        reason=reason,
        revoked=revoked,
    )
    deal_ids = conn.execute(
        select(deals.c.id)
        .where(deals.c.stripe_subscription_id == subscription_id, deals.c.status != CANCELLED)
        .order_by(deals.c.id)
    ).scalars()
    cancelled = [
        deal_id
        for deal_id in list(deal_ids)
        if _cancel_deal(
            conn,
            deal_id,
            reason,
            by,
            now,
            kind="subscription_cancelled",
            message=f"Subscription {subscription_id} ended ({by}): {reason}. "
            f"{revoked} entitlement grant(s) revoked.",
            detail={"subscription_id": subscription_id, "grants_revoked": revoked},
        )
    ]
    return cancelled, revoked


def _is_deal_step(step: str) -> bool:
    from sf_bridge.provisioning.states import DEAL_STEPS

    return step in DEAL_STEPS


def ensure_customer(conn: Connection, identity: Any) -> CustomerView:
    """The customers row of the identity's customer key, made (for its account) unless it
    exists (concurrent-safe)."""
    now = utcnow()
    conn.execute(
        _insert(conn, customers)
        .values(
            customer_key=identity.customer_key,
            sf_account_id=identity.account_id,
            name=identity.name[:255],
            email=identity.email,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing(index_elements=["customer_key"])
    )
    row = (
        conn.execute(
            select(
                customers.c.id,
                customers.c.customer_key,
                customers.c.sf_account_id,
                customers.c.name,
                customers.c.email,
                customers.c.stripe_customer_id,
            ).where(customers.c.customer_key == identity.customer_key)
        )
        .mappings()
        .one()
    )
    return CustomerView(**row)


def _try_lock(
    conn: Connection,
    account_id: str,
    customer_id: int | None,
    holder: str,
    now: datetime,
    until: datetime,
) -> bool:
    names = [f"account:{account_id}"]
    if customer_id is not None:
        names.append(f"customer:{customer_id}")

    def take() -> int:
        return int(
            conn.execute(
                update(locks)
                .where(
                    locks.c.name.in_(names),
                    or_(
                        locks.c.locked_by.is_(None),
                        locks.c.locked_by == holder,
                        locks.c.locked_until < now,
                    ),
                )
                .values(locked_by=holder, locked_until=until)
            ).rowcount
            or 0
        )

    if take() == len(names):
        return True
    # A first deal of the account or customer (its lease rows are made once), or a busy one.
    known = set(conn.execute(select(locks.c.name).where(locks.c.name.in_(names))).scalars())
    if len(known) == len(names):
        return False
    conn.execute(
        _insert(conn, locks)
        .values([{"name": name} for name in names if name not in known])
        .on_conflict_do_nothing(index_elements=["name"])
    )
    return take() == len(names)


def _running_attempt(
    conn: Connection, deal_id: int, step: str, attempt_no: int, now: datetime
) -> int:
    return int(
        conn.execute(
            insert(attempts)
            .values(
                deal_id=deal_id, step=step, attempt=attempt_no, started_at=now, outcome="running"
            )
            .returning(attempts.c.id)
        ).scalar_one()
    )


def _mark(conn: Connection, deal_id: int, step: str, attempt_no: int, now: datetime) -> Started:
    """Records the attempt of a Stripe step of a deal whose account's lease is held; resumed
    when an earlier attempt of the step may have reached Stripe."""
    earlier = select(attempts.c.id).where(attempts.c.step == step, attempts.c.deal_id == deal_id)
    resumed = conn.execute(earlier.limit(1)).first() is not None
    return Started(_running_attempt(conn, deal_id, step, attempt_no, now), resumed)


def _release_locks(conn: Connection, holder: str) -> None:
    conn.execute(
        update(locks).where(locks.c.locked_by == holder).values(locked_by=None, locked_until=None)
    )


def _finish_attempt(
    conn: Connection,
    attempt_id: int | None,
    deal_id: int,
    step: str,
    attempt_no: int,
    now: datetime,
    **values: Any,
) -> None:
    """Completes the attempt recorded at the start (one UPDATE), or records it whole."""
    if attempt_id is not None:
        conn.execute(
            update(attempts).where(attempts.c.id == attempt_id).values(finished_at=now, **values)
        )
        return
    conn.execute(
        insert(attempts).values(
            deal_id=deal_id,
            step=step,
            attempt=attempt_no,
            started_at=now,
            finished_at=now,
            **values,
        )
    )


__all__ = ["DealStore", "Started", "cancel_subscription_deals", "ensure_customer"]
