"""`sf-bridge deals [--status S]`, `deals show ID`, `replay ID... | --failed` and
`provision --file OPP.json`."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.cli import app, deals_app, handle_errors
from sf_bridge.config import Settings, get_settings
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.db.models import STATUSES, Deal
from sf_bridge.errors import ConfigurationError

STATUS_HELP = f"Only deals in this status: {', '.join(STATUSES)}."
ENV_HELP = (
    "Reads DATABASE_URL, SF_BRIDGE_MAPPINGS, STRIPE_API_KEY, STRIPE_API_BASE and the SF_* "
    "Salesforce settings."
)
SETTLED = ("done", "needs_attention", "cancelled", "skipped", "scheduled")
STATUS_STYLE = {
    "done": "green",
    "needs_attention": "bold red",
    "retrying": "yellow",
    "skipped": "magenta",
}


def _console() -> Console:
    return Console(width=None if sys.stdout.isatty() else 160, soft_wrap=False)


def _session_factory(settings: Settings) -> sessionmaker[Session]:
    from sf_bridge.db.migrate import ensure_current

    engine = make_engine(settings.database_url)
    ensure_current(engine)
    return make_session_factory(engine)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_cells(deal: Deal) -> tuple[str, str]:
    """The error code and what differs between errors (the words every mapping error starts
    with are left to the code)."""
    from sf_bridge.provisioning.error_text import split_code

    code, text = split_code(deal.last_error_code, deal.last_error)
    return escape(code or ""), escape(_short(text, 120))


def opportunity_name(deal: Deal) -> str:
    plan = deal.plan or {}
    return str(plan.get("opportunity_name") or (deal.opportunity or {}).get("Name") or "")


def account_name(deal: Deal) -> str:
    plan_customer = (deal.plan or {}).get("customer") or {}
    account = (deal.opportunity or {}).get("Account") or {}
    return str(plan_customer.get("name") or account.get("Name") or "")


def _named(name: str, record_id: str | None) -> str:
    return f"{escape(name)}\n[dim]{record_id or ''}[/]" if name else (record_id or "")


def invoice_amount(deal: Deal) -> str | None:
    """What the deal's first invoice bills: its plan's items (quantity x unit amount)."""
    plan = deal.plan or {}
    items = plan.get("items") or []
    if not deal.stripe_invoice_id or not items:
        return None
    total = 0
    for item in items:
        unit = item.get("unit_amount")
        if unit is None:
            unit = item.get("catalog_unit_amount") or 0
        total += int(item.get("quantity") or 0) * int(unit)
    currency = str(items[0].get("currency") or "").upper()
    return f"{total / 100:,.2f} {currency}"


# deals ---------------------------------------------------------------------------------------


@deals_app.callback()
@handle_errors
def deals(
    ctx: typer.Context,
    status: str | None = typer.Option(None, "--status", "-s", help=STATUS_HELP),
    limit: int = typer.Option(200, "--limit", help="Show at most this many (newest first)."),
) -> None:
    """State of every deal. Reads DATABASE_URL."""
    if ctx.invoked_subcommand is not None:
        return
    if status is not None and status not in STATUSES:
        raise ConfigurationError(
            f"Unknown status {status!r}.", hint=f"use one of: {', '.join(STATUSES)}."
        )
    from sf_bridge.provisioning.payment import payment_cell
    from sf_bridge.provisioning.report import list_deals

    factory = _session_factory(get_settings())
    with factory() as session:
        rows = list_deals(session, status=status, limit=limit)
    table = Table(title=f"Deals{f' ({status})' if status else ''}: {len(rows)}")
    table.add_column("#", no_wrap=True)
    table.add_column("Opportunity", overflow="fold", max_width=26)
    table.add_column("Account", overflow="fold", max_width=20)
    table.add_column("Status", no_wrap=True)
    table.add_column("Step (tries)", no_wrap=True)
    table.add_column("Invoice", no_wrap=True)
    table.add_column("Updated", no_wrap=True)
    table.add_column("Error code", no_wrap=True)
    table.add_column("Error, reason or next try", overflow="fold", ratio=1)
    for deal in rows:
        style = STATUS_STYLE.get(deal.status, "")
        code, text = _error_cells(deal)
        if deal.status == "retrying" and deal.next_attempt_at:
            text = f"next try {_when(deal.next_attempt_at)} UTC: {text}"
        step = deal.current_step or ""
        table.add_row(
            str(deal.id),
            _named(opportunity_name(deal), deal.opportunity_id),
            _named(account_name(deal), deal.account_id),
            f"[{style}]{deal.status}[/]" if style else deal.status,
            f"{step} ({deal.attempts})" if step and deal.attempts else step,
            payment_cell(deal.payment_state, deal.invoice_status),
            deal.updated_at.strftime("%m-%d %H:%M") if deal.updated_at else "",
            code,
            text,
        )
    _console().print(table)


def _payment_text(deal: Deal) -> str | None:
    from sf_bridge.provisioning.payment import describe_payment

    described = describe_payment(deal.payment_state)
    return f"{deal.payment_state}: {described}" if described else None


def _pending_payment(story: Any) -> list[str]:
    """What waits on a card deal's first payment: grants, the expiry, the status to write."""
    from sf_bridge.provisioning.payment import pending_for_payment

    deal: Deal = story.deal
    created = next(
        (t.at for t in story.timeline if t.step == "subscription" and t.outcome == "ok"), None
    )
    pending = sum(1 for g in story.grants if getattr(g, "pending", False))
    return pending_for_payment(deal.payment_state, deal.payment_reported, pending, created)


