"""The overdue policy in several replicas at once, against the Stripe emulator, on SQLite and
PostgreSQL: exactly one acts on an invoice (one cancellation, one event, one cancel request
to Stripe), and a run that dies between Stripe's cancel and its commit ends in one too."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.port import BillingSubscription
from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.db.models import CANCELLED, Deal, DealEvent, EntitlementGrant
from sf_bridge.invoices.overdue import (
    OVERDUE_LEASE,
    OverdueAction,
    apply_overdue_policy,
    overdue_store,
)
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.api import STANDARD_ENTITLEMENTS, seed_deal
from tests.integration.invoices.conftest import DUE, Provisioned

CANCEL_ROUTE = "DELETE /v1/subscriptions/{id}"


class PausingGateway(StripeGateway):
    """The real gateway, that stops after its cancel request reached Stripe until released
    (so the other replica runs while this one is between Stripe's cancel and its commit)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.cancelled = threading.Event()
        self.go_on = threading.Event()

    def cancel_subscription(
        self, subscription_id: str, idempotency_key: str
    ) -> BillingSubscription:
        done = super().cancel_subscription(subscription_id, idempotency_key)
        self.cancelled.set()
        assert self.go_on.wait(30), "the test never let the replica go on"
        return done


class Crash(BaseException):
    """The process dies (not an error the policy handles)."""


class CrashingGateway(StripeGateway):
    """The real gateway, whose process dies right after Stripe cancelled the subscription."""

    def cancel_subscription(
        self, subscription_id: str, idempotency_key: str
    ) -> BillingSubscription:
        super().cancel_subscription(subscription_id, idempotency_key)
        raise Crash


def _run(
    session_factory: sessionmaker[Session], gateway: StripeGateway, now: datetime
) -> list[OverdueAction]:
    return apply_overdue_policy(
        session_factory, gateway, None, now=now, grace_days=7, dry_run=False
    )


def _cancellation_events(session_factory: sessionmaker[Session], deal_id: int) -> int:
    with session_factory() as session:
        return (
            session.scalar(
                select(func.count(DealEvent.id)).where(
                    DealEvent.deal_id == deal_id, DealEvent.kind == "subscription_cancelled"
                )
            )
            or 0
        )


def _assert_cancelled_once(
    session_factory: sessionmaker[Session], stripe_emulator: StripeEmulator, p: Provisioned
) -> None:
    assert stripe_emulator.get(p.subscription_id)["status"] == "canceled"
    assert stripe_emulator.stats.snapshot().by_route.get(CANCEL_ROUTE) == 1
    assert _cancellation_events(session_factory, p.deal_id) == 1
    with session_factory() as session:
        deal = session.get_one(Deal, p.deal_id)
        assert deal.status == CANCELLED
        assert deal.last_error_code == "invoice_overdue"
        assert deal.locked_by is None
        active = session.scalar(
            select(func.count(EntitlementGrant.id)).where(EntitlementGrant.active.is_(True))
        )
    assert active == 0


def test_two_replicas_at_once_cancel_an_overdue_invoice_once(
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
) -> None:
    late = provisioned.due_at + timedelta(days=8)
    first = PausingGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    second = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    found: list[list[OverdueAction]] = []
    replica = threading.Thread(
        target=lambda: found.append(_run(session_factory, first, late)), daemon=True
    )
    replica.start()
    try:
        assert first.cancelled.wait(30), "the first replica never cancelled"
        # The first replica holds the deal: the second, running now, takes nothing.
        assert _run(session_factory, second, late) == []
    finally:
        first.go_on.set()
        replica.join(30)
    assert [a.action for a in found[0]] == ["cancelled"]
    _assert_cancelled_once(session_factory, stripe_emulator, provisioned)
    assert _run(session_factory, second, late + timedelta(days=1)) == []


def test_a_replica_dying_after_stripes_cancel_ends_in_one_cancellation(
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
) -> None:
    late = provisioned.due_at + timedelta(days=8)
    dying = CrashingGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    other = StripeGateway(stripe_emulator.api_key, api_base=stripe_emulator.url)
    try:
        _run(session_factory, dying, late)
    except Crash:
        pass
    else:
        raise AssertionError("the replica did not die")
    assert stripe_emulator.get(provisioned.subscription_id)["status"] == "canceled"
    assert _cancellation_events(session_factory, provisioned.deal_id) == 0
    with session_factory() as session:
        assert session.get_one(Deal, provisioned.deal_id).status != CANCELLED

    assert _run(session_factory, other, late) == []  # the dead replica's lease still holds
    # Another replica, once the dead one's lease ran out, records the cancellation Stripe
    # already made, without asking Stripe to cancel again.
    actions = _run(session_factory, other, late + OVERDUE_LEASE + timedelta(seconds=1))
    assert [a.action for a in actions] == ["cancelled"]
    _assert_cancelled_once(session_factory, stripe_emulator, provisioned)


def test_overdue_claims_take_at_most_their_limit_and_never_share_a_deal(
    session_factory: sessionmaker[Session],
) -> None:
    for n in range(5):
        seed_deal(
            session_factory,
            STANDARD_ENTITLEMENTS,
            opportunity_id=f"00600000000010{n}AAA",
            subscription_id=f"sub_test_{n}",
            invoice_id=f"in_test_{n}",
            invoice_due_at=DUE,
        )
    now = DUE + timedelta(days=30)
    a, b = (overdue_store(session_factory, now) for _ in range(2))
    first = [deal.id for deal, _ in a.claim_overdue(DUE, 3)]
    second = [deal.id for deal, _ in b.claim_overdue(DUE, 3)]
    assert (len(first), len(second)) == (3, 2)
    assert not set(first) & set(second)
    assert b.claim_overdue(DUE, 3) == []
    assert [due for _, due in a.overdue(DUE)] == []  # all leased: a dry run lists none now
