"""After the first close: amendments, renewals and reopened deals change the account's live
subscription through the real Stripe SDK and the emulator, once, whatever crashes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time
from typing import Any

import pytest
from sqlalchemy import select

from sf_bridge.db.models import EntitlementGrant
from sf_bridge.plan import ContractTerms, Discount, EntitlementValue, PlanPhase, add_months
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import replay
from sf_bridge.provisioning.runner import StepHooks
from sf_bridge.provisioning.store import mark_changed_after_provisioning
from tests.fixtures.provisioning import CatalogEntry, Harness, drain, make_plan, settled

FIRST = "006000000000001AAA"
SECOND = "006000000000002AAA"
THIRD = "006000000000003AAA"


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


def _amendment(
    opp: str, quantity: int, *, lines: str = "additions", proration: str | None = None, **kw: Any
) -> Any:
    plan = make_plan(opp, quantity=quantity, entitlements=_seats(quantity), **kw)
    return replace(plan, intent="amendment", amendment_lines=lines, proration=proration)


def _items(emu: Any, subscription_id: str | None) -> dict[str, int]:
    sub = emu.get(subscription_id)
    return {i["price"]["lookup_key"]: i["quantity"] for i in sub["items"]["data"]}


def _grants(h: Harness) -> dict[str, int]:
    with h.session_factory() as session:
        rows = session.query(EntitlementGrant).filter(EntitlementGrant.active.is_(True)).all()
        return {f"{r.deal_id}:{r.feature}": r.value for r in rows}


def test_upsell_of_20_seats_adds_them_to_the_live_subscription(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    h.add_opportunity(_amendment(SECOND, 20))
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))

    deal = h.deal(SECOND)
    assert deal.status == "done", deal.last_error
    assert deal.stripe_subscription_id == sub_id
    assert emu.count("subscription") == 1
    assert _items(emu, sub_id) == {"pro_monthly": 25}
    assert SECOND in emu.get(sub_id)["metadata"]["sf_amendments"]
    # additions: each deal grants its own seats (25 in all, seats add up)
    assert sorted(_grants(h).values()) == [5, 20]


def test_an_add_on_is_a_new_item_and_a_totals_downgrade_replaces_the_grants(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    emu.seed_catalog([CatalogEntry("team_monthly_addon", "Team add-on", 700)])
    _first_deal(h, quantity=10)
    sub_id = h.deal(FIRST).stripe_subscription_id
    h.add_opportunity(_amendment(SECOND, 2, lookup_key="team_monthly_addon"))
    h.mappings.plans[SECOND] = replace(
        h.mappings.plans[SECOND],  # type: ignore[arg-type]
        items=tuple(replace(i, kind="addon") for i in h.mappings.plans[SECOND].items),  # type: ignore[union-attr]
    )
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    assert _items(emu, sub_id) == {"pro_monthly": 10, "team_monthly_addon": 2}

    h.add_opportunity(_amendment(THIRD, 4, lines="totals"))
    _enqueue(h, THIRD)
    drain(h.worker(), settled(h, THIRD))
    assert h.deal(THIRD).status == "done", h.deal(THIRD).last_error
    # totals: 4 seats in all, the add-on no longer listed is removed
    assert _items(emu, sub_id) == {"pro_monthly": 4}
    assert list(_grants(h).values()) == [4]


def test_always_invoice_finalizes_the_proration_invoice_and_keeps_its_link(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    first_invoice = h.deal(FIRST).stripe_invoice_id
    h.add_opportunity(_amendment(SECOND, 20, proration="always_invoice"))
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    deal = h.deal(SECOND)
    assert deal.status == "done", deal.last_error
    assert deal.stripe_invoice_id
    assert deal.stripe_invoice_id != first_invoice
    invoice = emu.get(deal.stripe_invoice_id)
    assert invoice["status"] == "open"
    assert deal.hosted_invoice_url == invoice["hosted_invoice_url"]
    assert emu.count("invoice") == 2


def test_renewal_with_a_price_increase_bills_nothing_now(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    period_end = emu.get(sub_id)["items"]["data"][0]["current_period_end"]
    renewal = replace(make_plan(SECOND, quantity=5, lookup_key="team_monthly"), intent="renewal")
    h.add_opportunity(renewal)
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    assert _items(emu, sub_id) == {"team_monthly": 5}
    sub = emu.get(sub_id)
    assert sub["items"]["data"][0]["current_period_end"] == period_end  # same period
    assert emu.count("invoice") == 1  # nothing billed before the renewal date
    assert emu.count("invoiceitem") == 0


@pytest.mark.parametrize("phase", ["before", "after"])
def test_crash_around_the_amendment_commit_changes_the_subscription_once(
    stripe_harness: Harness, provisioning_emulator: Any, phase: str
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    h.add_opportunity(_amendment(SECOND, 20))
    _enqueue(h, SECOND)
    fired: list[bool] = []

    def hook(step: str, _deal_id: int) -> None:
        if step == "subscription" and not fired:
            fired.append(True)
            raise SimulatedCrash(phase)

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="first"), settled(h, SECOND))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    assert _items(emu, sub_id) == {"pro_monthly": 25}  # +20 once, never +40


def test_crash_before_the_request_reaches_stripe_then_restart_updates_once(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    h.add_opportunity(_amendment(SECOND, 20))
    _enqueue(h, SECOND)
    # the step's start is committed (the request is marked), then the process dies
    calls = {"n": 0}
    billing = h.billing
    assert billing is not None

    class Dying:
        def __getattr__(self, name: str) -> Any:
            return getattr(billing, name)

        def update_subscription(self, *a: Any, **k: Any) -> Any:
            calls["n"] += 1
            raise SimulatedCrash("before the request")

    with pytest.raises(SimulatedCrash):
        drain(h.worker(billing=Dying(), owner="first"), settled(h, SECOND))  # type: ignore[arg-type]
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), settled(h, SECOND))
    assert calls["n"] == 1
    assert _items(emu, sub_id) == {"pro_monthly": 25}


def test_a_later_deal_of_the_account_waits_for_an_earlier_one_in_flight(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    h.add_opportunity(_amendment(SECOND, 20, lines="totals"))
    h.add_opportunity(_amendment(THIRD, 30, lines="totals"))
    _enqueue(h, SECOND)
    _enqueue(h, THIRD)
    # the earlier deal got as far as its customer step and waits for a retry (Stripe was
    # down): the later one must not overtake it
    from datetime import timedelta

    from sf_bridge.db.models import Deal

    worker = h.worker()
    with h.session_factory() as session, session.begin():
        session.query(Deal).filter_by(opportunity_id=SECOND).update(
            {
                "status": "retrying",
                "current_step": "customer",
                "account_id": "001000000000001AAA",
                "plan": h.mappings.plans[SECOND].to_dict(),  # type: ignore[union-attr]
                "next_attempt_at": h.clock() + timedelta(hours=1),
            }
        )
    for _ in range(30):
        worker.run_once()
    third = h.deal(THIRD)
    assert third.status == "customer_ready"  # waiting, its attempts not used up
    assert third.current_step == "subscription"
    assert _items(emu, sub_id) == {"pro_monthly": 5}
    with h.session_factory() as session, session.begin():
        session.query(Deal).filter_by(opportunity_id=SECOND).update({"next_attempt_at": None})
    drain(worker, settled(h, SECOND, THIRD))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    assert h.deal(THIRD).status == "done", h.deal(THIRD).last_error
    assert _items(emu, sub_id) == {"pro_monthly": 30}  # applied in order: 20 then 30


def test_reopened_deal_closed_with_40_seats_instead_of_5_updates_once_to_40(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h, quantity=5)
    deal = h.deal(FIRST)
    sub_id = deal.stripe_subscription_id
    with h.session_factory() as session, session.begin():
        session.query(type(deal)).filter_by(id=deal.id).update({"status": "unwon"})
        assert mark_changed_after_provisioning(session, [FIRST], source="test") == [FIRST]
    assert h.deal(FIRST).status == "needs_attention"
    h.mappings.set_plan(make_plan(FIRST, quantity=40, entitlements=_seats(40)))
    h.crm.opportunities[FIRST]["Amount"] = 40  # it changed in Salesforce
    replay(h.session_factory, [FIRST], mappings=h.mappings, crm=h.crm)
    drain(h.worker(), settled(h, FIRST))
    deal = h.deal(FIRST)
    assert deal.status == "done", deal.last_error
    assert emu.count("subscription") == 1
    assert _items(emu, sub_id) == {"pro_monthly": 40}
    assert list(_grants(h).values()) == [40]
    assert deal.writeback_pending is False or deal.written_back_at is not None
    # replayed again: nothing changes
    replay(h.session_factory, [FIRST], mappings=h.mappings, crm=h.crm)
    drain(h.worker(), settled(h, FIRST))
    assert _items(emu, sub_id) == {"pro_monthly": 40}


def test_an_amendment_without_a_live_subscription_parks_with_its_reason(
    stripe_harness: Harness,
) -> None:
    h = stripe_harness
    h.add_opportunity(_amendment(SECOND, 20))
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    deal = h.deal(SECOND)
    assert deal.status == "needs_attention"
    assert deal.last_error_code == "no_subscription_to_amend"
    assert "replay" in (deal.last_error or "")


def test_preview_of_an_upsell_shows_before_after_and_the_invoice_creating_nothing(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    from sf_bridge.provisioning.change_preview import change_json, preview_change

    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    kinds = ("customer", "subscription", "invoice", "invoiceitem")
    counts = {k: emu.count(k) for k in kinds}
    sub_before = emu.get(h.deal(FIRST).stripe_subscription_id)
    assert h.billing is not None
    plan = _amendment(SECOND, 20, proration="always_invoice")
    shown = change_json(preview_change(plan, h.billing, h.session_factory))
    assert [(i["lookup_key"], i["quantity"]) for i in shown["before"]] == [("pro_monthly", 5)]
    assert [(i["lookup_key"], i["quantity"]) for i in shown["after"]] == [("pro_monthly", 25)]
    assert shown["invoice"] is not None
    assert any(line["proration"] for line in shown["invoice"]["lines"])
    assert {k: emu.count(k) for k in kinds} == counts
    assert emu.get(h.deal(FIRST).stripe_subscription_id) == sub_before


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("step", ["subscription", "invoice"])
def test_crash_around_an_always_invoice_amendment_gives_one_update_and_one_invoice(
    stripe_harness: Harness, provisioning_emulator: Any, step: str, phase: str
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    h.add_opportunity(_amendment(SECOND, 20, proration="always_invoice"))
    _enqueue(h, SECOND)
    fired: list[bool] = []

    def hook(at: str, _deal_id: int) -> None:
        if at == step and not fired:
            fired.append(True)
            raise SimulatedCrash(phase)

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="first"), settled(h, SECOND))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), settled(h, SECOND))
    deal = h.deal(SECOND)
    assert deal.status == "done", deal.last_error
    assert _items(emu, sub_id) == {"pro_monthly": 25}
    assert emu.count("invoice") == 2  # the first deal's and the proration's
    assert emu.get(deal.stripe_invoice_id)["status"] == "open"
    assert deal.hosted_invoice_url


def test_a_negotiated_line_upsold_twice_raises_its_quantity_at_its_price_on_one_item(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """The first deal's seats are at a negotiated 40.00 (an inline price, no lookup key):
    each item is tagged with its plan line, so the upsells find it."""
    h, emu = stripe_harness, provisioning_emulator
    h.add_opportunity(make_plan(FIRST, quantity=10, unit_amount=4000, entitlements=_seats(10)))
    _enqueue(h, FIRST)
    drain(h.worker(), settled(h, FIRST))
    assert h.deal(FIRST).status == "done", h.deal(FIRST).last_error
    sub_id = h.deal(FIRST).stripe_subscription_id
    item = emu.get(sub_id)["items"]["data"][0]
    assert (item["price"]["lookup_key"], item["metadata"]) == (None, {"sf_line": "pro_monthly"})
    for opp, seats in ((SECOND, 5), (THIRD, 3)):
        h.add_opportunity(_amendment(opp, seats, unit_amount=4000))
        _enqueue(h, opp)
        drain(h.worker(), settled(h, opp))
        assert h.deal(opp).status == "done", h.deal(opp).last_error
    items = emu.get(sub_id)["items"]["data"]
    assert [(i["id"], i["quantity"], i["price"]["unit_amount"]) for i in items] == [
        (item["id"], 18, 4000)
    ]


# renewals and amendments that start later, or ramp ---------------------------------------


def _day(ts: int) -> date:
    return datetime.fromtimestamp(ts, tz=UTC).date()


def _renewal_ramp(emu: Any, sub_id: str | None, opp: str = SECOND) -> tuple[Any, list[date]]:
    """A renewal of three yearly phases (5, 10, 15 seats at 60, 65, 70) from the current
    period's end, for a 36-month term."""
    period_end = emu.get(sub_id)["items"]["data"][0]["current_period_end"]
    start = _day(period_end)
    years = [add_months(start, 12 * n) for n in range(4)]
    base = make_plan(opp, quantity=5, entitlements=_seats(5))
    item = base.items[0]
    phases = tuple(
        PlanPhase(
            start_date=years[n].isoformat(),
            end_date=years[n + 1].isoformat(),
            items=(replace(item, unit_amount=amount, quantity=seats),),
            entitlements=_seats(seats),
        )
        for n, (amount, seats) in enumerate(((6000, 5), (6500, 10), (7000, 15)))
    )
    contract = ContractTerms(
        start_date=start.isoformat(), end_date=years[3].isoformat(), term_months=36
    )
    plan = replace(base, intent="renewal", items=phases[0].items, phases=phases, contract=contract)
    return plan, years


