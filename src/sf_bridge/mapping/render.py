"""Showing mapping results to people: the preview of a plan as tables, or as JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sf_bridge.billing.port import ScheduleSpec, SubscriptionItemSpec
from sf_bridge.billing.requests import coupon_params, schedule_params, subscription_params
from sf_bridge.mapping.money import format_minor
from sf_bridge.plan import MappingError, ProvisioningPlan
from sf_bridge.provisioning.stripe_request import RequestPreview


def request_json(request: RequestPreview) -> dict[str, Any]:
    """The Stripe requests as their bodies: `POST /v1/customers` (sent only when the account
    has no Stripe customer yet), `POST /v1/coupons` (a deal discount) and `POST
    /v1/subscriptions` or, for a contract starting later or a ramp, `POST
    /v1/subscription_schedules`."""
    customer: dict[str, Any] | None = None
    if request.customer is not None:
        customer = {"name": request.customer.name, "metadata": dict(request.customer.metadata)}
        if request.customer.email:
            customer["email"] = request.customer.email
    return {
        "prices_from": request.prices_from,
        "note": request.note,
        "customer": customer,
        "subscription": (
            subscription_params(request.subscription) if request.subscription else None
        ),
        # a contract starting later, or a ramp: a schedule in place of the subscription
        "schedule": schedule_params(request.schedule) if request.schedule else None,
        "coupon": coupon_params(request.coupon) if request.coupon else None,
        "problem": request.problem,
    }


def preview_json(
    opportunity_id: str,
    result: ProvisioningPlan | list[MappingError],
    version: str,
    request: RequestPreview | None = None,
) -> dict[str, Any]:
    if isinstance(result, ProvisioningPlan):
        body: dict[str, Any] = {
            "opportunity_id": opportunity_id,
            "mapping_version": version,
            "ok": request is None or request.problem is None,
            "plan": result.to_dict(),
        }
        if request is not None:
            body["stripe_request"] = request_json(request)
        return body
    return {
        "opportunity_id": opportunity_id,
        "mapping_version": version,
        "ok": False,
        "errors": [e.to_dict() for e in result],
    }


def _interval_word(interval: str) -> str:
    return {"month": "monthly", "year": "yearly"}.get(interval, interval)


def print_plan(console: Console, plan: ProvisioningPlan) -> None:
    customer = plan.customer
    console.print(
        f"[bold]{plan.opportunity_name or plan.opportunity_id}[/bold] ({plan.opportunity_id})"
        f"  mapping version {plan.mapping_version}"
    )
    console.print(
        f"Customer: {customer.name}  account {customer.account_id}  key {customer.customer_key}"
        f"  email {customer.email or '-'}"
    )
    if plan.billing is None:
        console.print(f"Plan: {plan.plan_name} (custom: entitlements only, not billed in Stripe)")
    else:
        terms = plan.billing
        due = (
            (
                "due on receipt (0 days)"
                if terms.days_until_due == 0
                else f"due in {terms.days_until_due} days"
            )
            if terms.collection_method == "send_invoice"
            else "card charged automatically"
        )
        name = plan.plan_name or "the account's current plan (not known)"
        console.print(
            f"Plan: {name} (paid)  billing: {terms.collection_method}, {due}, "
            f"{_interval_word(terms.interval)}, {terms.currency.upper()}"
        )
    if plan.items:
        items = Table(title="Subscription items", title_justify="left")
        for column in ("kind", "name", "product", "qty", "catalog price", "price", "lookup key"):
            items.add_column(column, justify="right" if column == "qty" else "left")
        for item in plan.items:
            catalog = (
                format_minor(item.catalog_unit_amount, item.currency)
                if item.catalog_unit_amount is not None
                else "-"
            )
            price = (
                f"{format_minor(item.unit_amount, item.currency)} (override)"
                if item.has_override and item.unit_amount is not None
                else "catalog"
            )
            items.add_row(
                item.kind,
                item.name,
                item.product_code,
                str(item.quantity),
                catalog,
                price,
                item.lookup_key or "-",
            )
        console.print(items)
    print_terms(console, plan)
    table = Table(title="Entitlements", title_justify="left")
    for column in ("feature", "value", "unit", "from"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for ent in plan.entitlements:
        value = ("yes" if ent.value else "no") if isinstance(ent.value, bool) else f"{ent.value:,}"
        table.add_row(ent.feature, value, ent.unit or "", ent.source)
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def _discount_text(plan: ProvisioningPlan) -> str:
    discount = plan.discount
    if discount is None:
        return "none"
    if discount.percent_off is not None:
        off = f"{discount.percent_off:g}% off"
    else:
        off = f"{format_minor(discount.amount_off or 0, discount.currency or 'usd')} off"
    how = {"once": "the first invoice", "forever": "every invoice"}.get(
        discount.duration, f"{discount.months} months"
    )
    return f"{off}, {how} (from {discount.source})"


def print_terms(console: Console, plan: ProvisioningPlan) -> None:
    """The deal's intent, contract dates, ramp phases and discount."""
    intent = plan.intent.replace("_", " ")
    if plan.intent == "amendment":
        intent += (
            f" of the live subscription: lines are {plan.amendment_lines}, "
            f"proration {plan.proration}"
        )
    console.print(f"Intent: {intent}", highlight=False, markup=False)
    contract = plan.contract
    if contract is None:
        console.print("Contract: starts when provisioned, runs until cancelled", highlight=False)
    else:
        start = contract.start_date or "when provisioned"
        end = contract.end_date or (
            f"{contract.term_months} months after the start" if contract.term_months else "-"
        )
        console.print(
            f"Contract: {start} to {end}; a start in the past: {contract.past_start}"
            + (f" (from {contract.source})" if contract.source else ""),
            highlight=False,
            markup=False,
        )
    if plan.phases:
        table = Table(title="Phases", title_justify="left")
        for column in ("start", "end", "items", "entitlements"):
            table.add_column(column)
        for phase in plan.phases:
            items = ", ".join(
                f"{i.name} x {i.quantity} at "
                + format_minor(
                    i.unit_amount if i.unit_amount is not None else i.catalog_unit_amount or 0,
                    i.currency,
                )
                for i in phase.items
            )
            first = {e.feature: e.value for e in plan.entitlements}
            grants = ", ".join(
                f"{e.feature} {e.value}"
                for e in phase.entitlements
                if first.get(e.feature) != e.value
            )
            table.add_row(phase.start_date, phase.end_date or "-", items or "-", grants or "same")
        console.print(table)
    console.print(f"Discount: {_discount_text(plan)}", highlight=False, markup=False)


