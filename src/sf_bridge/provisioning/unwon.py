"""After the first close: a deal whose opportunity left its won stage (Closed Lost, back to an
open stage) or was deleted.

The intake records the fact (`sf_bridge.provisioning.store.mark_unwon`, in the transaction
that commits the replay id); a worker then claims the deal at its `unwon` step and applies the
mapping's `when_unwon` policy:

    nothing of its own billed yet  -> skipped (no Stripe object is created after)
    review (the default)           -> needs_attention, code unwon_after_provisioning, with the
                                      commands `sf-bridge deals cancel N` / `deals keep N`
    cancel                         -> the cancellation sequence below

The cancellation sequence (step `cancel`; also what `deals cancel N` queues), each step
guarded on the stored ids and on the Stripe object's state, each committed on its own, so a
crash before or after any commit ends in one void and one cancel:

    1. void the deal's invoice when it is open (or uncollectible); a draft is finalized
       first, `auto_advance` false (Stripe voids only finalized invoices)
    2. cancel the subscription unless it is canceled or incomplete_expired already
    3. revoke exactly this deal's grants and mark it `cancelled` (one transaction)
    4. write "Cancelled" and the reason onto the opportunity

A Stripe request in flight when the deal was un-won (or `deals cancel` was asked): the step
had marked itself `stripe_requested` and held the account's lease before sending it, and its
answer is never committed, as the lease is taken back. The `unwon` / `cancel` step is then due
only once that old lease has run out (`store.mark_unwon`), so the request has ended by then, and
finds what it made: the subscription by its stored id, else among the customer's subscriptions
(every status, a list: current, unlike Stripe's search) by its `sf_opportunity_id` metadata,
with its latest invoice. It never decides "nothing billed" while a request may still land.

Each step of the sequence runs `hooks.before_commit(name, deal_id)` before its commit and
`hooks.after_commit` after it (names `invoice_voided`, `subscription_cancelled`, `cancelled`,
`cancel_written_back`): tests raise from them to imitate a crash at exactly that point.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import func, select

from sf_bridge.billing.port import BillingGateway, BillingInvoice, BillingSubscription
from sf_bridge.crm.port import CrmGateway, OpportunityUpdate
from sf_bridge.db.models import EntitlementGrant
from sf_bridge.errors import BillingRejected, PermanentError, TransientError
from sf_bridge.logging import get_logger
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.runner import StepHooks
from sf_bridge.provisioning.states import STEP_CANCEL, STEP_UNWON, UNWON_STEPS
from sf_bridge.provisioning.store import UNWON_CODE, DealStore

log = get_logger(__name__)

UnwonPolicy = Literal["cancel", "review"]
DEFAULT_POLICY: UnwonPolicy = "review"
ENDED = frozenset({"canceled", "incomplete_expired"})
VOIDABLE = frozenset({"open", "uncollectible"})
RETRY_DELAY = timedelta(seconds=30)
CANCELLED_STATUS_TEXT = "Cancelled"


def review_fix(deal_id: int) -> str:
    return (
        f"Run `sf-bridge deals cancel {deal_id}` to void its invoice, cancel its subscription "
        f"and revoke its entitlements, or `sf-bridge deals keep {deal_id}` to keep billing it."
    )


def policy_of(mappings: Any) -> UnwonPolicy:
    value = getattr(mappings, "when_unwon", None)
    return "cancel" if value == "cancel" else DEFAULT_POLICY


class UnwonRunner:
    """Runs the `unwon` and `cancel` steps of the deals a worker claims."""

    def __init__(
        self,
        store: DealStore,
        billing: BillingGateway | None,
        mappings_loader: Callable[[], Any],
        hooks: StepHooks | None = None,
    ) -> None:
        self.store = store
        self.billing = billing
        self.mappings_loader = mappings_loader
        self.hooks = hooks or StepHooks()

    def run_due(self, limit: int = 20) -> list[int]:
        """Claims due `unwon` / `cancel` deals and runs them; returns their ids."""
        claimed = self.store.claim(UNWON_STEPS, limit)
        for deal in claimed:
            try:
                self.run(deal)
            except TransientError as exc:
                log.warning("unwon_step_retry", deal_id=deal.id, error=str(exc)[:300])
                self.store.reschedule(deal.id, RETRY_DELAY)
            except PermanentError as exc:
                self.store.park_unwon(
                    deal.id,
                    reason=f"Cancelling the deal failed: {exc}.",
                    code="cancel_failed",
                    fix=review_fix(deal.id),
                )
        return [d.id for d in claimed]

    def run(self, deal: DealView) -> str:
        if deal.current_step == STEP_UNWON:
            return self._decide(deal)
        if deal.current_step == STEP_CANCEL:
            return self.cancel(deal, reason=deal.last_error or "cancelled by RevOps")
        return "ignored"

    def _decide(self, deal: DealView) -> str:
        reason = deal.last_error or "The opportunity is no longer won."
        subscription = self._subscription(deal)
        if subscription is None and not deal.stripe_invoice_id and not self._grants(deal.id):
            self.store.skip_unwon(
                deal.id, reason=f"{reason} Nothing of its own was billed or granted yet."
            )
            return "skipped"
        mappings = self.mappings_loader()
        if policy_of(mappings) == "cancel":
            return self.cancel(deal, reason=reason, subscription=subscription)
        self.store.park_unwon(
            deal.id,
            reason=f"{reason} It was already provisioned.",
            code=UNWON_CODE,
            fix=review_fix(deal.id),
        )
        return "parked"

    def _subscription(self, deal: DealView) -> BillingSubscription | None:
        """The deal's subscription: by its stored id, else (its creation's answer was never
        committed) by its tag among the customer's subscriptions."""
        if self.billing is None:
            return None
        if deal.stripe_subscription_id:
            return self.billing.get_subscription(deal.stripe_subscription_id)
        return self.billing.find_subscription(
            sf_opportunity_id=deal.opportunity_id, customer=deal.stripe_customer_id
        )

    @staticmethod
    def _finalize_draft(billing: BillingGateway, deal: DealView, invoice_id: str) -> BillingInvoice:
        """A subscription's first invoice still a draft (its finalize never ran, or ran in
        flight): Stripe voids only finalized invoices, deletes only one-off drafts ("if an
        invoice is for a subscription, it must be voided"), and finalizes a draft left with
        `auto_advance` on its own after an hour. So it is finalized with `auto_advance`
        false (no collection, no email on its own), then voided."""
        try:
            return billing.finalize_invoice(
                invoice_id,
                idempotency_key=f"unwon-finalize:{deal.opportunity_id}:{invoice_id}",
                auto_advance=False,
            )
        except BillingRejected:  # finalized meanwhile (by Stripe, or a lost earlier answer)
            return billing.get_invoice(invoice_id)

    def _committed(self, name: str, deal_id: int, commit: Callable[[], Any]) -> Any:
        self.hooks.before_commit(name, deal_id)
        result = commit()
        self.hooks.after_commit(name, deal_id)
        return result

    def _grants(self, deal_id: int) -> int:
        with self.store.db() as session:
            return int(
                session.scalar(
                    select(func.count(EntitlementGrant.id)).where(
                        EntitlementGrant.deal_id == deal_id, EntitlementGrant.active.is_(True)
                    )
                )
                or 0
            )

    def cancel(
        self, deal: DealView, *, reason: str, subscription: BillingSubscription | None = None
    ) -> str:
        billing = self.billing
        if subscription is None and billing is not None:
            subscription = self._subscription(deal)
        invoice_id = deal.stripe_invoice_id or (
            subscription.latest_invoice if subscription else None
        )
        if billing is not None and invoice_id:
            invoice = billing.get_invoice(invoice_id)
            if invoice.status == "draft":
                invoice = self._finalize_draft(billing, deal, invoice_id)
            if invoice.status in VOIDABLE:
                invoice = billing.void_invoice(
                    invoice_id, idempotency_key=f"unwon-void:{deal.opportunity_id}:{invoice_id}"
                )
            if invoice.status == "void" and deal.invoice_status != "void":
                self._committed(
                    "invoice_voided",
                    deal.id,
                    lambda: self.store.record_cancel_step(
                        deal.id,
                        {"invoice_status": "void", "stripe_invoice_id": invoice_id},
                        kind="invoice_voided",
                        message=f"Invoice {invoice_id} voided: {reason}",
                    ),
                )
            elif invoice.status == "paid":
                reason = f"{reason} (invoice {invoice_id} was already paid: refund it in Stripe)"
        if billing is not None and subscription is not None:
            if subscription.status not in ENDED:
                subscription = billing.cancel_subscription(
                    subscription.id,
                    idempotency_key=f"unwon-cancel:{deal.opportunity_id}:{subscription.id}",
                )
            recorded = self.store.events_of_kind([deal.id], ["subscription_cancelled"])
            if subscription.status in ENDED and not recorded:
                ended = subscription.id
                self._committed(
                    "subscription_cancelled",
                    deal.id,
                    lambda: self.store.record_cancel_step(
                        deal.id,
                        {"stripe_subscription_id": ended},
                        kind="subscription_cancelled",
                        message=f"Subscription {ended} cancelled: {reason}",
                    ),
                )
        held, revoked = self._committed(
            "cancelled", deal.id, lambda: self.store.finish_cancel(deal.id, reason=reason)
        )
        log.info("deal_cancelled", deal_id=deal.id, held=held, grants_revoked=revoked)
        return "cancelled" if held else "lost"


