"""Card deals (charge_automatically) through crashes: the process dies just before or just
after each commit of the card-deal steps (the pending grants, the first payment recorded by
webhook, the expiry's revocation, the status written back), then starts again. The grants are
put in effect or revoked once, the opportunity ends with the right status, and nothing is
asked of Stripe twice.

Webhooks are delivered by the Stripe emulator to the real HTTP service, signed; a delivery
that gets no 2xx answer (the process died handling it) is delivered again, as Stripe does
("Stripe automatically resends the undelivered events to your endpoint for up to three
days", docs.stripe.com/webhooks/process-undelivered-events)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.api import create_app
from sf_bridge.crm.port import InMemoryCrm, OpportunityUpdate, WriteBackResult
from sf_bridge.db.models import CANCELLED, Deal, DealEvent, EntitlementGrant, WebhookEvent
from sf_bridge.invoices.webhooks import process_event
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.states import STEPS
from sf_bridge.provisioning.store import FIRST_PAYMENT_MISSING, DealStore
from tests.fixtures.api import WEBHOOK_SECRET, api_settings, serve_in_thread
from tests.fixtures.provisioning import Harness, drain, make_plan, settled
from tests.fixtures.waiting import wait_until
from tests.integration.provisioning.test_crash_safety import SimulatedCrash, crash_at

DAY = 23 * 3600 + 60  # Stripe expires an incomplete subscription unpaid after 23 hours
STATUS = "Provisioning_Status__c"
ERROR = "Provisioning_Error__c"


class HandlerCrash(Exception):
    """The service dying while it handles a delivery: Stripe gets no 2xx and sends it again.
    (An Exception, so the HTTP server answers 500 instead of dropping its thread.)"""


@dataclass
class RecordingCrm(InMemoryCrm):
    """The in-memory org, keeping every update it was sent; `crash` (when set) is called with
    each update list before (`"before"`) and after (`"after"`) Salesforce takes it."""

    updates: list[OpportunityUpdate] = field(default_factory=list)
    crash: Callable[[str, list[OpportunityUpdate]], None] | None = None

    def write_back(self, updates: list[OpportunityUpdate]) -> list[WriteBackResult]:
        if self.crash is not None:
            self.crash("before", updates)
        results = super().write_back(updates)
        self.updates.extend(updates)
        if self.crash is not None:
            self.crash("after", updates)
        return results

    def statuses(self, opportunity_id: str) -> list[Any]:
        """The status values written onto the opportunity, oldest first."""
        return [
            u.fields[STATUS]
            for u in self.updates
            if u.opportunity_id == opportunity_id and STATUS in u.fields
        ]


@pytest.fixture
def card(stripe_harness: Harness) -> Harness:
    """The harness with an org that records what it is told; card deals grant on the first
    payment (the default)."""
    stripe_harness.crm = RecordingCrm()
    return stripe_harness


def _crm(h: Harness) -> RecordingCrm:
    assert isinstance(h.crm, RecordingCrm)
    return h.crm


def _enqueue(h: Harness, opp: str) -> None:
    h.add_opportunity(make_plan(opp, collection_method="charge_automatically"))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="test")


def _provision(h: Harness, opp: str) -> None:
    _enqueue(h, opp)
    drain(h.worker(), settled(h, opp))
    assert h.deal(opp).status == "done", h.deal(opp).last_error


def _grants(h: Harness) -> list[tuple[str, bool, bool]]:
    """(feature, active, pending) of every grant row, by feature."""
    with h.session_factory() as session:
        rows = session.execute(
            select(
                EntitlementGrant.feature, EntitlementGrant.active, EntitlementGrant.pending
            ).order_by(EntitlementGrant.feature, EntitlementGrant.id)
        ).all()
    return [(str(f), bool(a), bool(p)) for f, a, p in rows]


def _event_kinds(h: Harness, opp: str) -> list[str]:
    deal_id = h.deal(opp).id
    with h.session_factory() as session:
        return list(
            session.scalars(
                select(DealEvent.kind).where(DealEvent.deal_id == deal_id).order_by(DealEvent.id)
            )
        )


def _stripe_writes(emu: Any) -> list[str]:
    """The routes of every write sf-bridge sent to Stripe (the emulator's own timeline and
    the customer's payment are not requests)."""
    return [r.route for r in emu.requests() if r.method != "GET"]


@contextmanager
def _service(h: Harness, db_url: str, emu: Any) -> Iterator[str]:
    """The HTTP service, receiving the emulator's webhooks (retried quickly)."""
    app = create_app(api_settings(db_url), h.session_factory, billing=h.billing)
    emu.webhooks.timeout = 30.0  # a loaded machine is slow, not dead
    with serve_in_thread(app) as url:
        emu.add_webhook_endpoint(f"{url}/webhooks/stripe", WEBHOOK_SECRET)
        yield url


def _crash_webhook(
    monkeypatch: pytest.MonkeyPatch, outcome: str, phase: str
) -> list[tuple[str, str]]:
    """The service dies once while it handles the event whose outcome is `outcome`: before
    the event's transaction commits (the transaction is rolled back) or after (the answer is
    lost). Returns the crashes (event id, outcome) as they happen."""
    import sf_bridge.api.webhook_routes as routes
    import sf_bridge.invoices.webhooks as webhooks

    crashed: list[tuple[str, str]] = []
    if phase == "before":
        real_apply = webhooks.apply_stripe_event

        def apply(session: Session, event: Any, billing: Any = None) -> str:
            result = real_apply(session, event, billing)
            if result == outcome and not crashed:
                crashed.append((str(event["id"]), result))
                raise HandlerCrash(f"before the commit of {event['type']}")
            return result

        monkeypatch.setattr(webhooks, "apply_stripe_event", apply)
    else:
        real_process = routes.process_event

        def process(session_factory: sessionmaker[Session], event: Any, billing: Any = None) -> Any:
            result = real_process(session_factory, event, billing)
            if result.outcome == outcome and not crashed:
                crashed.append((result.event_id, result.outcome))
                raise HandlerCrash(f"after the commit of {event['type']}")
            return result

        monkeypatch.setattr(routes, "process_event", process)
    return crashed


def _outcomes(h: Harness, event_id: str) -> list[str | None]:
    with h.session_factory() as session:
        return list(
            session.scalars(select(WebhookEvent.outcome).where(WebhookEvent.id == event_id))
        )


def _deliveries(emu: Any, event_id: str) -> list[int | None]:
    return [a.status for a in emu.webhook_attempts() if a.event_id == event_id]


def _redelivered(emu: Any, crashed: list[tuple[str, str]], what: str) -> str:
    """Waits until the delivery the service died on was delivered again and answered 2xx,
    and every other event delivered; the event's id."""

    def answered() -> bool:
        return bool(crashed) and 200 in _deliveries(emu, crashed[0][0])

    wait_until(answered, timeout=30, what=f"the delivery that recorded {what}, again")
    assert emu.wait_for_webhooks(10)
    event_id = crashed[0][0]
    # The delivery the service died on got no 2xx: a 500 (or, on a starved machine, no
    # answer within the emulator's timeout).
    assert _deliveries(emu, event_id)[0] in (500, None)
    return event_id


# -- the pending grants: a crash around each step of a card deal ---------------------------


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("step", STEPS)
def test_card_deal_crash_around_a_step_commit_leaves_one_pending_grant_per_feature(
    card: Harness, provisioning_emulator: Any, step: str, phase: str
) -> None:
    h, emu = card, provisioning_emulator
    opp = "006000000000031AAA"
    _enqueue(h, opp)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=crash_at(step, phase), owner="first"), settled(h, opp))
    h.clock.advance(120)  # the dead worker's leases expire
    drain(h.worker(owner="restarted"), settled(h, opp))

    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == ("done", "awaiting_payment"), deal.last_error
    assert (emu.count("customer"), emu.count("subscription"), emu.count("invoice")) == (1, 1, 1)
    assert emu.get(deal.stripe_subscription_id)["status"] == "incomplete"
    assert _grants(h) == [("seats", False, True), ("sso", False, True)]
    # Written once, or again with the same text when the crash lost the write-back's commit.
    assert set(_crm(h).statuses(opp)) == {"Provisioned, awaiting payment"}
    assert len(_crm(h).statuses(opp)) == (2 if (step, phase) == ("write_back", "before") else 1)


