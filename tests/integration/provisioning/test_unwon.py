"""A provisioned deal whose opportunity is no longer won: the `when_unwon` policy and the
cancellation sequence, through the real Stripe SDK against the emulator."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from sf_bridge.db.models import Deal, DealEvent, EntitlementGrant
from sf_bridge.errors import TransientError
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.store import keep_unwon, mark_unwon, queue_cancel
from tests.fixtures.provisioning import Harness, drain, make_plan, settled


def _provision(h: Harness, opp: str, **plan: Any) -> None:
    h.add_opportunity(make_plan(opp, **plan))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="test")
    drain(h.worker(), settled(h, opp))
    assert h.deal(opp).status == "done", h.deal(opp).last_error


def _unwin(h: Harness, opp: str) -> list[str]:
    with h.session_factory() as session, session.begin():
        return mark_unwon(session, [opp], reason="Moved to Closed Lost.", source="test")


def _status_is(h: Harness, opp: str, *statuses: str) -> Any:
    return lambda: h.deal(opp).status in statuses


def _grants(h: Harness, deal_id: int) -> list[EntitlementGrant]:
    with h.session_factory() as session:
        return list(
            session.scalars(select(EntitlementGrant).where(EntitlementGrant.deal_id == deal_id))
        )


def _event_kinds(h: Harness, deal_id: int) -> list[str]:
    with h.session_factory() as session:
        return list(
            session.scalars(
                select(DealEvent.kind).where(DealEvent.deal_id == deal_id).order_by(DealEvent.id)
            )
        )


def test_cancel_policy_voids_cancels_revokes_and_writes_cancelled(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    opp = "006000000000101AAA"
    _provision(h, opp)
    other = "006000000000102AAA"
    _provision(h, other)
    assert _unwin(h, opp) == [opp]
    assert _unwin(h, opp) == []  # recorded once
    drain(h.worker(), _status_is(h, opp, "cancelled"))

    deal = h.deal(opp)
    assert emu.get(deal.stripe_invoice_id)["status"] == "void"
    assert emu.get(deal.stripe_subscription_id)["status"] == "canceled"
    assert deal.invoice_status == "void"
    assert _grants(h, deal.id)
    assert not any(g.active for g in _grants(h, deal.id))
    # exactly this deal's grants: the other deal of the same account keeps its own
    kept = h.deal(other)
    assert kept.status == "done"
    assert all(g.active for g in _grants(h, kept.id))
    assert emu.get(kept.stripe_subscription_id)["status"] != "canceled"
    assert h.crm.written[opp]["Provisioning_Status__c"] == "Cancelled"
    assert "Moved to Closed Lost." in h.crm.written[opp]["Provisioning_Error__c"]
    kinds = _event_kinds(h, deal.id)
    assert kinds.count("invoice_voided") == 1
    assert kinds.count("subscription_cancelled") == 1
    assert kinds[-1] == "cancelled"


def test_review_policy_parks_then_deals_cancel(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000103AAA"
    _provision(h, opp)
    _unwin(h, opp)
    drain(h.worker(), _status_is(h, opp, "needs_attention"))
    deal = h.deal(opp)
    assert deal.last_error_code == "unwon_after_provisioning"
    assert f"sf-bridge deals cancel {deal.id}" in (deal.last_error or "")
    assert f"sf-bridge deals keep {deal.id}" in (deal.last_error or "")
    assert emu.get(deal.stripe_subscription_id)["status"] != "canceled"
    assert all(g.active for g in _grants(h, deal.id))

    with h.session_factory() as session, session.begin():
        assert queue_cancel(session, deal.id, reason="customer walked away", actor="ana")
    drain(h.worker(), _status_is(h, opp, "cancelled"))
    deal = h.deal(opp)
    assert emu.get(deal.stripe_invoice_id)["status"] == "void"
    assert emu.get(deal.stripe_subscription_id)["status"] == "canceled"
    assert not any(g.active for g in _grants(h, deal.id))
    assert "cancel_requested" in _event_kinds(h, deal.id)


def test_review_policy_then_deals_keep(stripe_harness: Harness, provisioning_emulator: Any) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000104AAA"
    _provision(h, opp)
    _unwin(h, opp)
    drain(h.worker(), _status_is(h, opp, "needs_attention"))
    deal_id = h.deal(opp).id
    with h.session_factory() as session, session.begin():
        assert keep_unwon(session, deal_id, actor="ana", note="lost by mistake")
    deal = h.deal(opp)
    assert (deal.status, deal.current_step) == ("entitled", "write_back")  # told again
    drain(h.worker(), _status_is(h, opp, "done"))
    deal = h.deal(opp)
    assert h.crm.written[opp]["Provisioning_Status__c"] == "Provisioned"
    assert deal.last_error is None
    assert emu.get(deal.stripe_subscription_id)["status"] != "canceled"
    assert "kept" in _event_kinds(h, deal_id)
    with h.session_factory() as session, session.begin():
        assert not keep_unwon(session, deal_id, actor="ana", note=None)  # not parked any more


def test_unwon_before_anything_was_billed_is_skipped(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000105AAA"
    h.add_opportunity(make_plan(opp))
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [opp], source="test")
    worker = h.worker()
    assert _unwin(h, opp) == []  # still `received`: its fetch finds it no longer won
    with h.session_factory() as session, session.begin():
        deal = session.scalars(select(Deal).where(Deal.opportunity_id == opp)).one()
        deal.status, deal.current_step = "mapped", "customer"
    assert _unwin(h, opp) == [opp]
    drain(worker, _status_is(h, opp, "skipped"))
    assert emu.count("subscription") == 0
    assert emu.count("invoice") == 0


@pytest.mark.parametrize(
    ("operation", "after_effect"),
    [
        ("void_invoice", False),
        ("void_invoice", True),
        ("cancel_subscription", False),
        ("cancel_subscription", True),
    ],
)
def test_cancel_survives_a_crash_around_each_stripe_call(
    stripe_harness: Harness, provisioning_emulator: Any, operation: str, after_effect: bool
) -> None:
    """The call fails before reaching Stripe, or reaches it and the answer is lost (as a
    crash before the commit): the retry ends in one void and one cancel."""
    h, emu = stripe_harness, provisioning_emulator
    h.mappings.when_unwon = "cancel"
    opp = f"00600000000011{int(after_effect)}{'V' if operation == 'void_invoice' else 'C'}AA"
    _provision(h, opp)
    _unwin(h, opp)
    billing = h.billing
    assert billing is not None
    real = getattr(billing, operation)
    calls = {"n": 0}

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            if after_effect:
                real(*args, **kwargs)
            raise TransientError("connection reset")
        return real(*args, **kwargs)

    setattr(billing, operation, failing)
    worker = h.worker()
    worker.unwon.run_due()
    assert h.deal(opp).status == "unwon"  # given back, to be retried
    h.clock.advance(60)
    drain(worker, _status_is(h, opp, "cancelled"))
    deal = h.deal(opp)
    assert emu.get(deal.stripe_invoice_id)["status"] == "void"
    assert emu.get(deal.stripe_subscription_id)["status"] == "canceled"
    kinds = _event_kinds(h, deal.id)
    assert kinds.count("invoice_voided") == 1
    assert kinds.count("subscription_cancelled") == 1
    voided = [
        e
        for e in emu.events("invoice.voided")
        if e["data"]["object"]["id"] == deal.stripe_invoice_id
    ]
    assert len(voided) == 1


def test_a_replay_leaves_a_deal_parked_as_no_longer_won_to_cancel_or_keep(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """`replay --failed` after an outage must not turn a provisioned, un-won deal into
    `skipped` ("nothing was provisioned") while its subscription and grants stay live."""
    from sf_bridge.provisioning.replay import replay

    h, emu = stripe_harness, provisioning_emulator
    opp = "006000000000109AAA"
    _provision(h, opp)
    _unwin(h, opp)
    drain(h.worker(), _status_is(h, opp, "needs_attention"))
    deal_id = h.deal(opp).id
    for outcome in replay(h.session_factory, failed=True) + replay(h.session_factory, [opp]):
        assert not outcome.requeued
        assert f"sf-bridge deals cancel {deal_id}" in outcome.message
    deal = h.deal(opp)
    assert (deal.status, deal.last_error_code) == ("needs_attention", "unwon_after_provisioning")
    assert emu.get(deal.stripe_subscription_id)["status"] != "canceled"
