"""The demo's sample deals map onto the example mappings as the demo expects, and the fix it
applies to the parked deal is one `mappings check` accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sf_bridge.demo.mapping_fix import apply_fix
from sf_bridge.demo.scenario import SCENARIO, DemoDeal
from sf_bridge.mapping import check_mappings, load_mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import MappingError, ProvisioningPlan

OppFactory = Callable[[DemoDeal, int], dict[str, Any]]
MAPPED = [d for d in SCENARIO.deals if not d.expect.parks_with]
PARKED = [d for d in SCENARIO.deals if d.expect.parks_with]


@pytest.fixture(scope="module")
def mappings() -> Any:
    return load_mappings(Path(__file__).resolve().parents[3] / "mappings")


@pytest.mark.parametrize("deal", MAPPED, ids=lambda d: d.key)
def test_sample_deal_maps_as_the_demo_expects(
    deal: DemoDeal, mappings: Any, demo_opportunity: OppFactory
) -> None:
    plan = map_opportunity(demo_opportunity(deal, 1), mappings)
    assert isinstance(plan, ProvisioningPlan), plan
    expect = deal.expect
    assert plan.plan_kind == expect.plan_kind
    if expect.plan_kind == "paid":
        assert plan.billing is not None
        assert plan.billing.collection_method == expect.collection_method
        if expect.days_until_due is not None:
            assert plan.billing.days_until_due == expect.days_until_due
    else:
        assert plan.billing is None
    assert sum(1 for item in plan.items if item.has_override) == expect.negotiated_prices
    values = {e.feature: e.value for e in plan.entitlements}
    for feature, value in expect.entitlements.items():
        assert values[feature] == value, feature


@pytest.mark.parametrize("deal", PARKED, ids=lambda d: d.key)
def test_parked_deal_fails_to_map_until_the_fix(
    deal: DemoDeal, mappings: Any, demo_opportunity: OppFactory, example_mappings_copy: Path
) -> None:
    errors = map_opportunity(demo_opportunity(deal, 2), mappings)
    assert isinstance(errors, list)
    assert all(isinstance(e, MappingError) for e in errors)
    assert any(deal.expect.parks_with in str(e) for e in errors)

    original = {p.name: p.read_text().splitlines() for p in example_mappings_copy.glob("*.yaml")}
    edited = apply_fix(example_mappings_copy, SCENARIO.fix)
    before, after = original[edited.name], edited.read_text().splitlines()
    added = [line for line in after if line not in before]
    assert len(after) == len(before) + 1, "the fix adds one line and changes nothing else"
    assert [line for line in after if line in before] == before
    assert added[0].strip().startswith(f"{SCENARIO.fix.product_code}: ")
    assert "#" in added[0], "the edit carries a comment saying why"
    assert check_mappings(example_mappings_copy) == []
    fixed = load_mappings(example_mappings_copy)
    assert fixed.version != mappings.version
    plan = map_opportunity(demo_opportunity(deal, 2), fixed)
    assert isinstance(plan, ProvisioningPlan), plan
    values = {e.feature: e.value for e in plan.entitlements}
    for feature, value in deal.expect.entitlements.items():
        assert values[feature] == value, feature


def test_every_sample_product_is_in_the_org_price_book() -> None:
    codes = {p.code for p in SCENARIO.products}
    for deal in SCENARIO.deals:
        assert {line.product_code for line in deal.lines} <= codes, deal.key


def test_fix_refuses_a_product_already_mapped(example_mappings_copy: Path) -> None:
    from sf_bridge.demo.components import DemoFailed

    apply_fix(example_mappings_copy, SCENARIO.fix)
    with pytest.raises(DemoFailed, match="already maps"):
        apply_fix(example_mappings_copy, SCENARIO.fix)