# -- the first payment, by webhook ----------------------------------------------------------


@pytest.mark.parametrize("phase", ["before", "after"])
def test_a_crash_around_the_first_payment_commit_puts_the_grants_in_effect_once(
    card: Harness,
    provisioning_emulator: Any,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    phase: str,
) -> None:
    h, emu = card, provisioning_emulator
    opp = "006000000000032AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    writes = _stripe_writes(emu)
    crashed = _crash_webhook(monkeypatch, "first_payment_recorded", phase)
    with _service(h, db_url, emu):
        emu.pay_invoice(deal.stripe_invoice_id)
        event_id = _redelivered(emu, crashed, "the payment")
    assert len(_outcomes(h, event_id)) == 1  # recorded once, whichever event applied it
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state, deal.invoice_status) == ("done", "paid", "paid")
    assert _grants(h) == [("seats", True, False), ("sso", True, False)]
    assert _event_kinds(h, opp).count("first_payment_received") == 1
    h.worker().run_once()
    assert _crm(h).statuses(opp) == ["Provisioned, awaiting payment", "Provisioned"]
    assert _stripe_writes(emu) == writes  # the payment asked nothing of Stripe


# -- the expiry, by webhook ------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("policy", ["on_first_payment", "at_once"])
def test_a_crash_around_the_expiry_commit_revokes_once_and_tells_the_opportunity_once(
    card: Harness,
    provisioning_emulator: Any,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    phase: str,
    policy: str,
) -> None:
    h, emu = card, provisioning_emulator
    h.mappings.card_entitlements = policy
    opp = "006000000000033AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    writes = _stripe_writes(emu)
    crashed = _crash_webhook(monkeypatch, "subscription_cancelled", phase)
    with _service(h, db_url, emu):
        emu.advance_clock(DAY)
        _redelivered(emu, crashed, "the expiry")
    assert emu.get(deal.stripe_subscription_id)["status"] == "incomplete_expired"
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == (CANCELLED, "expired")
    assert deal.last_error_code == FIRST_PAYMENT_MISSING
    assert _grants(h) == [("seats", False, False), ("sso", False, False)]
    assert _event_kinds(h, opp).count("subscription_cancelled") == 1
    h.worker().run_once()
    h.worker().run_once()
    assert _crm(h).statuses(opp) == ["Provisioned, awaiting payment", "Cancelled"]
    assert "incomplete_expired" in h.crm.written[opp][ERROR]
    assert _stripe_writes(emu) == writes  # Stripe voided and expired it; we asked nothing


