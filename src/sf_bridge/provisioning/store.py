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

import heapq
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.port import REQUEST_TIMEOUT_SECONDS
from sf_bridge.db.account_facts import claimed_facts, facts_columns
from sf_bridge.db.models import (
    CANCELLED,
    CANCELLING,
    UNWON,
    Customer,
    Deal,
    DealEvent,
    EntitlementGrant,
    StepAttempt,
    utcnow,
)
from sf_bridge.entitlements.ledger import grant_entitlements, replace_grants
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.amendment import LiveSubscription, is_change
from sf_bridge.provisioning.dbscope import SessionScope
from sf_bridge.provisioning.group_commit import Batch, GroupCommit, NotHeld, Work
from sf_bridge.provisioning.outcome import CustomerView, DealView, Outcome
from sf_bridge.provisioning.payment import AWAITING_PAYMENT, PAID
from sf_bridge.provisioning.states import (
    ACCOUNT_STEPS,
    SCHEDULED,
    SETTLED,
    STATUS_BEFORE,
    STEP_CUSTOMER,
    STEP_MAP,
    STEP_WRITE_BACK,
)
from sf_bridge.provisioning.wakeup import (
    CANCELLED as REPORT_CANCELLED,
)
from sf_bridge.provisioning.wakeup import (
    PARKED,
    PAYMENTS,
    SCHEDULES,
    WRITE_BACK,
    reports_changed,
    work_added,
)

deals: Table = Deal.__table__  # type: ignore[assignment]
attempts: Table = StepAttempt.__table__  # type: ignore[assignment]
customers: Table = Customer.__table__  # type: ignore[assignment]
events: Table = DealEvent.__table__  # type: ignore[assignment]
grants: Table = EntitlementGrant.__table__  # type: ignore[assignment]

_VIEW = [deals.c[name] for name in DealView.columns()]
log = get_logger(__name__)


# The deal or its account is not this worker's: the unit of work writes nothing.
_NotHeld = NotHeld


@dataclass(frozen=True)
class Started:
    """A Stripe step under way: whether an earlier attempt may have reached Stripe, and the
    deal's customers row (customer step)."""

    resumed: bool
    customer: CustomerView | None = None
    deal: DealView | None = None  # the deal as the start left it


def _insert(conn: Connection, table: Any) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def _due(now: Any) -> Any:
    return and_(
        deals.c.status.not_in(SETTLED),
        or_(deals.c.next_attempt_at.is_(None), deals.c.next_attempt_at <= now),
        or_(deals.c.locked_until.is_(None), deals.c.locked_until < now),
    )


def _account_held(deal_id: Any, account: Any, customer_id: Any, now: Any) -> Any:
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


# The per-deal statements, built once: each run passes its values as parameters (the deal
# columns to set by their names, the guard's values as `b_*`), so SQLAlchemy finds the
# compiled form in its cache without building and hashing a statement per deal.
_GUARD = (
    deals.c.id == bindparam("b_id"),
    deals.c.locked_by == bindparam("b_owner"),
    deals.c.status != CANCELLED,
)
_START = update(deals).where(
    *_GUARD,
    ~_account_held(
        bindparam("b_id"), bindparam("b_account"), bindparam("b_customer"), bindparam("b_now")
    ),
)
_COMMIT = update(deals).where(*_GUARD)
_PARK = _COMMIT.values(writeback_pending=deals.c.source != "file")  # Salesforce is told too
_CUSTOMER_STRIPE_ID = update(customers).where(
    customers.c.id == bindparam("b_id"), customers.c.stripe_customer_id.is_(None)
)
_CUSTOMER_MARK = update(customers).where(customers.c.id == bindparam("b_id"))


_CLAIMS: dict[str, Any] = {}


def _claim_statement(dialect: str) -> Any:
    """The claim, built once a dialect (its subquery and the account check are the costliest
    statement of the worker to build): due deals at one of `b_steps`, `b_limit` of them."""
    statement = _CLAIMS.get(dialect)
    if statement is None:
        now: Any = bindparam("b_now")
        steps: Any = bindparam("b_steps", expanding=True)
        candidates = (
            select(deals.c.id)
            .where(deals.c.current_step.in_(steps), _due(now), _claimable(now))
            .order_by(deals.c.id)
            .limit(bindparam("b_limit"))
        )
        if dialect == "postgresql":
            candidates = candidates.with_for_update(skip_locked=True, of=deals)
        statement = _CLAIMS[dialect] = (
            update(deals)
            .where(
                deals.c.id.in_(candidates.scalar_subquery()),
                deals.c.current_step.in_(steps),
                _due(now),
                _claimable(now),
            )
            # the account's facts for the deals about to be mapped (sf_bridge.db.account_facts)
            .returning(*_VIEW, *facts_columns(deals, f"{deals.name}.current_step = '{STEP_MAP}'"))
        )
    return statement


def _claimed_view(row: Any) -> DealView:
    view = DealView.from_row(row)
    if view.current_step != STEP_MAP:
        return view
    return replace(view, account_facts=claimed_facts(row, view.opportunity))


def _guard(deal_id: int, owner: str) -> dict[str, Any]:
    return {"b_id": deal_id, "b_owner": owner}


