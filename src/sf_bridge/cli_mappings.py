"""`sf-bridge mappings check [DIR]` and `sf-bridge mappings preview`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from sf_bridge.cli import handle_errors, mappings_app
from sf_bridge.config import get_settings
from sf_bridge.crm import ids
from sf_bridge.errors import ConfigurationError, SfBridgeError
from sf_bridge.mapping import Mappings, check_mappings, load_mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.mapping.render import preview_json, print_errors, print_plan, print_request
from sf_bridge.plan import AccountFacts, ProvisioningPlan
from sf_bridge.provisioning.stripe_request import (
    RequestPreview,
    preview_request,
    price_lookup_keys,
    prices_from_catalog,
)

UNREADABLE_CODES = ("yaml_syntax", "file_too_large")
DIR_HELP = "Mappings folder (default: SF_BRIDGE_MAPPINGS, else ./mappings)."


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 140, soft_wrap=False)


def _folder(directory: Path | None) -> Path:
    return directory if directory is not None else get_settings().mappings_dir


@mappings_app.command("check")
@handle_errors
def check(
    directory: Path | None = typer.Argument(None, help=DIR_HELP, show_default=False),
    as_json: bool = typer.Option(False, "--json", help="Print the problems as JSON."),
) -> None:
    """Validates the mapping files: every problem with file:line:column and a fix; exit 1 on
    any error."""
    folder = _folder(directory)
    issues = check_mappings(folder)
    if as_json:
        typer.echo(json.dumps([i.to_dict() for i in issues], indent=2))
    else:
        for issue in issues:
            typer.echo(str(issue))
    if issues:
        noun = "problem" if len(issues) == 1 else "problems"
        typer.secho(f"{len(issues)} {noun} in {folder}.", fg=typer.colors.RED, err=True)
        if any(i.code in UNREADABLE_CODES for i in issues):
            typer.echo(
                "The checks across files (required sections, names used in another file, "
                "missing prices) run once every file reads.",
                err=True,
            )
        raise typer.Exit(1)
    mappings = load_mappings(folder)
    if not as_json:
        typer.echo(
            f"{folder}: OK - {len(mappings.features)} features, {len(mappings.plans)} plans, "
            f"{len(mappings.addons)} add-ons, {len(mappings.products)} products, "
            f"{len(mappings.catalog_prices())} catalog prices, currencies "
            f"{', '.join(c.upper() for c in mappings.currencies)} (mapping version "
            f"{mappings.version})."
        )
        accepted = ", ".join(c.upper() for c in mappings.currencies)
        typer.echo(
            "Single-currency Salesforce orgs (no CurrencyIsoCode field) bill every deal in the "
            f"org's corporate currency: it must be one of {accepted}. A record without "
            f"CurrencyIsoCode (preview --file) is billed in {mappings.currencies[0].upper()}."
        )


def _records_from_file(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(
            f"The file {path} does not exist.", hint="give the path of an opportunity JSON file."
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"{path} is not valid JSON ({exc}).",
            hint="save the opportunity as the Salesforce REST query returns it.",
        ) from None
    if isinstance(data, dict) and "Id" not in data and isinstance(data.get("records"), list):
        data = data["records"]  # a whole query response
    records = data if isinstance(data, list) else [data]
    if not records or not all(isinstance(r, dict) for r in records):
        raise ConfigurationError(
            f"{path} holds no opportunity record.",
            hint="save one Opportunity record (or a query response with 'records').",
        )
    return [ids.with_18_character_ids(r, error=ConfigurationError) for r in records]


def _fetch(opportunity_id: str, mappings: Mappings) -> list[dict[str, Any]]:
    from sf_bridge.crm.salesforce import SalesforceCrm  # needs the Salesforce client: lazily

    opportunity_id = ids.opportunity_id(opportunity_id, error=ConfigurationError)
    crm = SalesforceCrm.from_settings(get_settings(), mappings)
    records: list[dict[str, Any]] = crm.fetch_opportunities([opportunity_id])
    if not records:
        raise ConfigurationError(
            f"No opportunity with the Id {opportunity_id} was found in Salesforce.",
            hint="check the Id (15 or 18 characters) and that the integration user can see it.",
        )
    return records


def _request(plan: ProvisioningPlan, mappings: Mappings, use_stripe: bool) -> RequestPreview:
    """The Stripe requests of the plan, its catalog prices looked up in Stripe (read only) when
    STRIPE_API_KEY is set, else taken from the mapping catalog."""
    if plan.is_custom:
        return preview_request(plan, {}, "mapping catalog")
    settings = get_settings()
    if not use_stripe or settings.stripe_api_key is None:
        why = "--no-stripe" if not use_stripe else "STRIPE_API_KEY is not set"
        note = f"{why}: the price ids and products are placeholders for Stripe's"
        return preview_request(plan, prices_from_catalog(mappings), "mapping catalog", note)
    from sf_bridge.provisioning.wiring import build_billing  # needs the Stripe SDK: lazily

    billing = build_billing(settings)
    assert billing is not None
    try:
        prices = billing.find_prices(price_lookup_keys(plan))
    except SfBridgeError as exc:
        note = f"Stripe could not be asked ({exc.message}); price ids are placeholders"
        return preview_request(plan, prices_from_catalog(mappings), "mapping catalog", note)
    return preview_request(plan, prices, "stripe")


def _change(plan: ProvisioningPlan, use_stripe: bool) -> dict[str, Any] | None:
    """An amendment or renewal: its account's live subscription before and after, and the
    invoice Stripe would produce (read only), when Stripe and the database are at hand."""
    settings = get_settings()
    if not use_stripe or settings.stripe_api_key is None or plan.is_custom:
        return None
    from sf_bridge.cli_deals import _session_factory
    from sf_bridge.provisioning.change_preview import change_json, preview_change
    from sf_bridge.provisioning.wiring import build_billing

    billing = build_billing(settings)
    assert billing is not None
    try:
        return change_json(preview_change(plan, billing, _session_factory(settings)))
    except SfBridgeError as exc:
        return {"problem": exc.message, "hint": exc.hint}


def print_change(console: Any, change: dict[str, Any]) -> None:
    if "problem" in change:
        console.print(
            f"Subscription change not shown: {change['problem']} {change['hint'] or ''}",
            markup=False,
        )
        return
    console.print(
        f"Subscription {change['subscription']} "
        f"(proration_behavior={change['proration_behavior']}):"
    )
    for when in ("before", "after"):
        items = ", ".join(
            f"{i['lookup_key'] or i['price']} x {i['quantity']} at {i['unit_amount']}"
            for i in change[when]
        )
        console.print(f"  {when}: {items or 'no items'}")
    if change.get("phases"):
        console.print(f"  schedule {change['schedule']}, then {change['end_behavior']} at its end:")
        for phase in change["phases"]:
            items = ", ".join(
                f"{i['lookup_key'] or i['price']} x {i['quantity']} at {i['unit_amount']}"
                for i in phase["items"]
            )
            console.print(f"    from {phase['start']} until {phase['end'] or 'open'}: {items}")
    invoice = change["invoice"]
    if invoice is None:
        console.print(
            "  nothing billed now: each phase bills from its start"
            if change.get("phases")
            else "  nothing to change: no request, no invoice"
        )
        return
    console.print(
        f"  invoice Stripe would produce: total {invoice['total']} {invoice['currency']}, "
        f"amount due {invoice['amount_due']}"
    )
    for line in invoice["lines"]:
        tag = " (proration)" if line["proration"] else ""
        console.print(f"    {line['amount']:>10}  {line['description']}{tag}")


@mappings_app.command("preview")
@handle_errors
def preview(
    file: Path | None = typer.Option(
        None, "--file", "-f", help="An Opportunity record as JSON, as the REST query returns it."
    ),
    opportunity_id: str | None = typer.Option(
        None, "--opportunity-id", help="Fetch this Opportunity from Salesforce (SF_* settings)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    account_plan: str | None = typer.Option(
        None,
        "--account-plan",
        help="Map as if the account had a live subscription of this plan (an amendment "
        "selling only add-ons then maps onto it).",
    ),
    mappings_dir: Path | None = typer.Option(None, "--mappings", help=DIR_HELP, show_default=False),
    use_stripe: bool = typer.Option(
        True,
        "--stripe/--no-stripe",
        help="Look catalog prices up in Stripe (read only) when STRIPE_API_KEY is set; "
        "--no-stripe takes them from the mapping catalog.",
    ),
) -> None:
    """What a deal would provision and the Stripe requests it would send, changing nothing;
    exit 1 when it does not map or Stripe would refuse it."""
    if (file is None) == (opportunity_id is None):
        typer.secho(
            "error: give exactly one of --file OPP.json or --opportunity-id ID.",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    mappings = load_mappings(_folder(mappings_dir))
    records = (
        _records_from_file(file) if file is not None else _fetch(str(opportunity_id), mappings)
    )
    console = _console()
    results = []
    failed = False
    for index, record in enumerate(records):
        facts = AccountFacts(True, account_plan) if account_plan else None
        result = map_opportunity(record, mappings, facts)
        if index and not as_json:
            console.print()
        opp_id = str(record.get("Id") or "?")
        request = (
            _request(result, mappings, use_stripe) if isinstance(result, ProvisioningPlan) else None
        )
        failed = failed or request is None or request.problem is not None
        change = (
            _change(result, use_stripe)
            if isinstance(result, ProvisioningPlan) and result.intent != "new_business"
            else None
        )
        if as_json:
            body = preview_json(opp_id, result, mappings.version, request)
            if change is not None:
                body["subscription_change"] = change
            results.append(body)
        elif isinstance(result, ProvisioningPlan) and request is not None:
            print_plan(console, result)
            if change is None or "problem" in change:
                print_request(console, request)
            if change is not None:
                print_change(console, change)
        elif not isinstance(result, ProvisioningPlan):
            print_errors(console, opp_id, result)
    if as_json:
        typer.echo(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    if failed:
        raise typer.Exit(1)
