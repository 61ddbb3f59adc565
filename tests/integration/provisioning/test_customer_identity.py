"""Which Stripe customer bills a deal: one per customer key (the customer identifier's value,
and the currency unless the mapping splits by identifier only), through the real Stripe SDK
against the emulator, which refuses a second currency on one customer as Stripe does."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from sf_bridge.db.models import Customer
from sf_bridge.entitlements.ledger import effective_entitlements
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.runner import StepHooks
from tests.fixtures.provisioning import CatalogEntry, Harness, drain, make_plan, settled

ACCOUNT = "001000000000001AAA"
OTHER_ACCOUNT = "001000000000002AAA"
USD_DEAL = "006000000000001AAA"
EUR_DEAL = "006000000000002AAA"


class SimulatedCrash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the worker handles it."""


def _enqueue(h: Harness, *ids: str) -> None:
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, list(ids), source="test")


def _with_eur_price(emu: Any) -> None:
    emu.seed_catalog([CatalogEntry("pro_monthly_eur", "Pro", 4600, currency="eur")])


def _eur_plan(opportunity_id: str, account_id: str = ACCOUNT, **kwargs: Any) -> Any:
    return make_plan(
        opportunity_id,
        account_id=account_id,
        currency="eur",
        lookup_key="pro_monthly_eur",
        catalog_unit_amount=4600,
        **kwargs,
    )


