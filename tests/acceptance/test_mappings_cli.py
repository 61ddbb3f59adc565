"""`sf-bridge mappings check` and `preview`, run as a user runs them: in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sf_bridge.config import Settings
from sf_bridge.crm.port import ORG_CURRENCY_KEY
from sf_bridge.crm.salesforce import SalesforceCrm
from sf_bridge.mapping import load_mappings
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from sf_bridge.sandbox.salesforce_org.seeding import prepare_for_mappings
from tests.fixtures.mapping import (
    EXAMPLE_MAPPINGS_DIR,
    EXAMPLE_OPPORTUNITIES_DIR,
    REPO_ROOT,
    copy_mappings,
    line_of,
)


def sf_bridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_", "DATABASE"))
    }
    environment.update({"LOG_FORMAT": "json", "NO_COLOR": "1"})
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "sf_bridge", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=environment,
        timeout=60,
        check=False,
    )


def test_check_of_the_example_mappings_prints_a_clean_summary() -> None:
    done = sf_bridge("mappings", "check", "mappings")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("mappings: OK - 8 features, 3 plans, 3 add-ons, 11 products")
    _, single_currency = done.stdout.strip().splitlines()
    assert single_currency == (
        "Single-currency Salesforce orgs (no CurrencyIsoCode field) bill every deal in the org's "
        "corporate currency: it must be one of USD, EUR. A record without CurrencyIsoCode "
        "(preview --file) is billed in USD."
    )


def test_check_defaults_to_the_folder_in_the_environment(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "elsewhere")
    done = sf_bridge("mappings", "check", env={"SF_BRIDGE_MAPPINGS": str(folder)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{folder}: OK")


def test_check_with_a_misspelled_plan_names_file_line_and_a_fix(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {"salesforce.yaml": [("SB-ENT-Y: {plan: enterprise,", "SB-ENT-Y: {plan: enterprize,")]},
    )
    done = sf_bridge("mappings", "check", str(folder))
    assert done.returncode == 1
    line = line_of(folder / "salesforce.yaml", "enterprize")
    assert f"{folder}/salesforce.yaml:{line}:" in done.stdout
    assert "[unknown_plan]" in done.stdout
    assert "Fix: did you mean 'enterprise'?" in done.stdout
    assert "1 problem in" in done.stderr


def test_check_json_lists_the_problems(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m", {"salesforce.yaml": [("price_overrides: negotiated", "price_overrides: x")]}
    )
    done = sf_bridge("mappings", "check", str(folder), "--json")
    assert done.returncode == 1
    [issue] = json.loads(done.stdout)
    assert issue["code"] == "invalid_choice"
    assert issue["line"] == line_of(folder / "salesforce.yaml", "price_overrides: x")


def test_preview_shows_the_plan_overrides_and_entitlements() -> None:
    done = sf_bridge(
        "mappings", "preview", "--file", "examples/opportunities/enterprise-negotiated.json"
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Acme Corp - Enterprise 2027" in out
    assert "mapping version " in out
    assert "Plan: enterprise (paid)  billing: send_invoice, due in 45 days, yearly, USD" in out
    assert "22,000.00 USD (override)" in out
    assert "180.00 USD (override)" in out
    assert "plan enterprise + add-on extra_seats 1 x 40" in out


def test_preview_json_is_the_plan_with_the_mapping_version() -> None:
    done = sf_bridge(
        "mappings",
        "preview",
        "--file",
        str(EXAMPLE_OPPORTUNITIES_DIR / "custom-contract.json"),
        "--json",
        "--mappings",
        str(EXAMPLE_MAPPINGS_DIR),
    )
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["ok"] is True
    assert len(body["mapping_version"]) == 12
    assert body["plan"]["plan_kind"] == "custom"
    assert body["plan"]["billing"] is None
    seats = next(e for e in body["plan"]["entitlements"] if e["feature"] == "seats")
    assert seats["value"] == 750


def test_preview_of_a_deal_that_does_not_map_exits_1_with_the_errors() -> None:
    done = sf_bridge("mappings", "preview", "--file", "examples/opportunities/unknown-product.json")
    assert done.returncode == 1
    assert "does not map (1 problem)" in done.stdout
    assert "[unknown_product] line item 00kHs00003EchoSupA (product SB-SUPPORT-PREMIUM)" in (
        done.stdout
    )
    body = json.loads(
        sf_bridge(
            "mappings", "preview", "--json", "--file", "examples/opportunities/unknown-product.json"
        ).stdout
    )
    assert body["ok"] is False
    assert [e["code"] for e in body["errors"]] == ["unknown_product"]


def test_preview_needs_exactly_one_source() -> None:
    done = sf_bridge("mappings", "preview")
    assert done.returncode == 2
    assert "exactly one of --file OPP.json or --opportunity-id ID" in done.stderr


def test_preview_with_broken_mappings_says_to_run_check(tmp_path: Path) -> None:
    folder = copy_mappings(
        tmp_path / "m",
        {"salesforce.yaml": [("SB-ENT-Y: {plan: enterprise,", "SB-ENT-Y: {plan: enterprize,")]},
    )
    done = sf_bridge(
        "mappings",
        "preview",
        "--file",
        "examples/opportunities/enterprise-negotiated.json",
        "--mappings",
        str(folder),
    )
    assert done.returncode == 2
    assert "[unknown_plan]" in done.stderr
    assert "sf-bridge mappings check" in done.stderr


def test_preview_of_a_missing_file(tmp_path: Path) -> None:
    done = sf_bridge("mappings", "preview", "--file", str(tmp_path / "nope.json"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr


@pytest.mark.parametrize("multi_currency", [True, False], ids=["multi-currency", "single-currency"])
def test_preview_of_a_live_opportunity_in_the_sandbox_org(multi_currency: bool) -> None:
    with SalesforceSandbox(
        host="127.0.0.1", port=0, long_poll_seconds=5.0, multi_currency=multi_currency
    ) as org:
        prepare_for_mappings(org, load_mappings(EXAMPLE_MAPPINGS_DIR))
        account = org.create_account("Umbrella Health", Billing_Email__c="ap@umbrella.example")
        opportunity = org.create_opportunity(
            account,
            "Umbrella - Enterprise",
            [
                {
                    "product_code": "SB-ENT-Y",
                    "quantity": 1,
                    "unit_price": 25000.0,
                    "discount": 12.0,
                },
                {"product_code": "SB-SEATS-Y", "quantity": 40, "unit_price": 180.0},
            ],
            Payment_Method__c="Invoice",
            Payment_Terms__c="Net 45",
        )
        env = {
            "SF_LOGIN_URL": org.url,
            "SF_USERNAME": org.username,
            "SF_PASSWORD": org.password,
            "SF_SECURITY_TOKEN": org.security_token,
            "SF_CLIENT_ID": org.client_id,
            "SF_CLIENT_SECRET": org.client_secret,
        }
        found = sf_bridge("mappings", "preview", "--opportunity-id", opportunity, "--json", env=env)
        missing = sf_bridge("mappings", "preview", "--opportunity-id", "0068d00000009ZZ", env=env)
    assert found.returncode == 0, found.stderr
    plan = json.loads(found.stdout)["plan"]
    assert plan["opportunity_id"] == opportunity
    assert plan["customer"]["email"] == "ap@umbrella.example"
    assert plan["billing"]["days_until_due"] == 45
    assert [i["unit_amount"] for i in plan["items"]] == [2_200_000, 18_000]
    assert {i["currency"] for i in plan["items"]} == {"usd"}
    assert missing.returncode == 2
    assert "No opportunity with the Id 0068d00000009ZZ" in missing.stderr


def test_preview_in_a_single_currency_org_bills_in_the_org_currency(tmp_path: Path) -> None:
    """An org without multi-currency has no CurrencyIsoCode: the preview of a live deal bills
    in the org's currency (EUR here, not the mapping's first currency), and so does the preview
    of the record as sf-bridge fetched it; a record naming no currency at all says which one
    it assumed."""
    with SalesforceSandbox(
        host="127.0.0.1",
        port=0,
        long_poll_seconds=5.0,
        multi_currency=False,
        corporate_currency="EUR",
    ) as org:
        mappings = load_mappings(EXAMPLE_MAPPINGS_DIR)
        prepare_for_mappings(org, mappings)
        account = org.create_account("Bluebird GmbH", Billing_Email__c="ap@bluebird.example")
        opportunity = org.create_opportunity(
            account,
            "Bluebird - Team",
            [{"product_code": "SB-TEAM-M", "quantity": 12, "unit_price": 14.0}],
        )
        env = {
            "SF_LOGIN_URL": org.url,
            "SF_USERNAME": org.username,
            "SF_PASSWORD": org.password,
            "SF_SECURITY_TOKEN": org.security_token,
            "SF_CLIENT_ID": org.client_id,
            "SF_CLIENT_SECRET": org.client_secret,
        }
        live = sf_bridge("mappings", "preview", "--opportunity-id", opportunity, "--json", env=env)
        settings = Settings(**{k.lower(): v for k, v in env.items()})  # type: ignore[arg-type]
        [fetched] = SalesforceCrm.from_settings(settings, mappings).fetch_opportunities(
            [opportunity]
        )
    assert live.returncode == 0, live.stderr
    items = json.loads(live.stdout)["plan"]["items"]
    assert [(i["lookup_key"], i["currency"]) for i in items] == [("team_monthly_eur", "eur")]

    snapshot = tmp_path / "fetched.json"
    snapshot.write_text(json.dumps(fetched), encoding="utf-8")
    from_file = sf_bridge("mappings", "preview", "--file", str(snapshot), "--json")
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout)["plan"]["items"] == items

    bare = {k: v for k, v in fetched.items() if k != ORG_CURRENCY_KEY}
    assert "CurrencyIsoCode" not in bare
    (tmp_path / "bare.json").write_text(json.dumps(bare), encoding="utf-8")
    assumed = sf_bridge("mappings", "preview", "--file", str(tmp_path / "bare.json"))
    assert assumed.returncode == 0, assumed.stderr
    assert "no CurrencyIsoCode" in assumed.stdout
    assert "billed in USD" in assumed.stdout
