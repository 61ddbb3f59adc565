"""`InMemoryStore`: the deal store's interface over plain dictionaries, for unit tests of the
runner and the steps without a database. It keeps the same rules as `DealStore`: a claim
leases due deals, a commit checks the lease and that the deal was not cancelled, the account's
lease keeps two deals of one account apart, an attempt is recorded before a Stripe request."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from sf_bridge.provisioning.outcome import CustomerView, DealView, Outcome
from sf_bridge.provisioning.states import DEAL_STEPS, SETTLED, STEP_CUSTOMER
from sf_bridge.provisioning.store import Started


class InMemoryStore:
    def __init__(self, *, owner: str, lease: timedelta, clock: Callable[[], datetime]) -> None:
        self.owner = owner
        self.lease = lease
        self.clock = clock
        self.deals: dict[int, dict[str, Any]] = {}
        self.attempts: list[dict[str, Any]] = []
        self.customers: dict[str, dict[str, Any]] = {}
        self.locks: dict[str, tuple[str, datetime]] = {}
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
            ][:limit]
            for row in due:
                row.update(locked_by=self.owner, locked_until=now + self.lease)
            return [DealView.from_row(row) for row in due]

    def load(self, deal_ids: Collection[int]) -> list[DealView]:
        return [DealView.from_row(self.deals[i]) for i in sorted(deal_ids) if i in self.deals]

    def release(self, deal_id: int, holder: str | None = None) -> None:
        with self._lock:
            row = self.deals.get(deal_id)
            if row is not None and row["locked_by"] == self.owner:
                row.update(locked_by=None, locked_until=None)
            if holder is not None:
                self._release_locks(holder)

    def reschedule(self, deal_id: int, delay: timedelta) -> None:
        with self._lock:
            row = self._owned(deal_id)
            if row is not None:
                row.update(next_attempt_at=self.clock() + delay, locked_by=None, locked_until=None)

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
        now = self.clock()
        with self._lock:
            known: CustomerView | None = None
            customer_id = deal.customer_id
            if step == STEP_CUSTOMER:
                known = self._ensure_customer(identity)
                customer_id = known.id
            names = [f"account:{account}"] + (
                [f"customer:{customer_id}"] if customer_id is not None else []
            )
            if not held:
                for name in names:
                    taken = self.locks.get(name)
                    if taken is not None and taken[0] != holder and taken[1] >= now:
                        return None
                for name in names:
                    self.locks[name] = (holder, now + self.lease)
            if step == STEP_CUSTOMER:
                row = self.deals[deal.id]
                row.update(account_id=account, customer_id=customer_id)
                same_customer = {
                    i for i, r in self.deals.items() if r["customer_id"] == customer_id
                }
                resumed = any(
                    a["step"] == step and a["deal_id"] in same_customer for a in self.attempts
                )
            else:
                resumed = self._earlier(deal.id, step)
            return Started(self._attempt(deal.id, step, attempt_no, now), resumed, known)

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
        now = self.clock()
        with self._lock:
            row = self._owned(deal.id)
            if row is None:
                return None
            changes = dict(outcome.changes)
            if outcome.ensure_customer is not None:
                changes["customer_id"] = self._ensure_customer(outcome.ensure_customer).id
            before_commit()  # a crash here commits nothing: nothing is changed yet
            in_flight = next_step in DEAL_STEPS
            row.update(
                changes,
                status=status,
                current_step=next_step,
                attempts=0,
                next_attempt_at=None,
                last_error=None,
                last_error_code=None,
                locked_by=self.owner if in_flight else None,
                locked_until=now + self.lease if in_flight else None,
            )
            customer_id = row["customer_id"]
            customer = next((c for c in self.customers.values() if c["id"] == customer_id), None)
            if outcome.stripe_customer_id and customer and not customer["stripe_customer_id"]:
                customer["stripe_customer_id"] = outcome.stripe_customer_id
            for grant in outcome.grants:
                self.grants.setdefault(
                    (deal.id, grant.feature),
                    {"customer_id": customer_id, "value": grant.value, "active": True},
                )
            self._finish(attempt_id, deal.id, step, attempt_no, now, outcome="ok", detail=detail)
            started = None
            if start_next and next_step is not None:
                started = Started(
                    self._attempt(deal.id, next_step, 1, now), self._earlier(deal.id, next_step)
                )
            if holder is not None:
                self._release_locks(holder)
            return DealView.from_row(row), started

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
        now = self.clock()
        with self._lock:
            if holder is not None:
                self._release_locks(holder)
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
                next_attempt_at=retry_at,
            )
            self._finish(
                attempt_id,
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
            }
        return CustomerView(**row)

    def _earlier(self, deal_id: int, step: str) -> bool:
        return any(a["deal_id"] == deal_id and a["step"] == step for a in self.attempts)

    def _attempt(self, deal_id: int, step: str, attempt_no: int, now: datetime) -> int:
        self.attempts.append(
            {
                "id": len(self.attempts) + 1,
                "deal_id": deal_id,
                "step": step,
                "attempt": attempt_no,
                "started_at": now,
                "outcome": "running",
            }
        )
        return len(self.attempts)

    def _finish(
        self,
        attempt_id: int | None,
        deal_id: int,
        step: str,
        attempt_no: int,
        now: datetime,
        **values: Any,
    ) -> None:
        if attempt_id is None:
            attempt_id = self._attempt(deal_id, step, attempt_no, now)
        self.attempts[attempt_id - 1].update(values, finished_at=now)

    def _release_locks(self, holder: str) -> None:
        for name in [n for n, (h, _until) in self.locks.items() if h == holder]:
            del self.locks[name]


__all__ = ["InMemoryStore"]
