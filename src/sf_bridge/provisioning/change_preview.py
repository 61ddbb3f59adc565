"""`mappings preview` of an amendment or renewal: the account's live subscription before and
after the change, and the invoice Stripe would produce for it (`POST /v1/invoices/
create_preview`), creating nothing. Reads the store (the account's live subscription) and
Stripe; writes neither."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.port import (
    BillingGateway,
    BillingSubscription,
    InvoicePreview,
    ItemChange,
    PreviewSpec,
)
from sf_bridge.db.models import Customer, utcnow
from sf_bridge.plan import ProvisioningPlan
from sf_bridge.provisioning import amendment, schedule_change
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.schedule import coupon_spec
from sf_bridge.provisioning.store import DealStore
from sf_bridge.provisioning.stripe_request import price_lookup_keys, subscription_spec


@dataclass(frozen=True)
class ItemLine:
    price: str
    lookup_key: str | None
    quantity: int
    unit_amount: int | None


@dataclass(frozen=True)
class ChangePreview:
    subscription: str
    before: tuple[ItemLine, ...]
    after: tuple[ItemLine, ...]
    changes: tuple[ItemChange, ...]
    proration_behavior: str
    invoice: InvoicePreview | None  # None: nothing to change (or billed) now
    # a change through the subscription's schedule: its phases once changed (from the current
    # one on), their end behaviour, and the schedule (None: made from the subscription)
    phases: tuple[dict[str, Any], ...] = ()
    end_behavior: str | None = None
    schedule: str | None = None


def preview_change(
    plan: ProvisioningPlan,
    billing: BillingGateway,
    session_factory: sessionmaker[Session],
    today: date | None = None,
) -> ChangePreview:
    """The change the amendment or renewal `plan` would make to its account's live
    subscription; raises `amendment.NoSubscriptionToAmend` when there is none. A change that
    starts later, or ramps, shows the subscription's schedule phases it would leave."""
    with session_factory() as session:
        customer_id = session.execute(
            select(Customer.id).where(Customer.customer_key == plan.customer.customer_key)
        ).scalar()
    view = DealView(
        id=-1,
        opportunity_id=plan.opportunity_id,
        status="mapped",
        current_step="subscription",
        attempts=0,
        source="preview",
        account_id=plan.customer.account_id,
        customer_id=customer_id,
        plan=plan.to_dict(),
    )
    store = DealStore(session_factory, owner="preview", lease=_NO_LEASE, clock=utcnow)
    live = store.live_subscription(view)
    if live is None:
        raise amendment.NoSubscriptionToAmend(
            "The account has no live subscription in the same currency and interval: the "
            "deal would park as `no_subscription_to_amend`.",
            hint="provision the account's first deal, or close this one as new business.",
        )
    before = amendment.read_subscription(billing, live.subscription_id)
    prices = PriceCache().resolve(billing, price_lookup_keys(plan))
    spec = subscription_spec(
        plan, prices, customer=before.customer, opportunity_id=plan.opportunity_id
    )
    targets = [amendment.new_item(i, s) for i, s in zip(plan.items, spec.items, strict=True)]
    if before.schedule or schedule_change.needs_schedule(plan, today or datetime.now(UTC).date()):
        return _scheduled(plan, billing, before, prices)
    live_keys = [
        str(i.get("lookup_key"))
        for i in (live.plan or {}).get("items", [])
        if i.get("kind") == "plan" and i.get("lookup_key")
    ]
    changes = amendment.item_changes(plan, targets, before, live_plan_keys=live_keys)
    behavior = amendment.proration(plan)
    invoice = None
    if changes:
        invoice = billing.preview_invoice(
            PreviewSpec(
                subscription=before.id,
                items=changes,
                proration_behavior=behavior,
                proration_date=datetime.now(UTC),
            )
        )
    price_amounts = {p.id: p.unit_amount for p in prices.values()}
    return ChangePreview(
        subscription=before.id,
        before=tuple(_lines(before)),
        after=tuple(_after(before, changes, price_amounts, prices)),
        changes=tuple(changes),
        proration_behavior=behavior,
        invoice=invoice,
    )


_NO_LEASE = timedelta(0)


