"""The console's actions. Each calls what the CLI calls (`replay`, `mark_paid`) and adds a
line to the deal's history naming who asked for it from the console."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm.port import CrmGateway
from sf_bridge.db.engine import transaction
from sf_bridge.db.models import DealEvent
from sf_bridge.errors import ConfigurationError
from sf_bridge.invoices.mark_paid import mark_paid
from sf_bridge.logging import get_logger
from sf_bridge.mapping import Mappings
from sf_bridge.provisioning.replay import ReplayOutcome, replay

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway

log = get_logger(__name__)

EVENT_KIND = "ops_action"


@dataclass(frozen=True)
class ActionResult:
    message: str
    deal_ids: tuple[int, ...]


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
            session.add(
                DealEvent(
                    deal_id=deal_id,
                    kind=EVENT_KIND,
                    message=f"{actor} {message} from the console.",
                    detail={"by": actor, "via": "console", "action": action, **(detail or {})},
                )
            )
    log.info("console_action", action=action, by=actor, deal_ids=list(deal_ids)[:50])


def replay_deals(
    session_factory: sessionmaker[Session],
    deal_ids: Sequence[int],
    *,
    actor: str,
    action: str,
    mappings: Mappings | None,
    crm: CrmGateway | None,
) -> list[ReplayOutcome]:
    """Requeues the deals as `sf-bridge replay --queue-only` does; the worker carries on."""
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
) -> ActionResult:
    """Records a wire payment as `sf-bridge invoices mark-paid` does."""
    if billing is None:
        raise ConfigurationError(
            "Stripe is not configured for this service, so it cannot mark the invoice paid.",
            hint="set STRIPE_API_KEY for `sf-bridge serve`, or run `sf-bridge invoices "
            f"mark-paid {deal_id}` where it is set.",
        )
    result = mark_paid(session_factory, billing, str(deal_id))
    what = "found it already paid in Stripe" if result.already_paid else "marked it paid (wire)"
    _record(
        session_factory,
        [deal_id],
        actor,
        "mark_paid",
        f"recorded the payment of invoice {result.invoice_id} and {what}",
        {"invoice_id": result.invoice_id, "already_paid": result.already_paid},
    )
    return ActionResult(f"Invoice {result.invoice_id} of deal {deal_id}: {what}.", (deal_id,))
