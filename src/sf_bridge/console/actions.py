"""The console's actions. Each calls what the CLI calls (`replay`, `mark_paid`, the store's
`queue_cancel` and `keep_unwon`) and adds a line to the deal's history naming who asked for it
from the console. Cancel and Keep are offered, and done, only in the states where they apply
(`cancel_refusal`, `keep_refusal`); otherwise the answer says why not."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm.port import CrmGateway
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import NEEDS_ATTENTION, Deal, DealEvent
from sf_bridge.errors import ConfigurationError, SfBridgeError
from sf_bridge.invoices.mark_paid import mark_paid
from sf_bridge.logging import get_logger
from sf_bridge.mapping import Mappings
from sf_bridge.mapping.money import format_minor
from sf_bridge.provisioning.replay import IN_LIFECYCLE, ReplayOutcome, replay, replay_refusal
from sf_bridge.provisioning.store import (
    CHANGED_CODE,
    UNWON_CODE,
    UNWON_PARKED,
    keep_unwon,
    queue_cancel,
)

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway

log = get_logger(__name__)

EVENT_KIND = "ops_action"
CANCEL_REASON = "cancelled by RevOps"  # what `sf-bridge deals cancel` says when not told
# Parked deals a person decides on: no longer won, won again after that, or a cancellation
# that failed (its fix is to cancel again or keep).
CANCEL_FAILED_CODE = "cancel_failed"
KEEPABLE_CODES = (*UNWON_PARKED, CHANGED_CODE)
CANCELLABLE_CODES = (*KEEPABLE_CODES, CANCEL_FAILED_CODE)


class ActionRefused(SfBridgeError):
    """The deal is not in a state where this action applies."""

    code = "action_refused"


@dataclass(frozen=True)
class ActionResult:
    message: str
    deal_ids: tuple[int, ...]
    notice: str = ""  # which notice the deal's page shows after it


def _event(
    deal_id: int, actor: str, action: str, message: str, detail: dict[str, Any] | None
) -> DealEvent:
    return DealEvent(
        deal_id=deal_id,
        kind=EVENT_KIND,
        message=f"{actor} {message} from the console.",
        detail={"by": actor, "via": "console", "action": action, **(detail or {})},
    )


def _record(
    session_factory: sessionmaker[Session],
    deal_ids: Sequence[int],
    actor: str,
    action: str,
    message: str,
    detail: dict[str, Any] | None = None,
) -> None:
    with transaction(session_factory) as session:
        for deal_id in deal_ids:
            session.add(_event(deal_id, actor, action, message, detail))
    log.info("console_action", action=action, by=actor, deal_ids=list(deal_ids)[:50])


# -- cancel / keep ------------------------------------------------------------------------


def _parked_with(deal: Deal, codes: Sequence[str]) -> bool:
    return deal.status == NEEDS_ATTENTION and deal.last_error_code in codes


def cancel_refusal(deal: Deal) -> str | None:
    """Why the console does not cancel this deal, or None when it does: a provisioned deal
    (`done`) or one parked no longer won, changed after provisioning or with a cancellation
    that failed."""
    if deal.status in ("done", "scheduled") or _parked_with(deal, CANCELLABLE_CODES):
        return None  # a scheduled deal's cancellation cancels its subscription schedule
    if deal.status in ("cancelled", "cancelling"):
        return f"Deal {deal.id} is {deal.status} already."
    return (
        f"Deal {deal.id} is {deal.status}"
        + (f" ({deal.last_error_code})" if deal.last_error_code else "")
        + ": the console cancels a provisioned or scheduled deal or one parked as no longer won "
        f"({UNWON_CODE}) or changed after provisioning ({CHANGED_CODE})."
    )


def keep_refusal(deal: Deal) -> str | None:
    """Why the console does not keep this deal, or None when it does: parked no longer won
    or changed after provisioning (what `keep_unwon` settles)."""
    if _parked_with(deal, KEEPABLE_CODES):
        return None
    return (
        f"Deal {deal.id} is {deal.status}"
        + (f" ({deal.last_error_code})" if deal.last_error_code else "")
        + f": Keep settles only a deal parked as no longer won ({UNWON_CODE}) or changed "
        f"after provisioning ({CHANGED_CODE})."
    )


REFUSAL_HINT = "reload the deal's page: it offers the actions that apply to it now."


def mark_paid_refusal(deal: Deal) -> str | None:
    """Why the console does not record a payment on this deal's invoice now, or None."""
    if deal.status in IN_LIFECYCLE:
        return (
            f"Deal {deal.id} is {deal.status}: its invoice may be voided; record the payment "
            "once the deal has settled."
        )
    if not deal.stripe_invoice_id or deal.invoice_status != "open":
        return f"Deal {deal.id} has no open invoice."
    return None


def _locked_deal(session: Session, deal_id: int, refusal_of: Callable[[Deal], str | None]) -> Deal:
    """The deal, locked for the action's transaction; refused when it does not exist or
    `refusal_of` says why the action does not apply to it now."""
    deal = session.get(Deal, deal_id, with_for_update=True)
    if deal is None:
        raise ActionRefused(f"No deal {deal_id}.", hint=REFUSAL_HINT)
    refusal = refusal_of(deal)
    if refusal is not None:
        raise ActionRefused(refusal, hint=REFUSAL_HINT)
    return deal


