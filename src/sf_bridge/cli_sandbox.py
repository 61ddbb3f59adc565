"""`sf-bridge sandbox`: the sandbox Salesforce org and the Stripe emulator on loopback, for
local development and mapping trials. Prints the addresses and the environment to export, then
runs until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import typer

from sf_bridge.cli import app, handle_errors
from sf_bridge.cli_sandbox_install import require_sandbox
from sf_bridge.config import get_settings
from sf_bridge.logging import get_logger

log = get_logger(__name__)

PUSH_TOPIC = "ClosedWonDeals"
PUSH_TOPIC_QUERY = (
    "SELECT Id, Name, StageName, IsWon, LastModifiedDate FROM Opportunity WHERE IsWon = true"
)
PLATFORM_EVENT = "Deal_Won__e"


sandbox_app = typer.Typer(
    help="Starts only the sandbox Salesforce org and the Stripe emulator on loopback and prints "
    "the settings to export; `sf-bridge sandbox close-deal OPP.json` closes a trial deal in a "
    "running one.",
    invoke_without_command=True,
)
app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.callback()
@handle_errors
def sandbox(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Address both servers listen on (loopback)."),
    sf_port: int = typer.Option(8700, "--sf-port", help="Port of the sandbox org (0: any free)."),
    stripe_port: int = typer.Option(
        8701, "--stripe-port", help="Port of the Stripe emulator (0: any free)."
    ),
    mappings_dir: Path | None = typer.Option(
        None,
        "--mappings",
        help="Mappings folder whose products and custom fields the org gets. "
        "Default: SF_BRIDGE_MAPPINGS, else ./mappings.",
        show_default=False,
    ),
    single_currency: bool = typer.Option(
        False,
        "--single-currency",
        help="Behave like an org without multi-currency (most orgs): no object has "
        "CurrencyIsoCode and every amount is in the corporate currency.",
    ),
    corporate_currency: str = typer.Option(
        "USD", "--corporate-currency", help="The org's corporate currency (ISO code)."
    ),
    without_changed_fields: bool = typer.Option(
        False,
        "--without-changed-fields",
        help="Send change events as older API versions do over CometD: no changedFields in "
        "the header, only the changed fields' values.",
    ),
) -> None:
    """Starts only the sandbox Salesforce org and the Stripe emulator on loopback, prints the
    environment to point `sf-bridge run` / `serve` at them, and runs until Ctrl-C / SIGTERM."""
    require_sandbox("sandbox")
    if ctx.invoked_subcommand is not None:
        return
    from sf_bridge.sandbox.salesforce_org import SalesforceSandbox

    stop = threading.Event()
    previous = _on_signals(stop)
    folder = mappings_dir if mappings_dir is not None else get_settings().mappings_dir
    org = SalesforceSandbox(
        host=host,
        port=sf_port,
        multi_currency=not single_currency,
        corporate_currency=corporate_currency,
        changed_fields_in_header=not without_changed_fields,
    )
    emulator: Any = None
    try:
        org.start()
        mappings = _load_mappings(folder)
        if mappings is not None:
            from sf_bridge.sandbox.salesforce_org.seeding import prepare_for_mappings

            prepared = prepare_for_mappings(org, mappings)
            typer.echo(
                f"Org prepared for {folder}: {len(prepared['products'])} products, "
                f"{len(prepared['fields'])} custom fields."
            )
        org.define_push_topic(PUSH_TOPIC, PUSH_TOPIC_QUERY)
        org.define_platform_event(PLATFORM_EVENT)
        emulator = _start_stripe_emulator(host, stripe_port, mappings)
        _print_environment(org, emulator)
        stop.wait()
    finally:
        if emulator is not None:
            emulator.stop()
        org.stop()
        _restore_signals(previous)
    typer.echo("Sandbox stopped.")


def _on_signals(stop: threading.Event) -> dict[int, Any]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)
    return previous


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _load_mappings(folder: Path) -> Any:
    """The mappings of `folder`, or None (with a note) when there are none or they are invalid:
    the sandbox is useful without them."""
    if not folder.is_dir():
        typer.echo(f"No mappings folder at {folder}: the org starts without products.")
        return None
    try:
        from sf_bridge.mapping import load_mappings

        return load_mappings(folder)
    except Exception as exc:
        typer.secho(
            f"Mappings in {folder} not loaded ({exc}); run `sf-bridge mappings check {folder}`.",
            fg=typer.colors.YELLOW,
            err=True,
        )
        return None


def _start_stripe_emulator(host: str, port: int, mappings: Any) -> Any:
    try:
        from sf_bridge.sandbox.stripe_emulator import StripeEmulator
    except ImportError:
        typer.echo("Stripe emulator not available in this installation; Salesforce org only.")
        return None
    emulator = StripeEmulator(host=host, port=port).start()
    if mappings is not None:
        emulator.seed_catalog(mappings.catalog_prices())
    return emulator


def _print_environment(org: Any, emulator: Any) -> None:
    typer.echo(f"Salesforce sandbox org: {org.url}  (login and instance URL)")
    if org.multi_currency:
        typer.echo(f"  multi-currency, corporate currency {org.corporate_currency}")
    else:
        typer.echo(
            f"  single currency {org.corporate_currency}: no object has CurrencyIsoCode "
            "(Organization.DefaultCurrencyIsoCode names the currency)"
        )
    if not org.changed_fields_in_header:
        typer.echo(
            "  change events without changedFields in their header (as older API versions "
            "send them over CometD)"
        )
    typer.echo(
        f"  streaming channels: /data/OpportunityChangeEvent (default), /topic/{PUSH_TOPIC}, "
        f"/event/{PLATFORM_EVENT}"
    )
    typer.echo(
        f"  Pub/Sub API (gRPC) on {org.pubsub_endpoint}: the same events (no PushTopics); "
        "set SF_TRANSPORT=pubsub to use it"
    )
    typer.echo(
        "  deals: `sf-bridge sandbox close-deal OPP.json` (with the settings below) creates and "
        "closes one; or create Account / Opportunity / OpportunityLineItem records through its "
        "REST API and set StageName to 'Closed Won'"
    )
    if emulator is not None:
        typer.echo(f"Stripe emulator: {emulator.url}")
    typer.echo("\nExport these to point sf-bridge at the sandbox:\n")
    variables = {
        "SF_LOGIN_URL": org.url,
        "SF_USERNAME": org.username,
        "SF_PASSWORD": org.password,
        "SF_SECURITY_TOKEN": org.security_token,
        "SF_CLIENT_ID": org.client_id,
        "SF_CLIENT_SECRET": org.client_secret,
        "SF_API_VERSION": org.api_version,
        "SF_PUBSUB_ENDPOINT": org.pubsub_endpoint,
    }
    if emulator is not None:
        variables |= {"STRIPE_API_BASE": emulator.url, "STRIPE_API_KEY": emulator.api_key}
    for name, value in variables.items():
        typer.echo(f"export {name}={value}")
    typer.echo("\nPress Ctrl-C to stop.", err=True)


@sandbox_app.command("close-deal")
@handle_errors
def close_deal_command(
    file: Path = typer.Argument(
        ..., help="Opportunity JSON, as in examples/opportunities (its ids are ignored)."
    ),
    login_url: str = typer.Option(
        None,
        "--login-url",
        help="Address of the running sandbox org, as `sf-bridge sandbox` printed it "
        "(default: SF_LOGIN_URL).",
        show_default=False,
    ),
    close_date: str = typer.Option(
        None,
        "--close-date",
        help="The deal's Close Date (YYYY-MM-DD); default today, not the file's (a date "
        "before the provisioning floor is skipped, not provisioned).",
        show_default=False,
    ),
) -> None:
    """Creates the deal in a running `sf-bridge sandbox` org (Account, Opportunity, line
    items with their prices, discounts and service dates) and moves it to Closed Won today,
    as a user would: a worker pointed at the sandbox provisions it.

    Reads SF_LOGIN_URL, SF_USERNAME, SF_PASSWORD, SF_SECURITY_TOKEN, SF_CLIENT_ID,
    SF_CLIENT_SECRET and SF_API_VERSION: export what `sf-bridge sandbox` printed."""
    import json
    from datetime import date

    from sf_bridge.crm.auth import SalesforceCredentials
    from sf_bridge.errors import ConfigurationError
    from sf_bridge.sandbox.close_deal import close_deal, connect

    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"Cannot read the opportunity from {file}: {exc}.",
            hint="pass a JSON file holding one Opportunity record (see examples/opportunities).",
        ) from exc
    if not isinstance(record, dict):
        raise ConfigurationError(
            f"{file} does not hold one Opportunity record.",
            hint="pass a JSON object with Name, Account and OpportunityLineItems.",
        )
    settings = get_settings().with_overrides(
        flags={"sf_login_url": "--login-url"}, sf_login_url=login_url or None
    )
    if not (settings.sf_username or settings.sf_client_id):
        raise ConfigurationError(
            "No sandbox credentials: SF_USERNAME (or SF_CLIENT_ID) is not set.",
            hint="export the settings `sf-bridge sandbox` printed when it started, then run "
            "the command again.",
        )
    closes = None
    if close_date is not None:
        try:
            closes = date.fromisoformat(close_date)
        except ValueError:
            raise ConfigurationError(
                f"--close-date {close_date!r} is not a date.",
                hint="write it as YYYY-MM-DD, e.g. --close-date 2026-12-01, or leave it out "
                "to close the deal today.",
            ) from None
    sf = connect(SalesforceCredentials.from_settings(settings), settings.sf_api_version)
    deal = close_deal(sf, record, close_date=closes)
    typer.echo(
        f"Opportunity {deal.opportunity_id} ({deal.name}) closed won on {deal.close_date} in "
        f"the sandbox org, account {deal.account_id}, {deal.lines} line items."
    )
    typer.echo(
        f"A worker pointed at the sandbox (`sf-bridge run`) provisions it; then "
        f"`sf-bridge deals show {deal.opportunity_id}`."
    )


@sandbox_app.command("lose-deal")
@handle_errors
def lose_deal_command(
    opportunity_id: str = typer.Argument(..., help="The Opportunity Id close-deal printed."),
    stage: str = typer.Option(
        "Closed Lost",
        "--stage",
        help="The stage to move it to: Closed Lost, or an open stage such as "
        "'Negotiation/Review' (a deal reopened).",
    ),
    login_url: str = typer.Option(
        None,
        "--login-url",
        help="Address of the running sandbox org, as `sf-bridge sandbox` printed it "
        "(default: SF_LOGIN_URL).",
        show_default=False,
    ),
) -> None:
    """Moves a deal of a running `sf-bridge sandbox` org out of its won stage, as a user
    would: a worker pointed at the sandbox applies the mapping's `when_unwon` to it.

    Reads the SF_* settings `sf-bridge sandbox` printed."""
    from sf_bridge.crm.auth import SalesforceCredentials
    from sf_bridge.errors import ConfigurationError
    from sf_bridge.sandbox.close_deal import connect

    settings = get_settings().with_overrides(
        flags={"sf_login_url": "--login-url"}, sf_login_url=login_url or None
    )
    if not (settings.sf_username or settings.sf_client_id):
        raise ConfigurationError(
            "No sandbox credentials: SF_USERNAME (or SF_CLIENT_ID) is not set.",
            hint="export the settings `sf-bridge sandbox` printed when it started, then run "
            "the command again.",
        )
    from simple_salesforce.exceptions import (
        SalesforceMalformedRequest,
        SalesforceResourceNotFound,
    )

    sf = connect(SalesforceCredentials.from_settings(settings), settings.sf_api_version)
    not_found = ConfigurationError(
        f"The sandbox org has no Opportunity {opportunity_id}.",
        hint="pass the Opportunity Id close-deal printed (18 characters starting with 006, "
        "e.g. `sf-bridge sandbox lose-deal 006...`); `sf-bridge deals` lists the "
        "opportunity ids of the deals the worker knows.",
    )
    try:
        sf.restful(
            f"sobjects/Opportunity/{opportunity_id}", method="PATCH", json={"StageName": stage}
        )
    except SalesforceResourceNotFound:
        raise not_found from None
    except SalesforceMalformedRequest as exc:
        content: Any = exc.content  # Salesforce's list of {"errorCode", "message"}
        codes = {e.get("errorCode") for e in content or [] if isinstance(e, dict)}
        if codes & {"MALFORMED_ID", "INVALID_ID_FIELD", "NOT_FOUND"}:
            raise not_found from None
        if "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" in codes:
            raise ConfigurationError(
                f"--stage {stage!r} is not a stage of the sandbox org.",
                hint="pass --stage 'Closed Lost', or an open stage such as 'Negotiation/Review'.",
            ) from None
        raise
    typer.echo(f"Opportunity {opportunity_id} moved to {stage} in the sandbox org.")
