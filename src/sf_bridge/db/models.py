"""Tables. Idempotency lives here: one deal per opportunity, one customer per customer key.

Deal statuses follow the state machine of docs/operations.md:

    received -> fetched -> mapped -> customer_ready -> subscription_created -> invoice_open
    -> entitled -> done   (the write-back is recorded on the way: written_back_at)
    any step: retrying (transient, with next_attempt_at) or needs_attention (permanent)
    skipped: fetched but never provisioned on purpose (no longer won, or won before the
    provisioning floor); the reason is in last_error, its code in last_error_code
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def id_18_check(column: str) -> str:
    """The CHECK that keeps a Salesforce id column in the 18-character form `to_18` gives:
    18 characters, the 3-character suffix in upper case (the same record under a lower-case
    suffix would be a second key). The migrations use the same text."""
    return f"length({column}) = 18 AND substr({column}, 16, 3) = upper(substr({column}, 16, 3))"


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


# Deal statuses, in order of progress.
PROGRESS = (
    "received",
    "fetched",
    "mapped",
    "customer_ready",
    "subscription_created",
    "invoice_open",
    "entitled",
    "done",
)
RETRYING = "retrying"
NEEDS_ATTENTION = "needs_attention"
CANCELLED = "cancelled"
SKIPPED = "skipped"
SCHEDULED = "scheduled"  # a contract starting later waits for its start
UNWON = "unwon"  # left its won stage after the fetch: the `when_unwon` policy is to apply
CANCELLING = "cancelling"  # the cancellation sequence is under way
STATUSES = (*PROGRESS, SCHEDULED, RETRYING, NEEDS_ATTENTION, CANCELLED, SKIPPED, UNWON, CANCELLING)


class Deal(Base):
    """One won opportunity and how far its provisioning got."""

    __tablename__ = "deals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    opportunity_id: Mapped[str] = mapped_column(String(18), unique=True)
    account_id: Mapped[str | None] = mapped_column(String(18), index=True)
    status: Mapped[str] = mapped_column(String(32), default="received", index=True)
    # The step to run next (or that failed, when retrying / needs_attention).
    current_step: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    locked_by: Mapped[str | None] = mapped_column(String(64))
    locked_until: Mapped[datetime | None]
    source: Mapped[str] = mapped_column(String(32), default="stream")

    opportunity: Mapped[dict[str, Any] | None]  # snapshot exactly as Salesforce returned it
    plan: Mapped[dict[str, Any] | None]  # ProvisioningPlan.to_dict()
    mapping_version: Mapped[str | None] = mapped_column(String(64))

    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True)
    # The account's lease: while set and ahead, and the deal is leased, no other deal of its
    # account or of its customers row is claimed into (or enters) a Stripe step.
    account_until: Mapped[datetime | None]
    # The Stripe steps whose request may have gone out (comma-separated, marked before it).
    stripe_requested: Mapped[str | None] = mapped_column(String(128))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(String(64), index=True)
    invoice_status: Mapped[str | None] = mapped_column(String(32))
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    invoice_pdf: Mapped[str | None] = mapped_column(Text)
    invoice_due_at: Mapped[datetime | None]
    # A contract starting later (or a ramp): the Stripe subscription schedule that creates the
    # subscription at the contract's start, and that start.
    stripe_schedule_id: Mapped[str | None] = mapped_column(String(64))
    contract_start_at: Mapped[datetime | None]
    # A deal charged automatically (card): awaiting_payment until its first invoice is paid,
    # then paid; expired when the subscription expired unpaid. None for other deals.
    payment_state: Mapped[str | None] = mapped_column(String(32))
    # The payment state the opportunity was last told (by the write-back, then by the payment
    # report): the report writes the deals whose state moved on since (payment_report.py).
    payment_reported: Mapped[str | None] = mapped_column(String(32), index=True)

    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_code: Mapped[str | None] = mapped_column(String(64))
    writeback_pending: Mapped[bool] = mapped_column(Boolean, default=False)
    written_back_at: Mapped[datetime | None]

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None]

    attempts_log: Mapped[list[StepAttempt]] = relationship(
        back_populates="deal", order_by="StepAttempt.id", cascade="all, delete-orphan"
    )
    events: Mapped[list[DealEvent]] = relationship(
        back_populates="deal", order_by="DealEvent.id", cascade="all, delete-orphan"
    )

    __table_args__ = (
        Index("ix_deals_claim", "status", "next_attempt_at"),
        Index("ix_deals_status_error_code", "status", "last_error_code"),  # console's groups
        # Salesforce ids only in their 18-character form: one record, one key.
        CheckConstraint(id_18_check("opportunity_id"), name="ck_deals_opportunity_id_18"),
        CheckConstraint(id_18_check("account_id"), name="ck_deals_account_id_18"),
    )


class StepAttempt(Base):
    """One try at one step of one deal: timing, outcome, error and idempotency key."""

    __tablename__ = "step_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id", ondelete="CASCADE"), index=True)
    step: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16), default="running")  # ok|retry|failed|running
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    stripe_request_id: Mapped[str | None] = mapped_column(String(255))
    detail: Mapped[dict[str, Any] | None]
    # Attempts of this deal's step between its first and this one, pruned as old (they are
    # still counted in /metrics through step_attempt_totals).
    pruned_before: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    deal: Mapped[Deal] = relationship(back_populates="attempts_log")


class StepAttemptTotal(Base):
    """The step attempts folded into totals, by step and outcome: what /metrics reports for
    them without reading them again (`sf_bridge.provisioning.attempt_history`)."""

    __tablename__ = "step_attempt_totals"

    step: Mapped[str] = mapped_column(String(32), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(16), primary_key=True)
    attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    timed: Mapped[int] = mapped_column(BigInteger, default=0)  # with a duration
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)  # their sum
    buckets: Mapped[list[int]] = mapped_column(JSON)  # cumulative, per histogram bound


class StepAttemptRollup(Base):
    """One row: step attempts up to `folded_to` (an id) are in step_attempt_totals."""

    __tablename__ = "step_attempt_rollup"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    folded_to: Mapped[int] = mapped_column(BigInteger, default=0)
    folded_at: Mapped[datetime | None]
    pruned_at: Mapped[datetime | None]


class DealEvent(Base):
    """A line of a deal's history that is not a step attempt (received, replayed, cancelled)."""

    __tablename__ = "deal_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any] | None]

    deal: Mapped[Deal] = relationship(back_populates="events")


