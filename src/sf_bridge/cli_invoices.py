"""sf-bridge invoices: mark-paid (a wire payment) and overdue (run the overdue policy once)."""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from sf_bridge.cli import handle_errors, invoices_app
from sf_bridge.config import Settings, get_settings


def _settings(database_url: str | None) -> Settings:
    return get_settings().with_overrides(
        flags={"database_url": "--database-url"}, database_url=database_url or None
    )


@invoices_app.command("mark-paid")
@handle_errors
def mark_paid(
    ref: str = typer.Argument(..., help="Invoice id (in_...), deal id or opportunity id"),
    amount: str = typer.Option(
        None,
        "--amount",
        help="Amount received, in the invoice's currency (e.g. 1200.00); default: all that "
        "remains due",
    ),
    reference: str = typer.Option(
        None,
        "--reference",
        help="The bank's reference of the transfer: it identifies the payment, so running "
        "the command again records it once (without it, the same amount on the same invoice "
        "is recorded once)",
    ),
    database_url: str = typer.Option(
        None, "--database-url", envvar="DATABASE_URL", help="SQLAlchemy URL"
    ),
) -> None:
    """Records a wire payment (made outside Stripe), whole or part, in Stripe and in our
    records.

    Stripe gets a payment record attached to the invoice; the invoice is paid once nothing
    remains. Entitlements do not change (they were granted when the deal was provisioned).
    Reads STRIPE_API_KEY and STRIPE_API_BASE. Running it again on a paid invoice changes
    nothing.
    """
    from sf_bridge.db.engine import make_engine, make_session_factory
    from sf_bridge.db.migrate import ensure_current
    from sf_bridge.errors import ConfigurationError
    from sf_bridge.invoices.errors import InvoiceNotPayable
    from sf_bridge.invoices.mark_paid import mark_paid as mark_invoice_paid
    from sf_bridge.mapping.money import format_minor, parse_decimal
    from sf_bridge.provisioning.wiring import build_billing

    value = None
    if amount is not None:
        value = parse_decimal(amount)
        if value is None:
            raise InvoiceNotPayable(
                f"--amount {amount!r} is not an amount.",
                hint="pass the amount received in the invoice's currency, e.g. --amount 1200.00.",
            )
    settings = _settings(database_url)
    billing = build_billing(settings)
    if billing is None:
        raise ConfigurationError(
            "STRIPE_API_KEY is not set, so the invoice cannot be marked paid in Stripe.",
            hint="set STRIPE_API_KEY (and STRIPE_API_BASE for the sandbox emulator), then "
            "run the command again.",
        )
    engine = make_engine(settings.database_url)
    try:
        ensure_current(engine)
        result = mark_invoice_paid(
            make_session_factory(engine), billing, ref, amount=value, reference=reference
        )
    finally:
        engine.dispose()
    if result.already_paid:
        typer.echo(
            f"Invoice {result.invoice_id} (deal {result.deal_id}, opportunity "
            f"{result.opportunity_id}) was already paid in Stripe; recorded."
        )
    elif result.replayed:
        currency = result.currency or "usd"
        which = (
            f"with reference {reference.strip()!r}"
            if reference and reference.strip()
            else "without a reference (pass --reference to record another transfer of the "
            "same amount)"
        )
        typer.echo(
            f"Invoice {result.invoice_id} (deal {result.deal_id}): the payment of "
            f"{format_minor(result.amount_paid or 0, currency)} {which} is already recorded; "
            "nothing was sent to Stripe."
        )
    elif result.status == "paid":
        typer.echo(
            f"Invoice {result.invoice_id} (deal {result.deal_id}, opportunity "
            f"{result.opportunity_id}) marked paid out of band in Stripe and recorded. "
            "Entitlements are unchanged."
        )
    else:
        currency = result.currency or "usd"
        typer.echo(
            f"Invoice {result.invoice_id} (deal {result.deal_id}, opportunity "
            f"{result.opportunity_id}): {format_minor(result.amount_paid or 0, currency)} "
            f"recorded as paid out of band in Stripe; "
            f"{format_minor(result.amount_remaining or 0, currency)} still due. "
            "Entitlements are unchanged."
        )


@invoices_app.command("overdue")
@handle_errors
def overdue(
    apply: bool = typer.Option(
        False, "--apply", help="Cancel and revoke for real (default: dry run, changes nothing)"
    ),
    grace_days: int = typer.Option(
        None,
        "--grace-days",
        min=0,
        envvar="SF_BRIDGE_OVERDUE_GRACE_DAYS",
        help="Days an invoice may stay open past its due date [14]",
    ),
    database_url: str = typer.Option(
        None, "--database-url", envvar="DATABASE_URL", help="SQLAlchemy URL"
    ),
) -> None:
    """Runs the overdue policy once: lists (or, with --apply, cancels) overdue subscriptions.

    The worker (`sf-bridge run`) applies the same policy periodically. Reads STRIPE_API_KEY
    and STRIPE_API_BASE. Does not write to Salesforce; the worker does.
    """
    from sf_bridge.db.engine import make_engine, make_session_factory
    from sf_bridge.db.migrate import ensure_current
    from sf_bridge.errors import ConfigurationError
    from sf_bridge.invoices.overdue import apply_overdue_policy
    from sf_bridge.provisioning.wiring import build_billing

    settings = _settings(database_url)
    billing = build_billing(settings)
    if billing is None:
        raise ConfigurationError(
            "STRIPE_API_KEY is not set, so invoices cannot be checked in Stripe.",
            hint="set STRIPE_API_KEY (and STRIPE_API_BASE for the sandbox emulator).",
        )
    grace = settings.overdue_grace_days if grace_days is None else grace_days
    engine = make_engine(settings.database_url)
    try:
        ensure_current(engine)
        actions = apply_overdue_policy(
            make_session_factory(engine),
            billing,
            None,
            now=datetime.now(UTC),
            grace_days=grace,
            dry_run=not apply,
        )
    finally:
        engine.dispose()
    if not actions:
        typer.echo(f"No open invoice is more than {grace} days past its due date.")
    for action in actions:
        line = (
            f"{action.action:<15} deal {action.deal_id} opportunity {action.opportunity_id} "
            f"invoice {action.invoice_id}: {action.reason}"
        )
        if action.error:
            line += f" (error: {action.error})"
        typer.echo(line)
    if any(a.action == "failed" for a in actions):
        raise typer.Exit(1)
