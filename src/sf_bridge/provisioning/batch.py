"""The batch steps: fetch (one Salesforce query for up to 200 deals) and write-back (one
update call for up to 200 deals). Salesforce REST calls per deal stay far below one."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sf_bridge.crm.port import CrmGateway, OpportunityUpdate
from sf_bridge.db.models import SKIPPED
from sf_bridge.errors import CrmRejected, PermanentError, TransientError
from sf_bridge.logging import get_logger
from sf_bridge.mapping.model import WRITE_BACK_KEYS
from sf_bridge.provisioning.eligibility import FLOOR_WAIVED, Skip, judge
from sf_bridge.provisioning.error_text import opportunity_error_text
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.payment import AWAITING_PAYMENT, PROVISIONED_AWAITING_PAYMENT
from sf_bridge.provisioning.runner import Provisioner, record_failure
from sf_bridge.provisioning.states import (
    SCHEDULED,
    STATUS_AFTER,
    STEP_FETCH,
    STEP_MAP,
    STEP_WRITE_BACK,
)

log = get_logger(__name__)

BATCH_LIMIT = 200


def _snapshot_id(record: dict[str, Any]) -> str:
    return str(record.get("Id") or "")


def _load(prov: Provisioner, ids: list[int]) -> list[DealView]:
    return prov.store.load(ids)


def fetch_batch(
    prov: Provisioner,
    crm: CrmGateway | None,
    limit: int = BATCH_LIMIT,
    floor: Callable[[], datetime | None] | None = None,
    line_items_wait: float = 0.0,
) -> list[int]:
    """Fetches the snapshots of up to `limit` received deals in one call; returns their ids.
    Deals not to provision (no longer won, closed before `floor`) are recorded as skipped. A
    deal without line items is fetched again later, for up to `line_items_wait` seconds after
    it was enqueued (a data load adds the lines after the opportunity), then parked."""
    if crm is None:
        return []
    ids = prov.claim((STEP_FETCH,), min(limit, BATCH_LIMIT))
    if not ids:
        return []
    try:
        _fetch_claimed(prov, crm, ids, floor() if floor is not None else None, line_items_wait)
    finally:
        prov.done_with(ids)
    return ids


def _fetch_claimed(
    prov: Provisioner,
    crm: CrmGateway,
    ids: list[int],
    floor: datetime | None,
    line_items_wait: float,
) -> None:
    deals = _load(prov, ids)
    started = time.perf_counter()
    try:
        records = crm.fetch_opportunities([d.opportunity_id for d in deals])
    except Exception as exc:
        _fail(prov, deals, STEP_FETCH, exc, int((time.perf_counter() - started) * 1000))
        return
    duration = int((time.perf_counter() - started) * 1000)
    by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        by_id[_snapshot_id(record)] = record
        by_id[_snapshot_id(record)[:15]] = record
    found: list[tuple[DealView, dict[str, Any]]] = []
    for deal in deals:
        match = by_id.get(deal.opportunity_id) or by_id.get(deal.opportunity_id[:15])
        if match is None:
            missing = TransientError(
                f"Salesforce did not return opportunity {deal.opportunity_id}.",
                hint="check that it exists and that the integration user can read it "
                "(sharing, field-level security), then replay the deal.",
            )
            _fail(prov, [deal], STEP_FETCH, missing, duration)
        else:
            found.append((deal, match))
    now = prov.clock()
    waived = prov.store.events_of_kind([deal.id for deal, _record in found], (FLOOR_WAIVED,))
    skips: dict[int, Skip | None] = {
        deal.id: judge(record, None if deal.id in waived else floor) for deal, record in found
    }
    ready: list[tuple[DealView, dict[str, Any]]] = []
    for deal, record in found:
        if line_items_wait > 0 and skips[deal.id] is None and lacks_line_items(record):
            _wait_for_lines(prov, deal, record, now, line_items_wait, duration)
        else:
            ready.append((deal, record))
    found = ready
    settled = prov.store.settle_batch(
        [
            {
                "id": deal.id,
                "opportunity": record,
                "account_id": record.get("AccountId") or deal.account_id or None,
                **_after_fetch(skips[deal.id]),
            }
            for deal, record in found
        ],
        [
            {
                "deal_id": deal.id,
                "step": STEP_FETCH,
                "attempt": deal.attempts + 1,
                "detail": {"batch_size": len(deals)}
                | ({"skipped": skip.code} if (skip := skips[deal.id]) else {}),
            }
            for deal, _record in found
        ],
        duration=duration,
        event_rows=[
            {
                "deal_id": deal.id,
                "at": now,
                "kind": "skipped",
                "message": skip.reason,
                "detail": {"code": skip.code},
            }
            for deal, _record in found
            if (skip := skips[deal.id]) is not None
        ],
        before_commit=lambda deal_id: prov.hooks.before_commit(STEP_FETCH, deal_id),
    )
    found = [(deal, record) for deal, record in found if deal.id in settled]
    for deal, _record in found:
        prov.hooks.after_commit(STEP_FETCH, deal.id)
    for deal, _record in found:
        if (skip := skips[deal.id]) is not None:
            log.warning(
                "deal_skipped",
                deal_id=deal.id,
                opportunity_id=deal.opportunity_id,
                code=skip.code,
                reason=skip.reason,
            )
    log.info("fetch_batch_done", deals=len(deals), found=len(found), duration_ms=duration)


def lacks_line_items(record: dict[str, Any]) -> bool:
    """The fetch asked for the line items and there are none (Salesforce answers an empty
    child subquery with null)."""
    if "OpportunityLineItems" not in record:
        return False
    lines = record["OpportunityLineItems"]
    return not (isinstance(lines, dict) and lines.get("records"))


AWAITING_LINE_ITEMS = "awaiting_line_items"


class NoLineItems(PermanentError):
    """The won opportunity still has no line items; add its products in Salesforce."""

    code = "no_line_items"


def _span(seconds: float) -> str:
    if seconds >= 120:
        return f"{seconds / 60:g} minutes"
    return f"{seconds:g} second" + ("" if seconds == 1 else "s")


# Events that (re)queue a deal for its fetch: the wait for line items runs from the latest.
QUEUED_EVENTS = ("received", "refetch", "replayed")


def _queued_at(prov: Provisioner, deal: DealView, now: datetime) -> datetime:
    """When the deal was last (re)queued for its fetch: enqueued, won again, refreshed or
    replayed."""
    at = prov.store.latest_event_at(deal.id, QUEUED_EVENTS) or deal.created_at or now
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _wait_for_lines(
    prov: Provisioner,
    deal: DealView,
    record: dict[str, Any],
    now: datetime,
    wait: float,
    duration: int,
) -> None:
    """A won deal with no line items yet: a data load inserts the opportunity first and its
    lines a moment later. Within `wait` seconds of when the deal was last queued for its fetch
    it is fetched again every tenth of the wait (at most 30 s apart; at once when its lines'
    change event arrives); after that it is parked with what to do. The snapshot is kept, so
    a sweep sees when the record changed since."""
    deadline = _queued_at(prov, deal, now) + timedelta(seconds=wait)
    if now >= deadline:
        prov.store.keep_snapshot(deal, record)
        _fail(
            prov,
            [deal],
            STEP_FETCH,
            NoLineItems(
                f"The opportunity has no line items {_span(wait)} after it was won "
                "(SF_BRIDGE_LINE_ITEMS_WAIT), so there is nothing to provision.",
                hint="add its products in Salesforce: the deal is fetched again as soon as its "
                "lines are saved (or `sf-bridge replay` it).",
            ),
            duration,
        )
        return
    poll = min(30.0, max(0.5, wait / 10))
    next_try = min(now + timedelta(seconds=poll), deadline)
    prov.store.retry_later(
        deal,
        STEP_FETCH,
        at=next_try,
        reason=(
            "Waiting for the opportunity's line items (a data load adds them after the "
            f"opportunity): fetched again until {deadline:%Y-%m-%d %H:%M:%S} UTC, then parked."
        ),
        code=AWAITING_LINE_ITEMS,
        duration=duration,
        snapshot=record,
    )


def _after_fetch(skip: Skip | None) -> dict[str, Any]:
    """The deal's next state after a fetch: on to the map step, or skipped with its reason."""
    if skip is None:
        return {"status": STATUS_AFTER[STEP_FETCH], "current_step": STEP_MAP}
    return {
        "status": SKIPPED,
        "current_step": None,
        "last_error": skip.reason,
        "last_error_code": skip.code,
    }


