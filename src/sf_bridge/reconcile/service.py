"""One reconciliation: read the three systems (changing nothing), compare, store the report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.port import StripeRecord
from sf_bridge.db.models import utcnow
from sf_bridge.logging import get_logger
from sf_bridge.reconcile.compare import compare
from sf_bridge.reconcile.findings import Checked, Report
from sf_bridge.reconcile.reports import save_report
from sf_bridge.reconcile.sources import (
    ReconcileBilling,
    ReconcileCrm,
    read_deals,
    read_grants,
    read_salesforce,
    read_stripe,
)

log = get_logger(__name__)


def reconcile(
    session_factory: sessionmaker[Session],
    *,
    crm: ReconcileCrm | None,
    billing: ReconcileBilling | None,
    since: datetime | None,
    trigger: str = "command",
    store: bool = True,
    clock: Callable[[], datetime] = utcnow,
) -> Report:
    """Compares deals won since `since` (the provisioning floor; None: every deal) across
    Salesforce, sf-bridge, Stripe and the entitlement ledger. Without `crm` or `billing` the
    checks that need that system are left out. Stores the report unless `store` is false."""
    started = clock()
    with session_factory() as session:
        deals = read_deals(session, since)
        grants = read_grants(session, [d.id for d in deals])
    won: list[str] = []
    fresh: dict[str, object] = {}
    if crm is not None:
        won, fresh = read_salesforce(crm, since, deals)
    stripe: dict[str, Any] = {"listed": [], "customer": {}, "subscription": {}, "invoice": {}}
    if billing is not None:
        stripe = read_stripe(billing, since, deals)
    listed: list[StripeRecord] = stripe["listed"]
    mismatches = compare(
        won_ids=won,
        deals=deals,
        fresh=fresh,  # type: ignore[arg-type]
        grants=grants,
        customers=stripe["customer"],
        subscriptions=stripe["subscription"],
        invoices=stripe["invoice"],
        listed=listed,
        salesforce=crm is not None,
        stripe=billing is not None,
    )
    report = Report(
        since=since,
        started_at=started,
        finished_at=clock(),
        checked=Checked(
            won_opportunities=len(won),
            deals=len(deals),
            customers=sum(1 for r in listed if r.kind == "customer"),
            subscriptions=sum(1 for r in listed if r.kind == "subscription"),
            invoices=sum(1 for r in listed if r.kind == "invoice"),
            active_grants=len(grants),
        ),
        mismatches=mismatches,
    )
    log.info(
        "reconciled",
        trigger=trigger,
        since=since.isoformat() if since else None,
        mismatches=len(mismatches),
        **report.counts(),
    )
    if store:
        with session_factory() as session, session.begin():
            save_report(session, report, trigger=trigger)
    return report
