"""Runs one deal's steps in order, committing each outcome before the next step starts.

For every step: take the account's lease for Stripe steps and record the attempt (committed
*before* Stripe is called, so a later attempt knows an earlier one may have created
something: `DealStore.start`), run the pure step on the deal's view
(`sf_bridge.provisioning.steps`), then have the store commit its outcome in one guarded
transaction (`DealStore.commit`), which moves the deal on and renews the lease. The store
commits the writes of the deals of many threads together (`group_commit`); a deal's last
outcome, after which nothing is requested from Stripe, is not waited for: it rides in the
next transaction or in `flush()`, which the worker loop calls before it looks for work. A failure
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
from sf_bridge.provisioning.amendment import EarlierDealFirst
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

# The account is busy: another deal of it (or of its customers row) is in a Stripe step.
_BUSY = Started(resumed=False)


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
            self.store.release(deal_id)
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
        started: Started | None = None  # the account's lease kept from the previous step
        while True:
            if deal is None:
                return None
            if stop.is_set() or deal.current_step not in DEAL_STEPS:
                if deal.locked_by == self.owner:
                    self.store.release(deal_id)
                return deal.status
            if deal.locked_by != self.owner:
                return None
            moved_on, status, started = self.run_step(deal, deal.current_step, started)
            if moved_on is None:
                return status
            deal = moved_on

    def run_step(
        self, deal: DealView, step: str, started: Started | None = None
    ) -> tuple[DealView | None, str | None, Started | None]:
        """One step of one deal (with the pure steps that ride in its start or its commit):
        the deal as committed when the step succeeded, else None and its status (None when
        the lease was lost); and, when the account's lease is kept for the next step (which
        writes to Stripe too), that step's start (`started`: given by the previous step)."""
        bound = log.bind(deal_id=deal.id, opportunity_id=deal.opportunity_id, step=step)
        attempt_no = deal.attempts + 1
        if step == STEP_MAP:
            return self._map_then_start(deal, bound)
        locked = started is not None
        try:
            if started is None:
                started = self._start(deal, step)
        except Exception as exc:
            return None, self._fail(deal, step, attempt_no, exc, 0), None
        if started is _BUSY:
            return self._busy(deal, bound)
        if started is not None:
            locked = True
            deal = started.deal or deal
        resumed = started.resumed if started is not None else False
        known = started.customer if started is not None else None
        began = time.perf_counter()
        try:
            outcome = self._execute(replace(deal, resumed=resumed), step, known)
            duration = int((time.perf_counter() - began) * 1000)
            following = self._following(deal, step, outcome)
            also = self._pure_after(deal, step, outcome, following)
            if also:
                following = next_step(also[0][0], custom_plan=False)
            keep = locked and following in ACCOUNT_STEPS
            done = [step, *(a[0] for a in also)]
            committed = self.store.commit(
                deal,
                step,
                outcome,
                status=outcome.status or STATUS_AFTER[step],
                next_step=following,
                attempt_no=attempt_no,
                duration=duration,
                detail=_json_safe(dict(outcome.detail)),
                before_commit=lambda: self._before_commit(done, deal.id),
                start_next=keep,
                also=also,
                # a last outcome with no Stripe request after it rides in the next commit
                defer=True,
                after_commit=lambda: self._after_commit(done, deal.id),
            )
        except EarlierDealFirst as exc:
            bound.info("earlier_deal_first", reason=str(exc))
            return self._busy(deal, bound)
        except Exception as exc:
            duration = int((time.perf_counter() - began) * 1000)
            return None, self._fail(deal, step, attempt_no, exc, duration), None
        if committed is None:
            bound.warning("lease_lost", attempt=attempt_no)
            return None, None, None
        view, next_started = committed
        bound.info(
            "step_done",
            attempt=attempt_no,
            duration_ms=duration,
            stripe_request_id=outcome.stripe_request_id,
            **{k: v for k, v in outcome.detail.items() if isinstance(v, str | int | bool)},
        )
        return view, view.status, next_started

    def _before_commit(self, steps: list[str], deal_id: int) -> None:
        for step in steps:
            self.hooks.before_commit(step, deal_id)

    def _after_commit(self, steps: list[str], deal_id: int) -> None:
        for step in steps:
            self.hooks.after_commit(step, deal_id)

    def flush(self) -> None:
        """Commits the outcomes waiting to ride in the next transaction (see
        `DealStore.commit`'s `defer`): before the deals are looked for again."""
        self.store.flush()

    def _following(self, deal: DealView, step: str, outcome: Outcome) -> str | None:
        custom = (
            "plan" in outcome.changes
            and bool(outcome.changes["plan"])
            and (outcome.changes["plan"].get("plan_kind") == "custom")
        ) or ("plan" not in outcome.changes and deal.custom_plan)
        return outcome.skip_to or next_step(step, custom_plan=custom)

    def _pure_after(
        self, deal: DealView, step: str, outcome: Outcome, following: str | None
    ) -> tuple[tuple[str, Outcome, str, dict[str, Any]], ...]:
        """The entitlements step is pure: when it comes next and can run on this step's
        outcome, its outcome rides in this step's commit. A failure of it is left to its own
        run (this step commits alone)."""
        if following != STEP_ENTITLEMENTS or outcome.ensure_customer is not None:
            return ()
        after = deal.with_changes({**outcome.changes, "status": STATUS_AFTER[step]})
        if after.customer_id is None:
            return ()
        try:
            granted = entitlements_step(self.ctx, after)
        except Exception:
            return ()
        return (
            (
                STEP_ENTITLEMENTS,
                granted,
                STATUS_AFTER[STEP_ENTITLEMENTS],
                _json_safe(dict(granted.detail)),
            ),
        )

    def _map_then_start(
        self, deal: DealView, bound: Any
    ) -> tuple[DealView | None, str | None, Started | None]:
        """The map step is pure: its outcome rides in the customer step's start (one
        transaction, before the customer request) when the account is free; otherwise it is
        committed alone and the deal waits for its account."""
        attempt_no = deal.attempts + 1
        began = time.perf_counter()
        try:
            outcome = map_step(self.ctx, deal)
            duration = int((time.perf_counter() - began) * 1000)
            following = self._following(deal, STEP_MAP, outcome)
            mapped = deal.with_changes(
                {**outcome.changes, "status": STATUS_AFTER[STEP_MAP], "current_step": following}
            )
            if following == STEP_CUSTOMER and not mapped.custom_plan:
                plan = mapped.plan_or_fail()
                started = self.store.start(
                    mapped,
                    STEP_CUSTOMER,
                    account=plan.customer.account_id,
                    identity=plan.customer,
                    changes={
                        **outcome.changes,
                        "status": STATUS_AFTER[STEP_MAP],
                        "current_step": following,
                        "attempts": 0,
                        "next_attempt_at": None,
                        "last_error": None,
                        "last_error_code": None,
                        "updated_at": self.clock(),
                    },
                    before_commit=lambda: self.hooks.before_commit(STEP_MAP, deal.id),
                    prior=(STEP_MAP, attempt_no, duration, _json_safe(dict(outcome.detail))),
                )
                if started is not None:
                    self.hooks.after_commit(STEP_MAP, deal.id)
                    bound.info("step_done", attempt=attempt_no, duration_ms=duration)
                    assert started.deal is not None
                    return started.deal, started.deal.status, started
            committed = self.store.commit(
                deal,
                STEP_MAP,
                outcome,
                status=STATUS_AFTER[STEP_MAP],
                next_step=following,
                attempt_no=attempt_no,
                duration=duration,
                detail=_json_safe(dict(outcome.detail)),
                before_commit=lambda: self.hooks.before_commit(STEP_MAP, deal.id),
            )
        except Exception as exc:
            duration = int((time.perf_counter() - began) * 1000)
            return None, self._fail(deal, STEP_MAP, attempt_no, exc, duration), None
        if committed is None:
            bound.warning("lease_lost", attempt=attempt_no)
            return None, None, None
        self.hooks.after_commit(STEP_MAP, deal.id)
        bound.info("step_done", attempt=attempt_no, duration_ms=duration)
        return committed[0], committed[0].status, None

    def _busy(
        self, deal: DealView, bound: Any
    ) -> tuple[DealView | None, str | None, Started | None]:
        if not self.store.reschedule(deal.id, self.options.account_busy_delay):
            bound.warning("lease_lost")
            return None, None, None
        bound.info("account_busy_rescheduled")
        return None, deal.status, None

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

    def _start(self, deal: DealView, step: str) -> Started | None:
        """Before a Stripe step: takes the account's lease and marks the step as requested,
        in one commit, so that a later attempt knows an earlier one may have reached Stripe.
        `_BUSY` when another deal of the account or of its customers row holds the lease
        (the deal is rescheduled, not waited for); None for steps that do not write to
        Stripe."""
        if step not in ACCOUNT_STEPS:
            return None
        plan = deal.plan_or_fail()
        if plan.is_custom:  # no Stripe for entitlements-only plans: nothing to serialise
            return None
        started = self.store.start(
            deal, step, account=plan.customer.account_id, identity=plan.customer
        )
        return _BUSY if started is None else started

    def _fail(
        self, deal: DealView, step: str, attempt_no: int, exc: Exception, duration: int
    ) -> str | None:
        status = record_failure(
            self,
            deal_id=deal.id,
            opportunity_id=deal.opportunity_id,
            step=step,
            attempt_no=attempt_no,
            exc=exc,
            duration=duration,
        )
        return None if status == "lost" else status


def record_failure(
    prov: Provisioner,
    *,
    deal_id: int,
    opportunity_id: str,
    step: str,
    attempt_no: int,
    exc: Exception,
    duration: int = 0,
) -> str:
    """Records a failed attempt and moves the deal to `retrying` or `needs_attention`, giving
    its lease back. Returns the new status ("lost" when the lease was lost)."""
    decision = decide(exc, attempt=attempt_no, policy=prov.policy)
    request_id = getattr(exc, "stripe_request_id", None)
    status = RETRYING if decision.action == "retry" else NEEDS_ATTENTION
    held = prov.store.fail(
        deal_id=deal_id,
        step=step,
        attempt_no=attempt_no,
        retry_at=prov.clock() + timedelta(seconds=decision.delay) if status == RETRYING else None,
        reason=decision.reason,
        code=decision.code,
        duration=duration,
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