def _grant_note(grant: Any) -> str:
    if getattr(grant, "pending", False):
        return " (pending the first payment)"
    return "" if grant.active else " (revoked)"


@deals_app.command("show")
@handle_errors
def show(ref: str = typer.Argument(..., help="Deal number or Opportunity Id.")) -> None:
    """One deal's full history: steps, attempts, errors, Stripe ids and links. Reads
    DATABASE_URL."""
    from sf_bridge.provisioning.replay import find_deal
    from sf_bridge.provisioning.report import deal_story

    factory = _session_factory(get_settings())
    with factory() as session:
        story = deal_story(session, find_deal(session, ref))
    print_story(_console(), story)


def print_story(console: Console, story: Any) -> None:
    deal: Deal = story.deal
    plan = deal.plan or {}
    style = STATUS_STYLE.get(deal.status, "bold")
    console.print(
        f"[bold]Deal {deal.id}[/] opportunity [bold]{deal.opportunity_id}[/] "
        f"({escape(opportunity_name(deal))})"
    )
    console.print(
        f"  status        [{style}]{deal.status}[/]"
        + (f" at step {deal.current_step}" if deal.current_step and deal.status != "done" else "")
    )
    from sf_bridge.provisioning.error_text import split_code

    error_code = split_code(deal.last_error_code, deal.last_error)[0]
    code = f" ({escape(error_code)})" if error_code else ""
    if deal.last_error and deal.status == "skipped":
        console.print(f"  [magenta]skipped[/]{code}  {escape(deal.last_error)}")
    elif deal.last_error:
        console.print(f"  [red]error[/]{code}  {escape(deal.last_error)}")
    if deal.next_attempt_at and deal.status == "retrying":
        console.print(f"  next attempt  {_when(deal.next_attempt_at)} UTC")
    facts = [
        ("account", f"{account_name(deal)} ({deal.account_id})" if deal.account_id else None),
        ("plan", f"{plan.get('plan_name')} ({plan.get('plan_kind')})" if plan else None),
        ("mapping", deal.mapping_version),
        ("customer", deal.stripe_customer_id),
        ("schedule", deal.stripe_schedule_id),
        (
            "contract start",
            deal.contract_start_at.date().isoformat() if deal.contract_start_at else None,
        ),
        ("subscription", deal.stripe_subscription_id),
        (
            "invoice",
            f"{deal.stripe_invoice_id} ({deal.invoice_status})" if deal.stripe_invoice_id else None,
        ),
        ("payment", _payment_text(deal)),
        ("amount due", invoice_amount(deal)),
        ("pay link", deal.hosted_invoice_url),
        ("invoice PDF", deal.invoice_pdf),
        ("due", _when(deal.invoice_due_at)),
        ("source", deal.source),
        ("received", _when(deal.created_at)),
        ("completed", _when(deal.completed_at)),
    ]
    for name, value in facts:
        if value:
            console.print(f"  {name:<13} {escape(str(value))}")
    if story.grants:
        granted = ", ".join(f"{g.feature}={g.value}{_grant_note(g)}" for g in story.grants)
        console.print(f"  entitlements  {granted}")
    for line in _pending_payment(story):
        console.print(f"  {'pending':<13} {escape(line)}")
    table = Table(title="Timeline", show_lines=False)
    for column in (
        "When (UTC)",
        "Step",
        "Try",
        "Outcome",
        "ms",
        "What happened",
        "Stripe request",
        "Idempotency key",
    ):
        table.add_column(column, overflow="fold")
    said = {deal.last_error} if deal.last_error else set()
    for entry in story.timeline:
        message = entry.message
        if message and message in said:
            message = "[dim](the same error as above)[/]"
        else:
            if entry.outcome in ("failed", "retry", "needs_attention") and message:
                said.add(message)
            message = escape(message)
        outcome_style = {"ok": "green", "retry": "yellow", "failed": "red"}.get(entry.outcome, "")
        table.add_row(
            _when(entry.at),
            entry.step or "",
            str(entry.attempt or ""),
            f"[{outcome_style}]{entry.outcome}[/]" if outcome_style else entry.outcome,
            "" if entry.duration_ms is None else str(entry.duration_ms),
            message,
            entry.stripe_request_id or "",
            entry.idempotency_key or "",
        )
    console.print(table)


