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
    2. cancel its subscription schedule (a contract starting later) while it is
       not_started or active, else Stripe starts and bills the subscription at the start
    3. cancel the subscription unless it is canceled or incomplete_expired already
    4. revoke exactly this deal's grants and mark it `cancelled` (one transaction)
    5. write "Cancelled" and the reason onto the opportunity (a refused write is retried or
       recorded, as the provisioned write-back does)

An amendment or renewal shares the account's subscription with the deal that made it: its
sequence takes back only its change (`_cancel_change`): 1. void its own invoice (a proration
invoice), 2. take its items off (additions: the amendment step's difference from its lines
to none) or put back what it replaced (renewal, totals: as its change recorded them), tagged
`metadata.sf_reversals` in the same request so it is never done twice, 4. revoke its grants
(and restore those it replaced), 5. as above. The subscription is never cancelled. When that
cannot be done safely the deal is parked `unwon_change_not_reversible` with the reason.

A Stripe request in flight when the deal was un-won (or `deals cancel` was asked): the step
had marked itself `stripe_requested` and held the account's lease before sending it, and its
answer is never committed, as the lease is taken back. The `unwon` / `cancel` step is then due
only once that old lease has run out (`store.mark_unwon`), so the request has ended by then, and
finds what it made: the subscription by its stored id, else among the customer's subscriptions
(every status, a list: current, unlike Stripe's search) by its `sf_opportunity_id` metadata,
with its latest invoice. It never decides "nothing billed" while a request may still land.

Each step of the sequence runs `hooks.before_commit(name, deal_id)` before its commit and
`hooks.after_commit` after it (names `invoice_voided`, `schedule_cancelled`,
`subscription_cancelled`, `subscription_reversed`, `cancelled`, `cancel_written_back`): tests
raise from them to imitate a crash at exactly that point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select

from sf_bridge.billing.port import (
    BillingGateway,
    BillingInvoice,
    BillingSchedule,
    BillingSubscription,
    ItemChange,
    SubscriptionUpdate,
)
from sf_bridge.crm.port import CrmGateway, OpportunityUpdate, WriteBackResult
from sf_bridge.db.models import EntitlementGrant
from sf_bridge.errors import BillingRejected, PermanentError, TransientError
from sf_bridge.logging import get_logger
from sf_bridge.plan import ProvisioningPlan
from sf_bridge.provisioning import amendment
from sf_bridge.provisioning import schedule as schedule_mod
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.provisioning.runner import StepHooks
from sf_bridge.provisioning.states import STEP_CANCEL, STEP_SUBSCRIPTION, STEP_UNWON, UNWON_STEPS
from sf_bridge.provisioning.store import NOT_REVERSIBLE, SHARED, UNWON_CODE, DealStore

log = get_logger(__name__)

UnwonPolicy = Literal["cancel", "review"]
DEFAULT_POLICY: UnwonPolicy = "review"
ENDED = frozenset({"canceled", "incomplete_expired"})
VOIDABLE = frozenset({"open", "uncollectible"})
RETRY_DELAY = timedelta(seconds=30)
CANCELLED_STATUS_TEXT = "Cancelled"
# A schedule Stripe cancels ("only if its status is not_started or active").
SCHEDULE_LIVE = frozenset({"not_started", "active"})
# The subscription's metadata key holding the markers of the changes taken back (un-won).
REVERSALS_KEY = "sf_reversals"
MARKERS_MAX = 500  # Stripe metadata values hold 500 characters


def review_fix(deal_id: int) -> str:
    return (
        f"Run `sf-bridge deals cancel {deal_id}` to void its invoice, cancel its subscription "
        f"and revoke its entitlements, or `sf-bridge deals keep {deal_id}` to keep billing it."
    )


def change_fix(deal_id: int, subscription_id: str) -> str:
    return (
        f"Run `sf-bridge deals cancel {deal_id}` to reverse its change of subscription "
        f"{subscription_id} (its items come off, its own invoice is voided, its entitlements "
        f"revoked; the subscription stays), or `sf-bridge deals keep {deal_id}` to keep it."
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
        change = self._shared(deal, subscription)
        if change is not None:
            return self._decide_change(deal, change, reason)
        schedule = self._schedule(deal)
        if (
            subscription is None
            and schedule is None
            and not deal.stripe_invoice_id
            and not self._grants(deal.id)
        ):
            self.store.skip_unwon(
                deal.id, reason=f"{reason} Nothing of its own was billed or granted yet."
            )
            return "skipped"
        mappings = self.mappings_loader()
        if policy_of(mappings) == "cancel":
            return self.cancel(
                deal, reason=reason, subscription=subscription, schedule=schedule, looked_up=True
            )
        self.store.park_unwon(
            deal.id,
            reason=f"{reason} It was already provisioned.",
            code=UNWON_CODE,
            fix=review_fix(deal.id),
        )
        return "parked"

    def _decide_change(self, deal: DealView, subscription: BillingSubscription, reason: str) -> str:
        """An amendment or renewal of the account's subscription: nothing of its own in
        Stripe (its marker is not on the subscription: its update never landed) and nothing
        granted -> skipped; else reversed (`cancel`) or parked (`review`)."""
        tag = amendment.marker(deal, deal.plan or {})
        if (
            not amendment.applied(subscription, tag)
            and not _tagged(subscription, REVERSALS_KEY, tag)
            and not deal.stripe_invoice_id
            and not self._grants(deal.id)
        ):
            self.store.skip_unwon(
                deal.id,
                reason=f"{reason} Its change of subscription {subscription.id} was not made "
                "and nothing was granted.",
            )
            return "skipped"
        unsafe = self._not_reversible(deal, subscription)
        if unsafe is not None:
            return self._park_change(deal, subscription, reason, unsafe)
        if policy_of(self.mappings_loader()) == "cancel":
            return self.cancel(deal, reason=reason, subscription=subscription)
        self.store.park_unwon(
            deal.id,
            reason=f"{reason} Its change of subscription {subscription.id} was already made.",
            code=UNWON_CODE,
            fix=change_fix(deal.id, subscription.id),
        )
        return "parked"

    def _subscription(self, deal: DealView) -> BillingSubscription | None:
        """The deal's subscription: by its stored id, else (its creation's answer was never
        committed) by its tag among the customer's subscriptions. An amendment or renewal
        whose update's answer was never committed: the account's live subscription, as the
        amendment step finds it (its marker on it says whether the change landed)."""
        if self.billing is None:
            return None
        if deal.stripe_subscription_id:
            return self.billing.get_subscription(deal.stripe_subscription_id)
        if deal.stripe_schedule_id:
            return None  # not started: its schedule holds the subscription, once Stripe makes it
        if amendment.is_change(deal.plan):
            own = (deal.plan or {}).get(amendment.REOPENED_KEY)
            target = str(own["subscription"]) if own else None
            if target is None:
                live = self.store.live_subscription(deal)
                target = live.subscription_id if live is not None else None
            if target is not None:
                return self.billing.get_subscription(target)
        return self.billing.find_subscription(
            sf_opportunity_id=deal.opportunity_id, customer=deal.stripe_customer_id
        )

    @staticmethod
    def _shared(
        deal: DealView, subscription: BillingSubscription | None
    ) -> BillingSubscription | None:
        """The subscription when the deal changed it and did not make it (an amendment or a
        renewal of the account's subscription); None otherwise (a reopened deal changed its
        own subscription: cancelling the deal cancels it)."""
        if subscription is None or not amendment.is_change(deal.plan):
            return None
        if subscription.metadata.get("sf_opportunity_id") == deal.opportunity_id:
            return None
        return subscription

    def _schedule(self, deal: DealView) -> BillingSchedule | None:
        """The deal's subscription schedule: by its stored id, else (the create's answer may
        have been lost: the step was marked requested) by its tag."""
        if self.billing is None:
            return None
        dated = bool((deal.plan or {}).get("contract") or (deal.plan or {}).get("phases"))
        if not deal.stripe_schedule_id and not (dated and deal.requested(STEP_SUBSCRIPTION)):
            return None
        return schedule_mod.find_schedule(self.billing, replace(deal, resumed=True))

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

    def _void(
        self, billing: BillingGateway, deal: DealView, invoice_id: str, reason: str
    ) -> tuple[str, str]:
        """Voids the invoice when it is open (a draft is finalized first), commits that once;
        returns its status and the reason (told when the invoice was paid already)."""
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
        return invoice.status, reason

    def cancel(
        self,
        deal: DealView,
        *,
        reason: str,
        subscription: BillingSubscription | None = None,
        schedule: BillingSchedule | None = None,
        looked_up: bool = False,
    ) -> str:
        """The cancellation sequence (`looked_up`: the subscription and schedule given are
        those the decision just read, none when None)."""
        billing = self.billing
        if subscription is None and billing is not None and not looked_up:
            subscription = self._subscription(deal)
        change = self._shared(deal, subscription)
        if change is not None:
            return self._cancel_change(deal, change, reason)
        if subscription is not None and subscription.status not in ENDED:
            changed_by = [
                other_id
                for other_id, plan in self.store.deals_on_subscription(
                    subscription.id, besides=deal.id
                )
                if amendment.is_change(plan)
            ]
            if changed_by:
                return self._park_shared(deal, subscription, reason, changed_by)
        invoice_id = deal.stripe_invoice_id or (
            subscription.latest_invoice if subscription else None
        )
        if billing is not None and invoice_id:
            _status, reason = self._void(billing, deal, invoice_id, reason)
        if schedule is None and not looked_up:
            schedule = self._schedule(deal)
        if billing is not None and schedule is not None:
            schedule = self._cancel_schedule(billing, deal, schedule, reason)
            if subscription is None and schedule.subscription:
                subscription = billing.get_subscription(schedule.subscription)
            elif subscription is not None:  # the schedule's cancel ended it too
                subscription = billing.get_subscription(subscription.id) or subscription
        if billing is not None and subscription is not None:
            if subscription.status not in ENDED:
                subscription = billing.cancel_subscription(
                    subscription.id,
                    idempotency_key=f"unwon-cancel:{deal.opportunity_id}:{subscription.id}",
                )
            if subscription.status in ENDED:
                self._record_once(
                    deal,
                    "subscription_cancelled",
                    {"stripe_subscription_id": subscription.id},
                    f"Subscription {subscription.id} cancelled: {reason}",
                )
        return self._finish(deal, reason)

    def _finish(self, deal: DealView, reason: str, restore_on: str | None = None) -> str:
        held, revoked = self._committed(
            "cancelled",
            deal.id,
            lambda: self.store.finish_cancel(deal.id, reason=reason, restore_on=restore_on),
        )
        log.info("deal_cancelled", deal_id=deal.id, held=held, grants_revoked=revoked)
        return "cancelled" if held else "lost"

    def _cancel_schedule(
        self, billing: BillingGateway, deal: DealView, schedule: BillingSchedule, reason: str
    ) -> BillingSchedule:
        """A contract starting later: its schedule would create and bill the subscription at
        the start date. Stripe cancels a schedule "and its associated subscription
        immediately (if the subscription schedule has an active subscription)", only while it
        is `not_started` or `active`; `invoice_now` and `prorate` (default true, for an active
        schedule) are sent false, as a subscription's cancel does by default: no final
        invoice. Guarded on its status, committed once."""
        if schedule.status in SCHEDULE_LIVE:
            schedule = billing.cancel_schedule(
                schedule.id,
                idempotency_key=f"unwon-cancel-schedule:{deal.opportunity_id}:{schedule.id}",
                invoice_now=False,
                prorate=False,
            )
        if schedule.status == "canceled":
            self._record_once(
                deal,
                "schedule_cancelled",
                {"stripe_schedule_id": schedule.id},
                f"Subscription schedule {schedule.id} cancelled: {reason}",
            )
        return schedule

    def _record_once(self, deal: DealView, kind: str, values: dict[str, Any], message: str) -> None:
        """Commits one step of the cancellation (`kind`, a crash hook's name too) unless the
        deal's history has it already: a step redone after a crash records nothing twice."""
        if self.store.events_of_kind([deal.id], [kind]):
            return
        self._committed(
            kind,
            deal.id,
            lambda: self.store.record_cancel_step(deal.id, values, kind=kind, message=message),
        )

    # an amendment or renewal of the account's subscription -----------------------------------

    def _not_reversible(self, deal: DealView, subscription: BillingSubscription) -> str | None:
        """Why the deal's change cannot be taken back on its own (None: it can).

        An additions amendment of catalog prices says exactly what it added (its lines): they
        come off, whatever later additions did. A renewal or a totals amendment replaced the
        subscription's items: they are put back as its change recorded them, unless a later
        deal changed the subscription again, the renewal's prices took effect already (a new
        period started at them), or a price to put back is not a catalog price (Stripe makes
        a price of `price_data` for that item alone). A plan line that swapped the plan's
        price in an additions amendment kept no record of the price before."""
        plan = deal.plan_or_fail()
        others = self.store.deals_on_subscription(subscription.id, besides=deal.id)
        replacing = _replaces(plan)
        for later_id, later_plan in others:
            if later_id > deal.id and (replacing or _replaces_stored(later_plan)):
                return (
                    f"Deal {later_id} changed subscription {subscription.id} after it, so "
                    "taking this change back would undo that one too"
                )
        if replacing:
            return self._not_restorable(deal, plan, subscription)
        if any(not i.lookup_key for i in plan.items):
            return "A line of it has a price of its own (no catalog lookup key) to match"
        # a plan line whose price no earlier deal of the subscription had swapped the plan
        # item's price (`amendment.item_changes`) rather than adding to it
        plan_keys = {
            str(i.get("lookup_key"))
            for earlier_id, earlier_plan in others
            if earlier_id < deal.id
            for i in (earlier_plan or {}).get("items", [])
            if i.get("kind") == "plan"
        }
        swapped = [i.lookup_key for i in plan.items if i.kind == "plan"]
        if any(k not in plan_keys for k in swapped):
            return (
                f"Its plan line swapped the price of subscription {subscription.id}'s plan "
                "item, and the price before is not recorded"
            )
        return None

    def _not_restorable(
        self, deal: DealView, plan: ProvisioningPlan, subscription: BillingSubscription
    ) -> str | None:
        what = "a renewal" if plan.intent == "renewal" else "a totals amendment"
        recorded = self.store.replaced_by_change(deal.id)
        if recorded is None:
            return (
                f"It is {what}: what it replaced on subscription {subscription.id} was not "
                "recorded (its change was found made after an answer was lost)"
            )
        ended = recorded.get("period_end")
        if plan.intent == "renewal" and (
            not ended
            or subscription.current_period_start is None
            or subscription.current_period_start >= datetime.fromisoformat(ended)
        ):
            return (
                f"It is a renewal whose prices took effect already: subscription "
                f"{subscription.id} renewed at them"
            )
        now = {i.id: i for i in subscription.items}
        for item_id, price, lookup_key, _quantity in recorded["replaced"]:
            current = now.get(item_id)
            if lookup_key is None and (current is None or current.price != price):
                return (
                    f"It is {what}: the price {price} it replaced is not a catalog price, "
                    "so it cannot be put back"
                )
        return None

    def _park_shared(
        self, deal: DealView, subscription: BillingSubscription, reason: str, others: list[int]
    ) -> str:
        """The deal made the subscription, and amendments or renewals of other deals changed
        it since: cancelling it would end their items too. Parked for a person."""
        names = ", ".join(str(i) for i in others)
        self.store.park_unwon(
            deal.id,
            reason=(
                f"{reason} Deal(s) {names} changed its subscription {subscription.id} since "
                "(amendments, renewals): cancelling it would end theirs too. Nothing was "
                "changed in Stripe."
            ),
            code=SHARED,
            fix=(
                f"Cancel or keep those first (`sf-bridge deals cancel {others[-1]}`), then "
                f"`sf-bridge deals cancel {deal.id}` again, or `sf-bridge deals keep {deal.id}`."
            ),
        )
        return "parked"

    def _park_change(
        self, deal: DealView, subscription: BillingSubscription, reason: str, why: str
    ) -> str:
        self.store.park_unwon(
            deal.id,
            reason=f"{reason} {why}. Nothing was changed in Stripe.",
            code=NOT_REVERSIBLE,
            fix=(
                f"Change subscription {subscription.id} back in Stripe by hand if the change "
                f"is not to stand (its own invoice, if any, voided), or `sf-bridge deals keep "
                f"{deal.id}` to keep it."
            ),
        )
        return "parked"

    def _cancel_change(self, deal: DealView, subscription: BillingSubscription, reason: str) -> str:
        """Reverses exactly the deal's change of the account's subscription: voids its own
        invoice (an `always_invoice` proration invoice), takes its items off (the amendment
        step's difference, from its lines to none), revokes its grants. The subscription and
        the other deals' invoices stay. Guarded like the change itself: the reversal tags
        the subscription (`metadata.sf_reversals`) in the same request, so a replay, or a
        crash after the request, never takes it off twice."""
        billing = self.billing
        assert billing is not None
        unsafe = self._not_reversible(deal, subscription)
        if unsafe is not None:
            return self._park_change(deal, subscription, reason, unsafe)
        plan = deal.plan_or_fail()
        tag = amendment.marker(deal, deal.plan or {})
        voided = False
        if deal.stripe_invoice_id:
            status, reason = self._void(billing, deal, deal.stripe_invoice_id, reason)
            voided = status == "void"
        done = _tagged(subscription, REVERSALS_KEY, tag)
        if subscription.status in ENDED:
            pass  # the subscription ended meanwhile (its first deal cancelled): nothing to take off
        elif not done and not amendment.applied(subscription, tag):
            if deal.stripe_subscription_id and not self.store.events_of_kind(
                [deal.id], ["subscription_reversed"]
            ):
                # its change was committed, but its marker is no longer on the subscription
                # (dropped from the 500 characters, or edited in Stripe): no guessing
                return self._park_change(
                    deal,
                    subscription,
                    reason,
                    f"Its marker {tag} is no longer on subscription {subscription.id}, so "
                    "whether its change is still there cannot be told",
                )
        elif not done:
            if _replaces(plan):
                recorded = self.store.replaced_by_change(deal.id) or {}
                changes = restore_items(subscription, recorded.get("replaced") or [])
            else:
                changes = amendment._difference([], list(subscription.items), plan_lines(plan))
            # its own invoice voided: nothing was billed for the change, so its reversal
            # credits nothing either; else the mapping's proration for amendments
            behavior = "none" if voided else amendment.proration(plan)
            update = SubscriptionUpdate(
                items=changes,
                proration_behavior=behavior,
                metadata={REVERSALS_KEY: _with_tag(subscription, REVERSALS_KEY, tag)},
            )
            subscription = billing.update_subscription(
                subscription.id,
                update,
                idempotency_key=f"unwon-reverse:{deal.opportunity_id}:{subscription.id}:{tag}",
            )
            done = True
        if done:
            self._record_once(
                deal,
                "subscription_reversed",
                {"stripe_subscription_id": subscription.id},
                f"Its change of subscription {subscription.id} taken back: {reason}",
            )
        return self._finish(deal, reason, restore_on=subscription.id if _replaces(plan) else None)


def _replaces(plan: ProvisioningPlan) -> bool:
    """A renewal or a totals amendment: its lines are the subscription's whole state."""
    return plan.intent == "renewal" or plan.amendment_lines == "totals"


def _replaces_stored(plan: Mapping[str, Any] | None) -> bool:
    stored = plan or {}
    return amendment.is_change(stored) and (
        stored.get("intent") == "renewal" or stored.get("amendment_lines") == "totals"
    )


def restore_items(
    subscription: BillingSubscription, replaced: Sequence[Sequence[Any]]
) -> list[ItemChange]:
    """The item changes that put back the items a renewal or totals amendment replaced
    (`[item id, price, lookup key, quantity]` each, as it recorded them): an item it added
    is deleted, one it changed gets its price and quantity back, one it removed is added
    again at its price."""
    before = {str(r[0]): (str(r[1]), int(r[3])) for r in replaced}
    changes: list[ItemChange] = []
    for item in subscription.items:
        was = before.pop(item.id, None)
        if was is None:
            changes.append(ItemChange(item_id=item.id, deleted=True))
        elif was[0] != item.price:
            changes.append(ItemChange(item_id=item.id, price=was[0], quantity=was[1]))
        elif was[1] != item.quantity:
            changes.append(ItemChange(item_id=item.id, quantity=was[1]))
    changes += [ItemChange(price=price, quantity=quantity) for price, quantity in before.values()]
    return changes


def plan_lines(plan: ProvisioningPlan) -> list[dict[str, Any]]:
    """The deal's lines as the amendment step's `from_items` (lookup key, quantity)."""
    return [{"lookup_key": i.lookup_key, "quantity": i.quantity} for i in plan.items]


def _tagged(subscription: BillingSubscription, key: str, tag: str) -> bool:
    return tag in (subscription.metadata.get(key) or "").split(",")


def _with_tag(subscription: BillingSubscription, key: str, tag: str) -> str:
    """The metadata value with `tag` added last, the oldest dropped to fit Stripe's 500."""
    tags = [t for t in (subscription.metadata.get(key) or "").split(",") if t]
    tags.append(tag)
    while len(",".join(tags)) > MARKERS_MAX and len(tags) > 1:
        tags.pop(0)
    return ",".join(tags)


def report_cancelled(
    store: DealStore,
    crm: CrmGateway | None,
    mappings_loader: Callable[[], Any],
    limit: int = 200,
    hooks: StepHooks | None = None,
    max_attempts: int = 8,
) -> list[int]:
    """Writes "Cancelled" and the reason onto the opportunities of newly cancelled deals, then
    commits that they were told (a crash in between writes the same values again). A write
    Salesforce refuses is handled as the provisioned write-back handles it
    (`batch.write_back_batch`): one it may take later (`retryable`: a lock, a limit, the
    call failing) is written again after `RETRY_DELAY`, up to `max_attempts` tries; one it
    refuses (a validation rule, a field permission) is not tried again, and the deal's
    history says so (`write_back_failed`). Returns the ids settled."""
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
    try:
        results = crm.write_back(updates) if updates else []
    except TransientError as exc:
        results = [
            WriteBackResult(u.opportunity_id, False, str(exc)[:300], retryable=True)
            for u in updates
        ]
    refused = {r.opportunity_id: r for r in results if not r.ok}
    later: list[int] = []
    failed: dict[int, str] = {}
    for deal in cancelled:
        result = refused.get(deal.opportunity_id)
        if result is None:
            continue
        log.warning(
            "cancelled_write_back_refused",
            opportunity_id=result.opportunity_id,
            error=result.error,
            retryable=result.retryable,
        )
        if result.retryable and deal.attempts + 1 < max_attempts:
            later.append(deal.id)
        else:
            failed[deal.id] = result.error or "refused"
    written = {u.opportunity_id for u in updates}
    ids = [d.id for d in cancelled if d.id not in later]
    hooks = hooks or StepHooks()
    for deal_id in ids:
        hooks.before_commit("cancel_written_back", deal_id)
    store.cancelled_reported(
        ids,
        refused=failed,
        written=[
            d.id
            for d in cancelled
            if d.opportunity_id in written and d.opportunity_id not in refused
        ],
    )
    store.cancelled_report_later(later, RETRY_DELAY)
    for deal_id in ids:
        hooks.after_commit("cancel_written_back", deal_id)
    return ids
