"""`sf-bridge mappings preview` takes an Opportunity Id in either form, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

from sf_bridge.crm.soql import to_18
from sf_bridge.mapping import load_mappings
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from sf_bridge.sandbox.salesforce_org.seeding import prepare_for_mappings
from tests.acceptance.test_mappings_cli import sf_bridge
from tests.fixtures.mapping import EXAMPLE_MAPPINGS_DIR, EXAMPLE_OPPORTUNITIES_DIR


def test_preview_fetches_an_opportunity_by_either_form_of_its_id() -> None:
    with SalesforceSandbox(host="127.0.0.1", port=0, long_poll_seconds=5.0) as org:
        prepare_for_mappings(org, load_mappings(EXAMPLE_MAPPINGS_DIR))
        account = org.create_account("Umbrella Health", Billing_Email__c="ap@umbrella.example")
        opportunity = org.create_opportunity(
            account,
            "Umbrella - Team",
            [{"product_code": "SB-TEAM-M", "quantity": 12, "unit_price": 15.0}],
            Payment_Method__c="Invoice",
            Payment_Terms__c="Net 15",
        )
        env = {
            "SF_LOGIN_URL": org.url,
            "SF_USERNAME": org.username,
            "SF_PASSWORD": org.password,
            "SF_SECURITY_TOKEN": org.security_token,
            "SF_CLIENT_ID": org.client_id,
            "SF_CLIENT_SECRET": org.client_secret,
        }
        previews = {
            form: sf_bridge("mappings", "preview", "--opportunity-id", form, "--json", env=env)
            for form in (opportunity[:15], opportunity.lower())
        }
        malformed = sf_bridge("mappings", "preview", "--opportunity-id", "006-Umbrella", env=env)
    for form, done in previews.items():
        assert done.returncode == 0, (form, done.stderr)
        plan = json.loads(done.stdout)["plan"]
        assert (plan["opportunity_id"], plan["customer"]["account_id"]) == (opportunity, account)
    assert malformed.returncode == 2
    message = " ".join(malformed.stderr.split())
    assert "'006-Umbrella' is not a Salesforce Opportunity Id" in message
    assert "15 or 18 letters and digits" in message


def test_preview_of_a_file_shows_the_ids_provisioning_would_store(tmp_path: Path) -> None:
    record = json.loads((EXAMPLE_OPPORTUNITIES_DIR / "team-self-serve.json").read_text())
    record["Id"], record["AccountId"] = "006Hs00001BlueT", "001Hs00002BlueG"
    record["Account"]["Id"] = "001Hs00002BlueG"
    path = tmp_path / "short-ids.json"
    path.write_text(json.dumps(record))
    done = sf_bridge("mappings", "preview", "--file", str(path), "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)["plan"]
    assert plan["opportunity_id"] == to_18("006Hs00001BlueT")
    assert plan["customer"]["account_id"] == to_18("001Hs00002BlueG")
