"""The invoice lifecycle against the Stripe emulator: webhooks delivered and signed by it,
mark-paid through the CLI as ops run it, and the overdue policy on its clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from sf_bridge.api import create_app
from sf_bridge.cli import app as cli_app
from sf_bridge.config import get_settings
from sf_bridge.crm.port import InMemoryCrm
from sf_bridge.db.models import CANCELLED, Deal, DealEvent, EntitlementGrant
from sf_bridge.errors import TransientError
from sf_bridge.invoices import mark_paid as mark_paid_module
from sf_bridge.invoices.errors import InvoiceNotPayable
from sf_bridge.invoices.mark_paid import mark_paid
from sf_bridge.invoices.overdue import apply_overdue_policy
from sf_bridge.mapping.model import WriteBackFields
from sf_bridge.sandbox.stripe_emulator import StripeEmulator
from tests.fixtures.api import (
    WEBHOOK_SECRET,
    api_settings,
    serve_in_thread,
)
from tests.integration.invoices.conftest import OPP, Provisioned


def _deal(session_factory: sessionmaker[Session], deal_id: int) -> Deal:
    with session_factory() as session:
        deal = session.get_one(Deal, deal_id)
        deal.events  # noqa: B018
        return deal


def _active_grants(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        rows = session.scalars(select(EntitlementGrant).where(EntitlementGrant.active.is_(True)))
        return len(rows.all())


def test_webhooks_from_stripe_record_payment_and_revoke_on_cancellation(
    db_url: str,
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
) -> None:
    app = create_app(api_settings(db_url), session_factory, billing=provisioned.gateway)
    with serve_in_thread(app) as url:
        stripe_emulator.add_webhook_endpoint(f"{url}/webhooks/stripe", WEBHOOK_SECRET)
        stripe_emulator.pay_invoice(provisioned.invoice_id)
        assert stripe_emulator.wait_for_webhooks(10)
        assert _deal(session_factory, provisioned.deal_id).invoice_status == "paid"
        assert _active_grants(session_factory) == 3

        provisioned.gateway.cancel_subscription(
            provisioned.subscription_id, idempotency_key="test-cancel"
        )
        assert stripe_emulator.wait_for_webhooks(10)
        attempts = stripe_emulator.webhook_attempts()
    assert attempts
    assert all(200 <= (a.status or 0) < 300 for a in attempts), attempts
    deal = _deal(session_factory, provisioned.deal_id)
    assert deal.status == CANCELLED
    assert "subscription_cancelled" in [e.kind for e in deal.events]
    assert _active_grants(session_factory) == 0


def test_mark_paid_cli_records_part_then_full_wire_payments(
    db_url: str,
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
    tmp_path: Path,
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the CLI is the same on both; mark_paid itself runs on both in test_mark_paid")
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "STRIPE_API_KEY": stripe_emulator.api_key,
        "STRIPE_API_BASE": stripe_emulator.url,
        "LOG_FORMAT": "json",
    }
    due = stripe_emulator.get(provisioned.invoice_id)["amount_due"]
    command = [sys.executable, "-m", "sf_bridge", "invoices", "mark-paid", OPP]
    part = subprocess.run(
        [*command, "--amount", f"{due // 200}.00", "--reference", "BANK-1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert part.returncode == 0, part.stderr
    assert "still due" in part.stdout
    invoice = stripe_emulator.get(provisioned.invoice_id)
    assert (invoice["status"], invoice["amount_paid"]) == ("open", due // 200 * 100)
    rerun = subprocess.run(
        [*command, "--amount", f"{due // 200}.00", "--reference", "BANK-1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "'BANK-1' is already recorded; nothing was sent" in rerun.stdout
    assert stripe_emulator.get(provisioned.invoice_id)["amount_paid"] == due // 200 * 100
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "marked paid out of band" in done.stdout
    invoice = stripe_emulator.get(provisioned.invoice_id)
    assert (invoice["status"], invoice["amount_remaining"]) == ("paid", 0)
    # Paid without a charge: two payment records attached, as the pinned API version
    # records payments made outside Stripe (not the older paid_out_of_band).
    routes = stripe_emulator.stats.snapshot().by_route
    assert routes.get("POST /v1/payment_records/report_payment") == 2
    assert routes.get("POST /v1/invoices/{id}/attach_payment") == 2
    assert routes.get("POST /v1/invoices/{id}/pay") is None
    assert _deal(session_factory, provisioned.deal_id).invoice_status == "paid"
    assert _active_grants(session_factory) == 3
    assert stripe_emulator.api_key not in done.stdout + done.stderr

    get_settings.cache_clear()
    try:
        unknown = CliRunner().invoke(
            cli_app, ["invoices", "mark-paid", "006999999999999ZZZ"], env=env
        )
    finally:
        get_settings.cache_clear()
    assert unknown.exit_code == 1
    assert "No deal" in unknown.output
    assert "Traceback" not in unknown.output


def test_overdue_policy_cancels_in_stripe_after_the_grace_period(
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
) -> None:
    crm = InMemoryCrm()
    fields = WriteBackFields(status="SF_Bridge_Status__c", error="SF_Bridge_Error__c")

    def run(now: datetime, dry_run: bool = False) -> list:
        return apply_overdue_policy(
            session_factory,
            provisioned.gateway,
            crm,
            now=now,
            grace_days=7,
            dry_run=dry_run,
            write_back=fields,
        )

    assert run(provisioned.due_at + timedelta(days=6)) == []
    late = provisioned.due_at + timedelta(days=8)
    assert [a.action for a in run(late, dry_run=True)] == ["would_cancel"]
    assert stripe_emulator.get(provisioned.subscription_id)["status"] == "active"

    actions = run(late)
    assert [(a.action, a.days_overdue, a.written_back) for a in actions] == [("cancelled", 8, True)]
    assert stripe_emulator.get(provisioned.subscription_id)["status"] == "canceled"
    assert _deal(session_factory, provisioned.deal_id).status == CANCELLED
    assert _active_grants(session_factory) == 0
    assert crm.written[OPP]["SF_Bridge_Status__c"] == "Cancelled"
    assert run(late + timedelta(days=1)) == []
    assert late.tzinfo == UTC


# -- the same wire payment recorded again ----------------------------------------------------


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Moves this process's wall clock forward (the emulator keeps its own clock): what runs
    after it runs "in another second", as a second run of the command does."""
    real = time.time
    shift = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + shift[0])

    def move(seconds: float) -> None:
        shift[0] += seconds

    return move


