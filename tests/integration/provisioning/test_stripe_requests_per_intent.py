"""The Stripe requests each intent sends, held exactly: one deal of each intent, closed in the
sandbox org, provisioned by the worker (the real Salesforce client, mapping engine, Stripe SDK)
against the Stripe emulator, whose request log says what was sent (method, route, and the
parameters that matter: `proration_behavior`, the schedule's phases, the coupon).

docs/operations.md, "Stripe requests per intent", lists the same sequences: change one, change
the other."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.billing.stripe_gateway import StripeGateway
from sf_bridge.config import Settings
from sf_bridge.crm.salesforce import SalesforceCrm
from sf_bridge.db.models import Deal, EntitlementGrant
from sf_bridge.mapping import Mappings, load_mappings
from sf_bridge.plan import add_months
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.replay import replay
from sf_bridge.provisioning.retry import request_retrier
from sf_bridge.provisioning.store import (
    keep_unwon,
    mark_changed_after_provisioning,
    mark_unwon,
    note_won_after_cancel,
    queue_cancel,
)
from sf_bridge.provisioning.worker import Worker
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox, prepare_for_mappings
from sf_bridge.sandbox.stripe_emulator import RequestRecord, StripeEmulator
from tests.fixtures.mapping import REPO_ROOT, copy_mappings
from tests.fixtures.provisioning import FAST_RETRY, drain
from tests.integration.intake.conftest import API_VERSION, credentials_for

SF = "salesforce.yaml"
Edits = dict[str, list[tuple[str, str]]]


@dataclass
class Stack:
    """The sandbox org, the Stripe emulator and a worker on the given mappings."""

    org: SalesforceSandbox
    emu: StripeEmulator
    mappings: Mappings
    factory: sessionmaker[Session]
    crm: SalesforceCrm
    worker: Worker
    mark: int = 0
    accounts: dict[str, str] = field(default_factory=dict)

    def account(self, name: str) -> str:
        if name not in self.accounts:
            self.accounts[name] = self.org.create_account(
                name, Billing_Email__c=f"ap@{name.lower().replace(' ', '')}.example"
            )
        return self.accounts[name]

    def close(self, account: str, lines: list[dict[str, Any]], **fields: Any) -> str:
        """A deal closed won in the org, enqueued as the intake would, provisioned."""
        fields.setdefault("Payment_Method__c", "Invoice")
        fields.setdefault("Payment_Terms__c", "Net 30")
        opp = self.org.create_opportunity(
            self.account(account),
            f"{account} deal",
            lines,
            stage="Closed Won",
            currency="USD",
            **fields,
        )
        with self.factory() as session, session.begin():
            enqueue_opportunities(session, [opp], source="test")
        self.settle(opp, "done", "scheduled", "needs_attention")
        return opp

    def deal(self, opp: str) -> Deal:
        with self.factory() as session:
            return session.execute(select(Deal).where(Deal.opportunity_id == opp)).scalar_one()

    def settle(self, opp: str, *statuses: str) -> Deal:
        def check() -> bool:
            deal = self.deal(opp)
            return (
                deal.status in statuses and deal.current_step is None and not deal.writeback_pending
            )

        drain(self.worker, check)
        return self.deal(opp)

    def sent(self) -> list[RequestRecord]:
        """The Stripe requests sent since the last call (answered ones: none are retried
        here)."""
        records = self.emu.requests()
        new, self.mark = records[self.mark :], len(records)
        return new

    def written(self, opp: str) -> dict[str, Any]:
        """The fields sf-bridge wrote back onto the opportunity (those the mapping names)."""
        record = self.org.get_opportunity(opp)
        names = [name for _, name in self.mappings.write_back.named()]
        return {name: record.get(name) for name in names}

    def grants(self, opp: str) -> dict[str, int]:
        deal = self.deal(opp)
        with self.factory() as session:
            rows = session.scalars(
                select(EntitlementGrant).where(
                    EntitlementGrant.deal_id == deal.id, EntitlementGrant.active.is_(True)
                )
            ).all()
            return {r.feature: r.value for r in rows}


def routes(records: list[RequestRecord]) -> list[str]:
    return [r.route for r in records]


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    sandbox = SalesforceSandbox(port=0, long_poll_seconds=1.0).start()
    yield sandbox
    sandbox.stop()


@pytest.fixture
def make_stack(
    org: SalesforceSandbox, session_factory: sessionmaker[Session], tmp_path: Path
) -> Iterator[Any]:
    emulators: list[StripeEmulator] = []

    def make(edits: Edits | None = None) -> Stack:
        mappings = load_mappings(copy_mappings(tmp_path / "mappings", edits))
        prepare_for_mappings(org, mappings)
        emu = StripeEmulator().start()
        emulators.append(emu)
        emu.seed_catalog(mappings.catalog_prices())
        billing = StripeGateway(emu.api_key, api_base=emu.url, retry=request_retrier(FAST_RETRY))
        crm = SalesforceCrm(credentials_for(org), api_version=API_VERSION, fields=mappings)
        settings = Settings(SF_BRIDGE_WORKER_CONCURRENCY=1, SF_BRIDGE_MAX_ATTEMPTS=6)  # type: ignore[call-arg]
        worker = Worker(
            settings,
            session_factory,
            billing,
            crm,
            lambda: mappings,
            policy=FAST_RETRY,
            lease=timedelta(seconds=30),
        )
        stack = Stack(org, emu, mappings, session_factory, crm, worker)
        stack.sent()
        return stack

    yield make
    for emu in emulators:
        emu.stop()


# The parameters that tell the intents apart, in the order they are shown. A value that
# differs from run to run (a timestamp) shows as the name alone; the deal's opportunity id
# inside a value shows as {opp}.
SHOWN: dict[str, str] = {
    "lookup_keys[0]": "lookup_keys[]",
    "collection_method": "collection_method",
    "payment_behavior": "payment_behavior",
    "backdate_start_date": "backdate_start_date",
    "end_behavior": "end_behavior",
    "proration_behavior": "proration_behavior",
    "duration": "duration",
    "percent_off": "percent_off",
    "amount_off": "amount_off",
    "duration_in_months": "duration_in_months",
    "discounts[0][coupon]": "coupon",
    "invoice_now": "invoice_now",
    "prorate": "prorate",
}
VALUELESS = {"backdate_start_date"}


def shown(record: RequestRecord, opp: str) -> str:
    """A request as docs/operations.md's table names it: route, then what matters."""
    parts = [record.route]
    params = record.params
    for name, label in SHOWN.items():
        if name in params:
            value = params[name].replace(opp, "{opp}")
            parts.append(label if name in VALUELESS else f"{label}={value}")
    if record.route == "POST /v1/subscription_schedules":
        parts.append(f"phases={record.indices('phases')}")
        if "phases[0][discounts][0][coupon]" in params:
            parts.append(
                "coupon=" + params["phases[0][discounts][0][coupon]"].replace(opp, "{opp}")
            )
    deleted = [k for k, v in params.items() if k.endswith("[deleted]") and v == "true"]
    if deleted:
        parts.append(f"items_deleted={len(deleted)}")
    return " ".join(parts)


