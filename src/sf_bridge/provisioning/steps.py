"""The per-deal provisioning steps, as pure functions of the deal and the ports.

Each step takes a `DealView` (a plain, immutable copy of the deal) and a `StepContext` (the
billing port, the mappings), and returns an `Outcome`: what it found or created, for the store
to record. A failure is raised as a classified error (`sf_bridge.errors`), which the runner
turns into a retry or a parked deal. Steps never touch the database, and the domain never
loads the `stripe` SDK: the billing port does.

Each step is idempotent on its own:

1. it looks for what it would create: the id stored on the deal (or the customers row of its
   customer key), then, only when an earlier attempt of the step may have reached Stripe
   (`DealView.resumed`), the object tagged with `metadata.sf_opportunity_id` (among the
   customer's subscriptions, listed: current) / `sf_customer_key` (Stripe search, which
   lags);
2. it creates with a deterministic Idempotency-Key: a hash of the opportunity id (the
   customer key for the customer, which all its deals share), the step and the request;
3. it returns what to record; the runner has the store commit it before the next step starts.

Batch steps (fetch, write-back) live in `sf_bridge.provisioning.batch`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sf_bridge.billing.port import BillingGateway, BillingInvoice, SubscriptionSpec
from sf_bridge.billing.requests import schedule_params, subscription_params
from sf_bridge.errors import BillingRejected, MappingFailed, PermanentError, TransientError
from sf_bridge.plan import MappingError, ProvisioningPlan
from sf_bridge.provisioning import amendment
from sf_bridge.provisioning import schedule as schedule_mod
from sf_bridge.provisioning.outcome import CustomerView, DealView, Outcome
from sf_bridge.provisioning.payment import (
    PAID,
    card_entitlements_of,
    first_payment_state,
    grants_wait_for_payment,
)
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.stripe_request import (
    customer_spec,
    keyed,
    price_lookup_keys,
    schedule_request,
    subscription_spec,
)

Mapper = Callable[[dict[str, Any], Any], "ProvisioningPlan | list[MappingError]"]


def default_mapper(
    opportunity: dict[str, Any], mappings: Any
) -> ProvisioningPlan | list[MappingError]:
    """The mapping engine: opportunity + mappings -> plan or errors."""
    from sf_bridge.mapping.engine import map_opportunity

    return map_opportunity(opportunity, mappings)


def utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass
class StepContext:
    billing: BillingGateway | None
    mappings_loader: Callable[[], Any]
    mapper: Mapper = default_mapper
    prices: PriceCache = field(default_factory=PriceCache)
    # the day contract dates are compared with (a start after it is scheduled)
    today: Callable[[], date] = utc_today
    # the store, asked for the account's live subscription by amendments and renewals
    accounts: amendment.AccountLookup | None = None


def idempotency_key(scope: str, step: str, content: Any) -> str:
    """Deterministic: the same scope, step and request content always give the same key."""
    payload = json.dumps([scope, step, content], sort_keys=True, separators=(",", ":"), default=str)
    return f"sfb-{step}-{hashlib.sha256(payload.encode()).hexdigest()[:40]}"


def _billing(ctx: StepContext) -> BillingGateway:
    if ctx.billing is None:
        raise PermanentError(
            "Stripe is not configured, and this deal's plan is a paid plan.",
            hint="set STRIPE_API_KEY (and STRIPE_API_BASE for the sandbox), then replay the deal.",
        )
    return ctx.billing


# map ----------------------------------------------------------------------------------------


def map_step(ctx: StepContext, deal: DealView) -> Outcome:
    if not deal.opportunity:
        raise PermanentError(
            "The deal has no opportunity snapshot to map.",
            hint="replay the deal so that it is fetched from Salesforce again.",
        )
    mappings = ctx.mappings_loader()
    if deal.account_facts is not None and getattr(ctx.mapper, "takes_facts", False):
        # the account's facts came with the claim (sf_bridge.db.account_facts)
        outcome = ctx.mapper(deal.opportunity, mappings, deal.account_facts)  # type: ignore[call-arg]
    else:
        outcome = ctx.mapper(deal.opportunity, mappings)
    if isinstance(outcome, list):
        raise MappingFailed(
            list(outcome),
            "The deal does not map onto the catalog: "
            + "; ".join(str(e) for e in outcome)
            + " Then `sf-bridge replay` the deal.",
        )
    plan = outcome
    version = str(getattr(mappings, "version", "") or plan.mapping_version)
    # provisioned before and mapped again (reopened, won again): a change of its subscription
    stored = amendment.reopened_plan(deal, plan.to_dict())
    return Outcome(
        changes={
            "plan": stored,
            "mapping_version": plan.mapping_version or version,
            "account_id": plan.customer.account_id,
        },
        detail={
            "plan": plan.plan_name,
            "kind": plan.plan_kind,
            "intent": stored.get("intent", "new_business"),
            "mapping_version": version,
        },
    )


# customer -----------------------------------------------------------------------------------


def customer_step(ctx: StepContext, deal: DealView, known: CustomerView | None) -> Outcome:
    """`known` is the deal's customers row (one per customer key), made by the store under
    the account's and the customer's lease; None for custom plans, whose row is made in the
    step's own commit (no Stripe involved).

    The Stripe request is built from the row alone (the name, email and account of the deal
    that made it, and the key), so every deal with that key sends the same request under the
    same Idempotency-Key, whichever account it comes from."""
    plan = deal.plan_or_fail()
    account = plan.customer.account_id
    key = plan.customer.customer_key

    if known is None:
        if not plan.is_custom:
            raise PermanentError("The deal's customer record is missing.", hint="replay the deal.")
        return Outcome(
            changes={"account_id": account},
            ensure_customer=plan.customer,
            detail={"stripe": "not needed for a custom plan"},
        )

    def link(stripe_id: str | None) -> dict[str, Any]:
        return {
            "customer_id": known.id,
            "stripe_customer_id": known.stripe_customer_id or stripe_id,
            "account_id": account,
        }

    if known.stripe_customer_id:
        return Outcome(
            changes=link(None), detail={"customer": known.stripe_customer_id, "reused": True}
        )
    billing = _billing(ctx)
    if deal.resumed:
        found = billing.find_customer(customer_key=key)
        if found is not None:
            return Outcome(
                changes=link(found.id),
                stripe_customer_id=found.id,
                stripe_request_id=found.request_id,
                detail={"customer": found.id, "found_by": "search"},
            )
    spec = customer_spec(
        name=known.name, email=known.email, account_id=known.sf_account_id, customer_key=key
    )
    request = {"name": spec.name, "email": spec.email, "metadata": spec.metadata}
    idem = idempotency_key(key, "customer", request)
    with keyed(idem):
        created = billing.create_customer(spec, idempotency_key=idem)
    return Outcome(
        changes=link(created.id),
        stripe_customer_id=created.id,
        idempotency_key=idem,
        stripe_request_id=created.request_id,
        detail={"customer": created.id, "created": True, "customer_key": key},
    )


# subscription -------------------------------------------------------------------------------


def build_subscription(
    ctx: StepContext, deal: DealView, plan: ProvisioningPlan
) -> SubscriptionSpec:
    """The subscription request of the deal (see `stripe_request`), its prices resolved in
    Stripe by lookup key."""
    prices = ctx.prices.resolve(_billing(ctx), price_lookup_keys(plan))
    return subscription_spec(
        plan, prices, customer=deal.stripe_customer_id or "", opportunity_id=deal.opportunity_id
    )


def subscription_step(ctx: StepContext, deal: DealView) -> Outcome:
    plan = deal.plan_or_fail()
    if amendment.is_change(deal.plan):
        return change_step(ctx, deal)
    if deal.stripe_subscription_id:
        return Outcome(detail={"subscription": deal.stripe_subscription_id})
    if not deal.stripe_customer_id:
        raise PermanentError(
            "The deal has no Stripe customer to subscribe.",
            hint="replay the deal so that the customer step runs again.",
        )
    billing = _billing(ctx)
    today = ctx.today()
    dated = plan.contract is not None or bool(plan.phases)
    if deal.stripe_schedule_id or (deal.resumed and dated):
        # a schedule made by an earlier attempt, even if the start has passed since
        schedule = schedule_mod.find_schedule(billing, deal)
        if schedule is not None:
            return schedule_mod.schedule_outcome(
                billing, deal, schedule, stripe_request_id=schedule.request_id
            )
    if schedule_mod.needs_schedule(plan, today):
        return schedule_step(ctx, deal, plan, today)
    if deal.resumed:
        # by listing the customer's subscriptions: current, unlike search
        found = billing.find_subscription(
            sf_opportunity_id=deal.opportunity_id, customer=deal.stripe_customer_id
        )
        if found is not None:
            return Outcome(
                changes=_subscription(found.id, found.latest_invoice),
                stripe_request_id=found.request_id,
                detail={"subscription": found.id, "found_by": "list"},
            )
    spec = build_subscription(ctx, deal, plan)
    coupons = _coupons(ctx, deal, plan)
    spec = schedule_mod.with_contract(spec, plan, today, coupons)
    key = idempotency_key(deal.opportunity_id, "subscription", subscription_params(spec))
    try:
        with keyed(key):
            created = billing.create_subscription(spec, idempotency_key=key)
    except BillingRejected:
        ctx.prices.forget([i.lookup_key for i in plan.items if i.lookup_key])
        raise
    return Outcome(
        changes=_subscription(created.id, created.latest_invoice),
        idempotency_key=key,
        stripe_request_id=created.request_id,
        detail={"subscription": created.id, "status": created.status},
    )


def _coupons(ctx: StepContext, deal: DealView, plan: ProvisioningPlan) -> list[str]:
    def key(step: str, content: Any) -> str:
        return idempotency_key(deal.opportunity_id, step, content)

    with keyed(key("coupon", deal.opportunity_id)):
        return schedule_mod.ensure_coupon(_billing(ctx), plan, deal.opportunity_id, key)


def schedule_step(ctx: StepContext, deal: DealView, plan: ProvisioningPlan, today: date) -> Outcome:
    """A contract starting later, or a ramp: a subscription schedule (`schedule`)."""
    billing = _billing(ctx)
    keys = price_lookup_keys(plan)
    prices = ctx.prices.resolve(billing, keys)
    coupons = _coupons(ctx, deal, plan)
    spec = schedule_request(
        plan,
        prices,
        customer=deal.stripe_customer_id or "",
        opportunity_id=deal.opportunity_id,
        coupons=coupons,
        today=today,
    )
    key = idempotency_key(deal.opportunity_id, "schedule", schedule_params(spec))
    try:
        with keyed(key):
            created = billing.create_schedule(spec, idempotency_key=key)
    except BillingRejected:
        ctx.prices.forget(keys)
        raise
    return schedule_mod.schedule_outcome(
        billing, deal, created, idempotency_key=key, stripe_request_id=created.request_id
    )


def change_step(ctx: StepContext, deal: DealView) -> Outcome:
    """An amendment, a renewal or a reopened deal: changes the live subscription
    (`sf_bridge.provisioning.amendment`)."""
    billing = _billing(ctx)

    def targets(plan: ProvisioningPlan) -> list[amendment.Target]:
        spec = build_subscription(ctx, deal, plan)
        return [amendment.new_item(i, s) for i, s in zip(plan.items, spec.items, strict=True)]

    def key(step: str, content: Any) -> str:
        return idempotency_key(deal.opportunity_id, step, content)

    try:
        return amendment.amend_step(billing, ctx.accounts, targets, deal, key, ctx.today())
    except BillingRejected:
        ctx.prices.forget([i.lookup_key for i in deal.plan_or_fail().items if i.lookup_key])
        raise


def _subscription(subscription_id: str, invoice_id: str | None) -> dict[str, Any]:
    changes: dict[str, Any] = {"stripe_subscription_id": subscription_id}
    if invoice_id:
        changes["stripe_invoice_id"] = invoice_id
    return changes


# invoice ------------------------------------------------------------------------------------


def invoice_step(ctx: StepContext, deal: DealView) -> Outcome:
    plan = deal.plan_or_fail()
    send = plan.billing is not None and plan.billing.collection_method == "send_invoice"
    if deal.invoice_status in ("open", "paid") and deal.hosted_invoice_url:
        known: dict[str, Any] = {}
        if not send and deal.payment_state is None:
            known["payment_state"] = first_payment_state(deal.invoice_status)
        return Outcome(changes=known, detail={"invoice": deal.stripe_invoice_id})
    billing = _billing(ctx)
    invoice_id = deal.stripe_invoice_id
    if not invoice_id and deal.stripe_subscription_id:
        sub = billing.get_subscription(deal.stripe_subscription_id)
        invoice_id = sub.latest_invoice if sub else None
    if not invoice_id:
        raise TransientError(
            f"Stripe has not created the first invoice of {deal.stripe_subscription_id} yet."
        )
    key: str | None = None
    invoice: BillingInvoice | None
    if not send:
        invoice = billing.get_invoice(invoice_id)
    else:
        invoice = billing.get_invoice(invoice_id) if deal.resumed else None
        if invoice is None or invoice.status == "draft":
            key = idempotency_key(deal.opportunity_id, "invoice", {"finalize": invoice_id})
            try:
                with keyed(key):
                    invoice = billing.finalize_invoice(invoice_id, idempotency_key=key)
            except BillingRejected:
                # Already finalized (by Stripe after an hour, or by a lost earlier response).
                invoice = billing.get_invoice(invoice_id)
                if invoice.status == "draft":
                    raise
    if invoice.status not in ("open", "paid"):
        raise BillingRejected(
            f"The first invoice {invoice.id} is {invoice.status!r}, not open.",
            hint="look at the invoice in Stripe; void it and replay the deal to start again.",
        )
    changes: dict[str, Any] = {
        "stripe_invoice_id": invoice.id,
        "invoice_status": invoice.status,
        "hosted_invoice_url": invoice.hosted_invoice_url,
        "invoice_pdf": invoice.invoice_pdf,
        "invoice_due_at": invoice.due_date,
    }
    if not send and deal.payment_state != PAID:
        # A card deal: paid at creation, or its subscription waits for the first payment.
        changes["payment_state"] = first_payment_state(invoice.status)
    return Outcome(
        changes=changes,
        idempotency_key=key,
        stripe_request_id=invoice.request_id or None,
        detail={"invoice": invoice.id, "status": invoice.status},
    )


# entitlements -------------------------------------------------------------------------------


def entitlements_step(ctx: StepContext, deal: DealView) -> Outcome:
    plan = deal.plan_or_fail()
    if deal.customer_id is None:
        raise PermanentError(
            "The deal has no customer to grant entitlements to.",
            hint="replay the deal so that the customer step runs again.",
        )
    features = ", ".join(e.feature for e in plan.entitlements) or "none"
    policy = card_entitlements_of(ctx.mappings_loader())
    pending = grants_wait_for_payment(policy, deal.payment_state)
    detail: dict[str, Any] = {"features": features}
    if deal.payment_state is not None:
        detail.update(payment_state=deal.payment_state, card_entitlements=policy)
    if pending:
        detail["grants"] = "pending until the first payment"
    dated = schedule_mod.dated_grants(plan, ctx.today())
    if not dated:
        return Outcome(
            grants=tuple(plan.entitlements),
            grants_pending=pending,
            detail=detail,
            replace_subscription_grants=amendment.replaces_grants(plan, deal.plan),
        )
    waiting = bool(deal.stripe_schedule_id) and not deal.stripe_subscription_id
    if dated[0].valid_from is not None:
        detail["from"] = dated[0].valid_from.date().isoformat()
    if dated[-1].valid_until is not None:
        detail["until"] = dated[-1].valid_until.date().isoformat()
    return Outcome(
        dated_grants=dated,
        detail=detail,
        status="scheduled" if waiting else None,
        replace_subscription_grants=amendment.replaces_grants(plan, deal.plan),
    )
