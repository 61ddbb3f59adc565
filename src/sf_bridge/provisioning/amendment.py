"""After the first close: amendments, renewals and reopened deals change the live subscription.

A deal whose plan is not new business does not create a subscription; its subscription step
changes the account's live one (`amend_step`, dispatched from `steps.subscription_step`):

- **amendment**, `additions`: each line adds its quantity to the item of the same catalog
  price (a new item when there is none); `totals`: the lines are the subscription's new
  quantities, items no longer listed are removed. A plan line of another price than the live
  plan's swaps the plan item's price. The change keeps the subscription's billing period
  (co-terminated: the billing cycle anchor is not touched), prorated as the plan says
  (`create_prorations`, `always_invoice`, `none`).
- **renewal**: the subscription's items become the renewal's lines (totals) with
  `proration_behavior=none`: nothing is billed for the current period, and the next invoice,
  at the renewal date (the current period's end), bills the new prices.
- **reopened deal** (won again with other lines after it was provisioned, replayed): the
  difference between what the deal provisioned before and its lines now is applied to its
  own subscription (5 seats then, 40 now: +35).

One request, guarded on Stripe's state: the request tags the subscription with the deal's
marker (`metadata.sf_amendments`, the latest markers, comma separated) in the same
`POST /v1/subscriptions/{id}`, and every attempt reads the subscription first: a marker
already there means the change was made (a crash after the request), so it is recorded and
never sent twice. The Idempotency-Key is only the second guard.

Deals of one account are applied one at a time in the order they arrived: a deal waits (is
retried) while an earlier deal of its account has not got past its subscription step.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any, Protocol

from sf_bridge.billing.port import (
    BillingGateway,
    BillingSubscription,
    BillingSubscriptionItem,
    ItemChange,
    ProrationBehavior,
    SubscriptionItemSpec,
    SubscriptionUpdate,
)
from sf_bridge.errors import PermanentError, TransientError
from sf_bridge.plan import PlanItem, ProvisioningPlan
from sf_bridge.provisioning import schedule_change
from sf_bridge.provisioning.outcome import DealView, Outcome
from sf_bridge.provisioning.schedule import contract_start, ensure_coupon, midnight
from sf_bridge.provisioning.stripe_request import LINE_KEY, keyed

# The subscription's metadata key holding the markers of the deals applied to it.
MARKERS_KEY = "sf_amendments"
_MARKERS_MAX = 500  # Stripe metadata values hold 500 characters
# The plan's key (stored plans only) of a reopened deal: the items it provisioned before.
REOPENED_KEY = "amends_own"


@dataclass(frozen=True)
class LiveSubscription:
    """The account's live subscription as the store knows it: the deal that made it (or last
    changed it) and that deal's plan."""

    deal_id: int
    opportunity_id: str
    subscription_id: str
    plan: Mapping[str, Any] | None


class NoSubscriptionToAmend(PermanentError):
    """An amendment or renewal with no live subscription to change."""

    code = "no_subscription_to_amend"


class EarlierDealFirst(TransientError):
    """An earlier deal of the account is still in flight: this one waits for it (it is
    rescheduled like a deal whose account is busy, its attempts not counted)."""

    code = "earlier_deal_first"


class AccountLookup(Protocol):
    """What the amendment step asks the store (`DealStore` implements it)."""

    def live_subscription(self, deal: DealView) -> LiveSubscription | None: ...

    def earlier_in_flight(self, deal: DealView) -> int | None: ...


def is_change(plan: Mapping[str, Any] | None) -> bool:
    """Whether a stored plan changes a live subscription instead of creating one."""
    if not plan:
        return False
    return plan.get("intent", "new_business") != "new_business" or bool(plan.get(REOPENED_KEY))