def _fail(
    prov: Provisioner, deals: list[DealView], step: str, exc: Exception, duration: int
) -> None:
    """Records a batch step's failure on each of these deals (retrying or needs_attention)."""
    for deal in deals:
        record_failure(
            prov,
            deal_id=deal.id,
            opportunity_id=deal.opportunity_id,
            step=step,
            attempt_no=deal.attempts + 1,
            exc=exc,
            duration=duration,
        )


def waits_for_schedule(deal: DealView) -> bool:
    """A deal whose subscription schedule has not started: written back as Scheduled, and
    resting as `scheduled` until Stripe creates the subscription at the contract's start."""
    return bool(deal.stripe_schedule_id) and not deal.stripe_subscription_id


def provisioned_status_text(payment_state: str | None) -> str:
    """The status field of a provisioned deal: a card deal awaiting its first payment says
    so (it fits the field's 40 characters)."""
    if payment_state == AWAITING_PAYMENT:
        return PROVISIONED_AWAITING_PAYMENT
    return "Provisioned"


def write_back_fields(deal: DealView, names: Any, now_iso: str) -> dict[str, Any]:
    """Opportunity field values for a provisioned deal, for the fields the mapping names."""
    scheduled = waits_for_schedule(deal)
    values: dict[str, Any] = {
        "status": "Scheduled" if scheduled else provisioned_status_text(deal.payment_state),
        "stripe_customer_id": deal.stripe_customer_id,
        "stripe_subscription_id": deal.stripe_subscription_id,
        "invoice_url": deal.hosted_invoice_url,
        "error": None,
        "provisioned_at": now_iso,
        "stripe_schedule_id": deal.stripe_schedule_id,
        "contract_start": deal.contract_start_at.date().isoformat()
        if deal.contract_start_at
        else None,
    }
    fields: dict[str, Any] = {}
    for key in WRITE_BACK_KEYS:
        field_name = getattr(names, key, None) if names is not None else None
        if field_name:
            fields[str(field_name)] = values[key]
    return fields


