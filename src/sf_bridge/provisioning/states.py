"""The deal state machine as data: steps, the status each one leads to, and what comes next.

    received -> fetched -> mapped -> customer_ready -> subscription_created -> invoice_open
    -> entitled -> done   (written_back is recorded on the way: written_back_at)

A contract starting later rests between: customer_ready -> scheduled (its entitlements dated
from the start, written back as Scheduled); at the start -> subscription_created -> ... done.

`Deal.current_step` always names the next step to run (or the step that failed, while the
deal is `retrying` or `needs_attention`). Custom plans go from customer straight to
entitlements. A fetched deal that is not to be provisioned (no longer won, or won before the
provisioning floor: `sf_bridge.provisioning.eligibility`) is `skipped`, with no next step.
"""

from __future__ import annotations

from sf_bridge.db.models import CANCELLED, NEEDS_ATTENTION, SKIPPED
from sf_bridge.db.models import SCHEDULED as SCHEDULED

STEP_FETCH = "fetch"
STEP_MAP = "map"
STEP_CUSTOMER = "customer"
STEP_SUBSCRIPTION = "subscription"
STEP_INVOICE = "invoice"
STEP_ENTITLEMENTS = "entitlements"
STEP_WRITE_BACK = "write_back"
# After the first close (sf_bridge.provisioning.unwon): the opportunity left its won stage
# (the mapping's `when_unwon` decides), and the cancellation sequence.
STEP_UNWON = "unwon"
STEP_CANCEL = "cancel"
UNWON_STEPS = (STEP_UNWON, STEP_CANCEL)

STEPS = (
    STEP_FETCH,
    STEP_MAP,
    STEP_CUSTOMER,
    STEP_SUBSCRIPTION,
    STEP_INVOICE,
    STEP_ENTITLEMENTS,
    STEP_WRITE_BACK,
)
# Steps run one deal at a time; fetch and write-back run in batches.
DEAL_STEPS = (STEP_MAP, STEP_CUSTOMER, STEP_SUBSCRIPTION, STEP_INVOICE, STEP_ENTITLEMENTS)
BATCH_STEPS = (STEP_FETCH, STEP_WRITE_BACK)
# Steps that write to Stripe on behalf of one account: run under the account's lease.
ACCOUNT_STEPS = (STEP_CUSTOMER, STEP_SUBSCRIPTION, STEP_INVOICE)

STATUS_AFTER = {
    STEP_FETCH: "fetched",
    STEP_MAP: "mapped",
    STEP_CUSTOMER: "customer_ready",
    STEP_SUBSCRIPTION: "subscription_created",
    STEP_INVOICE: "invoice_open",
    STEP_ENTITLEMENTS: "entitled",
    STEP_WRITE_BACK: "done",
}
STATUS_BEFORE = {
    STEP_FETCH: "received",
    STEP_MAP: "fetched",
    STEP_CUSTOMER: "mapped",
    STEP_SUBSCRIPTION: "customer_ready",
    STEP_INVOICE: "subscription_created",
    STEP_ENTITLEMENTS: "invoice_open",
    STEP_WRITE_BACK: "entitled",
}
DONE = "done"
# SCHEDULED: a contract that starts later, provisioned as a subscription schedule and resting
# until Stripe starts the subscription (`sf_bridge.provisioning.schedule_start`).
# Statuses a worker never claims. (A `scheduled` deal is claimed for its remaining steps, then
# rests with no next step.)
SETTLED = (DONE, NEEDS_ATTENTION, CANCELLED, SKIPPED)


def next_step(step: str, *, custom_plan: bool) -> str | None:
    if step == STEP_CUSTOMER and custom_plan:
        return STEP_ENTITLEMENTS
    index = STEPS.index(step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


def status_before(step: str, *, custom_plan: bool) -> str:
    if step == STEP_ENTITLEMENTS and custom_plan:
        return "customer_ready"
    return STATUS_BEFORE[step]