def reopened_plan(deal: DealView, plan: dict[str, Any]) -> dict[str, Any]:
    """The map step's plan for a deal provisioned before and mapped again (reopened and won
    again, then replayed): a change of its own subscription from what it provisioned
    (`amends_own.from_items`) to its lines now. Other deals' plans are returned as they are."""
    old = deal.plan or {}
    provisioned = bool(deal.stripe_subscription_id) and (
        deal.invoice_status in ("open", "paid") or is_change(old)
    )
    if not provisioned or plan.get("plan_kind") == "custom":
        return plan
    pending = old.get(REOPENED_KEY)
    from_items = pending["from_items"] if pending else old.get("items", [])
    return {
        **plan,
        "intent": "amendment",
        "amendment_lines": "totals",
        "proration": plan.get("proration") or old.get("proration") or "create_prorations",
        REOPENED_KEY: {"from_items": from_items, "subscription": deal.stripe_subscription_id},
    }


def marker(deal: DealView, plan: Mapping[str, Any]) -> str:
    """The deal's tag on the subscription for this change: its opportunity id and a digest of
    what it asks for (the same on every attempt, whatever the subscription holds now)."""
    wanted: dict[str, Any] = {
        "intent": plan.get("intent"),
        "lines": plan.get("amendment_lines"),
        "items": [(i.get("lookup_key"), i.get("quantity")) for i in plan.get("items", [])],
        "from": [
            (i.get("lookup_key"), i.get("quantity"))
            for i in (plan.get(REOPENED_KEY) or {}).get("from_items", [])
        ],
    }
    if plan.get("phases") or plan.get("contract"):
        # dated changes: when each period starts and what it holds (undated plans keep the
        # digest they had)
        wanted["dated"] = [
            (p.get("start_date"), p.get("end_date"),
             [(i.get("lookup_key"), i.get("quantity"), i.get("unit_amount"))
              for i in p.get("items", [])])
            for p in plan.get("phases") or ()
        ] + [(plan.get("contract") or {}).get(k) for k in ("start_date", "end_date")]  # fmt: skip
    digest = hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()[:10]
    return f"{deal.opportunity_id}:{digest}"


def applied(subscription: BillingSubscription, tag: str) -> bool:
    return tag in (subscription.metadata.get(MARKERS_KEY) or "").split(",")


def with_marker(subscription: BillingSubscription, tag: str) -> str:
    """The markers value with `tag` added last, the oldest dropped to fit Stripe's 500."""
    return _with_tag(subscription.metadata, tag)


# the change --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One plan line resolved to what the subscription item should carry."""

    item: PlanItem
    price: str | None  # catalog price id (None with price_data)
    change: ItemChange  # the new-item form of it


def line_of(sub_item: BillingSubscriptionItem) -> str | None:
    """The plan line a subscription item bills: its tag (`metadata.sf_line`, set on every item
    we create), else its catalog price's lookup key (items made before the tag; a negotiated
    price has none)."""
    return sub_item.metadata.get(LINE_KEY) or sub_item.lookup_key


def _matches(sub_item: BillingSubscriptionItem, target: Target) -> bool:
    key = target.item.lookup_key
    return (key is not None and line_of(sub_item) == key) or (
        target.price is not None and sub_item.price == target.price
    )


def item_changes(
    plan: ProvisioningPlan,
    targets: Sequence[Target],
    subscription: BillingSubscription,
    *,
    live_plan_keys: Sequence[str] = (),
    from_items: Sequence[Mapping[str, Any]] | None = None,
) -> list[ItemChange]:
    """The subscription item changes the plan asks for (empty: nothing to change)."""
    items = list(subscription.items)
    changes: list[ItemChange] = []
    if from_items is not None:
        return _difference(targets, items, from_items)
    totals = plan.intent == "renewal" or plan.amendment_lines == "totals"
    used: set[str] = set()
    for target in targets:
        existing = next((i for i in items if i.id not in used and _matches(i, target)), None)
        if existing is None and target.item.kind == "plan":
            # another plan: swap the price of the live plan's item
            existing = next(
                (i for i in items if i.id not in used and line_of(i) in live_plan_keys), None
            )
            if existing is not None:
                used.add(existing.id)
                quantity = target.item.quantity if totals else existing.quantity
                changes.append(_swap(existing, target, quantity))
                continue
        if existing is None:
            changes.append(target.change)
            continue
        used.add(existing.id)
        quantity = target.item.quantity if totals else existing.quantity + target.item.quantity
        if totals and _other_price(existing, target):
            # a renewal or totals at another price (a negotiated one): the item's price too
            changes.append(_swap(existing, target, quantity))
        elif quantity != existing.quantity:
            changes.append(ItemChange(item_id=existing.id, quantity=quantity))
    if totals:
        changes += [ItemChange(item_id=i.id, deleted=True) for i in items if i.id not in used]
    return changes


