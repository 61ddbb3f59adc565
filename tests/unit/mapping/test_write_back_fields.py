"""What sf-bridge writes back onto an Opportunity is listed once (`WriteBackFields`): the
mappings' `write_back` keys, the values the write-back batch sends, the sandbox org's fields
and the setup guide's table all follow it."""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path

from ruamel.yaml import YAML

from sf_bridge.mapping import load_mappings
from sf_bridge.mapping.model import WRITE_BACK_KEYS, WriteBackFields
from sf_bridge.provisioning.batch import write_back_fields
from sf_bridge.provisioning.outcome import DealView
from sf_bridge.sandbox.salesforce_org.core import Org
from sf_bridge.sandbox.salesforce_org.seeding import prepare_for_mappings

REPO_ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = WriteBackFields.example()


def _setup_guide_table() -> list[tuple[str, str]]:
    """(field, type) rows of docs/setup-salesforce.md's "What sf-bridge writes back" table."""
    text = (REPO_ROOT / "docs" / "setup-salesforce.md").read_text()
    section = text.split("### What sf-bridge writes back", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([A-Za-z0-9_]+)` \| ([^|]+?) \|", section, re.M)


def test_the_setup_guide_lists_exactly_the_fields_written_back_with_their_types() -> None:
    expected = [(f.metadata["example"], f.metadata["type"]) for f in fields(WriteBackFields)]
    assert _setup_guide_table() == expected


def test_the_example_mappings_and_the_mapping_reference_name_every_field() -> None:
    assert load_mappings(REPO_ROOT / "mappings").write_back == EXAMPLE
    reference = (REPO_ROOT / "docs" / "mappings.md").read_text()
    block = reference.split("### `write_back`", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    documented = dict(YAML(typ="safe").load(block)["write_back"])
    assert list(documented) == list(WRITE_BACK_KEYS)
    assert WriteBackFields(**documented) == EXAMPLE
    [row] = [line for line in reference.splitlines() if line.endswith("| written back |")]
    assert re.findall(r"`([A-Za-z0-9_]+)`", row) == [name for _, name in EXAMPLE.named()]


def test_a_provisioned_deal_writes_a_value_for_every_field_the_mappings_name() -> None:
    deal = DealView(
        id=1,
        opportunity_id="006000000000001AAA",
        status="invoiced",
        current_step="write_back",
        attempts=0,
        source="stream",
        stripe_customer_id="cus_1",
        stripe_subscription_id="sub_1",
        hosted_invoice_url="https://invoice.example/1",
    )
    now = datetime(2026, 12, 1, tzinfo=UTC).isoformat()
    written = write_back_fields(deal, EXAMPLE, now)
    assert list(written) == [name for _, name in EXAMPLE.named()]
    assert written == {
        "SF_Bridge_Status__c": "Provisioned",
        "Stripe_Customer_Id__c": "cus_1",
        "Stripe_Subscription_Id__c": "sub_1",
        "Stripe_Invoice_URL__c": "https://invoice.example/1",
        "SF_Bridge_Error__c": None,
        "SF_Bridge_Provisioned_At__c": now,
        "Stripe_Schedule_Id__c": None,  # no contract starting later
        "SF_Bridge_Contract_Start__c": None,
    }
    only_status = WriteBackFields(status="Deal_Status__c")
    assert write_back_fields(deal, only_status, now) == {"Deal_Status__c": "Provisioned"}


def test_the_sandbox_org_declares_every_field_the_mappings_write_back() -> None:
    seeded = prepare_for_mappings(Org(), load_mappings(REPO_ROOT / "mappings"))
    for _, name in EXAMPLE.named():
        assert f"Opportunity.{name}" in seeded["fields"]