def _customers(h: Harness) -> list[tuple[str, str, str | None]]:
    with h.session_factory() as session:
        rows = session.execute(
            select(
                Customer.customer_key, Customer.sf_account_id, Customer.stripe_customer_id
            ).order_by(Customer.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_a_deal_in_a_second_currency_gets_a_second_stripe_customer(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _with_eur_price(emu)
    h.add_opportunity(make_plan(USD_DEAL))
    _enqueue(h, USD_DEAL)
    drain(h.worker(), settled(h, USD_DEAL))
    assert h.deal(USD_DEAL).status == "done", h.deal(USD_DEAL).last_error

    h.add_opportunity(_eur_plan(EUR_DEAL))
    _enqueue(h, EUR_DEAL)
    drain(h.worker(), settled(h, EUR_DEAL))

    usd, eur = h.deal(USD_DEAL), h.deal(EUR_DEAL)
    assert eur.status == "done", eur.last_error
    assert usd.account_id == eur.account_id == ACCOUNT
    assert usd.stripe_customer_id != eur.stripe_customer_id
    assert emu.count("customer") == 2
    assert emu.get(usd.stripe_customer_id)["currency"] == "usd"
    assert emu.get(eur.stripe_customer_id)["currency"] == "eur"
    assert emu.get(eur.stripe_subscription_id)["customer"] == eur.stripe_customer_id
    assert emu.get(eur.stripe_customer_id)["metadata"] == {
        "sf_account_id": ACCOUNT,
        "sf_customer_key": f"{ACCOUNT}/EUR",
    }
    assert _customers(h) == [
        (f"{ACCOUNT}/USD", ACCOUNT, usd.stripe_customer_id),
        (f"{ACCOUNT}/EUR", ACCOUNT, eur.stripe_customer_id),
    ]
    with h.session_factory() as session:  # the account's entitlements span both customers
        assert effective_entitlements(session, ACCOUNT)["seats"].value == 6


def test_a_second_currency_on_one_customer_key_is_refused_by_stripe(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    """With `split: identifier` the mapping asks for one customer across currencies: Stripe
    refuses the second currency while the first subscription is live, and the deal parks
    with Stripe's words rather than creating a customer the mapping did not ask for."""
    h, emu = stripe_harness, provisioning_emulator
    _with_eur_price(emu)
    h.add_opportunity(make_plan(USD_DEAL, customer_key=ACCOUNT))
    h.add_opportunity(_eur_plan(EUR_DEAL, customer_key=ACCOUNT))
    _enqueue(h, USD_DEAL)
    drain(h.worker(), settled(h, USD_DEAL))
    _enqueue(h, EUR_DEAL)
    drain(h.worker(), settled(h, EUR_DEAL))
    eur = h.deal(EUR_DEAL)
    assert eur.status == "needs_attention"
    assert "cannot combine currencies on a single customer" in (eur.last_error or "")
    assert emu.count("customer") == 1


def test_accounts_sharing_an_identifier_value_share_one_stripe_customer(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    h.add_opportunity(make_plan(USD_DEAL, account_id=ACCOUNT, customer_key="GROUP-7/USD"))
    h.add_opportunity(make_plan(EUR_DEAL, account_id=OTHER_ACCOUNT, customer_key="GROUP-7/USD"))
    _enqueue(h, USD_DEAL, EUR_DEAL)
    drain(h.worker(), settled(h, USD_DEAL, EUR_DEAL))

    one, two = h.deal(USD_DEAL), h.deal(EUR_DEAL)
    assert (one.status, two.status) == ("done", "done"), (one.last_error, two.last_error)
    assert (one.account_id, two.account_id) == (ACCOUNT, OTHER_ACCOUNT)
    assert one.stripe_customer_id == two.stripe_customer_id
    assert one.customer_id == two.customer_id
    assert emu.count("customer") == 1
    assert emu.count("subscription") == 2
    [(key, made_by, stripe_id)] = _customers(h)  # the account whose deal came first made it
    assert (key, stripe_id) == ("GROUP-7/USD", one.stripe_customer_id)
    assert made_by in (ACCOUNT, OTHER_ACCOUNT)


def _crash_before_customer_commit() -> StepHooks:
    fired: list[bool] = []

    def hook(step: str, _deal_id: int) -> None:
        if step == "customer" and not fired:
            fired.append(True)
            raise SimulatedCrash("after the customer create request, before its commit")

    return StepHooks(before_commit=hook)


@pytest.mark.parametrize("search_lag", [False, True], ids=["search", "search-lagging"])
def test_a_crash_after_the_create_request_leaves_one_customer_per_key(
    stripe_harness: Harness, provisioning_emulator: Any, search_lag: bool
) -> None:
    """The first account's deal reaches Stripe and dies before recording the customer. The
    other account's deal with the same key is the next to run the customer step: it finds
    the customer (by its key, in Stripe's search) or, while the search lags, sends the same
    request under the same Idempotency-Key and gets the same customer back."""
    h, emu = stripe_harness, provisioning_emulator
    if search_lag:
        emu.faults.search_lag_seconds = 3600
    h.add_opportunity(make_plan(USD_DEAL, account_id=ACCOUNT, customer_key="GROUP-7/USD"))
    h.add_opportunity(make_plan(EUR_DEAL, account_id=OTHER_ACCOUNT, customer_key="GROUP-7/USD"))
    _enqueue(h, USD_DEAL)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=_crash_before_customer_commit(), owner="first"), settled(h, USD_DEAL))
    assert emu.count("customer") == 1
    h.clock.advance(120)  # the dead worker's leases expire

    _enqueue(h, EUR_DEAL)
    restarted = h.worker(owner="restarted")
    drain(restarted, settled(h, EUR_DEAL))
    drain(restarted, settled(h, USD_DEAL))

    one, two = h.deal(USD_DEAL), h.deal(EUR_DEAL)
    assert (one.status, two.status) == ("done", "done"), (one.last_error, two.last_error)
    assert emu.count("customer") == 1
    assert one.stripe_customer_id == two.stripe_customer_id == emu.objects("customer")[0]["id"]
    assert emu.count("subscription") == 2


def test_a_crash_after_the_second_currency_customer_is_created_leaves_two_customers(
    stripe_harness: Harness, provisioning_emulator: Any
) -> None:
    h, emu = stripe_harness, provisioning_emulator
    _with_eur_price(emu)
    h.add_opportunity(make_plan(USD_DEAL))
    h.add_opportunity(_eur_plan(EUR_DEAL))
    _enqueue(h, USD_DEAL)
    drain(h.worker(), settled(h, USD_DEAL))
    _enqueue(h, EUR_DEAL)
    with pytest.raises(SimulatedCrash):
        drain(h.worker(hooks=_crash_before_customer_commit(), owner="first"), settled(h, EUR_DEAL))
    h.clock.advance(120)
    drain(h.worker(owner="restarted"), settled(h, EUR_DEAL))
    assert h.deal(EUR_DEAL).status == "done", h.deal(EUR_DEAL).last_error
    assert emu.count("customer") == 2
    assert sorted(c["currency"] for c in emu.objects("customer")) == ["eur", "usd"]