def _claimable(now: Any) -> Any:
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
        self.group = GroupCommit(self.db, attempts, events)
        # When the deals this store gave back become claimable again (retries, reschedules,
        # releases): the worker claims the rare steps only when something can be due.
        self._retries: list[datetime] = []
        self._retries_lock = threading.Lock()

    def _retry_at(self, at: datetime) -> None:
        with self._retries_lock:
            if len(self._retries) < 10_000:
                heapq.heappush(self._retries, at if at.tzinfo else at.replace(tzinfo=UTC))

    def retries_due(self, now: datetime) -> bool:
        """Whether a deal this store gave back has become claimable since last asked."""
        due = False
        with self._retries_lock:
            while self._retries and self._retries[0] <= now:
                heapq.heappop(self._retries)
                due = True
        return due

    def flush(self) -> None:
        """Commits the deferred outcomes (`commit(..., defer=True)`) now."""
        self.group.flush()

    # claims --------------------------------------------------------------------------------

    def claim(self, steps: Collection[str], limit: int) -> list[DealView]:
        """Leases up to `limit` due deals whose next step is one of `steps`, oldest first, in
        one statement; returns them as views."""
        now = self.clock()
        with self.db.transaction() as conn:
            rows = conn.execute(
                _claim_statement(conn.dialect.name),
                {
                    "locked_by": self.owner,
                    "locked_until": now + self.lease,
                    "account_until": None,
                    "b_now": now,
                    "b_steps": list(steps),
                    "b_limit": limit,
                },
            ).mappings()
            views = [_claimed_view(row) for row in rows]
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
        self._retry_at(self.clock())

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
        self._retry_at(self.clock() + delay)
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
        values = dict(changes or {})

        def run(conn: Connection, batch: Batch) -> Started:
            return self._start(conn, batch, deal, step, account, identity, values, prior)

        started: Started | None = self.group.run(Work(run, before_commit=before_commit))
        return started

    def _start(
        self,
        conn: Connection,
        batch: Batch,
        deal: DealView,
        step: str,
        account: str,
        identity: Any,
        changes: dict[str, Any],
        prior: tuple[str, int, int, Mapping[str, Any]] | None,
    ) -> Started:
        now = self.clock()
        known: CustomerView | None = None
        customer_id = deal.customer_id
        resumed = deal.requested(step)
        if step == STEP_CUSTOMER:
            known, earlier = _customer_to_request(conn, identity, now)
            customer_id = known.id
            resumed = resumed or earlier
        if conn.dialect.name == "postgresql":
            names = sorted({f"account:{account}", f"customer:{customer_id}"})
            conn.execute(_ADVISORY_LOCKS[len(names)], {f"n{i}": n for i, n in enumerate(names)})
        values = {
            **changes,
            "account_id": account,
            "customer_id": customer_id,
            "account_until": now + self.lease,
            "locked_until": now + self.lease,
            "stripe_requested": deal.with_requested(step),
        }
        taken = conn.execute(
            _START,
            {
                **values,
                **_guard(deal.id, self.owner),
                "b_account": account,
                "b_customer": customer_id,
                "b_now": now,
            },
        ).rowcount
        if taken != 1:
            raise _NotHeld
        if prior is not None:
            done, attempt_no, duration, detail = prior
            batch.later_rows.append(
                _attempt_row(
                    deal.id,
                    done,
                    attempt_no,
                    now,
                    outcome="ok",
                    duration_ms=duration,
                    detail=dict(detail),
                )
            )
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
        defer: bool = False,
        after_commit: Callable[[], None] | None = None,
    ) -> tuple[DealView, Started | None] | None:
        """Records a step's outcome and its attempt row and moves the deal on; the deal as
        committed, or None when this worker no longer holds it (lease taken over, or
        cancelled meanwhile). With `start_next` (the next step also writes to Stripe) the
        account's lease is kept and the next step marked as requested in the same UPDATE,
        before its request; otherwise the account's lease is given back. `also`: the outcomes
        of pure steps that ran after this one (step, outcome, status, detail), committed with
        it; `next_step` is then the step after the last of them.

        `defer` (only when the deal leaves the per-deal steps and nothing is requested from
        Stripe after it): the outcome rides in this store's next transaction or `flush()`
        (`sf_bridge.provisioning.group_commit`); the deal as it will be committed is returned
        at once, and `after_commit` runs once it is (not at all when the lease was lost)."""
        now = self.clock()
        results = [(step, outcome, status, detail), *also]
        values = self._commit_values(deal, results, next_step, now, start_next)

        def run(conn: Connection, batch: Batch) -> tuple[DealView, Started | None]:
            return self._commit(conn, batch, deal, results, values, attempt_no, duration, now)

        unit = Work(
            run,
            savepoint=any(r[1].ensure_customer is not None for r in results),
            before_commit=before_commit,
        )
        if defer and not start_next and (next_step is None or not _is_deal_step(next_step)):
            unit.after_commit = (lambda _r: after_commit()) if after_commit else _nothing
            self.group.defer(unit)
            return deal.with_changes(values), None
        committed: tuple[DealView, Started | None] | None = self.group.run(unit)
        if committed is not None and after_commit is not None:
            after_commit()
        return committed

    def _commit_values(
        self,
        deal: DealView,
        results: list[tuple[str, Outcome, str, Mapping[str, Any]]],
        next_step: str | None,
        now: datetime,
        start_next: bool,
    ) -> dict[str, Any]:
        in_flight = next_step is not None and _is_deal_step(next_step)
        values: dict[str, Any] = {}
        for _step, outcome, _status, _detail in results:
            values.update(outcome.changes)
        values.update(
            status=results[-1][2],
            current_step=next_step,
            attempts=0,
            next_attempt_at=None,
            last_error=None,
            last_error_code=None,
            locked_by=self.owner if in_flight else None,
            locked_until=now + self.lease if in_flight else None,
            account_until=now + self.lease if start_next else None,
            updated_at=now,
        )
        if start_next and next_step is not None:
            values["stripe_requested"] = deal.with_requested(next_step)
        return values

    def _commit(
        self,
        conn: Connection,
        batch: Batch,
        deal: DealView,
        results: list[tuple[str, Outcome, str, Mapping[str, Any]]],
        values: dict[str, Any],
        attempt_no: int,
        duration: int,
        now: datetime,
    ) -> tuple[DealView, Started | None]:
        values = dict(values)
        for _step, outcome, _status, _detail in results:
            if outcome.ensure_customer is not None:
                values["customer_id"] = ensure_customer(conn, outcome.ensure_customer).id
        held = conn.execute(_COMMIT, {**values, **_guard(deal.id, self.owner)}).rowcount
        if held != 1:
            raise _NotHeld
        customer_id = values.get("customer_id", deal.customer_id)
        started_at = now - timedelta(milliseconds=duration)
        first = True
        next_step = values["current_step"]
        if next_step == STEP_WRITE_BACK:
            batch.report(WRITE_BACK)  # the worker's write-back looks once it is committed
        start_next = values["account_until"] is not None
        history = batch.later_rows if start_next else batch.attempt_rows
        for step, outcome, _status, detail in results:
            if outcome.stripe_customer_id and customer_id is not None:
                conn.execute(
                    _CUSTOMER_STRIPE_ID,
                    {
                        "b_id": customer_id,
                        "stripe_customer_id": outcome.stripe_customer_id,
                        "updated_at": now,
                    },
                )
            subscription_id = values.get("stripe_subscription_id", deal.stripe_subscription_id)
            if outcome.grants and customer_id is not None and is_change(deal.plan):
                # an amendment, renewal or reopened deal: its grants are what it says now
                replace_grants(
                    conn,
                    deal_id=deal.id,
                    subscription_id=subscription_id,
                    others=outcome.replace_subscription_grants,
                )
            if outcome.grants and customer_id is not None:
                grant_entitlements(
                    conn,
                    deal_id=deal.id,
                    opportunity_id=deal.opportunity_id,
                    customer_id=customer_id,
                    entitlements=outcome.grants,
                    subscription_id=subscription_id,
                    pending=outcome.grants_pending,
                )
                if outcome.grants_pending:
                    # The first payment may have been recorded since the step read the deal:
                    # the deal row is locked by the guarded update above, so this sees it.
                    activate_paid_grants(conn, deal.id)
            if outcome.dated_grants and customer_id is not None and is_change(deal.plan):
                # a change starting later: the grants it replaces end at its start
                replace_grants(
                    conn,
                    deal_id=deal.id,
                    subscription_id=subscription_id,
                    others=outcome.replace_subscription_grants,
                    from_=outcome.dated_grants[0].valid_from,
                )
            for dated in outcome.dated_grants:
                if customer_id is None:
                    break
                grant_entitlements(
                    conn,
                    deal_id=deal.id,
                    opportunity_id=deal.opportunity_id,
                    customer_id=customer_id,
                    entitlements=dated.entitlements,
                    subscription_id=subscription_id,
                    valid_from=dated.valid_from,
                    valid_until=dated.valid_until,
                    phase=dated.phase,
                )
            history.append(
                {
                    "deal_id": deal.id,
                    "step": step,
                    "attempt": attempt_no if first else 1,
                    "started_at": started_at,
                    "finished_at": now,
                    "outcome": "ok",
                    "duration_ms": duration if first else 0,
                    "idempotency_key": outcome.idempotency_key,
                    "stripe_request_id": outcome.stripe_request_id,
                    "detail": dict(detail),
                    "error": None,
                    "error_code": None,
                }
            )
            first = False
        started = (
            Started(deal.requested(next_step)) if start_next and next_step is not None else None
        )
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
        if retry_at is not None:
            self._retry_at(retry_at)

        def run(conn: Connection, batch: Batch) -> bool:
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
            held = conn.execute(
                _COMMIT if retrying else _PARK, {**values, **_guard(deal_id, self.owner)}
            ).rowcount
            if held != 1:
                raise _NotHeld  # nothing of this attempt is ours to record
            batch.attempt_rows.append(
                _attempt_row(
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
            )
            if not retrying:
                batch.report(PARKED)  # the opportunity is told "Needs attention"
                batch.event_rows.append(
                    {
                        "deal_id": deal_id,
                        "at": now,
                        "kind": "needs_attention",
                        "message": reason,
                        "detail": {"step": step, "code": code},
                    }
                )
            return True

        return bool(self.group.run(Work(run)))

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
            if any(r["id"] in owned and r.get("status") == SCHEDULED for r in rows):
                # resting until their schedule starts: the worker's schedule look
                reports_changed(conn, SCHEDULES)
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
        self._retry_at(at)
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

    # un-won deals (sf_bridge.provisioning.unwon) -------------------------------------------

    def park_unwon(self, deal_id: int, *, reason: str, code: str, fix: str) -> bool:
        """`review`: parks a deal this worker holds `needs_attention` with the reason and the
        commands that settle it; Salesforce is told ("Needs attention")."""
        return self._settle_unwon(
            deal_id,
            {
                "status": "needs_attention",
                "last_error": f"{reason} {fix}",
                "last_error_code": code,
                "writeback_pending": deals.c.source != "file",
            },
            kind="needs_attention",
            message=f"{reason} {fix}",
            detail={"code": code},
        )

    def skip_unwon(self, deal_id: int, *, reason: str) -> bool:
        """Un-won before anything of its own was billed: the deal stops, nothing to undo."""
        return self._settle_unwon(
            deal_id,
            {"status": "skipped", "last_error": reason, "last_error_code": "no_longer_won"},
            kind="skipped",
            message=reason,
            detail={"code": "no_longer_won"},
        )

    def record_cancel_step(
        self, deal_id: int, values: Mapping[str, Any], *, kind: str, message: str
    ) -> bool:
        """One committed step of a cancellation (invoice voided, subscription cancelled) on a
        deal this worker holds, with its history line."""
        with self.db() as session, session.begin():
            return self._update_held(
                session.connection(), deal_id, dict(values), kind=kind, message=message
            )

    def finish_cancel(
        self, deal_id: int, *, reason: str, restore_on: str | None = None
    ) -> tuple[bool, int]:
        """The last step of a cancellation: revokes exactly this deal's active grants and marks
        it `cancelled` (Salesforce is told "Cancelled"), in one transaction. `restore_on`: the
        deal was a renewal or totals amendment of that subscription, taken back; the grants it
        replaced (`replace_grants`) are in effect again."""
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            values = {
                "status": CANCELLED,
                "last_error": f"Cancelled: {reason}",
                "last_error_code": "cancelled",
                "writeback_pending": deals.c.source != "file",
                "attempts": 0,  # from here: the tries of writing "Cancelled"
                **_LEASE_GIVEN_BACK,
            }
            if not self._update_held(conn, deal_id, values):
                return False, 0
            revoked = int(
                conn.execute(
                    update(grants)
                    .where(grants.c.deal_id == deal_id, grants.c.active.is_(True))
                    .values(active=False, revoked_at=now, revoked_reason=reason)
                ).rowcount
                or 0
            )
            restored = _restore_replaced(conn, deal_id, restore_on) if restore_on else 0
            _add_events(
                conn,
                deal_id,
                [
                    {
                        "kind": "cancelled",
                        "message": f"Cancelled: {reason}. {revoked} entitlement grant(s) revoked"
                        + (f", {restored} it had replaced in effect again." if restored else "."),
                        "detail": {
                            "reason": reason,
                            "grants_revoked": revoked,
                            "grants_restored": restored,
                        },
                    }
                ],
                now,
            )
        return True, revoked

    def replaced_by_change(self, deal_id: int) -> dict[str, Any] | None:
        """What a renewal or totals amendment replaced on its subscription, as its change
        recorded it (`amendment.replaced_detail`), or None when not recorded."""
        with self.db() as session:
            details = session.connection().execute(
                select(attempts.c.detail)
                .where(
                    attempts.c.deal_id == deal_id,
                    attempts.c.step == "subscription",
                    attempts.c.outcome == "ok",
                )
                .order_by(attempts.c.id.desc())
            )
            for (detail,) in details:
                if detail and detail.get("replaced") is not None:
                    return dict(detail)
        return None

    def deals_on_subscription(
        self, subscription_id: str, *, besides: int
    ) -> list[tuple[int, dict[str, Any] | None]]:
        """The other deals of a subscription still in effect (not cancelled or skipped), with
        their plans, in the order they arrived: the deal that made it and those that changed
        it."""
        with self.db() as session:
            rows = session.connection().execute(
                select(deals.c.id, deals.c.plan)
                .where(
                    deals.c.stripe_subscription_id == subscription_id,
                    deals.c.id != besides,
                    deals.c.status.not_in((CANCELLED, "skipped")),
                )
                .order_by(deals.c.id)
            )
            return [(int(r.id), r.plan) for r in rows]

    def cancelled_to_report(self, limit: int) -> list[DealView]:
        """Cancelled deals whose opportunity is still to be told "Cancelled" (now: a write
        Salesforce could not take is tried again once its retry is due)."""
        now = self.clock()
        with self.db() as session:
            rows = session.connection().execute(
                select(*_VIEW)
                .where(
                    deals.c.status == CANCELLED,
                    deals.c.writeback_pending.is_(True),
                    or_(deals.c.next_attempt_at.is_(None), deals.c.next_attempt_at <= now),
                )
                .order_by(deals.c.id)
                .limit(limit)
            )
            return [DealView.from_row(dict(row)) for row in rows.mappings()]

    def cancelled_reported(
        self,
        deal_ids: Collection[int],
        refused: Mapping[int, str] | None = None,
        written: Collection[int] = (),
    ) -> None:
        """The cancelled deals' opportunities told (`written`: those written to), or, for
        `refused`, why Salesforce would not take it: a `write_back_failed` line in the deal's
        history, which the write is not tried again after. One transaction."""
        now = self.clock()
        with self.db() as session, session.begin():
            conn = session.connection()
            conn.execute(
                update(deals)
                .where(deals.c.id.in_(list(deal_ids)), deals.c.status == CANCELLED)
                .values(writeback_pending=False, next_attempt_at=None)
            )
            if written:
                conn.execute(
                    update(deals)
                    .where(deals.c.id.in_(list(written)), deals.c.status == CANCELLED)
                    .values(written_back_at=now)
                )
            for deal_id, error in (refused or {}).items():
                _add_events(
                    conn,
                    deal_id,
                    [
                        {
                            "kind": "write_back_failed",
                            "message": 'Writing "Cancelled" to the Opportunity failed: '
                            f"{error}. Set it by hand.",
                            "detail": {"error": error},
                        }
                    ],
                    now,
                )

    def cancelled_report_later(self, deal_ids: Collection[int], delay: timedelta) -> None:
        """Salesforce could not take "Cancelled" now (a lock, a limit): written again after
        `delay`, the try counted."""
        if not deal_ids:
            return
        now = self.clock()
        with self.db() as session, session.begin():
            session.connection().execute(
                update(deals)
                .where(deals.c.id.in_(list(deal_ids)), deals.c.status == CANCELLED)
                .values(next_attempt_at=now + delay, attempts=deals.c.attempts + 1)
            )

    # amendments and renewals ---------------------------------------------------------------

    def live_subscription(self, deal: DealView) -> LiveSubscription | None:
        """The subscription an amendment or renewal of `deal` changes: of the latest other
        deal of its customers row (its customer key) with a subscription, not cancelled,
        billing in the same currency and interval. None when there is none."""
        if deal.customer_id is None:
            return None
        wanted = _terms(deal.plan)
        with self.db() as session:
            rows = session.connection().execute(
                select(
                    deals.c.id, deals.c.opportunity_id, deals.c.stripe_subscription_id, deals.c.plan
                )
                .where(
                    deals.c.customer_id == deal.customer_id,
                    deals.c.id != deal.id,
                    deals.c.stripe_subscription_id.is_not(None),
                    deals.c.status.not_in((CANCELLED, CANCELLING, UNWON)),
                )
                .order_by(deals.c.id.desc())
                .limit(50)
            )
            for row in rows:
                if wanted is None or _terms(row.plan) in (None, wanted):
                    return LiveSubscription(
                        row.id, row.opportunity_id, row.stripe_subscription_id, row.plan
                    )
        return None

    def earlier_in_flight(self, deal: DealView) -> int | None:
        """An earlier deal of the same account (or customers row) that has not got past its
        subscription step and is still being worked on: a later deal's change waits for it,
        so the account's deals change Stripe in the order they arrived. Deals parked
        (`needs_attention`), skipped, cancelled or un-won do not hold the others up."""
        account = deal.account_id
        with self.db() as session:
            found = (
                session.connection()
                .execute(
                    select(deals.c.id)
                    .where(
                        deals.c.id < deal.id,
                        or_(
                            deals.c.account_id == account,
                            and_(
                                deals.c.customer_id.is_not(None),
                                deals.c.customer_id == deal.customer_id,
                            ),
                        ),
                        deals.c.status.not_in((*SETTLED, UNWON, CANCELLING)),
                        or_(
                            deals.c.current_step.in_(_BEFORE_CHANGE),
                            deals.c.current_step.is_(None),
                        ),
                    )
                    .order_by(deals.c.id)
                    .limit(1)
                )
                .scalar()
            )
        return int(found) if found is not None else None

    def _settle_unwon(
        self,
        deal_id: int,
        values: dict[str, Any],
        *,
        kind: str,
        message: str,
        detail: dict[str, Any],
    ) -> bool:
        with self.db() as session, session.begin():
            return self._update_held(
                session.connection(),
                deal_id,
                {**values, **_LEASE_GIVEN_BACK},
                kind=kind,
                message=message,
                detail=detail,
            )

    def _update_held(
        self,
        conn: Connection,
        deal_id: int,
        values: dict[str, Any],
        *,
        kind: str | None = None,
        message: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> bool:
        """Updates the deal this worker holds (its lease, `locked_by`), with its history line
        when `kind` is given, in the caller's transaction; False, writing nothing, when the
        lease was taken back (un-won, `deals cancel`, run out and claimed by another)."""
        now = self.clock()
        held = conn.execute(
            update(deals)
            .where(deals.c.id == deal_id, deals.c.locked_by == self.owner)
            .values(**values, updated_at=now)
        ).rowcount
        if held != 1:
            return False
        if kind is not None:
            row: dict[str, Any] = {"kind": kind, "message": message}
            if detail is not None:
                row["detail"] = detail
            _add_events(conn, deal_id, [row], now)
        return True

    # card deals' first payment (sf_bridge.provisioning.payment) ----------------------------

    def payments_to_report(self, limit: int) -> list[DealView]:
        """Provisioned card deals paid since the opportunity was told they awaited the first
        payment. Read from `payment_reported`, which only the write-back and this report
        set: a payment recorded while the write-back was telling the opportunity "awaiting
        payment" is still found here afterwards."""
        with self.db() as session:
            rows = session.connection().execute(
                select(*_VIEW)
                .where(
                    deals.c.payment_reported == AWAITING_PAYMENT,
                    deals.c.payment_state == PAID,
                    deals.c.status == "done",
                )
                .order_by(deals.c.id)
                .limit(limit)
            )
            return [DealView.from_row(dict(row)) for row in rows.mappings()]

    def payments_reported(self, reported: Mapping[int, str | None]) -> None:
        """Records the payment state each opportunity was told (deal id -> state written)."""
        if not reported:
            return
        with self.db() as session, session.begin():
            session.connection().execute(
                update(deals)
                .where(deals.c.id == bindparam("deal_id"))
                .values(payment_reported=bindparam("told")),
                [{"deal_id": deal_id, "told": state} for deal_id, state in reported.items()],
            )


# A deal leaving the per-deal steps settled: no next step, no lease, nothing due.
_LEASE_GIVEN_BACK: dict[str, Any] = {
    "current_step": None,
    "locked_by": None,
    "locked_until": None,
    "next_attempt_at": None,
}


# The steps before a deal's subscription is created or changed.
_BEFORE_CHANGE = ("fetch", "map", "customer", "subscription")


def _terms(plan: Any) -> tuple[str, str] | None:
    """A stored plan's (currency, interval)."""
    billing = (plan or {}).get("billing") if isinstance(plan, dict) else None
    if not billing:
        return None
    return (str(billing.get("currency", "")).lower(), str(billing.get("interval", "")))


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
            .where(
                grants.c.stripe_subscription_id == subscription_id,
                or_(grants.c.active.is_(True), grants.c.pending.is_(True)),
            )
            .values(active=False, pending=False, revoked_at=now, revoked_reason=reason)
        ).rowcount
        or 0
    )
    unpaid = _end_unpaid_deals(conn, subscription_id, reason, now)
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
            code=FIRST_PAYMENT_MISSING if deal_id in unpaid else None,
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


