"""The comparison's judgement on cases the sandbox run does not reach: deals on their way,
custom plans, and the error text's shortening."""

from __future__ import annotations

from sf_bridge.billing.port import StripeItem, StripeRecord
from sf_bridge.provisioning.error_text import opportunity_error_text
from sf_bridge.reconcile import findings
from sf_bridge.reconcile.compare import DealFacts, GrantFacts, compare

OPP = "006000000000001AAA"
PLAN = {
    "plan_kind": "paid",
    "items": [{"quantity": 3, "unit_amount": None, "catalog_unit_amount": 5000,
               "currency": "usd", "interval": "month"}],
}  # fmt: skip


def deal(status: str = "done", plan: dict | None = None, **kw: object) -> DealFacts:
    values: dict = {
        "id": 1,
        "opportunity_id": OPP,
        "status": status,
        "error_code": None,
        "plan": plan or PLAN,
        "opportunity": {"Id": OPP},
        "stripe_customer_id": "cus_1",
        "stripe_subscription_id": "sub_1",
        "stripe_invoice_id": None,
    }
    values.update(kw)
    return DealFacts(**values)


def subscription(status: str = "active", quantity: int = 3) -> StripeRecord:
    item = StripeItem(quantity, 5000, "usd", "month", "price_1")
    return StripeRecord("subscription", "sub_1", None, {"sf_opportunity_id": OPP}, status,
                        "cus_1", items=(item,))  # fmt: skip


def run(deals: list[DealFacts], sub: StripeRecord | None, grants: list[GrantFacts]) -> list:
    customer = StripeRecord("customer", "cus_1", None)
    return compare(
        won_ids=[OPP], deals=deals, fresh={OPP: {"Id": OPP, "IsWon": True}}, grants=grants,
        customers={"cus_1": customer}, subscriptions={"sub_1": sub}, listed=[],
    )  # fmt: skip


def test_a_deal_that_agrees_everywhere_is_clean() -> None:
    assert run([deal()], subscription(), [GrantFacts(1, "seats", "sub_1")]) == []


def test_deals_on_their_way_are_not_reported() -> None:
    assert run([deal("entitled")], None, [GrantFacts(1, "seats", "sub_1")]) == []
    assert run([deal("retrying")], None, []) == []


def test_custom_plans_have_entitlements_without_a_subscription_by_design() -> None:
    custom = deal(plan={"plan_kind": "custom", "items": []}, stripe_subscription_id=None)
    assert run([custom], None, [GrantFacts(1, "sso", None)]) == []


def test_a_cancelled_subscription_with_grants_is_two_mismatches() -> None:
    found = run([deal()], subscription("canceled"), [GrantFacts(1, "seats", "sub_1")])
    assert [m.kind for m in found] == [
        findings.SUBSCRIPTION_CHANGED,
        findings.ENTITLEMENTS_WITHOUT_SUBSCRIPTION,
    ]


def test_the_error_text_keeps_its_code_and_whole_words() -> None:
    text = opportunity_error_text("transient", "x" * 300)
    assert text.startswith("transient: x")
    assert len(text) == 255
    assert text.endswith("…")
    assert opportunity_error_text(None, "short") == "short"
    assert opportunity_error_text("mapping", None) == "mapping"
    words = opportunity_error_text(
        "mapping", "The deal does not map onto the catalog: " + "ab " * 200
    )
    assert words.startswith("mapping: ab ab")
    assert words.endswith("ab…")
    assert len(words) <= 255
