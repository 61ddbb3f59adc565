"""After the first close, in the demo: an upsell on an existing customer, a renewal with a
price increase, and a deal lost after it was provisioned (`when_unwon: review`, then
`sf-bridge deals cancel`). Each is checked where it lives: the deal row, the emulator's
subscription and invoices, and the entitlement API."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sf_bridge.demo.checks import Check
from sf_bridge.demo.components import run_command
from sf_bridge.demo.facts import DealFacts, entitlement_value
from sf_bridge.demo.scenario import DemoDeal, Expect, Line


@dataclass(frozen=True)
class LaterDeal:
    """A deal closed once its account's first deal is provisioned."""

    deal: DemoDeal
    changes: str  # key of the deal whose subscription it changes
    quantity: int  # the plan item's quantity afterwards
    unit_amount: int | None = None  # its price afterwards (minor units), when checked
    seats: int | None = None  # the account's effective seats afterwards


UPSELL = LaterDeal(
    DemoDeal(
        key="upsell",
        story="Upsell on an existing customer: +5 seats on its live subscription, prorated",
        account="initech",
        name="Initech - 5 more seats",
        lines=(Line("SB-TEAM-M", 5, 15.00),),
        fields={"Type": "Existing Customer - Upgrade", "Payment_Method__c": "Credit card"},
        expect=Expect(plan_kind="paid", entitlements={"seats": 5}),
    ),
    changes="self_serve",
    quantity=15,
    seats=15,
)
RENEWAL = LaterDeal(
    DemoDeal(
        key="renewal",
        story="Renewal with a price increase: 165.00 a seat from the renewal date",
        account="acme",
        name="Acme Robotics - Team plan renewal 2027",
        lines=(Line("SB-TEAM-Y", 5, 165.00),),
        fields={
            "Type": "Renewal",
            "Payment_Method__c": "Wire transfer",
            "Payment_Terms__c": "Net 30",
        },
        expect=Expect(plan_kind="paid", entitlements={"seats": 5}),
    ),
    changes="expansion",
    quantity=5,
    unit_amount=16_500,
)
LATER = (UPSELL, RENEWAL)
LOST = "unmapped"  # the deal lost after it was provisioned


def _plan_item(subscription: dict[str, Any] | None) -> dict[str, Any]:
    items = ((subscription or {}).get("items") or {}).get("data") or [{}]
    return dict(items[0])


def _seats(facts: DealFacts) -> Any:
    return entitlement_value(facts.entitlements.get("seats"))


