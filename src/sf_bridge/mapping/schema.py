"""The mapping file format: one reader per top-level section, filling a `Draft`.

Each file may hold any of the sections (the example splits them into `catalog.yaml` and
`salesforce.yaml`); a section may appear in one file only. Cross-references between sections
are checked afterwards by `sf_bridge.mapping.crosscheck`, once every file has been read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml.nodes import Node

from sf_bridge.mapping import money
from sf_bridge.mapping.fields import SOURCE_OBJECTS, is_api_name, is_writable_field_name
from sf_bridge.mapping.model import (
    WRITE_BACK_KEYS,
    FieldRef,
    MatchBy,
    OverridePolicy,
    Price,
    ValueSource,
    VariableSpec,
    WriteBackFields,
)
from sf_bridge.mapping.terms_schema import TERMS_SECTIONS, DraftTerms, TermsReader
from sf_bridge.mapping.walker import Walker
from sf_bridge.mapping.yamlread import Ctx, Loc, describe, did_you_mean, is_null, tag_of
from sf_bridge.plan import CUSTOMER_SPLITS, Combine, CustomerSplit, FeatureKind, Interval, PlanKind

SECTIONS = (
    "features",
    "plans",
    "addons",
    "currencies",
    "won_stages",
    "match_products_by",
    "products",
    "customer",
    "billing",
    "entitlement_sources",
    "price_overrides",
    "write_back",
    "when_unwon",
    "card_payments",
    *TERMS_SECTIONS,
)
REQUIRED_SECTIONS = ("features", "plans", "currencies", "products")
FEATURE_TYPES = ("flag", "limit", "seats")
COMBINE_RULES = ("sum", "max", "any")
PLAN_KINDS = ("paid", "custom")
INTERVALS = ("month", "year")
COLLECTION_METHODS = ("send_invoice", "charge_automatically")
OVERRIDE_POLICIES = ("negotiated", "catalog", "reject")
MATCH_BY = ("product_code", "product_id")
UNWON_POLICIES = ("review", "cancel")  # what to do with a provisioned deal no longer won
# when a card deal's entitlements take effect: at once, or when its first invoice is paid
CARD_ENTITLEMENT_POLICIES = ("on_first_payment", "at_once")
CARD_PAYMENTS_KEYS = ("entitlements",)


@dataclass
class DraftFeature:
    kind: FeatureKind
    unit: str | None
    description: str
    loc: Loc
    combine: Combine | None = None


@dataclass
class DraftEntitlement:
    feature: str
    value: int | bool | None
    variable: VariableSpec | None
    loc: Loc


@dataclass
class DraftPlan:
    kind: PlanKind
    display_name: str
    prices: list[tuple[Price, Loc]]
    entitlements: list[DraftEntitlement]
    priced_per: tuple[str, Loc] | None
    loc: Loc


@dataclass
class DraftAddon:
    display_name: str
    prices: list[tuple[Price, Loc]]
    adds_per_unit: list[tuple[str, int, Loc]]
    switches_on: list[tuple[str, Loc]]
    sold_with: list[tuple[str, Loc]]
    loc: Loc
    # False when 'sold_with' is missing or unreadable: which plans it goes with is unknown
    sold_with_known: bool = True


@dataclass
class DraftProduct:
    key: str
    plan: tuple[str, Loc] | None
    addon: tuple[str, Loc] | None
    interval: Interval | None
    loc: Loc


@dataclass
class DraftSource:
    source: ValueSource
    loc: Loc
    value_locs: list[tuple[Any, Loc]] = field(default_factory=list)


@dataclass
class Draft:
    """Everything read from the files, with where each thing was written."""

    sections: dict[str, Loc] = field(default_factory=dict)
    features: dict[str, DraftFeature] = field(default_factory=dict)
    plans: dict[str, DraftPlan] = field(default_factory=dict)
    addons: dict[str, DraftAddon] = field(default_factory=dict)
    products: dict[str, DraftProduct] = field(default_factory=dict)
    currencies: list[tuple[str, Loc]] = field(default_factory=list)
    won_stages: list[str] = field(default_factory=lambda: ["Closed Won"])
    match_by: MatchBy = "product_code"
    identifier: FieldRef = field(default_factory=lambda: FieldRef("Account", ("Id",)))
    customer_split: CustomerSplit = "identifier_and_currency"
    emails: list[FieldRef] = field(default_factory=list)
    collection_method: DraftSource | None = None
    payment_terms: DraftSource | None = None
    interval: DraftSource | None = None
    entitlement_sources: dict[str, DraftSource] = field(default_factory=dict)
    override_policy: OverridePolicy = "negotiated"
    write_back: WriteBackFields = field(default_factory=WriteBackFields)
    when_unwon: str = "review"
    card_entitlements: str = "on_first_payment"
    terms: DraftTerms = field(default_factory=DraftTerms)
    # plans and add-ons ("plan 'team'") with a price entry that did not read: their missing
    # prices are not reported on top
    unreadable_prices: set[str] = field(default_factory=set)
    # price entries with an error, by owner: the (currency, interval) each would cover, None
    # where that part did not read; a missing price that one of them may be is not reported
    partial_prices: dict[str, list[tuple[str | None, str | None]]] = field(default_factory=dict)
    # every feature, plan and add-on name written, even when its definition has errors: a
    # reference to one of them is not reported as unknown on top
    declared: dict[str, set[str]] = field(
        default_factory=lambda: {"feature": set(), "plan": set(), "addon": set()}
    )


Convert = Callable[[Node, str], Any]


class SectionReader:
    """Reads the sections of one file into the shared draft."""

    def __init__(self, ctx: Ctx, draft: Draft) -> None:
        self.ctx = ctx
        self.w = Walker(ctx)
        self.draft = draft

    def read_root(self, root: Node) -> None:
        if is_null(root):
            return
        entries = self.w.entries(root, f"the file {self.ctx.file}")
        if entries is None:
            return
        for key, key_node, value in entries:
            if key not in SECTIONS:
                self.ctx.add(
                    key_node,
                    "unknown_key",
                    f"'{key}' is not a section of the mapping files.",
                    did_you_mean(key, SECTIONS, "remove it or rename it to a known section"),
                )
                continue
            if key in self.draft.sections:
                first = self.draft.sections[key]
                self.ctx.add(
                    key_node,
                    "duplicate_section",
                    f"the section '{key}' is already defined in {first.file}:{first.line}.",
                    "keep each section in one file only; merge the two.",
                )
                continue
            self.draft.sections[key] = self.ctx.loc(key_node)
            getattr(self, f"read_{key}")(value)

    # -- catalog ---------------------------------------------------------------------------

    def read_features(self, node: Node) -> None:
        for name, key_node, value in self.w.entries(node, "'features'") or []:
            self.draft.declared["feature"].add(name)
            if self.w.name(key_node, "the feature name") is None:
                continue
            what = f"feature '{name}'"
            spec = self.w.fields(value, what, ("type", "unit", "description", "combine"), ("type",))
            if spec is None or "type" not in spec:
                continue
            kind = self.w.choice(spec["type"], f"the type of {what}", FEATURE_TYPES)
            if kind is None:
                continue
            unit = self.w.text(spec["unit"], f"the unit of {what}") if "unit" in spec else None
            desc = spec.get("description")
            description = (self.w.text(desc, f"the description of {what}") or "") if desc else ""
            combine = self.read_combine(spec["combine"], what, kind) if "combine" in spec else None
            self.draft.features[name] = DraftFeature(
                kind,  # type: ignore[arg-type]
                unit,
                description,
                self.ctx.loc(key_node),
                combine,
            )

    def read_combine(self, node: Node, what: str, kind: str) -> Combine | None:
        """How the grants of several deals combine: `sum` or `max` for numbers, `any` for flags."""
        rule = self.w.choice(node, f"'combine' of {what}", COMBINE_RULES)
        if rule is None:
            return None
        if kind == "flag" and rule != "any":
            self.ctx.add(
                node,
                "invalid_combine",
                f"{what} is a flag, so its grants cannot '{rule}'; a flag is on when any deal "
                "turns it on.",
                "remove 'combine', or write 'combine: any'.",
            )
            return None
        if kind != "flag" and rule == "any":
            self.ctx.add(
                node,
                "invalid_combine",
                f"{what} is a number ({kind}), so its grants cannot combine with 'any'.",
                "write 'combine: sum' (the grants of the account's deals add up) or "
                "'combine: max' (the largest grant applies).",
            )
            return None
        return rule  # type: ignore[return-value]

    def read_prices(self, node: Node, owner: str) -> list[tuple[Price, Loc]]:
        prices: list[tuple[Price, Loc]] = []
        items = self.w.items(node, f"the prices of {owner}", single_ok=False)
        if items is None:
            self.draft.unreadable_prices.add(owner)
        for item in items or []:
            what = f"a price of {owner}"
            spec = self.w.fields(
                item,
                what,
                ("lookup_key", "currency", "interval", "amount"),
                ("lookup_key", "currency", "interval", "amount"),
            )
            if spec is None:
                self.draft.partial_prices.setdefault(owner, []).append((None, None))
                continue
            key = (
                self.w.text(spec["lookup_key"], f"the lookup_key of {what}")
                if "lookup_key" in spec
                else None
            )
            currency = (
                self.currency(spec["currency"], f"the currency of {what}")
                if "currency" in spec
                else None
            )
            interval = (
                self.w.choice(spec["interval"], f"the interval of {what}", INTERVALS)
                if "interval" in spec
                else None
            )
            amount = (
                self.w.amount(spec["amount"], f"the amount of {what}", currency)
                if "amount" in spec
                else None
            )
            if key is None or currency is None or interval is None or amount is None:
                self.draft.partial_prices.setdefault(owner, []).append((currency, interval))
                continue
            price = Price(key, currency, interval, amount)  # type: ignore[arg-type]
            prices.append((price, self.ctx.loc(item)))
        return prices

    def currency(self, node: Node, what: str) -> str | None:
        text = self.w.text(node, what)
        if text is None:
            return None
        if not money.is_currency(text) or len(text) != 3:
            self.ctx.add(
                node,
                "invalid_currency",
                f"{what} is '{text}', which is not an ISO 4217 currency code.",
                did_you_mean(
                    text.upper(),
                    money.COMMON if money.suggest_common(text) else money.ISO_4217,
                    "use a three-letter code such as USD",
                ),
            )
            return None
        return text.lower()

    def read_plans(self, node: Node) -> None:
        for name, key_node, value in self.w.entries(node, "'plans'") or []:
            self.draft.declared["plan"].add(name)
            if self.w.name(key_node, "the plan name") is None:
                continue
            what = f"plan '{name}'"
            allowed = (
                "display_name",
                "description",
                "kind",
                "prices",
                "priced_per",
                "entitlements",
            )
            spec = self.w.fields(value, what, allowed, ("kind", "entitlements"))
            if spec is None:
                continue
            kind = (
                self.w.choice(spec["kind"], f"the kind of {what}", PLAN_KINDS)
                if ("kind" in spec)
                else None
            )
            if kind is None:  # reported: read the rest as what it looks like, for its errors
                kind = "paid" if "prices" in spec else "custom"
            prices: list[tuple[Price, Loc]] = []
            if kind == "paid":
                if "prices" not in spec:
                    self.ctx.add(
                        value,
                        "missing_key",
                        f"the paid {what} has no 'prices'.",
                        "list its Stripe catalog prices (lookup_key, currency, interval, "
                        "amount), or make it 'kind: custom' if it is not billed in Stripe.",
                    )
                else:
                    prices = self.read_prices(spec["prices"], what)
            elif "prices" in spec:
                self.ctx.add(
                    spec["prices"],
                    "custom_plan_price",
                    f"the custom {what} has prices, but custom plans are not billed in Stripe.",
                    "remove 'prices', or make it 'kind: paid'.",
                )
            priced_per = None
            if "priced_per" in spec:
                feature = self.w.name(spec["priced_per"], f"'priced_per' of {what}")
                if feature is not None:
                    priced_per = (feature, self.ctx.loc(spec["priced_per"]))
            display = self.display_name(spec, name, what)
            entitlements = self.read_entitlements(spec.get("entitlements"), what)
            self.draft.plans[name] = DraftPlan(
                kind,  # type: ignore[arg-type]
                display,
                prices,
                entitlements,
                priced_per,
                self.ctx.loc(key_node),
            )

    def display_name(self, spec: dict[str, Node], name: str, what: str) -> str:
        if "display_name" in spec:
            return self.w.text(spec["display_name"], f"the display_name of {what}") or name
        return name.replace("_", " ").replace("-", " ").title()

    def read_entitlements(self, node: Node | None, what: str) -> list[DraftEntitlement]:
        result: list[DraftEntitlement] = []
        if node is None or is_null(node):
            return result
        for feature, key_node, value in self.w.entries(node, f"the entitlements of {what}") or []:
            where = f"entitlement '{feature}' of {what}"
            loc = self.ctx.loc(key_node)
            if tag_of(value) == "map":
                spec = self.w.fields(
                    value, where, ("variable", "default", "min", "max", "required"), ("variable",)
                )
                if spec is None or "variable" not in spec:
                    continue
                flag = self.w.boolean(spec["variable"], f"'variable' of {where}")
                if flag is None:
                    continue
                if not flag:
                    self.ctx.add(
                        spec["variable"],
                        "wrong_type",
                        f"{where} is written as a set of settings but is not variable.",
                        "write the fixed value directly (e.g. 'seats: 25') or set "
                        "'variable: true'.",
                    )
                    continue
                variable = self.variable_spec(spec, where)
                if variable is not None:
                    result.append(DraftEntitlement(feature, None, variable, loc))
                continue
            fixed = self.int_or_bool(value, where)
            if fixed is not None:
                result.append(DraftEntitlement(feature, fixed, None, loc))
        return result

    def variable_spec(self, spec: dict[str, Node], where: str) -> VariableSpec | None:
        default = (
            self.int_or_bool(spec["default"], f"the default of {where}")
            if ("default" in spec)
            else None
        )
        low = self.w.integer(spec["min"], f"'min' of {where}") if "min" in spec else None
        high = self.w.integer(spec["max"], f"'max' of {where}") if "max" in spec else None
        required = False
        if "required" in spec:
            required = bool(self.w.boolean(spec["required"], f"'required' of {where}"))
        if required and default is not None:
            self.ctx.add(
                spec["required"],
                "conflicting_settings",
                f"{where} is required and also has a default.",
                "remove 'default' (the deal must give the value) or 'required: true'.",
            )
            return None
        if low is not None and high is not None and low > high:
            self.ctx.add(
                spec["min"],
                "invalid_bounds",
                f"'min' ({low}) of {where} is above its 'max' ({high}).",
                "swap them or correct one of them.",
            )
            return None
        out_of_bounds = (
            isinstance(default, int)
            and not isinstance(default, bool)
            and ((low is not None and default < low) or (high is not None and default > high))
        )
        if out_of_bounds:
            self.ctx.add(
                spec["default"],
                "invalid_bounds",
                f"the default ({default}) of {where} is outside its bounds "
                f"({low if low is not None else '-'} to {high if high is not None else '-'}).",
                "choose a default between 'min' and 'max'.",
            )
            return None
        return VariableSpec(default=default, minimum=low, maximum=high, required=required)

    def int_or_bool(self, node: Node, what: str) -> int | bool | None:
        if tag_of(node) == "bool":
            return self.w.boolean(node, what)
        if tag_of(node) in ("int", "float"):
            return self.w.integer(node, what)
        self.ctx.add(
            node,
            "wrong_type",
            f"{what} must be a whole number or true/false, not {describe(node)}.",
            "write a number without quotes (e.g. 25) or true/false.",
        )
        return None

    def read_addons(self, node: Node) -> None:
        allowed = (
            "display_name",
            "description",
            "prices",
            "adds_per_unit",
            "switches_on",
            "sold_with",
        )
        for name, key_node, value in self.w.entries(node, "'addons'") or []:
            self.draft.declared["addon"].add(name)
            if self.w.name(key_node, "the add-on name") is None:
                continue
            what = f"add-on '{name}'"
            spec = self.w.fields(value, what, allowed, ("sold_with",))
            if spec is None:
                continue
            prices = self.read_prices(spec["prices"], what) if "prices" in spec else []
            adds: list[tuple[str, int, Loc]] = []
            for feature, fkey, amount in (
                self.w.entries(spec["adds_per_unit"], f"'adds_per_unit' of {what}") or []
                if "adds_per_unit" in spec
                else []
            ):
                per_unit = self.w.integer(amount, f"'{feature}' per unit of {what}", minimum=1)
                if per_unit is not None:
                    adds.append((feature, per_unit, self.ctx.loc(fkey)))
            switches = self.name_list(spec.get("switches_on"), f"'switches_on' of {what}")
            if "adds_per_unit" not in spec and "switches_on" not in spec:
                self.ctx.add(
                    value,
                    "missing_key",
                    f"{what} neither adds to a limit nor switches on a feature.",
                    "add 'adds_per_unit: {feature: amount}' or 'switches_on: [feature]'.",
                )
            sold_with = self.name_list(spec.get("sold_with"), f"'sold_with' of {what}")
            self.draft.addons[name] = DraftAddon(
                self.display_name(spec, name, what),
                prices,
                adds,
                switches,
                sold_with,
                self.ctx.loc(key_node),
                sold_with_known="sold_with" in spec and bool(sold_with),
            )

    def name_list(self, node: Node | None, what: str) -> list[tuple[str, Loc]]:
        if node is None:
            return []
        result = []
        for item in self.w.items(node, what) or []:
            name = self.w.name(item, f"a name in {what}")
            if name is not None:
                result.append((name, self.ctx.loc(item)))
        return result

    # -- Salesforce mapping ---------------------------------------------------------------

    def read_currencies(self, node: Node) -> None:
        items = self.w.items(node, "'currencies'")
        if items == []:
            self.ctx.add(
                node,
                "missing_value",
                "'currencies' is empty.",
                "list the currencies deals are billed in, e.g. [USD, EUR].",
            )
        for item in items or []:
            code = self.currency(item, "a currency in 'currencies'")
            if code is not None:
                self.draft.currencies.append((code, self.ctx.loc(item)))

    def read_won_stages(self, node: Node) -> None:
        stages = [
            self.w.text(i, "a stage in 'won_stages'")
            for i in self.w.items(node, "'won_stages'") or []
        ]
        self.draft.won_stages = [s for s in stages if s] or self.draft.won_stages

    def read_match_products_by(self, node: Node) -> None:
        choice = self.w.choice(node, "'match_products_by'", MATCH_BY)
        if choice is not None:
            self.draft.match_by = choice  # type: ignore[assignment]

    def read_products(self, node: Node) -> None:
        seen: dict[str, Loc] = {p.upper(): d.loc for p, d in self.draft.products.items()}
        entries = self.w.entries(node, "'products'", duplicate_code="duplicate_product_code")
        for code, key_node, value in entries or []:
            what = f"product '{code}'"
            folded = code.strip().upper()
            if folded in seen:
                first = seen[folded]
                self.ctx.add(
                    key_node,
                    "duplicate_product_code",
                    f"{what} is listed twice (also at {first.file}:{first.line}); Salesforce "
                    "product codes are matched without regard to case.",
                    "keep one entry per product code.",
                )
                continue
            seen[folded] = self.ctx.loc(key_node)
            spec = self.w.fields(value, what, ("plan", "addon", "interval"))
            if spec is None:
                continue
            if ("plan" in spec) == ("addon" in spec):
                self.ctx.add(
                    value,
                    "missing_key" if "plan" not in spec else "conflicting_settings",
                    f"{what} must name exactly one 'plan' or one 'addon'.",
                    "write 'plan: <plan name>' or 'addon: <add-on name>'.",
                )
                continue
            plan = addon = None
            if "plan" in spec:
                name = self.w.text(spec["plan"], f"the plan of {what}")
                plan = (name, self.ctx.loc(spec["plan"])) if name else None
            else:
                name = self.w.text(spec["addon"], f"the add-on of {what}")
                addon = (name, self.ctx.loc(spec["addon"])) if name else None
            if plan is None and addon is None:
                continue
            interval = None
            if "interval" in spec:
                interval = self.w.choice(spec["interval"], f"the interval of {what}", INTERVALS)
            self.draft.products[code.strip()] = DraftProduct(
                code.strip(),
                plan,
                addon,
                interval,  # type: ignore[arg-type]
                self.ctx.loc(key_node),
            )

    def field_ref(self, node: Node, what: str) -> FieldRef | None:
        text = self.w.text(node, what)
        if text is None:
            return None
        parts = text.split(".")
        if len(parts) < 2 or parts[0] not in SOURCE_OBJECTS:
            head = parts[0] if len(parts) > 1 else ""
            self.ctx.add(
                node,
                "invalid_source",
                f"{what} '{text}' does not say which record it reads.",
                (did_you_mean(head, SOURCE_OBJECTS, "") + " " if head else "")
                + "Start it with 'Opportunity.', 'Account.' or 'OpportunityLineItem.', "
                "e.g. 'Opportunity.Seats__c'.",
            )
            return None
        bad = [p for p in parts[1:] if not is_api_name(p)]
        if bad:
            self.ctx.add(
                node,
                "invalid_field_name",
                f"'{bad[0]}' in {what} '{text}' is not a valid Salesforce API name.",
                "use the field's API name from Setup > Object Manager, e.g. 'Seats__c' "
                "(letters, digits and single underscores, custom fields end in '__c').",
            )
            return None
        return FieldRef(parts[0], tuple(parts[1:]))

    def field_refs(self, node: Node, what: str) -> list[FieldRef]:
        refs = [self.field_ref(item, what) for item in self.w.items(node, what) or []]
        return [r for r in refs if r is not None]

    def read_customer(self, node: Node) -> None:
        spec = self.w.fields(node, "'customer'", ("identifier", "split", "billing_email"))
        if spec is None:
            return
        if "identifier" in spec:
            ref = self.field_ref(spec["identifier"], "the customer 'identifier'")
            if ref is not None and ref.obj == "OpportunityLineItem":
                self.ctx.add(
                    spec["identifier"],
                    "invalid_source",
                    f"the customer 'identifier' '{ref}' reads a line item; a deal has many "
                    "lines but is billed to one customer.",
                    "name an Account or Opportunity field, e.g. 'Account.Id' (the default).",
                )
            elif ref is not None:
                self.draft.identifier = ref
        if "split" in spec:
            split = self.w.choice(spec["split"], "the customer 'split'", CUSTOMER_SPLITS)
            if split is not None:
                self.draft.customer_split = split  # type: ignore[assignment]
        if "billing_email" in spec:
            self.draft.emails = self.field_refs(spec["billing_email"], "'billing_email'")

    def value_source(self, node: Node, what: str, convert: Convert) -> DraftSource | None:
        """`Opportunity.Field__c`, or {field, values: {picklist value: value}, default}."""
        if tag_of(node) != "map":
            refs = self.field_refs(node, what)
            return DraftSource(ValueSource(tuple(refs)), self.ctx.loc(node)) if refs else None
        spec = self.w.fields(node, what, ("field", "values", "default"))
        if spec is None:
            return None
        refs = self.field_refs(spec["field"], f"'field' of {what}") if "field" in spec else []
        if not refs and "default" not in spec:
            self.ctx.add(
                node,
                "missing_key",
                f"{what} has neither a 'field' nor a 'default'.",
                "add 'field: Opportunity.<Field>' and/or 'default: <value>'.",
            )
        values: list[tuple[str, Any]] = []
        value_locs: list[tuple[Any, Loc]] = []
        if "values" in spec:
            for label, _key, value in self.w.entries(spec["values"], f"'values' of {what}") or []:
                converted = convert(value, f"the value for '{label}' in {what}")
                if converted is not None:
                    values.append((label, converted))
                    value_locs.append((converted, self.ctx.loc(value)))
        default = None
        if "default" in spec:
            default = convert(spec["default"], f"the default of {what}")
            if default is not None:
                value_locs.append((default, self.ctx.loc(spec["default"])))
        source = ValueSource(tuple(refs), tuple(values), default)
        return DraftSource(source, self.ctx.loc(node), value_locs)

    def read_billing(self, node: Node) -> None:
        spec = self.w.fields(node, "'billing'", ("collection_method", "payment_terms", "interval"))
        if spec is None:
            return
        if "collection_method" in spec:
            self.draft.collection_method = self.value_source(
                spec["collection_method"],
                "'collection_method'",
                lambda n, what: self.w.choice(n, what, COLLECTION_METHODS),
            )
        if "payment_terms" in spec:
            self.draft.payment_terms = self.value_source(
                spec["payment_terms"], "'payment_terms'", lambda n, what: self.w.integer(n, what)
            )
        if "interval" in spec:
            self.draft.interval = self.value_source(
                spec["interval"],
                "the billing 'interval'",
                lambda n, what: self.w.choice(n, what, INTERVALS),
            )

    def read_entitlement_sources(self, node: Node) -> None:
        for feature, key_node, value in self.w.entries(node, "'entitlement_sources'") or []:
            source = self.value_source(
                value, f"the source of '{feature}'", lambda n, what: self.int_or_bool(n, what)
            )
            if source is not None:
                source.loc = self.ctx.loc(key_node)
                self.draft.entitlement_sources[feature] = source

    def read_price_overrides(self, node: Node) -> None:
        policy = self.w.choice(node, "'price_overrides'", OVERRIDE_POLICIES)
        if policy is not None:
            self.draft.override_policy = policy  # type: ignore[assignment]

    def read_when_unwon(self, node: Node) -> None:
        policy = self.w.choice(node, "'when_unwon'", UNWON_POLICIES)
        if policy is not None:
            self.draft.when_unwon = policy

    def read_card_payments(self, node: Node) -> None:
        spec = self.w.fields(node, "'card_payments'", CARD_PAYMENTS_KEYS)
        if spec is None or "entitlements" not in spec:
            return
        policy = self.w.choice(
            spec["entitlements"], "'card_payments.entitlements'", CARD_ENTITLEMENT_POLICIES
        )
        if policy is not None:
            self.draft.card_entitlements = policy

    def read_write_back(self, node: Node) -> None:
        spec = self.w.fields(node, "'write_back'", WRITE_BACK_KEYS)
        if spec is None:
            return
        names: dict[str, str | None] = {}
        for key, value in spec.items():
            text = self.w.text(value, f"write_back '{key}'")
            if text is None:
                continue
            if text.startswith("Opportunity."):
                text = text[len("Opportunity.") :]
            if not is_writable_field_name(text):
                self.ctx.add(
                    value,
                    "invalid_field_name",
                    f"write_back '{key}' names '{text}', which is not a valid Salesforce "
                    "field API name.",
                    "use the Opportunity field's API name from Setup > Object Manager, e.g. "
                    "'Stripe_Customer_Id__c' (letters, digits and single underscores, custom "
                    "fields end in '__c').",
                )
                continue
            names[key] = text
        self.draft.write_back = WriteBackFields(**names)

    # -- the deal's intent, contract dates and discount (sf_bridge.mapping.terms_schema) -----

    def read_deal_type(self, node: Node) -> None:
        TermsReader(self).read_deal_type(node)

    def read_amendments(self, node: Node) -> None:
        TermsReader(self).read_amendments(node)

    def read_contract(self, node: Node) -> None:
        TermsReader(self).read_contract(node)

    def read_discount(self, node: Node) -> None:
        TermsReader(self).read_discount(node)
