"""What a step sees and what it returns, as plain values.

A step reads a `DealView` (an immutable copy of the deal's row, taken when the deal was
claimed or last committed) and returns an `Outcome`: the deal columns to set, the Stripe
customer to record on the deal's customers row, the entitlements to grant. Only the store
(`sf_bridge.provisioning.store`) writes them, in one guarded transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from functools import cache
from typing import Any

from sf_bridge.errors import PermanentError
from sf_bridge.plan import AccountFacts, CustomerIdentity, EntitlementValue, ProvisioningPlan


@dataclass(frozen=True)
class DealView:
    """The deal as a step sees it. `resumed` says that an earlier attempt of the step about
    to run may have reached Stripe (so the step searches Stripe before creating)."""

    id: int
    opportunity_id: str
    status: str
    current_step: str | None
    attempts: int
    source: str
    locked_by: str | None = None
    account_id: str | None = None
    customer_id: int | None = None
    opportunity: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None
    mapping_version: str | None = None
    stripe_customer_id: str | None = None
    stripe_subscription_id: str | None = None
    stripe_invoice_id: str | None = None
    invoice_status: str | None = None
    hosted_invoice_url: str | None = None
    stripe_schedule_id: str | None = None
    contract_start_at: datetime | None = None
    payment_state: str | None = None  # card deals: awaiting_payment | paid | expired
    last_error: str | None = None
    last_error_code: str | None = None
    created_at: datetime | None = None
    stripe_requested: str | None = None  # Stripe steps whose request may have gone out
    resumed: bool = False
    # What the claim read of the deal's account for its mapping (not a column of the row;
    # None when the deal was not claimed at its map step, and the mapper reads them itself)
    account_facts: AccountFacts | None = None

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The deals columns a view is read from."""
        return _deal_view_columns()

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DealView:
        return cls(**{name: row[name] for name in _deal_view_columns() if name in row})

    def with_changes(self, changes: Mapping[str, Any]) -> DealView:
        columns = _deal_view_column_set()
        known = {k: v for k, v in changes.items() if k in columns}
        return replace(self, resumed=False, **known)

    def requested(self, step: str) -> bool:
        """Whether a request of `step` may have reached Stripe before (marked before it)."""
        return step in (self.stripe_requested or "").split(",")

    def with_requested(self, step: str) -> str:
        """`stripe_requested` with `step` marked."""
        if self.requested(step):
            return self.stripe_requested or step
        return f"{self.stripe_requested},{step}" if self.stripe_requested else step

    @property
    def custom_plan(self) -> bool:
        return bool(self.plan) and (self.plan or {}).get("plan_kind") == "custom"

    def plan_or_fail(self) -> ProvisioningPlan:
        if not self.plan:
            raise PermanentError(
                "The deal has no provisioning plan.",
                hint="replay the deal so that it is mapped again.",
            )
        return ProvisioningPlan.from_dict(self.plan)


# Worked out once: a view is built and changed several times per deal.
@cache
def _deal_view_columns() -> tuple[str, ...]:
    return tuple(f.name for f in fields(DealView) if f.name not in _NOT_COLUMNS)


_NOT_COLUMNS = frozenset({"resumed", "account_facts"})


@cache
def _deal_view_column_set() -> frozenset[str]:
    return frozenset(_deal_view_columns())


@dataclass(frozen=True)
class CustomerView:
    """The deal's customers row (one per customer key)."""

    id: int
    customer_key: str
    sf_account_id: str
    name: str
    email: str | None
    stripe_customer_id: str | None
    create_requested_at: datetime | None = None


@dataclass(frozen=True)
class Outcome:
    """What a step found or created, for the store to record.

    `changes`: deal columns to set. `stripe_customer_id`: the Stripe customer to record on
    the deal's customers row (`customer_id`), unless it has one. `ensure_customer`: the
    customers row to make (custom plans, no Stripe). `grants`: entitlements to grant to the
    deal's customer; `grants_pending`: recorded as waiting for the first payment, not in
    effect (`sf_bridge.provisioning.payment`). `skip_to`: the next step when the plan says so.
    `replace_subscription_grants`: this deal's grants replace those of the other deals on
    its subscription."""

    changes: Mapping[str, Any] = field(default_factory=dict)
    stripe_customer_id: str | None = None
    ensure_customer: CustomerIdentity | None = None
    grants: tuple[EntitlementValue, ...] = ()
    grants_pending: bool = False
    idempotency_key: str | None = None
    stripe_request_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)
    skip_to: str | None = None
    status: str | None = None  # the deal's status after the step, when not the step's usual
    # grants in effect for a time: from the contract's (or a ramp phase's) start until the
    # term's end, one set per phase; recorded like `grants`
    dated_grants: tuple[DatedGrants, ...] = ()
    # a totals amendment or a renewal: the grants of the subscription's other deals are
    # replaced by this deal's (see `sf_bridge.provisioning.amendment`)
    replace_subscription_grants: bool = False


@dataclass(frozen=True)
class DatedGrants:
    """The entitlements of one phase of a contract, in effect from `valid_from` until
    `valid_until` (None: until revoked)."""

    phase: int
    entitlements: tuple[EntitlementValue, ...]
    valid_from: datetime | None
    valid_until: datetime | None
