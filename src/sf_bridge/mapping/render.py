"""Showing mapping results to people: the preview of a plan as tables, or as JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from sf_bridge.mapping.money import format_minor
from sf_bridge.plan import MappingError, ProvisioningPlan


def preview_json(
    opportunity_id: str, result: ProvisioningPlan | list[MappingError], version: str
) -> dict[str, Any]:
    if isinstance(result, ProvisioningPlan):
        return {
            "opportunity_id": opportunity_id,
            "mapping_version": version,
            "ok": True,
            "plan": result.to_dict(),
        }
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
            f"due in {terms.days_until_due} days"
            if terms.collection_method == "send_invoice"
            else "card charged automatically"
        )
        console.print(
            f"Plan: {plan.plan_name} (paid)  billing: {terms.collection_method}, {due}, "
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
    table = Table(title="Entitlements", title_justify="left")
    for column in ("feature", "value", "unit", "from"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for ent in plan.entitlements:
        value = ("yes" if ent.value else "no") if isinstance(ent.value, bool) else f"{ent.value:,}"
        table.add_row(ent.feature, value, ent.unit or "", ent.source)
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def print_errors(console: Console, opportunity_id: str, errors: list[MappingError]) -> None:
    noun = "problem" if len(errors) == 1 else "problems"
    console.print(
        f"[bold red]Opportunity {opportunity_id} does not map[/bold red] ({len(errors)} {noun}):"
    )
    for error in errors:
        console.print(f"  {error}", highlight=False, markup=False, soft_wrap=True)