# -- the status written back after the payment or the expiry ----------------------------------


def _pay(h: Harness, emu: Any, opp: str) -> None:
    """The first invoice is paid and its webhook events applied (read from Stripe)."""
    deal = h.deal(opp)
    emu.pay_invoice(deal.stripe_invoice_id)
    for event in emu.events():
        process_event(h.session_factory, event, h.billing)
    assert h.deal(opp).payment_state == "paid"


def _expire(h: Harness, emu: Any, opp: str) -> None:
    emu.advance_clock(DAY)
    for event in emu.events():
        process_event(h.session_factory, event, h.billing)
    assert h.deal(opp).status == CANCELLED


def _crash_on(text: str, where: str) -> Callable[[str, list[OpportunityUpdate]], None]:
    fired: list[bool] = []

    def crash(phase: str, updates: list[OpportunityUpdate]) -> None:
        if phase == where and not fired and any(u.fields.get(STATUS) == text for u in updates):
            fired.append(True)
            raise SimulatedCrash(f"{where} Salesforce took {text!r}")

    return crash


@pytest.mark.parametrize(
    ("where", "writes"),
    [
        ("before", 1),  # died before the call reached Salesforce: written once, on restart
        ("after", 2),  # Salesforce took it, the commit was lost: the same text again
        ("commit", 1),  # died after our commit: nothing left to write
    ],
)
@pytest.mark.parametrize("ending", ["paid", "expired"])
def test_a_crash_around_the_payment_write_back_tells_the_opportunity_its_state(
    card: Harness,
    provisioning_emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
    writes: int,
    ending: str,
) -> None:
    h, emu = card, provisioning_emulator
    opp = "006000000000034AAA"
    _provision(h, opp)
    text = "Provisioned" if ending == "paid" else "Cancelled"
    (_pay if ending == "paid" else _expire)(h, emu, opp)
    if where == "commit":
        method = "payments_reported" if ending == "paid" else "cancelled_reported"
        real = getattr(DealStore, method)
        fired: list[bool] = []

        def commit_then_die(self: DealStore, *args: Any, **kwargs: Any) -> None:
            real(self, *args, **kwargs)
            if not fired:
                fired.append(True)
                raise SimulatedCrash(f"after the commit of {method}")

        monkeypatch.setattr(DealStore, method, commit_then_die)
    else:
        _crm(h).crash = _crash_on(text, where)
    with pytest.raises(SimulatedCrash):
        h.worker(owner="first").run_once()
    _crm(h).crash = None
    h.clock.advance(120)
    for _ in range(2):
        h.worker(owner="restarted").run_once()

    assert _crm(h).statuses(opp)[1:] == [text] * writes
    assert not h.deal(opp).writeback_pending
    expected_grants = (ending == "paid", False)
    assert [g[1:] for g in _grants(h)] == [expected_grants, expected_grants]
    kind = "first_payment_received" if ending == "paid" else "subscription_cancelled"
    assert _event_kinds(h, opp).count(kind) == 1