def _item_price(item: SubscriptionItemSpec) -> tuple[str, str]:
    if item.price_data is None:
        return str(item.price), "catalog price"
    data = item.price_data
    every = "" if data.interval_count == 1 else f" {data.interval_count}"
    return (
        f"price_data {format_minor(data.unit_amount, data.currency)} / {every}{data.interval}",
        f"product {data.product}",
    )


def print_request(console: Console, request: RequestPreview) -> None:
    """The Stripe requests the deal sends, as the provisioning steps build them."""
    if request.customer is None:
        console.print("Stripe: nothing (a custom plan is not billed in Stripe).")
        return
    source = "Stripe" if request.prices_from == "stripe" else "the mapping catalog"
    console.print(
        f"Stripe request (catalog prices from {source}"
        + (f"; {request.note}" if request.note else "")
        + ")",
        highlight=False,
        markup=False,
    )
    customer = request.customer
    console.print(
        f" customer (created when the account has none yet): {customer.name}, "
        f"email {customer.email or '-'}",
        highlight=False,
        markup=False,
    )
    if request.coupon is not None:
        coupon = request.coupon
        off = (
            f"{coupon.percent_off:g}% off"
            if coupon.percent_off is not None
            else f"{format_minor(coupon.amount_off or 0, coupon.currency or '')} off"
        )
        console.print(
            f" coupon {coupon.id}: {off}, {coupon.duration}"
            + (f" {coupon.duration_in_months} months" if coupon.duration_in_months else ""),
            highlight=False,
            markup=False,
        )
    if request.schedule is not None:
        _print_schedule(console, request.schedule)
        return
    if request.subscription is None:
        console.print(
            f" subscription: cannot be created: {request.problem}",
            highlight=False,
            markup=False,
            style="red",
        )
        return
    sub = request.subscription
    terms = (
        f"days_until_due {sub.days_until_due}"
        if sub.collection_method == "send_invoice"
        else f"payment_behavior {sub.payment_behavior}"
    )
    console.print(
        f" subscription: collection_method {sub.collection_method}, {terms}, "
        f"{len(sub.items)} item{'' if len(sub.items) == 1 else 's'}",
        highlight=False,
        markup=False,
    )
    table = Table(show_header=True, box=None, padding=(0, 1))
    for column in ("#", "quantity", "price", "on"):
        table.add_column(column, justify="right" if column in ("#", "quantity") else "left")
    for n, item in enumerate(sub.items, 1):
        price, on = _item_price(item)
        table.add_row(str(n), str(item.quantity), price, on)
    console.print(table)


def _print_schedule(console: Console, schedule: ScheduleSpec) -> None:
    begins = schedule.start_date.date().isoformat() if schedule.start_date else "now"
    console.print(
        f" subscription schedule: starts {begins}, {len(schedule.phases)} phase(s), then "
        f"{schedule.end_behavior}s; collection_method {schedule.collection_method}",
        highlight=False,
        markup=False,
    )
    table = Table(show_header=True, box=None, padding=(0, 1))
    for column in ("phase", "until", "quantity", "price", "on"):
        table.add_column(column, justify="right" if column in ("phase", "quantity") else "left")
    for n, phase in enumerate(schedule.phases, 1):
        until = phase.end_date.date().isoformat() if phase.end_date else "-"
        for item in phase.items:
            price, on = _item_price(item)
            table.add_row(str(n), until, str(item.quantity), price, on)
    console.print(table)


def print_errors(console: Console, opportunity_id: str, errors: list[MappingError]) -> None:
    noun = "problem" if len(errors) == 1 else "problems"
    console.print(
        f"[bold red]Opportunity {opportunity_id} does not map[/bold red] ({len(errors)} {noun}):"
    )
    for error in errors:
        console.print(f"  {error}", highlight=False, markup=False, soft_wrap=True)
