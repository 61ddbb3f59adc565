"""The deal store: every write of a per-deal step's state, in SQLAlchemy Core.

    claim   one UPDATE ... RETURNING leases a batch of due deals and returns their views; a
            deal about to write to Stripe is not claimed while another deal of its account or
            of its customers row holds that account's lease
    start   before a deal's first Stripe request: one guarded UPDATE of the deal takes the
            account's lease (`account_until`, only if no other deal holds it) and marks the
            step as requested (`stripe_requested`; the customers row's `create_requested_at`
            for the customer step), committed *before* the request: a later attempt then
            knows an earlier one may have reached Stripe, and searches before creating
    commit  a step's outcome: one guarded UPDATE of the deal (this worker's lease, not
            cancelled; the row count says whether it held), the customers link, the grants
            and the attempt row, in one transaction; a lost lease commits nothing. When the
            next step writes to Stripe too, the account's lease is kept and the next step
            marked in the same UPDATE; otherwise the account's lease is given back by it
    fail    a failed attempt: retrying or needs_attention and the account's lease given back,
            in one transaction

The account's lease is a column of the deal row, so it is renewed with the deal's lease and
runs out with it when a worker dies: there is no lease table and no waiting for a lock.

SQLite and PostgreSQL differ here only in `_insert`, in the `FOR UPDATE SKIP LOCKED` of the
claim's subquery (replicas never wait on each other's candidates on PostgreSQL; SQLite has
one writer, `BEGIN IMMEDIATE`, and the claim repeats its conditions in the UPDATE) and in the
start's transaction-scoped advisory locks on PostgreSQL (account and customers row): two
replicas starting deals of one account are serialised there, so the second sees the first's
lease once committed (READ COMMITTED takes a new snapshot per statement); SQLite's single
writer serialises them already.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, case, exists, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import (
    CANCELLED,
    Customer,
    Deal,
    DealEvent,
    StepAttempt,
    utcnow,
)
from sf_bridge.entitlements.ledger import grant_entitlements
from sf_bridge.provisioning.dbscope import SessionScope
from sf_bridge.provisioning.outcome import CustomerView, DealView, Outcome
from sf_bridge.provisioning.states import ACCOUNT_STEPS, SETTLED, STEP_CUSTOMER

deals: Table = Deal.__table__  # type: ignore[assignment]
attempts: Table = StepAttempt.__table__  # type: ignore[assignment]
customers: Table = Customer.__table__  # type: ignore[assignment]
events: Table = DealEvent.__table__  # type: ignore[assignment]

_VIEW = [deals.c[name] for name in DealView.columns()]


class _NotHeld(Exception):
    """Rolls the transaction back: the deal or its account is not this worker's."""


@dataclass(frozen=True)
class Started:
    """A Stripe step under way: whether an earlier attempt may have reached Stripe, and the
    deal's customers row (customer step)."""

    resumed: bool
    customer: CustomerView | None = None
    deal: DealView | None = None  # the deal as the start left it


def _insert(conn: Connection, table: Any) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _due(now: datetime) -> Any:
    return and_(
        deals.c.status.not_in(SETTLED),
        or_(deals.c.next_attempt_at.is_(None), deals.c.next_attempt_at <= now),
        or_(deals.c.locked_until.is_(None), deals.c.locked_until < now),
    )


def _account_held(deal_id: Any, account: Any, customer_id: Any, now: datetime) -> Any:
    """Another live deal holds the account's lease of this account or customers row."""
    other = deals.alias("holder")
    return exists().where(
        other.c.id != deal_id,
        or_(other.c.account_id == account, other.c.customer_id == customer_id),
        other.c.account_until >= now,
        other.c.locked_by.is_not(None),
        other.c.locked_until >= now,
        other.c.status.not_in(SETTLED),
    )