# processing --------------------------------------------------------------------------------


def _process(
    settings: Settings,
    factory: sessionmaker[Session],
    deal_ids: Sequence[int],
    timeout: float,
    *,
    crm: Any = None,
) -> list[Deal]:
    """Runs a worker in this process until the deals settle or `timeout` passes."""
    from sf_bridge.provisioning.wiring import MappingsLoader, build_worker

    loader = MappingsLoader(settings.mappings_dir)
    worker = build_worker(settings, factory, crm=crm, mappings_loader=loader, poll_interval=0.1)
    deadline = time.monotonic() + timeout
    pause = threading.Event()

    def current() -> list[Deal]:
        with factory() as session:
            return list(session.execute(select(Deal).where(Deal.id.in_(deal_ids))).scalars())

    rows = current()

    def busy(deal: Deal) -> bool:  # a scheduled deal with no step left rests until its start
        return deal.status not in SETTLED and not (
            deal.status == "scheduled" and deal.current_step is None
        )

    while any(busy(d) for d in rows) and time.monotonic() < deadline:
        if worker.run_once() == 0:
            pause.wait(0.1)
        rows = current()
    return rows


def _outcome_line(deal: Deal) -> str:
    if deal.status == "done":
        parts = [f"deal {deal.id} ({deal.opportunity_id}): done"]
        if deal.stripe_customer_id:
            parts.append(f"customer {deal.stripe_customer_id}")
        if deal.stripe_subscription_id:
            parts.append(f"subscription {deal.stripe_subscription_id}")
        if deal.hosted_invoice_url:
            parts.append(f"invoice {deal.stripe_invoice_id} {deal.hosted_invoice_url}")
        return ", ".join(parts)
    if deal.status == "scheduled":
        start = deal.contract_start_at.date().isoformat() if deal.contract_start_at else "later"
        return (
            f"deal {deal.id} ({deal.opportunity_id}): scheduled, subscription schedule "
            f"{deal.stripe_schedule_id} starts {start} (nothing billed before)"
        )
    if deal.status == "retrying":
        return (
            f"deal {deal.id} ({deal.opportunity_id}): still retrying step {deal.current_step} "
            f"(next try {_when(deal.next_attempt_at)} UTC): {deal.last_error}. "
            "`sf-bridge run` carries on with it."
        )
    at_step = f" at step {deal.current_step}" if deal.current_step else ""
    return (
        f"deal {deal.id} ({deal.opportunity_id}): {deal.status}{at_step}: {deal.last_error or ''}"
    )


# after the first close -----------------------------------------------------------------------


