"""Renewals and amendments that start later or change over time: the live subscription is put
under a subscription schedule and the deal's phases are added to it at their dates.

A renewal (or an amendment) whose lines start after today, or that is a ramp (lines for
different years), does not change the subscription now. Instead, on the account's live
subscription:

1. a schedule is made FROM the subscription (`POST /v1/subscription_schedules` with
   `from_subscription`; Stripe takes the subscription's items as the current phase, and other
   parameters cannot be set in that request), unless the subscription already has one (a
   ramp of new business, or an earlier change);
2. the schedule's phases are updated (`POST /v1/subscription_schedules/{id}` with
   `phases[]`): the current phase is posted back as it is, ending where the deal starts, then
   one phase per period of the deal, each with its own prices and quantities. Stripe: "If
   there are multiple phases, the `end_date` of one phase will always equal the `start_date`
   of the next phase. Note that past phases can be omitted", and the first phase's
   `start_date` "Must be set on the first phase" (the gateway posts the current phase's).
   As the current phase's items do not change, the update bills nothing now
   (`proration_behavior=none`: "If the update changes the billing configuration ... of the
   current phase, indicates how prorations from this change should be handled"); each phase
   bills its prices from its start.

A renewal (or a `totals` amendment) replaces what the schedule held from its start on; its
term's end ends the schedule (`end_behavior=cancel`), an open-ended one releases the
subscription after its last phase (`release`: it goes on with the last phase's items). An
amendment of `additions` adds its quantities to every phase it overlaps (co-terminated with the
schedule's own phases: a ramp of the first deal keeps its steps, each raised), and keeps the
schedule's end behaviour.

Each phase item carries its plan line (`metadata.sf_line`; Stripe copies a configuration
item's metadata to the subscription item "when the phase is entered"), and each new phase the
subscription's markers with this deal's (`metadata.sf_amendments`, copied to the
subscription when the phase is entered).

Idempotent and crash-safe, guarded on Stripe's state before any request: the subscription's
`schedule` says whether step 1 was made (a crash after it reuses that schedule), and the
schedule's markers (`metadata.sf_amendments`, set in the same request as the phases, and on
every phase the deal added) say whether step 2 was; the Idempotency-Keys are the second guard.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

from sf_bridge.billing.port import (
    BillingGateway,
    BillingSchedule,
    BillingSubscription,
    BillingSubscriptionItem,
    EndBehavior,
    PhaseSpec,
    SubscriptionItemSpec,
)
from sf_bridge.errors import BillingRejected
from sf_bridge.plan import ProvisioningPlan
from sf_bridge.provisioning import schedule as contract
from sf_bridge.provisioning.stripe_request import LINE_KEY

MARKERS_KEY = "sf_amendments"  # the same key as `amendment.MARKERS_KEY`
# a phase's metadata key: a renewal (or totals change) starts a new term at this phase
TERM_KEY = "sf_term"
LIVE = ("not_started", "active")


def needs_schedule(plan: ProvisioningPlan, today: date) -> bool:
    """Whether a change deal goes through a schedule: a ramp, or lines that start after
    today."""
    return plan.is_ramp or contract.starts_later(plan, today)


@dataclass(frozen=True)
class Segment:
    """One phase of the schedule to be: from `start` until `end` (None: the last phase of an
    open-ended schedule), its items, coupons and metadata."""

    start: datetime
    end: datetime | None
    items: tuple[SubscriptionItemSpec, ...]
    coupons: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


def line_key(item: SubscriptionItemSpec) -> str | None:
    return item.metadata.get(LINE_KEY)


def existing_segments(
    schedule: BillingSchedule, subscription: BillingSubscription, now: datetime
) -> list[Segment]:
    """The schedule's current and later phases, as they are: each item by its price id (an
    inline price the schedule holds is posted back as such), with its plan line from the
    phase item's metadata or, when the phase has none (a schedule Stripe made from the
    subscription), from the subscription's item of that price."""
    by_price = {i.price: dict(i.metadata) for i in subscription.items}
    lines = {i.price: i.metadata.get(LINE_KEY) or i.lookup_key for i in subscription.items}
    out: list[Segment] = []
    for phase in schedule.phases:
        if phase.start_date is None or (phase.end_date is not None and phase.end_date <= now):
            continue  # past phases can be omitted
        items = []
        for n, (price, quantity) in enumerate(phase.items):
            meta = dict(phase.item_metadata[n]) if n < len(phase.item_metadata) else {}
            if not meta:
                meta = by_price.get(price, {})
            if LINE_KEY not in meta and lines.get(price):
                meta = {**meta, LINE_KEY: str(lines[price])}
            items.append(SubscriptionItemSpec(quantity=quantity, price=price, metadata=meta))
        out.append(
            Segment(
                start=phase.start_date,
                end=phase.end_date,
                items=tuple(items),
                coupons=tuple(phase.coupons),
                metadata=dict(phase.metadata),
            )
        )
    return out


