"""Properties of the mapping engine that must hold for any deal (hypothesis)."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sf_bridge.mapping import Mappings, load_mappings
from sf_bridge.mapping.engine import map_opportunity
from sf_bridge.plan import MappingError, ProvisioningPlan
from tests.fixtures.mapping import EXAMPLE_MAPPINGS_DIR, make_opportunity, opportunity_line

MAPPINGS: Mappings = load_mappings(EXAMPLE_MAPPINGS_DIR)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CURRENCIES = ["USD", "EUR"]
INTERVAL_SUFFIX = {"month": "M", "year": "Y"}


def code_for(name: str, interval: str) -> str:
    for rule in MAPPINGS.products.values():
        if rule.item_name == name and rule.interval in (interval, None):
            return rule.key
    raise AssertionError(f"no product for {name} {interval}")


def catalog_major(name: str, currency: str, interval: str) -> float:
    owner = MAPPINGS.plans.get(name) or MAPPINGS.addons[name]
    price = owner.price(currency.lower(), interval)  # type: ignore[arg-type]
    assert price is not None
    return float(Decimal(price.unit_amount) / 100)


@st.composite
def deals(draw: st.DrawFn, extra_addon: bool = False) -> tuple[dict[str, Any], str, list[str]]:
    """A deal on a plan with allowed add-ons at catalog prices; returns it with the plan and
    the add-ons not yet on it."""
    plan = draw(st.sampled_from(sorted(MAPPINGS.plans)))
    interval = draw(st.sampled_from(["month", "year"]))
    currency = draw(st.sampled_from(CURRENCIES))
    allowed = sorted(a.name for a in MAPPINGS.addons.values() if plan in a.sold_with)
    chosen = draw(st.lists(st.sampled_from(allowed), unique=True)) if allowed else []
    is_custom = MAPPINGS.plans[plan].kind == "custom"
    quantity = draw(st.integers(1, 500)) if MAPPINGS.plans[plan].priced_per else 1
    price = 0.0 if is_custom else catalog_major(plan, currency, interval)
    lines = [opportunity_line("00kPLAN", code_for(plan, interval), float(quantity), price)]
    for index, addon in enumerate(chosen):
        qty = draw(st.integers(1, 200))
        unit = catalog_major(addon, currency, interval)
        lines.append(
            opportunity_line(f"00kADD{index}", code_for(addon, interval), float(qty), unit)
        )
    opp = make_opportunity(
        lines,
        currency,
        Seats__c=float(draw(st.integers(1, 100_000))),
        API_Calls_per_Month__c=draw(st.sampled_from([None, "1,000", "250000", 42.0])),
        Data_Retention__c=draw(st.sampled_from([None, "30 days", "1 year", "7 years"])),
        Payment_Terms__c=draw(st.sampled_from([None, "Net 30", "Net 45", "Due on receipt"])),
        Payment_Method__c=draw(st.sampled_from([None, "Invoice", "Credit card"])),
    )
    remaining = [a for a in allowed if a not in chosen]
    return opp, interval, remaining


def as_plan(result: ProvisioningPlan | list[MappingError]) -> ProvisioningPlan:
    assert isinstance(result, ProvisioningPlan), [str(e) for e in result]
    return result


@SETTINGS
@given(deals(), st.data())
def test_adding_an_addon_never_lowers_an_entitlement(
    deal: tuple[dict[str, Any], str, list[str]], data: st.DataObject
) -> None:
    opp, interval, remaining = deal
    assume(remaining)
    before = as_plan(map_opportunity(opp, MAPPINGS))
    addon = data.draw(st.sampled_from(remaining))
    quantity = data.draw(st.integers(1, 50))
    currency = opp["CurrencyIsoCode"]
    bigger = make_opportunity(
        [
            *opp["OpportunityLineItems"]["records"],
            opportunity_line(
                "00kNEW",
                code_for(addon, interval),
                float(quantity),
                catalog_major(addon, currency, interval),
            ),
        ],
        currency,
        **{k: v for k, v in opp.items() if k.endswith("__c")},
    )
    after = as_plan(map_opportunity(bigger, MAPPINGS))
    old = {e.feature: e.value for e in before.entitlements}
    new = {e.feature: e.value for e in after.entitlements}
    assert old.keys() == new.keys()
    for feature, value in old.items():
        assert new[feature] >= value, (feature, value, new[feature])
    assert new != old, f"the add-on {addon} must add something"


@SETTINGS
@given(deals())
def test_a_line_at_catalog_price_never_produces_an_override(
    deal: tuple[dict[str, Any], str, list[str]],
) -> None:
    opp, _interval, _remaining = deal
    plan = as_plan(map_opportunity(opp, MAPPINGS))
    assert all(item.unit_amount is None and not item.has_override for item in plan.items)
    assert not any("negotiated" in note for note in plan.notes)


@SETTINGS
@given(deals(), st.integers(1, 99))
def test_a_discount_gives_the_discounted_price_in_minor_units(
    deal: tuple[dict[str, Any], str, list[str]], discount: int
) -> None:
    opp, _interval, _remaining = deal
    for line in opp["OpportunityLineItems"]["records"]:
        line["Discount"] = float(discount)
    plan = as_plan(map_opportunity(opp, MAPPINGS))
    for item in plan.items:
        assert item.catalog_unit_amount is not None
        expected = int(
            (Decimal(item.catalog_unit_amount) * (100 - discount) / 100).to_integral_value(
                rounding="ROUND_HALF_UP"
            )
        )
        assert item.unit_amount == (None if expected == item.catalog_unit_amount else expected)


known_codes = st.sampled_from(sorted(rule.key for rule in MAPPINGS.products.values()))
any_codes = st.one_of(
    known_codes,
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789", min_size=1, max_size=12),
)


@SETTINGS
@given(st.lists(st.tuples(any_codes, st.integers(1, 20)), min_size=1, max_size=6))
def test_no_product_is_ever_silently_dropped(lines: list[tuple[str, int]]) -> None:
    records = [
        opportunity_line(f"00kL{i}", code, float(qty), 1.0) for i, (code, qty) in enumerate(lines)
    ]
    result = map_opportunity(make_opportunity(records, Seats__c=10.0), MAPPINGS)
    unknown = [
        (f"00kL{i}", code) for i, (code, _q) in enumerate(lines) if MAPPINGS.product(code) is None
    ]
    if isinstance(result, ProvisioningPlan):
        assert not unknown
        accounted = {item.line_item_id for item in result.items}
        # a note names every line it speaks of ("line items 00kL0, 00kL1 (product ...)")
        accounted |= {found for n in result.notes for found in re.findall(r"00kL\d+", n)}
        # a long list is shortened ("00kL0, 00kL1, 00kL2 and 2 more (product X)"): the lines
        # it does not name are counted against the product it names
        more = {
            code: int(count)
            for n in result.notes
            for count, code in re.findall(r" and (\d+) more \(product ([^)]+)\)", n)
        }
        for i, (code, _q) in enumerate(lines):
            if f"00kL{i}" not in accounted and more.get(code, 0) > 0:
                more[code] -= 1
                accounted.add(f"00kL{i}")
        assert accounted == {f"00kL{i}" for i in range(len(lines))}
        assert not any(more.values()), more
    else:
        for line_id, code in unknown:
            assert any(
                e.code == "unknown_product" and e.where == f"line item {line_id} (product {code})"
                for e in result
            ), [str(e) for e in result]
        assert result, "a deal that does not map says why"


odd_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["Net 45", "1,000", "2 years", "Credit card", "usd", "EUR", "1e400", "NaN"]),
    st.sampled_from([1e308, -1e308, float("nan"), float("inf"), 0.004, 99.995]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
LINE_FIELDS = ["Quantity", "UnitPrice", "Discount", "Id"]
OPP_FIELDS = ["CurrencyIsoCode", "Seats__c", "API_Calls_per_Month__c", "Data_Retention__c",
              "Payment_Terms__c", "Payment_Method__c", "Billing_Email__c", "AccountId", "Account",
              "StageName", "Name"]  # fmt: skip


@SETTINGS
@given(
    st.lists(st.tuples(known_codes, st.dictionaries(st.sampled_from(LINE_FIELDS), odd_values)),
             max_size=4),
    st.dictionaries(st.sampled_from(OPP_FIELDS), odd_values),
)  # fmt: skip
def test_any_field_values_give_a_plan_or_errors_never_a_crash(
    lines: list[tuple[str, dict[str, Any]]], fields: dict[str, Any]
) -> None:
    records = []
    for index, (code, overrides) in enumerate(lines):
        record = opportunity_line(f"00kO{index}", code, 1.0, 10.0)
        record.update(overrides)
        records.append(record)
    result = map_opportunity(make_opportunity(records, **fields), MAPPINGS)
    if isinstance(result, list):
        assert result
        assert all(isinstance(e, MappingError) and e.hint for e in result)
    else:
        assert result.opportunity_id