_CUSTOMER_BY_KEY = select(*_CUSTOMER_VIEW).where(customers.c.customer_key == bindparam("b_key"))
_CUSTOMER_INSERTS: dict[str, Any] = {}


def _customer_insert(dialect: str) -> Any:
    """A new customers row, made already marked unless its key exists: built once a dialect."""
    statement = _CUSTOMER_INSERTS.get(dialect)
    if statement is None:
        statement = _CUSTOMER_INSERTS[dialect] = (
            (postgresql if dialect == "postgresql" else sqlite)
            .insert(customers)
            .on_conflict_do_nothing(index_elements=["customer_key"])
            .returning(*_CUSTOMER_VIEW)
        )
    return statement


# The start's transaction-scoped advisory locks (PostgreSQL), one or two names.
_ADVISORY_LOCKS = {
    n: select(
        *[
            func.pg_advisory_xact_lock(func.hashtext(bindparam(f"n{i}", type_=String())))
            for i in range(n)
        ]
    )
    for n in (1, 2)
}


def _customer_to_request(
    conn: Connection, identity: Any, now: datetime
) -> tuple[CustomerView, bool]:
    """The customers row of the identity's customer key, marked as about to be requested
    from Stripe (made so when new: one statement); and whether a request of it may have gone
    out before (another deal of the customer, or an earlier attempt)."""
    made = (
        conn.execute(
            _customer_insert(conn.dialect.name),
            {
                "customer_key": identity.customer_key,
                "sf_account_id": identity.account_id,
                "name": identity.name[:255],
                "email": identity.email,
                "create_requested_at": now,
                "created_at": now,
                "updated_at": now,
            },
        )
        .mappings()
        .first()
    )
    if made is not None:
        return CustomerView(**made), False
    row = conn.execute(_CUSTOMER_BY_KEY, {"b_key": identity.customer_key}).mappings().one()
    known = CustomerView(**row)
    if known.create_requested_at is None and known.stripe_customer_id is None:
        conn.execute(_CUSTOMER_MARK, {"b_id": known.id, "create_requested_at": now})
    return known, known.create_requested_at is not None


