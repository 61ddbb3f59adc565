"""The per-deal provisioning steps. Each one is idempotent on its own:

1. it looks for what it would create: the id stored on the deal (or the customers row of its
   customer key), then, only when an earlier attempt of the step may have reached Stripe, the
   object tagged with `metadata.sf_opportunity_id` / `sf_customer_key` (Stripe search);
2. it creates with a deterministic Idempotency-Key: a hash of the opportunity id (the
   customer key for the customer, which all its deals share), the step and the request;
3. it returns what to record; the runner commits it before the next step starts.

Steps take plain inputs and a `StepContext`; they never commit. Batch steps (fetch,
write-back) live in `sf_bridge.provisioning.batch`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from sf_bridge.billing.port import BillingGateway, BillingInvoice, SubscriptionSpec
from sf_bridge.billing.stripe_gateway import subscription_params
from sf_bridge.db.models import Customer, Deal
from sf_bridge.entitlements.ledger import grant_deal_entitlements
from sf_bridge.errors import BillingRejected, MappingFailed, PermanentError, TransientError
from sf_bridge.plan import MappingError, ProvisioningPlan
from sf_bridge.provisioning.claim import ensure_customer_row
from sf_bridge.provisioning.prices import PriceCache
from sf_bridge.provisioning.stripe_request import (
    customer_spec,
    price_lookup_keys,
    subscription_spec,
)

Mapper = Callable[[dict[str, Any], Any], "ProvisioningPlan | list[MappingError]"]


def default_mapper(
    opportunity: dict[str, Any], mappings: Any
) -> ProvisioningPlan | list[MappingError]:
    """The mapping engine: opportunity + mappings -> plan or errors."""
    from sf_bridge.mapping.engine import map_opportunity

    return map_opportunity(opportunity, mappings)


@dataclass
class StepContext:
    billing: BillingGateway | None
    mappings_loader: Callable[[], Any]
    mapper: Mapper = default_mapper
    prices: PriceCache = field(default_factory=PriceCache)


@dataclass
class StepResult:
    """What a step found or created; `apply` records it on the deal inside the commit."""

    apply: Callable[[Session, Deal], None]
    idempotency_key: str | None = None
    stripe_request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    skip_to: str | None = None  # the step after this one, when the plan says so


def idempotency_key(scope: str, step: str, content: Any) -> str:
    """Deterministic: the same scope, step and request content always give the same key."""
    payload = json.dumps([scope, step, content], sort_keys=True, separators=(",", ":"), default=str)
    return f"sfb-{step}-{hashlib.sha256(payload.encode()).hexdigest()[:40]}"


@contextmanager
def keyed(key: str) -> Iterator[None]:
    """Tags an error raised inside with the idempotency key of the request that failed, so the
    attempt records it."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, "idempotency_key", None) is None:
            setattr(exc, "idempotency_key", key)  # noqa: B010
        raise


def plan_of(deal: Deal) -> ProvisioningPlan:
    if not deal.plan:
        raise PermanentError(
            "The deal has no provisioning plan.",
            hint="replay the deal so that it is mapped again.",
        )
    return ProvisioningPlan.from_dict(deal.plan)


def _billing(ctx: StepContext) -> BillingGateway:
    if ctx.billing is None:
        raise PermanentError(
            "Stripe is not configured, and this deal's plan is a paid plan.",
            hint="set STRIPE_API_KEY (and STRIPE_API_BASE for the sandbox), then replay the deal.",
        )
    return ctx.billing


# map ----------------------------------------------------------------------------------------


def map_step(ctx: StepContext, deal: Deal, resumed: bool) -> StepResult:
    if not deal.opportunity:
        raise PermanentError(
            "The deal has no opportunity snapshot to map.",
            hint="replay the deal so that it is fetched from Salesforce again.",
        )
    mappings = ctx.mappings_loader()
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

    def apply(_session: Session, row: Deal) -> None:
        row.plan = plan.to_dict()
        row.mapping_version = plan.mapping_version or version
        row.account_id = plan.customer.account_id

    return StepResult(
        apply,
        detail={"plan": plan.plan_name, "kind": plan.plan_kind, "mapping_version": version},
    )


# customer -----------------------------------------------------------------------------------


