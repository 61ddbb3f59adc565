"""Replay: put parked (or chosen) deals back in the queue at the step where they stopped.

When the mappings changed since the deal was mapped, or the opportunity changed in
Salesforce, the deal goes back to the map step first (re-fetched when a CRM is at hand). Every
step is idempotent, so replaying a deal any number of times never creates anything twice:
the customer, subscription and invoice already recorded are found and reused.

Skipped deals (won before the provisioning floor, or no longer won when fetched) are
provisioned only on purpose: named, with `include_skipped`. They go to the map step with the
opportunity as Salesforce returns it now; one that is still not won stays skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm import ids
from sf_bridge.crm.port import CrmGateway
from sf_bridge.db.models import (
    CANCELLED,
    CANCELLING,
    NEEDS_ATTENTION,
    SCHEDULED,
    SKIPPED,
    UNWON,
    Deal,
    DealEvent,
    utcnow,
)
from sf_bridge.errors import SfBridgeError
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.eligibility import BEFORE_FLOOR, FLOOR_WAIVED, NOT_WON, Skip, judge
from sf_bridge.provisioning.states import (
    DONE,
    STEP_FETCH,
    STEP_MAP,
    STEPS,
    status_before,
)
from sf_bridge.provisioning.store import UNWON_PARKED, DealStore

log = get_logger(__name__)


class DealNotFound(SfBridgeError):
    """No deal has that id or opportunity id."""

    code = "deal_not_found"


@dataclass(frozen=True)
class ReplayOutcome:
    deal_id: int
    opportunity_id: str
    from_step: str | None
    message: str
    requeued: bool
    refused: bool = False  # the lifecycle after the first close: `lifecycle_refusal`
    named: bool = True  # False: picked by `failed` only


# What is replayable, for `sf-bridge replay` and the console alike. The lifecycle after the
# first close is not: a deal no longer won (`unwon`: the `when_unwon` policy is applied; or
# parked `unwon_after_provisioning`, or with a cancellation that failed) is settled by a person
# with `deals cancel` or `deals keep`, and one being cancelled or cancelled would be sent back
# to the fetch step, that is provisioned again. A deal won again after that is the intake's
# (`changed_after_provisioning`, which a replay does amend; `won_after_cancel`).
CANCEL_FAILED_CODE = "cancel_failed"
IN_LIFECYCLE = (UNWON, CANCELLING)
DECIDED_BY_A_PERSON = (*UNWON_PARKED, CANCEL_FAILED_CODE)  # parked codes: `deals cancel` / `keep`


def replay_refusal(deal: Deal, *, include_skipped: bool = False) -> str | None:
    """Why a replay leaves this deal alone, naming what to run instead, or None when it is
    replayed: a deal on its way, retrying or parked (`needs_attention`), but not one parked no
    longer won or with a failed cancellation, not one un-won, being cancelled or cancelled
    (`lifecycle_refusal`), done, scheduled, or skipped (unless `include_skipped`: provisioned
    on purpose)."""
    refusal = lifecycle_refusal(deal)
    if refusal is not None:
        return refusal
    if deal.status == DONE:
        return "already done; nothing to replay"
    if deal.status == SCHEDULED:
        return "scheduled: its subscription schedule starts in Stripe on its own; nothing to replay"
    if deal.status == SKIPPED and not include_skipped:
        return (
            f"skipped ({deal.last_error_code}): {deal.last_error} Pass --include-skipped "
            "to provision it on purpose."
        )
    return None


def lifecycle_refusal(deal: Deal) -> str | None:
    """Why a replay must not touch this deal of the lifecycle after its first close (a replay
    would provision it again), with what to run instead; None for any other deal."""
    n = deal.id
    settle = f"Run `sf-bridge deals cancel {n}` or `sf-bridge deals keep {n}`."
    if deal.status == NEEDS_ATTENTION and deal.last_error_code in UNWON_PARKED:
        return (
            f"Deal {n} was provisioned and its opportunity is no longer won "
            f"({deal.last_error_code}): a replay does not settle it. {settle}"
        )
    if deal.status == NEEDS_ATTENTION and deal.last_error_code == CANCEL_FAILED_CODE:
        return (
            f"Deal {n}'s cancellation failed: a replay would provision it again. Fix the "
            f"cause, then run `sf-bridge deals cancel {n}` again, or `sf-bridge deals keep {n}`."
        )
    if deal.status == UNWON:
        return (
            f"Deal {n} is unwon: its opportunity left its won stage and the `when_unwon` policy "
            f"is being applied; there is nothing to replay. {settle}"
        )
    if deal.status == CANCELLING:
        return (
            f"Deal {n} is cancelling: it is being cancelled (invoice voided, subscription "
            f"cancelled, entitlements revoked); there is nothing to replay. `sf-bridge deals "
            f"show {n}` follows it."
        )
    if deal.status == CANCELLED:
        return (
            f"Deal {n} is cancelled: a replay would provision it again, so there is nothing "
            "to replay. An opportunity won again in Salesforce is recorded by the intake "
            "(the deal stays cancelled and says so); to bill the customer again, close a new "
            "opportunity won."
        )
    return None


def find_deal(session: Session, ref: str | int) -> Deal:
    """A deal by its number or its opportunity id (15 or 18 characters)."""
    text = str(ref).strip()
    deal: Deal | None = None
    if (number := ids.local_number(text)) is not None:
        deal = session.get(Deal, number)
    else:
        opp_id = ids.opportunity_id(text, error=DealNotFound)
        deal = session.execute(select(Deal).where(Deal.opportunity_id == opp_id)).scalar()
    if deal is None:
        raise DealNotFound(
            f"No deal matches {text!r}.",
            hint="give a deal number or an Opportunity Id as listed by `sf-bridge deals`.",
        )
    return deal


def _comparable(snapshot: dict[str, Any] | None) -> Any:
    if not snapshot:
        return None
    return {k: v for k, v in snapshot.items() if k not in ("attributes", "LastModifiedDate")}


def replay(
    session_factory: sessionmaker[Session],
    deal_ids: Sequence[str | int] = (),
    *,
    failed: bool = False,
    mappings: Any = None,
    crm: CrmGateway | None = None,
    include_skipped: bool = False,
    floor: datetime | None = None,
) -> list[ReplayOutcome]:
    """Requeues the deals named (deal numbers or opportunity ids) and, with `failed`, every
    deal in `needs_attention`. What `replay_refusal` refuses is left alone with its reason:
    done and scheduled deals, skipped ones unless named with `include_skipped`, and the
    lifecycle after the first close (`refused`: no longer won, being cancelled, cancelled; the
    reason says what to run instead). A deal re-read from Salesforce is judged as the fetch
    judges it (no longer won, or closed before `floor`: recorded as skipped, not requeued).
    Each deal is written through the deal store, guarded: one a worker is running now, or
    that changed since it was read, is left alone (replay it again). Returns what was done
    to each."""
    with session_factory() as session:
        deals: dict[int, Deal] = {}
        for ref in deal_ids:
            deal = find_deal(session, ref)
            deals[deal.id] = deal
        named = set(deals)
        if failed:
            for deal in session.execute(
                select(Deal).where(Deal.status == NEEDS_ATTENTION).order_by(Deal.id)
            ).scalars():
                deals[deal.id] = deal
        waived = floor_waived(session, list(deals))
        session.expunge_all()  # read only: what changes is written by the store
    # A deal a replay leaves alone is not read from Salesforce either.
    wanted = [
        d
        for d in deals.values()
        if d.source != "file" and replay_refusal(d, include_skipped=include_skipped) is None
    ]
    fresh = _refetch(crm, wanted)
    version = getattr(mappings, "version", None)
    store = DealStore(session_factory, owner="replay", lease=timedelta(0), clock=utcnow)
    outcomes = []
    for deal in deals.values():
        if deal.status == SKIPPED and include_skipped:
            change = _provision_skipped(deal, fresh)
        else:
            change = _requeue(deal, fresh, version, None if deal.id in waived else floor)
        outcome = _write(store, deal, change)
        outcomes.append(outcome if deal.id in named else replace(outcome, named=False))
    for outcome in outcomes:
        log.info(
            "deal_replayed",
            deal_id=outcome.deal_id,
            opportunity_id=outcome.opportunity_id,
            step=outcome.from_step,
            requeued=outcome.requeued,
            refused=outcome.refused,
        )
    return outcomes


@dataclass(frozen=True)
class _Change:
    """What replay decided for one deal: its outcome, and the deal's new columns and history
    events (none: nothing to write)."""

    outcome: ReplayOutcome
    values: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


def _write(store: DealStore, deal: Deal, change: _Change) -> ReplayOutcome:
    if not change.values:
        return change.outcome
    written = store.requeue(
        deal.id,
        expected_status=deal.status,
        values=change.values,
        events=change.events,
        claimable=change.outcome.requeued,
    )
    if written:
        return change.outcome
    return ReplayOutcome(
        deal.id,
        deal.opportunity_id,
        None,
        "not replayed: a worker is running it now, or it changed since it was read (it may "
        "have been cancelled); look at it again with `sf-bridge deals show` and replay it then",
        False,
    )


def _refetch(crm: CrmGateway | None, deals: list[Deal]) -> dict[str, dict[str, Any]]:
    if crm is None or not deals:
        return {}
    records = crm.fetch_opportunities([d.opportunity_id for d in deals])
    return {str(r.get("Id")): r for r in records}


def floor_waived(session: Session, deal_ids: list[int]) -> set[int]:
    """Which of these deals were provisioned on purpose although won before the floor
    (`replay --include-skipped`): every later fetch and replay honours it."""
    if not deal_ids:
        return set()
    return set(
        session.execute(
            select(DealEvent.deal_id).where(
                DealEvent.deal_id.in_(deal_ids), DealEvent.kind == FLOOR_WAIVED
            )
        ).scalars()
    )


def _requeue(
    deal: Deal,
    fresh: dict[str, dict[str, Any]],
    version: str | None,
    floor: datetime | None,
) -> _Change:
    refusal = replay_refusal(deal)
    if refusal is not None:
        refused = lifecycle_refusal(deal) is not None
        return _Change(
            ReplayOutcome(deal.id, deal.opportunity_id, None, refusal, False, refused=refused)
        )
    step = deal.current_step or STEP_FETCH
    if step not in STEPS:
        step = STEP_FETCH
    reasons: list[str] = []
    values: dict[str, Any] = {}
    opportunity = deal.opportunity
    record = fresh.get(deal.opportunity_id)
    skip = judge(record, floor) if record is not None else None
    if record is not None and skip is not None:
        return _skip(deal, record, skip)
    if record is not None and _comparable(record) != _comparable(deal.opportunity):
        values["opportunity"] = opportunity = record
        reasons.append("the opportunity changed in Salesforce")
    if version is not None and deal.mapping_version and version != deal.mapping_version:
        reasons.append(f"the mappings changed ({deal.mapping_version} -> {version})")
    if reasons and STEPS.index(step) > STEPS.index(STEP_MAP) and opportunity:
        step = STEP_MAP
    if step == STEP_FETCH and opportunity and deal.source == "file":
        step = STEP_MAP
    custom = bool(deal.plan) and (deal.plan or {}).get("plan_kind") == "custom"
    previous = deal.status
    values.update(
        status=status_before(step, custom_plan=custom),
        current_step=step,
        attempts=0,
        next_attempt_at=None,
    )
    why = f" because {' and '.join(reasons)}" if reasons else ""
    message = f"Replayed from {previous} at step {step}{why}."
    event = {
        "kind": "replayed",
        "message": message,
        "detail": {"from_status": previous, "step": step, "last_error": deal.last_error},
    }
    return _Change(
        ReplayOutcome(deal.id, deal.opportunity_id, step, message, True), values, [event]
    )


def _skip(deal: Deal, record: dict[str, Any], skip: Skip) -> _Change:
    """A deal Salesforce now says is not to be provisioned (moved out of its won stage, or its
    Close Date moved before the floor): recorded as skipped, as the fetch records it."""
    values = {
        "opportunity": record,
        "status": SKIPPED,
        "current_step": None,
        "last_error": skip.reason,
        "last_error_code": skip.code,
        "attempts": 0,
        "next_attempt_at": None,
        "writeback_pending": False,
    }
    event = {
        "kind": "skipped",
        "message": skip.reason,
        "detail": {"code": skip.code, "from_status": deal.status, "by": "replay"},
    }
    outcome = ReplayOutcome(deal.id, deal.opportunity_id, None, f"skipped: {skip.reason}", False)
    return _Change(outcome, values, [event])


def _provision_skipped(deal: Deal, fresh: dict[str, dict[str, Any]]) -> _Change:
    """A skipped deal provisioned on purpose: the floor is waived, but a deal Salesforce says
    is not won stays skipped."""
    record = fresh.get(deal.opportunity_id) or deal.opportunity
    values: dict[str, Any] = {}
    if not record:
        values.update(status="received", current_step=STEP_FETCH)
        step = STEP_FETCH
    else:
        still = judge(record)
        if still is not None and still.code == NOT_WON:
            outcome = ReplayOutcome(
                deal.id, deal.opportunity_id, None, f"still skipped: {still.reason}", False
            )
            return _Change(outcome, {"last_error": still.reason, "last_error_code": still.code})
        values.update(
            opportunity=record,
            status=status_before(STEP_MAP, custom_plan=False),
            current_step=STEP_MAP,
        )
        step = STEP_MAP
    previous_reason, previous_code = deal.last_error, deal.last_error_code
    events: list[dict[str, Any]] = []
    if previous_code == BEFORE_FLOOR:
        # Durable: every later fetch of this deal (its lines refreshed, a replay) honours it.
        events.append(
            {
                "kind": FLOOR_WAIVED,
                "message": "The provisioning floor is waived for this deal (provisioned on "
                "purpose).",
                "detail": {"skipped_because": previous_reason},
            }
        )
    values.update(attempts=0, next_attempt_at=None, last_error=None, last_error_code=None)
    message = f"Provisioned on purpose although skipped ({previous_reason}); from step {step}."
    events.append(
        {
            "kind": "replayed",
            "message": message,
            "detail": {"from_status": SKIPPED, "step": step, "skipped_because": previous_reason},
        }
    )
    return _Change(ReplayOutcome(deal.id, deal.opportunity_id, step, message, True), values, events)


__all__ = [
    "IN_LIFECYCLE",
    "DealNotFound",
    "ReplayOutcome",
    "find_deal",
    "lifecycle_refusal",
    "replay",
    "replay_refusal",
]