# Every column of an attempt row, so that the rows of one batch go in one multi-row INSERT.
_ATTEMPT_DEFAULTS: dict[str, Any] = {
    "duration_ms": None,
    "idempotency_key": None,
    "stripe_request_id": None,
    "detail": None,
    "error": None,
    "error_code": None,
}


def _attempt_row(
    deal_id: int, step: str, attempt_no: int, now: datetime, **values: Any
) -> dict[str, Any]:
    """An attempt row, whole, when the attempt is over."""
    return {
        **_ATTEMPT_DEFAULTS,
        "deal_id": deal_id,
        "step": step,
        "attempt": attempt_no,
        "started_at": now - timedelta(milliseconds=values.get("duration_ms") or 0),
        "finished_at": now,
        **values,
    }


def _nothing(_result: Any) -> None:
    return None


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


__all__ = ["DealStore", "Started", "cancel_subscription_deals", "ensure_customer"]


# Statuses an opportunity leaving its won stage does not touch: not fetched yet (the fetch
# finds it no longer won and skips it), already skipped or cancelled, or already being handled.
_UNWON_UNTOUCHED = ("received", "skipped", CANCELLED, "unwon", "cancelling")
UNWON_CODE = "unwon_after_provisioning"
# An un-won amendment or renewal whose change of the account's subscription cannot be taken
# back on its own (`sf_bridge.provisioning.unwon`): parked for a person, kept or fixed by hand.
NOT_REVERSIBLE = "unwon_change_not_reversible"
# An un-won deal whose subscription other deals' amendments or renewals changed since.
SHARED = "unwon_subscription_shared"
# Parked after provisioning, no longer won: settled by `deals cancel` / `deals keep`, never by
# a replay or another un-won event.
UNWON_PARKED = (UNWON_CODE, NOT_REVERSIBLE, SHARED)