def write_back_batch(
    prov: Provisioner,
    crm: CrmGateway | None,
    mappings_loader: Callable[[], Any],
    limit: int = BATCH_LIMIT,
    linger: float = 0.0,
) -> list[int]:
    """Writes status and Stripe ids back onto up to `limit` opportunities in one call, then
    marks those deals done; returns their ids.

    With `linger` > 0 it waits until a full batch is ready or the oldest ready deal has waited
    that long, so that a steady flow of deals still makes few, full calls."""
    if linger > 0 and not _write_back_due(prov, linger):
        return []
    ids = prov.claim((STEP_WRITE_BACK,), min(limit, BATCH_LIMIT))
    if not ids:
        return []
    try:
        _write_back_claimed(prov, crm, mappings_loader, ids)
    finally:
        prov.done_with(ids)
    return ids


def _write_back_claimed(
    prov: Provisioner, crm: CrmGateway | None, mappings_loader: Callable[[], Any], ids: list[int]
) -> None:
    deals = _load(prov, ids)
    now = prov.clock()
    started = time.perf_counter()
    try:
        names = getattr(mappings_loader(), "write_back", None) if crm is not None else None
        updates = [
            OpportunityUpdate(d.opportunity_id, write_back_fields(d, names, now.isoformat()))
            for d in deals
            if d.source != "file"
        ]
        updates = [u for u in updates if u.fields]
        results = crm.write_back(updates) if (crm is not None and updates) else []
    except Exception as exc:
        _fail(prov, deals, STEP_WRITE_BACK, exc, int((time.perf_counter() - started) * 1000))
        return
    duration = int((time.perf_counter() - started) * 1000)
    written = {u.opportunity_id for u in updates}
    failed = {r.opportunity_id: r for r in results if not r.ok}
    ok: list[DealView] = []
    for deal in deals:
        result = failed.get(deal.opportunity_id)
        if result is None:
            ok.append(deal)
            continue
        error: Exception = (
            TransientError(f"Salesforce could not update the opportunity: {result.error}")
            if result.retryable
            else CrmRejected(
                f"Salesforce refused the write-back: {result.error}",
                hint="check the write-back fields in the mappings and the integration user's "
                "field permissions, then replay the deal.",
            )
        )
        _fail(prov, [deal], STEP_WRITE_BACK, error, duration)
    settled = prov.store.settle_batch(
        [
            {
                "id": deal.id,
                "status": SCHEDULED if waits_for_schedule(deal) else STATUS_AFTER[STEP_WRITE_BACK],
                "current_step": None,
                "writeback_pending": False,
                "written_back_at": now if deal.opportunity_id in written else None,
                # what a card deal's opportunity was told: paid since, it is told again
                "payment_reported": deal.payment_state if deal.opportunity_id in written else None,
                "completed_at": now,
            }
            for deal in ok
        ],
        [
            {
                "deal_id": deal.id,
                "step": STEP_WRITE_BACK,
                "attempt": deal.attempts + 1,
                "detail": {"written": True, "batch_size": len(updates)}
                if deal.opportunity_id in written
                else {"written": False, "why": _skip_reason(crm, deal)},
            }
            for deal in ok
        ],
        duration=duration,
        before_commit=lambda deal_id: prov.hooks.before_commit(STEP_WRITE_BACK, deal_id),
    )
    ok = [deal for deal in ok if deal.id in settled]
    for deal in ok:
        prov.hooks.after_commit(STEP_WRITE_BACK, deal.id)
    log.info("write_back_batch_done", deals=len(deals), written=len(written), duration_ms=duration)


