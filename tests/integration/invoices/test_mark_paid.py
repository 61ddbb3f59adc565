"""`mark_paid`: a wire payment recorded in Stripe and on the deal, found by any reference."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.memory import InMemoryBilling
from sf_bridge.db.models import Deal, EntitlementGrant
from sf_bridge.invoices.errors import InvoiceNotFound, InvoiceNotPayable
from sf_bridge.invoices.mark_paid import mark_paid
from tests.fixtures.api import STANDARD_ENTITLEMENTS, seed_deal

OPP = "006000000000001AAA"


@pytest.mark.parametrize("ref", ["in_test_1", "deal", OPP, OPP[:15]])
def test_marks_paid_by_any_reference_and_keeps_entitlements(
    session_factory: sessionmaker[Session], billing: InMemoryBilling, ref: str
) -> None:
    _, deal_id = seed_deal(session_factory, STANDARD_ENTITLEMENTS)
    result = mark_paid(session_factory, billing, str(deal_id) if ref == "deal" else ref)
    assert (result.deal_id, result.invoice_id, result.already_paid) == (
        deal_id,
        "in_test_1",
        False,
    )
    assert billing.invoices["in_test_1"].status == "paid"
    with session_factory() as session:
        deal = session.get_one(Deal, deal_id)
        assert deal.invoice_status == "paid"
        assert [e.kind for e in deal.events] == ["invoice_paid"]
        assert "out of band" in deal.events[0].message
        assert all(g.active for g in session.scalars(select(EntitlementGrant)))

    again = mark_paid(session_factory, billing, OPP)
    assert again.already_paid is True
    assert billing.calls["record_payment"] == 1


def test_refuses_what_it_cannot_mark(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    seed_deal(session_factory, STANDARD_ENTITLEMENTS)
    seed_deal(
        session_factory,
        STANDARD_ENTITLEMENTS,
        opportunity_id="006000000000002AAA",
        subscription_id=None,
        invoice_id=None,
        invoice_status=None,
    )
    with pytest.raises(InvoiceNotFound, match="no invoice"):
        mark_paid(session_factory, billing, "006000000000002AAA")
    with pytest.raises(InvoiceNotFound, match="No deal") as unknown:
        mark_paid(session_factory, billing, "006999999999999ZZZ")
    assert "sf-bridge deals" in unknown.value.user_message()

    billing.invoices["in_test_1"] = replace(billing.invoices["in_test_1"], status="void")
    with pytest.raises(InvoiceNotPayable, match="void") as info:
        mark_paid(session_factory, billing, "in_test_1")
    assert "Fix:" in info.value.user_message()
    assert billing.calls["record_payment"] == 0


def test_part_payments_leave_the_invoice_open_until_nothing_remains(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    _, deal_id = seed_deal(session_factory, STANDARD_ENTITLEMENTS)

    first = mark_paid(session_factory, billing, OPP, amount=Decimal("500.00"), reference="W1")
    assert (first.status, first.amount_paid, first.amount_remaining) == ("open", 50_000, 70_000)
    rerun = mark_paid(session_factory, billing, OPP, amount=Decimal("500.00"), reference="W1")
    assert rerun.amount_remaining == 70_000  # the same transfer is recorded once
    assert billing.invoices["in_test_1"].amount_paid == 50_000

    with pytest.raises(InvoiceNotPayable, match=r"more than the 700\.00 USD still due") as info:
        mark_paid(session_factory, billing, OPP, amount=Decimal("700.01"))
    assert "leave out --amount" in info.value.user_message()
    with pytest.raises(InvoiceNotPayable, match="more decimals"):
        mark_paid(session_factory, billing, OPP, amount=Decimal("1.001"))

    rest = mark_paid(session_factory, billing, OPP)  # no amount: all that remains
    assert (rest.status, rest.amount_paid, rest.amount_remaining) == ("paid", 70_000, 0)
    with session_factory() as session:
        deal = session.get_one(Deal, deal_id)
        assert deal.invoice_status == "paid"
        assert [e.kind for e in deal.events] == ["invoice_part_paid", "invoice_paid"]
        assert "700.00 USD still due" in deal.events[0].message


def test_an_unknown_invoice_id_says_how_to_find_the_invoice(
    session_factory: sessionmaker[Session], billing: InMemoryBilling
) -> None:
    seed_deal(session_factory, STANDARD_ENTITLEMENTS)
    with pytest.raises(InvoiceNotFound, match="no invoice in_nope") as info:
        mark_paid(session_factory, billing, "in_nope")
    message = info.value.user_message()
    assert "Stripe Dashboard" in message
    assert "mapping" not in message
