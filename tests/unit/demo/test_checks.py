"""The demo's expectations catch what is wrong: each check fails on the fact that breaks it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from typing import Any

import pytest

from sf_bridge.demo.checks import (
    check_card_awaiting,
    check_card_paid,
    check_deal,
    check_no_duplicates,
    check_parked,
    check_scheduled,
    check_started,
)
from sf_bridge.demo.facts import DealFacts, DealRow, entitlements_by_feature
from sf_bridge.demo.scenario import SCENARIO
from sf_bridge.mapping.model import WriteBackFields

WRITE_BACK = WriteBackFields(
    status="SF_Bridge_Status__c",
    stripe_customer_id="Stripe_Customer_Id__c",
    stripe_subscription_id="Stripe_Subscription_Id__c",
    invoice_url="Stripe_Invoice_URL__c",
    error="SF_Bridge_Error__c",
)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def row(status: str = "done", source: str = "stream", error: str | None = None) -> DealRow:
    return DealRow("006A", status, None, 1, source, error, None, NOW, NOW)


def enterprise_facts() -> DealFacts:
    """What a correctly provisioned enterprise deal looks like."""
    deal = SCENARIO.deal("enterprise")
    link = "http://127.0.0.1:1/i/in_1"
    facts = DealFacts(deal, "006A", "001A", row=row())
    facts.stripe_customer_id, facts.stripe_subscription_id = "cus_1", "sub_1"
    facts.stripe_invoice_id, facts.hosted_invoice_url = "in_1", link
    facts.plan = {
        "items": [
            {"unit_amount": 2_200_000, "catalog_unit_amount": 2_500_000},
            {"unit_amount": 18_000, "catalog_unit_amount": 20_000},
            {"unit_amount": None, "catalog_unit_amount": 500_000},
        ]
    }
    facts.customer = {"id": "cus_1", "metadata": {"sf_account_id": "001A"}}
    facts.subscription = {
        "id": "sub_1",
        "metadata": {"sf_opportunity_id": "006A"},
        "collection_method": "send_invoice",
        "days_until_due": 45,
        "items": {
            "data": [
                {"price": {"unit_amount": 2_200_000}},
                {"price": {"unit_amount": 18_000}},
                {"price": {"unit_amount": 500_000}},
            ]
        },
    }
    facts.invoice = {
        "id": "in_1",
        "status": "open",
        "hosted_invoice_url": link,
        "invoice_pdf": link + "/pdf",
        "collection_method": "send_invoice",
    }
    facts.grants = {"seats": 150, "advanced_analytics": 1, "sso": 1, "scim": 0}
    facts.entitlements = entitlements_by_feature(
        {
            "entitlements": {
                "seats": {"kind": "seats", "access": True, "limit": 155},
                "advanced_analytics": {"kind": "flag", "access": True, "enabled": True},
                "sso": {"kind": "flag", "access": True, "enabled": True},
            }
        }
    )
    facts.written_back = {
        "SF_Bridge_Status__c": "Provisioned",
        "Stripe_Customer_Id__c": "cus_1",
        "Stripe_Subscription_Id__c": "sub_1",
        "Stripe_Invoice_URL__c": link,
    }
    return facts


def failed(facts: DealFacts) -> list[str]:
    return [c.what for c in check_deal(facts, {"enterprise": facts}, WRITE_BACK) if not c.ok]


def test_a_correct_deal_passes_every_check() -> None:
    assert failed(enterprise_facts()) == []


def _broken(change: str) -> DealFacts:
    facts = enterprise_facts()
    assert facts.subscription is not None
    assert facts.invoice is not None
    if change == "terms":
        facts.subscription["days_until_due"] = 30
    elif change == "catalog_price":
        facts.subscription["items"]["data"][0]["price"]["unit_amount"] = 2_500_000
    elif change == "draft_invoice":
        facts.invoice["status"] = "draft"
    elif change == "no_grant":
        facts.grants.pop("seats")
    elif change == "api_short":
        facts.entitlements["seats"]["limit"] = 100
    elif change == "not_written":
        facts.written_back["Stripe_Subscription_Id__c"] = None
    elif change == "swept":
        facts.row = row(source="sweep")
    elif change == "untagged":
        facts.subscription["metadata"] = {}
    return facts


@pytest.mark.parametrize(
    ("change", "expectation"),
    [
        ("terms", "invoice due 45 days after issue"),
        ("catalog_price", "2 negotiated prices on the subscription"),
        ("draft_invoice", "first invoice open, with payment link and PDF"),
        ("no_grant", "grants seats = 150"),
        ("api_short", "entitlement API shows seats"),
        ("not_written", "Opportunity.Stripe_Subscription_Id__c written back"),
        ("swept", "arrived through the stream"),
        ("untagged", "subscription exists in Stripe, tagged with the opportunity"),
    ],
)
def test_each_broken_fact_fails_its_check(change: str, expectation: str) -> None:
    assert failed(_broken(change)) == [expectation]


def test_a_deal_that_is_not_done_fails_and_says_why() -> None:
    facts = enterprise_facts()
    facts.row = row(status="retrying", error="Stripe answered 500")
    checks = check_deal(facts, {"enterprise": facts}, WRITE_BACK)
    assert [(c.what, c.ok) for c in checks if not c.ok] == [
        ("deal is done", False),
        ("no error recorded", False),
    ]


def test_parked_deal_checks() -> None:
    deal = SCENARIO.deal("unmapped")
    reason = "[unknown_product] product SB-SANDBOX-PLUS-Y is not in the mapping"
    facts = DealFacts(deal, "006B", "001B", row=row("needs_attention", error=reason))
    facts.written_back = {"SF_Bridge_Error__c": reason, "Stripe_Subscription_Id__c": None}
    assert all(c.ok for c in check_parked(facts, WRITE_BACK))

    silent = dataclasses.replace(facts, written_back={"SF_Bridge_Error__c": None})
    assert [c.what for c in check_parked(silent, WRITE_BACK) if not c.ok] == [
        "Opportunity.SF_Bridge_Error__c tells sales why"
    ]
    billed = dataclasses.replace(facts, stripe_subscription_id="sub_9")
    assert "nothing billed while parked" in [
        c.what for c in check_parked(billed, WRITE_BACK) if not c.ok
    ]


class FakeEmulator:
    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self._objects = objects

    def objects(self, kind: str) -> list[dict[str, Any]]:
        return self._objects.get(kind, [])


def test_duplicates_in_stripe_are_caught() -> None:
    facts = [enterprise_facts()]
    one = {
        "customer": [{"metadata": {"sf_account_id": "001A"}}],
        "subscription": [{"metadata": {"sf_opportunity_id": "006A"}}],
    }
    assert all(c.ok for c in check_no_duplicates(FakeEmulator(one), facts))
    two = {k: v * 2 for k, v in one.items()}
    assert [c.ok for c in check_no_duplicates(FakeEmulator(two), facts)] == [False, False]


def scheduled_facts() -> DealFacts:
    """The contract starting next month, as it rests before its start."""
    deal = SCENARIO.deal("starts_next_month")
    facts = DealFacts(deal, "006S", "001S", row=row("scheduled"), contract_start=date(2027, 1, 1))
    start = datetime(2027, 1, 1, tzinfo=UTC)
    facts.stripe_customer_id, facts.stripe_schedule_id = "cus_S", "sub_sched_S"
    facts.schedule = {
        "id": "sub_sched_S",
        "status": "not_started",
        "phases": [{"start_date": int(start.timestamp())}],
    }
    facts.grants, facts.grants_from = {"seats": 20}, {"seats": start}
    facts.entitlements = {"seats": {"access": False, "starts_at": "2027-01-01T00:00:00Z"}}
    facts.written_back = {"SF_Bridge_Status__c": "Scheduled"}
    return facts


def started_facts() -> DealFacts:
    facts = scheduled_facts()
    facts.row = row("done")
    facts.stripe_subscription_id, facts.stripe_invoice_id = "sub_S", "in_S"
    facts.hosted_invoice_url = "http://127.0.0.1:1/i/in_S"
    facts.subscription = {"id": "sub_S", "status": "active", "schedule": "sub_sched_S"}
    facts.invoice = {"id": "in_S", "status": "open"}
    facts.written_back = {
        "SF_Bridge_Status__c": "Provisioned",
        "Stripe_Invoice_URL__c": facts.hosted_invoice_url,
    }
    return facts


def test_a_correct_scheduled_deal_passes_every_check() -> None:
    assert [c for c in check_scheduled(scheduled_facts(), WRITE_BACK) if not c.ok] == []
    assert [c for c in check_started(started_facts(), WRITE_BACK) if not c.ok] == []


@pytest.mark.parametrize(
    ("breaks", "what"),
    [
        (lambda f: setattr(f, "stripe_invoice_id", "in_early"), "nothing billed before the start"),
        (
            lambda f: setattr(f, "grants_from", {"seats": NOW}),
            "entitlements recorded from the contract's start",
        ),
        (
            lambda f: setattr(f, "entitlements", {"seats": {"access": True, "limit": 20}}),
            "entitlement API: no seats before the start",
        ),
        (
            lambda f: setattr(f, "schedule", {"phases": [{"start_date": 0}]}),
            "a subscription schedule starting 2027-01-01",
        ),
        (
            lambda f: setattr(f, "written_back", {"SF_Bridge_Status__c": "Provisioned"}),
            "Opportunity.SF_Bridge_Status__c says Scheduled",
        ),
    ],
)
def test_a_scheduled_deal_check_fails_on_what_breaks_it(breaks: Any, what: str) -> None:
    facts = scheduled_facts()
    breaks(facts)
    failed = [c.what for c in check_scheduled(facts, WRITE_BACK) if not c.ok]
    assert failed == [what]


@pytest.mark.parametrize(
    ("breaks", "what"),
    [
        (lambda f: setattr(f, "invoice", {"status": "draft"}), "its first invoice is open"),
        (
            lambda f: setattr(f, "subscription", {"schedule": None}),
            "the schedule started the subscription",
        ),
        (
            lambda f: setattr(f, "written_back", {"SF_Bridge_Status__c": "Provisioned"}),
            "Opportunity.Stripe_Invoice_URL__c written back",
        ),
    ],
)
def test_a_started_deal_check_fails_on_what_breaks_it(breaks: Any, what: str) -> None:
    facts = started_facts()
    breaks(facts)
    failed = [c.what for c in check_started(facts, WRITE_BACK) if not c.ok]
    assert failed == [what]


@dataclasses.dataclass
class CardMappings:
    write_back: Any = WRITE_BACK
    card_entitlements: str = "at_once"


def card_facts(policy: str = "at_once") -> DealFacts:
    """The self-serve card deal just provisioned, its first invoice unpaid."""
    facts = DealFacts(SCENARIO.deal("self_serve"), "006B", "001B", row=row())
    facts.stripe_subscription_id = "sub_2"
    facts.subscription = {"id": "sub_2", "status": "incomplete"}
    facts.payment_state, facts.payment_reported = "awaiting_payment", "awaiting_payment"
    granted = {"seats": 10, "api_calls": 100_000}
    if policy == "at_once":
        facts.grants = granted
    else:
        facts.pending_grants = granted
    facts.written_back = {"SF_Bridge_Status__c": "Provisioned, awaiting payment"}
    return facts


@pytest.mark.parametrize("policy", ["at_once", "on_first_payment"])
def test_a_card_deal_awaiting_its_payment_passes_as_its_policy_says(policy: str) -> None:
    assert (
        failed_checks(
            check_card_awaiting(card_facts(policy), CardMappings(card_entitlements=policy))
        )
        == []
    )
    # the other policy's grants fail it
    other = "on_first_payment" if policy == "at_once" else "at_once"
    assert failed_checks(
        check_card_awaiting(card_facts(other), CardMappings(card_entitlements=policy))
    )


@pytest.mark.parametrize(
    ("breaks", "what"),
    [
        (lambda f: setattr(f, "payment_state", "paid"), "payment state awaiting_payment"),
        (lambda f: f.written_back.update(SF_Bridge_Status__c="Provisioned"), "says 'Provisioned,"),
        (lambda f: f.subscription.update(status="active"), "subscription incomplete"),
    ],
)
def test_a_card_deal_awaiting_check_fails_on_what_breaks_it(breaks: Any, what: str) -> None:
    facts = card_facts()
    breaks(facts)
    assert any(what in c for c in failed_checks(check_card_awaiting(facts, CardMappings())))


def paid_facts() -> DealFacts:
    facts = card_facts()
    facts.subscription = {"id": "sub_2", "status": "active"}
    facts.payment_state, facts.payment_reported = "paid", "paid"
    facts.written_back = {"SF_Bridge_Status__c": "Provisioned"}
    return facts


@pytest.mark.parametrize(
    ("breaks", "what"),
    [
        (None, ""),
        (lambda f: setattr(f, "payment_state", "awaiting_payment"), "payment state paid"),
        (lambda f: setattr(f, "payment_reported", "awaiting_payment"), "now says 'Provisioned'"),
        (lambda f: f.subscription.update(status="incomplete"), "subscription active"),
        (lambda f: setattr(f, "pending_grants", {"seats": 10}), "none pending"),
    ],
)
def test_a_paid_card_deal_check_fails_on_what_breaks_it(breaks: Any, what: str) -> None:
    facts = paid_facts()
    if breaks is not None:
        breaks(facts)
    failures = failed_checks(check_card_paid(facts, WRITE_BACK, dict(facts.grants)))
    assert failures == [] if breaks is None else any(what in c for c in failures), failures


def failed_checks(checks: list[Any]) -> list[str]:
    return [c.what for c in checks if not c.ok]