def test_a_payment_recorded_while_the_status_is_being_written_is_written_after(
    card: Harness, provisioning_emulator: Any
) -> None:
    """The first payment comes in while the write-back step is telling the opportunity
    "Provisioned, awaiting payment": the opportunity must end saying "Provisioned"."""
    h, emu = card, provisioning_emulator
    opp = "006000000000035AAA"
    _enqueue(h, opp)
    paid: list[bool] = []

    def pay_meanwhile(phase: str, updates: list[OpportunityUpdate]) -> None:
        awaiting = any(u.fields.get(STATUS) == "Provisioned, awaiting payment" for u in updates)
        if phase == "after" and awaiting and not paid:
            paid.append(True)
            _pay(h, emu, opp)

    _crm(h).crash = pay_meanwhile
    drain(h.worker(), settled(h, opp))
    assert paid
    for _ in range(2):
        h.worker().run_once()
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == ("done", "paid")
    assert _crm(h).statuses(opp)[-1] == "Provisioned"
    assert not deal.writeback_pending
    assert _grants(h) == [("seats", True, False), ("sso", True, False)]


# -- deliveries twice and out of order -------------------------------------------------------


@pytest.mark.parametrize("read_from_stripe", [True, False])
@pytest.mark.parametrize("ending", ["paid", "expired"])
def test_every_delivery_order_twice_ends_in_the_same_state(
    card: Harness, provisioning_emulator: Any, read_from_stripe: bool, ending: str
) -> None:
    """Each of the subscription's events delivered in reverse order then again in order,
    applied from Stripe's current objects or (no billing port) from the events' own copies:
    one payment or one expiry recorded, the same grants, the same deal state."""
    h, emu = card, provisioning_emulator
    opp = "006000000000036AAA" if ending == "paid" else "006000000000037AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    if ending == "paid":
        emu.pay_invoice(deal.stripe_invoice_id)
    else:
        emu.advance_clock(DAY)
    events = [
        e
        for e in emu.events()
        if deal.stripe_subscription_id
        in (
            e["data"]["object"].get("id"),
            ((e["data"]["object"].get("parent") or {}).get("subscription_details") or {}).get(
                "subscription"
            ),
        )
    ]
    billing = h.billing if read_from_stripe else None
    for event in [*reversed(events), *events]:
        process_event(h.session_factory, event, billing)
    deal = h.deal(opp)
    kinds = _event_kinds(h, opp)
    if ending == "paid":
        assert (deal.status, deal.payment_state) == ("done", "paid")
        assert _grants(h) == [("seats", True, False), ("sso", True, False)]
        assert kinds.count("first_payment_received") == 1
    else:
        assert (deal.status, deal.payment_state) == (CANCELLED, "expired")
        assert _grants(h) == [("seats", False, False), ("sso", False, False)]
        assert kinds.count("subscription_cancelled") == 1
        assert "first_payment_received" not in kinds


# -- the worker's own check, when the webhook never came -------------------------------------


def _day_later() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=24)