def run(
    driver: Any, stack: Any, by_key: dict[str, DealFacts], mappings: Any
) -> tuple[list[Check], list[DealFacts]]:
    """Closes the later deals, then loses one; returns the checks and the later deals."""
    checks: list[Check] = []
    driver.heading("After the first close: an upsell and a renewal on live subscriptions")
    org = stack.org
    later: list[tuple[LaterDeal, DealFacts]] = []
    before: dict[str, dict[str, Any]] = {}
    for item in LATER:
        changed = by_key[item.changes]
        before[item.deal.key] = {
            "period_end": _plan_item(stack.stripe.get(changed.stripe_subscription_id)).get(
                "current_period_end"
            ),
            "invoices": _invoices_of(stack, changed.stripe_subscription_id),
        }
        contact = org.create_contact(changed.account_id, f"buyer+{item.deal.key}@example.com")
        opportunity_id = org.create_opportunity(
            changed.account_id,
            item.deal.name,
            lines=[line.as_org_line() for line in item.deal.lines],
            currency=item.deal.currency,
            contact_id=contact,
            **item.deal.fields,
        )
        facts = DealFacts(item.deal, opportunity_id, changed.account_id)
        facts.closed_at = datetime.now(UTC)
        org.close_won(opportunity_id)
        driver.say(f"Closed Won: {item.deal.name} ({opportunity_id}): {item.deal.story}")
        later.append((item, facts))
    driver._watch(stack, [f for _i, f in later], "Amendments")
    driver._collect(stack, [f for _i, f in later], mappings)
    for item, facts in later:
        changed = by_key[item.changes]
        key = item.deal.key
        sub = stack.stripe.get(changed.stripe_subscription_id)
        plan_item = _plan_item(sub)
        checks.append(Check(key, "provisioned", facts.status == "done", facts.status or ""))
        checks.append(
            Check(
                key,
                f"changes the live subscription of `{item.changes}` (no second one)",
                facts.stripe_subscription_id == changed.stripe_subscription_id,
                str(facts.stripe_subscription_id),
            )
        )
        checks.append(
            Check(
                key,
                f"its plan item has quantity {item.quantity}",
                plan_item.get("quantity") == item.quantity,
                f"quantity {plan_item.get('quantity')}",
            )
        )
        checks.append(
            Check(
                key,
                "the billing period is kept (co-terminated)",
                plan_item.get("current_period_end") == before[key]["period_end"],
                str(plan_item.get("current_period_end")),
            )
        )
        if item.unit_amount is not None:
            amount = (plan_item.get("price") or {}).get("unit_amount")
            checks.append(
                Check(
                    key,
                    f"the new price {item.unit_amount} is on the subscription for the next "
                    "period, nothing billed now",
                    amount == item.unit_amount
                    and before[key]["invoices"] >= 1  # the first deal's invoice is counted
                    and _invoices_of(stack, changed.stripe_subscription_id)
                    == before[key]["invoices"],
                    f"unit_amount {amount}, invoices {before[key]['invoices']} -> "
                    f"{_invoices_of(stack, changed.stripe_subscription_id)}",
                )
            )
        if item.seats is not None:
            checks.append(
                Check(
                    key,
                    f"the account's effective seats are {item.seats} (entitlement API)",
                    _seats(facts) == item.seats,
                    f"seats {_seats(facts)}",
                )
            )
    checks.extend(_lose(driver, stack, by_key[LOST], mappings))
    return checks, [f for _i, f in later]


def _invoices_of(stack: Any, subscription_id: str | None) -> int:
    """The subscription's invoices in the emulator. Since the pinned API version an invoice
    names its subscription only under `parent.subscription_details.subscription`."""
    if not subscription_id:
        return 0
    return sum(
        1
        for i in stack.stripe.objects("invoice")
        if ((i.get("parent") or {}).get("subscription_details") or {}).get("subscription")
        == subscription_id
    )


def _lose(driver: Any, stack: Any, facts: DealFacts, mappings: Any) -> list[Check]:
    """The provisioned deal moves to Closed Lost: `when_unwon: review` parks it, and a person
    cancels it with `sf-bridge deals cancel`."""
    key = facts.deal.key
    driver.heading("A deal lost after it was provisioned")
    stack.org.lose_deal(facts.opportunity_id)
    driver.say(f"Closed Lost: {facts.deal.name} ({facts.opportunity_id})")
    driver._watch(stack, [facts], "Lost deal", settled=("needs_attention",))
    driver._collect(stack, [facts], mappings)
    checks = [
        Check(
            key,
            "parked for review (`when_unwon: review`)",
            facts.row is not None and facts.row.last_error_code == "unwon_after_provisioning",
            str(facts.row.last_error_code if facts.row else None),
        )
    ]
    done = run_command(
        ["deals", "cancel", facts.opportunity_id, "--reason", "lost to a competitor"],
        stack.env,
        stack.workdir,
    )
    driver.say(f"$ sf-bridge deals cancel {facts.opportunity_id}  ->  exit {done.returncode}")
    driver._watch(stack, [facts], "Lost deal", settled=("cancelled",))
    driver._collect(stack, [facts], mappings)
    sub = stack.stripe.get(facts.stripe_subscription_id)
    invoice = stack.stripe.get(facts.stripe_invoice_id) if facts.stripe_invoice_id else {}
    checks += [
        Check(key, "cancelled", facts.status == "cancelled", facts.status or ""),
        Check(
            key,
            "its subscription is canceled in Stripe",
            sub.get("status") == "canceled",
            str(sub.get("status")),
        ),
        Check(
            key,
            "its open invoice is void",
            invoice.get("status") == "void",
            str(invoice.get("status")),
        ),
        Check(key, "its grants are revoked", not facts.grants, str(facts.grants)),
    ]
    return checks
