"""How the demo looks: a live table of deals moving through their steps, then the summary.

On a terminal the progress table redraws in place; elsewhere (CI logs, a pipe) each change of
a deal's step is printed as one line, so the run can still be followed and checked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sf_bridge.db.models import NEEDS_ATTENTION, PROGRESS, RETRYING
from sf_bridge.demo.checks import Check
from sf_bridge.demo.facts import DealFacts, DealRow, entitlement_value

STATUS_STYLE = {"done": "bold green", NEEDS_ATTENTION: "bold red", RETRYING: "yellow"}


def _steps_bar(row: DealRow | None) -> Text:
    total = len(PROGRESS) - 1
    if row is None:
        return Text("·" * total, style="dim")
    if row.status in PROGRESS:
        reached = PROGRESS.index(row.status)
    elif row.current_step in PROGRESS:
        reached = max(PROGRESS.index(row.current_step) - 1, 0)
    else:
        reached = 0
    style = STATUS_STYLE.get(row.status, "cyan")
    return Text("■" * reached, style=style) + Text("·" * (total - reached), style="dim")


def _elapsed(facts: DealFacts, now: datetime) -> str:
    if facts.latency_ms is not None:
        return f"{facts.latency_ms} ms"
    if facts.closed_at is None:
        return ""
    return f"{(now - facts.closed_at).total_seconds():.1f} s"


def progress_table(all_facts: Iterable[DealFacts], title: str) -> Table:
    now = datetime.now(UTC)
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("deal")
    table.add_column("opportunity", style="dim")
    table.add_column("steps")
    table.add_column("status")
    table.add_column("next / failed step", style="dim")
    table.add_column("tries", justify="right")
    table.add_column("close → done", justify="right")
    for facts in all_facts:
        row = facts.row
        status = row.status if row else "waiting for the stream"
        table.add_row(
            facts.deal.name,
            facts.opportunity_id,
            _steps_bar(row),
            Text(status, style=STATUS_STYLE.get(status, "")),
            (row.current_step or "") if row else "",
            str(row.attempts) if row else "",
            _elapsed(facts, now),
        )
    return table


def transition_line(facts: DealFacts) -> str:
    row = facts.row
    status = row.status if row else "waiting"
    step = f" (step {row.current_step})" if row and row.current_step else ""
    return f"  {facts.deal.name}: {status}{step}"


def _money(amount: Any, currency: Any) -> str:
    if amount is None:
        return "?"
    return f"{int(amount) / 100:,.2f} {str(currency or '').upper()}"


def _onoff(value: Any) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _grant(value: int, api_entry: Any) -> str:
    """A stored grant (flags are stored as 1/0) as a person reads it."""
    if isinstance(api_entry, dict) and api_entry.get("kind") == "flag":
        return "on" if value else "off"
    return str(value)


def _field(value: Any) -> str:
    """A Salesforce field value as the org shows it."""
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return "(empty)" if value in (None, "") else repr(value)


def _link(url: str | None) -> str:
    return url or "-"


def deal_panel(facts: DealFacts, write_back_fields: list[str]) -> Panel:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    row = facts.row
    table.add_row("shows", facts.deal.story)
    table.add_row("opportunity", f"{facts.opportunity_id}  (account {facts.account_id})")
    status = row.status if row else "not received"
    since = "`sf-bridge replay`" if facts.replayed_at else "closed"
    reached = "scheduled" if status == "scheduled" else "done"
    latency = (
        f"  {since} → {reached} in {facts.latency_ms} ms" if facts.latency_ms is not None else ""
    )
    source = f"  (arrived by {row.source})" if row else ""
    table.add_row("status", Text(status, style=STATUS_STYLE.get(status, "")) + latency + source)
    plan = facts.plan or {}
    if plan:
        items = ", ".join(
            f"{i.get('name')} x{i.get('quantity')}"
            + (
                f" at {_money(i.get('unit_amount'), i.get('currency'))}"
                f" (catalog {_money(i.get('catalog_unit_amount'), i.get('currency'))})"
                if i.get("unit_amount") is not None
                and i.get("unit_amount") != i.get("catalog_unit_amount")
                else ""
            )
            for i in plan.get("items", ())
        )
        table.add_row("plan", f"{plan.get('plan_name')} ({plan.get('plan_kind')}): {items}")
    if facts.customer:
        table.add_row(
            "Stripe customer",
            f"{facts.customer.get('id')}  {facts.customer.get('name')} "
            f"<{facts.customer.get('email')}>",
        )
    elif facts.stripe_customer_id:
        table.add_row("Stripe customer", f"{facts.stripe_customer_id} (not found in Stripe)")
    sub = facts.subscription
    if sub:
        terms = sub.get("collection_method")
        if sub.get("days_until_due"):
            terms = f"{terms}, due in {sub.get('days_until_due')} days"
        table.add_row("subscription", f"{sub.get('id')}  {sub.get('status')}  ({terms})")
    elif plan.get("plan_kind") == "custom" and status == "done":
        table.add_row("subscription", "none: custom plan, billed outside Stripe")
    elif facts.schedule:
        begins = facts.contract_start.isoformat() if facts.contract_start else "later"
        table.add_row(
            "schedule",
            f"{facts.schedule.get('id')}  {facts.schedule.get('status')}  (starts {begins}: "
            "nothing billed or granted before)",
        )
    if facts.payment_state:
        table.add_row("payment", payment_text(facts))
    inv = facts.invoice
    if inv:
        table.add_row(
            "invoice",
            f"{inv.get('id')}  {inv.get('status')}  "
            f"{_money(inv.get('amount_due'), inv.get('currency'))}",
        )
        table.add_row("payment link", _link(inv.get("hosted_invoice_url")))
        table.add_row("invoice PDF", _link(inv.get("invoice_pdf")))
    if facts.grants:
        table.add_row(
            "granted by deal",
            ", ".join(
                f"{k}={_grant(v, facts.entitlements.get(k))}"
                for k, v in sorted(facts.grants.items())
            ),
        )
    if facts.entitlements_error:
        table.add_row("entitlement API", Text(facts.entitlements_error, style="red"))
    elif facts.entitlements:
        table.add_row(
            "account now (API)",
            ", ".join(
                f"{k}={_onoff(entitlement_value(v))}" for k, v in sorted(facts.entitlements.items())
            ),
        )
    if write_back_fields:
        table.add_row(
            "on the Opportunity",
            "\n".join(
                f"{name} = {_field(facts.written_back.get(name))}" for name in write_back_fields
            ),
        )
    if row and row.status == NEEDS_ATTENTION:
        table.add_row("reason", Text(row.last_error or "", style="red"))
        table.add_row("then", f"sf-bridge replay {facts.opportunity_id}")
    return Panel(table, title=facts.deal.name, title_align="left")


def checks_table(checks: list[Check], names: dict[str, str]) -> Table:
    """One row per deal: how many expectations held, and every one that did not."""
    table = Table(title="Expectations", title_justify="left")
    table.add_column("deal")
    table.add_column("held", justify="right")
    table.add_column("failed (what was seen)", overflow="fold")
    for key in dict.fromkeys(c.deal for c in checks):
        mine = [c for c in checks if c.deal == key]
        failed = [c for c in mine if not c.ok]
        held = Text(
            f"{len(mine) - len(failed)}/{len(mine)}", style="bold red" if failed else "green"
        )
        detail = "\n".join(f"FAIL {c.what}: {c.detail}" for c in failed)
        table.add_row(names.get(key, "all deals"), held, Text(detail, style="red"))
    return table


def summary(all_facts: list[DealFacts], write_back_fields: list[str]) -> Group:
    return Group(*(deal_panel(f, write_back_fields) for f in all_facts))


def make_console(force_terminal: bool | None = None) -> Console:
    console = Console(force_terminal=force_terminal, highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # logs and pipes: wide enough that ids and links stay on one line
    return console


def payment_text(facts: DealFacts) -> str:
    """A card deal's payment state and what waits on it, in the words of `deals show`."""
    from sf_bridge.provisioning.payment import describe_payment, pending_for_payment

    created = (facts.subscription or {}).get("created")
    pending = pending_for_payment(
        facts.payment_state,
        facts.payment_reported,
        len(facts.pending_grants),
        datetime.fromtimestamp(created, UTC) if isinstance(created, int) else None,
    )
    said = f"{facts.payment_state}: {describe_payment(facts.payment_state)}"
    return "; ".join([said, *pending])
