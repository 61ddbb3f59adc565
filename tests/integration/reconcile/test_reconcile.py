"""`sf-bridge reconcile` against the sandbox org and the Stripe emulator: deals are provisioned
by the real worker, then people change things by hand in the org and in Stripe, and each kind
of mismatch is reported with its fix. Nothing is changed by the reconciliation."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import Settings, get_settings
from sf_bridge.crm.salesforce import SalesforceCrm
from sf_bridge.db.models import Deal
from sf_bridge.mapping import load_mappings
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.wiring import MappingsLoader, build_worker
from sf_bridge.reconcile import findings
from sf_bridge.reconcile.reports import last_report
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from sf_bridge.sandbox.stripe_emulator import StripeEmulator

MAPPINGS = Path(__file__).resolve().parents[3] / "mappings"


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    sandbox = SalesforceSandbox(port=0, long_poll_seconds=1.0).start()
    mappings = load_mappings(MAPPINGS)
    wanted = [
        (ref.obj, ref.path[-1])
        for ref in mappings.referenced_fields()
        if ref.obj in ("Opportunity", "Account") and ref.path[-1].endswith("__c")
    ]
    wb = mappings.write_back
    wanted += [
        ("Opportunity", name)
        for name in (wb.status, wb.stripe_customer_id, wb.stripe_subscription_id,
                     wb.invoice_url, wb.error, wb.provisioned_at)
        if name
    ]  # fmt: skip
    types = {"Seats__c": "double", "SF_Bridge_Provisioned_At__c": "datetime"}
    for sobject, name in dict.fromkeys(wanted):
        sandbox.define_field(sobject, name, types.get(name, "string"))
    sandbox.create_product("SB-TEAM-M", "Team (monthly)")
    yield sandbox
    sandbox.stop()


@pytest.fixture
def env(
    org: SalesforceSandbox,
    stripe_emulator: StripeEmulator,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Settings]:
    stripe_emulator.seed_catalog(load_mappings(MAPPINGS).catalog_prices())
    values = {
        "DATABASE_URL": db_url,
        "SF_BRIDGE_MAPPINGS": str(MAPPINGS),
        "SF_LOGIN_URL": org.url,
        "SF_USERNAME": org.username,
        "SF_PASSWORD": org.password,
        "SF_SECURITY_TOKEN": org.security_token,
        "SF_CLIENT_ID": org.client_id,
        "SF_CLIENT_SECRET": org.client_secret,
        "STRIPE_API_KEY": stripe_emulator.api_key,
        "STRIPE_API_BASE": stripe_emulator.url,
        "SF_BRIDGE_STRIPE_RPS": "1000",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SF_BRIDGE_PROVISION_FLOOR", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def team_deal(org: SalesforceSandbox, name: str) -> str:
    account = org.create_account(name, Billing_Email__c=f"ap@{name.lower()}.example")
    opp = org.create_opportunity(
        account,
        f"{name} - Team",
        [{"product_code": "SB-TEAM-M", "quantity": 10, "unit_price": 15.0}],
    )
    org.close_won(opp)
    return opp


def provision(settings: Settings, factory: sessionmaker[Session], opps: list[str]) -> None:
    """The real worker provisions these deals (fetched from the org, billed in Stripe)."""
    loader = MappingsLoader(settings.mappings_dir)
    crm = SalesforceCrm.from_settings(settings, loader)
    worker = build_worker(settings, factory, crm=crm, mappings_loader=loader, poll_interval=0.05)
    with factory() as session, session.begin():
        enqueue_opportunities(session, opps, source="sweep")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with factory() as session:
            states = set(session.scalars(select(Deal.status)).all())
        if states == {"done"}:
            return
        worker.run_once()
    raise AssertionError(f"deals not provisioned: {states}")


def reconcile_cli(*extra: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(app, ["reconcile", "--json", *extra])
    lines = result.stdout.splitlines()
    return result.exit_code, json.loads("\n".join(lines[lines.index("{") :]))


def kinds_by_opportunity(report: dict[str, Any]) -> dict[str | None, set[str]]:
    found: dict[str | None, set[str]] = {}
    for m in report["mismatches"]:
        found.setdefault(m["opportunity_id"], set()).add(m["kind"])
    return found


def test_each_mismatch_made_by_hand_is_reported_with_its_fix_and_a_clean_run_reports_none(
    org: SalesforceSandbox,
    env: Settings,
    stripe_emulator: StripeEmulator,
    stripe_client: stripe.StripeClient,
    session_factory: sessionmaker[Session],
) -> None:
    cancelled, changed, edited, untouched = (
        team_deal(org, n) for n in ("Acme", "Bluebird", "Cobalt", "Dune")
    )
    provision(env, session_factory, [cancelled, changed, edited, untouched])

    org.reset_counters()
    code, clean = reconcile_cli()
    assert (code, clean["mismatches"]) == (0, []), clean
    # Batched: one query for the won ids, one for the provisioned deals (up to 200 a query).
    assert org.calls["query"] == 2, dict(org.calls)
    assert clean["clean"] is True
    assert clean["checked"]["won_opportunities"] == 4
    assert clean["checked"]["deals"] == 4
    assert clean["checked"]["subscriptions"] == 4
    assert clean["checked"]["invoices"] == 4
    assert clean["checked"]["active_grants"] > 0

    # What people do by hand afterwards.
    never_enqueued = team_deal(org, "Eagle")
    with session_factory() as session:
        subs = dict(session.execute(select(Deal.opportunity_id, Deal.stripe_subscription_id)).all())
        invoices = dict(session.execute(select(Deal.opportunity_id, Deal.stripe_invoice_id)).all())
    stripe_client.v1.invoices.void_invoice(invoices[changed])
    stripe_client.v1.subscriptions.cancel(subs[cancelled])
    [item] = stripe_client.v1.subscriptions.retrieve(subs[changed])["items"]["data"]
    stripe_client.v1.subscriptions.update(
        subs[changed], {"items": [{"id": item["id"], "quantity": 25}]}
    )
    org.add_line_items(edited, [{"product_code": "SB-TEAM-M", "quantity": 2, "unit_price": 15.0}])
    stray = stripe_client.v1.customers.create(
        {"name": "Made by hand", "metadata": {"sf_opportunity_id": "006Hs00009ZZZZZZZZ"}}
    )
    before = {kind: stripe_emulator.count(kind) for kind in ("customer", "subscription", "invoice")}

    code, report = reconcile_cli()
    assert code == 1
    assert kinds_by_opportunity(report) == {
        never_enqueued: {findings.WON_NOT_PROVISIONED},
        cancelled: {findings.SUBSCRIPTION_CHANGED, findings.ENTITLEMENTS_WITHOUT_SUBSCRIPTION},
        changed: {findings.SUBSCRIPTION_CHANGED},
        edited: {findings.OPPORTUNITY_EDITED},
        "006Hs00009ZZZZZZZZ": {findings.UNKNOWN_STRIPE_OBJECT},
    }
    by_kind = {(m["opportunity_id"], m["kind"]): m for m in report["mismatches"]}
    assert (
        "cancelled in Stripe (status canceled)"
        in by_kind[(cancelled, findings.SUBSCRIPTION_CHANGED)]["problem"]
    )
    [items_changed] = [
        m["problem"] for m in report["mismatches"]
        if m["opportunity_id"] == changed and "it bills" in m["problem"]
    ]  # fmt: skip
    assert "25 x" in items_changed
    assert "10 x" in items_changed
    assert (
        f"--opportunity-id {never_enqueued}"
        in by_kind[(never_enqueued, findings.WON_NOT_PROVISIONED)]["fix"]
    )
    assert (
        stray["id"] == by_kind[("006Hs00009ZZZZZZZZ", findings.UNKNOWN_STRIPE_OBJECT)]["stripe_id"]
    )
    assert all(m["fix"] for m in report["mismatches"])
    assert report["counts"][findings.SUBSCRIPTION_CHANGED] == 3  # cancelled, changed, voided
    assert any(
        m["stripe_id"] == invoices[changed] and "marked void in Stripe" in m["problem"]
        for m in report["mismatches"]
    )

    # Read-only: nothing was created, changed or written back, and the report is stored.
    assert before == {k: stripe_emulator.count(k) for k in before}
    with session_factory() as session:
        assert session.scalar(select(Deal.status).where(Deal.opportunity_id == cancelled)) == "done"
        stored = last_report(session)
    assert stored is not None
    assert len(stored.mismatches) == len(report["mismatches"])

    # Human output names each mismatch and its fix.
    human = CliRunner().invoke(app, ["reconcile"])
    assert human.exit_code == 1
    assert f"{len(report['mismatches'])} mismatches" in human.stdout
    assert never_enqueued in human.stdout
    assert "won_not_provisioned" in human.stdout


def test_since_leaves_out_deals_won_before_it(
    org: SalesforceSandbox, env: Settings, session_factory: sessionmaker[Session]
) -> None:
    team_deal(org, "Fjord")  # won today, never provisioned
    code, report = reconcile_cli("--since", "2999-01-01")
    assert (code, report["mismatches"], report["checked"]["won_opportunities"]) == (0, [], 0)
    code, report = reconcile_cli()
    assert code == 1
    assert report["counts"][findings.WON_NOT_PROVISIONED] == 1


def test_the_worker_reconciles_on_its_schedule_when_set_and_stores_the_report(
    org: SalesforceSandbox, env: Settings, session_factory: sessionmaker[Session]
) -> None:
    from sf_bridge.config import RunTuning
    from sf_bridge.worker_process import RunOptions, WorkerProcess
    from tests.integration.intake.conftest import wait_until

    assert RunTuning().reconcile_interval_seconds is None  # off by default
    missed = team_deal(org, "Gannet")
    idle = WorkerProcess(env, RunOptions(salesforce=False)).start()
    try:
        assert "sf-bridge-reconcile" not in [t.name for t in idle.threads]
    finally:
        assert idle.stop()

    def stored() -> Any:
        with session_factory() as session:
            return last_report(session)

    assert stored() is None
    process = WorkerProcess(
        env, RunOptions(salesforce=False, reconcile_interval_seconds=0.05)
    ).start()
    try:
        report = wait_until(stored, 20, "a scheduled reconciliation")
    finally:
        assert process.stop()
    assert [(m.kind, m.opportunity_id) for m in report.mismatches] == [
        (findings.WON_NOT_PROVISIONED, missed)
    ]
