"""Telling the opportunity that a provisioned card deal's first payment came in: its status
field goes from "Provisioned, awaiting payment" to "Provisioned" (`sf_bridge.provisioning.payment`).
A deal whose subscription expired unpaid is cancelled and told by the cancellation report.

Each deal keeps the payment state its opportunity was last told (`payment_reported`, set by
the write-back and here): the deals to tell are those paid since they were told they awaited
it, whenever the payment came (even while the write-back was under way). The write happens
before the record: a crash between the two writes the same status again on restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sf_bridge.crm.port import CrmGateway, OpportunityUpdate
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.batch import provisioned_status_text
from sf_bridge.provisioning.store import DealStore

log = get_logger(__name__)


def report_payments(
    store: DealStore, crm: CrmGateway | None, mappings_loader: Callable[[], Any], limit: int = 200
) -> list[int]:
    """Writes the status of provisioned card deals whose first payment came in since their
    opportunity was told they awaited it; their ids."""
    if crm is None:
        return []
    deals = store.payments_to_report(limit)
    if not deals:
        return []
    names = getattr(mappings_loader(), "write_back", None)
    field = getattr(names, "status", None) if names is not None else None
    updates = [
        OpportunityUpdate(d.opportunity_id, {str(field): provisioned_status_text(d.payment_state)})
        for d in deals
        if field and d.source != "file"
    ]
    for result in crm.write_back(updates) if updates else []:
        if not result.ok:
            log.warning(
                "payment_write_back_refused",
                opportunity_id=result.opportunity_id,
                error=result.error,
            )
    store.payments_reported({d.id: d.payment_state for d in deals})
    return [d.id for d in deals]