def _other_price(existing: BillingSubscriptionItem, target: Target) -> bool:
    data = target.change.price_data
    if data is not None:
        return existing.unit_amount != data.unit_amount or existing.lookup_key is not None
    return target.price is not None and existing.price != target.price


def _swap(existing: BillingSubscriptionItem, target: Target, quantity: int) -> ItemChange:
    return ItemChange(
        item_id=existing.id,
        quantity=quantity,
        price=target.change.price,
        price_data=target.change.price_data,
        metadata=target.change.metadata,  # the item now bills the target's line
    )


def _difference(
    targets: Sequence[Target],
    items: list[BillingSubscriptionItem],
    from_items: Sequence[Mapping[str, Any]],
) -> list[ItemChange]:
    """A reopened deal: what changed between its earlier lines and its lines now, applied to
    its subscription's items (other deals' additions on them are kept)."""
    before: dict[str, int] = {}
    for old in from_items:
        key = str(old.get("lookup_key") or "")
        before[key] = before.get(key, 0) + int(old.get("quantity") or 0)
    changes: list[ItemChange] = []
    seen: set[str] = set()
    for target in targets:
        key = target.item.lookup_key or ""
        seen.add(key)
        delta = target.item.quantity - before.get(key, 0)
        existing = next((i for i in items if _matches(i, target)), None)
        if existing is None:
            if target.item.quantity > 0:
                changes.append(target.change)
            continue
        quantity = existing.quantity + delta
        if quantity <= 0:
            changes.append(ItemChange(item_id=existing.id, deleted=True))
        elif delta:
            changes.append(ItemChange(item_id=existing.id, quantity=quantity))
    for key, quantity in before.items():
        if key in seen:
            continue
        existing = next((i for i in items if line_of(i) == key), None)
        if existing is None:
            continue
        left = existing.quantity - quantity
        changes.append(
            ItemChange(item_id=existing.id, deleted=True)
            if left <= 0
            else ItemChange(item_id=existing.id, quantity=left)
        )
    return changes


def proration(plan: ProvisioningPlan) -> ProrationBehavior:
    """Renewals bill nothing now (the new prices start with the next period); amendments as
    their plan says (Stripe's default `create_prorations`)."""
    if plan.intent == "renewal":
        return "none"
    return plan.proration or "create_prorations"


# the step ----------------------------------------------------------------------------------


def find_target_subscription(
    accounts: AccountLookup | None, deal: DealView
) -> tuple[str, Mapping[str, Any] | None]:
    """The subscription the deal changes and the plan it was made with."""
    own = (deal.plan or {}).get(REOPENED_KEY)
    if own:
        return str(own["subscription"]), None
    if accounts is None:
        raise PermanentError(
            "This worker cannot look up the account's live subscription.",
            hint="run the deal with `sf-bridge run` (the worker with a database).",
        )
    earlier = accounts.earlier_in_flight(deal)
    if earlier is not None:
        raise EarlierDealFirst(
            f"Deal {earlier} of the same account arrived earlier and is not provisioned "
            "yet: this change waits for it (deals of one account are applied in order)."
        )
    if deal.stripe_subscription_id:
        return deal.stripe_subscription_id, None
    live = accounts.live_subscription(deal)
    if live is None:
        plan = deal.plan or {}
        raise NoSubscriptionToAmend(
            f"The deal is {'a renewal' if plan.get('intent') == 'renewal' else 'an amendment'} "
            "but its account has no live subscription in the same currency and interval.",
            hint="provision the account's first deal, or set the opportunity's Type to a new "
            "business value (mappings `deal_type`), then `sf-bridge replay` the deal.",
        )
    return live.subscription_id, live.plan


