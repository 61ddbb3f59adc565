"""The loaded mapping files as plain, immutable data.

`sf_bridge.mapping.loader` builds a `Mappings` from the YAML files after validating them; the
engine (`sf_bridge.mapping.engine`) reads it. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from sf_bridge.plan import (
    CollectionMethod,
    Combine,
    CustomerSplit,
    FeatureKind,
    Interval,
    PlanKind,
    default_combine,
)

if TYPE_CHECKING:
    from sf_bridge.mapping.terms import DealTerms

# Fields every opportunity query selects, whatever the mapping says.
BASE_OPPORTUNITY_FIELDS: tuple[str, ...] = (
    "Id",
    "Name",
    "AccountId",
    "Account.Name",
    "CurrencyIsoCode",  # left out in orgs without multi-currency (see sf_bridge.crm.salesforce)
    "StageName",
    "IsWon",
    "CloseDate",
    "LastModifiedDate",
)
BASE_LINE_FIELDS: tuple[str, ...] = (
    "Id",
    "Quantity",
    "UnitPrice",
    "ListPrice",
    "Discount",
    "TotalPrice",
    "PricebookEntry.Product2.ProductCode",
    "PricebookEntry.Product2.Name",
    "PricebookEntry.Product2Id",
)

SourceObject = Literal["Opportunity", "Account", "OpportunityLineItem"]
OverridePolicy = Literal["negotiated", "catalog", "reject"]
MatchBy = Literal["product_code", "product_id"]


@dataclass(frozen=True)
class Feature:
    name: str
    kind: FeatureKind  # "flag", "limit" or "seats"
    unit: str | None = None
    description: str = ""
    combine: Combine | None = None  # how grants of several deals combine; None: the kind's default

    @property
    def combine_rule(self) -> Combine:
        return self.combine or default_combine(self.kind)


@dataclass(frozen=True)
class Price:
    """One Stripe catalog price, referenced by its lookup key."""

    lookup_key: str
    currency: str  # lower case
    interval: Interval
    unit_amount: int  # minor units


@dataclass(frozen=True)
class VariableSpec:
    """An entitlement whose value comes from the deal."""

    default: int | bool | None = None
    minimum: int | None = None
    maximum: int | None = None
    required: bool = False


@dataclass(frozen=True)
class PlanEntitlement:
    feature: str
    value: int | bool | None  # None when variable
    variable: VariableSpec | None = None


@dataclass(frozen=True)
class Plan:
    name: str
    kind: PlanKind  # "paid" (billed in Stripe) or "custom" (entitlements only)
    display_name: str
    entitlements: tuple[PlanEntitlement, ...]
    prices: tuple[Price, ...] = ()
    priced_per: str | None = None  # a numeric feature whose value is the plan line's quantity

    def price(self, currency: str, interval: Interval) -> Price | None:
        return _find_price(self.prices, currency, interval)


@dataclass(frozen=True)
class Addon:
    name: str
    display_name: str
    prices: tuple[Price, ...]
    adds_per_unit: tuple[tuple[str, int], ...]  # (numeric feature, amount added per unit)
    switches_on: tuple[str, ...]  # flag features switched on
    sold_with: tuple[str, ...]  # plan names

    def price(self, currency: str, interval: Interval) -> Price | None:
        return _find_price(self.prices, currency, interval)


def _find_price(prices: tuple[Price, ...], currency: str, interval: Interval) -> Price | None:
    for price in prices:
        if price.currency == currency.lower() and price.interval == interval:
            return price
    return None


@dataclass(frozen=True)
class FieldRef:
    """A Salesforce field the mapping reads, e.g. `Opportunity.Seats__c` or `Account.Email__c`."""

    obj: SourceObject
    path: tuple[str, ...]  # API names; several for relationship fields

    @property
    def query_name(self) -> str:
        """The name in the SELECT list of the Opportunity query or of its line subquery."""
        if self.obj == "Account":
            return ".".join(("Account", *self.path))
        return ".".join(self.path)

    def __str__(self) -> str:
        return ".".join((self.obj, *self.path))


@dataclass(frozen=True)
class ValueSource:
    """Where a value comes from: a field, an optional picklist translation and a default."""

    fields: tuple[FieldRef, ...]  # tried in order; the first non-empty one wins
    values: tuple[tuple[str, str | int | bool], ...] = ()  # picklist value -> value
    default: str | int | bool | None = None


@dataclass(frozen=True)
class ProductRule:
    """What one Salesforce product is: a plan or an add-on, optionally with its interval."""

    key: str  # product code (or Product2 Id)
    plan: str | None = None
    addon: str | None = None
    interval: Interval | None = None

    @property
    def item_name(self) -> str:
        return self.plan or self.addon or ""


def product_key(key: str, match_by: MatchBy) -> str:
    """How products are looked up: codes regardless of case; Product2 Ids by their
    case-sensitive 15-character form (the 18-character form only adds a checksum)."""
    key = key.strip()
    return key.upper() if match_by == "product_code" else key[:15]


def _written_back(example: str, salesforce_type: str) -> Any:
    """A write-back field: its API name in the example mappings and the docs, and the type to
    create it with in Salesforce (docs/setup-salesforce.md)."""
    return field(default=None, metadata={"example": example, "type": salesforce_type})


@dataclass(frozen=True)
class WriteBackFields:
    """Opportunity fields (API names) sf-bridge writes back; None means not written.

    The one list of what sf-bridge writes back: the keys of the mappings' `write_back`
    section, the values the write-back batch sends, the fields the sandbox org declares and
    the table in docs/setup-salesforce.md all follow these attributes, in this order."""

    status: str | None = _written_back("SF_Bridge_Status__c", "Text(40)")
    stripe_customer_id: str | None = _written_back("Stripe_Customer_Id__c", "Text(64)")
    stripe_subscription_id: str | None = _written_back("Stripe_Subscription_Id__c", "Text(64)")
    invoice_url: str | None = _written_back("Stripe_Invoice_URL__c", "URL(255)")
    error: str | None = _written_back("SF_Bridge_Error__c", "Long Text Area(32768)")
    provisioned_at: str | None = _written_back("SF_Bridge_Provisioned_At__c", "Date/Time")
    # a contract starting later: its Stripe subscription schedule and the day it starts
    stripe_schedule_id: str | None = _written_back("Stripe_Schedule_Id__c", "Text(64)")
    contract_start: str | None = _written_back("SF_Bridge_Contract_Start__c", "Date")

    @classmethod
    def example(cls) -> WriteBackFields:
        """Every field, named as in the example mappings."""
        return cls(**{f.name: f.metadata["example"] for f in fields(cls)})

    def named(self) -> list[tuple[str, str]]:
        """(key, Opportunity field name) of each field these mappings write, in order."""
        return [(key, name) for key in WRITE_BACK_KEYS if (name := getattr(self, key))]


# Keys of the mappings' `write_back` section, in order.
WRITE_BACK_KEYS: tuple[str, ...] = tuple(f.name for f in fields(WriteBackFields))


@dataclass(frozen=True)
class CustomerRules:
    """How deals map to Stripe customers: one per value of `identifier`, and per currency too
    unless `split` is "identifier"."""

    identifier: FieldRef
    email: tuple[FieldRef, ...] = ()
    split: CustomerSplit = "identifier_and_currency"


@dataclass(frozen=True)
class BillingRules:
    collection_method: ValueSource | None = None
    default_collection_method: CollectionMethod = "send_invoice"
    payment_terms: ValueSource | None = None
    default_days_until_due: int = 30
    interval: ValueSource | None = None


@dataclass(frozen=True)
class CatalogPrice:
    """A Stripe catalog price the mappings reference (to seed or check the Stripe catalog)."""

    lookup_key: str
    product_name: str
    unit_amount: int  # minor units
    currency: str  # lower case
    interval: Interval
    plan_or_addon: str


@dataclass(frozen=True)
class Mappings:
    """Everything the mapping files say, validated."""

    version: str
    features: dict[str, Feature]
    plans: dict[str, Plan]
    addons: dict[str, Addon]
    products: dict[str, ProductRule]  # keyed by `product_key`
    match_by: MatchBy
    currencies: tuple[str, ...]  # accepted, lower case; the first is the default
    customer: CustomerRules
    billing: BillingRules
    entitlement_sources: dict[str, ValueSource]
    price_override_policy: OverridePolicy = "negotiated"
    write_back: WriteBackFields = field(default_factory=WriteBackFields)
    won_stages: list[str] = field(default_factory=lambda: ["Closed Won"])
    # A provisioned deal whose opportunity is no longer won: park it for RevOps ("review")
    # or cancel its billing and entitlements ("cancel"). See sf_bridge.provisioning.unwon.
    when_unwon: str = "review"
    # A deal charged automatically (card) whose subscription waits for its first payment:
    # its entitlements take effect when that payment succeeds ("on_first_payment") or at
    # once ("at_once"). See sf_bridge.provisioning.payment.
    card_entitlements: str = "on_first_payment"
    # intent, amendments, contract dates, discount (sf_bridge.mapping.terms); None: none set
    terms: DealTerms | None = None

    def product(self, key: str) -> ProductRule | None:
        return self.products.get(product_key(key, self.match_by))

    def referenced_fields(self) -> list[FieldRef]:
        refs: list[FieldRef] = [self.customer.identifier, *self.customer.email]
        for source in (
            self.billing.collection_method,
            self.billing.payment_terms,
            self.billing.interval,
            *self.entitlement_sources.values(),
        ):
            if source is not None:
                refs.extend(source.fields)
        if self.terms is not None:
            refs.extend(self.terms.fields())
        return refs

    def query_fields(self) -> tuple[list[str], list[str]]:
        """Opportunity fields and OpportunityLineItem fields to SELECT for the engine."""
        opportunity = list(BASE_OPPORTUNITY_FIELDS)
        lines = list(BASE_LINE_FIELDS)
        for ref in self.referenced_fields():
            target = lines if ref.obj == "OpportunityLineItem" else opportunity
            if ref.query_name.lower() not in {name.lower() for name in target}:
                target.append(ref.query_name)
        return opportunity, lines

    def catalog_prices(self) -> list[CatalogPrice]:
        found: dict[str, CatalogPrice] = {}
        items: list[tuple[str, str, tuple[Price, ...]]] = [
            (p.name, p.display_name, p.prices) for p in self.plans.values()
        ]
        items += [(a.name, a.display_name, a.prices) for a in self.addons.values()]
        for name, display, prices in items:
            for price in prices:
                found.setdefault(
                    price.lookup_key,
                    CatalogPrice(
                        lookup_key=price.lookup_key,
                        product_name=display,
                        unit_amount=price.unit_amount,
                        currency=price.currency,
                        interval=price.interval,
                        plan_or_addon=name,
                    ),
                )
        return sorted(found.values(), key=lambda p: p.lookup_key)
