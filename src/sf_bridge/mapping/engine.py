"""The mapping engine: one Salesforce opportunity plus the mappings gives a provisioning plan,
or every reason it does not map.

Pure: no I/O, no clock, no globals. The opportunity is the record exactly as the Salesforce
REST query returns it (relationship fields nested, `OpportunityLineItems` as a subquery).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sf_bridge.crm.port import ORG_CURRENCY_KEY
from sf_bridge.mapping.codes import mapping_error
from sf_bridge.mapping.fields import (
    line_items,
    line_product_code,
    line_product_id,
    read_path,
    read_ref,
)
from sf_bridge.mapping.model import Addon, Mappings, Plan, ProductRule
from sf_bridge.mapping.money import format_minor, parse_decimal, to_minor_units
from sf_bridge.mapping.suggest import did_you_mean
from sf_bridge.mapping.terms import DealTerms
from sf_bridge.mapping.terms_engine import TermsMapper
from sf_bridge.mapping.values import (
    Resolved,
    check_bounds,
    is_empty,
    resolve,
    to_flag,
    to_whole_number,
)
from sf_bridge.plan import (
    AccountFacts,
    BillingTerms,
    CollectionMethod,
    CustomerIdentity,
    EntitlementValue,
    Interval,
    ItemKind,
    MappingError,
    PlanItem,
    PlanPhase,
    ProvisioningPlan,
    customer_key,
)

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
HUNDRED = Decimal(100)
MAX_UNIT_PRICE = Decimal(10) ** 10  # far above any real unit price; keeps amounts exact
# Stripe: a subscription takes "a list of up to 20 subscription items", and two items of one
# subscription cannot have the same price, so lines of one product at one price become one item.
MAX_SUBSCRIPTION_ITEMS = 20


@dataclass(frozen=True)
class Line:
    """One line item that maps onto the catalog."""

    record: dict[str, Any]
    line_id: str
    key: str
    rule: ProductRule
    quantity: int

    @property
    def where(self) -> str:
        return f"line item {self.line_id} (product {self.key})"


def _where_lines(lines: Sequence[Line]) -> str:
    """Names one line, or several (the first few Ids) with their products."""
    if len(lines) == 1:
        return lines[0].where
    ids = [ln.line_id or "without an Id" for ln in lines]
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    keys = ", ".join(dict.fromkeys(ln.key for ln in lines))
    return f"line items {shown} (product {keys})"


@dataclass(frozen=True)
class Sold:
    """Every line of the deal that sells one plan or add-on."""

    kind: ItemKind  # "plan" or "addon"
    owner: Plan | Addon
    lines: tuple[Line, ...]

    @property
    def name(self) -> str:
        return self.owner.name

    @property
    def quantity(self) -> int:
        return sum(ln.quantity for ln in self.lines)

    @property
    def label(self) -> str:
        return f"{'plan' if self.kind == 'plan' else 'add-on'} '{self.name}'"


def _where(record: dict[str, Any], key: str | None) -> str:
    line_id = record.get("Id") or "without an Id"
    return f"line item {line_id} (product {key})" if key else f"line item {line_id}"


@dataclass(frozen=True)
class Offer:
    """What one set of lines (the deal, or one phase of a ramp) sells."""

    plan: Plan | None  # None: an amendment adding add-ons to a plan that is not known
    plan_name: str
    items: list[PlanItem]
    entitlements: list[EntitlementValue]
    billing: BillingTerms | None
    collection: CollectionMethod | None


class _Mapper:
    def __init__(
        self, opportunity: dict[str, Any], mappings: Mappings, facts: AccountFacts
    ) -> None:
        self.opp = opportunity
        self.m = mappings
        self.facts = facts
        self.errors: list[MappingError] = []
        self.notes: list[str] = []

    def error(self, code: str, message: str, hint: str, where: str = "") -> None:
        self.errors.append(mapping_error(code, message, hint, where))

    # -- lines -------------------------------------------------------------------------------

    def product_key(self, record: dict[str, Any]) -> str | None:
        if self.m.match_by == "product_code":
            return line_product_code(record)
        return line_product_id(record)

    def lines(self) -> list[Line]:
        result: list[Line] = []
        what = "product code" if self.m.match_by == "product_code" else "Product2 Id"
        for record in line_items(self.opp):
            key = self.product_key(record)
            if key is None:
                self.error(
                    "unknown_product",
                    f"the line's product has no {what}, so it cannot be matched to the catalog.",
                    f"give the Salesforce product a {what} that is listed under 'products' in "
                    "the mapping, or remove the line from the deal.",
                    _where(record, None),
                )
                continue
            rule = self.m.product(key)
            if rule is None:
                known = [r.key for r in self.m.products.values()]
                self.error(
                    "unknown_product",
                    f"the {what} '{key}' is not in the mapping, so this line cannot be "
                    "provisioned.",
                    did_you_mean(
                        key,
                        known,
                        f"add '{key}' under 'products' in the mapping (as a plan or add-on), "
                        "or correct the product on the deal",
                    ),
                    _where(record, key),
                )
                continue
            quantity = self.quantity(record, key)
            if quantity is not None:
                result.append(Line(record, str(record.get("Id") or ""), key, rule, quantity))
        return result

    def quantity(self, record: dict[str, Any], key: str) -> int | None:
        raw = record.get("Quantity")
        number = parse_decimal(raw)
        if number is None or number <= 0 or number != number.to_integral_value():
            self.error(
                "invalid_quantity",
                f"the quantity is {raw!r}; it must be a whole number of at least 1.",
                "set the line's Quantity to the whole number of units sold.",
                _where(record, key),
            )
            return None
        return int(number)

    def choose_plan(self, lines: list[Line]) -> tuple[Sold, Plan] | None:
        plan_lines = [ln for ln in lines if ln.rule.plan is not None]
        if not plan_lines:
            if not any(e.code == "unknown_product" for e in self.errors) or not lines:
                self.error(
                    "no_plan",
                    "the deal has no line item for a plan, only add-ons or nothing.",
                    "add exactly one plan product (e.g. "
                    + ", ".join(sorted(r.key for r in self.m.products.values() if r.plan)[:3])
                    + ") to the deal.",
                    "Opportunity.OpportunityLineItems",
                )
            return None
        if len({ln.rule.plan for ln in plan_lines}) > 1:
            listed = ", ".join(dict.fromkeys(f"{ln.key} ({ln.rule.plan})" for ln in plan_lines))
            self.error(
                "multiple_plans",
                f"the deal has {len(plan_lines)} plan lines: {listed}; a deal provisions one plan.",
                "keep one plan line on the deal; sell the rest as add-ons or as a separate deal.",
                "Opportunity.OpportunityLineItems",
            )
            return None
        plan = self.m.plans[plan_lines[0].rule.plan or ""]
        sold = Sold("plan", plan, tuple(plan_lines))
        if plan.priced_per is None and sold.quantity != 1:
            over = f" over {len(plan_lines)} lines" if len(plan_lines) > 1 else ""
            self.error(
                "invalid_quantity",
                f"the plan '{plan.name}' is sold once per deal, but the quantity is "
                f"{sold.quantity}{over}.",
                "set the plan line's Quantity to 1 and sell extra units as add-ons.",
                _where_lines(plan_lines),
            )
        return sold, plan

    def addons_sold(self, lines: list[Line], plan: Plan | None) -> list[tuple[Sold, Addon]]:
        """The add-ons on the deal, each with all its lines (several lines of one add-on are
        one purchase: their quantities add up)."""
        found: dict[str, list[Line]] = {}
        for line in lines:
            if line.rule.addon is None:
                continue
            addon = self.m.addons[line.rule.addon]
            if plan is not None and plan.name not in addon.sold_with:
                allowed = ", ".join(addon.sold_with) or "no plan"
                self.error(
                    "addon_not_allowed",
                    f"the add-on '{addon.name}' cannot be sold with the plan '{plan.name}' "
                    f"(it is sold with: {allowed}).",
                    f"remove the line from the deal, or add '{plan.name}' to 'sold_with' of "
                    f"'{addon.name}' in the catalog.",
                    line.where,
                )
                continue
            found.setdefault(addon.name, []).append(line)
        return [
            (Sold("addon", self.m.addons[name], tuple(ls)), self.m.addons[name])
            for name, ls in found.items()
        ]

    # -- currency, interval, prices ----------------------------------------------------------

    def currency(self) -> str | None:
        """The deal's `CurrencyIsoCode`; in an org without multi-currency, the org's currency
        the fetch recorded (`ORG_CURRENCY_KEY`); failing both, the mapping's first currency."""
        raw, org_raw = self.opp.get("CurrencyIsoCode"), self.opp.get(ORG_CURRENCY_KEY)
        first = self.m.currencies[0]
        if not is_empty(raw):
            currency = str(raw).strip().lower()
        elif not is_empty(org_raw):
            currency = str(org_raw).strip().lower()
        else:
            currency = first
            self.notes.append(
                f"the deal names no currency (no CurrencyIsoCode): billed in {first.upper()}, "
                "the first of the mapping's currencies."
            )
        if currency not in self.m.currencies:
            accepted = ", ".join(c.upper() for c in self.m.currencies)
            if is_empty(raw):
                self.error(
                    "unsupported_currency",
                    f"the Salesforce org has a single currency, {currency.upper()} (no "
                    f"multi-currency), but the mapping bills only in {accepted}.",
                    f"add {currency.upper()} to 'currencies' and give every plan and add-on a "
                    "price in it.",
                    "Organization.DefaultCurrencyIsoCode",
                )
                return None
            self.error(
                "unsupported_currency",
                f"the deal is in {currency.upper()}, but the mapping bills only in {accepted}.",
                f"change the deal's currency to one of {accepted}, or add {currency.upper()} to "
                "'currencies' and give every plan and add-on a price in it.",
                "Opportunity.CurrencyIsoCode",
            )
            return None
        return currency

    def interval_of(self, line: Line) -> Interval | None:
        if line.rule.interval is not None:
            return line.rule.interval
        source = self.m.billing.interval
        if source is None:
            return None
        found = resolve(source, self.opp, line.record, "the billing interval")
        if isinstance(found, MappingError):
            self.errors.append(found)
            return None
        if found is None:
            fields = ", ".join(str(f) for f in source.fields)
            self.error(
                "missing_value",
                "the billing interval is not set on the deal and the mapping has no default.",
                f"fill in {fields} on the deal, or give the billing 'interval' a default.",
                fields,
            )
            return None
        value = str(found.value).strip().lower()
        if value not in ("month", "year"):
            self.error(
                "invalid_value",
                f"the billing interval {found.origin} is {found.value!r}; it must say month "
                "or year.",
                "translate the deal's values to month/year under 'values' of the billing "
                "'interval' in the mapping.",
                found.origin,
            )
            return None
        return value  # type: ignore[return-value]

    def common_interval(self, lines: list[Line]) -> Interval | None:
        intervals = {ln.line_id: self.interval_of(ln) for ln in lines}
        distinct = {i for i in intervals.values() if i is not None}
        if len(distinct) > 1:
            listed = "; ".join(
                dict.fromkeys(f"{ln.key}: {intervals[ln.line_id]}ly" for ln in lines)
            )
            self.error(
                "mixed_intervals",
                f"the deal mixes billing intervals ({listed}); one subscription bills at one "
                "interval.",
                "use the monthly or the yearly products only, or split the deal in two.",
                "Opportunity.OpportunityLineItems",
            )
            return None
        return distinct.pop() if distinct else None

    def items_of(self, sold: Sold, currency: str, interval: Interval) -> list[PlanItem]:
        """The subscription items of one plan or add-on: one per price charged, the lines at
        that price merged into one item with their total quantity."""
        price = sold.owner.price(currency, interval)
        if price is None:
            self.error(
                "no_catalog_price",
                f"the {sold.label} has no {interval}ly catalog price in {currency.upper()}.",
                f"add a price with 'currency: {currency.upper()}' and 'interval: {interval}' "
                f"to '{sold.name}' in the catalog (and in Stripe), or change the deal's currency.",
                _where_lines(sold.lines),
            )
            return []
        catalog = price.unit_amount
        charged: dict[int | None, list[Line]] = {}  # None: the catalog price
        kept_at_catalog: dict[int, list[Line]] = {}  # negotiated amounts charged at catalog
        for line in sold.lines:
            amount = self.sales_price(line, currency)
            if isinstance(amount, MappingError):
                self.errors.append(amount)
                continue
            if amount is None or amount == catalog:
                charged.setdefault(None, []).append(line)
            elif self.m.price_override_policy == "reject":
                self.error(
                    "price_override_not_allowed",
                    f"the negotiated price is {self.change(amount, catalog, currency)}, and the "
                    "mapping does not allow negotiated prices.",
                    "set the line to the catalog price, or set 'price_overrides: negotiated' in "
                    "the mapping.",
                    line.where,
                )
            elif self.m.price_override_policy == "catalog":
                charged.setdefault(None, []).append(line)
                kept_at_catalog.setdefault(amount, []).append(line)
            else:
                charged.setdefault(amount, []).append(line)
        for amount, lines in kept_at_catalog.items():
            self.notes.append(
                f"{_where_lines(lines)}: charged at the catalog price, not "
                f"{self.change(amount, catalog, currency)}."
            )
        items: list[PlanItem] = []
        for amount, lines in charged.items():
            where = _where_lines(lines)
            if amount is not None:
                self.notes.append(
                    f"{where}: negotiated price {self.change(amount, catalog, currency)}."
                )
            quantity = sum(ln.quantity for ln in lines)
            if len(lines) > 1:
                self.notes.append(
                    f"{where}: {len(lines)} lines of the {sold.label} at "
                    f"{format_minor(catalog if amount is None else amount, currency)} are one "
                    f"subscription item of quantity {quantity}."
                )
            items.append(
                PlanItem(
                    kind=sold.kind,
                    name=sold.name,
                    product_code=lines[0].key,
                    quantity=quantity,
                    currency=currency,
                    interval=interval,
                    lookup_key=price.lookup_key,
                    catalog_unit_amount=catalog,
                    unit_amount=amount,
                    line_item_id=lines[0].line_id or None,
                    stripe_product=sold.owner.display_name,
                )
            )
        return items

    @staticmethod
    def change(amount: int, catalog: int, currency: str) -> str:
        return (
            f"{format_minor(amount, currency)} instead of the catalog "
            f"{format_minor(catalog, currency)}"
        )

    def sales_price(self, line: Line, currency: str) -> int | MappingError | None:
        """The line's sales price after its discount, in minor units; None when the line has
        no sales price (the catalog price applies)."""
        unit_price = line.record.get("UnitPrice")
        if is_empty(unit_price):
            return None
        price = parse_decimal(unit_price)
        raw_discount = line.record.get("Discount")
        discount = parse_decimal(raw_discount)
        if price is None or not Decimal(0) <= price <= MAX_UNIT_PRICE:
            return mapping_error(
                "invalid_price",
                f"the sales price (UnitPrice) is {unit_price!r}; it must be an amount between 0 "
                f"and {MAX_UNIT_PRICE:,}.",
                "correct the line's Sales Price.",
                line.where,
            )
        if discount is None and not is_empty(raw_discount):
            return mapping_error(
                "invalid_price",
                f"the discount is {raw_discount!r}; it must be a percentage between 0 and 100.",
                "correct the line's Discount.",
                line.where,
            )
        discount = discount or Decimal(0)
        if not Decimal(0) <= discount <= HUNDRED:
            return mapping_error(
                "invalid_price",
                f"the discount is {discount}%; it must be between 0 and 100.",
                "correct the line's Discount.",
                line.where,
            )
        return to_minor_units(price * (HUNDRED - discount) / HUNDRED, currency)

    def check_item_count(self, items: list[PlanItem]) -> None:
        if len(items) <= MAX_SUBSCRIPTION_ITEMS:
            return
        counted: dict[str, int] = {}
        for item in items:
            counted[item.name] = counted.get(item.name, 0) + 1
        listed = ", ".join(
            f"{name} at {n} prices" if n > 1 else name for name, n in counted.items()
        )
        self.error(
            "too_many_items",
            f"the deal needs {len(items)} subscription items ({listed}), and a Stripe "
            f"subscription holds at most {MAX_SUBSCRIPTION_ITEMS}. Lines of one product at one "
            "price are already merged into one item.",
            "give the lines of each product one price (the same Sales Price and Discount), or "
            "split the deal into two opportunities.",
            "Opportunity.OpportunityLineItems",
        )

    # -- entitlements ------------------------------------------------------------------------

    def entitlements(
        self, owner: Plan, plan: Sold, addons: list[tuple[Sold, Addon]]
    ) -> list[EntitlementValue]:
        by_feature = {e.feature: e for e in owner.entitlements}
        result: list[EntitlementValue] = []
        for feature in self.m.features.values():
            value: int | bool | None
            source: str
            entitlement = by_feature.get(feature.name)
            if owner.priced_per == feature.name:
                value, source = plan.quantity, f"plan {owner.name} quantity"
            elif entitlement is None:
                value = False if feature.kind == "flag" else 0
                source = f"not in plan {owner.name}"
            elif entitlement.variable is None:
                value, source = entitlement.value, f"plan {owner.name}"
            else:
                found = self.variable(feature.name, feature.kind, owner, plan.lines)
                if found is None:
                    continue
                value, source = found
            assert value is not None
            for sold, addon in addons:
                if feature.kind == "flag" and feature.name in addon.switches_on:
                    value = True
                    source += f" + add-on {addon.name}"
                for name, per_unit in addon.adds_per_unit:
                    if name == feature.name and not isinstance(value, bool):
                        value += per_unit * sold.quantity
                        source += f" + add-on {addon.name} {per_unit} x {sold.quantity}"
            result.append(
                EntitlementValue(
                    feature.name, feature.kind, value, feature.unit, source, feature.combine
                )
            )
        return result

    def variable(
        self, feature: str, kind: str, plan: Plan, plan_lines: Sequence[Line]
    ) -> tuple[int | bool, str] | None:
        """A variable entitlement's value. A source that reads line item fields is read on
        every line of the plan; each line that carries a value is a grant of its own, and the
        grants combine by the feature's `combine` rule, as the grants of several deals do."""
        source = self.m.entitlement_sources.get(feature)
        reads_lines = source is not None and any(
            ref.obj == "OpportunityLineItem" for ref in source.fields
        )
        if not reads_lines or len(plan_lines) == 1:
            return self.variable_on_line(feature, kind, plan, plan_lines[0])
        assert source is not None
        what = f"the '{feature}' entitlement of plan {plan.name}"
        line_refs = [ref for ref in source.fields if ref.obj == "OpportunityLineItem"]
        carries = [
            any(not is_empty(read_ref(ref, self.opp, line.record)) for ref in line_refs)
            for line in plan_lines
        ]
        filled = [line for line, has in zip(plan_lines, carries, strict=True) if has]
        if filled and len(filled) < len(plan_lines):
            empty = [line for line, has in zip(plan_lines, carries, strict=True) if not has]
            fields = ", ".join(str(f) for f in line_refs)
            self.error(
                "missing_value",
                f"{what} is read from each plan line, but {_where_lines(empty)} has no value in "
                f"{fields} while {_where_lines(filled)} has one.",
                f"fill in {fields} on every line of plan {plan.name}, or on none of them (then "
                "the deal's value or the default applies once).",
                _where_lines(empty),
            )
            return None
        if not filled:
            return self.variable_on_line(feature, kind, plan, plan_lines[0])
        found = [self.variable_on_line(feature, kind, plan, line) for line in plan_lines]
        grants = [f for f in found if f is not None]
        if len(grants) < len(found):
            return None
        return self.combine_lines(feature, plan, grants)

    def combine_lines(
        self, feature_name: str, plan: Plan, grants: list[tuple[int | bool, str]]
    ) -> tuple[int | bool, str] | None:
        """The grants of several lines of one plan, combined by the feature's rule."""
        feature = self.m.features[feature_name]
        rule = feature.combine_rule
        values = [value for value, _ in grants]
        value: int | bool
        if rule == "any":
            value = any(values)
        elif rule == "max":
            value = max(int(v) for v in values)
        else:
            value = sum(int(v) for v in values)
        origins = ", ".join(dict.fromkeys(origin for _, origin in grants))
        shown = " + ".join(str(v) for v in values) if rule == "sum" else ", ".join(map(str, values))
        origin = f"{rule} of {len(grants)} plan lines ({shown}) from {origins}"
        if not isinstance(value, bool):
            entitlement = next(e for e in plan.entitlements if e.feature == feature_name)
            assert entitlement.variable is not None
            what = f"the '{feature_name}' entitlement of plan {plan.name}"
            spec = entitlement.variable
            problem = check_bounds(value, spec.minimum, spec.maximum, what, origin)
            if problem is not None:
                self.errors.append(problem)
                return None
        return value, origin

    def variable_on_line(
        self, feature: str, kind: str, plan: Plan, plan_line: Line
    ) -> tuple[int | bool, str] | None:
        entitlement = next(e for e in plan.entitlements if e.feature == feature)
        spec = entitlement.variable
        assert spec is not None
        source = self.m.entitlement_sources.get(feature)
        what = f"the '{feature}' entitlement of plan {plan.name}"
        found: Resolved | MappingError | None = None
        if source is not None:
            found = resolve(source, self.opp, plan_line.record, what)
        if isinstance(found, MappingError):
            self.errors.append(found)
            return None
        if found is None:
            if spec.default is not None and not spec.required:
                return spec.default, f"default of plan {plan.name}"
            fields = ", ".join(str(f) for f in source.fields) if source else "no field"
            self.error(
                "missing_value",
                f"{what} must come from the deal, but {fields} is empty.",
                f"fill in {fields} on the deal, or give the entitlement a 'default' in the "
                "catalog.",
                fields,
            )
            return None
        origin = found.origin
        converted = to_flag(found, what) if kind == "flag" else to_whole_number(found, what)
        if isinstance(converted, MappingError):
            self.errors.append(converted)
            return None
        if not isinstance(converted, bool):
            problem = check_bounds(converted, spec.minimum, spec.maximum, what, origin)
            if problem is not None:
                self.errors.append(problem)
                return None
        return converted, origin

    def addon_grants(self, addons: list[tuple[Sold, Addon]]) -> list[EntitlementValue]:
        """An amendment selling only add-ons grants what the add-ons add, nothing else (the
        grants combine with the account's other deals by each feature's rule)."""
        result: list[EntitlementValue] = []
        for feature in self.m.features.values():
            value: int | bool | None = None
            sources: list[str] = []
            for sold, addon in addons:
                if feature.kind == "flag" and feature.name in addon.switches_on:
                    value = True
                    sources.append(f"add-on {addon.name}")
                for name, per_unit in addon.adds_per_unit:
                    if name == feature.name and feature.kind != "flag":
                        value = int(value or 0) + per_unit * sold.quantity
                        sources.append(f"add-on {addon.name} {per_unit} x {sold.quantity}")
            if value is not None:
                result.append(
                    EntitlementValue(
                        feature.name,
                        feature.kind,
                        value,
                        feature.unit,
                        " + ".join(sources),
                        feature.combine,
                    )
                )
        return result

    # -- customer and billing ----------------------------------------------------------------

    def customer(
        self, collection: CollectionMethod | None, paid: bool, currency: str | None
    ) -> CustomerIdentity | None:
        ident = self.m.customer.identifier
        key = read_ref(ident, self.opp, None)
        account_id = self.opp.get("AccountId") or read_path(self.opp, ("Account", "Id"))
        if is_empty(key) or is_empty(account_id):
            missing = str(ident) if is_empty(key) else "Opportunity.AccountId"
            self.error(
                "missing_customer_identifier",
                f"the deal has no value in {missing}, which identifies the customer.",
                "attach the deal to an account (and fill in the field), or change "
                "'customer: identifier' in the mapping.",
                missing,
            )
            return None
        email: str | None = None
        for ref in self.m.customer.email:
            value = read_ref(ref, self.opp, None)
            if not is_empty(value):
                email = str(value).strip()
                if not EMAIL.match(email):
                    self.error(
                        "invalid_billing_email",
                        f"the billing email in {ref} is {email!r}, which is not an email address.",
                        f"correct {ref} on the deal.",
                        str(ref),
                    )
                    return None
                break
        if email is None and paid and collection == "send_invoice" and self.m.customer.email:
            fields = ", ".join(str(r) for r in self.m.customer.email)
            self.error(
                "missing_billing_email",
                f"the deal is invoiced but has no billing email (looked in {fields}).",
                f"fill in one of {fields}.",
                fields,
            )
        name = read_path(self.opp, ("Account", "Name")) or self.opp.get("Name") or ""
        by_currency = self.m.customer.split == "identifier_and_currency"
        return CustomerIdentity(
            account_id=str(account_id),
            name=str(name),
            customer_key=customer_key(str(key).strip(), currency if by_currency else None),
            email=email,
        )

    def collection_method(self) -> CollectionMethod | None:
        source = self.m.billing.collection_method
        if source is None:
            return self.m.billing.default_collection_method
        found = resolve(source, self.opp, None, "the collection method")
        if isinstance(found, MappingError):
            self.errors.append(found)
            return None
        if found is None:
            return self.m.billing.default_collection_method
        value = str(found.value).strip().lower()
        if value not in ("send_invoice", "charge_automatically"):
            self.error(
                "invalid_value",
                f"the collection method {found.origin} is {found.value!r}; it must be "
                "send_invoice or charge_automatically.",
                "translate the deal's values under 'values' of 'collection_method' in the mapping.",
                found.origin,
            )
            return None
        return value  # type: ignore[return-value]

    def days_until_due(self) -> int | None:
        source = self.m.billing.payment_terms
        if source is None:
            return self.m.billing.default_days_until_due
        found = resolve(source, self.opp, None, "the payment terms")
        if isinstance(found, MappingError):
            self.errors.append(found)
            return None
        if found is None:
            return self.m.billing.default_days_until_due
        days = to_whole_number(found, "the payment terms (days until due)")
        if isinstance(days, MappingError):
            self.errors.append(days)
            return None
        problem = check_bounds(days, 0, 730, "the payment terms (days until due)", found.origin)
        if problem is not None:
            self.errors.append(problem)
            return None
        return days

    # -- the whole deal ----------------------------------------------------------------------

    def run(self) -> ProvisioningPlan | list[MappingError]:
        opp_id = self.opp.get("Id")
        if is_empty(opp_id):
            return [
                mapping_error(
                    code="invalid_opportunity",
                    message="the record has no Id; it is not an Opportunity as the Salesforce "
                    "REST API returns it.",
                    hint="pass the Opportunity record with its Id, Account and "
                    "OpportunityLineItems.",
                    where="Opportunity.Id",
                )
            ]
        stage = self.opp.get("StageName")
        if stage is not None and stage not in self.m.won_stages and not self.opp.get("IsWon"):
            self.notes.append(
                f"stage '{stage}' is not a won stage; the worker would not pick it up."
            )
        currency = self.currency()
        lines = self.lines()
        terms = TermsMapper(self.opp, self.m.terms or DealTerms(), self.facts)
        intent = terms.intent(any(ln.rule.plan is not None for ln in lines))
        if intent == "amendment" and self.facts.live_subscription is False:
            self.error(
                "no_subscription_to_amend",
                "the deal amends the account's subscription, but the account has no live "
                "subscription.",
                "set the deal's type to new business (it starts a subscription), or provision "
                "the account's first deal before this one.",
                str(self.m.terms.deal_type.fields[0])
                if self.m.terms and self.m.terms.deal_type
                else "Opportunity",
            )
        starts = {ln.line_id: terms.line_start(ln.record, ln.where) for ln in lines}
        dates = sorted({d for d in starts.values() if d is not None})
        contract = terms.contract(dates)
        groups = [lines]
        if len(dates) > 1:
            groups = [
                [ln for ln in lines if (starts[ln.line_id] or dates[0]) == day] for day in dates
            ]
        offers = [self.offer(group, currency, intent) for group in groups]
        discount = terms.discount(currency)
        self.errors.extend(terms.errors)
        self.notes.extend(terms.notes)
        first = offers[0]
        if first is None or any(o is None for o in offers):
            return self.errors
        phases: list[PlanPhase] = []
        if len(offers) > 1:
            end = contract.end_date if contract else None
            for n, (day, offer) in enumerate(zip(dates, offers, strict=True)):
                assert offer is not None
                if offer.plan_name != first.plan_name:
                    self.error(
                        "multiple_plans",
                        f"the phase starting {day} sells the plan '{offer.plan_name}', the "
                        f"first phase '{first.plan_name}'; a ramp steps prices and quantities "
                        "of one plan.",
                        "sell one plan in every phase, or change plans with an amendment.",
                        "Opportunity.OpportunityLineItems",
                    )
                same = offer.entitlements == first.entitlements
                phases.append(
                    PlanPhase(
                        start_date=day.isoformat(),
                        end_date=dates[n + 1].isoformat() if n + 1 < len(dates) else end,
                        items=tuple(offer.items),
                        entitlements=() if same else tuple(offer.entitlements),
                        line_item_ids=tuple(ln.line_id for ln in groups[n] if ln.line_id),
                    )
                )
        customer = self.customer(first.collection, first.billing is not None, currency)
        if self.errors or customer is None:
            return self.errors
        amending = intent == "amendment"
        rules = (self.m.terms or DealTerms()).amendments
        return ProvisioningPlan(
            opportunity_id=str(opp_id),
            opportunity_name=str(self.opp.get("Name") or ""),
            customer=customer,
            plan_name=first.plan_name,
            plan_kind=first.plan.kind if first.plan is not None else "paid",
            items=tuple(first.items),
            entitlements=tuple(first.entitlements),
            billing=first.billing,
            mapping_version=self.m.version,
            notes=tuple(self.notes),
            intent=intent,
            amendment_lines=rules.lines if amending else None,
            proration=rules.proration if amending else None,
            contract=contract,
            phases=tuple(phases),
            discount=discount,
        )

    def offer(self, lines: list[Line], currency: str | None, intent: str) -> Offer | None:
        """The plan, items and entitlements one set of lines sells; None when it cannot.
        An amendment may sell add-ons only: they go with the account's current plan."""
        current: Plan | None = None
        if intent == "amendment" and not any(ln.rule.plan is not None for ln in lines):
            name = self.facts.plan_name
            current = self.m.plans.get(name) if name else None
            if current is None:
                self.notes.append(
                    "the account's current plan is not known"
                    + (f" ('{name}' is not in the catalog)" if name else "")
                    + ": the add-ons are not checked against 'sold_with'."
                )
            addons = self.addons_sold(lines, current)
            if not addons and not self.errors:
                self.error(
                    "no_plan",
                    "the amendment has no line item for a plan or an add-on.",
                    "add the plan or add-on products the amendment changes to the deal.",
                    "Opportunity.OpportunityLineItems",
                )
                return None
            sold_all = [sold for sold, _ in addons]
            entitlements = self.addon_grants(addons)
            plan_name = current.name if current is not None else (name or "")
            billed = self.billed(sold_all, currency)
            return Offer(current, plan_name, billed[0], entitlements, billed[1], billed[2])
        chosen = self.choose_plan(lines)
        if chosen is None:
            return None
        sold_plan, plan = chosen
        addons = self.addons_sold(lines, plan)
        everything = [sold_plan, *(sold for sold, _ in addons)]
        items: list[PlanItem] = []
        billing: BillingTerms | None = None
        collection: CollectionMethod | None = None
        if plan.kind == "paid":
            items, billing, collection = self.billed(everything, currency)
        else:
            for sold in everything:
                self.notes.append(
                    f"{_where_lines(sold.lines)}: {sold.name} x {sold.quantity}, not billed in "
                    "Stripe (custom plan)."
                )
        entitlements = self.entitlements(plan, sold_plan, addons)
        return Offer(plan, plan.name, items, entitlements, billing, collection)

    def billed(
        self, everything: list[Sold], currency: str | None
    ) -> tuple[list[PlanItem], BillingTerms | None, CollectionMethod | None]:
        items: list[PlanItem] = []
        billing: BillingTerms | None = None
        interval = self.common_interval([ln for sold in everything for ln in sold.lines])
        collection = self.collection_method()
        days = self.days_until_due() if collection == "send_invoice" else None
        if interval is not None and currency is not None:
            for sold in everything:
                items.extend(self.items_of(sold, currency, interval))
            self.check_item_count(items)
            if collection is not None:
                billing = BillingTerms(collection, days, interval, currency)
        return items, billing, collection


def map_opportunity(
    opportunity: dict[str, Any], mappings: Mappings, facts: AccountFacts | None = None
) -> ProvisioningPlan | list[MappingError]:
    """What this deal provisions, or every reason it cannot (each naming the line or field).
    `facts` says what is known of the account (its live subscription); without them the
    intent is never inferred to be an amendment."""
    return _Mapper(opportunity, mappings, facts or AccountFacts()).run()