def _scheduled(
    plan: ProvisioningPlan,
    billing: BillingGateway,
    before: BillingSubscription,
    prices: dict[str, Any],
) -> ChangePreview:
    """The phases the change would leave on the subscription's schedule (as
    `amendment.scheduled_step` computes them), reading Stripe only."""

    def targets_of(phase_plan: ProvisioningPlan) -> list[amendment.Target]:
        spec = subscription_spec(
            phase_plan, prices, customer=before.customer, opportunity_id=plan.opportunity_id
        )
        return [amendment.new_item(i, s) for i, s in zip(phase_plan.items, spec.items, strict=True)]

    schedule = billing.get_schedule(before.schedule) if before.schedule else None
    deal = amendment.deal_periods(plan, before, targets_of)
    if plan.discount is not None and amendment.totals_of(plan):
        # the coupon the change would make (its id is the deal's; nothing is created here)
        coupon = coupon_spec(plan.opportunity_id, plan.discount).id
        deal = [replace(p, coupons=(coupon,)) for p in deal]
    existing, segments, end_behavior = schedule_change.timeline(
        plan, before, schedule, deal, "preview"
    )
    amounts = {p.id: p.unit_amount for p in prices.values()}
    keys = {p.id: key for key, p in prices.items()}
    lines = {i.price: i for i in before.items}

    def shown(item: Any) -> ItemLine:
        held = lines.get(item.price or "")
        amount = (
            item.price_data.unit_amount
            if item.price_data
            else amounts.get(item.price, held.unit_amount if held else None)
        )
        return ItemLine(
            item.price or "price_data",
            keys.get(item.price or "", held.lookup_key if held else None),
            item.quantity,
            amount,
        )

    phases = tuple(
        {**row, "items": [_line_json(shown(i)) for i in seg.items]}
        for row, seg in zip(schedule_change.describe(segments), segments, strict=True)
    )
    now_changed = segments[0].items != existing[0].items
    return ChangePreview(
        subscription=before.id,
        before=tuple(_lines(before)),
        after=tuple(shown(i) for i in segments[0].items) if now_changed else tuple(_lines(before)),
        changes=(),
        proration_behavior=amendment.proration(plan),
        invoice=None,
        phases=phases,
        end_behavior=end_behavior,
        schedule=schedule.id if schedule else None,
    )


def _line_json(i: ItemLine) -> dict[str, Any]:
    return {
        "price": i.price,
        "lookup_key": i.lookup_key,
        "quantity": i.quantity,
        "unit_amount": i.unit_amount,
    }


def _lines(sub: BillingSubscription) -> list[ItemLine]:
    return [ItemLine(i.price, i.lookup_key, i.quantity, i.unit_amount) for i in sub.items]


def _after(
    sub: BillingSubscription,
    changes: list[ItemChange],
    amounts: dict[str, int | None],
    prices: dict[str, Any],
) -> list[ItemLine]:
    keys = {p.id: key for key, p in prices.items()}
    lines = {i.id: ItemLine(i.price, i.lookup_key, i.quantity, i.unit_amount) for i in sub.items}
    added: list[ItemLine] = []
    for change in changes:
        if change.item_id is None:
            price = change.price or "price_data"
            amount = change.price_data.unit_amount if change.price_data else amounts.get(price)
            added.append(ItemLine(price, keys.get(price), change.quantity or 1, amount))
        elif change.deleted:
            lines.pop(change.item_id, None)
        else:
            old = lines[change.item_id]
            price = change.price or old.price
            lines[change.item_id] = ItemLine(
                price,
                keys.get(price, old.lookup_key) if change.price else old.lookup_key,
                change.quantity if change.quantity is not None else old.quantity,
                amounts.get(price, old.unit_amount) if change.price else old.unit_amount,
            )
    return [*lines.values(), *added]


def change_json(preview: ChangePreview) -> dict[str, Any]:
    line = _line_json

    body: dict[str, Any] = {
        "subscription": preview.subscription,
        "proration_behavior": preview.proration_behavior,
        "before": [line(i) for i in preview.before],
        "after": [line(i) for i in preview.after],
        "invoice": None,
    }
    if preview.phases:
        body["schedule"] = preview.schedule or "made from the subscription"
        body["end_behavior"] = preview.end_behavior
        body["phases"] = list(preview.phases)
    if preview.invoice is not None:
        inv = preview.invoice
        body["invoice"] = {
            "currency": inv.currency,
            "total": inv.total,
            "amount_due": inv.amount_due,
            "lines": [
                {
                    "description": x.description,
                    "amount": x.amount,
                    "proration": x.proration,
                    "quantity": x.quantity,
                }
                for x in inv.lines
            ],
        }
    return body
