"""Runs one deal's steps in order, committing each outcome before the next step starts.

For every step: take the account's lease for Stripe steps and record the attempt (committed
*before* Stripe is called, so a later attempt knows an earlier one may have created
something: `DealStore.start`), run the pure step on the deal's view
(`sf_bridge.provisioning.steps`), then have the store commit its outcome in one guarded
transaction (`DealStore.commit`), which moves the deal on and renews the lease. A failure
goes through `retry.decide`: `retrying` with its next attempt time, or `needs_attention`
with a reason a person can act on (`DealStore.fail`).

`StepHooks.before_commit` / `after_commit` run right before and right after each step's
commit; tests raise from them to imitate a crash at exactly that point.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.db.models import NEEDS_ATTENTION, RETRYING
from sf_bridge.errors import MappingFailed, PermanentError
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.dbscope import SessionScope
from sf_bridge.provisioning.memory_store import InMemoryStore
from sf_bridge.provisioning.outcome import CustomerView, DealView, Outcome
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
    customer_step,
    entitlements_step,
    invoice_step,
    map_step,
    subscription_step,
)
from sf_bridge.provisioning.store import DealStore, Started

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
        store: DealStore | InMemoryStore | None = None,  # InMemoryStore: unit tests
    ) -> None:
        self.session_factory = session_factory
        self.db = SessionScope(session_factory)
        self.ctx = ctx
        self.policy = policy
        self.options = options
        self.clock = clock
        self.hooks = hooks or StepHooks()
        # The in-memory store has the per-deal interface only; batches need the database.
        self.store: DealStore = store or DealStore(  # type: ignore[assignment]
            session_factory, owner=options.owner, lease=options.lease, clock=clock
        )
        self._claimed: dict[int, DealView] = {}
        self._in_work: set[int] = set()
        self._in_work_lock = threading.Lock()

    @property
    def owner(self) -> str:
        return self.options.owner

    # claiming ------------------------------------------------------------------------------

    def claim(self, steps: tuple[str, ...], limit: int) -> list[int]:
        """Claims due deals; they count as in work (their leases renewed by the heartbeat)
        until `done_with` is called for them."""
        views = self.store.claim(steps, limit)
        with self._in_work_lock:
            for view in views:
                self._in_work.add(view.id)
                self._claimed[view.id] = view
        return [v.id for v in views]

    def done_with(self, deal_ids: list[int]) -> None:
        """These deals are no longer in work here, whatever happened to them."""
        with self._in_work_lock:
            self._in_work.difference_update(deal_ids)
            for deal_id in deal_ids:
                self._claimed.pop(deal_id, None)

    def in_work(self) -> set[int]:
        with self._in_work_lock:
            return set(self._in_work)

    def release(self, deal_id: int) -> None:
        self.store.release(deal_id)

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
            self.store.release(deal_id, holder=f"{self.owner}:{deal_id}")
        except Exception as exc:
            log.warning(
                "deal_release_failed",
                deal_id=deal_id,
                error=str(exc)[:300],
                error_type=type(exc).__name__,
            )

    def _run_deal(self, deal_id: int, stop: threading.Event) -> str | None:
        with self._in_work_lock:
            deal: DealView | None = self._claimed.get(deal_id)
        if deal is None:
            found = self.store.load([deal_id])
            deal = found[0] if found else None
        held = False  # the account's lease, kept from one Stripe step to the next
        started: Started | None = None  # the next step's attempt, recorded with the last commit
        while True:
            if deal is None:
                return None
            if stop.is_set() or deal.current_step not in DEAL_STEPS:
                if deal.locked_by == self.owner:
                    self.store.release(deal_id, holder=f"{self.owner}:{deal_id}" if held else None)
                return deal.status
            if deal.locked_by != self.owner:
                return None
            moved_on, status, held, started = self.run_step(deal, deal.current_step, held, started)
            if moved_on is None:
                return status
            deal = moved_on

    def run_step(
        self, deal: DealView, step: str, held: bool = False, started: Started | None = None
    ) -> tuple[DealView | None, str | None, bool, Started | None]:
        """One step of one deal: the deal as committed when the step succeeded, else None and
        its status (None when the lease was lost); and whether the account's lease is still
        held (`held`: taken by the previous step and kept, as the next step needs it too)."""
        bound = log.bind(deal_id=deal.id, opportunity_id=deal.opportunity_id, step=step)
        holder = f"{self.owner}:{deal.id}"
        attempt_no = deal.attempts + 1
        try:
            started_step = (
                (started.attempt_id, started.resumed, True, None)
                if started is not None and held
                else self._start(deal, step, attempt_no, holder, held)
            )
        except Exception as exc:
            return None, self._fail(deal, step, None, attempt_no, exc, 0, holder), False, None
        if started_step is None:
            self.store.reschedule(deal.id, self.options.account_busy_delay)
            bound.info("account_busy_rescheduled")
            return None, deal.status, False, None
        attempt_id, resumed, locked, known = started_step
        began = time.perf_counter()
        try:
            outcome = self._execute(replace(deal, resumed=resumed), step, known)
            duration = int((time.perf_counter() - began) * 1000)
            custom = (
                "plan" in outcome.changes
                and bool(outcome.changes["plan"])
                and (outcome.changes["plan"].get("plan_kind") == "custom")
            ) or ("plan" not in outcome.changes and deal.custom_plan)
            following = outcome.skip_to or next_step(step, custom_plan=custom)
            keep = locked and following in ACCOUNT_STEPS
            committed = self.store.commit(
                deal,
                step,
                outcome,
                status=outcome.status or STATUS_AFTER[step],
                next_step=following,
                attempt_id=attempt_id,
                attempt_no=attempt_no,
                duration=duration,
                holder=holder if locked and not keep else None,
                detail=_json_safe(dict(outcome.detail)),
                before_commit=lambda: self.hooks.before_commit(step, deal.id),
                start_next=keep,
            )
        except Exception as exc:
            duration = int((time.perf_counter() - began) * 1000)
            return (
                None,
                self._fail(
                    deal, step, attempt_id, attempt_no, exc, duration, holder if locked else None
                ),
                False,
                None,
            )
        if committed is None:
            bound.warning("lease_lost", attempt=attempt_no)
            if locked:
                self.store.release(deal.id, holder=holder)
            return None, None, False, None
        view, next_started = committed
        self.hooks.after_commit(step, deal.id)
        bound.info(
            "step_done",
            attempt=attempt_no,
            duration_ms=duration,
            stripe_request_id=outcome.stripe_request_id,
            **{k: v for k, v in outcome.detail.items() if isinstance(v, str | int | bool)},
        )
        return view, view.status, keep, next_started

    def _execute(self, deal: DealView, step: str, known: CustomerView | None) -> Outcome:
        if step == STEP_MAP:
            return map_step(self.ctx, deal)
        if step == STEP_CUSTOMER:
            return customer_step(self.ctx, deal, known)
        if step == STEP_SUBSCRIPTION:
            return subscription_step(self.ctx, deal)
        if step == STEP_INVOICE:
            return invoice_step(self.ctx, deal)
        if step == STEP_ENTITLEMENTS:
            return entitlements_step(self.ctx, deal)
        raise PermanentError(f"Unknown step {step!r}.", hint="replay the deal.")

    def _start(
        self, deal: DealView, step: str, attempt_no: int, holder: str, held: bool
    ) -> tuple[int | None, bool, bool, CustomerView | None] | None:
        """Before a Stripe step: takes the account's lease and its Stripe customer's (waiting
        up to `account_wait_seconds`) and records the attempt, in one commit, so that a later
        attempt knows an earlier one may have reached Stripe. Returns (attempt id, resumed,
        leased, the deal's customers row for the customer step), or None when the account or
        the customer stayed busy. Other steps start with no writes."""
        if step not in ACCOUNT_STEPS:
            return None, False, False, None
        plan = deal.plan_or_fail()
        if plan.is_custom:  # no Stripe for entitlements-only plans: nothing to serialise
            return None, False, False, None
        deadline = time.monotonic() + self.options.account_wait_seconds
        waiter = threading.Event()
        while True:
            started = self.store.start(
                deal,
                step,
                attempt_no,
                account=plan.customer.account_id,
                identity=plan.customer,
                holder=holder,
                held=held,
            )
            if started is not None:
                return started.attempt_id, started.resumed, True, started.customer
            if time.monotonic() >= deadline:
                return None
            waiter.wait(0.02)

    def _fail(
        self,
        deal: DealView,
        step: str,
        attempt_id: int | None,
        attempt_no: int,
        exc: Exception,
        duration: int,
        holder: str | None,
    ) -> str | None:
        status = record_failure(
            self,
            deal_id=deal.id,
            opportunity_id=deal.opportunity_id,
            step=step,
            attempt_id=attempt_id,
            attempt_no=attempt_no,
            exc=exc,
            duration=duration,
            holder=holder,
        )
        return None if status == "lost" else status


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
    its lease back. Returns the new status ("lost" when the lease was lost)."""
    decision = decide(exc, attempt=attempt_no, policy=prov.policy)
    request_id = getattr(exc, "stripe_request_id", None)
    status = RETRYING if decision.action == "retry" else NEEDS_ATTENTION
    held = prov.store.fail(
        deal_id=deal_id,
        step=step,
        attempt_id=attempt_id,
        attempt_no=attempt_no,
        retry_at=prov.clock() + timedelta(seconds=decision.delay) if status == RETRYING else None,
        reason=decision.reason,
        code=decision.code,
        duration=duration,
        holder=holder,
        stripe_request_id=request_id,
        idempotency_key=getattr(exc, "idempotency_key", None),
        detail=(
            {"mapping_errors": [_error_dict(e) for e in exc.errors]}
            if isinstance(exc, MappingFailed)
            else None
        ),
    )
    if not held:
        log.warning("lease_lost", deal_id=deal_id, step=step, attempt=attempt_no)
        return "lost"
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