# What each intent sends, exactly, for one deal (docs/operations.md, "Stripe requests per
# intent", holds the same list). `GET /v1/prices` is sent the first time a worker uses a
# lookup key (prices are cached for 5 minutes), so it shows where the deal's price is new.
EXPECTED: dict[str, list[str]] = {
    "new business, starting now": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/subscriptions collection_method=send_invoice",
        "POST /v1/invoices/{id}/finalize",
    ],
    "new business, contract starting later": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/subscription_schedules end_behavior=cancel phases=1",
    ],
    "new business, started in the past, past_start: start_now": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/subscriptions collection_method=send_invoice",
        "POST /v1/invoices/{id}/finalize",
    ],
    "new business, started in the past, past_start: backdate": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/subscriptions collection_method=send_invoice backdate_start_date",
        "POST /v1/invoices/{id}/finalize",
    ],
    "new business, ramp of two yearly steps": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/subscription_schedules end_behavior=cancel phases=2",
    ],
    "new business, discount 10% for 3 months": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/coupons duration=repeating percent_off=10.0 duration_in_months=3",
        "POST /v1/subscriptions collection_method=send_invoice coupon=sfb-{opp}-10pct-repeating3m",
        "POST /v1/invoices/{id}/finalize",
    ],
    "new business, discount 500.00 off every invoice": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/coupons duration=forever amount_off=50000",
        "POST /v1/subscriptions collection_method=send_invoice coupon=sfb-{opp}-50000usd-forever",
        "POST /v1/invoices/{id}/finalize",
    ],
    "new business, charged to a card": [
        "POST /v1/customers",
        "GET /v1/prices lookup_keys[]=team_monthly_usd",
        "POST /v1/subscriptions collection_method=charge_automatically"
        " payment_behavior=default_incomplete",
        "GET /v1/invoices/{id}",
    ],
    "amendment, upsell (additions, create_prorations)": [
        "GET /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id} proration_behavior=create_prorations",
    ],
    "amendment, downgrade (totals, create_prorations)": [
        "GET /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id} proration_behavior=create_prorations",
    ],
    "amendment, plan change (totals)": [
        "GET /v1/subscriptions/{id}",
        "GET /v1/prices lookup_keys[]=enterprise_monthly_usd",
        "POST /v1/subscriptions/{id} proration_behavior=create_prorations",
    ],
    "amendment, proration: always_invoice": [
        "GET /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id} proration_behavior=always_invoice",
        "POST /v1/invoices/{id}/finalize",
    ],
    "amendment, proration: none": [
        "GET /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id} proration_behavior=none",
    ],
    "amendment inferred (Type empty, an add-on only)": [
        "GET /v1/subscriptions/{id}",
        "GET /v1/prices lookup_keys[]=analytics_monthly_usd",
        "POST /v1/subscriptions/{id} proration_behavior=create_prorations",
    ],
    "new business inferred (Type empty, a plan line), its customer known": [
        "GET /v1/prices lookup_keys[]=enterprise_monthly_usd",
        "POST /v1/subscriptions collection_method=send_invoice",
        "POST /v1/invoices/{id}/finalize",
    ],
    "renewal, price increase": [
        "GET /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id} proration_behavior=none",
    ],
    "un-won, when_unwon: cancel": [
        "GET /v1/subscriptions/{id}",
        "GET /v1/invoices/{id}",
        "POST /v1/invoices/{id}/void",
        "DELETE /v1/subscriptions/{id}",
    ],
    "un-won, when_unwon: review": [
        "GET /v1/subscriptions/{id}",
    ],
    "un-won, then deals cancel": [
        "GET /v1/subscriptions/{id}",
        "GET /v1/invoices/{id}",
        "POST /v1/invoices/{id}/void",
        "DELETE /v1/subscriptions/{id}",
    ],
    "un-won, then deals keep": [],
    "un-won amendment (upsell), when_unwon: cancel": [
        "GET /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id} proration_behavior=create_prorations",
    ],
    "un-won, contract starting later, when_unwon: cancel": [
        "GET /v1/subscription_schedules/{id}",
        "POST /v1/subscription_schedules/{id}/cancel invoice_now=false prorate=false",
    ],
    "reopened and closed again, at the won event": [],
    "reopened and closed again, replayed": [
        "GET /v1/subscriptions/{id}",
        "POST /v1/subscriptions/{id} proration_behavior=create_prorations",
    ],
    "won again after cancel": [],
}


