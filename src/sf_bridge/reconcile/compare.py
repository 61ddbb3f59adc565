"""The comparison itself: a pure function of what was read from the three systems."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sf_bridge.billing.port import StripeRecord
from sf_bridge.reconcile.findings import (
    ENTITLEMENTS_WITHOUT_SUBSCRIPTION,
    OPPORTUNITY_EDITED,
    SUBSCRIPTION_CHANGED,
    UNKNOWN_STRIPE_OBJECT,
    WON_NOT_PROVISIONED,
    Mismatch,
)

# Statuses of a subscription that no longer bills (Stripe's subscription statuses).
ENDED = frozenset({"canceled", "incomplete_expired"})
# Deal statuses still on their way: the worker carries on with them, nothing to report.
SETTLED = frozenset({"done", "needs_attention", "skipped", "cancelled"})


@dataclass(frozen=True)
class DealFacts:
    id: int
    opportunity_id: str
    status: str
    error_code: str | None
    plan: Mapping[str, Any] | None
    opportunity: Mapping[str, Any] | None  # the snapshot it was provisioned from
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    stripe_invoice_id: str | None
    invoice_status: str | None = None

    @property
    def custom(self) -> bool:
        return bool(self.plan) and (self.plan or {}).get("plan_kind") == "custom"


@dataclass(frozen=True)
class GrantFacts:
    deal_id: int
    feature: str
    stripe_subscription_id: str | None


def _num(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def line_summary(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """What of an Opportunity decides what is billed: its Amount and each line's product,
    quantity and prices."""
    record = record or {}
    lines = []
    for line in (record.get("OpportunityLineItems") or {}).get("records") or []:
        product = ((line.get("PricebookEntry") or {}).get("Product2") or {}).get("ProductCode")
        lines.append(
            (
                str(line.get("Id") or ""),
                str(product or ""),
                _num(line.get("Quantity")),
                _num(line.get("UnitPrice")),
                _num(line.get("TotalPrice")),
            )
        )
    return {"amount": _num(record.get("Amount")), "lines": sorted(lines)}


def _describe_lines(summary: Mapping[str, Any]) -> str:
    parts = [
        f"{code or line_id} x {quantity:g} at {unit:g}"
        if quantity is not None and unit is not None
        else f"{code or line_id}"
        for line_id, code, quantity, unit, _total in summary["lines"]
    ]
    amount = summary["amount"]
    text = ", ".join(parts) or "no lines"
    return f"{text}; Amount {amount:g}" if amount is not None else text


def expected_items(plan: Mapping[str, Any]) -> list[tuple[int, int | None, str, str | None]]:
    """The stored plan's items as Stripe should hold them: quantity, unit amount, currency,
    interval."""
    items = []
    for item in plan.get("items") or []:
        amount = item.get("unit_amount")
        if amount is None:
            amount = item.get("catalog_unit_amount")
        items.append(
            (int(item.get("quantity") or 0), amount, str(item.get("currency") or ""),
             item.get("interval"))
        )  # fmt: skip
    return sorted(items, key=repr)


def stripe_items(record: StripeRecord) -> list[tuple[int, int | None, str, str | None]]:
    return sorted(
        ((i.quantity, i.unit_amount, i.currency, i.interval) for i in record.items), key=repr
    )


def _items_text(items: Iterable[tuple[int, int | None, str, str | None]]) -> str:
    return (
        ", ".join(
            f"{q} x {a if a is None else f'{a / 100:.2f}'} {c.upper()}/{i}" for q, a, c, i in items
        )
        or "no items"
    )


def _won_not_provisioned(won_ids: Iterable[str], deals: Mapping[str, DealFacts]) -> list[Mismatch]:
    found = []
    for opp in sorted(won_ids):
        deal = deals.get(opp)
        if deal is None:
            found.append(
                Mismatch(
                    WON_NOT_PROVISIONED,
                    opp,
                    "Won in Salesforce since the provisioning floor, but sf-bridge never "
                    "received it.",
                    f"Check that it maps: `sf-bridge mappings preview --opportunity-id {opp}`. "
                    "Then save the Opportunity again in Salesforce: the stream (or the next "
                    "sweep) enqueues it and it is provisioned.",
                )
            )
        elif deal.status == "needs_attention":
            found.append(
                Mismatch(
                    WON_NOT_PROVISIONED,
                    opp,
                    f"Won, but its provisioning stopped (needs_attention, "
                    f"{deal.error_code or 'error'}).",
                    f"`sf-bridge deals show {deal.id}` says why; fix that, then "
                    f"`sf-bridge replay {deal.id}`.",
                    deal_id=deal.id,
                )
            )
        elif deal.status == "skipped":
            found.append(
                Mismatch(
                    WON_NOT_PROVISIONED,
                    opp,
                    f"Won now, but sf-bridge skipped it ({deal.error_code or 'skipped'}).",
                    f"If it should be billed: `sf-bridge replay --include-skipped {deal.id}`.",
                    deal_id=deal.id,
                )
            )
    return found


def _subscription_changed(
    deal: DealFacts, subscription: StripeRecord | None, customer_gone: bool
) -> list[Mismatch]:
    sub_id = deal.stripe_subscription_id
    restore = (
        "If the customer has left, move the Opportunity out of Closed Won so that sf-bridge "
        "records it; if it was a mistake, create the subscription again in Stripe with the "
        f"items `sf-bridge deals show {deal.id}` lists, tagged metadata sf_opportunity_id="
        f"{deal.opportunity_id}."
    )
    if customer_gone:
        return [
            Mismatch(
                SUBSCRIPTION_CHANGED,
                deal.opportunity_id,
                f"Stripe customer {deal.stripe_customer_id} was deleted in Stripe.",
                restore,
                deal_id=deal.id,
                stripe_id=deal.stripe_customer_id,
                stripe_kind="customer",
            )
        ]
    if subscription is None:
        return [
            Mismatch(
                SUBSCRIPTION_CHANGED,
                deal.opportunity_id,
                f"Subscription {sub_id} no longer exists in Stripe.",
                restore,
                deal_id=deal.id,
                stripe_id=sub_id,
                stripe_kind="subscription",
            )
        ]
    if subscription.status in ENDED:
        return [
            Mismatch(
                SUBSCRIPTION_CHANGED,
                deal.opportunity_id,
                f"Subscription {sub_id} was cancelled in Stripe (status {subscription.status}) "
                "while the deal is still won in Salesforce.",
                restore,
                deal_id=deal.id,
                stripe_id=sub_id,
                stripe_kind="subscription",
            )
        ]
    expected = expected_items(deal.plan or {})
    actual = stripe_items(subscription)
    if expected != actual:
        return [
            Mismatch(
                SUBSCRIPTION_CHANGED,
                deal.opportunity_id,
                f"Subscription {sub_id} was changed in Stripe: it bills {_items_text(actual)}; "
                f"the deal provisioned {_items_text(expected)}.",
                "If the change in Stripe is the new contract, record it in Salesforce (edit "
                "the Opportunity's lines, or close an amendment opportunity); otherwise put "
                "the subscription's items back in Stripe as the deal provisioned them.",
                deal_id=deal.id,
                stripe_id=sub_id,
                stripe_kind="subscription",
            )
        ]
    return []


def _invoice_changed(deal: DealFacts, invoice: StripeRecord | None) -> list[Mismatch]:
    """An invoice voided or written off in Stripe while sf-bridge still counts it due."""
    if invoice is None or invoice.status not in ("void", "uncollectible"):
        return []
    if deal.invoice_status == invoice.status:
        return []
    return [
        Mismatch(
            SUBSCRIPTION_CHANGED,
            deal.opportunity_id,
            f"Invoice {invoice.id} was marked {invoice.status} in Stripe; sf-bridge records it "
            f"as {deal.invoice_status or 'unknown'}.",
            "If the customer will not pay, move the Opportunity out of Closed Won (or cancel "
            "the subscription in Stripe); if it was a mistake, issue a new invoice in Stripe.",
            deal_id=deal.id,
            stripe_id=invoice.id,
            stripe_kind="invoice",
        )
    ]


def _opportunity_edited(deal: DealFacts, fresh: Mapping[str, Any] | None) -> list[Mismatch]:
    if fresh is None:
        return [
            Mismatch(
                OPPORTUNITY_EDITED,
                deal.opportunity_id,
                "The Opportunity was provisioned but no longer exists in Salesforce (deleted "
                "or merged).",
                "Restore it from the Salesforce recycle bin, or cancel its subscription in "
                "Stripe if the deal is really gone.",
                deal_id=deal.id,
                stripe_id=deal.stripe_subscription_id,
                stripe_kind="subscription",
            )
        ]
    if fresh.get("IsWon") is False:
        return [
            Mismatch(
                OPPORTUNITY_EDITED,
                deal.opportunity_id,
                f"Provisioned, but the Opportunity is no longer won (stage "
                f"{fresh.get('StageName')!r}); Stripe still bills it.",
                "If the deal is lost, cancel its subscription in Stripe; if the stage was "
                "changed by mistake, set it back to Closed Won.",
                deal_id=deal.id,
                stripe_id=deal.stripe_subscription_id,
                stripe_kind="subscription",
            )
        ]
    before, now = line_summary(deal.opportunity), line_summary(fresh)
    if before == now:
        return []
    return [
        Mismatch(
            OPPORTUNITY_EDITED,
            deal.opportunity_id,
            "The Opportunity's lines or amount were edited after it was provisioned: it was "
            f"{_describe_lines(before)}; it is now {_describe_lines(now)}. Stripe still bills "
            "what was provisioned.",
            "If the edit is the contract, change the subscription in Stripe to match (or close "
            "an amendment opportunity for the difference); if it was a mistake, put the "
            "Opportunity's lines back.",
            deal_id=deal.id,
            stripe_id=deal.stripe_subscription_id,
            stripe_kind="subscription",
        )
    ]


def _grants_without_subscription(
    grants: Iterable[GrantFacts],
    deals_by_id: Mapping[int, DealFacts],
    subscriptions: Mapping[str, StripeRecord | None],
) -> list[Mismatch]:
    by_deal: dict[int, list[GrantFacts]] = defaultdict(list)
    for grant in grants:
        by_deal[grant.deal_id].append(grant)
    found = []
    for deal_id, deal_grants in sorted(by_deal.items()):
        deal = deals_by_id.get(deal_id)
        if deal is None or deal.custom or deal.status not in SETTLED:
            continue  # in flight, or a custom plan (no subscription by design)
        sub_id = deal_grants[0].stripe_subscription_id or deal.stripe_subscription_id
        record = subscriptions.get(sub_id) if sub_id else None
        if record is not None and record.status not in ENDED:
            continue
        features = ", ".join(sorted(g.feature for g in deal_grants))
        state = (
            "no subscription"
            if not sub_id
            else f"subscription {sub_id} is {record.status if record else 'gone from Stripe'}"
        )
        found.append(
            Mismatch(
                ENTITLEMENTS_WITHOUT_SUBSCRIPTION,
                deal.opportunity_id,
                f"Entitlements {features} are still granted, but {state}.",
                "Stripe's customer.subscription.deleted event revokes them when the webhook "
                "endpoint (`sf-bridge serve`, STRIPE_WEBHOOK_SECRET) receives it: check the "
                "endpoint in the Stripe Dashboard and resend the event. If the subscription "
                "should be live, restore it in Stripe instead.",
                deal_id=deal.id,
                stripe_id=sub_id,
                stripe_kind="subscription",
            )
        )
    return found


def _unknown_objects(
    listed: Iterable[StripeRecord], deals: Mapping[str, DealFacts]
) -> list[Mismatch]:
    found = []
    for record in listed:
        opp = record.opportunity_id
        if not opp or record.deleted:
            continue
        deal = deals.get(opp)
        if deal is None:
            found.append(
                Mismatch(
                    UNKNOWN_STRIPE_OBJECT,
                    opp,
                    f"Stripe {record.kind} {record.id} is tagged with opportunity {opp}, which "
                    "sf-bridge has no deal for.",
                    "If it was made by hand or by another tool, remove its sf_opportunity_id "
                    "metadata (or delete it) in Stripe; if it belongs to a deal in another "
                    "sf-bridge database, reconcile there.",
                    stripe_id=record.id,
                    stripe_kind=record.kind,
                )
            )
            continue
        ours = {
            "customer": deal.stripe_customer_id,
            "subscription": deal.stripe_subscription_id,
            "invoice": deal.stripe_invoice_id,
        }[record.kind]
        if ours and ours != record.id and record.status not in ENDED | {"void"}:
            found.append(
                Mismatch(
                    UNKNOWN_STRIPE_OBJECT,
                    opp,
                    f"Stripe {record.kind} {record.id} is tagged with opportunity {opp}, but "
                    f"deal {deal.id} uses {ours}: a second one, made outside sf-bridge.",
                    f"Cancel or void the extra {record.kind} in Stripe so that the customer "
                    "is not billed twice.",
                    deal_id=deal.id,
                    stripe_id=record.id,
                    stripe_kind=record.kind,
                )
            )
    return found


def compare(
    *,
    won_ids: Iterable[str],
    deals: Iterable[DealFacts],
    fresh: Mapping[str, Mapping[str, Any] | None],
    grants: Iterable[GrantFacts],
    customers: Mapping[str, StripeRecord | None],
    subscriptions: Mapping[str, StripeRecord | None],
    listed: Iterable[StripeRecord],
    invoices: Mapping[str, StripeRecord | None] | None = None,
    salesforce: bool = True,
    stripe: bool = True,
) -> list[Mismatch]:
    """Every mismatch, in a stable order. `fresh` holds the Opportunity as Salesforce has it
    now (None: not found) for each provisioned deal; `customers` and `subscriptions` the
    Stripe objects the deals name (None: gone); `listed` every tagged Stripe object created
    since the floor. `salesforce=False` / `stripe=False` skip what needs that system."""
    by_opp = {d.opportunity_id: d for d in deals}
    by_id = {d.id: d for d in by_opp.values()}
    found = _won_not_provisioned(won_ids, by_opp) if salesforce else []
    for deal in sorted(by_opp.values(), key=lambda d: d.id):
        if deal.status != "done":
            continue
        if stripe and not deal.custom and deal.stripe_subscription_id:
            customer_gone = bool(deal.stripe_customer_id) and (
                customers.get(deal.stripe_customer_id or "") is None
            )
            found += _subscription_changed(
                deal, subscriptions.get(deal.stripe_subscription_id), customer_gone
            )
            if deal.stripe_invoice_id:
                found += _invoice_changed(deal, (invoices or {}).get(deal.stripe_invoice_id))
        if salesforce and deal.opportunity_id in fresh:
            found += _opportunity_edited(deal, fresh[deal.opportunity_id])
    if stripe:
        found += _grants_without_subscription(grants, by_id, subscriptions)
        found += _unknown_objects(listed, by_opp)
    return found
