"""The Reconciliation page's content: the last stored report, its mismatches grouped by kind,
each with links to its deal, its Opportunity in Salesforce and its Stripe object."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from sf_bridge.console import links
from sf_bridge.reconcile.findings import (
    ENTITLEMENTS_WITHOUT_SUBSCRIPTION,
    KINDS,
    OPPORTUNITY_EDITED,
    SUBSCRIPTION_CHANGED,
    UNKNOWN_STRIPE_OBJECT,
    WON_NOT_PROVISIONED,
    Checked,
    Mismatch,
)
from sf_bridge.reconcile.reports import last_stored_report

# What each kind means, in the words of docs/operations.md ("Reconciliation").
KIND_TITLES = {
    WON_NOT_PROVISIONED: "Won in Salesforce but not provisioned",
    SUBSCRIPTION_CHANGED: "Changed or cancelled by hand in Stripe",
    OPPORTUNITY_EDITED: "Opportunity edited after provisioning",
    ENTITLEMENTS_WITHOUT_SUBSCRIPTION: "Entitlements granted without a live subscription",
    UNKNOWN_STRIPE_OBJECT: "Stripe objects tagged with an opportunity sf-bridge does not know",
}
TRIGGERS = {
    "command": ("by hand", "sf-bridge reconcile"),
    "schedule": ("on the worker's schedule", "SF_BRIDGE_RECONCILE_INTERVAL"),
}
# The Stripe Dashboard's path for each kind of object a mismatch names.
DASHBOARD_PATHS = {"customer": "customers", "subscription": "subscriptions", "invoice": "invoices"}


@dataclass(frozen=True)
class MismatchRow:
    mismatch: Mismatch
    opportunity_url: str | None
    stripe_url: str | None


@dataclass(frozen=True)
class KindGroup:
    kind: str
    title: str
    rows: list[MismatchRow]


@dataclass(frozen=True)
class ReportView:
    started_at: datetime
    finished_at: datetime
    since: datetime | None
    trigger: tuple[str, str]  # how it started, and the command or setting
    checked: Checked
    groups: list[KindGroup]
    total: int


def last_report_view(session: Session, *, instance: str | None, live: bool) -> ReportView | None:
    """The newest report for the page (None: no reconciliation has run yet). `instance` is
    the Salesforce address for the Opportunity links, `live` whether Stripe links go to live
    mode."""
    stored = last_stored_report(session)
    if stored is None:
        return None
    report = stored.report

    def row(m: Mismatch) -> MismatchRow:
        path = DASHBOARD_PATHS.get(m.stripe_kind or "")
        return MismatchRow(
            m,
            links.opportunity_url(instance, m.opportunity_id) if m.opportunity_id else None,
            links.stripe_url(path, m.stripe_id, live=live) if path else None,
        )

    order = {kind: n for n, kind in enumerate(KINDS)}
    kinds = sorted({m.kind for m in report.mismatches}, key=lambda k: (order.get(k, len(KINDS)), k))
    groups = [
        KindGroup(
            kind,
            KIND_TITLES.get(kind, kind),
            [row(m) for m in report.mismatches if m.kind == kind],
        )
        for kind in kinds
    ]
    return ReportView(
        started_at=report.started_at,
        finished_at=report.finished_at,
        since=report.since,
        trigger=TRIGGERS.get(stored.trigger, (stored.trigger, "")),
        checked=report.checked,
        groups=groups,
        total=len(report.mismatches),
    )