def _phases(emu: Any, schedule_id: str) -> list[tuple[int, int, int | None]]:
    return [
        (p["end_date"], p["items"][0]["quantity"], emu.get(p["items"][0]["price"])["unit_amount"])
        for p in emu.get(schedule_id)["phases"]
    ]


def test_a_renewal_ramp_of_three_years_from_the_period_end_is_phased_and_bills_nothing_now(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    period_end = emu.get(sub_id)["items"]["data"][0]["current_period_end"]
    plan, years = _renewal_ramp(emu, sub_id)
    h.add_opportunity(plan)
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))

    deal = h.deal(SECOND)
    assert deal.status == "done", deal.last_error
    sub = emu.get(sub_id)
    assert deal.stripe_schedule_id == sub["schedule"]
    schedule = emu.get(sub["schedule"])
    assert (schedule["status"], schedule["end_behavior"]) == ("active", "cancel")
    # the current phase as it was, until the period's end, then one phase a year; the
    # years start at the same time of day as the billing period (no proration at a step)
    offset = period_end - int(datetime.combine(years[0], time(0), UTC).timestamp())
    ends = [int(datetime.combine(y, time(0), UTC).timestamp()) + offset for y in years[1:]]
    assert _phases(emu, schedule["id"]) == [
        (period_end, 5, 5000),
        (ends[0], 5, 6000),
        (ends[1], 10, 6500),
        (ends[2], 15, 7000),
    ]
    assert _items(emu, sub_id) == {"pro_monthly": 5}  # nothing changed now
    assert emu.count("invoice") == 1
    assert emu.count("invoiceitem") == 0
    with h.session_factory() as session:
        grants = session.scalars(
            select(EntitlementGrant)
            .where(EntitlementGrant.deal_id == deal.id)
            .order_by(EntitlementGrant.phase)
        ).all()
    assert [(g.phase, g.value, g.valid_from.date()) for g in grants] == [  # type: ignore[union-attr]
        (0, 5, years[0]),
        (1, 10, years[1]),
        (2, 15, years[2]),
    ]
    # the first deal's seats hold until the renewal starts, then the renewal's replace them
    [first] = [g for g in _grant_rows(h) if g.deal_id == h.deal(FIRST).id]
    assert first.active
    assert first.valid_until is not None
    assert first.valid_until.date() == years[0]

    # at the renewal date Stripe enters the first year: its price, its item tagged
    emu.advance_clock(period_end - emu.now() + 60)
    sub = emu.get(sub_id)
    [item] = sub["items"]["data"]
    assert (item["quantity"], item["price"]["unit_amount"]) == (5, 6000)
    assert item["metadata"]["sf_line"] == "pro_monthly"
    assert SECOND in sub["metadata"]["sf_amendments"]
    renewal_invoice = emu.get(sub["latest_invoice"])
    assert renewal_invoice["amount_due"] == 5 * 6000