def subscription_segment(subscription: BillingSubscription) -> Segment:
    """The one phase Stripe makes of a subscription (`from_subscription`): its items, for its
    current billing period (what a preview shows before the schedule exists)."""
    start = subscription.current_period_start or datetime.now(UTC)
    return Segment(
        start=start,
        end=subscription.current_period_end,
        items=tuple(
            SubscriptionItemSpec(quantity=i.quantity, price=i.price, metadata=_tagged(i))
            for i in subscription.items
        ),
    )


def _tagged(item: BillingSubscriptionItem) -> dict[str, str]:
    line = item.metadata.get(LINE_KEY) or item.lookup_key
    return {**item.metadata, LINE_KEY: line} if line else dict(item.metadata)


def timeline(
    plan: ProvisioningPlan,
    subscription: BillingSubscription,
    schedule: BillingSchedule | None,
    deal: Sequence[Segment],
    markers: str,
) -> tuple[list[Segment], list[Segment], EndBehavior]:
    """The schedule's phases now (`schedule` None: as Stripe would make it from the
    subscription), its phases with the deal's, and its end behaviour."""
    if schedule is None:
        existing = [subscription_segment(subscription)]
        behavior = "release"
    else:
        now = schedule.current_phase_start or subscription.current_period_start
        existing = existing_segments(schedule, subscription, now or deal[0].start)
        behavior = schedule.end_behavior
    segments, end_behavior = merged_timeline(
        existing,
        deal,
        totals=plan.intent == "renewal" or plan.amendment_lines == "totals",
        end_behavior=behavior,
        markers=markers,
    )
    return existing, segments, end_behavior


def deal_segments(
    plan: ProvisioningPlan, items_of: Callable[[ProvisioningPlan], Sequence[SubscriptionItemSpec]]
) -> list[Segment]:
    """The deal's periods (its ramp phases, or one from the contract's start to its term's
    end), each with the subscription items `items_of(phase plan)` makes of its lines."""
    phases = contract.phases_of(plan)
    end = contract.term_end(plan)
    out: list[Segment] = []
    for n, (phase, phase_plan) in enumerate(zip(phases, contract.phase_plans(plan), strict=True)):
        last = n == len(phases) - 1
        phase_end = phase.end_date or (end.isoformat() if last and end else None)
        out.append(
            Segment(
                start=contract.midnight(phase.start_date),
                end=contract.midnight(phase_end) if phase_end else None,
                items=tuple(items_of(phase_plan)),
            )
        )
    return out


def on_billing_time(deal: Sequence[Segment], period_end: datetime | None) -> list[Segment]:
    """The deal's periods at the subscription's time of day when its start is the day the
    current billing period ends (a renewal at the period's end, an amendment from the next
    one): contract dates are days (midnight UTC), a billing period ends at the time the
    subscription started, and a phase boundary a few hours off it would prorate those hours."""
    if not deal or period_end is None:
        return list(deal)
    offset = period_end - deal[0].start
    if not timedelta(0) < offset < timedelta(days=1):
        return list(deal)
    return [
        replace(s, start=s.start + offset, end=s.end + offset if s.end is not None else None)
        for s in deal
    ]


def _covering(segments: Sequence[Segment], at: datetime) -> Segment | None:
    for seg in segments:
        if seg.start <= at and (seg.end is None or at < seg.end):
            return seg
    return None


def _added(
    base: Sequence[SubscriptionItemSpec], more: Sequence[SubscriptionItemSpec]
) -> tuple[SubscriptionItemSpec, ...]:
    """`base` with the quantities of `more` added to the item of the same plan line (or
    price); a line it does not hold is a new item at the deal's price."""
    items = list(base)
    for extra in more:
        key = line_key(extra)
        at = next(
            (
                n
                for n, item in enumerate(items)
                if (key is not None and line_key(item) == key)
                or (extra.price is not None and item.price == extra.price)
            ),
            None,
        )
        if at is None:
            items.append(extra)
        else:
            items[at] = replace(items[at], quantity=items[at].quantity + extra.quantity)
    return tuple(items)


