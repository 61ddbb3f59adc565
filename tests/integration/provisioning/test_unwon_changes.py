"""Un-won after provisioning for a deal that changed a live subscription (an amendment, a
renewal), for a scheduled deal (its contract starts later), and what the opportunity is told
(a refused "Cancelled", `deals keep`): the real Stripe SDK against the emulator.

A change deal shares the account's subscription with the deal that made it: cancelling it
reverses exactly its change (its seats come off, its own invoice is voided, its grants
revoked), never the subscription or the first deal's invoice, and once."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from sf_bridge.crm.port import OpportunityUpdate, WriteBackResult
from sf_bridge.db.models import DealEvent, EntitlementGrant
from sf_bridge.plan import ContractTerms, EntitlementValue, add_months
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.runner import StepHooks
from sf_bridge.provisioning.store import keep_unwon, mark_unwon, queue_cancel
from tests.fixtures.provisioning import Harness, drain, make_plan, settled

FIRST = "006000000000401AAA"
SECOND = "006000000000402AAA"
LEASE = 30


class SimulatedCrash(BaseException):
    """The process dying: not an Exception, so nothing in the worker handles it."""


def _enqueue(h: Harness, *ids: str) -> None:
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, list(ids), source="test")


def _seats(n: int) -> tuple[EntitlementValue, ...]:
    return (EntitlementValue("seats", "seats", n, "seat", "Opportunity.Seats__c"),)


def _first_deal(h: Harness, quantity: int = 5) -> None:
    h.add_opportunity(make_plan(FIRST, quantity=quantity, entitlements=_seats(quantity)))
    _enqueue(h, FIRST)
    drain(h.worker(), settled(h, FIRST))
    assert h.deal(FIRST).status == "done", h.deal(FIRST).last_error


def _change(h: Harness, quantity: int, *, intent: str = "amendment", **kw: Any) -> None:
    lines = kw.pop("lines", "additions")
    proration = kw.pop("proration", None)
    plan = make_plan(SECOND, quantity=quantity, entitlements=_seats(quantity), **kw)
    h.add_opportunity(replace(plan, intent=intent, amendment_lines=lines, proration=proration))
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error


def _unwin(h: Harness, opp: str) -> list[str]:
    with h.session_factory() as session, session.begin():
        return mark_unwon(session, [opp], reason="Moved to Closed Lost.", source="test")


def _items(emu: Any, subscription_id: str | None) -> dict[str, int]:
    sub = emu.get(subscription_id)
    return {i["price"]["lookup_key"]: i["quantity"] for i in sub["items"]["data"]}


def _active_grants(h: Harness) -> dict[str, int]:
    with h.session_factory() as session:
        rows = session.scalars(select(EntitlementGrant).where(EntitlementGrant.active.is_(True)))
        return {f"{r.deal_id}:{r.feature}": r.value for r in rows}


def _kinds(h: Harness, deal_id: int) -> list[str]:
    with h.session_factory() as session:
        return list(
            session.scalars(
                select(DealEvent.kind).where(DealEvent.deal_id == deal_id).order_by(DealEvent.id)
            )
        )


def _status_is(h: Harness, opp: str, *statuses: str) -> Any:
    return lambda: h.deal(opp).status in statuses and not h.deal(opp).writeback_pending


def _updates_of(emu: Any, subscription_id: str) -> int:
    return sum(
        1
        for r in emu.requests()
        if r.route == "POST /v1/subscriptions/{id}"
        and subscription_id in r.path
        and r.status == 200
        and not r.replayed
    )


# an amendment --------------------------------------------------------------------------------


def test_cancel_policy_reverses_an_upsell_only(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """+20 seats on the account's subscription, then un-won: the 20 come off, the
    subscription and the first deal's invoice stay, only the upsell's grants go."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h)
    _change(h, 20)
    first, second = h.deal(FIRST), h.deal(SECOND)
    sub_id = first.stripe_subscription_id
    assert _items(emu, sub_id) == {"pro_monthly": 25}
    _unwin(h, SECOND)
    drain(h.worker(), _status_is(h, SECOND, "cancelled"))

    sub = emu.get(sub_id)
    assert sub["status"] == "active"
    assert _items(emu, sub_id) == {"pro_monthly": 5}
    assert emu.get(first.stripe_invoice_id)["status"] == "open"
    assert h.deal(FIRST).status == "done"
    assert _active_grants(h) == {f"{first.id}:seats": 5}
    assert SECOND in sub["metadata"]["sf_reversals"]
    kinds = _kinds(h, second.id)
    assert kinds.count("subscription_reversed") == 1
    assert "subscription_cancelled" not in kinds
    assert "invoice_voided" not in kinds
    assert h.crm.written[SECOND]["Provisioning_Status__c"] == "Cancelled"
    # nothing more to do: a later run sends no second reversal
    updates = _updates_of(emu, sub_id or "")
    for _ in range(2):
        h.worker().run_once()
    assert _updates_of(emu, sub_id or "") == updates


