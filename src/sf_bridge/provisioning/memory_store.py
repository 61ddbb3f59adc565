"""`InMemoryStore`: the deal store's interface over plain dictionaries, for unit tests of the
runner and the steps without a database. It keeps the same rules as `DealStore`: a claim
leases due deals, a commit checks the lease and that the deal was not cancelled, the account's
lease (on the deal row) keeps two deals of one account apart, a Stripe step is marked as
requested before its request, an attempt row is recorded when the attempt is over."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sf_bridge.provisioning.outcome import CustomerView, DealView, Outcome
from sf_bridge.provisioning.states import ACCOUNT_STEPS, DEAL_STEPS, SETTLED, STEP_CUSTOMER
from sf_bridge.provisioning.store import Started


class InMemoryStore:
    def __init__(self, *, owner: str, lease: timedelta, clock: Callable[[], datetime]) -> None:
        self.owner = owner
        self.lease = lease
        self.clock = clock
        self.deals: dict[int, dict[str, Any]] = {}
        self.attempts: list[dict[str, Any]] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.grants: dict[tuple[int, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # set-up for tests ----------------------------------------------------------------------

    def add_deal(self, opportunity_id: str, **columns: Any) -> int:
        deal_id = next(self._ids)
        row: dict[str, Any] = dict.fromkeys(DealView.columns())
        row.update(
            id=deal_id,
            opportunity_id=opportunity_id,
            status="received",
            current_step="fetch",
            attempts=0,
            source="stream",
            locked_until=None,
            account_until=None,
            next_attempt_at=None,
            last_error_code=None,
        )
        row.update(columns)
        self.deals[deal_id] = row
        return deal_id

    # the store's interface -----------------------------------------------------------------

    def claim(self, steps: Collection[str], limit: int) -> list[DealView]:
        now = self.clock()
        with self._lock:
            due = [
                row
                for row in sorted(self.deals.values(), key=lambda r: r["id"])
                if row["current_step"] in steps
                and row["status"] not in SETTLED
                and (row["next_attempt_at"] is None or row["next_attempt_at"] <= now)
                and (row["locked_until"] is None or row["locked_until"] < now)
                and (
                    row["current_step"] not in ACCOUNT_STEPS
                    or not self._account_held(row["id"], row["account_id"], row["customer_id"], now)
                )
            ][:limit]
            for row in due:
                row.update(locked_by=self.owner, locked_until=now + self.lease, account_until=None)
            return [DealView.from_row(row) for row in due]

    def load(self, deal_ids: Collection[int]) -> list[DealView]:
        return [DealView.from_row(self.deals[i]) for i in sorted(deal_ids) if i in self.deals]

    def release(self, deal_id: int) -> None:
        with self._lock:
            row = self.deals.get(deal_id)
            if row is not None and row["locked_by"] == self.owner:
                row.update(locked_by=None, locked_until=None, account_until=None)

    def reschedule(self, deal_id: int, delay: timedelta) -> bool:
        with self._lock:
            row = self._owned(deal_id)
            if row is None:
                return False
            row.update(
                next_attempt_at=self.clock() + delay,
                locked_by=None,
                locked_until=None,
                account_until=None,
            )
            return True

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
        now = self.clock()
        with self._lock:
            row = self._owned(deal.id)
            if row is None:
                return None
            known: CustomerView | None = None
            customer_id = deal.customer_id
            if step == STEP_CUSTOMER:
                known = self._ensure_customer(identity)
                customer_id = known.id
            if self._account_held(deal.id, account, customer_id, now):
                return None
            if before_commit is not None:
                before_commit()  # a crash here commits nothing: nothing is changed yet
            values = {
                **(changes or {}),
                "account_id": account,
                "customer_id": customer_id,
                "account_until": now + self.lease,
                "locked_until": now + self.lease,
                "stripe_requested": deal.with_requested(step),
            }
            row.update(values)
            resumed = deal.requested(step)
            if known is not None:
                customer = self.customers[identity.customer_key]
                resumed = resumed or customer["create_requested_at"] is not None
                if customer["create_requested_at"] is None and not customer["stripe_customer_id"]:
                    customer["create_requested_at"] = now
            if prior is not None:
                done, attempt_no, duration, detail = prior
                self._attempt(
                    deal.id,
                    done,
                    attempt_no,
                    now,
                    outcome="ok",
                    duration_ms=duration,
                    detail=detail,
                )
            return Started(resumed, known, deal.with_changes(values))

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
        defer: bool = False,  # committed at once here: nothing rides in a later transaction
        after_commit: Callable[[], None] | None = None,
    ) -> tuple[DealView, Started | None] | None:
        committed = self._commit(
            deal,
            step,
            outcome,
            status,
            next_step,
            attempt_no,
            detail,
            before_commit,
            start_next,
            also,
        )
        if committed is not None and after_commit is not None:
            after_commit()
        return committed

    def flush(self) -> None:
        """Nothing waits for a later transaction in memory."""

    def _commit(
        self,
        deal: DealView,
        step: str,
        outcome: Outcome,
        status: str,
        next_step: str | None,
        attempt_no: int,
        detail: Mapping[str, Any],
        before_commit: Callable[[], None],
        start_next: bool,
        also: tuple[tuple[str, Outcome, str, Mapping[str, Any]], ...],
    ) -> tuple[DealView, Started | None] | None:
        now = self.clock()
        results = [(step, outcome, status, detail), *also]
        with self._lock:
            row = self._owned(deal.id)
            if row is None:
                return None
            changes: dict[str, Any] = {}
            for _step, done, _status, _detail in results:
                changes.update(done.changes)
                if done.ensure_customer is not None:
                    changes["customer_id"] = self._ensure_customer(done.ensure_customer).id
            before_commit()  # a crash here commits nothing: nothing is changed yet
            in_flight = next_step in DEAL_STEPS
            row.update(
                changes,
                status=results[-1][2],
                current_step=next_step,
                attempts=0,
                next_attempt_at=None,
                last_error=None,
                last_error_code=None,
                locked_by=self.owner if in_flight else None,
                locked_until=now + self.lease if in_flight else None,
                account_until=now + self.lease if start_next else None,
            )
            if start_next and next_step is not None:
                row["stripe_requested"] = deal.with_requested(next_step)
            customer_id = row["customer_id"]
            customer = next((c for c in self.customers.values() if c["id"] == customer_id), None)
            for done_step, done, _status, done_detail in results:
                if done.stripe_customer_id and customer and not customer["stripe_customer_id"]:
                    customer["stripe_customer_id"] = done.stripe_customer_id
                for grant in done.grants:
                    self.grants.setdefault(
                        (deal.id, grant.feature),
                        {
                            "customer_id": customer_id,
                            "value": grant.value,
                            "active": not done.grants_pending,
                            "pending": done.grants_pending,
                        },
                    )
                self._attempt(deal.id, done_step, attempt_no, now, outcome="ok", detail=done_detail)
            started = (
                Started(deal.requested(next_step)) if start_next and next_step is not None else None
            )
            return DealView.from_row(row), started

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
        now = self.clock()
        with self._lock:
            row = self._owned(deal_id)
            if row is None:
                return False
            retrying = retry_at is not None
            row.update(
                status="retrying" if retrying else "needs_attention",
                current_step=step,
                attempts=attempt_no,
                last_error=reason,
                last_error_code=code,
                locked_by=None,
                locked_until=None,
                account_until=None,
                next_attempt_at=retry_at,
            )
            self._attempt(
                deal_id,
                step,
                attempt_no,
                now,
                outcome="retry" if retrying else "failed",
                error=reason,
                error_code=code,
            )
            if not retrying:
                self.events.append({"deal_id": deal_id, "kind": "needs_attention"})
            return True

    def renew(self, deal_ids: Collection[int], until: datetime) -> int:
        with self._lock:
            renewed = 0
            for deal_id in deal_ids:
                row = self._owned(deal_id)
                if row is not None:
                    row["locked_until"] = until
                    if row["account_until"] is not None:
                        row["account_until"] = until
                    renewed += 1
            return renewed

    # changes from outside the steps --------------------------------------------------------

    def requeue(
        self,
        deal_id: int,
        *,
        expected_status: str,
        values: Mapping[str, Any],
        events: list[dict[str, Any]],
        claimable: bool = True,
    ) -> bool:
        now = self.clock()
        with self._lock:
            row = self.deals.get(deal_id)
            if (
                row is None
                or row["status"] != expected_status
                or row["status"] == "cancelled"
                or (row["locked_until"] is not None and row["locked_until"] >= now)
            ):
                return False
            row.update(values, locked_by=None, locked_until=None)
            self.events.extend({**e, "deal_id": deal_id} for e in events)
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
        with self._lock:
            row = self.deals.get(deal_id)
            if row is None or row["status"] == "cancelled":
                return False
            previous = row["status"]
            row["status"] = "cancelled"
            if code is not None:
                row.update(last_error=reason, last_error_code=code)
            self.events.append(
                {
                    "deal_id": deal_id,
                    "kind": "cancelled",
                    "detail": {"reason": reason, "by": by, "previous_status": previous},
                }
            )
            return True

    # inside --------------------------------------------------------------------------------

    def _owned(self, deal_id: int) -> dict[str, Any] | None:
        row = self.deals.get(deal_id)
        if row is None or row["locked_by"] != self.owner or row["status"] == "cancelled":
            return None
        return row

    def _ensure_customer(self, identity: Any) -> CustomerView:
        row = self.customers.get(identity.customer_key)
        if row is None:
            row = self.customers[identity.customer_key] = {
                "id": len(self.customers) + 1,
                "customer_key": identity.customer_key,
                "sf_account_id": identity.account_id,
                "name": identity.name,
                "email": identity.email,
                "stripe_customer_id": None,
                "create_requested_at": None,
            }
        return CustomerView(**row)

    def _account_held(
        self, deal_id: int, account: str | None, customer_id: int | None, now: datetime
    ) -> bool:
        """Another live deal holds the account's lease of this account or customers row."""
        return any(
            other["id"] != deal_id
            and (
                (account is not None and other["account_id"] == account)
                or (customer_id is not None and other["customer_id"] == customer_id)
            )
            and other["account_until"] is not None
            and other["account_until"] >= now
            and other["locked_by"] is not None
            and other["locked_until"] is not None
            and other["locked_until"] >= now
            and other["status"] not in SETTLED
            for other in self.deals.values()
        )

    def _attempt(
        self, deal_id: int, step: str, attempt_no: int, now: datetime, **values: Any
    ) -> None:
        self.attempts.append(
            {
                "id": len(self.attempts) + 1,
                "deal_id": deal_id,
                "step": step,
                "attempt": attempt_no,
                "started_at": now,
                "finished_at": now,
                **values,
            }
        )


__all__ = ["InMemoryStore"]