class Customer(Base):
    """One Stripe customer and the key that names it (`ProvisioningPlan.customer.customer_key`:
    the customer identifier's value, and the currency when customers are split by currency);
    reused by every deal with that key. `sf_account_id` is the account whose deal made it:
    an account can have several (one per currency), and accounts can share one."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sf_account_id: Mapped[str] = mapped_column(String(18), index=True)
    customer_key: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str | None] = mapped_column(String(255))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Set before the first request that may create its Stripe customer: a later deal of this
    # customer searches Stripe before creating.
    create_requested_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    grants: Mapped[list[EntitlementGrant]] = relationship(back_populates="customer")

    __table_args__ = (
        UniqueConstraint("customer_key", name="uq_customers_customer_key"),
        # The Account id only in its 18-character form: one account, one key.
        CheckConstraint(id_18_check("sf_account_id"), name="ck_customers_sf_account_id_18"),
    )


class EntitlementGrant(Base):
    """One entitlement granted by one deal. Effective entitlements = active grants combined."""

    __tablename__ = "entitlement_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    deal_id: Mapped[int] = mapped_column(ForeignKey("deals.id"), index=True)
    feature: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # flag|limit|seats
    value: Mapped[int] = mapped_column(BigInteger)  # flags store 1/0
    unit: Mapped[str | None] = mapped_column(String(32))
    # how this feature's grants of several deals combine: sum | max | any (flags)
    combine: Mapped[str] = mapped_column(String(8), default="sum", server_default="sum")
    source: Mapped[str] = mapped_column(String(255), default="")
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(64), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Recorded but not in effect: waiting for the card deal's first payment (then active), or
    # revoked when the subscription expires unpaid. A pending grant is never active.
    pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    # In effect from the contract's start (or the ramp phase's) until the term's end; None:
    # from the grant on, until revoked.
    valid_from: Mapped[datetime | None]
    valid_until: Mapped[datetime | None]
    phase: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # ramp phase

    customer: Mapped[Customer] = relationship(back_populates="grants")

    __table_args__ = (
        UniqueConstraint("deal_id", "feature", "phase", name="uq_grant_deal_feature_phase"),
    )


class StreamCheckpoint(Base):
    """Durable position of an intake source: the stream replay id or the sweep's high-water mark."""

    __tablename__ = "stream_checkpoints"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # channel or "sweep"
    value: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class UsageCounter(Base):
    """Metered usage of one feature by one account in one calendar period (e.g. "2026-11"),
    whichever of the account's customers granted the limit."""

    __tablename__ = "usage_counters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sf_account_id: Mapped[str] = mapped_column(String(18))
    feature: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(16))
    used: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (
        UniqueConstraint("sf_account_id", "feature", "period", name="uq_usage_counter"),
        CheckConstraint(id_18_check("sf_account_id"), name="ck_usage_counters_sf_account_id_18"),
    )