def read_subscription(billing: BillingGateway, subscription_id: str) -> BillingSubscription:
    found = billing.get_subscription(subscription_id)
    if found is None or found.status in ("canceled", "incomplete_expired"):
        raise NoSubscriptionToAmend(
            f"The subscription {subscription_id} to change is "
            f"{'gone' if found is None else found.status} in Stripe.",
            hint="close the deal as new business (Opportunity Type), then `sf-bridge replay` it.",
        )
    return found


def outcome_of(
    deal: DealView,
    plan: ProvisioningPlan,
    before: BillingSubscription,
    after: BillingSubscription,
    changes: Sequence[ItemChange],
    *,
    tag: str,
    sent: bool,
    idempotency_key: str | None = None,
) -> Outcome:
    """What the change leaves on the deal: the subscription it changed and, when the change
    billed a proration invoice now, that invoice (for the invoice step to finalize)."""
    columns: dict[str, Any] = {"stripe_subscription_id": after.id}
    stored = dict(deal.plan or {})
    if stored.pop(REOPENED_KEY, None) is not None:
        columns["plan"] = stored  # applied: the deal's lines now are what it provisioned
    # with `always_invoice` the change's invoice is the subscription's latest one, when the
    # change made one (a change of nothing to bill makes none)
    known = before.latest_invoice if sent else deal.stripe_invoice_id
    if (
        plan.intent == "amendment"
        and proration(plan) == "always_invoice"
        and after.latest_invoice
        and after.latest_invoice != known
        and changes_or_applied(changes, sent, after, tag)
    ):
        columns.update(
            stripe_invoice_id=after.latest_invoice,
            invoice_status=None,
            hosted_invoice_url=None,
        )
    invoice_pending = bool(columns.get("stripe_invoice_id")) or (
        bool(deal.stripe_invoice_id) and deal.invoice_status not in ("open", "paid")
    )
    return Outcome(
        changes=columns,
        idempotency_key=idempotency_key,
        stripe_request_id=after.request_id,
        detail={
            "subscription": after.id,
            "intent": plan.intent,
            "marker": tag,
            "changes": len(changes),
            "applied": "now" if sent else "before" if changes else "nothing to change",
            **replaced_detail(plan, before, sent=sent and bool(changes)),
        },
        skip_to=None if invoice_pending else "entitlements",
    )


def replaces_grants(plan: ProvisioningPlan, stored: Mapping[str, Any] | None) -> bool:
    """Whether the deal's grants replace those of the other deals on its subscription: a
    renewal or a totals amendment says what the account has in all. (A reopened deal replaces
    only its own earlier grants; additions add theirs.)"""
    if stored and stored.get(REOPENED_KEY):
        return False
    return plan.intent == "renewal" or (
        plan.intent == "amendment" and plan.amendment_lines == "totals"
    )


def changes_or_applied(
    changes: Sequence[ItemChange], sent: bool, after: BillingSubscription, tag: str
) -> bool:
    return bool(changes) if sent else applied(after, tag)