def report_cancelled(
    store: DealStore,
    crm: CrmGateway | None,
    mappings_loader: Callable[[], Any],
    limit: int = 200,
    hooks: StepHooks | None = None,
) -> list[int]:
    """Writes "Cancelled" and the reason onto the opportunities of newly cancelled deals, then
    commits that they were told (a crash in between writes the same values again)."""
    if crm is None:
        return []
    cancelled = store.cancelled_to_report(limit)
    if not cancelled:
        return []
    names = getattr(mappings_loader(), "write_back", None)
    updates: list[OpportunityUpdate] = []
    for deal in cancelled:
        values = {"status": CANCELLED_STATUS_TEXT, "error": deal.last_error}
        fields = {
            str(getattr(names, key)): value
            for key, value in values.items()
            if names is not None and getattr(names, key, None)
        }
        if fields and deal.source != "file":
            updates.append(OpportunityUpdate(deal.opportunity_id, fields))
    for result in crm.write_back(updates) if updates else []:
        if not result.ok:
            log.warning(
                "cancelled_write_back_refused",
                opportunity_id=result.opportunity_id,
                error=result.error,
            )
    ids = [d.id for d in cancelled]
    hooks = hooks or StepHooks()
    for deal_id in ids:
        hooks.before_commit("cancel_written_back", deal_id)
    store.cancelled_reported(ids)
    for deal_id in ids:
        hooks.after_commit("cancel_written_back", deal_id)
    return ids