def _routes(stripe_emulator: StripeEmulator) -> dict[str, int]:
    return dict(stripe_emulator.stats.snapshot().by_route)


def _part_events(session_factory: sessionmaker[Session], deal_id: int) -> list[DealEvent]:
    return [e for e in _deal(session_factory, deal_id).events if e.kind == "invoice_part_paid"]


def test_the_same_part_payment_recorded_again_later_is_recorded_once(
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
    later: Callable[[float], None],
) -> None:
    first = mark_paid(
        session_factory, provisioned.gateway, OPP, amount=Decimal("20.00"), reference="BANK-7"
    )
    assert (first.status, first.amount_paid, first.replayed) == ("open", 2_000, False)
    before = _routes(stripe_emulator)
    later(90)
    again = mark_paid(
        session_factory, provisioned.gateway, OPP, amount=Decimal("20.00"), reference="BANK-7"
    )
    assert again.replayed
    assert stripe_emulator.get(provisioned.invoice_id)["amount_paid"] == 2_000
    assert stripe_emulator.count("payment_record") == 1
    sent = {r: n - before.get(r, 0) for r, n in _routes(stripe_emulator).items()}
    assert not {r: n for r, n in sent.items() if r.startswith("POST") and n}, sent
    assert len(_part_events(session_factory, provisioned.deal_id)) == 1

    # Another transfer of the same amount is another payment: its own reference.
    other = mark_paid(
        session_factory, provisioned.gateway, OPP, amount=Decimal("20.00"), reference="BANK-8"
    )
    assert (other.replayed, stripe_emulator.get(provisioned.invoice_id)["amount_paid"]) == (
        False,
        4_000,
    )
    # The same reference with another amount is a mistake, not a payment.
    with pytest.raises(InvoiceNotPayable, match="BANK-7"):
        mark_paid(
            session_factory, provisioned.gateway, OPP, amount=Decimal("30.00"), reference="BANK-7"
        )
    assert stripe_emulator.get(provisioned.invoice_id)["amount_paid"] == 4_000
    kinds = [e.kind for e in _deal(session_factory, provisioned.deal_id).events]
    assert kinds == ["invoice_part_paid", "invoice_part_paid"]  # one line per payment