def _actor(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


@deals_app.command("cancel")
@handle_errors
def cancel_command(
    ref: str = typer.Argument(..., help="Deal number or Opportunity Id."),
    reason: str = typer.Option(
        "cancelled by RevOps", "--reason", help="Why: recorded and written to the opportunity."
    ),
    by: str | None = typer.Option(None, "--by", help="Who decided (default: your user name)."),
    queue_only: bool = typer.Option(
        False, "--queue-only", help="Only queue it; let a running `sf-bridge run` do it."
    ),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the outcome."),
) -> None:
    """Cancels a deal: voids its open invoice, cancels its subscription (or schedule), revokes
    exactly its entitlements and writes "Cancelled" onto the opportunity (each step once, even
    after a crash); an amendment or renewal takes back only its change of the account's
    subscription. Recorded in the deal's history with who asked.

    Reads DATABASE_URL, SF_BRIDGE_MAPPINGS, STRIPE_API_KEY, STRIPE_API_BASE and the SF_*
    Salesforce settings."""
    from sf_bridge.db.engine import transaction
    from sf_bridge.provisioning.replay import find_deal
    from sf_bridge.provisioning.store import queue_cancel
    from sf_bridge.provisioning.wiring import MappingsLoader, build_crm

    settings = get_settings()
    factory = _session_factory(settings)
    with transaction(factory) as session:
        deal = find_deal(session, ref)
        deal_id = deal.id
        queued = queue_cancel(session, deal_id, reason=reason, actor=_actor(by))
    if not queued:
        typer.echo(f"deal {deal_id}: {deal.status}, nothing to cancel.")
        return
    typer.echo(f"deal {deal_id}: cancellation queued ({reason}).")
    if queue_only:
        return
    crm = build_crm(settings, MappingsLoader(settings.mappings_dir))
    for row in _process(settings, factory, [deal_id], timeout, crm=crm):
        typer.echo(_outcome_line(row))


@deals_app.command("keep")
@handle_errors
def keep_command(
    ref: str = typer.Argument(..., help="Deal number or Opportunity Id."),
    note: str | None = typer.Option(None, "--note", help="Why: recorded in the history."),
    by: str | None = typer.Option(None, "--by", help="Who decided (default: your user name)."),
    queue_only: bool = typer.Option(
        False, "--queue-only", help="Only queue it; let a running `sf-bridge run` tell Salesforce."
    ),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the outcome."),
) -> None:
    """Keeps a deal parked as no longer won (unwon_after_provisioning) as it is: billing and
    entitlements go on, the opportunity is told its provisioned status again (its error
    cleared), the deal is `done` (or `scheduled`) again. Recorded in its history with who
    decided.

    Reads DATABASE_URL, SF_BRIDGE_MAPPINGS and the SF_* Salesforce settings."""
    from sf_bridge.db.engine import transaction
    from sf_bridge.provisioning.replay import find_deal
    from sf_bridge.provisioning.store import keep_unwon
    from sf_bridge.provisioning.wiring import MappingsLoader, build_crm

    settings = get_settings()
    factory = _session_factory(settings)
    with transaction(factory) as session:
        deal = find_deal(session, ref)
        deal_id, status = deal.id, deal.status
        kept = keep_unwon(session, deal_id, actor=_actor(by), note=note)
    if not kept:
        raise ConfigurationError(
            f"Deal {deal_id} is {status}, not parked as no longer won.",
            hint="`deals keep` settles only deals parked with unwon_after_provisioning.",
        )
    typer.echo(f"deal {deal_id}: kept as provisioned.")
    if queue_only:
        return
    crm = build_crm(settings, MappingsLoader(settings.mappings_dir))
    for row in _process(settings, factory, [deal_id], timeout, crm=crm):
        typer.echo(_outcome_line(row))


# replay --------------------------------------------------------------------------------------


@app.command("replay")
@handle_errors
def replay_command(
    refs: list[str] | None = typer.Argument(None, help="Deal numbers or Opportunity Ids."),
    failed: bool = typer.Option(False, "--failed", help="Every deal in needs_attention."),
    include_skipped: bool = typer.Option(
        False,
        "--include-skipped",
        help="Provision the named deals even if they were skipped (won before the "
        "provisioning floor). --failed never includes skipped deals.",
    ),
    queue_only: bool = typer.Option(
        False, "--queue-only", help="Only requeue; let a running `sf-bridge run` process them."
    ),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the outcome."),
) -> None:
    """Re-runs failed deals from where they stopped, with the current mappings.

    Never duplicates: what a deal already created in Stripe is found and reused. The deals
    are processed here and their outcome printed (unless --queue-only). A deal no longer won,
    being cancelled or cancelled is never replayed (it would be provisioned again): named, it
    is refused with what to run instead (`deals cancel` / `deals keep`), exit 1; --failed
    passes over it and says so.

    Reads DATABASE_URL, SF_BRIDGE_MAPPINGS, STRIPE_API_KEY, STRIPE_API_BASE and the SF_*
    Salesforce settings."""
    if not refs and not failed:
        raise ConfigurationError(
            "Nothing to replay.", hint="name deals (number or Opportunity Id) or pass --failed."
        )
    from sf_bridge.provisioning.floor import FloorSource
    from sf_bridge.provisioning.replay import replay
    from sf_bridge.provisioning.wiring import MappingsLoader, build_crm

    settings = get_settings()
    factory = _session_factory(settings)
    loader = MappingsLoader(settings.mappings_dir)
    crm = build_crm(settings, loader)
    outcomes = replay(
        factory,
        refs or [],
        failed=failed,
        mappings=loader(),
        crm=crm,
        include_skipped=include_skipped,
        floor=FloorSource(factory, settings.provision_floor)(),
    )
    if not outcomes:
        typer.echo("No deal needs a replay.")
        return
    for outcome in outcomes:
        said = outcome.message
        if outcome.refused:
            said = ("not replayed: " if outcome.named else "left alone by --failed: ") + said
        typer.echo(f"deal {outcome.deal_id} ({outcome.opportunity_id}): {said}")
    requeued = [o.deal_id for o in outcomes if o.requeued]
    # A deal named that a replay refuses (cancelled, being cancelled, no longer won) fails
    # the command; one `--failed` passes over is only said.
    refused = any(o.refused and o.named for o in outcomes)
    if queue_only or not requeued:
        if refused:
            raise typer.Exit(1)
        return
    rows = _process(settings, factory, requeued, timeout, crm=crm)
    for deal in rows:
        typer.echo(_outcome_line(deal))
    if refused or any(d.status == "needs_attention" for d in rows):
        raise typer.Exit(1)


# provision -----------------------------------------------------------------------------------


@app.command("provision")
@handle_errors
def provision(
    file: Path = typer.Option(
        ...,
        "--file",
        "-f",
        help="Opportunity JSON (as Salesforce REST "
        "returns it, with OpportunityLineItems and Account).",
    ),
    timeout: float = typer.Option(120.0, "--timeout", help="Seconds to wait for the outcome."),
) -> None:
    """Provisions one opportunity given as JSON, through the same queue and worker.

    Prints the deal's story and outcome; exit 1 unless it is done. Paid plans need
    STRIPE_API_KEY (and STRIPE_API_BASE for the sandbox); custom plans need neither.

    Reads DATABASE_URL, SF_BRIDGE_MAPPINGS, STRIPE_API_KEY, STRIPE_API_BASE."""
    from sf_bridge.provisioning.queue import enqueue_snapshot
    from sf_bridge.provisioning.replay import find_deal
    from sf_bridge.provisioning.report import deal_story

    try:
        opportunity = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigurationError(
            f"Cannot read the opportunity from {file}: {exc}.",
            hint="pass a JSON file holding one Opportunity record (see examples/opportunities).",
        ) from exc
    if isinstance(opportunity, dict) and isinstance(opportunity.get("records"), list):
        records = opportunity["records"]
        opportunity = records[0] if len(records) == 1 else opportunity
    if not isinstance(opportunity, dict) or not opportunity.get("Id"):
        raise ConfigurationError(
            f"{file} does not hold one Opportunity record with an Id.",
            hint="pass a JSON object with at least Id, AccountId and OpportunityLineItems.",
        )
    settings = get_settings()
    factory = _session_factory(settings)
    with factory() as session, session.begin():
        deal = enqueue_snapshot(session, opportunity, source="file")
        deal_id = deal.id
    typer.echo(f"deal {deal_id} ({deal.opportunity_id}) enqueued")
    rows = _process(settings, factory, [deal_id], timeout)
    with factory() as session:
        print_story(_console(), deal_story(session, find_deal(session, str(deal_id))))
    typer.echo(_outcome_line(rows[0]))
    if rows[0].status != "done":
        raise typer.Exit(1)