# A worker in the middle of a Stripe step (it took the account's lease, `account_until`, and
# marked the step `stripe_requested` before its request) may still get its answer after the
# lease is taken back: the request may reach Stripe after the deal is un-won or cancelled.
# The `unwon` / `cancel` step waits until the old lease has run out (the worker's heartbeat no
# longer renews it, and a worker whose lease runs out commits nothing), so it finds what that
# request made instead of deciding "nothing billed" while it is in flight.
# A request sent just before the deal was taken back may outlive that lease (the heartbeat
# renews a lease shorter than Stripe's request timeout), so the wait is also at least one
# request timeout, with a margin, from the moment the deal is taken back.
_REQUEST_MAY_BE_IN_FLIGHT = and_(deals.c.locked_by.is_not(None), deals.c.account_until.is_not(None))
_REQUEST_WINDOW = timedelta(seconds=REQUEST_TIMEOUT_SECONDS + 10)


def _after_the_old_lease(now: datetime) -> Any:
    """When the `unwon` / `cancel` step of a deal taken back at `now` may run: at once when no
    Stripe request can be in flight, else after its old lease and one request window."""
    lease_end = func.coalesce(deals.c.locked_until, deals.c.account_until)
    window_end = literal(now + _REQUEST_WINDOW, deals.c.next_attempt_at.type)
    return case(
        (
            _REQUEST_MAY_BE_IN_FLIGHT,
            case((lease_end > window_end, lease_end), else_=window_end),
        ),
        else_=None,
    )