@pytest.mark.parametrize(
    "route", ["POST /v1/payment_records/report_payment", "POST /v1/invoices/{id}/attach_payment"]
)
def test_a_retry_after_a_lost_answer_records_one_payment(
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
    later: Callable[[float], None],
    route: str,
) -> None:
    """Stripe ran the request but the answer never came back; the command is run again a
    little later, with and without a bank reference."""
    for reference, amount, paid in (("BANK-9", "30.00", 3_000), (None, "20.00", 5_000)):
        stripe_emulator.fail_next(route, "drop_after")
        with pytest.raises(TransientError):
            mark_paid(
                session_factory,
                provisioned.gateway,
                OPP,
                amount=Decimal(amount),
                reference=reference,
            )
        later(90)
        retried = mark_paid(
            session_factory, provisioned.gateway, OPP, amount=Decimal(amount), reference=reference
        )
        assert retried.status == "open"
        invoice = stripe_emulator.get(provisioned.invoice_id)
        assert invoice["amount_paid"] == paid
        again = mark_paid(
            session_factory, provisioned.gateway, OPP, amount=Decimal(amount), reference=reference
        )
        assert again.replayed
        assert stripe_emulator.get(provisioned.invoice_id)["amount_paid"] == paid
    payments = stripe_emulator.objects("invoice_payment")
    assert sorted(p["amount_paid"] for p in payments) == [2_000, 3_000]
    # Every try of a payment sent the same request under its key, times included.
    reports = stripe_emulator.requests("POST /v1/payment_records/report_payment")
    by_key: dict[str | None, set[tuple[tuple[str, str], ...]]] = {}
    for request in reports:
        by_key.setdefault(request.idempotency_key, set()).add(request.form)
    assert len(by_key) == 2
    assert all(len(forms) == 1 for forms in by_key.values()), by_key
    assert [e.detail["amount"] for e in _part_events(session_factory, provisioned.deal_id)] == [
        3_000,
        2_000,
    ]


@pytest.mark.parametrize("crash", ["before_stripe", "before_the_deal_records_it"])
def test_a_crash_around_each_commit_ends_in_one_payment(
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
    later: Callable[[float], None],
    monkeypatch: pytest.MonkeyPatch,
    crash: str,
) -> None:
    """The process dies after the first try's time is committed but before Stripe is asked,
    or after Stripe recorded the payment but before the deal's line is committed; the command
    is run again later."""

    class Crash(BaseException):
        pass

    def die(*args: object, **kwargs: object) -> None:
        raise Crash

    target = "record_payment" if crash == "before_stripe" else "_record"
    owner: object = provisioned.gateway if crash == "before_stripe" else mark_paid_module
    with monkeypatch.context() as patch:
        patch.setattr(owner, target, die)
        with pytest.raises(Crash):
            mark_paid(
                session_factory, provisioned.gateway, OPP, amount=Decimal("25.00"), reference="B-5"
            )
    sending = list(_deal(session_factory, provisioned.deal_id).events)
    assert [e.kind for e in sending] == [mark_paid_module.SENDING]
    assert "Sending a wire payment of 25.00 USD" in sending[0].message
    later(3600)
    result = mark_paid(
        session_factory, provisioned.gateway, OPP, amount=Decimal("25.00"), reference="B-5"
    )
    assert (result.replayed, result.status) == (False, "open")
    assert stripe_emulator.get(provisioned.invoice_id)["amount_paid"] == 2_500
    assert stripe_emulator.count("payment_record") == 1
    kinds = [e.kind for e in _deal(session_factory, provisioned.deal_id).events]
    assert kinds == ["invoice_part_paid"]


def test_the_consoles_mark_paid_sent_twice_records_one_payment(
    session_factory: sessionmaker[Session],
    stripe_emulator: StripeEmulator,
    provisioned: Provisioned,
    later: Callable[[float], None],
) -> None:
    """The console's Mark paid calls the same code: the form sent twice (a double click, a
    reload) records the payment once, with or without the bank's reference."""
    from sf_bridge.console.actions import mark_invoice_paid

    for reference, paid in (("WIRE-3", 1_500), ("", 3_000)):
        for attempt in range(2):
            result = mark_invoice_paid(
                session_factory,
                provisioned.gateway,
                provisioned.deal_id,
                actor="ana",
                amount=Decimal("15.00"),
                reference=reference,
            )
            later(5)
            assert stripe_emulator.get(provisioned.invoice_id)["amount_paid"] == paid
            assert (result.notice == "paid_before") == (attempt == 1), result
    assert stripe_emulator.count("payment_record") == 2
    assert len(_part_events(session_factory, provisioned.deal_id)) == 2