def customer_step(
    ctx: StepContext, deal: Deal, resumed: bool, known: Customer | None
) -> StepResult:
    """`known` is the deal's customers row (one per customer key), made by the runner under
    the account's and the customer's lock; None for custom plans, whose row is made in the
    step's own commit (no Stripe involved).

    The Stripe request is built from the row alone (the name, email and account of the deal
    that made it, and the key), so every deal with that key sends the same request under the
    same Idempotency-Key, whichever account it comes from."""
    plan = plan_of(deal)
    account = plan.customer.account_id
    key = plan.customer.customer_key

    def link(stripe_id: str | None) -> Callable[[Session, Deal], None]:
        def apply(session: Session, row: Deal) -> None:
            customer = (
                session.get(Customer, known.id)
                if known is not None
                else ensure_customer_row(
                    session,
                    customer_key=key,
                    account_id=account,
                    name=plan.customer.name,
                    email=plan.customer.email,
                )
            )
            if customer is None:
                raise PermanentError("The deal's customer record is gone.", hint="replay the deal.")
            if stripe_id and not customer.stripe_customer_id:
                customer.stripe_customer_id = stripe_id
            row.customer_id = customer.id
            row.stripe_customer_id = customer.stripe_customer_id
            row.account_id = account

        return apply

    if known is None:
        if not plan.is_custom:
            raise PermanentError("The deal's customer record is missing.", hint="replay the deal.")
        return StepResult(link(None), detail={"stripe": "not needed for a custom plan"})
    if known.stripe_customer_id:
        return StepResult(link(None), detail={"customer": known.stripe_customer_id, "reused": True})
    billing = _billing(ctx)
    if resumed:
        found = billing.find_customer(customer_key=key)
        if found is not None:
            return StepResult(
                link(found.id),
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
    return StepResult(
        link(created.id),
        idempotency_key=idem,
        stripe_request_id=created.request_id,
        detail={"customer": created.id, "created": True, "customer_key": key},
    )


# subscription -------------------------------------------------------------------------------


def build_subscription(ctx: StepContext, deal: Deal, plan: ProvisioningPlan) -> SubscriptionSpec:
    """The subscription request of the deal (see `stripe_request`), its prices resolved in
    Stripe by lookup key."""
    prices = ctx.prices.resolve(_billing(ctx), price_lookup_keys(plan))
    return subscription_spec(
        plan, prices, customer=deal.stripe_customer_id or "", opportunity_id=deal.opportunity_id
    )


def subscription_step(ctx: StepContext, deal: Deal, resumed: bool) -> StepResult:
    plan = plan_of(deal)
    if deal.stripe_subscription_id:
        return StepResult(lambda _s, _d: None, detail={"subscription": deal.stripe_subscription_id})
    if not deal.stripe_customer_id:
        raise PermanentError(
            "The deal has no Stripe customer to subscribe.",
            hint="replay the deal so that the customer step runs again.",
        )
    billing = _billing(ctx)
    if resumed:
        found = billing.find_subscription(sf_opportunity_id=deal.opportunity_id)
        if found is not None:
            return StepResult(
                _record_subscription(found.id, found.latest_invoice),
                stripe_request_id=found.request_id,
                detail={"subscription": found.id, "found_by": "search"},
            )
    spec = build_subscription(ctx, deal, plan)
    key = idempotency_key(deal.opportunity_id, "subscription", subscription_params(spec))
    try:
        with keyed(key):
            created = billing.create_subscription(spec, idempotency_key=key)
    except BillingRejected:
        ctx.prices.forget([i.lookup_key for i in plan.items if i.lookup_key])
        raise
    return StepResult(
        _record_subscription(created.id, created.latest_invoice),
        idempotency_key=key,
        stripe_request_id=created.request_id,
        detail={"subscription": created.id, "status": created.status},
    )


def _record_subscription(
    subscription_id: str, invoice_id: str | None
) -> Callable[[Session, Deal], None]:
    def apply(_session: Session, row: Deal) -> None:
        row.stripe_subscription_id = subscription_id
        if invoice_id:
            row.stripe_invoice_id = invoice_id

    return apply


# invoice ------------------------------------------------------------------------------------


def invoice_step(ctx: StepContext, deal: Deal, resumed: bool) -> StepResult:
    plan = plan_of(deal)
    if deal.invoice_status in ("open", "paid") and deal.hosted_invoice_url:
        return StepResult(lambda _s, _d: None, detail={"invoice": deal.stripe_invoice_id})
    billing = _billing(ctx)
    request_ids: list[str] = []
    invoice_id = deal.stripe_invoice_id
    if not invoice_id and deal.stripe_subscription_id:
        sub = billing.get_subscription(deal.stripe_subscription_id)
        invoice_id = sub.latest_invoice if sub else None
    if not invoice_id:
        raise TransientError(
            f"Stripe has not created the first invoice of {deal.stripe_subscription_id} yet."
        )
    key: str | None = None
    invoice: BillingInvoice
    send = plan.billing is not None and plan.billing.collection_method == "send_invoice"
    if not send:
        invoice = billing.get_invoice(invoice_id)
    else:
        invoice = billing.get_invoice(invoice_id) if resumed else None  # type: ignore[assignment]
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
    if invoice.request_id:
        request_ids.append(invoice.request_id)
    if invoice.status not in ("open", "paid"):
        raise BillingRejected(
            f"The first invoice {invoice.id} is {invoice.status!r}, not open.",
            hint="look at the invoice in Stripe; void it and replay the deal to start again.",
        )
    final = invoice

    def apply(_session: Session, row: Deal) -> None:
        row.stripe_invoice_id = final.id
        row.invoice_status = final.status
        row.hosted_invoice_url = final.hosted_invoice_url
        row.invoice_pdf = final.invoice_pdf
        row.invoice_due_at = final.due_date

    return StepResult(
        apply,
        idempotency_key=key,
        stripe_request_id=request_ids[-1] if request_ids else None,
        detail={"invoice": final.id, "status": final.status},
    )


# entitlements -------------------------------------------------------------------------------


def entitlements_step(ctx: StepContext, deal: Deal, resumed: bool) -> StepResult:
    plan = plan_of(deal)

    def apply(session: Session, row: Deal) -> None:
        customer = session.get(Customer, row.customer_id) if row.customer_id else None
        if customer is None:
            raise PermanentError(
                "The deal has no customer to grant entitlements to.",
                hint="replay the deal so that the customer step runs again.",
            )
        grant_deal_entitlements(
            session,
            deal=row,
            customer=customer,
            entitlements=plan.entitlements,
            subscription_id=row.stripe_subscription_id,
        )

    features = ", ".join(e.feature for e in plan.entitlements) or "none"
    return StepResult(apply, detail={"features": features})
