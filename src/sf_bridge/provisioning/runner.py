"""Runs one deal's steps in order, committing each outcome before the next step starts.

For every step: check the lease, take the account's lock for Stripe steps, record the attempt
(committed *before* Stripe is called, so a later attempt knows an earlier one may have
created something), run the step, then in one guarded transaction apply its result, move the
deal on and renew the lease. A failure goes through `retry.decide`: `retrying` with its next
attempt time, or `needs_attention` with a reason a person can act on.

`StepHooks.before_commit` / `after_commit` run right before and right after each step's
commit; tests raise from them to imitate a crash at exactly that point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import NEEDS_ATTENTION, RETRYING, Customer, Deal, DealEvent, StepAttempt
from sf_bridge.errors import MappingFailed, PermanentError
from sf_bridge.logging import get_logger
from sf_bridge.provisioning import claim
from sf_bridge.provisioning.dbscope import SessionScope
from sf_bridge.provisioning.retry import RetryPolicy, decide
from sf_bridge.provisioning.states import (
    ACCOUNT_STEPS,
    DEAL_STEPS,
    STATUS_AFTER,
    STEP_CUSTOMER,
    STEP_ENTITLEMENTS,
    STEP_INVOICE,
    STEP_MAP,
    STEP_SUBSCRIPTION,
    next_step,
)
from sf_bridge.provisioning.steps import (
    StepContext,
    StepResult,
    customer_step,
    entitlements_step,
    invoice_step,
    map_step,
    plan_of,
    subscription_step,
)

log = get_logger(__name__)


def _no_hook(step: str, deal_id: int) -> None:
    return None


@dataclass
class StepHooks:
    before_commit: Callable[[str, int], None] = _no_hook
    after_commit: Callable[[str, int], None] = _no_hook


@dataclass(frozen=True)
class RunnerOptions:
    owner: str
    lease: timedelta = timedelta(seconds=15)
    account_wait_seconds: float = 10.0  # how long a deal waits for its account's lock in-thread
    account_busy_delay: timedelta = timedelta(milliseconds=200)


class Provisioner:
    """Runs deal steps for one worker (`options.owner` names its leases)."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        ctx: StepContext,
        policy: RetryPolicy,
        options: RunnerOptions,
        clock: Callable[[], datetime],
        hooks: StepHooks | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.db = SessionScope(session_factory)
        self.ctx = ctx
        self.policy = policy
        self.options = options
        self.clock = clock
        self.hooks = hooks or StepHooks()
        self._in_work: set[int] = set()
        self._in_work_lock = threading.Lock()

    @property
    def owner(self) -> str:
        return self.options.owner

    # claiming ------------------------------------------------------------------------------

    def claim(self, steps: tuple[str, ...], limit: int) -> list[int]:
        """Claims due deals; they count as in work (their leases renewed by the heartbeat)
        until `done_with` is called for them."""
        with self.db() as session:
            ids = claim.claim_deals(
                session,
                steps=steps,
                owner=self.owner,
                now=self.clock(),
                lease=self.options.lease,
                limit=limit,
            )
        with self._in_work_lock:
            self._in_work.update(ids)
        return ids

    def done_with(self, deal_ids: list[int]) -> None:
        """These deals are no longer in work here, whatever happened to them."""
        with self._in_work_lock:
            self._in_work.difference_update(deal_ids)

    def in_work(self) -> set[int]:
        with self._in_work_lock:
            return set(self._in_work)

    def release(self, deal_id: int) -> None:
        with self.db() as session, session.begin():
            claim.release_deal(session, deal_id, self.owner)

    # one deal ------------------------------------------------------------------------------

    def run_deal(self, deal_id: int, stop: threading.Event) -> str | None:
        """Runs the deal's per-deal steps until it reaches a batch step, settles, fails, or
        `stop` is set; returns its status then (None when the lease was lost)."""
        try:
            return self._run_deal(deal_id, stop)
        except Exception:
            # An error no step could record (the database went away between two steps) must
            # not leave the deal leased by this live worker, whose heartbeat would renew the
            # lease for ever: give the deal and its account lock back, as a crash would.
            self._abandon(deal_id)
            raise
        finally:
            self.done_with([deal_id])

    def _abandon(self, deal_id: int) -> None:
        try:
            with self.db() as session, session.begin():
                claim.release_deal(session, deal_id, self.owner)
                claim.release_locks(session, f"{self.owner}:{deal_id}")
        except Exception as exc:
            log.warning(
                "deal_release_failed",
                deal_id=deal_id,
                error=str(exc)[:300],
                error_type=type(exc).__name__,
            )

    def _run_deal(self, deal_id: int, stop: threading.Event) -> str | None:
        with self.db() as session:
            deal = session.get(Deal, deal_id)
        while True:
            if deal is None:
                return None
            if stop.is_set() or deal.current_step not in DEAL_STEPS:
                if deal.locked_by == self.owner:
                    self.release(deal_id)
                return deal.status
            if deal.locked_by != self.owner:
                return None
            moved_on = self.run_step(deal, deal.current_step)
            if moved_on is None:
                with self.db() as session:
                    row = session.get(Deal, deal_id)
                    return row.status if row is not None else None
            deal = moved_on

    def run_step(self, deal: Deal, step: str) -> Deal | None:
        """One step of one deal; the deal as committed when the step succeeded, else None."""
        bound = log.bind(deal_id=deal.id, opportunity_id=deal.opportunity_id, step=step)
        holder = f"{self.owner}:{deal.id}"
        attempt_no = deal.attempts + 1
        try:
            started_step = self._start(deal, step, attempt_no, holder)
        except Exception as exc:
            self._fail(deal, step, None, attempt_no, exc, 0, None, holder)
            return None
        if started_step is None:
            self._reschedule(deal.id)
            bound.info("account_busy_rescheduled")
            return None
        attempt_id, resumed, account, known = started_step
        started = time.perf_counter()
        try:
            result = self._execute(deal, step, resumed, known)
            duration = int((time.perf_counter() - started) * 1000)
            committed = self._commit(
                deal, step, result, attempt_id, attempt_no, duration, account, holder
            )
        except Exception as exc:
            duration = int((time.perf_counter() - started) * 1000)
            self._fail(deal, step, attempt_id, attempt_no, exc, duration, account, holder)
            return None
        if committed is None:
            bound.warning("lease_lost", attempt=attempt_no)
            return None
        self.hooks.after_commit(step, deal.id)
        bound.info(
            "step_done",
            attempt=attempt_no,
            duration_ms=duration,
            stripe_request_id=result.stripe_request_id,
            **{k: v for k, v in result.detail.items() if isinstance(v, str | int | bool)},
        )
        return committed

    def _execute(self, deal: Deal, step: str, resumed: bool, known: Customer | None) -> StepResult:
        if step == STEP_MAP:
            return map_step(self.ctx, deal, resumed)
        if step == STEP_CUSTOMER:
            return customer_step(self.ctx, deal, resumed, known)
        if step == STEP_SUBSCRIPTION:
            return subscription_step(self.ctx, deal, resumed)
        if step == STEP_INVOICE:
            return invoice_step(self.ctx, deal, resumed)
        if step == STEP_ENTITLEMENTS:
            return entitlements_step(self.ctx, deal, resumed)
        raise PermanentError(f"Unknown step {step!r}.", hint="replay the deal.")

    def _start(
        self, deal: Deal, step: str, attempt_no: int, holder: str
    ) -> tuple[int | None, bool, str | None, Customer | None] | None:
        """Before a Stripe step: takes the account's lock and its Stripe customer's (waiting
        up to `account_wait_seconds`) and records the attempt, in one commit, so that a later
        attempt knows an earlier one may have reached Stripe. Returns (attempt id, resumed,
        account, the deal's customers row for the customer step), or None when the account or
        the customer stayed busy. Other steps start with no writes."""
        if step not in ACCOUNT_STEPS:
            return None, False, None, None
        plan = plan_of(deal)
        if plan.is_custom:  # no Stripe for entitlements-only plans: nothing to serialise
            return None, False, None, None
        account = plan.customer.account_id
        deadline = time.monotonic() + self.options.account_wait_seconds
        waiter = threading.Event()
        while True:
            with self.db() as session, session.begin():
                known: Customer | None = None
                customer_id = deal.customer_id
                if step == STEP_CUSTOMER:
                    known = claim.ensure_customer_row(
                        session,
                        customer_key=plan.customer.customer_key,
                        account_id=account,
                        name=plan.customer.name,
                        email=plan.customer.email,
                    )
                    customer_id = known.id
                locked = claim.try_lock_account(
                    session,
                    account_id=account,
                    customer_id=customer_id,
                    holder=holder,
                    now=self.clock(),
                    lease=self.options.lease,
                )
                if locked:
                    attempt_id, resumed = self._record_attempt(
                        session, deal, step, attempt_no, account, customer_id
                    )
                    return attempt_id, resumed, account, known
            if time.monotonic() >= deadline:
                return None
            waiter.wait(0.02)

    def _record_attempt(
        self,
        session: Session,
        deal: Deal,
        step: str,
        attempt_no: int,
        account: str,
        customer_id: int | None,
    ) -> tuple[int, bool]:
        """Records the attempt; `resumed` when an earlier one may have reached Stripe: of
        this deal, or for the customer step of any deal billed to the same customer. The
        deal is tied to its customers row here, before Stripe is called, so that a deal of
        another account with the same customer key knows of this attempt."""
        earlier = select(StepAttempt.id).where(StepAttempt.step == step)
        if step == STEP_CUSTOMER:
            earlier = earlier.join(Deal, Deal.id == StepAttempt.deal_id).where(
                Deal.customer_id == customer_id
            )
        else:
            earlier = earlier.where(StepAttempt.deal_id == deal.id)
        if step == STEP_CUSTOMER and (
            deal.account_id != account or deal.customer_id != customer_id
        ):
            session.execute(
                update(Deal)
                .where(Deal.id == deal.id, Deal.locked_by == self.owner)
                .values(account_id=account, customer_id=customer_id)
                .execution_options(synchronize_session=False)
            )
        resumed = session.execute(earlier.limit(1)).first() is not None
        attempt = StepAttempt(
            deal_id=deal.id, step=step, attempt=attempt_no, started_at=self.clock()
        )
        session.add(attempt)
        session.flush()
        return attempt.id, resumed

    def _finish_attempt(
        self,
        session: Session,
        attempt_id: int | None,
        deal_id: int,
        step: str,
        attempt_no: int,
        **values: Any,
    ) -> None:
        """Completes the attempt recorded at the start (one UPDATE), or records it whole."""
        values["finished_at"] = self.clock()
        if attempt_id is not None:
            session.execute(
                update(StepAttempt)
                .where(StepAttempt.id == attempt_id)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return
        session.add(
            StepAttempt(
                deal_id=deal_id, step=step, attempt=attempt_no, started_at=self.clock(), **values
            )
        )

    def _commit(
        self,
        deal: Deal,
        step: str,
        result: StepResult,
        attempt_id: int | None,
        attempt_no: int,
        duration: int,
        account: str | None,
        holder: str,
    ) -> Deal | None:
        now = self.clock()
        with self.db() as session, session.begin():
            row = claim.load_owned(session, deal.id, self.owner)
            if row is None:
                return None
            result.apply(session, row)
            custom = bool(row.plan) and plan_of(row).is_custom
            row.status = STATUS_AFTER[step]
            row.current_step = result.skip_to or next_step(step, custom_plan=custom)
            row.attempts = 0
            row.next_attempt_at = None
            row.last_error = None
            row.last_error_code = None
            row.locked_until = now + self.options.lease
            if row.current_step not in DEAL_STEPS:  # a batch step next: others may take it
                row.locked_by = None
                row.locked_until = None
            self._finish_attempt(
                session,
                attempt_id,
                deal.id,
                step,
                attempt_no,
                outcome="ok",
                duration_ms=duration,
                idempotency_key=result.idempotency_key,
                stripe_request_id=result.stripe_request_id,
                detail=_json_safe(result.detail),
            )
            if account:
                claim.unlock_account(session, account_id=account, holder=holder)
            self.hooks.before_commit(step, deal.id)
        return row

    def _reschedule(self, deal_id: int) -> None:
        with self.db() as session, session.begin():
            row = claim.load_owned(session, deal_id, self.owner)
            if row is not None:
                row.next_attempt_at = self.clock() + self.options.account_busy_delay
                row.locked_by = None
                row.locked_until = None

    def _fail(
        self,
        deal: Deal,
        step: str,
        attempt_id: int | None,
        attempt_no: int,
        exc: Exception,
        duration: int,
        account: str | None,
        holder: str,
    ) -> None:
        record_failure(
            self,
            deal_id=deal.id,
            opportunity_id=deal.opportunity_id,
            step=step,
            attempt_id=attempt_id,
            attempt_no=attempt_no,
            exc=exc,
            duration=duration,
            account=account,
            holder=holder,
        )


def record_failure(
    prov: Provisioner,
    *,
    deal_id: int,
    opportunity_id: str,
    step: str,
    attempt_id: int | None,
    attempt_no: int,
    exc: Exception,
    duration: int = 0,
    account: str | None = None,
    holder: str | None = None,
) -> str:
    """Records a failed attempt and moves the deal to `retrying` or `needs_attention`, giving
    its lease back. Returns the new status."""
    decision = decide(exc, attempt=attempt_no, policy=prov.policy)
    request_id = getattr(exc, "stripe_request_id", None)
    now = prov.clock()
    status = RETRYING if decision.action == "retry" else NEEDS_ATTENTION
    with prov.db() as session, session.begin():
        if account and holder:
            claim.unlock_account(session, account_id=account, holder=holder)
        row = claim.load_owned(session, deal_id, prov.owner)
        if row is None:
            log.warning("lease_lost", deal_id=deal_id, step=step, attempt=attempt_no)
            return "lost"
        prov._finish_attempt(
            session,
            attempt_id,
            deal_id,
            step,
            attempt_no,
            outcome="retry" if status == RETRYING else "failed",
            duration_ms=duration,
            error=decision.reason,
            error_code=decision.code,
            stripe_request_id=request_id,
            idempotency_key=getattr(exc, "idempotency_key", None),
            detail=(
                {"mapping_errors": [_error_dict(e) for e in exc.errors]}
                if isinstance(exc, MappingFailed)
                else None
            ),
        )
        row.status = status
        row.current_step = step
        row.attempts = attempt_no
        row.last_error = decision.reason
        row.last_error_code = decision.code
        row.locked_by = None
        row.locked_until = None
        if status == RETRYING:
            row.next_attempt_at = now + timedelta(seconds=decision.delay)
        else:
            row.next_attempt_at = None
            row.writeback_pending = row.source != "file"  # tell Salesforce users too
            session.add(
                DealEvent(
                    deal_id=deal_id,
                    kind="needs_attention",
                    message=decision.reason,
                    detail={"step": step, "code": decision.code},
                )
            )
    log_fields: dict[str, Any] = {
        "deal_id": deal_id,
        "opportunity_id": opportunity_id,
        "step": step,
        "attempt": attempt_no,
        "duration_ms": duration,
        "stripe_request_id": request_id,
        "error_code": decision.code,
        "error": decision.reason,
    }
    if status == RETRYING:
        log.info("step_retrying", retry_in_ms=int(decision.delay * 1000), **log_fields)
    else:
        log.warning("deal_needs_attention", **log_fields)
    return status


def _error_dict(error: object) -> dict[str, Any]:
    to_dict = getattr(error, "to_dict", None)
    return to_dict() if callable(to_dict) else {"message": str(error)}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