def _in_flight_detail(waits_until: datetime | None) -> dict[str, Any]:
    if waits_until is None:
        return {}
    return {"waits_for_request_in_flight_until": _utc(waits_until).isoformat()}


def mark_unwon(
    session: Session, opportunity_ids: Collection[str], *, reason: str, source: str
) -> list[str]:
    """Records, in the caller's transaction (the intake's, with the replay id), that these
    opportunities left their won stage or were deleted: each known deal past `received` goes
    to the `unwon` step, where a worker applies the mapping's `when_unwon` policy. The lease
    is taken back, so a step in flight commits nothing and the deal stops where it is; when
    that step may have a Stripe request in flight, the `unwon` step is due only once the old
    lease has run out (`_after_the_old_lease`), and then finds what the request made.
    Returns the opportunity ids newly marked."""
    ids = sorted({str(i) for i in opportunity_ids if i})
    if not ids:
        return []
    conn = session.connection()
    now = utcnow()
    rows = conn.execute(
        update(deals)
        .where(
            deals.c.opportunity_id.in_(ids),
            deals.c.status.not_in(_UNWON_UNTOUCHED),
            or_(deals.c.last_error_code.is_(None), deals.c.last_error_code.not_in(UNWON_PARKED)),
        )
        .values(
            status="unwon",
            current_step="unwon",
            last_error=reason,
            last_error_code="unwon",
            locked_by=None,
            locked_until=None,
            next_attempt_at=_after_the_old_lease(now),
            updated_at=now,
        )
        .returning(deals.c.id, deals.c.opportunity_id, deals.c.next_attempt_at)
    ).all()
    for deal_id, _opportunity, waits_until in rows:
        conn.execute(
            insert(events).values(
                deal_id=deal_id,
                at=now,
                kind="unwon",
                message=reason,
                detail={"source": source, **_in_flight_detail(waits_until)},
            )
        )
    if rows:
        _work_added(session)
    return [str(r[1]) for r in rows]


CHANGED_CODE = "changed_after_provisioning"