def report_parked_batch(
    prov: Provisioner,
    crm: CrmGateway | None,
    mappings_loader: Callable[[], Any],
    limit: int = BATCH_LIMIT,
) -> list[int]:
    """Writes "Needs attention" and the reason onto the opportunities of newly parked deals
    (when the mappings name a status or error field), in one call; returns their ids. A
    failed call is raised; records Salesforce refuses are logged and not retried."""
    if crm is None:
        return []
    deals = prov.store.parked_to_report(min(limit, BATCH_LIMIT))
    if not deals:
        return []
    names = getattr(mappings_loader(), "write_back", None)
    values = {
        "status": "Needs attention",
        "error": None,
    }
    updates: list[OpportunityUpdate] = []
    for deal in deals:
        values["error"] = opportunity_error_text(deal.last_error_code, deal.last_error)
        fields = {
            str(getattr(names, key)): value
            for key, value in values.items()
            if names is not None and getattr(names, key, None)
        }
        if fields:
            updates.append(OpportunityUpdate(deal.opportunity_id, fields))
    results = crm.write_back(updates) if updates else []
    for result in results:
        if not result.ok:
            log.warning(
                "parked_write_back_refused",
                opportunity_id=result.opportunity_id,
                error=result.error,
            )
    ids = [d.id for d in deals]
    prov.store.parked_reported(ids)
    log.info("parked_deals_reported", deals=len(deals), written=len(updates))
    return ids


def _write_back_due(prov: Provisioner, linger: float) -> bool:
    now = prov.clock()
    count, oldest = prov.store.ready_for_write_back(STEP_WRITE_BACK)
    if not count:
        return False
    if count >= BATCH_LIMIT or oldest is None:
        return True
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    return bool(oldest <= now - timedelta(seconds=linger))


def _skip_reason(crm: CrmGateway | None, deal: DealView) -> str:
    if deal.source == "file":
        return "provisioned from a file: nothing to write back"
    if crm is None:
        return "no Salesforce connection configured"
    return "the mappings name no write-back fields"