@pytest.mark.parametrize("phase", ["none", "before", "after"])
@pytest.mark.parametrize("ending", ["paid", "expired"])
def test_the_worker_asks_stripe_about_a_card_deal_whose_webhook_never_came(
    card: Harness,
    provisioning_emulator: Any,
    monkeypatch: pytest.MonkeyPatch,
    ending: str,
    phase: str,
) -> None:
    """No webhook endpoint: Stripe's events are lost. 23 hours on, the check reads the
    subscription from Stripe and records the payment or the end once, whatever crash."""
    import sf_bridge.db.engine as engine_module
    import sf_bridge.provisioning.payment_check as check

    h, emu = card, provisioning_emulator
    h.mappings.card_entitlements = "at_once"
    opp = "006000000000038AAA"
    _provision(h, opp)
    deal = h.deal(opp)
    assert check.check_unpaid_card_deals(h.session_factory, h.billing, now=deal.completed_at) == []
    if ending == "paid":
        emu.pay_invoice(deal.stripe_invoice_id)
    else:
        emu.advance_clock(DAY)
    assert h.deal(opp).payment_state == "awaiting_payment"  # nothing told sf-bridge
    writes = _stripe_writes(emu)
    if phase != "none":
        real = engine_module.transaction
        fired: list[bool] = []

        @contextmanager
        def dying(factory: sessionmaker[Session]) -> Iterator[Session]:
            with real(factory) as session:
                yield session
                if phase == "before" and not fired:
                    fired.append(True)
                    raise SimulatedCrash("before the commit of the check")
            if phase == "after" and not fired:
                fired.append(True)
                raise SimulatedCrash("after the commit of the check")

        monkeypatch.setattr(check, "transaction", dying)
        with pytest.raises(SimulatedCrash):
            check.check_unpaid_card_deals(h.session_factory, h.billing, now=_day_later())
    found = check.check_unpaid_card_deals(h.session_factory, h.billing, now=_day_later())
    again = check.check_unpaid_card_deals(h.session_factory, h.billing, now=_day_later())

    expected = "first_payment_recorded" if ending == "paid" else "subscription_cancelled"
    assert [c.outcome for c in found] == ([] if phase == "after" else [expected])
    assert again == []  # nothing left awaiting
    deal = h.deal(opp)
    kinds = _event_kinds(h, opp)
    if ending == "paid":
        assert (deal.status, deal.payment_state) == ("done", "paid")
        assert _grants(h) == [("seats", True, False), ("sso", True, False)]
        assert kinds.count("first_payment_received") == 1
    else:
        assert (deal.status, deal.payment_state) == (CANCELLED, "expired")
        assert deal.last_error_code == FIRST_PAYMENT_MISSING
        assert _grants(h) == [("seats", False, False), ("sso", False, False)]
        assert kinds.count("subscription_cancelled") == 1
    h.worker().run_once()
    text = "Provisioned" if ending == "paid" else "Cancelled"
    assert _crm(h).statuses(opp) == ["Provisioned, awaiting payment", text]
    assert _stripe_writes(emu) == writes  # only reads


def test_the_check_leaves_a_deal_stripe_still_keeps_incomplete_or_does_not_know(
    card: Harness, provisioning_emulator: Any
) -> None:
    from sf_bridge.provisioning.payment_check import check_unpaid_card_deals

    h = card
    opp = "006000000000039AAA"
    _provision(h, opp)
    [found] = check_unpaid_card_deals(h.session_factory, h.billing, now=_day_later())
    # The emulator's clock did not move: Stripe has not expired it yet.
    assert (found.status, found.outcome) == ("incomplete", "unchanged")
    with h.session_factory() as session, session.begin():
        deal = session.scalars(select(Deal).where(Deal.opportunity_id == opp)).one()
        deal.stripe_subscription_id = "sub_unknown"
    [found] = check_unpaid_card_deals(h.session_factory, h.billing, now=_day_later())
    assert (found.status, found.outcome) == ("missing", "unchanged")
    assert h.deal(opp).payment_state == "awaiting_payment"
    assert _grants(h) == [("seats", False, True), ("sso", False, True)]


@pytest.mark.parametrize("after", ["invoice", "entitlements"])
def test_a_payment_between_the_steps_puts_the_grants_in_effect_once(
    card: Harness, provisioning_emulator: Any, after: str
) -> None:
    """The first payment is recorded right after the invoice step (the entitlements step
    then records grants pending on a deal already paid) or right after the grants: either
    way they end in effect, once."""
    from sf_bridge.provisioning.runner import StepHooks

    h, emu = card, provisioning_emulator
    opp = "006000000000040AAA"
    _enqueue(h, opp)
    paid: list[bool] = []

    def pay(step: str, _deal_id: int) -> None:
        if step == after and not paid:
            paid.append(True)
            _pay(h, emu, opp)

    drain(h.worker(hooks=StepHooks(after_commit=pay)), settled(h, opp))
    h.worker().run_once()
    assert paid
    deal = h.deal(opp)
    assert (deal.status, deal.payment_state) == ("done", "paid")
    assert _grants(h) == [("seats", True, False), ("sso", True, False)]
    assert _event_kinds(h, opp).count("first_payment_received") == 1
    assert _crm(h).statuses(opp)[-1] == "Provisioned"
