"""`sf-bridge reconcile [--since DATE] [--json]`: do Salesforce, sf-bridge and Stripe agree?"""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from sf_bridge.cli import app, handle_errors
from sf_bridge.config import get_settings
from sf_bridge.reconcile.findings import Report


@app.command("reconcile")
@handle_errors
def reconcile_command(
    since: str = typer.Option(
        None,
        "--since",
        help="Compare deals won on or after this date (ISO, e.g. 2026-12-01) instead of the "
        "provisioning floor.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Compares won opportunities in Salesforce, sf-bridge's deals, Stripe's customers,
    subscriptions and invoices, and the entitlement ledger since the provisioning floor; prints
    each mismatch with its fix. Changes nothing in Salesforce or Stripe; the report is stored
    for the console. Exit 1 when there is a mismatch.

    Reads DATABASE_URL, SF_BRIDGE_MAPPINGS, SF_BRIDGE_PROVISION_FLOOR, STRIPE_API_KEY,
    STRIPE_API_BASE and the SF_* Salesforce settings."""
    from sf_bridge.db.engine import make_engine, make_session_factory
    from sf_bridge.db.migrate import ensure_current
    from sf_bridge.reconcile.wiring import reconcile_from_settings

    settings = get_settings()
    engine = make_engine(settings.database_url)
    try:
        ensure_current(engine)
        report = reconcile_from_settings(settings, make_session_factory(engine), since=since)
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report)
    if not report.clean:
        raise typer.Exit(1)


def print_report(report: Report) -> None:
    console = Console(width=160, soft_wrap=False)
    since = report.since.date().isoformat() if report.since else "the first deal"
    checked = report.checked
    console.print(
        f"Reconciled deals won since {since}: {checked.won_opportunities} won opportunities in "
        f"Salesforce, {checked.deals} deals, {checked.customers} customers, "
        f"{checked.subscriptions} subscriptions and {checked.invoices} invoices in Stripe, "
        f"{checked.active_grants} active entitlements."
    )
    if report.clean:
        console.print("[green]Everything agrees.[/]")
        return
    table = Table(title=f"{len(report.mismatches)} mismatches", show_lines=True)
    table.add_column("Kind", no_wrap=True)
    table.add_column("Opportunity", no_wrap=True)
    for column in ("Problem", "Fix"):
        table.add_column(column, overflow="fold")
    for m in report.mismatches:
        table.add_row(m.kind, m.opportunity_id or "", m.problem, m.fix)
    console.print(table)