def cancel_deal(
    session_factory: sessionmaker[Session], deal_id: int, *, actor: str, reason: str
) -> ActionResult:
    """Queues the deal's cancellation as `sf-bridge deals cancel N --queue-only` does (the
    store's `queue_cancel`); the worker voids, cancels and revokes. Refused with the reason
    when the deal is not in a state where the console cancels."""
    reason = reason.strip() or CANCEL_REASON
    with transaction(session_factory) as session:
        _locked_deal(session, deal_id, cancel_refusal)
        if not queue_cancel(session, deal_id, reason=reason, actor=actor):
            raise ActionRefused(f"Deal {deal_id} cannot be cancelled now.", hint=REFUSAL_HINT)
        session.add(_event(deal_id, actor, "cancel", f"asked to cancel this deal ({reason})", None))
    log.info("console_action", action="cancel", by=actor, deal_ids=[deal_id])
    return ActionResult(f"Deal {deal_id}: cancellation queued ({reason}).", (deal_id,))


def keep_deal(
    session_factory: sessionmaker[Session], deal_id: int, *, actor: str, note: str | None
) -> ActionResult:
    """Keeps the deal as provisioned, as `sf-bridge deals keep N` does (the store's
    `keep_unwon`): billing and entitlements go on, and the deal goes back to its write-back,
    which tells the opportunity "Provisioned" again."""
    note = (note or "").strip() or None
    with transaction(session_factory) as session:
        _locked_deal(session, deal_id, keep_refusal)
        if not keep_unwon(session, deal_id, actor=actor, note=note):
            raise ActionRefused(f"Deal {deal_id} cannot be kept now.", hint=REFUSAL_HINT)
        said = f"kept this deal as provisioned{f' ({note})' if note else ''}"
        session.add(_event(deal_id, actor, "keep", said, {"note": note}))
    log.info("console_action", action="keep", by=actor, deal_ids=[deal_id])
    return ActionResult(f"Deal {deal_id}: kept as provisioned.", (deal_id,))


def replay_deals(
    session_factory: sessionmaker[Session],
    deal_ids: Sequence[int],
    *,
    actor: str,
    action: str,
    mappings: Mappings | None,
    crm: CrmGateway | None,
) -> list[ReplayOutcome]:
    """Requeues the deals as `sf-bridge replay --queue-only` does; the worker carries on.
    Refused, with the reason, when one of them is in a state the console does not replay."""
    with session_factory() as session:
        found = {d.id: d for d in session.query(Deal).filter(Deal.id.in_(list(deal_ids)))}
        for deal_id in deal_ids:
            deal = found.get(deal_id)
            refusal = f"No deal {deal_id}." if deal is None else replay_refusal(deal)
            if refusal is not None:
                raise ActionRefused(refusal, hint=REFUSAL_HINT)
    if mappings is None:
        raise ConfigurationError(
            "The mapping files have problems: a replay would park the deals again.",
            hint="fix the problems the Mappings page lists (or `sf-bridge mappings check`), "
            "then replay.",
        )
    outcomes = replay(session_factory, list(deal_ids), mappings=mappings, crm=crm)
    for outcome in outcomes:
        verb = "replayed this deal" if outcome.requeued else "asked to replay this deal"
        _record(
            session_factory,
            [outcome.deal_id],
            actor,
            action,
            f"{verb} ({outcome.message.rstrip('.')})",
            {"step": outcome.from_step, "requeued": outcome.requeued},
        )
    return outcomes


def mark_invoice_paid(
    session_factory: sessionmaker[Session],
    billing: BillingGateway | None,
    deal_id: int,
    *,
    actor: str,
    amount: Decimal | None = None,
    reference: str | None = None,
) -> ActionResult:
    """Records a wire payment, all that remains (`amount` None) or part of it, as `sf-bridge
    invoices mark-paid --amount --reference` does."""
    with session_factory() as session:
        deal = session.get(Deal, deal_id)
        if deal is None:
            raise ActionRefused(f"No deal {deal_id}.", hint=REFUSAL_HINT)
        # Whether the invoice is open is Stripe's to say (mark_paid asks it); the deal's own
        # state is ours.
        refusal = mark_paid_refusal(deal) if deal.status in IN_LIFECYCLE else None
    if refusal is not None:
        raise ActionRefused(refusal, hint=REFUSAL_HINT)
    if billing is None:
        raise ConfigurationError(
            "Stripe is not configured for this service, so it cannot mark the invoice paid.",
            hint="set STRIPE_API_KEY for `sf-bridge serve`, or run `sf-bridge invoices "
            f"mark-paid {deal_id}` where it is set.",
        )
    reference = (reference or "").strip() or None
    result = mark_paid(session_factory, billing, str(deal_id), amount=amount, reference=reference)
    currency = result.currency or "usd"
    if result.already_paid:
        what = "found it already paid in Stripe"
    elif result.replayed:
        what = f"found the payment ({reference or 'this amount, no reference'}) recorded already"
    elif result.status == "paid":
        what = f"marked it paid (wire, {format_minor(result.amount_paid or 0, currency)})"
    else:
        what = (
            f"recorded {format_minor(result.amount_paid or 0, currency)} paid (wire), "
            f"{format_minor(result.amount_remaining or 0, currency)} still due"
        )
    _record(
        session_factory,
        [deal_id],
        actor,
        "mark_paid",
        f"recorded the payment of invoice {result.invoice_id} and {what}"
        + (f" (reference {reference})" if reference else ""),
        {
            "invoice_id": result.invoice_id,
            "already_paid": result.already_paid,
            "amount": result.amount_paid,
            "amount_remaining": result.amount_remaining,
            "currency": result.currency,
            "reference": reference,
            "replayed": result.replayed,
            "status": result.status,
        },
    )
    notice = (
        "paid_before"
        if result.replayed
        else "paid"
        if result.already_paid or result.status == "paid"
        else "part_paid"
    )
    return ActionResult(
        f"Invoice {result.invoice_id} of deal {deal_id}: {what}.", (deal_id,), notice
    )
