"""The demo's expectations, held against the facts read back from database, emulator and org."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from sf_bridge.demo.facts import DealFacts, entitlement_value
from sf_bridge.provisioning.payment import (
    AWAITING_PAYMENT,
    PAID,
    PROVISIONED_AWAITING_PAYMENT,
    card_entitlements_of,
    describe_payment,
)


@dataclass(frozen=True)
class Check:
    deal: str  # deal key, or "" for checks over the whole run
    what: str
    ok: bool
    detail: str = ""


def _meta(obj: dict[str, Any] | None, key: str) -> Any:
    if not obj:
        return None
    return (obj.get("metadata") or {}).get(key)


def _item_amounts(subscription: dict[str, Any] | None) -> list[int]:
    if not subscription:
        return []
    items = (subscription.get("items") or {}).get("data") or []
    amounts = []
    for item in items:
        price = item.get("price") or {}
        if price.get("unit_amount") is not None:
            amounts.append(int(price["unit_amount"]))
    return amounts


def _short(entry: Any) -> str:
    if not isinstance(entry, dict):
        return repr(entry)
    keys = ("access", "limit", "enabled", "unit")
    return ", ".join(f"{k}={entry[k]}" for k in keys if k in entry)


def negotiated_amounts(plan: dict[str, Any] | None) -> list[int]:
    """Unit amounts (minor units) the plan carries that differ from the catalog price."""
    result = []
    for item in (plan or {}).get("items", ()):
        amount, catalog = item.get("unit_amount"), item.get("catalog_unit_amount")
        if amount is not None and amount != catalog:
            result.append(int(amount))
    return result


def _arrived_by_stream(facts: DealFacts) -> Check:
    """The click reached the worker through its stream subscription, not a later sweep."""
    source = facts.row.source if facts.row else None
    return Check(facts.deal.key, "arrived through the stream", source == "stream", f"{source}")


def check_deal(facts: DealFacts, by_key: dict[str, DealFacts], write_back: Any) -> list[Check]:
    """Everything one completed deal must show."""
    key, expect = facts.deal.key, facts.deal.expect
    checks: list[Check] = []

    def add(what: str, ok: bool, detail: str = "") -> None:
        checks.append(Check(key, what, bool(ok), detail))

    add("deal is done", facts.status == "done", f"status {facts.status}")
    checks.append(_arrived_by_stream(facts))
    if facts.status != "done":
        if facts.row and facts.row.last_error:
            add("no error recorded", False, facts.row.last_error)
        return checks

    sub, inv = facts.subscription, facts.invoice
    if expect.plan_kind == "custom":
        add(
            "custom plan: no subscription, no invoice",
            not facts.stripe_subscription_id and not facts.stripe_invoice_id,
            f"subscription {facts.stripe_subscription_id}, invoice {facts.stripe_invoice_id}",
        )
    else:
        add(
            "Stripe customer exists in Stripe",
            facts.customer is not None,
            f"{facts.stripe_customer_id}",
        )
        add(
            "subscription exists in Stripe, tagged with the opportunity",
            sub is not None and _meta(sub, "sf_opportunity_id") == facts.opportunity_id,
            f"{facts.stripe_subscription_id} metadata {sub.get('metadata') if sub else None}",
        )
        if sub is not None:
            add(
                f"collection method {expect.collection_method}",
                sub.get("collection_method") == expect.collection_method,
                f"got {sub.get('collection_method')}",
            )
            if expect.days_until_due is not None:
                add(
                    f"invoice due {expect.days_until_due} days after issue",
                    sub.get("days_until_due") == expect.days_until_due,
                    f"got {sub.get('days_until_due')}",
                )
        if expect.negotiated_prices:
            negotiated = negotiated_amounts(facts.plan)
            charged = _item_amounts(sub)
            add(
                f"{expect.negotiated_prices} negotiated prices on the subscription",
                len(negotiated) == expect.negotiated_prices
                and all(a in charged for a in negotiated),
                f"plan overrides {negotiated}, subscription item prices {charged}",
            )
        if expect.collection_method == "send_invoice":
            add(
                "first invoice open, with payment link and PDF",
                inv is not None
                and inv.get("status") == "open"
                and bool(inv.get("hosted_invoice_url"))
                and bool(inv.get("invoice_pdf"))
                and facts.hosted_invoice_url == inv.get("hosted_invoice_url"),
                f"invoice {facts.stripe_invoice_id} status {inv.get('status') if inv else None}",
            )
        else:
            add(
                "first invoice charged automatically",
                inv is not None and inv.get("collection_method") == "charge_automatically",
                f"invoice {facts.stripe_invoice_id} status {inv.get('status') if inv else None}",
            )

    if expect.same_customer_as:
        first = by_key[expect.same_customer_as]
        add(
            f"reuses the Stripe customer of '{first.deal.name}'",
            facts.stripe_customer_id is not None
            and facts.stripe_customer_id == first.stripe_customer_id,
            f"{facts.stripe_customer_id} vs {first.stripe_customer_id}",
        )

    if facts.pending_grants and not facts.grants:
        return checks  # a card deal granting on its first payment: check_card_awaiting
    add("entitlements granted by this deal", bool(facts.grants), f"{facts.grants}")
    for feature, value in expect.entitlements.items():
        granted = facts.grants.get(feature)
        add(
            f"grants {feature} = {value}",
            granted is not None and int(granted) == int(value),
            f"granted {granted}",
        )
    if facts.entitlements_error:
        add("entitlement API answers", False, facts.entitlements_error)
    else:
        for feature, value in sorted(facts.grants.items()):
            if not value:
                continue  # a flag left off, or a zero limit: nothing to see in the API
            entry = facts.entitlements.get(feature)
            effective = entitlement_value(entry)
            ok = entry is not None and (
                effective is True
                if isinstance(effective, bool)
                else int(effective or 0) >= int(value)
            )
            add(f"entitlement API shows {feature}", ok, f"{_short(entry)}")

    fields = write_back
    expected_back = {
        getattr(fields, "stripe_customer_id", None): facts.stripe_customer_id,
        getattr(fields, "stripe_subscription_id", None): facts.stripe_subscription_id,
        getattr(fields, "invoice_url", None): facts.hosted_invoice_url,
    }
    status_field = getattr(fields, "status", None)
    if status_field:
        add(
            f"Opportunity.{status_field} written back",
            bool(facts.written_back.get(status_field)),
            f"{facts.written_back.get(status_field)!r}",
        )
    for name, stored in expected_back.items():
        if name and stored:
            add(
                f"Opportunity.{name} written back",
                facts.written_back.get(name) == stored,
                f"{facts.written_back.get(name)!r}",
            )
    return checks


def check_parked(facts: DealFacts, write_back: Any) -> list[Check]:
    """The unmapped deal parks with a reason naming the product, and Salesforce shows it."""
    key, expect = facts.deal.key, facts.deal.expect
    needle = expect.parks_with or ""
    checks = [
        _arrived_by_stream(facts),
        Check(
            key,
            "parks in needs_attention",
            facts.status == "needs_attention",
            f"status {facts.status}",
        ),
    ]
    reason = (facts.row.last_error if facts.row else None) or ""
    checks.append(Check(key, f"reason names {needle}", needle in reason, reason))
    checks.append(
        Check(
            key,
            "nothing billed while parked",
            not facts.stripe_subscription_id and not facts.stripe_invoice_id,
            f"subscription {facts.stripe_subscription_id}, invoice {facts.stripe_invoice_id}",
        )
    )
    error_field = getattr(write_back, "error", None)
    if error_field:
        written = facts.written_back.get(error_field) or ""
        checks.append(
            Check(
                key,
                f"Opportunity.{error_field} tells sales why",
                needle in str(written),
                repr(written),
            )
        )
    ids_field = getattr(write_back, "stripe_subscription_id", None)
    if ids_field:
        written = facts.written_back.get(ids_field)
        checks.append(
            Check(
                key,
                "the Opportunity is not marked provisioned while parked",
                not written,
                f"{ids_field} = {written!r}",
            )
        )
    return checks


def check_no_duplicates(emulator: Any, all_facts: list[DealFacts]) -> list[Check]:
    """Exactly one customer per customer key (an account's, in one currency, by default) and
    one subscription per paid deal in Stripe."""
    customers = emulator.objects("customer")
    per_account = Counter(
        _meta(c, "sf_customer_key") or _meta(c, "sf_account_id") for c in customers
    )
    dupes = {acct: n for acct, n in per_account.items() if n > 1}
    subs = emulator.objects("subscription")
    per_opp = Counter(_meta(s, "sf_opportunity_id") for s in subs)
    sub_dupes = {opp: n for opp, n in per_opp.items() if n > 1}
    paid = [f for f in all_facts if f.deal.expect.plan_kind == "paid"]
    accounts = {f.account_id for f in paid}
    return [
        Check("", "one Stripe customer per customer key",
              not dupes and len(customers) >= len(accounts),
              f"{len(customers)} customers for {len(accounts)} billed accounts"),
        Check("", "one subscription per paid deal", not sub_dupes and len(subs) == len(paid),
              f"{len(subs)} subscriptions for {len(paid)} paid deals"),
    ]  # fmt: skip


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _dated_from_start(facts: DealFacts) -> tuple[bool, str]:
    start = _start_of(facts.contract_start) if facts.contract_start else None
    dates = {f: (d.isoformat() if d else None) for f, d in facts.grants_from.items()}
    ok = bool(dates) and start is not None and all(d == start for d in facts.grants_from.values())
    return ok, f"{dates}"


def check_scheduled(facts: DealFacts, write_back: Any) -> list[Check]:
    """A contract starting next month, before its start: a Stripe subscription schedule that
    begins on the start date, nothing billed, entitlements only from the start, and the
    Opportunity told it is scheduled."""
    key, start = facts.deal.key, facts.contract_start
    checks: list[Check] = []

    def add(what: str, ok: bool, detail: str = "") -> None:
        checks.append(Check(key, what, bool(ok), detail))

    add("deal is scheduled", facts.status == "scheduled", f"status {facts.status}")
    checks.append(_arrived_by_stream(facts))
    schedule = facts.schedule or {}
    phases = schedule.get("phases") or [{}]
    begins = phases[0].get("start_date")
    add(
        f"a subscription schedule starting {start}",
        start is not None and begins == int(_start_of(start).timestamp()),
        f"{facts.stripe_schedule_id} {schedule.get('status')}, phase 1 from {begins}",
    )
    add(
        "nothing billed before the start",
        not facts.stripe_subscription_id and not facts.stripe_invoice_id,
        f"subscription {facts.stripe_subscription_id}, invoice {facts.stripe_invoice_id}",
    )
    ok, detail = _dated_from_start(facts)
    add("entitlements recorded from the contract's start", ok, detail)
    for feature in sorted(facts.grants):
        entry = facts.entitlements.get(feature) or {}
        add(
            f"entitlement API: no {feature} before the start",
            entry.get("access") is False and str(entry.get("starts_at", "")).startswith(str(start)),
            f"{_short(entry)}",
        )
    status_field = getattr(write_back, "status", None)
    if status_field:
        written = facts.written_back.get(status_field)
        add(f"Opportunity.{status_field} says Scheduled", written == "Scheduled", repr(written))
    return checks


def check_started(facts: DealFacts, write_back: Any) -> list[Check]:
    """The same deal once Stripe's clock passed the start: the schedule created the
    subscription, its first invoice is open and its link is on the Opportunity."""
    key = facts.deal.key
    checks: list[Check] = []

    def add(what: str, ok: bool, detail: str = "") -> None:
        checks.append(Check(key, what, bool(ok), detail))

    add("deal is done after the start", facts.status == "done", f"status {facts.status}")
    sub = facts.subscription or {}
    add(
        "the schedule started the subscription",
        bool(sub) and sub.get("schedule") == facts.stripe_schedule_id,
        f"{facts.stripe_subscription_id} {sub.get('status')}",
    )
    invoice = facts.invoice or {}
    add(
        "its first invoice is open",
        invoice.get("status") == "open",
        f"{facts.stripe_invoice_id} {invoice.get('status')}",
    )
    ok, detail = _dated_from_start(facts)
    add("entitlements in effect from the contract's start", ok, detail)
    for feature, value in facts.deal.expect.entitlements.items():
        granted = facts.grants.get(feature)
        add(f"grants {feature} = {value}", granted == value, f"granted {granted}")
    url_field = getattr(write_back, "invoice_url", None)
    if url_field:
        written = facts.written_back.get(url_field)
        add(
            f"Opportunity.{url_field} written back",
            bool(written) and written == facts.hosted_invoice_url,
            repr(written),
        )
    status_field = getattr(write_back, "status", None)
    if status_field:
        written = facts.written_back.get(status_field)
        add(f"Opportunity.{status_field} says Provisioned", written == "Provisioned", repr(written))
    return checks


def _status_text(facts: DealFacts, write_back: Any) -> tuple[str | None, Any]:
    field_name = getattr(write_back, "status", None)
    return field_name, facts.written_back.get(field_name) if field_name else None


def check_card_awaiting(facts: DealFacts, mappings: Any) -> list[Check]:
    """A card deal just provisioned, its first invoice not paid yet: the payment state on the
    deal (what `deals show` prints), the Opportunity told it awaits the payment, and the
    grants as the mapping's `card_payments.entitlements` says (the example: at once)."""
    key, expect = facts.deal.key, facts.deal.expect
    policy = card_entitlements_of(mappings)
    sub = facts.subscription or {}
    checks = [
        Check(
            key,
            f"payment state {expect.payment_state} ({describe_payment(expect.payment_state)})",
            facts.payment_state == expect.payment_state,
            f"payment_state {facts.payment_state}",
        ),
        Check(
            key,
            "subscription incomplete until the first payment",
            sub.get("status") == "incomplete",
            f"{facts.stripe_subscription_id} {sub.get('status')}",
        ),
    ]
    field_name, written = _status_text(facts, mappings.write_back)
    if field_name:
        checks.append(
            Check(
                key,
                f"Opportunity.{field_name} says {PROVISIONED_AWAITING_PAYMENT!r}",
                written == PROVISIONED_AWAITING_PAYMENT,
                repr(written),
            )
        )
    wanted = expect.entitlements
    if policy == "at_once":
        checks.append(
            Check(
                key,
                "entitlements in effect at once (card_payments: at_once), none pending",
                bool(facts.grants) and not facts.pending_grants,
                f"in effect {facts.grants}, pending {facts.pending_grants}",
            )
        )
    else:
        checks.append(
            Check(
                key,
                "entitlements pending until the first payment (card_payments: on_first_payment)",
                not facts.grants
                and all(facts.pending_grants.get(f) == v for f, v in wanted.items()),
                f"in effect {facts.grants}, pending {facts.pending_grants}",
            )
        )
    return checks


def check_card_paid(facts: DealFacts, write_back: Any, before: dict[str, int]) -> list[Check]:
    """The same card deal once its first invoice is paid on the payment page (the webhook
    told sf-bridge): paid on the deal, the subscription active, the Opportunity told, and
    every grant in effect (those in effect before, or those pending until now)."""
    key = facts.deal.key
    sub = facts.subscription or {}
    checks = [
        Check(
            key,
            f"payment state {PAID} after the first payment ({describe_payment(PAID)})",
            facts.payment_state == PAID,
            f"payment_state {facts.payment_state}",
        ),
        Check(
            key,
            "subscription active after the first payment",
            sub.get("status") == "active",
            f"{facts.stripe_subscription_id} {sub.get('status')}",
        ),
        Check(
            key,
            "entitlements in effect after the payment, none pending",
            bool(facts.grants) and not facts.pending_grants and facts.grants == before,
            f"in effect {facts.grants}, pending {facts.pending_grants}",
        ),
    ]
    field_name, written = _status_text(facts, write_back)
    if field_name:
        checks.append(
            Check(
                key,
                f"Opportunity.{field_name} now says 'Provisioned'",
                written == "Provisioned" and facts.payment_reported == PAID,
                f"{written!r} (told {facts.payment_reported})",
            )
        )
    return checks


def payment_told(facts: DealFacts) -> bool:
    """The Opportunity was told the deal's current payment state (for waiting on it)."""
    return facts.payment_state not in (None, AWAITING_PAYMENT) and (
        facts.payment_reported == facts.payment_state
    )