def merged_timeline(
    existing: Sequence[Segment],
    deal: Sequence[Segment],
    *,
    totals: bool,
    end_behavior: str,
    markers: str,
) -> tuple[list[Segment], EndBehavior]:
    """The schedule's phases once the deal is added, and its end behaviour.

    `totals` (a renewal, a totals amendment): from the deal's start, the deal's items alone,
    until its term's end (`cancel`) or open-ended (`release`). Else (additions): the deal's
    quantities added to every existing phase it overlaps, the schedule ending as it did
    (after an open-ended `release`, the subscription goes on with its last phase's items, so
    those are the base of anything later)."""
    if not existing or not deal:
        raise ValueError("a timeline needs the current phase and at least one deal phase")
    first = existing[0].start
    if totals:
        horizon = deal[-1].end
        behavior: EndBehavior = "cancel" if horizon is not None else "release"
    elif end_behavior == "cancel":
        horizon, behavior = existing[-1].end, "cancel"
    else:
        horizon, behavior = None, "release"
    points = {first}
    for seg in (*existing, *deal):
        for at in (seg.start, seg.end):
            if at is not None and at >= first and (horizon is None or at <= horizon):
                points.add(at)
    # co-terminated: additions last until the current term ends, where a renewal (or a
    # totals change) set on the schedule begins a new one
    term_end = min(
        (seg.start for seg in existing if TERM_KEY in seg.metadata and seg.start > first),
        default=None,
    )
    if term_end is not None and not totals:
        points.add(term_end)
    ordered = sorted(points)
    bounds: list[tuple[datetime, datetime | None]] = list(pairwise(ordered))
    if horizon is None:
        bounds.append((ordered[-1], None))
    out: list[Segment] = []
    for start, end in bounds:
        base = _covering(existing, start) or existing[-1]
        mine = _covering(deal, start)
        if not totals and term_end is not None and start >= term_end:
            mine = None  # after the term the change is part of
        if mine is None:
            seg = Segment(start, end, base.items, base.coupons, dict(base.metadata))
        elif totals:
            meta = {MARKERS_KEY: markers}
            tag = markers.rsplit(",", 1)[-1]
            if not any(o.metadata.get(TERM_KEY) == tag for o in out):
                meta[TERM_KEY] = tag  # a new term starts here
            seg = Segment(start, end, mine.items, mine.coupons, meta)
        else:
            seg = Segment(
                start,
                end,
                _added(base.items, mine.items),
                base.coupons,
                {**base.metadata, MARKERS_KEY: markers},
            )
        if out and _same(out[-1], seg):
            out[-1] = replace(out[-1], end=end)
        else:
            out.append(seg)
    return out, behavior


def _same(a: Segment, b: Segment) -> bool:
    return (a.items, a.coupons, dict(a.metadata)) == (b.items, b.coupons, dict(b.metadata))


def applied_to(schedule: BillingSchedule, tag: str) -> bool:
    """Whether the deal's phases are on the schedule already: its marker on the schedule (set
    in the same request as the phases) or on one of the phases it added."""
    if tag in (schedule.metadata.get(MARKERS_KEY) or "").split(","):
        return True
    return any(tag in (p.metadata.get(MARKERS_KEY) or "").split(",") for p in schedule.phases)


def phase_specs(
    segments: Sequence[Segment], *, collection_method: str | None, days_until_due: int | None
) -> list[PhaseSpec]:
    """The update's `phases[]`: every phase with the subscription's collection settings (a
    schedule Stripe made from a subscription does not carry them in its default settings)."""
    invoiced = collection_method == "send_invoice"
    return [
        PhaseSpec(
            items=seg.items,
            end_date=seg.end,
            coupons=seg.coupons,
            metadata=dict(seg.metadata),
            collection_method=collection_method,  # type: ignore[arg-type]
            days_until_due=(days_until_due if days_until_due is not None else 30)
            if invoiced
            else None,
        )
        for seg in segments
    ]


def adopt(billing: BillingGateway, subscription: BillingSubscription, key: str) -> BillingSchedule:
    """The subscription's schedule: the one it has (guarded on the subscription's own
    `schedule`, so a crash after the request reuses it), else one made from it."""
    if subscription.schedule:
        found = billing.get_schedule(subscription.schedule)
        if found is None or found.status not in LIVE:
            raise BillingRejected(
                f"The subscription {subscription.id} names the schedule "
                f"{subscription.schedule}, which is {'gone' if found is None else found.status}.",
                hint="look at the subscription in Stripe, then `sf-bridge replay` the deal.",
            )
        return found
    return billing.schedule_subscription(subscription.id, idempotency_key=key)


def describe(segments: Sequence[Segment]) -> list[dict[str, Any]]:
    """The phases as plain values (for the deal's history and `mappings preview`)."""
    return [
        {
            "start": seg.start.astimezone(UTC).date().isoformat(),
            "end": seg.end.astimezone(UTC).date().isoformat() if seg.end else None,
            "coupons": list(seg.coupons),
            "items": [
                {
                    "line": line_key(i),
                    "quantity": i.quantity,
                    "price": i.price,
                    "unit_amount": i.price_data.unit_amount if i.price_data else None,
                }
                for i in seg.items
            ],
        }
        for seg in segments
    ]