def _work_added(session: Session) -> None:
    work_added(session)  # a worker waiting for work looks at once
    # what calls this parks deals (changed after provisioning) or leads to a park or a
    # cancellation (un-won, cancel queued): the worker's reports of those look again
    reports_changed(session, PARKED, REPORT_CANCELLED)


def mark_changed_after_provisioning(
    session: Session, opportunity_ids: Collection[str], *, source: str
) -> list[str]:
    """A won event for a known deal that had left its won stage (reopened and closed again,
    perhaps with other lines): parks it `needs_attention` with `changed_after_provisioning`
    until it is replayed (an amendment of its own subscription), kept or cancelled; never
    ignored. Returns the opportunity ids parked."""
    ids = sorted({str(i) for i in opportunity_ids if i})
    if not ids:
        return []
    conn = session.connection()
    now = utcnow()
    rows = conn.execute(
        select(deals.c.id, deals.c.opportunity_id).where(
            deals.c.opportunity_id.in_(ids),
            or_(
                deals.c.status == "unwon",
                and_(deals.c.status == "needs_attention", deals.c.last_error_code == UNWON_CODE),
            ),
        )
    ).all()
    for deal_id, _opportunity in rows:
        message = (
            "The opportunity was won again after it left its won stage: its lines or amount "
            "may differ from what was provisioned. Compare it with Stripe (`sf-bridge deals "
            f"show {deal_id}`), then `sf-bridge replay {deal_id}` to apply its lines now as an "
            f"amendment of its subscription, or `sf-bridge deals keep {deal_id}` / "
            f"`sf-bridge deals cancel {deal_id}`."
        )
        conn.execute(
            update(deals)
            .where(deals.c.id == deal_id)
            .values(
                status="needs_attention",
                current_step=None,
                last_error=message,
                last_error_code=CHANGED_CODE,
                writeback_pending=deals.c.source != "file",
                locked_by=None,
                locked_until=None,
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
                detail={"code": CHANGED_CODE, "source": source},
            )
        )
    return [str(r[1]) for r in rows]


def queue_cancel(session: Session, deal_id: int, *, reason: str, actor: str) -> bool:
    """`deals cancel N`: sends the deal to the `cancel` step (a worker runs it), recorded in
    its history with who asked. False when the deal is already cancelled or skipped. A deal
    whose Stripe request may be in flight is cancelled once the old lease has run out, as in
    `mark_unwon`."""
    conn = session.connection()
    now = utcnow()
    row = conn.execute(
        update(deals)
        .where(deals.c.id == deal_id, deals.c.status.not_in((CANCELLED, "skipped")))
        .values(
            status="cancelling",
            current_step="cancel",
            last_error=reason,
            last_error_code="cancelling",
            locked_by=None,
            locked_until=None,
            next_attempt_at=_after_the_old_lease(now),
            updated_at=now,
        )
        .returning(deals.c.next_attempt_at)
    ).first()
    if row is not None:
        _work_added(session)
        conn.execute(
            insert(events).values(
                deal_id=deal_id,
                at=now,
                kind="cancel_requested",
                message=f"Cancellation requested by {actor}: {reason}",
                detail={"actor": actor, "reason": reason, **_in_flight_detail(row[0])},
            )
        )
    return row is not None


def keep_unwon(session: Session, deal_id: int, *, actor: str, note: str | None) -> bool:
    """`deals keep N`: the deal parked as un-won stays as provisioned: billing and
    entitlements go on; recorded in its history with who decided. The opportunity, told
    "Needs attention" and the commands, is told its provisioned status again with the error
    cleared: the deal goes back to its write-back step (`write_back_batch`, which retries or
    parks a refused write like any other), then rests `done` (or `scheduled`)."""
    conn = session.connection()
    now = utcnow()
    kept = conn.execute(
        update(deals)
        .where(
            deals.c.id == deal_id,
            or_(
                deals.c.status == "unwon",
                and_(
                    deals.c.status == "needs_attention",
                    deals.c.last_error_code.in_((*UNWON_PARKED, CHANGED_CODE)),
                ),
            ),
        )
        .values(
            status=STATUS_BEFORE[STEP_WRITE_BACK],
            current_step=STEP_WRITE_BACK,
            attempts=0,
            last_error=None,
            last_error_code=None,
            locked_by=None,
            locked_until=None,
            next_attempt_at=now,
            updated_at=now,
        )
    ).rowcount
    if kept == 1:
        _work_added(session)
        message = f"Kept as provisioned by {actor} although no longer won"
        conn.execute(
            insert(events).values(
                deal_id=deal_id,
                at=now,
                kind="kept",
                message=message + (f": {note}" if note else "."),
                detail={"actor": actor, "note": note},
            )
        )
    return kept == 1


def _restore_replaced(conn: Connection, deal_id: int, subscription_id: str) -> int:
    """A renewal or totals amendment taken back: the grants it replaced on its subscription
    (`replace_grants` left them inactive, not revoked) are in effect again. Those are the
    grants of the deals from the last one before it that said the subscription's whole state
    (its first deal, or an earlier renewal / totals amendment: it replaced the ones before
    it, which stay replaced) up to it. Returns how many."""
    earlier = conn.execute(
        select(deals.c.id, deals.c.plan)
        .where(
            deals.c.stripe_subscription_id == subscription_id,
            deals.c.id < deal_id,
            deals.c.status.not_in((CANCELLED, "skipped")),
        )
        .order_by(deals.c.id.desc())
    ).all()
    start: int | None = None
    for row in earlier:
        start = row.id
        plan = row.plan or {}
        additions = plan.get("intent") == "amendment" and plan.get("amendment_lines") != "totals"
        if not is_change(plan) or not additions:
            break
    if start is None:
        return 0
    return int(
        conn.execute(
            update(grants)
            .where(
                grants.c.stripe_subscription_id == subscription_id,
                grants.c.deal_id.in_([r.id for r in earlier if r.id >= start]),
                grants.c.active.is_(False),
                grants.c.pending.is_(False),
                grants.c.revoked_at.is_(None),
            )
            .values(active=True)
        ).rowcount
        or 0
    )