class UsageRecord(Base):
    """One usage report, kept so a report resent with its idempotency key counts once."""

    __tablename__ = "usage_records"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sf_account_id: Mapped[str] = mapped_column(String(18))
    idempotency_key: Mapped[str] = mapped_column(String(255))
    feature: Mapped[str] = mapped_column(String(64))
    period: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("sf_account_id", "idempotency_key", name="uq_usage_record_key"),
        CheckConstraint(id_18_check("sf_account_id"), name="ck_usage_records_sf_account_id_18"),
    )


class WebhookEvent(Base):
    """A Stripe event already processed; its id makes a redelivered event a no-op."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)  # Stripe event id
    type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime | None]  # when Stripe created the event
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    outcome: Mapped[str] = mapped_column(String(255), default="")


class AlertNotice(Base):
    """One notice to on-call: a deal parked, a deal retrying too long, the stream down or back.

    Unique on (subject, reason): inserted before anything is sent, so several replicas and
    restarts notify once per deal and reason (`deal:<id>` / `needs_attention:<step>:<code>`)."""

    __tablename__ = "alert_notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(96))  # deal:<id> | stream:<channel>
    reason: Mapped[str] = mapped_column(String(160))
    kind: Mapped[str] = mapped_column(String(32))  # deal.needs_attention | deal.retrying | ...
    deal_id: Mapped[int | None] = mapped_column(
        ForeignKey("deals.id", ondelete="CASCADE"), index=True
    )
    content: Mapped[dict[str, Any]]  # what the notice says, as it was when raised
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    deliveries: Mapped[list[AlertDelivery]] = relationship(
        back_populates="notice", order_by="AlertDelivery.id", cascade="all, delete-orphan"
    )

    __table_args__ = (UniqueConstraint("subject", "reason", name="uq_alert_notice_key"),)


class AlertDelivery(Base):
    """One notice on one channel (slack, webhook, email): pending until sent, retried with
    backoff, failed after the last attempt."""

    __tablename__ = "alert_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("alert_notices.id", ondelete="CASCADE"))
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sent|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None]

    notice: Mapped[AlertNotice] = relationship(back_populates="deliveries")

    __table_args__ = (
        UniqueConstraint("notice_id", "channel", name="uq_alert_delivery_channel"),
        Index("ix_alert_deliveries_due", "status", "next_attempt_at"),
    )


class ReconcileReport(Base):
    """One run of `sf-bridge reconcile` (by hand or on the worker's schedule): the whole
    report as JSON; the newest is what the console shows."""

    __tablename__ = "reconcile_reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime] = mapped_column(index=True)
    since: Mapped[datetime | None]
    mismatches: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))  # "command" or "schedule"
    report: Mapped[dict[str, Any]]