def test_an_amendment_starting_next_month_adds_its_seats_from_then_only(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    period_end = emu.get(sub_id)["items"]["data"][0]["current_period_end"]
    start = add_months(_day(emu.now()), 1)
    amendment = replace(
        _amendment(SECOND, 20), contract=ContractTerms(start_date=start.isoformat())
    )
    h.add_opportunity(amendment)
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    deal = h.deal(SECOND)
    assert deal.status == "done", deal.last_error
    schedule = emu.get(emu.get(sub_id)["schedule"])
    phases = _phases(emu, schedule["id"])
    assert [q for _end, q, _amount in phases] == [5, 25]
    assert schedule["end_behavior"] == "release"  # open-ended: the subscription goes on
    assert _items(emu, sub_id) == {"pro_monthly": 5}
    assert emu.count("invoiceitem") == 0  # nothing prorated now
    [grant] = [g for g in _grant_rows(h) if g.deal_id == deal.id]
    assert grant.valid_from is not None
    assert grant.valid_from.date() == start

    emu.advance_clock(max(period_end, phases[0][0]) - emu.now() + 60)
    assert _items(emu, sub_id) == {"pro_monthly": 25}


def _grant_rows(h: Harness) -> list[EntitlementGrant]:
    with h.session_factory() as session:
        return list(session.scalars(select(EntitlementGrant)).all())


@pytest.mark.parametrize("phase", ["before", "after"])
@pytest.mark.parametrize("step", ["subscription", "entitlements"])
def test_a_crash_around_a_scheduled_renewals_commit_makes_one_schedule_and_its_phases_once(
    stripe_harness: Harness, provisioning_emulator: Any, phase: str, step: str
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    plan, _years = _renewal_ramp(emu, sub_id)
    h.add_opportunity(plan)
    _enqueue(h, SECOND)
    fired: list[bool] = []

    def hook(at: str, _deal_id: int) -> None:
        if at == step and not fired:
            fired.append(True)
            raise SimulatedCrash(phase)

    hooks = StepHooks(before_commit=hook) if phase == "before" else StepHooks(after_commit=hook)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=hooks, owner="first"), settled(h, SECOND))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    deal_id = h.deal(SECOND).id
    assert sorted(g.phase for g in _grant_rows(h) if g.deal_id == deal_id) == [0, 1, 2]
    assert emu.count("subscription_schedule") == 1
    schedule_id = emu.get(sub_id)["schedule"]
    assert [q for _e, q, _a in _phases(emu, schedule_id)] == [5, 5, 10, 15]  # once
    updates = [
        e
        for e in emu.events("subscription_schedule.updated")
        if e["data"]["object"]["id"] == schedule_id
    ]
    assert len(updates) == 1