def amend_step(
    billing: BillingGateway,
    accounts: AccountLookup | None,
    targets_of: Any,
    deal: DealView,
    idempotency_key_of: Any,
    today: date | None = None,
) -> Outcome:
    """The subscription step of an amendment, a renewal or a reopened deal (see the module
    text). `targets_of(plan)` resolves the plan's lines to catalog prices;
    `idempotency_key_of(step, request)` gives the request's Idempotency-Key. A change that
    starts after `today`, or a ramp, goes through a schedule (`scheduled_step`)."""
    plan = deal.plan_or_fail()
    stored = deal.plan or {}
    subscription_id, live_plan = find_target_subscription(accounts, deal)
    before = read_subscription(billing, subscription_id)
    tag = marker(deal, stored)
    if applied(before, tag):
        return outcome_of(deal, plan, before, before, (), tag=tag, sent=False)
    if not stored.get(REOPENED_KEY) and (
        # a subscription under a schedule is changed through it, or its next phase would
        # undo the change
        before.schedule or schedule_change.needs_schedule(plan, today or _today())
    ):
        return scheduled_step(billing, deal, plan, before, tag, targets_of, idempotency_key_of)
    live_keys = [
        str(i.get("lookup_key"))
        for i in (live_plan or {}).get("items", [])
        if i.get("kind") == "plan" and i.get("lookup_key")
    ] or [i.lookup_key for i in before.items if i.lookup_key][:1]
    own = stored.get(REOPENED_KEY)
    targets = targets_of(plan)
    changes = item_changes(
        plan,
        targets,
        before,
        live_plan_keys=[k for k in live_keys if k],
        from_items=own["from_items"] if own else None,
    )
    if not changes:
        return outcome_of(deal, plan, before, before, (), tag=tag, sent=False)
    update = SubscriptionUpdate(
        items=changes,
        proration_behavior=proration(plan),
        metadata={MARKERS_KEY: with_marker(before, tag)},
    )
    key = idempotency_key_of("amendment", {"subscription": subscription_id, "marker": tag})
    try:
        after = billing.update_subscription(subscription_id, update, idempotency_key=key)
    except Exception as exc:
        if getattr(exc, "idempotency_key", None) is None:
            setattr(exc, "idempotency_key", key)  # noqa: B010
        raise
    return outcome_of(deal, plan, before, after, changes, tag=tag, sent=True, idempotency_key=key)


def _today() -> date:
    return datetime.now(UTC).date()


def scheduled_step(
    billing: BillingGateway,
    deal: DealView,
    plan: ProvisioningPlan,
    before: BillingSubscription,
    tag: str,
    targets_of: Any,
    idempotency_key_of: Any,
) -> Outcome:
    """A change that starts later, or a ramp: its phases on the subscription's schedule
    (`sf_bridge.provisioning.schedule_change`), each request guarded on Stripe's state."""

    deal_phases = deal_periods(plan, before, targets_of)
    if plan.discount is not None and totals_of(plan):
        # a renewal's discount: the deal's coupon (its id derived from the deal, so a retry
        # finds it) on each of its phases
        coupon_key = idempotency_key_of("coupon", deal.opportunity_id)
        with keyed(coupon_key):
            coupons = tuple(ensure_coupon(billing, plan, deal.opportunity_id, idempotency_key_of))
        deal_phases = [replace(p, coupons=coupons) for p in deal_phases]
    adopt_key = idempotency_key_of("change_schedule", {"subscription": before.id, "marker": tag})
    with keyed(adopt_key):
        schedule = schedule_change.adopt(billing, before, adopt_key)
    start = contract_start(plan)
    columns: dict[str, Any] = {
        "stripe_subscription_id": before.id,
        "stripe_schedule_id": schedule.id,
        "contract_start_at": midnight(start) if start else None,
    }
    detail: dict[str, Any] = {
        "subscription": before.id,
        "schedule": schedule.id,
        "intent": plan.intent,
        "marker": tag,
    }
    if schedule_change.applied_to(schedule, tag):
        return Outcome(
            changes=columns,
            stripe_request_id=schedule.request_id,
            detail={**detail, "applied": "before"},
            skip_to="entitlements",
        )
    existing, segments, end_behavior = schedule_change.timeline(
        plan, before, schedule, deal_phases, with_marker(before, tag)
    )
    terms = plan.billing
    phases = schedule_change.phase_specs(
        segments,
        collection_method=before.collection_method or (terms.collection_method if terms else None),
        days_until_due=terms.days_until_due if terms else None,
    )
    key = idempotency_key_of("change_phases", {"schedule": schedule.id, "marker": tag})
    with keyed(key):
        after = billing.update_schedule(
            schedule.id,
            phases,
            idempotency_key=key,
            end_behavior=end_behavior,
            metadata={MARKERS_KEY: _with_tag(schedule.metadata, tag)},
            # how a change of the current phase (a change from now on) is prorated; a later
            # start posts the current phase back unchanged, and nothing is prorated
            proration_behavior=proration(plan),
        )
    if proration(plan) == "always_invoice" and segments[0].items != existing[0].items:
        now_sub = billing.get_subscription(before.id)
        if now_sub is not None and now_sub.latest_invoice != before.latest_invoice:
            columns.update(
                stripe_invoice_id=now_sub.latest_invoice, invoice_status=None,
                hosted_invoice_url=None,
            )  # fmt: skip
    return Outcome(
        changes=columns,
        idempotency_key=key,
        stripe_request_id=after.request_id,
        detail={
            **detail,
            "applied": "now",
            "end_behavior": end_behavior,
            "phases": schedule_change.describe(segments),
        },
        skip_to=None if columns.get("stripe_invoice_id") else "entitlements",
    )