# card deals: the first payment (sf_bridge.provisioning.payment) ------------------------------

FIRST_PAYMENT_MISSING = "first_payment_missing"


def activate_paid_grants(conn: Connection, deal_id: int) -> int:
    """Puts the deal's pending grants in effect if its first payment is recorded (and it is
    not cancelled); how many."""
    paid = (
        select(deals.c.id)
        .where(
            deals.c.id == deal_id,
            deals.c.payment_state == "paid",
            deals.c.status != CANCELLED,
        )
        .exists()
    )
    return int(
        conn.execute(
            update(grants)
            .where(grants.c.deal_id == deal_id, grants.c.pending.is_(True), paid)
            .values(active=True, pending=False)
        ).rowcount
        or 0
    )


def record_first_payment(
    conn: Connection, subscription_id: str, how: str, now: datetime
) -> list[tuple[int, int]]:
    """The subscription's first invoice is paid: its deals awaiting the payment become paid,
    their pending grants take effect, and the opportunity is told; idempotent (a deal already
    paid, expired or cancelled is left as it is). The deals changed, with the grants put in
    effect."""
    changed = conn.execute(
        update(deals)
        .where(
            deals.c.stripe_subscription_id == subscription_id,
            deals.c.payment_state == "awaiting_payment",
            deals.c.status != CANCELLED,
        )
        .values(payment_state=PAID, updated_at=now)  # reported by payments_to_report
        .returning(deals.c.id)
    ).scalars()
    results: list[tuple[int, int]] = []
    for deal_id in sorted(changed):
        activated = activate_paid_grants(conn, deal_id)
        _add_events(
            conn,
            deal_id,
            [
                {
                    "kind": "first_payment_received",
                    "message": f"The first invoice of subscription {subscription_id} is paid "
                    f"({how}); {activated} pending entitlement grant(s) now in effect.",
                    "detail": {"subscription_id": subscription_id, "grants_activated": activated},
                }
            ],
            now,
        )
        results.append((deal_id, activated))
    if results:
        reports_changed(conn, PAYMENTS)  # the worker tells the opportunities
    return results


def _end_unpaid_deals(
    conn: Connection, subscription_id: str, reason: str, now: datetime
) -> set[int]:
    """The subscription ended before its first payment: its deals awaiting it are marked
    expired, to be cancelled with the reason and written back."""
    ended = set(
        conn.execute(
            update(deals)
            .where(
                deals.c.stripe_subscription_id == subscription_id,
                deals.c.payment_state == "awaiting_payment",
                deals.c.status != CANCELLED,
            )
            .values(payment_state="expired", writeback_pending=deals.c.source != "file")
            .returning(deals.c.id)
        ).scalars()
    )
    if ended:
        reports_changed(conn, PAYMENTS, REPORT_CANCELLED)  # the worker tells the opportunities
    return ended


def deals_to_check_unwon(session: Session, after_id: int, limit: int) -> list[tuple[int, str]]:
    """The catch-up's share of known deals whose opportunity may have left its won stage
    while the stream could not tell (an outage longer than the replay window): `(id,
    opportunity id)` of the next `limit` deals after `after_id` that `mark_unwon` would
    touch, by id. Deals from a file have no opportunity to re-read."""
    rows = session.execute(
        select(deals.c.id, deals.c.opportunity_id)
        .where(
            deals.c.id > after_id,
            deals.c.status.not_in(_UNWON_UNTOUCHED),
            or_(deals.c.last_error_code.is_(None), deals.c.last_error_code.not_in(UNWON_PARKED)),
            deals.c.source != "file",
        )
        .order_by(deals.c.id)
        .limit(limit)
    ).all()
    return [(int(r[0]), str(r[1])) for r in rows]


WON_AFTER_CANCEL_CODE = "won_after_cancel"


def note_won_after_cancel(
    session: Session, opportunity_ids: Collection[str], *, source: str
) -> list[str]:
    """A won event for a deal already `cancelled` (its subscription cancelled, its grants
    revoked): the deal stays cancelled, as a cancelled subscription is never resurrected
    silently, but the fact is recorded once in its history and in its error column (code
    `won_after_cancel`), and "Cancelled" with that reason is written back again. Returns the
    opportunity ids noted."""
    ids = sorted({str(i) for i in opportunity_ids if i})
    if not ids:
        return []
    conn = session.connection()
    now = utcnow()
    rows = conn.execute(
        select(deals.c.id, deals.c.opportunity_id, deals.c.last_error).where(
            deals.c.opportunity_id.in_(ids),
            deals.c.status == CANCELLED,
            or_(
                deals.c.last_error_code.is_(None),
                deals.c.last_error_code != WON_AFTER_CANCEL_CODE,
            ),
        )
    ).all()
    for deal_id, _opportunity, previous in rows:
        message = (
            "The opportunity was won again after this deal was cancelled; it stays cancelled "
            "(its subscription is not restarted, its entitlements stay revoked). To bill it "
            "again, close a new opportunity won (a clone of this one); "
            f"`sf-bridge deals show {deal_id}` shows what was cancelled."
        )
        conn.execute(
            update(deals)
            .where(deals.c.id == deal_id)
            .values(
                last_error=f"{message} {previous}" if previous else message,
                last_error_code=WON_AFTER_CANCEL_CODE,
                writeback_pending=deals.c.source != "file",
                updated_at=now,
            )
        )
        conn.execute(
            insert(events).values(
                deal_id=deal_id,
                at=now,
                kind=WON_AFTER_CANCEL_CODE,
                message=message,
                detail={"code": WON_AFTER_CANCEL_CODE, "source": source},
            )
        )
    if rows:
        reports_changed(conn, REPORT_CANCELLED)  # "Cancelled" is written back again
    return [str(r[1]) for r in rows]
