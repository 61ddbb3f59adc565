"""The provisioning plan: what one won deal should become, as plain data.

The mapping engine (`sf_bridge.mapping.engine`) produces it from an opportunity and the mapping
files; provisioning consumes it. It is stored on the deal as JSON (`to_dict` / `from_dict`), so
every field is a plain value and the round trip is exact.
"""

from __future__ import annotations

import calendar
import hashlib
from dataclasses import asdict, dataclass, field
from datetime import date
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
# What the deal does to the account: a first subscription, a change of the live one (more or
# fewer seats, add-ons, another plan), or another term of it.
Intent = Literal["new_business", "amendment", "renewal"]
INTENTS: tuple[Intent, ...] = ("new_business", "amendment", "renewal")
# An amendment's lines: what is added to the live subscription (+20 seats), or its new totals.
AmendmentLines = Literal["additions", "totals"]
AMENDMENT_LINES: tuple[AmendmentLines, ...] = ("additions", "totals")
# Stripe's `proration_behavior` for a change in the middle of a billing period.
Proration = Literal["create_prorations", "always_invoice", "none"]
PRORATIONS: tuple[Proration, ...] = ("create_prorations", "always_invoice", "none")
# A contract that started before the deal is provisioned: billed from its start, or from now.
PastStart = Literal["backdate", "start_now"]
PAST_STARTS: tuple[PastStart, ...] = ("backdate", "start_now")
# Stripe coupon `duration`: the first invoice only, `duration_in_months` months, or always.
DiscountDuration = Literal["once", "repeating", "forever"]
DISCOUNT_DURATIONS: tuple[DiscountDuration, ...] = ("once", "repeating", "forever")
StartMode = Literal["now", "scheduled", "backdated"]

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


def add_months(day: date, months: int) -> date:
    """The same day `months` later; the month's last day when it is shorter (31 Jan + 1 month
    is 28 or 29 Feb), as Stripe bills monthly periods."""
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


@dataclass(frozen=True)
class ContractTerms:
    """When the contract runs. Dates are ISO `YYYY-MM-DD`; `end_date` is the first day no longer
    covered (start + term), as a Stripe period ends. No start date: it starts when provisioned."""

    start_date: str | None = None
    end_date: str | None = None
    term_months: int | None = None
    past_start: PastStart = "start_now"
    source: str = ""  # where the dates came from, e.g. "Opportunity.Contract_Start_Date__c"

    def start_mode(self, today: date) -> StartMode:
        """How provisioning starts it on `today`: at once, as a subscription schedule that
        begins later (nothing billed or granted before), or backdated to its start."""
        if self.start_date is None:
            return "now"
        start = date.fromisoformat(self.start_date)
        if start > today:
            return "scheduled"
        if start < today and self.past_start == "backdate":
            return "backdated"
        return "now"


@dataclass(frozen=True)
class PlanPhase:
    """One period of a ramp deal with its own items (a subscription schedule phase). The
    entitlements are empty when they are the plan's own (those of the first phase)."""

    start_date: str
    end_date: str | None  # None: runs on (the last phase of an open-ended contract)
    items: tuple[PlanItem, ...]
    entitlements: tuple[EntitlementValue, ...] = ()
    line_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Discount:
    """A deal-level discount (a Stripe coupon on the subscription): a percentage, or an amount
    in minor units of `currency`, for the first invoice, `months` months, or forever."""

    duration: DiscountDuration
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    months: int | None = None  # only for "repeating"
    source: str = ""


@dataclass(frozen=True)
class AccountFacts:
    """What the mapping engine is told about the deal's account (it reads no database):
    whether it has a live subscription (None: not known) and the plan of that subscription."""

    live_subscription: bool | None = None
    plan_name: str | None = None


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
    intent: Intent = "new_business"
    # amendments only: whether the items are additions to the live subscription or its totals,
    # and how the change in the middle of its period is prorated (it keeps its period)
    amendment_lines: AmendmentLines | None = None
    proration: Proration | None = None
    contract: ContractTerms | None = None  # None: starts when provisioned, runs until cancelled
    # ramp deals: a phase per start date of the lines, the first one being `items`
    phases: tuple[PlanPhase, ...] = field(default=())
    discount: Discount | None = None

    @property
    def is_custom(self) -> bool:
        return self.plan_kind == "custom"

    @property
    def is_ramp(self) -> bool:
        return len(self.phases) > 1

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
            # plans stored before these fields existed are new business starting at once
            intent=data.get("intent", "new_business"),
            amendment_lines=data.get("amendment_lines"),
            proration=data.get("proration"),
            contract=ContractTerms(**data["contract"]) if data.get("contract") else None,
            phases=tuple(_phase(p) for p in data.get("phases", ())),
            discount=Discount(**data["discount"]) if data.get("discount") else None,
        )


def _phase(data: dict[str, Any]) -> PlanPhase:
    return PlanPhase(
        start_date=data["start_date"],
        end_date=data.get("end_date"),
        items=tuple(PlanItem(**i) for i in data.get("items", ())),
        entitlements=tuple(EntitlementValue(**e) for e in data.get("entitlements", ())),
        line_item_ids=tuple(data.get("line_item_ids", ())),
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
