"""New business with contract dates, ramps and deal discounts: what the subscription and
entitlements steps do with `plan.contract`, `plan.phases` and `plan.discount`.

- A contract starting later, or a ramp (lines for different periods), becomes a Stripe
  subscription schedule: `start_date` the contract's start, one phase per ramp step with its
  own items, cancelled at the end of a fixed term or released to run on. Stripe creates the
  subscription (and its first invoice) at the start; until then nothing is billed, and the
  deal rests as `scheduled` (`sf_bridge.provisioning.schedule_start` moves it on).
- A contract that started earlier is backdated (`backdate_start_date`) when the mapping says
  `past_start: backdate`, else it starts now.
- A deal discount is a coupon whose id is derived from the deal and its terms, so a retry
  finds it (`create_coupon` reads an existing one back) instead of making a second one; it is
  applied as `discounts` on the subscription or on every phase of the schedule.

Idempotent like the other steps: the schedule is looked for by the id stored on the deal,
then (when an earlier attempt may have reached Stripe) by its `sf_opportunity_id` tag, before
one is created under a deterministic Idempotency-Key.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time
from typing import Any

from sf_bridge.billing.port import (
    BillingGateway,
    BillingSchedule,
    CouponSpec,
    PhaseSpec,
    ScheduleSpec,
    SubscriptionSpec,
)
from sf_bridge.billing.requests import coupon_params, deal_coupon_id
from sf_bridge.plan import Discount, PlanPhase, ProvisioningPlan, add_months
from sf_bridge.provisioning.outcome import DatedGrants, DealView, Outcome


def midnight(day: str | date) -> datetime:
    """A contract date as Stripe's timestamp: the day's start, in UTC."""
    value = date.fromisoformat(day) if isinstance(day, str) else day
    return datetime.combine(value, time(0), tzinfo=UTC)


def contract_start(plan: ProvisioningPlan) -> date | None:
    """When the contract starts: its start date, else the first ramp phase's."""
    if plan.contract and plan.contract.start_date:
        return date.fromisoformat(plan.contract.start_date)
    if plan.phases:
        return date.fromisoformat(plan.phases[0].start_date)
    return None


def term_end(plan: ProvisioningPlan) -> date | None:
    """The first day the contract no longer covers, when it has a fixed term."""
    contract = plan.contract
    if contract is None:
        return None
    if contract.end_date:
        return date.fromisoformat(contract.end_date)
    start = contract_start(plan)
    if start is not None and contract.term_months:
        return add_months(start, contract.term_months)
    return None


def starts_later(plan: ProvisioningPlan, today: date) -> bool:
    start = contract_start(plan)
    return start is not None and start > today


def needs_schedule(plan: ProvisioningPlan, today: date) -> bool:
    """A ramp, or a contract that starts after `today`: a subscription schedule."""
    return plan.is_ramp or starts_later(plan, today)


def backdated(plan: ProvisioningPlan, today: date) -> bool:
    return plan.contract is not None and plan.contract.start_mode(today) == "backdated"


# discounts ----------------------------------------------------------------------------------


def coupon_spec(opportunity_id: str, discount: Discount) -> CouponSpec:
    """The deal's coupon. Its id names the deal and the discount's terms: a retry makes the
    same id (and finds the coupon), a changed discount replayed makes another."""
    if discount.percent_off is not None:
        amount = f"{discount.percent_off:g}pct"
    else:
        amount = f"{discount.amount_off}{(discount.currency or '').lower()}"
    label = f"{amount}-{discount.duration}"
    if discount.duration == "repeating":
        label += f"{discount.months}m"
    return CouponSpec(
        id=deal_coupon_id(opportunity_id, label),
        duration=discount.duration,
        percent_off=discount.percent_off,
        amount_off=discount.amount_off if discount.percent_off is None else None,
        currency=(discount.currency or "").lower() or None
        if discount.percent_off is None
        else None,
        duration_in_months=discount.months if discount.duration == "repeating" else None,
        name=f"Deal discount {opportunity_id}",
        metadata={"sf_opportunity_id": opportunity_id},
    )


def ensure_coupon(
    billing: BillingGateway, plan: ProvisioningPlan, opportunity_id: str, key: Any
) -> list[str]:
    """The coupons of the deal's discount (none without one), created once: `key` makes
    the Idempotency-Key from the request."""
    if plan.discount is None:
        return []
    spec = coupon_spec(opportunity_id, plan.discount)
    coupon = billing.create_coupon(spec, idempotency_key=key("coupon", coupon_params(spec)))
    return [coupon.id]


def with_contract(
    spec: SubscriptionSpec, plan: ProvisioningPlan, today: date, coupons: list[str]
) -> SubscriptionSpec:
    """A subscription that starts now: with the deal's coupons, backdated to the contract's
    start when the mapping says so."""
    start = contract_start(plan)
    backdate = midnight(start) if start is not None and backdated(plan, today) else None
    return replace(spec, coupons=tuple(coupons), backdate_start_date=backdate)


# the schedule -------------------------------------------------------------------------------


def phases_of(plan: ProvisioningPlan) -> tuple[PlanPhase, ...]:
    """The ramp's phases, or one phase of the plan's items for the contract."""
    if plan.phases:
        return plan.phases
    start = contract_start(plan)
    end = term_end(plan)
    return (
        PlanPhase(
            start_date=(start or date.min).isoformat(),
            end_date=end.isoformat() if end else None,
            items=plan.items,
        ),
    )


