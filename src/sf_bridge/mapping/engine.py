"""The mapping engine: one Salesforce opportunity plus the mappings gives a provisioning plan,
or every reason it does not map.

Pure: no I/O, no clock, no globals. The opportunity is the record exactly as the Salesforce
REST query returns it (relationship fields nested, `OpportunityLineItems` as a subquery).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

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
from sf_bridge.mapping.values import (
    Resolved,
    check_bounds,
    is_empty,
    resolve,
    to_flag,
    to_whole_number,
)
from sf_bridge.plan import (
    BillingTerms,
    CollectionMethod,
    CustomerIdentity,
    EntitlementValue,
    Interval,
    MappingError,
    PlanItem,
    ProvisioningPlan,
    customer_key,
)

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
HUNDRED = Decimal(100)
MAX_UNIT_PRICE = Decimal(10) ** 10  # far above any real unit price; keeps amounts exact


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


def _where(record: dict[str, Any], key: str | None) -> str:
    line_id = record.get("Id") or "without an Id"
    return f"line item {line_id} (product {key})" if key else f"line item {line_id}"


class _Mapper:
    def __init__(self, opportunity: dict[str, Any], mappings: Mappings) -> None:
        self.opp = opportunity
        self.m = mappings
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

    def choose_plan(self, lines: list[Line]) -> tuple[Line, Plan] | None:
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
        if len(plan_lines) > 1:
            listed = ", ".join(f"{ln.key} ({ln.rule.plan})" for ln in plan_lines)
            self.error(
                "multiple_plans",
                f"the deal has {len(plan_lines)} plan lines: {listed}; a deal provisions one plan.",
                "keep one plan line on the deal; sell the rest as add-ons or as a separate deal.",
                "Opportunity.OpportunityLineItems",
            )
            return None
        line = plan_lines[0]
        plan = self.m.plans[line.rule.plan or ""]
        if plan.priced_per is None and line.quantity != 1:
            self.error(
                "invalid_quantity",
                f"the plan '{plan.name}' is sold once per deal, but the quantity is "
                f"{line.quantity}.",
                "set the plan line's Quantity to 1 and sell extra units as add-ons.",
                line.where,
            )
        return line, plan

    def addon_lines(self, lines: list[Line], plan: Plan) -> list[tuple[Line, Addon]]:
        result: list[tuple[Line, Addon]] = []
        seen: dict[str, Line] = {}
        for line in lines:
            if line.rule.addon is None:
                continue
            addon = self.m.addons[line.rule.addon]
            if plan.name not in addon.sold_with:
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
            if addon.name in seen:
                self.error(
                    "duplicate_addon",
                    f"the add-on '{addon.name}' is on the deal twice "
                    f"(also {seen[addon.name].where}).",
                    "merge the lines into one with the total quantity.",
                    line.where,
                )
                continue
            seen[addon.name] = line
            result.append((line, addon))
        return result

    # -- currency, interval, prices ----------------------------------------------------------

    def currency(self) -> str | None:
        raw = self.opp.get("CurrencyIsoCode")
        currency = str(raw).strip().lower() if not is_empty(raw) else self.m.currencies[0]
        if currency not in self.m.currencies:
            accepted = ", ".join(c.upper() for c in self.m.currencies)
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
            listed = "; ".join(f"{ln.key}: {intervals[ln.line_id]}ly" for ln in lines)
            self.error(
                "mixed_intervals",
                f"the deal mixes billing intervals ({listed}); one subscription bills at one "
                "interval.",
                "use the monthly or the yearly products only, or split the deal in two.",
                "Opportunity.OpportunityLineItems",
            )
            return None
        return distinct.pop() if distinct else None

    def item(
        self,
        line: Line,
        kind: str,
        name: str,
        display: str,
        owner: Plan | Addon,
        currency: str,
        interval: Interval,
    ) -> PlanItem | None:
        price = owner.price(currency, interval)
        if price is None:
            label = "plan" if kind == "plan" else "add-on"
            self.error(
                "no_catalog_price",
                f"the {label} '{name}' has no {interval}ly catalog price in {currency.upper()}.",
                f"add a price with 'currency: {currency.upper()}' and 'interval: {interval}' "
                f"to '{name}' in the catalog (and in Stripe), or change the deal's currency.",
                line.where,
            )
            return None
        unit_amount = self.negotiated(line, price.unit_amount, currency)
        return PlanItem(
            kind=kind,  # type: ignore[arg-type]
            name=name,
            product_code=line.key,
            quantity=line.quantity,
            currency=currency,
            interval=interval,
            lookup_key=price.lookup_key,
            catalog_unit_amount=price.unit_amount,
            unit_amount=unit_amount,
            line_item_id=line.line_id or None,
            stripe_product=display,
        )

    def negotiated(self, line: Line, catalog: int, currency: str) -> int | None:
        """The negotiated unit price in minor units when it differs from the catalog's."""
        unit_price = line.record.get("UnitPrice")
        if is_empty(unit_price):
            return None
        price = parse_decimal(unit_price)
        raw_discount = line.record.get("Discount")
        discount = parse_decimal(raw_discount)
        if price is None or not Decimal(0) <= price <= MAX_UNIT_PRICE:
            self.error(
                "invalid_price",
                f"the sales price (UnitPrice) is {unit_price!r}; it must be an amount between 0 "
                f"and {MAX_UNIT_PRICE:,}.",
                "correct the line's Sales Price.",
                line.where,
            )
            return None
        if discount is None and not is_empty(raw_discount):
            self.error(
                "invalid_price",
                f"the discount is {raw_discount!r}; it must be a percentage between 0 and 100.",
                "correct the line's Discount.",
                line.where,
            )
            return None
        discount = discount or Decimal(0)
        if not Decimal(0) <= discount <= HUNDRED:
            self.error(
                "invalid_price",
                f"the discount is {discount}%; it must be between 0 and 100.",
                "correct the line's Discount.",
                line.where,
            )
            return None
        amount = to_minor_units(price * (HUNDRED - discount) / HUNDRED, currency)
        if amount == catalog:
            return None
        policy = self.m.price_override_policy
        change = (
            f"{format_minor(amount, currency)} instead of the catalog "
            f"{format_minor(catalog, currency)}"
        )
        if policy == "reject":
            self.error(
                "price_override_not_allowed",
                f"the negotiated price is {change}, and the mapping does not allow "
                "negotiated prices.",
                "set the line to the catalog price, or set 'price_overrides: negotiated' in "
                "the mapping.",
                line.where,
            )
            return None
        if policy == "catalog":
            self.notes.append(f"{line.where}: charged at the catalog price, not {change}.")
            return None
        self.notes.append(f"{line.where}: negotiated price {change}.")
        return amount

    # -- entitlements ------------------------------------------------------------------------

    def entitlements(
        self, plan: Plan, plan_line: Line, addons: list[tuple[Line, Addon]]
    ) -> list[EntitlementValue]:
        by_feature = {e.feature: e for e in plan.entitlements}
        result: list[EntitlementValue] = []
        for feature in self.m.features.values():
            value: int | bool | None
            source: str
            entitlement = by_feature.get(feature.name)
            if plan.priced_per == feature.name:
                value, source = plan_line.quantity, f"plan {plan.name} quantity"
            elif entitlement is None:
                value = False if feature.kind == "flag" else 0
                source = f"not in plan {plan.name}"
            elif entitlement.variable is None:
                value, source = entitlement.value, f"plan {plan.name}"
            else:
                found = self.variable(feature.name, feature.kind, plan, plan_line)
                if found is None:
                    continue
                value, source = found
            assert value is not None
            for line, addon in addons:
                if feature.kind == "flag" and feature.name in addon.switches_on:
                    value = True
                    source += f" + add-on {addon.name}"
                for name, per_unit in addon.adds_per_unit:
                    if name == feature.name and not isinstance(value, bool):
                        value += per_unit * line.quantity
                        source += f" + add-on {addon.name} {per_unit} x {line.quantity}"
            result.append(EntitlementValue(feature.name, feature.kind, value, feature.unit, source))
        return result

    def variable(
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
        chosen = self.choose_plan(lines)
        if chosen is None:
            return self.errors
        plan_line, plan = chosen
        addons = self.addon_lines(lines, plan)
        paid = plan.kind == "paid"
        items: list[PlanItem] = []
        billing: BillingTerms | None = None
        collection: CollectionMethod | None = None
        if paid:
            interval = self.common_interval([plan_line] + [ln for ln, _ in addons])
            collection = self.collection_method()
            days = self.days_until_due() if collection == "send_invoice" else None
            if interval is not None and currency is not None:
                entries: list[tuple[Line, str, str, str, Plan | Addon]]
                entries = [(plan_line, "plan", plan.name, plan.display_name, plan)]
                entries += [(ln, "addon", a.name, a.display_name, a) for ln, a in addons]
                for line, kind, name, display, owner in entries:
                    item = self.item(line, kind, name, display, owner, currency, interval)
                    if item is not None:
                        items.append(item)
                if collection is not None:
                    billing = BillingTerms(collection, days, interval, currency)
        else:
            for line in [plan_line] + [ln for ln, _ in addons]:
                self.notes.append(
                    f"{line.where}: {line.rule.item_name} x {line.quantity}, not billed in "
                    "Stripe (custom plan)."
                )
        entitlements = self.entitlements(plan, plan_line, addons)
        customer = self.customer(collection, paid, currency)
        if self.errors or customer is None:
            return self.errors
        return ProvisioningPlan(
            opportunity_id=str(opp_id),
            opportunity_name=str(self.opp.get("Name") or ""),
            customer=customer,
            plan_name=plan.name,
            plan_kind=plan.kind,
            items=tuple(items),
            entitlements=tuple(entitlements),
            billing=billing,
            mapping_version=self.m.version,
            notes=tuple(self.notes),
        )


def map_opportunity(
    opportunity: dict[str, Any], mappings: Mappings
) -> ProvisioningPlan | list[MappingError]:
    """What this deal provisions, or every reason it cannot (each naming the line or field)."""
    return _Mapper(opportunity, mappings).run()