@pytest.mark.parametrize(
    "where", ["after_the_schedule", "schedule_response_lost", "phases_response_lost"]
)
def test_a_crash_between_or_after_the_two_schedule_requests_changes_stripe_once(
    stripe_harness: Harness, provisioning_emulator: Any, where: str
) -> None:
    """The schedule is made from the subscription, then the process dies before its phases
    are sent, or the answer to the schedule's creation is lost (the retry reuses the
    subscription's schedule); or the phases reach Stripe and their answer is lost (the retry
    sees the deal's marker on the schedule)."""
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    plan, _years = _renewal_ramp(emu, sub_id)
    h.add_opportunity(plan)
    _enqueue(h, SECOND)
    billing = h.billing
    assert billing is not None
    calls = {"n": 0}

    class Dying:
        def __getattr__(self, name: str) -> Any:
            return getattr(billing, name)

        def update_schedule(self, *a: Any, **k: Any) -> Any:
            calls["n"] += 1
            raise SimulatedCrash("before the phases")

    if where == "after_the_schedule":
        with pytest.raises(SimulatedCrash):
            drain(h.worker(billing=Dying(), owner="first"), settled(h, SECOND))  # type: ignore[arg-type]
        assert emu.count("subscription_schedule") == 1
        h.clock.advance(120)
    elif where == "schedule_response_lost":
        emu.fail_next("POST /v1/subscription_schedules", "drop_after")
    else:
        emu.fail_next("POST /v1/subscription_schedules/{id}", "drop_after")
    drain(h.worker(owner="restarted"), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    assert emu.count("subscription_schedule") == 1
    schedule_id = emu.get(sub_id)["schedule"]
    assert [q for _e, q, _a in _phases(emu, schedule_id)] == [5, 5, 10, 15]


def test_an_upsell_now_under_a_renewal_schedule_changes_this_term_and_keeps_the_renewal(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """A subscription under a schedule is changed through it (a change of the subscription
    alone would be undone when the next phase begins): the upsell raises the current phase
    now, prorated, and ends with the current term; the renewal's years stay as signed."""
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    plan, _years = _renewal_ramp(emu, sub_id)
    h.add_opportunity(plan)
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    emu.advance_clock(3 * 86_400)
    h.add_opportunity(_amendment(THIRD, 20))
    _enqueue(h, THIRD)
    drain(h.worker(), settled(h, THIRD))
    assert h.deal(THIRD).status == "done", h.deal(THIRD).last_error
    assert _items(emu, sub_id) == {"pro_monthly": 25}  # now
    assert emu.count("invoiceitem") > 0  # the rest of the period, prorated
    schedule_id = emu.get(sub_id)["schedule"]
    assert emu.count("subscription_schedule") == 1
    assert [q for _e, q, _a in _phases(emu, schedule_id)] == [25, 5, 10, 15]


def test_preview_of_a_renewal_ramp_shows_before_after_and_the_phases_creating_nothing(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    from sf_bridge.provisioning.change_preview import change_json, preview_change

    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    plan, years = _renewal_ramp(emu, sub_id)
    kinds = ("subscription", "subscription_schedule", "invoice", "invoiceitem")
    counts = {k: emu.count(k) for k in kinds}
    sub_before = emu.get(sub_id)
    assert h.billing is not None
    shown = change_json(preview_change(plan, h.billing, h.session_factory, today=_day(emu.now())))
    assert [(i["lookup_key"], i["quantity"]) for i in shown["before"]] == [("pro_monthly", 5)]
    assert shown["after"] == shown["before"]  # nothing changes now
    assert shown["invoice"] is None
    assert (shown["schedule"], shown["end_behavior"]) == ("made from the subscription", "cancel")
    assert [
        (p["end"], [(i["quantity"], i["unit_amount"]) for i in p["items"]]) for p in shown["phases"]
    ] == [
        (years[0].isoformat(), [(5, 5000)]),
        (years[1].isoformat(), [(5, 6000)]),
        (years[2].isoformat(), [(10, 6500)]),
        (years[3].isoformat(), [(15, 7000)]),
    ]
    assert {k: emu.count(k) for k in kinds} == counts
    assert emu.get(sub_id) == sub_before


def test_a_ramp_amendment_whose_first_year_has_begun_changes_now_and_steps_later(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Year one starts today: the current phase takes its seats now (prorated as the plan
    says); year two is a phase at its date."""
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    today = _day(emu.now())
    years = [add_months(today, 12 * n) for n in range(3)]
    base = _amendment(SECOND, 2)
    phases = tuple(
        PlanPhase(
            start_date=years[n].isoformat(),
            end_date=years[n + 1].isoformat(),
            items=(replace(base.items[0], quantity=seats),),
        )
        for n, seats in enumerate((2, 4))
    )
    contract = ContractTerms(start_date=today.isoformat(), end_date=years[2].isoformat())
    h.add_opportunity(replace(base, items=phases[0].items, phases=phases, contract=contract))
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    assert _items(emu, sub_id) == {"pro_monthly": 7}  # +2 now
    assert emu.count("invoiceitem") > 0  # prorated (create_prorations)
    quantities = [q for _e, q, _a in _phases(emu, emu.get(sub_id)["schedule"])]
    # year two: +4 on the same five; after the amendment's term the five go on alone
    assert quantities == [7, 9, 5]


def test_an_upsell_of_a_new_business_ramp_raises_every_remaining_year(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """Co-terminated: an upsell during a three-year ramp lasts the ramp's term, so each
    remaining year is raised, and the schedule still ends with the term."""
    h, emu = stripe_harness, provisioning_emulator
    today = _day(emu.now())
    years = [add_months(today, 12 * n) for n in range(4)]
    base = make_plan(FIRST, entitlements=_seats(10))
    phases = tuple(
        PlanPhase(
            start_date=years[n].isoformat(),
            end_date=years[n + 1].isoformat(),
            items=(replace(base.items[0], unit_amount=amount, quantity=10 + 5 * n),),
        )
        for n, amount in enumerate((4000, 4500, 5000))
    )
    contract = ContractTerms(
        start_date=today.isoformat(), end_date=years[3].isoformat(), term_months=36
    )
    h.add_opportunity(replace(base, items=phases[0].items, phases=phases, contract=contract))
    _enqueue(h, FIRST)
    drain(h.worker(), settled(h, FIRST))
    assert h.deal(FIRST).status == "done", h.deal(FIRST).last_error
    sub_id = h.deal(FIRST).stripe_subscription_id
    h.add_opportunity(_amendment(SECOND, 3, unit_amount=4000))
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    sub = emu.get(sub_id)
    assert [(i["quantity"], i["price"]["unit_amount"]) for i in sub["items"]["data"]] == [
        (13, 4000)
    ]
    schedule = emu.get(sub["schedule"])
    assert [(q, a) for _e, q, a in _phases(emu, schedule["id"])] == [
        (13, 4000),
        (18, 4500),
        (23, 5000),
    ]
    assert schedule["end_behavior"] == "cancel"


def test_a_renewal_discount_is_the_deals_coupon_on_each_renewal_phase(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _first_deal(h)
    sub_id = h.deal(FIRST).stripe_subscription_id
    plan, _years = _renewal_ramp(emu, sub_id)
    h.add_opportunity(replace(plan, discount=Discount("forever", percent_off=10.0)))
    _enqueue(h, SECOND)
    drain(h.worker(), settled(h, SECOND))
    assert h.deal(SECOND).status == "done", h.deal(SECOND).last_error
    [coupon] = emu.objects("coupon")
    schedule = emu.get(emu.get(sub_id)["schedule"])
    assert [[d["coupon"] for d in p["discounts"]] for p in schedule["phases"]] == [
        [],
        [coupon["id"]],
        [coupon["id"]],
        [coupon["id"]],
    ]
