"""Checks between sections, once every file is read: names that must exist, types that must
agree, prices that must be there."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sf_bridge.mapping.issues import MappingIssue
from sf_bridge.mapping.schema import REQUIRED_SECTIONS, Draft, DraftSource
from sf_bridge.mapping.yamlread import Loc, did_you_mean, issue_at
from sf_bridge.plan import Interval

NUMERIC = ("limit", "seats")
SALESFORCE_ID = re.compile(r"^[A-Za-z0-9]{15}(?:[A-Za-z0-9]{3})?$")


class CrossChecker:
    def __init__(self, draft: Draft, folder: str) -> None:
        self.d = draft
        self.folder = folder
        self.issues: list[MappingIssue] = []

    def add(self, loc: Loc, code: str, message: str, hint: str = "") -> None:
        self.issues.append(issue_at(loc, code, message, hint))

    def run(self) -> list[MappingIssue]:
        self.sections()
        self.plans()
        self.addons()
        self.products()
        self.sources()
        self.lookup_keys()
        return self.issues

    def sections(self) -> None:
        for name in REQUIRED_SECTIONS:
            if name not in self.d.sections:
                self.add(
                    Loc(self.folder, 0, 0),
                    "missing_section",
                    f"no mapping file has a '{name}' section.",
                    f"add a '{name}:' section (see docs/mappings.md for an example).",
                )

    def feature(self, name: str, loc: Loc, what: str, kinds: Iterable[str] | None = None) -> bool:
        feature = self.d.features.get(name)
        if feature is None:
            if "features" in self.d.sections and name not in self.d.declared["feature"]:
                self.add(
                    loc,
                    "unknown_feature",
                    f"{what} names the feature '{name}', which is not in 'features'.",
                    did_you_mean(name, self.d.features, "add it to 'features' or use a known one"),
                )
            return False
        allowed = tuple(kinds) if kinds is not None else None
        if allowed is not None and feature.kind not in allowed:
            self.add(
                loc,
                "wrong_type",
                f"{what} uses the feature '{name}' as {' or '.join(allowed)}, but it is a "
                f"{feature.kind}.",
                "use a feature of the right type, or change the feature's type.",
            )
            return False
        return True

    def plan_ref(self, name: str, loc: Loc, what: str) -> bool:
        if name in self.d.plans:
            return True
        if "plans" in self.d.sections and name not in self.d.declared["plan"]:
            self.add(
                loc,
                "unknown_plan",
                f"{what} names the plan '{name}', which is not in 'plans'.",
                did_you_mean(name, self.d.plans, "add the plan to 'plans' or use a known one"),
            )
        return False

    def plans(self) -> None:
        for name, plan in self.d.plans.items():
            what = f"plan '{name}'"
            if plan.priced_per is not None:
                feature, loc = plan.priced_per
                self.feature(feature, loc, f"'priced_per' of {what}", NUMERIC)
                if any(e.feature == feature for e in plan.entitlements):
                    self.add(
                        loc,
                        "conflicting_settings",
                        f"{what} is priced per '{feature}' and also gives '{feature}' an "
                        "entitlement value.",
                        f"remove '{feature}' from its entitlements: the quantity sold sets it.",
                    )
            for ent in plan.entitlements:
                where = f"entitlement '{ent.feature}' of {what}"
                if not self.feature(ent.feature, ent.loc, where):
                    continue
                kind = self.d.features[ent.feature].kind
                values = [ent.value] if ent.variable is None else [ent.variable.default]
                for value in values:
                    if value is not None and isinstance(value, bool) != (kind == "flag"):
                        expected = "true or false" if kind == "flag" else "a whole number"
                        self.add(
                            ent.loc,
                            "wrong_type",
                            f"{where} is {value!r}, but '{ent.feature}' is a {kind}: it takes "
                            f"{expected}.",
                            f"write {expected}.",
                        )
                no_source = ent.feature not in self.d.entitlement_sources
                if ent.variable is not None and ent.variable.default is None and no_source:
                    self.add(
                        ent.loc,
                        "variable_without_source",
                        f"{where} is variable but has no source in 'entitlement_sources' "
                        "and no default.",
                        f"add '{ent.feature}: Opportunity.<Field>' under "
                        "'entitlement_sources', or give it a 'default'.",
                    )

    def addons(self) -> None:
        for name, addon in self.d.addons.items():
            what = f"add-on '{name}'"
            for feature, _amount, loc in addon.adds_per_unit:
                self.feature(feature, loc, f"'adds_per_unit' of {what}", NUMERIC)
            for feature, loc in addon.switches_on:
                self.feature(feature, loc, f"'switches_on' of {what}", ("flag",))
            for plan, loc in addon.sold_with:
                self.plan_ref(plan, loc, f"'sold_with' of {what}")

    def intervals_of(self, interval: Interval | None) -> list[Interval] | None:
        if interval is not None:
            return [interval]
        source = self.d.interval
        if source is None:
            return None
        found: list[Interval] = []
        for value, _loc in source.value_locs:
            if value in ("month", "year") and value not in found:
                found.append(value)
        return found

    def products(self) -> None:
        currencies = [c for c, _ in self.d.currencies]
        reported: set[tuple[str, str, str]] = set()
        for code, product in self.d.products.items():
            what = f"product '{code}'"
            if self.d.match_by == "product_id" and not SALESFORCE_ID.match(code):
                self.add(
                    product.loc,
                    "invalid_product_id",
                    f"{what} is not a Salesforce Product2 Id, but 'match_products_by' is "
                    "product_id.",
                    "use the product's 15- or 18-character Id (it starts with 01t), or set "
                    "'match_products_by: product_code' to list product codes.",
                )
            if product.plan is not None:
                name, loc = product.plan
                if not self.plan_ref(name, loc, what):
                    continue
                plan = self.d.plans[name]
                if plan.kind != "paid":
                    continue
                prices = [p for p, _ in plan.prices]
                owner, owner_loc = f"plan '{name}'", plan.loc
            else:
                assert product.addon is not None
                name, loc = product.addon
                if name not in self.d.addons:
                    if name in self.d.declared["addon"]:
                        continue
                    self.add(
                        loc,
                        "unknown_addon",
                        f"{what} names the add-on '{name}', which is not in 'addons'.",
                        did_you_mean(name, self.d.addons, "add it to 'addons' or use a known one"),
                    )
                    continue
                addon = self.d.addons[name]
                # with 'sold_with' unreadable, it may go with any plan: check its prices too
                sold_with_paid = any(
                    self.d.plans.get(p) is not None and self.d.plans[p].kind == "paid"
                    for p, _ in addon.sold_with
                ) or (
                    not addon.sold_with_known
                    and any(p.kind == "paid" for p in self.d.plans.values())
                )
                if not sold_with_paid:
                    continue
                prices = [p for p, _ in addon.prices]
                owner, owner_loc = f"add-on '{name}'", addon.loc
            if owner in self.d.unreadable_prices:
                continue
            intervals = self.intervals_of(product.interval)
            if intervals is None:
                self.add(
                    product.loc,
                    "missing_interval",
                    f"{what} is billed in Stripe but its billing interval is not said.",
                    "add 'interval: month' or 'interval: year' to it, or a billing 'interval' "
                    "source under 'billing'.",
                )
                continue
            partial = self.d.partial_prices.get(owner, [])
            for interval in intervals:
                for currency in currencies:
                    if any(p.currency == currency and p.interval == interval for p in prices):
                        continue
                    if any(c in (None, currency) and i in (None, interval) for c, i in partial):
                        continue  # an entry with an error may be this price: said once
                    if (owner, interval, currency) in reported:
                        continue
                    reported.add((owner, interval, currency))
                    self.add(
                        owner_loc,
                        "missing_price",
                        f"{owner} has no {interval}ly price in {currency.upper()}, but {what} "
                        f"sells it {interval}ly and 'currencies' accepts {currency.upper()}.",
                        f"add a price with 'currency: {currency.upper()}' and "
                        f"'interval: {interval}', or remove {currency.upper()} from "
                        "'currencies'.",
                    )

    def sources(self) -> None:
        for feature, source in self.d.entitlement_sources.items():
            if not self.feature(feature, source.loc, "'entitlement_sources'"):
                continue
            self.source_values(feature, source)

    def source_values(self, feature: str, source: DraftSource) -> None:
        kind = self.d.features[feature].kind
        for value, loc in source.value_locs:
            if isinstance(value, bool) != (kind == "flag"):
                expected = "true or false" if kind == "flag" else "a whole number"
                self.add(
                    loc,
                    "wrong_type",
                    f"the source of '{feature}' gives {value!r}, but '{feature}' is a {kind}.",
                    f"write {expected}.",
                )

    def lookup_keys(self) -> None:
        seen: dict[str, Loc] = {}
        owners = [(f"plan '{n}'", p.prices) for n, p in self.d.plans.items()]
        owners += [(f"add-on '{n}'", a.prices) for n, a in self.d.addons.items()]
        for owner, prices in owners:
            combos: dict[tuple[str, str], Loc] = {}
            for price, loc in prices:
                combo = (price.currency, price.interval)
                if combo in combos:
                    self.add(
                        loc,
                        "duplicate_price",
                        f"{owner} has two {price.interval}ly prices in {price.currency.upper()} "
                        f"(the other on line {combos[combo].line}).",
                        "keep one price per currency and interval.",
                    )
                combos[combo] = loc
                if price.lookup_key in seen:
                    first = seen[price.lookup_key]
                    self.add(
                        loc,
                        "duplicate_lookup_key",
                        f"the lookup_key '{price.lookup_key}' is used twice (also at "
                        f"{first.file}:{first.line}).",
                        "give every price its own lookup_key, as in Stripe.",
                    )
                seen.setdefault(price.lookup_key, loc)