def deal_periods(
    plan: ProvisioningPlan, before: BillingSubscription, targets_of: Any
) -> list[schedule_change.Segment]:
    """The deal's periods with the items `targets_of(phase plan)` resolves, on the
    subscription's billing time."""

    def items_of(phase_plan: ProvisioningPlan) -> list[SubscriptionItemSpec]:
        return [
            SubscriptionItemSpec(
                quantity=t.item.quantity,
                price=t.change.price,
                price_data=t.change.price_data,
                metadata=dict(t.change.metadata or {}),
            )
            for t in targets_of(phase_plan)
        ]

    return schedule_change.on_billing_time(
        schedule_change.deal_segments(plan, items_of), before.current_period_end
    )


def totals_of(plan: ProvisioningPlan) -> bool:
    """Whether the deal's lines are the subscription's totals (a renewal, a totals amendment)."""
    return plan.intent == "renewal" or plan.amendment_lines == "totals"


def _with_tag(metadata: Mapping[str, str], tag: str) -> str:
    tags = [t for t in (metadata.get(MARKERS_KEY) or "").split(",") if t]
    tags.append(tag)
    while len(",".join(tags)) > _MARKERS_MAX and len(tags) > 1:
        tags.pop(0)
    return ",".join(tags)


def new_item(item: PlanItem, spec_item: Any) -> Target:
    """A plan line and the subscription item `stripe_request.subscription_spec` made of it."""
    return Target(
        item=item,
        price=spec_item.price,
        change=ItemChange(
            quantity=item.quantity,
            price=spec_item.price,
            price_data=spec_item.price_data,
            metadata=dict(spec_item.metadata) or None,
        ),
    )


# what a totals change replaced (read back when the deal is un-won: sf_bridge.provisioning.unwon)


def replaced_detail(
    plan: ProvisioningPlan, before: BillingSubscription, *, sent: bool
) -> dict[str, Any]:
    """For a renewal or a totals amendment sent now: the subscription's items as they were
    before it (`replaced`: item id, price, lookup key, quantity) and the period it was sent
    in, so that un-winning the deal can put them back. Empty otherwise (nothing replaced, or
    the change was found made and what it replaced is no longer known)."""
    if not sent or not (plan.intent == "renewal" or plan.amendment_lines == "totals"):
        return {}
    return {
        "replaced": [[i.id, i.price, i.lookup_key, i.quantity] for i in before.items],
        "period_end": before.current_period_end.isoformat() if before.current_period_end else None,
    }
