"""How an account's deals combine, through the entitlement API: each feature by the rule the
mappings declare (the example catalog: seats add up, data retention takes the longest)."""

from __future__ import annotations

from typing import Any

import httpx

from sf_bridge.mapping import Mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import ProvisioningPlan
from tests.fixtures.api import ACCOUNT_ID, ApiServer, seed_deal


def _entitlements_of(mappings: Mappings, opportunity: dict[str, Any]) -> Any:
    plan = map_opportunity(opportunity, mappings)
    assert isinstance(plan, ProvisioningPlan), plan
    return plan.entitlements


def test_seats_add_up_and_retention_takes_the_longest(
    api_server: ApiServer,
    http: httpx.Client,
    example_mappings: Mappings,
    example_opportunity: Any,
) -> None:
    contract = example_opportunity("custom-contract")  # 10 seats, retention "1 year"
    contract.update(Seats__c=10, Data_Retention__c="1 year")
    team = example_opportunity("team-self-serve")  # 5 seats of the team plan: 30 days
    team["OpportunityLineItems"]["records"][0]["Quantity"] = 5.0
    seed_deal(
        api_server.session_factory,
        _entitlements_of(example_mappings, contract),
        opportunity_id="006000000000001AAA",
        subscription_id=None,
    )
    seed_deal(
        api_server.session_factory,
        _entitlements_of(example_mappings, team),
        opportunity_id="006000000000002AAA",
        subscription_id="sub_team",
    )

    features = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements").json()["entitlements"]
    retention = features["data_retention"]
    assert [g["value"] for g in retention["granted_by"]] == [365, 30]
    assert (retention["limit"], retention["combine"]) == (365, "max")
    seats = features["seats"]
    assert [g["value"] for g in seats["granted_by"]] == [10, 5]
    assert (seats["limit"], seats["combine"]) == (15, "sum")
    assert features["sso"]["enabled"] is True  # on in one deal: on

    one = http.get(f"/v1/customers/{ACCOUNT_ID}/entitlements/data_retention").json()
    assert one["limit"] == 365