def sent_as_shown(stack: Stack, opp: str) -> list[str]:
    """The requests sent since the last look, as the table shows them; each was answered
    once (no retries here) and each POST carried an Idempotency-Key."""
    records = stack.sent()
    for record in records:
        assert record.status == 200, (record.route, record.status)
        assert not record.replayed
        # Stripe takes keys on POST only (GET and DELETE are idempotent by definition)
        assert record.method != "POST" or record.idempotency_key, record.route
    return [shown(r, opp) for r in records]


TEAM = "SB-TEAM-M"
TODAY = datetime.now(UTC).date()


def team(quantity: int, price: float = 15.0, **line: Any) -> dict[str, Any]:
    return {"product_code": TEAM, "quantity": quantity, "unit_price": price, **line}


def epoch(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


def no_anchor_moved(stack: Stack) -> None:
    """Co-termination: no update moves the billing cycle anchor or its period."""
    for record in stack.emu.requests("POST /v1/subscriptions/{id}"):
        assert not any(k.startswith("billing_cycle_anchor") for k in record.params)


def period_end(stack: Stack, subscription_id: str | None) -> Any:
    assert subscription_id is not None
    return stack.emu.get(subscription_id)["items"]["data"][0]["current_period_end"]


def quantities(stack: Stack, subscription_id: str | None) -> dict[str, int]:
    assert subscription_id is not None
    items = stack.emu.get(subscription_id)["items"]["data"]
    return {i["price"].get("lookup_key") or i["price"]["id"]: i["quantity"] for i in items}


# -- new business ---------------------------------------------------------------------------


def test_new_business_starting_now_creates_a_subscription_and_finalizes_its_invoice(
    make_stack: Any,
) -> None:
    s = make_stack()
    opp = s.close("Acme", [team(5)])
    assert sent_as_shown(s, opp) == EXPECTED["new business, starting now"]
    deal = s.deal(opp)
    assert deal.status == "done", deal.last_error
    assert s.grants(opp)["seats"] == 5
    written = s.written(opp)
    assert written["SF_Bridge_Status__c"] == "Provisioned"
    assert written["Stripe_Subscription_Id__c"] == deal.stripe_subscription_id
    assert written["Stripe_Invoice_URL__c"] == deal.hosted_invoice_url


def test_a_contract_starting_later_is_one_schedule_and_nothing_invoiced(make_stack: Any) -> None:
    s = make_stack()
    start = add_months(TODAY, 1)
    opp = s.close(
        "Later", [team(5)], Contract_Start_Date__c=start.isoformat(), Contract_Term_Months__c=12
    )
    assert sent_as_shown(s, opp) == EXPECTED["new business, contract starting later"]
    [schedule] = s.emu.requests("POST /v1/subscription_schedules")
    assert schedule.param("start_date") == str(epoch(start))
    assert schedule.param("phases[0][end_date]") == str(epoch(add_months(start, 12)))
    deal = s.deal(opp)
    assert deal.status == "scheduled", deal.last_error
    assert s.emu.count("invoice") == 0
    written = s.written(opp)
    assert written["SF_Bridge_Status__c"] == "Scheduled"
    assert written["Stripe_Schedule_Id__c"] == deal.stripe_schedule_id
    assert written["SF_Bridge_Contract_Start__c"] == start.isoformat()
    assert written["Stripe_Subscription_Id__c"] is None


@pytest.mark.parametrize("policy", ["start_now", "backdate"])
def test_a_contract_started_in_the_past_starts_now_or_is_backdated(
    make_stack: Any, policy: str
) -> None:
    s = make_stack({SF: [("past_start: start_now", f"past_start: {policy}")]})
    start = add_months(TODAY, -1)
    opp = s.close(
        "Past", [team(5)], Contract_Start_Date__c=start.isoformat(), Contract_Term_Months__c=12
    )
    assert (
        sent_as_shown(s, opp)
        == EXPECTED[f"new business, started in the past, past_start: {policy}"]
    )
    [create] = s.emu.requests("POST /v1/subscriptions")
    assert create.param("backdate_start_date") == (
        str(epoch(start)) if policy == "backdate" else None
    )
    assert s.deal(opp).status == "done"


def test_a_ramp_is_a_schedule_with_a_phase_per_step(make_stack: Any) -> None:
    s = make_stack()
    start = add_months(TODAY, 1)
    second = add_months(start, 12)
    opp = s.close(
        "Ramp",
        [team(10, ServiceDate=start.isoformat()), team(20, 14.0, ServiceDate=second.isoformat())],
        Contract_Start_Date__c=start.isoformat(),
        Contract_Term_Months__c=24,
    )
    assert sent_as_shown(s, opp) == EXPECTED["new business, ramp of two yearly steps"]
    [schedule] = s.emu.requests("POST /v1/subscription_schedules")
    assert schedule.param("phases[0][items][0][quantity]") == "10"
    assert schedule.param("phases[0][end_date]") == str(epoch(second))
    assert schedule.param("phases[1][items][0][quantity]") == "20"
    assert schedule.param("phases[1][items][0][price_data][unit_amount]") == "1400"
    assert s.deal(opp).status == "scheduled"


@pytest.mark.parametrize(
    ("intent", "fields"),
    [
        (
            "new business, discount 10% for 3 months",
            {
                "Deal_Discount_Percent__c": 10.0,
                "Deal_Discount_Duration__c": "Several months",
                "Deal_Discount_Months__c": 3,
            },
        ),
        (
            "new business, discount 500.00 off every invoice",
            {"Deal_Discount_Amount__c": 500.0, "Deal_Discount_Duration__c": "Whole contract"},
        ),
    ],
)
def test_a_deal_discount_is_one_coupon_on_the_subscription(
    make_stack: Any, intent: str, fields: dict[str, Any]
) -> None:
    s = make_stack()
    opp = s.close("Discount", [team(5)], **fields)
    assert sent_as_shown(s, opp) == EXPECTED[intent]
    assert s.deal(opp).status == "done"


@pytest.mark.parametrize("entitlements", ["at_once", "on_first_payment"])
def test_a_card_deal_waits_for_its_payment_in_stripe_and_grants_by_policy(
    make_stack: Any, entitlements: str
) -> None:
    s = make_stack({SF: [("  entitlements: at_once", f"  entitlements: {entitlements}")]})
    opp = s.close("Card", [team(5)], Payment_Method__c="Credit card")
    # the policy changes the grants, not what is sent to Stripe
    assert sent_as_shown(s, opp) == EXPECTED["new business, charged to a card"]
    deal = s.deal(opp)
    assert deal.status == "done", deal.last_error
    assert s.emu.get(deal.stripe_subscription_id)["status"] == "incomplete"
    active = s.grants(opp)
    if entitlements == "at_once":
        assert active["seats"] == 5
    else:
        assert active == {}  # recorded, in effect from the first payment
    assert s.written(opp)["SF_Bridge_Status__c"] == "Provisioned, awaiting payment"


# -- amendments and renewals ----------------------------------------------------------------


def first_deal(s: Stack, quantity: int = 5) -> Deal:
    opp = s.close("Acme", [team(quantity)])
    s.sent()
    deal = s.deal(opp)
    assert deal.status == "done", deal.last_error
    return deal


def test_an_upsell_adds_its_seats_to_the_live_subscription_prorated(make_stack: Any) -> None:
    s = make_stack()
    first = first_deal(s)
    end = period_end(s, first.stripe_subscription_id)
    opp = s.close("Acme", [team(20)], Type="Existing Customer - Upgrade")
    assert sent_as_shown(s, opp) == EXPECTED["amendment, upsell (additions, create_prorations)"]
    deal = s.deal(opp)
    assert deal.status == "done", deal.last_error
    assert deal.stripe_subscription_id == first.stripe_subscription_id
    assert quantities(s, first.stripe_subscription_id) == {"team_monthly_usd": 25}
    assert period_end(s, first.stripe_subscription_id) == end  # co-terminated
    no_anchor_moved(s)
    assert s.grants(opp)["seats"] == 20
    written = s.written(opp)
    assert written["SF_Bridge_Status__c"] == "Provisioned"
    assert written["Stripe_Subscription_Id__c"] == first.stripe_subscription_id
    assert written["Stripe_Invoice_URL__c"] is None  # prorated on the next invoice


def test_a_downgrade_with_totals_sets_the_new_quantity(make_stack: Any) -> None:
    s = make_stack({SF: [("  lines: additions", "  lines: totals")]})
    first = first_deal(s, 10)
    opp = s.close("Acme", [team(4)], Type="Existing Customer - Downgrade")
    assert sent_as_shown(s, opp) == EXPECTED["amendment, downgrade (totals, create_prorations)"]
    assert quantities(s, first.stripe_subscription_id) == {"team_monthly_usd": 4}
    assert s.grants(opp)["seats"] == 4
    assert s.grants(first.opportunity_id) == {}  # totals replace the other deals' grants
    no_anchor_moved(s)


def test_a_plan_change_swaps_the_plan_items_price(make_stack: Any) -> None:
    s = make_stack({SF: [("  lines: additions", "  lines: totals")]})
    first = first_deal(s)
    opp = s.close(
        "Acme",
        [{"product_code": "SB-ENT-M", "quantity": 1, "unit_price": 2500.0}],
        Type="Existing Customer - Replacement",
    )
    assert sent_as_shown(s, opp) == EXPECTED["amendment, plan change (totals)"]
    [update] = s.emu.requests("POST /v1/subscriptions/{id}")
    assert update.param("items[0][price]") is not None
    assert update.indices("items") == 1  # the plan item, its price swapped
    assert quantities(s, first.stripe_subscription_id) == {"enterprise_monthly_usd": 1}
    no_anchor_moved(s)


@pytest.mark.parametrize("policy", ["always_invoice", "none"])
def test_the_proration_policy_is_sent_as_is(make_stack: Any, policy: str) -> None:
    s = make_stack({SF: [("  proration: create_prorations", f"  proration: {policy}")]})
    first = first_deal(s)
    invoices = s.emu.count("invoice")
    opp = s.close("Acme", [team(20)], Type="Existing Customer - Upgrade")
    assert sent_as_shown(s, opp) == EXPECTED[f"amendment, proration: {policy}"]
    deal = s.deal(opp)
    assert deal.status == "done", deal.last_error
    if policy == "always_invoice":
        assert deal.stripe_invoice_id
        assert deal.stripe_invoice_id != first.stripe_invoice_id
        assert s.emu.get(deal.stripe_invoice_id)["status"] == "open"
        assert s.written(opp)["Stripe_Invoice_URL__c"] == deal.hosted_invoice_url
    else:
        assert s.emu.count("invoice") == invoices


def test_an_empty_type_with_an_add_on_only_is_an_amendment_of_the_live_subscription(
    make_stack: Any,
) -> None:
    s = make_stack()
    first = first_deal(s)
    opp = s.close("Acme", [{"product_code": "SB-ANALYTICS-M", "quantity": 1, "unit_price": 500.0}])
    assert sent_as_shown(s, opp) == EXPECTED["amendment inferred (Type empty, an add-on only)"]
    assert quantities(s, first.stripe_subscription_id) == {
        "team_monthly_usd": 5,
        "analytics_monthly_usd": 1,
    }
    assert s.deal(opp).plan["intent"] == "amendment"  # type: ignore[index]


def test_an_empty_type_with_a_plan_line_is_new_business_beside_the_live_subscription(
    make_stack: Any,
) -> None:
    s = make_stack()
    first = first_deal(s)
    opp = s.close("Acme", [{"product_code": "SB-ENT-M", "quantity": 1, "unit_price": 2500.0}])
    assert (
        sent_as_shown(s, opp)
        == EXPECTED["new business inferred (Type empty, a plan line), its customer known"]
    )
    deal = s.deal(opp)
    assert deal.plan["intent"] == "new_business"  # type: ignore[index]
    assert deal.stripe_customer_id == first.stripe_customer_id
    assert deal.stripe_subscription_id != first.stripe_subscription_id
    assert quantities(s, first.stripe_subscription_id) == {"team_monthly_usd": 5}


def test_a_renewal_with_a_price_increase_bills_nothing_now(make_stack: Any) -> None:
    s = make_stack()
    first = first_deal(s)
    invoices = s.emu.count("invoice")
    end = period_end(s, first.stripe_subscription_id)
    opp = s.close("Acme", [team(5, 16.5)], Type="Renewal")
    assert sent_as_shown(s, opp) == EXPECTED["renewal, price increase"]
    [update] = s.emu.requests("POST /v1/subscriptions/{id}")
    assert update.param("items[0][price_data][unit_amount]") == "1650"
    assert s.emu.count("invoice") == invoices  # the next period's invoice bills it
    assert period_end(s, first.stripe_subscription_id) == end
    no_anchor_moved(s)


# -- after the first close: un-won, reopened, won again --------------------------------------


def lose(s: Stack, opp: str, stage: str = "Closed Lost") -> None:
    """The opportunity leaves its won stage; the intake records it (as its change event)."""
    s.org.lose_deal(opp, stage=stage)
    with s.factory() as session, session.begin():
        assert mark_unwon(session, [opp], reason="left its won stage", source="test") == [opp]


def test_an_unwon_deal_under_cancel_voids_its_invoice_and_cancels_its_subscription(
    make_stack: Any,
) -> None:
    s = make_stack({SF: [("when_unwon: review", "when_unwon: cancel")]})
    first = first_deal(s)
    lose(s, first.opportunity_id)
    deal = s.settle(first.opportunity_id, "cancelled")
    assert sent_as_shown(s, first.opportunity_id) == EXPECTED["un-won, when_unwon: cancel"]
    assert s.emu.get(deal.stripe_invoice_id)["status"] == "void"
    assert s.emu.get(deal.stripe_subscription_id)["status"] == "canceled"
    assert s.grants(first.opportunity_id) == {}
    written = s.written(first.opportunity_id)
    assert written["SF_Bridge_Status__c"] == "Cancelled"
    assert written["SF_Bridge_Error__c"] == "Cancelled: left its won stage"

    s.org.close_won(first.opportunity_id)
    with s.factory() as session, session.begin():
        note_won_after_cancel(session, [first.opportunity_id], source="test")
    deal = s.settle(first.opportunity_id, "cancelled")
    assert deal.last_error_code == "won_after_cancel"
    written = s.written(first.opportunity_id)
    assert written["SF_Bridge_Status__c"] == "Cancelled"
    assert written["SF_Bridge_Error__c"].startswith("The opportunity was won again")
    assert sent_as_shown(s, first.opportunity_id) == EXPECTED["won again after cancel"]


def test_an_unwon_deal_under_review_is_parked_then_cancelled_or_kept(make_stack: Any) -> None:
    s = make_stack()
    cancelled = first_deal(s).opportunity_id
    kept = s.close("Bee", [team(3)])
    s.sent()
    for opp in (cancelled, kept):
        lose(s, opp)
        parked = s.settle(opp, "needs_attention")
        assert parked.last_error_code == "unwon_after_provisioning"
        assert sent_as_shown(s, opp) == EXPECTED["un-won, when_unwon: review"]
        written = s.written(opp)
        assert written["SF_Bridge_Status__c"] == "Needs attention"
        assert written["SF_Bridge_Error__c"].startswith("unwon_after_provisioning: ")

    with s.factory() as session, session.begin():
        assert queue_cancel(
            session, s.deal(cancelled).id, reason="lost to a competitor", actor="ops"
        )
    s.settle(cancelled, "cancelled")
    assert sent_as_shown(s, cancelled) == EXPECTED["un-won, then deals cancel"]
    assert s.written(cancelled)["SF_Bridge_Error__c"] == "Cancelled: lost to a competitor"

    writes: list[Any] = []
    real_write_back = s.crm.write_back

    def counting(updates: list[Any]) -> Any:
        writes.extend(u for u in updates if u.opportunity_id == kept)
        return real_write_back(updates)

    s.crm.write_back = counting  # type: ignore[method-assign]
    with s.factory() as session, session.begin():
        assert keep_unwon(session, s.deal(kept).id, actor="ops", note="stage set by mistake")
    s.settle(kept, "done")
    assert sent_as_shown(s, kept) == EXPECTED["un-won, then deals keep"]
    assert s.emu.get(s.deal(kept).stripe_subscription_id)["status"] == "active"
    # the opportunity said "Needs attention" and the commands: told "Provisioned", once
    written = s.written(kept)
    assert written["SF_Bridge_Status__c"] == "Provisioned"
    assert written["SF_Bridge_Error__c"] is None
    assert len(writes) == 1


def test_an_unwon_upsell_under_cancel_takes_only_its_seats_off(make_stack: Any) -> None:
    s = make_stack({SF: [("when_unwon: review", "when_unwon: cancel")]})
    first = first_deal(s)
    opp = s.close("Acme", [team(20)], Type="Existing Customer - Upgrade")
    s.sent()
    lose(s, opp)
    s.settle(opp, "cancelled")
    assert sent_as_shown(s, opp) == EXPECTED["un-won amendment (upsell), when_unwon: cancel"]
    assert quantities(s, first.stripe_subscription_id) == {"team_monthly_usd": 5}
    assert s.emu.get(first.stripe_subscription_id)["status"] == "active"
    assert s.emu.get(first.stripe_invoice_id)["status"] == "open"
    assert s.grants(opp) == {}
    assert s.grants(first.opportunity_id)["seats"] == 5
    assert s.written(opp)["SF_Bridge_Status__c"] == "Cancelled"
    assert s.written(first.opportunity_id)["SF_Bridge_Status__c"] == "Provisioned"
    no_anchor_moved(s)


def test_an_unwon_scheduled_deal_under_cancel_cancels_its_schedule(make_stack: Any) -> None:
    s = make_stack({SF: [("when_unwon: review", "when_unwon: cancel")]})
    start = add_months(TODAY, 1)
    opp = s.close(
        "Later", [team(5)], Contract_Start_Date__c=start.isoformat(), Contract_Term_Months__c=12
    )
    s.sent()
    lose(s, opp)
    deal = s.settle(opp, "cancelled")
    expected = EXPECTED["un-won, contract starting later, when_unwon: cancel"]
    assert sent_as_shown(s, opp) == expected
    assert s.emu.get(deal.stripe_schedule_id)["status"] == "canceled"
    assert s.emu.count("subscription") == 0
    assert s.grants(opp) == {}
    assert s.written(opp)["SF_Bridge_Status__c"] == "Cancelled"


def test_a_reopened_deal_closed_with_other_lines_is_replayed_as_an_amendment_of_its_own(
    make_stack: Any,
) -> None:
    s = make_stack()
    first = first_deal(s)
    opp = first.opportunity_id
    lose(s, opp, stage="Negotiation/Review")
    s.settle(opp, "needs_attention")
    s.sent()
    [line] = s.org.store.children("OpportunityLineItem", "OpportunityId", opp)
    s.org.store.update("OpportunityLineItem", line["Id"], {"Quantity": 40.0}, as_api=False)
    s.org.close_won(opp)
    with s.factory() as session, session.begin():
        assert mark_changed_after_provisioning(session, [opp], source="test") == [opp]
    parked = s.settle(opp, "needs_attention")
    assert parked.last_error_code == "changed_after_provisioning"
    assert s.written(opp)["SF_Bridge_Status__c"] == "Needs attention"
    assert sent_as_shown(s, opp) == EXPECTED["reopened and closed again, at the won event"]

    replay(s.factory, [opp], mappings=s.mappings, crm=s.crm)
    deal = s.settle(opp, "done", "needs_attention")
    assert deal.status == "done", deal.last_error
    assert sent_as_shown(s, opp) == EXPECTED["reopened and closed again, replayed"]
    assert quantities(s, first.stripe_subscription_id) == {"team_monthly_usd": 40}
    assert s.grants(opp)["seats"] == 40
    no_anchor_moved(s)
    assert s.written(opp)["SF_Bridge_Status__c"] == "Provisioned"


# -- the documented table --------------------------------------------------------------------


def documented_table() -> dict[str, list[str]]:
    """docs/operations.md, "Stripe requests per intent": intent -> requests, in order."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    section = text.split("### Stripe requests per intent", 1)[1].split("\n#", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or cells[0] in ("intent", "") or set(cells[0]) <= {"-"}:
            continue
        rows[cells[0]] = re.findall(r"`([^`]+)`", cells[1])
    return rows


def test_the_operations_guide_lists_exactly_these_requests() -> None:
    assert documented_table() == EXPECTED