def schedule_spec(
    plan: ProvisioningPlan,
    phase_items: list[SubscriptionSpec],
    *,
    customer: str,
    opportunity_id: str,
    coupons: list[str],
    today: date,
) -> ScheduleSpec:
    """The schedule of the deal: `phase_items[n]` is the subscription request of phase n's
    items (`subscription_spec`, so prices resolve and fail as for a subscription)."""
    phases = phases_of(plan)
    first = phase_items[0]
    end = term_end(plan)
    specs: list[PhaseSpec] = []
    for n, (phase, request) in enumerate(zip(phases, phase_items, strict=True)):
        last = n == len(phases) - 1
        phase_end = phase.end_date or (end.isoformat() if last and end else None)
        specs.append(
            PhaseSpec(
                items=request.items,
                end_date=midnight(phase_end) if phase_end else None,
                coupons=tuple(coupons),
                # the subscription carries the deal's tag, so it is found like any other
                metadata={**request.metadata, "ramp_phase": str(n + 1)}
                if plan.is_ramp
                else dict(request.metadata),
            )
        )
    start = contract_start(plan)
    later = start is not None and (start > today or backdated(plan, today))
    return ScheduleSpec(
        customer=customer,
        phases=specs,
        metadata={
            "sf_opportunity_id": opportunity_id,
            "sf_account_id": plan.customer.account_id,
            "mapping_version": plan.mapping_version,
        },
        start_date=midnight(start) if later and start is not None else None,
        end_behavior="cancel" if end is not None else "release",
        collection_method=first.collection_method,
        days_until_due=first.days_until_due,
    )


def phase_plans(plan: ProvisioningPlan) -> list[ProvisioningPlan]:
    """The plan as each phase bills it (its items in place of the plan's)."""
    return [replace(plan, items=phase.items, phases=()) for phase in phases_of(plan)]


def schedule_outcome(
    billing: BillingGateway, deal: DealView, schedule: BillingSchedule, **extra: Any
) -> Outcome:
    """What the deal records of its schedule. Started (Stripe created the subscription): the
    subscription and its first invoice, on to the invoice step. Not started yet: the deal is
    `scheduled` and goes to its (dated) entitlements, with no invoice to finalize."""
    # the state machine's names (`states` loads the database layer, which steps do not)
    from sf_bridge.provisioning.states import SCHEDULED, STEP_ENTITLEMENTS

    plan = deal.plan_or_fail()
    start = contract_start(plan)
    changes: dict[str, Any] = {
        "stripe_schedule_id": schedule.id,
        "contract_start_at": midnight(start) if start else None,
    }
    detail: dict[str, Any] = {"schedule": schedule.id, "schedule_status": schedule.status}
    if start is not None:
        detail["starts"] = start.isoformat()
    subscription_id = schedule.subscription or schedule.released_subscription
    if subscription_id:
        sub = billing.get_subscription(subscription_id)
        changes["stripe_subscription_id"] = subscription_id
        if sub is not None and sub.latest_invoice:
            changes["stripe_invoice_id"] = sub.latest_invoice
        detail["subscription"] = subscription_id
        return Outcome(changes=changes, detail=detail, **extra)
    return Outcome(
        changes=changes, detail=detail, skip_to=STEP_ENTITLEMENTS, status=SCHEDULED, **extra
    )


def find_schedule(billing: BillingGateway, deal: DealView) -> BillingSchedule | None:
    """The deal's schedule: by the id stored on it, else (an earlier attempt may have made
    it) by its tag."""
    if deal.stripe_schedule_id:
        found = billing.get_schedule(deal.stripe_schedule_id)
        if found is not None:
            return found
    if deal.resumed or deal.stripe_schedule_id:
        return billing.find_schedule(
            sf_opportunity_id=deal.opportunity_id, customer=deal.stripe_customer_id
        )
    return None


# entitlements -------------------------------------------------------------------------------


def dated_grants(plan: ProvisioningPlan, today: date) -> tuple[DatedGrants, ...]:
    """The deal's grants with their dates: from the contract's start (a ramp: each phase's
    start, with that phase's entitlements) until the term's end; a contract that started
    earlier and starts now is granted from now. Empty when the plan has no dates (the
    undated `grants` of the plan then)."""
    if plan.contract is None and not plan.phases:
        return ()
    end = term_end(plan)
    if plan.is_ramp:
        out: list[DatedGrants] = []
        for n, phase in enumerate(plan.phases):
            phase_end = phase.end_date or (end.isoformat() if end else None)
            out.append(
                DatedGrants(
                    phase=n,
                    entitlements=phase.entitlements or plan.entitlements,
                    valid_from=midnight(phase.start_date),
                    valid_until=midnight(phase_end) if phase_end else None,
                )
            )
        return tuple(out)
    start = contract_start(plan)
    begins = (
        midnight(start) if start is not None and (start > today or backdated(plan, today)) else None
    )
    return (
        DatedGrants(
            phase=0,
            entitlements=plan.entitlements,
            valid_from=begins,
            valid_until=midnight(end) if end else None,
        ),
    )