def test_an_upsell_is_reversed_whatever_later_additions_did(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """+20 seats, then a later add-on: the upsell's 20 come off, the add-on stays."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h)
    _change(h, 20)
    third = "006000000000403AAA"
    plan = make_plan(third, quantity=2, lookup_key="team_monthly", entitlements=())
    plan = replace(
        plan,
        intent="amendment",
        amendment_lines="additions",
        items=tuple(replace(i, kind="addon") for i in plan.items),
    )
    h.add_opportunity(plan)
    _enqueue(h, third)
    drain(h.worker(), settled(h, third))
    sub_id = h.deal(FIRST).stripe_subscription_id
    assert _items(emu, sub_id) == {"pro_monthly": 25, "team_monthly": 2}
    _unwin(h, SECOND)
    drain(h.worker(), _status_is(h, SECOND, "cancelled"))
    assert _items(emu, sub_id) == {"pro_monthly": 5, "team_monthly": 2}
    assert h.deal(third).status == "done"


def test_deals_cancel_of_an_always_invoice_upsell_voids_its_own_invoice_only(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """review, then `deals cancel N`: the upsell's proration invoice is voided, the first
    deal's stays open, and the reversal bills nothing (its invoice was voided)."""
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    _change(h, 20, proration="always_invoice")
    first, second = h.deal(FIRST), h.deal(SECOND)
    assert second.stripe_invoice_id
    assert second.stripe_invoice_id != first.stripe_invoice_id
    _unwin(h, SECOND)
    drain(h.worker(), _status_is(h, SECOND, "needs_attention"))
    parked = h.deal(SECOND)
    assert emu.get(parked.stripe_subscription_id)["status"] == "active"
    assert "reverse" in (parked.last_error or "")
    invoices = emu.count("invoice")
    with h.session_factory() as session, session.begin():
        assert queue_cancel(session, second.id, reason="walked away", actor="ana")
    drain(h.worker(), _status_is(h, SECOND, "cancelled"))

    assert emu.get(second.stripe_invoice_id)["status"] == "void"
    assert emu.get(first.stripe_invoice_id)["status"] == "open"
    assert _items(emu, first.stripe_subscription_id) == {"pro_monthly": 5}
    assert emu.get(first.stripe_subscription_id)["status"] == "active"
    assert emu.count("invoice") == invoices  # the reversal billed no credit note invoice
    reversal = [
        r
        for r in emu.requests()
        if r.route == "POST /v1/subscriptions/{id}" and "sf_reversals" in str(r.params)
    ]
    assert [r.params.get("proration_behavior") for r in reversal] == ["none"]
    assert _active_grants(h) == {f"{first.id}:seats": 5}


@pytest.mark.parametrize("intent", ["renewal", "totals"])
def test_a_renewal_or_totals_amendment_is_put_back_with_the_grants_it_replaced(
    stripe_harness: Harness, provisioning_emulator: Any, intent: str
) -> None:
    """A renewal (another price, billed from the renewal date) or a totals downgrade replaced
    the subscription's items and the first deal's grants: un-won before the renewal date,
    the items it replaced are put back, with their price, and so are those grants."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h, quantity=10)
    first = h.deal(FIRST)
    sub_id = first.stripe_subscription_id
    price_before = emu.get(sub_id)["items"]["data"][0]["price"]["id"]
    if intent == "renewal":
        _change(h, 8, intent="renewal", lookup_key="team_monthly")
        assert _items(emu, sub_id) == {"team_monthly": 8}
    else:
        _change(h, 4, lines="totals")
        assert _items(emu, sub_id) == {"pro_monthly": 4}
    assert _active_grants(h) == {f"{h.deal(SECOND).id}:seats": _only(h)}
    invoices = emu.count("invoice")
    _unwin(h, SECOND)
    drain(h.worker(), _status_is(h, SECOND, "cancelled"))

    sub = emu.get(sub_id)
    assert sub["status"] == "active"
    assert _items(emu, sub_id) == {"pro_monthly": 10}
    assert sub["items"]["data"][0]["price"]["id"] == price_before
    assert emu.count("invoice") == invoices
    assert emu.get(first.stripe_invoice_id)["status"] == "open"
    assert _active_grants(h) == {f"{first.id}:seats": 10}
    assert _kinds(h, h.deal(SECOND).id).count("subscription_reversed") == 1
    updates = _updates_of(emu, sub_id or "")
    for _ in range(2):
        h.worker().run_once()
    assert _updates_of(emu, sub_id or "") == updates


def _only(h: Harness) -> int:
    (value,) = _active_grants(h).values()
    return value


def test_a_renewal_whose_prices_took_effect_is_parked_not_guessed(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """The renewal date passed: the subscription renewed at the renewal's prices. Putting the
    old ones back is not done by guess: parked with the reason, nothing changed in Stripe."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h)
    _change(h, 5, intent="renewal", lookup_key="team_monthly")
    sub_id = h.deal(FIRST).stripe_subscription_id
    end = emu.get(sub_id)["items"]["data"][0]["current_period_end"]
    emu.advance_clock(end - emu.now() + 3600)
    assert emu.get(sub_id)["items"]["data"][0]["current_period_start"] >= end
    before = _items(emu, sub_id)
    _unwin(h, SECOND)
    drain(h.worker(), _status_is(h, SECOND, "needs_attention"))
    deal = h.deal(SECOND)
    assert deal.last_error_code == "unwon_change_not_reversible"
    assert "renewal whose prices took effect" in (deal.last_error or "")
    assert f"sf-bridge deals keep {deal.id}" in (deal.last_error or "")
    assert emu.get(sub_id)["status"] != "canceled"
    assert _items(emu, sub_id) == before
    # a replay does not settle it, nor does another un-won event
    from sf_bridge.provisioning.replay import replay

    for outcome in replay(h.session_factory, failed=True):
        assert not outcome.requeued
    assert _unwin(h, SECOND) == []
    assert h.deal(SECOND).last_error_code == "unwon_change_not_reversible"
    with h.session_factory() as session, session.begin():
        assert keep_unwon(session, deal.id, actor="ana", note=None)


def test_a_totals_amendment_changed_again_later_is_parked(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Totals 4, then a later upsell of 3: taking the totals back would undo the upsell."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h, quantity=10)
    _change(h, 4, lines="totals")
    third = "006000000000403AAA"
    plan = make_plan(third, quantity=3, entitlements=_seats(3))
    h.add_opportunity(replace(plan, intent="amendment", amendment_lines="additions"))
    _enqueue(h, third)
    drain(h.worker(), settled(h, third))
    sub_id = h.deal(FIRST).stripe_subscription_id
    assert _items(emu, sub_id) == {"pro_monthly": 7}
    _unwin(h, SECOND)
    drain(h.worker(), _status_is(h, SECOND, "needs_attention"))
    deal = h.deal(SECOND)
    assert deal.last_error_code == "unwon_change_not_reversible"
    assert f"Deal {h.deal(third).id} changed subscription" in (deal.last_error or "")
    assert _items(emu, sub_id) == {"pro_monthly": 7}


def test_the_first_deal_of_a_changed_subscription_is_parked_then_cancelled_after_them(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Un-won, the deal that made the subscription would end an upsell's items with it: it
    is parked; once the upsell is cancelled (taken off), it cancels as usual."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h)
    _change(h, 20)
    first = h.deal(FIRST)
    _unwin(h, FIRST)
    drain(h.worker(), _status_is(h, FIRST, "needs_attention"))
    parked = h.deal(FIRST)
    assert parked.last_error_code == "unwon_subscription_shared"
    assert f"sf-bridge deals cancel {h.deal(SECOND).id}" in (parked.last_error or "")
    assert emu.get(first.stripe_subscription_id)["status"] == "active"
    assert emu.get(first.stripe_invoice_id)["status"] == "open"
    _unwin(h, SECOND)
    drain(h.worker(), _status_is(h, SECOND, "cancelled"))
    with h.session_factory() as session, session.begin():
        assert queue_cancel(session, first.id, reason="lost", actor="ana")
    drain(h.worker(), _status_is(h, FIRST, "cancelled"))
    assert emu.get(first.stripe_subscription_id)["status"] == "canceled"
    assert emu.get(first.stripe_invoice_id)["status"] == "void"
    assert _active_grants(h) == {}


def test_an_amendment_unwon_while_its_update_is_in_flight_is_reversed(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """The amendment's update is in flight when the deal is un-won: its answer is never
    committed (no subscription id on the deal), but the change landed; the decision reads the
    account's subscription and its marker, and reverses it once."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    plan = make_plan(SECOND, quantity=20, entitlements=_seats(20))
    h.add_opportunity(replace(plan, intent="amendment", amendment_lines="additions"))
    billing = h.billing
    assert billing is not None
    real = billing.update_subscription
    seen: dict[str, Any] = {}

    def in_flight(*args: Any, **kwargs: Any) -> Any:
        billing.update_subscription = real  # type: ignore[method-assign]
        seen["unwon"] = _unwin(h, SECOND)
        return real(*args, **kwargs)

    billing.update_subscription = in_flight  # type: ignore[method-assign]
    _enqueue(h, SECOND)
    h.worker().run_once()
    assert seen["unwon"] == [SECOND]
    assert _items(emu, sub_id) == {"pro_monthly": 25}
    assert h.deal(SECOND).stripe_subscription_id is None
    h.clock.advance(LEASE + 1)
    drain(h.worker(), _status_is(h, SECOND, "cancelled"))
    assert _items(emu, sub_id) == {"pro_monthly": 5}
    assert emu.get(sub_id)["status"] == "active"
    assert emu.get(h.deal(FIRST).stripe_invoice_id)["status"] == "open"
    assert "subscription_reversed" in _kinds(h, h.deal(SECOND).id)


CHANGE_COMMITS = ("subscription_reversed", "cancelled", "cancel_written_back")


@pytest.mark.parametrize("lines", ["additions", "totals"])
@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("commit", CHANGE_COMMITS)
def test_crash_around_each_commit_of_an_amendments_cancellation(
    stripe_harness: Harness, provisioning_emulator: Any, commit: str, phase: str, lines: str
) -> None:
    """The worker dies just before or after one commit of an amendment's cancellation; the
    restarted one ends with one reversal in Stripe (additions: +20 off; totals 2: back to
    5), the first deal's grants in effect (restored once, for totals) and "Cancelled"
    written once (twice, same values, only between the write and its commit)."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    _first_deal(h)
    _change(h, 20 if lines == "additions" else 2, lines=lines)
    first, target = h.deal(FIRST), h.deal(SECOND).id
    sub_id = first.stripe_subscription_id or ""
    writes = _count_writes(h, SECOND)
    fired: list[bool] = []

    def hook(at: str, deal_id: int) -> None:
        if at == commit and deal_id == target and not fired:
            fired.append(True)
            raise SimulatedCrash(f"{phase} the commit of {commit}")

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    updates = _updates_of(emu, sub_id)
    _unwin(h, SECOND)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="crashing"), lambda: False)
    h.clock.advance(LEASE + 1)
    drain(h.worker(owner="restarted"), _status_is(h, SECOND, "cancelled"))
    for _ in range(2):
        h.worker(owner="restarted").run_once()

    assert _updates_of(emu, sub_id) == updates + 1  # one reversal
    assert _items(emu, sub_id) == {"pro_monthly": 5}
    assert _grant_values(h, first.id) == [5]
    assert emu.get(sub_id)["status"] == "active"
    assert emu.get(first.stripe_invoice_id)["status"] == "open"
    assert _kinds(h, target).count("subscription_reversed") == 1
    assert _kinds(h, target).count("cancelled") == 1
    assert _active_grants(h) == {f"{first.id}:seats": 5}
    cancelled = [u for u in writes if u.fields.get("Provisioning_Status__c") == "Cancelled"]
    between = commit == "cancel_written_back" and phase == "before"
    assert len(cancelled) == (2 if between else 1)


def _grant_values(h: Harness, deal_id: int) -> list[int]:
    with h.session_factory() as session:
        return list(
            session.scalars(
                select(EntitlementGrant.value).where(
                    EntitlementGrant.deal_id == deal_id, EntitlementGrant.active.is_(True)
                )
            )
        )


def _count_writes(h: Harness, opp: str) -> list[OpportunityUpdate]:
    writes: list[OpportunityUpdate] = []
    real = h.crm.write_back

    def counting(updates: list[OpportunityUpdate]) -> Any:
        writes.extend(u for u in updates if u.opportunity_id == opp)
        return real(updates)

    h.crm.write_back = counting  # type: ignore[method-assign]
    return writes


# a scheduled deal ----------------------------------------------------------------------------


def _next_month(emu: Any) -> ContractTerms:
    today = datetime.fromtimestamp(emu.now(), tz=UTC).date()
    start = add_months(today, 1)
    return ContractTerms(
        start_date=start.isoformat(),
        end_date=add_months(start, 12).isoformat(),
        term_months=12,
        source="Opportunity.Contract_Start_Date__c",
    )


def _scheduled(h: Harness, emu: Any) -> ContractTerms:
    contract = _next_month(emu)
    h.add_opportunity(replace(make_plan(FIRST, entitlements=_seats(5)), contract=contract))
    _enqueue(h, FIRST)
    drain(h.worker(), lambda: h.deal(FIRST).status in ("scheduled", "needs_attention"))
    assert h.deal(FIRST).status == "scheduled", h.deal(FIRST).last_error
    return contract


def _past_start(h: Harness, emu: Any, contract: ContractTerms) -> None:
    assert contract.start_date
    start = datetime.fromisoformat(contract.start_date).replace(tzinfo=UTC)
    seconds = (start - datetime.fromtimestamp(emu.now(), tz=UTC)).total_seconds() + 3600
    emu.advance_clock(seconds)
    h.clock.advance(seconds)


@pytest.mark.parametrize("phase", ["none", "before", "after"])
def test_an_unwon_scheduled_deal_cancels_its_schedule_once(
    stripe_harness: Harness, provisioning_emulator: Any, phase: str
) -> None:
    """A contract starting next month, un-won: its schedule is cancelled (else Stripe starts
    and bills the subscription at the start date), once, whatever crashes around the commit."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    contract = _scheduled(h, emu)
    deal = h.deal(FIRST)
    fired: list[bool] = []

    def hook(at: str, deal_id: int) -> None:
        if at == "schedule_cancelled" and deal_id == deal.id and not fired:
            fired.append(True)
            raise SimulatedCrash(f"{phase} the commit of the schedule's cancel")

    _unwin(h, FIRST)
    if phase != "none":
        hooks = StepHooks(**{f"{phase}_commit": hook})  # type: ignore[arg-type]
        with pytest.raises(SimulatedCrash):
            drain(h.worker(hooks=hooks, owner="crashing"), lambda: False)
        h.clock.advance(LEASE + 1)
    drain(h.worker(owner="restarted"), _status_is(h, FIRST, "cancelled"))

    assert emu.get(deal.stripe_schedule_id)["status"] == "canceled"
    assert len(emu.events("subscription_schedule.canceled")) == 1
    assert _kinds(h, deal.id).count("schedule_cancelled") == 1
    assert _active_grants(h) == {}
    cancels = [r for r in emu.requests() if r.route.endswith("/cancel")]
    assert [(r.params.get("invoice_now"), r.params.get("prorate")) for r in cancels] == [
        ("false", "false")
    ]
    _past_start(h, emu, contract)
    for _ in range(2):
        h.worker().run_once()
    assert emu.count("subscription") == 0
    assert emu.count("invoice") == 0
    assert h.deal(FIRST).status == "cancelled"


def test_an_unwon_deal_whose_schedule_started_ends_schedule_and_subscription_once(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Past its start: Stripe made the subscription and its first invoice under the schedule.
    Un-won: the invoice is voided, the schedule cancelled (which ends its subscription, no
    final invoice), the subscription not cancelled a second time."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    contract = _scheduled(h, emu)
    _past_start(h, emu, contract)
    drain(h.worker(), lambda: h.deal(FIRST).status in ("done", "needs_attention"))
    deal = h.deal(FIRST)
    assert deal.status == "done", deal.last_error
    assert deal.stripe_subscription_id
    invoices = emu.count("invoice")
    _unwin(h, FIRST)
    drain(h.worker(), _status_is(h, FIRST, "cancelled"))
    assert emu.get(deal.stripe_schedule_id)["status"] == "canceled"
    assert emu.get(deal.stripe_subscription_id)["status"] == "canceled"
    assert emu.get(deal.stripe_invoice_id)["status"] == "void"
    assert emu.count("invoice") == invoices
    assert not [r for r in emu.requests() if r.method == "DELETE"]
    kinds = _kinds(h, deal.id)
    assert [kinds.count(k) for k in ("schedule_cancelled", "subscription_cancelled")] == [1, 1]
    assert _active_grants(h) == {}


# what the opportunity is told ----------------------------------------------------------------


def test_a_refused_cancelled_write_back_is_retried_then_recorded(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Salesforce refuses "Cancelled" once (retryable: a lock): it is written again on a
    later round, not lost; refused for good (a validation rule), the deal's history says so."""
    h = stripe_harness
    h.mappings.when_unwon = "cancel"
    _first_deal(h)
    real = h.crm.write_back
    answers = ["UNABLE_TO_LOCK_ROW", "FIELD_CUSTOM_VALIDATION_EXCEPTION"]

    def refusing(updates: list[OpportunityUpdate]) -> list[WriteBackResult]:
        if answers and any(u.opportunity_id == FIRST for u in updates):
            error = answers.pop(0)
            return [
                WriteBackResult(u.opportunity_id, False, error, retryable=error.startswith("UN"))
                for u in updates
            ]
        return real(updates)

    h.crm.write_back = refusing  # type: ignore[method-assign]
    _unwin(h, FIRST)
    worker = h.worker()
    drain(worker, lambda: h.deal(FIRST).status == "cancelled")
    worker.run_once()
    assert h.deal(FIRST).writeback_pending  # the lock: to be written again
    assert answers == ["FIELD_CUSTOM_VALIDATION_EXCEPTION"]
    h.clock.advance(60)
    drain(worker, lambda: not h.deal(FIRST).writeback_pending)
    assert answers == []
    assert FIRST not in h.crm.written or h.crm.written[FIRST].get("Provisioning_Status__c") != (
        "Cancelled"
    )
    kinds = _kinds(h, h.deal(FIRST).id)
    assert "write_back_failed" in kinds


def test_deals_keep_writes_the_provisioned_status_back(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """`deals keep N`: the opportunity said "Needs attention" and "Run `sf-bridge deals
    cancel`…"; kept, it says "Provisioned" again, its error cleared, written once."""
    h = stripe_harness
    _first_deal(h)
    _unwin(h, FIRST)
    drain(h.worker(), _status_is(h, FIRST, "needs_attention"))
    assert h.crm.written[FIRST]["Provisioning_Status__c"] == "Needs attention"
    writes = _count_writes(h, FIRST)
    with h.session_factory() as session, session.begin():
        assert keep_unwon(session, h.deal(FIRST).id, actor="ana", note=None)
    drain(h.worker(), _status_is(h, FIRST, "done"))
    for _ in range(2):
        h.worker().run_once()
    assert h.crm.written[FIRST]["Provisioning_Status__c"] == "Provisioned"
    assert h.crm.written[FIRST]["Provisioning_Error__c"] is None
    assert len(writes) == 1


@pytest.mark.parametrize("phase", ["before", "after"])
def test_deals_keep_survives_a_crash_around_its_write_back(
    stripe_harness: Harness, provisioning_emulator: Any, phase: str
) -> None:
    """Kept, the deal's write-back commit is cut by a crash: the restarted worker writes
    "Provisioned" again only when the crash fell before the commit (same values), and the
    deal ends `done` with nothing sent to Stripe."""
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    _unwin(h, FIRST)
    drain(h.worker(), _status_is(h, FIRST, "needs_attention"))
    deal_id = h.deal(FIRST).id
    writes = _count_writes(h, FIRST)
    sent = len(emu.requests())
    fired: list[bool] = []

    def hook(at: str, deal: int) -> None:
        if at == "write_back" and deal == deal_id and not fired:
            fired.append(True)
            raise SimulatedCrash(f"{phase} the write-back commit")

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    with h.session_factory() as session, session.begin():
        assert keep_unwon(session, deal_id, actor="ana", note=None)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="crashing"), lambda: False)
    h.clock.advance(LEASE + 1)
    drain(h.worker(owner="restarted"), _status_is(h, FIRST, "done"))
    for _ in range(2):
        h.worker(owner="restarted").run_once()
    assert h.deal(FIRST).status == "done"
    assert len(writes) == (2 if phase == "before" else 1)
    assert all(w.fields == writes[0].fields for w in writes)
    assert writes[0].fields["Provisioning_Status__c"] == "Provisioned"
    assert writes[0].fields["Provisioning_Error__c"] is None
    assert len(emu.requests()) == sent
