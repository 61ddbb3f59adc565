"""The provisioning plan: what one won deal should become, as plain data.

The mapping engine (`sf_bridge.mapping.engine`) produces it from an opportunity and the mapping
files; provisioning consumes it. It is stored on the deal as JSON (`to_dict` / `from_dict`), so
every field is a plain value and the round trip is exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PlanKind = Literal["paid", "custom"]
ItemKind = Literal["plan", "addon"]
FeatureKind = Literal["flag", "limit", "seats"]
# How one feature's grants from several deals of an account combine: add up, the largest one,
# or (flags) on when any grant is on.
Combine = Literal["sum", "max", "any"]
CollectionMethod = Literal["send_invoice", "charge_automatically"]
Interval = Literal["month", "year"]
CustomerSplit = Literal["identifier", "identifier_and_currency"]
CUSTOMER_SPLITS: tuple[CustomerSplit, ...] = ("identifier_and_currency", "identifier")

# Stripe metadata values hold 500 characters and our key column 255: longer keys are hashed.
_MAX_KEY = 255


def customer_key(identifier: str, currency: str | None) -> str:
    """The key of one Stripe customer: the customer identifier's value, and the currency when
    customers are split by currency (a Stripe customer bills in one currency), e.g.
    `001Hs00002AcmeCAAQ/USD`."""
    key = f"{identifier}/{currency.upper()}" if currency else identifier
    if len(key) <= _MAX_KEY:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"sha256:{digest}"


@dataclass(frozen=True)
class CustomerIdentity:
    """Who is billed: the Salesforce account and how we recognise it."""

    account_id: str
    name: str
    # Which Stripe customer bills the deal: the customer identifier's value, with the deal's
    # currency when customers are split by currency (`customer_key`). Deals with one key
    # share one Stripe customer, whatever their account.
    customer_key: str
    email: str | None = None


@dataclass(frozen=True)
class PlanItem:
    """One subscription item: the plan itself or an add-on, with quantity and price."""

    kind: ItemKind
    name: str  # catalog name of the plan or add-on
    product_code: str  # Salesforce Product2.ProductCode (or Id) it came from
    quantity: int
    currency: str  # ISO 4217, lower case as Stripe uses it
    interval: Interval
    lookup_key: str | None  # Stripe price lookup key of the catalog price (None for custom plans)
    catalog_unit_amount: int | None  # catalog price in minor units
    unit_amount: int | None  # negotiated price in minor units when it differs, else None
    line_item_id: str | None = None
    stripe_product: str | None = None  # Stripe product id/name for price_data overrides

    @property
    def has_override(self) -> bool:
        return self.unit_amount is not None and self.unit_amount != self.catalog_unit_amount


@dataclass(frozen=True)
class EntitlementValue:
    """One resolved entitlement and where its value came from."""

    feature: str
    kind: FeatureKind
    value: int | bool
    unit: str | None = None
    source: str = ""  # e.g. "plan enterprise", "add-on extra_seats x 5", "Opportunity.Seats__c"
    combine: Combine | None = None  # None: the kind's default (see `default_combine`)

    @property
    def combine_rule(self) -> Combine:
        return self.combine or default_combine(self.kind)


def default_combine(kind: str) -> Combine:
    """Flags are on when any grant is; limits and seats add up unless the feature says `max`."""
    return "any" if kind == "flag" else "sum"


@dataclass(frozen=True)
class BillingTerms:
    collection_method: CollectionMethod
    days_until_due: int | None
    interval: Interval
    currency: str


@dataclass(frozen=True)
class ProvisioningPlan:
    """Everything provisioning needs for one opportunity; nothing it must look up again."""

    opportunity_id: str
    opportunity_name: str
    customer: CustomerIdentity
    plan_name: str
    plan_kind: PlanKind
    items: tuple[PlanItem, ...]
    entitlements: tuple[EntitlementValue, ...]
    billing: BillingTerms | None  # None for custom (entitlements-only) plans
    mapping_version: str
    notes: tuple[str, ...] = field(default=())

    @property
    def is_custom(self) -> bool:
        return self.plan_kind == "custom"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProvisioningPlan:
        billing = data.get("billing")
        return cls(
            opportunity_id=data["opportunity_id"],
            opportunity_name=data.get("opportunity_name", ""),
            customer=CustomerIdentity(**data["customer"]),
            plan_name=data["plan_name"],
            plan_kind=data["plan_kind"],
            items=tuple(PlanItem(**i) for i in data.get("items", ())),
            entitlements=tuple(EntitlementValue(**e) for e in data.get("entitlements", ())),
            billing=BillingTerms(**billing) if billing else None,
            mapping_version=data["mapping_version"],
            notes=tuple(data.get("notes", ())),
        )


@dataclass(frozen=True)
class MappingError:
    """Why an opportunity does not map, said for RevOps: what is wrong and what to change."""

    code: str  # stable, e.g. "unknown_product"
    message: str
    hint: str = ""
    where: str = ""  # e.g. "line item 00k... (product code ACME-XYZ)" or "Opportunity.Seats__c"

    def __str__(self) -> str:
        parts = [f"[{self.code}]"]
        if self.where:
            parts.append(f"{self.where}:")
        parts.append(self.message)
        if self.hint:
            parts.append(f"Fix: {self.hint}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)