def _claimable(now: datetime) -> Any:
    """Not about to write to Stripe, or its account and customers row are free."""
    return or_(
        deals.c.current_step.not_in(ACCOUNT_STEPS),
        ~_account_held(deals.c.id, deals.c.account_id, deals.c.customer_id, now),
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
                .where(deals.c.current_step.in_(list(steps)), _due(now), _claimable(now))
                .order_by(deals.c.id)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True, of=deals)
            rows = conn.execute(
                update(deals)
                .where(
                    deals.c.id.in_(candidates.scalar_subquery()),
                    deals.c.current_step.in_(list(steps)),
                    _due(now),
                    _claimable(now),
                )
                .values(locked_by=self.owner, locked_until=now + self.lease, account_until=None)
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

    def release(self, deal_id: int) -> None:
        """Gives the deal's lease back, and its account's lease."""
        with self.db() as session, session.begin():
            session.connection().execute(
                update(deals)
                .where(deals.c.id == deal_id, deals.c.locked_by == self.owner)
                .values(locked_by=None, locked_until=None, account_until=None)
            )

    def reschedule(self, deal_id: int, delay: timedelta) -> bool:
        """The deal's account is busy: give the deal back, to be claimed after `delay`. False
        when this worker no longer held it."""
        with self.db() as session, session.begin():
            held = (
                session.connection()
                .execute(
                    update(deals)
                    .where(
                        deals.c.id == deal_id,
                        deals.c.locked_by == self.owner,
                        deals.c.status != CANCELLED,
                    )
                    .values(
                        next_attempt_at=self.clock() + delay,
                        locked_by=None,
                        locked_until=None,
                        account_until=None,
                    )
                )
                .rowcount
            )
        return held == 1

    # a Stripe step -------------------------------------------------------------------------

    def start(
        self,
        deal: DealView,
        step: str,
        *,
        account: str,
        identity: Any,
        changes: Mapping[str, Any] | None = None,
        prior: tuple[str, int, int, Mapping[str, Any]] | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> Started | None:
        """Before the deal's first Stripe request of this run: takes the account's lease
        (unless another deal of the account or of its customers row holds it) and marks
        `step` as requested, in one guarded UPDATE, with `changes` (the outcome of a pure
        step that rides in this start) written with it, and that step's attempt row
        (`prior`: step, attempt, duration in ms, detail). None, writing nothing, when the
        account is busy or the deal is no longer this worker's."""
        try:
            return self._start(
                deal, step, account, identity, dict(changes or {}), prior, before_commit
            )
        except _NotHeld:
            return None

    def _start(
        self,
        deal: DealView,
        step: str,
        account: str,
        identity: Any,
        changes: dict[str, Any],
        prior: tuple[str, int, int, Mapping[str, Any]] | None,
        before_commit: Callable[[], None] | None,
    ) -> Started:
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            known: CustomerView | None = None
            customer_id = deal.customer_id
            resumed = deal.requested(step)
            if step == STEP_CUSTOMER:
                known, earlier = _customer_to_request(conn, identity, now)
                customer_id = known.id
                resumed = resumed or earlier
            if conn.dialect.name == "postgresql":
                names = sorted({f"account:{account}", f"customer:{customer_id}"})
                conn.execute(select(*[func.pg_advisory_xact_lock(func.hashtext(n)) for n in names]))
            values = {
                **changes,
                "account_id": account,
                "customer_id": customer_id,
                "account_until": now + self.lease,
                "locked_until": now + self.lease,
                "stripe_requested": deal.with_requested(step),
            }
            taken = conn.execute(
                update(deals)
                .where(
                    deals.c.id == deal.id,
                    deals.c.locked_by == self.owner,
                    deals.c.status != CANCELLED,
                    ~_account_held(deal.id, account, customer_id, now),
                )
                .values(**values)
            ).rowcount
            if taken != 1:
                raise _NotHeld
            if prior is not None:
                done, attempt_no, duration, detail = prior
                _finish_attempt(
                    conn,
                    deal.id,
                    done,
                    attempt_no,
                    now,
                    outcome="ok",
                    duration_ms=duration,
                    detail=dict(detail),
                )
            if before_commit is not None:
                before_commit()
        return Started(resumed, known, deal.with_changes(values))

    # outcomes ------------------------------------------------------------------------------

    def commit(
        self,
        deal: DealView,
        step: str,
        outcome: Outcome,
        *,
        status: str,
        next_step: str | None,
        attempt_no: int,
        duration: int,
        detail: Mapping[str, Any],
        before_commit: Callable[[], None],
        start_next: bool = False,
        also: tuple[tuple[str, Outcome, str, Mapping[str, Any]], ...] = (),
    ) -> tuple[DealView, Started | None] | None:
        """Records a step's outcome and its attempt row and moves the deal on; the deal as
        committed, or None when this worker no longer holds it (lease taken over, or
        cancelled meanwhile). With `start_next` (the next step also writes to Stripe) the
        account's lease is kept and the next step marked as requested in the same UPDATE,
        before its request; otherwise the account's lease is given back. `also`: the outcomes
        of pure steps that ran after this one (step, outcome, status, detail), committed with
        it; `next_step` is then the step after the last of them."""
        now = self.clock()
        try:
            return self._commit(
                deal,
                [(step, outcome, status, detail), *also],
                next_step,
                attempt_no,
                duration,
                before_commit,
                now,
                start_next,
            )
        except _NotHeld:
            return None

    def _commit(
        self,
        deal: DealView,
        results: list[tuple[str, Outcome, str, Mapping[str, Any]]],
        next_step: str | None,
        attempt_no: int,
        duration: int,
        before_commit: Callable[[], None],
        now: datetime,
        start_next: bool,
    ) -> tuple[DealView, Started | None]:
        with self.db() as session, session.begin():
            conn = session.connection()
            changes: dict[str, Any] = {}
            for _step, outcome, _status, _detail in results:
                changes.update(outcome.changes)
                if outcome.ensure_customer is not None:
                    changes["customer_id"] = ensure_customer(conn, outcome.ensure_customer).id
            in_flight = next_step is not None and _is_deal_step(next_step)
            values = {
                **changes,
                "status": results[-1][2],
                "current_step": next_step,
                "attempts": 0,
                "next_attempt_at": None,
                "last_error": None,
                "last_error_code": None,
                "locked_by": self.owner if in_flight else None,
                "locked_until": now + self.lease if in_flight else None,
                "account_until": now + self.lease if start_next else None,
                "updated_at": now,
            }
            if start_next and next_step is not None:
                values["stripe_requested"] = deal.with_requested(next_step)
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
            started_at = now - timedelta(milliseconds=duration)
            attempt_rows: list[dict[str, Any]] = []
            for step, outcome, _status, detail in results:
                if outcome.stripe_customer_id and customer_id is not None:
                    conn.execute(
                        update(customers)
                        .where(
                            customers.c.id == customer_id,
                            customers.c.stripe_customer_id.is_(None),
                        )
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
                attempt_rows.append(
                    {
                        "deal_id": deal.id,
                        "step": step,
                        "attempt": attempt_no if not attempt_rows else 1,
                        "started_at": started_at,
                        "finished_at": now,
                        "outcome": "ok",
                        "duration_ms": duration if not attempt_rows else 0,
                        "idempotency_key": outcome.idempotency_key,
                        "stripe_request_id": outcome.stripe_request_id,
                        "detail": dict(detail),
                        "error": None,
                        "error_code": None,
                    }
                )
            conn.execute(insert(attempts), attempt_rows)
            started = (
                Started(deal.requested(next_step)) if start_next and next_step is not None else None
            )
            before_commit()
        return deal.with_changes({**values, "customer_id": customer_id}), started

    def fail(
        self,
        *,
        deal_id: int,
        step: str,
        attempt_no: int,
        retry_at: datetime | None,
        reason: str,
        code: str,
        duration: int,
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
            values: dict[str, Any] = {
                "status": "retrying" if retrying else "needs_attention",
                "current_step": step,
                "attempts": attempt_no,
                "last_error": reason,
                "last_error_code": code,
                "locked_by": None,
                "locked_until": None,
                "account_until": None,
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
                return False  # nothing of this attempt is ours to record
            _finish_attempt(
                conn,
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
        """Extends this worker's leases on the deals in work (and the account's lease of the
        ones that hold it)."""
        ids = sorted(deal_ids)
        if not ids:
            return 0
        with self.db() as session, session.begin():
            result = session.connection().execute(
                update(deals)
                .where(deals.c.locked_by == self.owner, deals.c.id.in_(ids))
                .values(
                    locked_until=until,
                    account_until=case((deals.c.account_until.is_(None), None), else_=until),
                )
            )
        return int(result.rowcount or 0)


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
                customers.c.create_requested_at,
            ).where(customers.c.customer_key == identity.customer_key)
        )
        .mappings()
        .one()
    )
    return CustomerView(**row)


_CUSTOMER_VIEW = [
    customers.c.id,
    customers.c.customer_key,
    customers.c.sf_account_id,
    customers.c.name,
    customers.c.email,
    customers.c.stripe_customer_id,
    customers.c.create_requested_at,
]


def _customer_to_request(
    conn: Connection, identity: Any, now: datetime
) -> tuple[CustomerView, bool]:
    """The customers row of the identity's customer key, marked as about to be requested
    from Stripe (made so when new: one statement); and whether a request of it may have gone
    out before (another deal of the customer, or an earlier attempt)."""
    made = (
        conn.execute(
            _insert(conn, customers)
            .values(
                customer_key=identity.customer_key,
                sf_account_id=identity.account_id,
                name=identity.name[:255],
                email=identity.email,
                create_requested_at=now,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["customer_key"])
            .returning(*_CUSTOMER_VIEW)
        )
        .mappings()
        .first()
    )
    if made is not None:
        return CustomerView(**made), False
    row = (
        conn.execute(
            select(*_CUSTOMER_VIEW).where(customers.c.customer_key == identity.customer_key)
        )
        .mappings()
        .one()
    )
    known = CustomerView(**row)
    if known.create_requested_at is None and known.stripe_customer_id is None:
        conn.execute(
            update(customers).where(customers.c.id == known.id).values(create_requested_at=now)
        )
    return known, known.create_requested_at is not None


def _finish_attempt(
    conn: Connection,
    deal_id: int,
    step: str,
    attempt_no: int,
    now: datetime,
    **values: Any,
) -> None:
    """Records an attempt whole, when it is over."""
    conn.execute(
        insert(attempts).values(
            deal_id=deal_id,
            step=step,
            attempt=attempt_no,
            started_at=now - timedelta(milliseconds=values.get("duration_ms") or 0),
            finished_at=now,
            **values,
        )
    )


__all__ = ["DealStore", "Started", "ensure_customer"]
