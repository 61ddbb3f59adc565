"""The sample deals the demo closes, and what each must become.

The product codes, Opportunity fields and catalog names are those of the example mapping in
`mappings/`; the expectations are what a person checking the result by hand would look for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Line:
    """One OpportunityLineItem as a salesperson enters it."""

    product_code: str
    quantity: int
    unit_price: float
    discount: float | None = None

    def as_org_line(self) -> dict[str, Any]:
        return {
            "product_code": self.product_code,
            "quantity": self.quantity,
            "unit_price": self.unit_price,
            "discount": self.discount,
        }


@dataclass(frozen=True)
class Account:
    key: str
    name: str
    contact_email: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Expect:
    """What the deal must become for the demo to count it as a success."""

    plan_kind: str  # "paid" or "custom"
    collection_method: str | None = None  # paid plans only
    days_until_due: int | None = None
    negotiated_prices: int = 0  # how many subscription items carry a negotiated price
    entitlements: dict[str, int | bool] = field(default_factory=dict)  # granted by this deal
    parks_with: str | None = None  # the deal parks first; the reason mentions this text
    same_customer_as: str | None = None  # key of an earlier deal whose customer it reuses
    # the contract starts on the first of next month: scheduled, billed and granted from then
    starts_next_month: bool = False
    # a card deal: its payment state once provisioned (awaiting_payment until it is paid)
    payment_state: str | None = None


@dataclass(frozen=True)
class DemoDeal:
    key: str
    story: str  # one line: what this deal shows
    account: str  # Account.key
    name: str  # Opportunity name
    lines: tuple[Line, ...]
    expect: Expect
    currency: str = "USD"
    fields: dict[str, Any] = field(default_factory=dict)  # further Opportunity fields


@dataclass(frozen=True)
class MappingFix:
    """The change RevOps makes to the mapping to un-park the parked deal."""

    product_code: str
    addon: str  # the add-on the new product code sells
    interval: str | None
    description: str
    comment: str  # left beside the new line in the mapping file


@dataclass(frozen=True)
class Payment:
    """How the customer of a provisioned deal pays its first invoice, after provisioning."""

    deal: str  # DemoDeal.key
    how: str  # "card" (on the invoice's payment page, reported by webhook) or "wire"
    story: str


@dataclass(frozen=True)
class Product:
    code: str
    name: str


@dataclass(frozen=True)
class Scenario:
    products: tuple[Product, ...]
    accounts: tuple[Account, ...]
    deals: tuple[DemoDeal, ...]
    fix: MappingFix
    payments: tuple[Payment, ...] = ()

    def account(self, key: str) -> Account:
        return next(a for a in self.accounts if a.key == key)

    def deal(self, key: str) -> DemoDeal:
        return next(d for d in self.deals if d.key == key)


PRODUCTS = (
    Product("SB-TEAM-M", "Team (monthly)"),
    Product("SB-TEAM-Y", "Team (annual)"),
    Product("SB-ENT-Y", "Enterprise (annual)"),
    Product("SB-ENT-CUSTOM", "Enterprise custom contract"),
    Product("SB-SEATS-Y", "Extra seats (annual)"),
    Product("SB-ANALYTICS-Y", "Advanced analytics module (annual)"),
    Product("SB-SANDBOX-Y", "Extra sandbox environment (annual)"),
    # Added to the price book by sales ops; the mapping does not know it yet, so the deal
    # that sells it parks until RevOps maps it.
    Product("SB-SANDBOX-PLUS-Y", "Extra sandbox environment, 2026 price book (annual)"),
)

ACCOUNTS = (
    Account(
        "acme",
        "Acme Robotics",
        "ap@acme-robotics.example",
        {"Billing_Email__c": "ap@acme-robotics.example"},
    ),
    Account("initech", "Initech", "it@initech.example", {"Billing_Email__c": "it@initech.example"}),
    Account(
        "umbrella",
        "Umbrella Health",
        "procurement@umbrella-health.example",
        {"Billing_Email__c": "procurement@umbrella-health.example"},
    ),
    Account(
        "hooli",
        "Hooli Maps",
        "finance@hooli-maps.example",
        {"Billing_Email__c": "finance@hooli-maps.example"},
    ),
    Account(
        "globex",
        "Globex Logistics",
        "ap@globex-logistics.example",
        {"Billing_Email__c": "ap@globex-logistics.example"},
    ),
)

DEALS = (
    DemoDeal(
        key="enterprise",
        story="Paid enterprise deal: negotiated plan and add-on prices, Net 45 invoice",
        account="acme",
        name="Acme Robotics - Enterprise 2026",
        lines=(
            Line("SB-ENT-Y", 1, 22_000.00),  # catalog 25,000.00
            Line("SB-SEATS-Y", 50, 200.00, discount=10.0),  # 180.00 each after the discount
            Line("SB-ANALYTICS-Y", 1, 5_000.00),  # catalog price
        ),
        fields={"Payment_Method__c": "Invoice", "Payment_Terms__c": "Net 45"},
        expect=Expect(
            plan_kind="paid",
            collection_method="send_invoice",
            days_until_due=45,
            negotiated_prices=2,
            entitlements={"seats": 150, "advanced_analytics": True, "sso": True},
        ),
    ),
    DemoDeal(
        key="self_serve",
        story="Self-serve deal charged automatically",
        account="initech",
        name="Initech - Team",
        lines=(Line("SB-TEAM-M", 10, 15.00),),
        fields={"Payment_Method__c": "Credit card"},
        expect=Expect(
            plan_kind="paid",
            collection_method="charge_automatically",
            entitlements={"seats": 10, "api_calls": 100_000},
            payment_state="awaiting_payment",  # no card on file: paid on the payment page
        ),
    ),
    DemoDeal(
        key="custom",
        story="Custom (entitlements only) deal with negotiated seats and API calls",
        account="umbrella",
        name="Umbrella Health - Enterprise custom contract",
        lines=(Line("SB-ENT-CUSTOM", 1, 0.0),),
        fields={
            "Seats__c": 400,
            "API_Calls_per_Month__c": "2000000",
            "Data_Retention__c": "7 years",
        },
        expect=Expect(
            plan_kind="custom",
            entitlements={"seats": 400, "api_calls": 2_000_000, "data_retention": 2555},
        ),
    ),
    DemoDeal(
        key="expansion",
        story="Second deal for an existing account: the same Stripe customer is reused",
        account="acme",
        name="Acme Robotics - Team plan for the lab",
        lines=(Line("SB-TEAM-Y", 5, 150.00),),
        fields={"Payment_Method__c": "Wire transfer", "Payment_Terms__c": "Net 30"},
        expect=Expect(
            plan_kind="paid",
            collection_method="send_invoice",
            days_until_due=30,
            entitlements={"seats": 5},
            same_customer_as="enterprise",
        ),
    ),
    DemoDeal(
        key="starts_next_month",
        story="A contract starting next month: scheduled, nothing billed or granted before it",
        account="hooli",
        name="Hooli Maps - Team from next month",
        lines=(Line("SB-TEAM-Y", 20, 150.00),),
        # Contract_Start_Date__c is set when the deal is created: the first of next month
        fields={
            "Payment_Method__c": "Invoice",
            "Payment_Terms__c": "Net 30",
            "Contract_Term_Months__c": 12,
        },
        expect=Expect(
            plan_kind="paid",
            collection_method="send_invoice",
            days_until_due=30,
            entitlements={"seats": 20},
            starts_next_month=True,
        ),
    ),
    DemoDeal(
        key="unmapped",
        story="A product the mapping does not know yet: parks, is fixed, is replayed",
        account="globex",
        name="Globex Logistics - Enterprise with sandboxes",
        lines=(Line("SB-ENT-Y", 1, 25_000.00), Line("SB-SANDBOX-PLUS-Y", 2, 2_500.00)),
        fields={"Payment_Method__c": "Invoice", "Payment_Terms__c": "Net 30"},
        expect=Expect(
            plan_kind="paid",
            collection_method="send_invoice",
            days_until_due=30,
            entitlements={"environments": 4},
            parks_with="SB-SANDBOX-PLUS-Y",
        ),
    ),
)

FIX = MappingFix(
    product_code="SB-SANDBOX-PLUS-Y",
    addon="extra_sandbox",
    interval="year",
    description="map product code SB-SANDBOX-PLUS-Y to the add-on extra_sandbox (annual)",
    comment="new price book product, same add-on",
)

# Types of the custom fields the example mapping reads, as an admin creates them
# (docs/setup-salesforce.md); any other custom field the mapping names is created as text.
FIELD_TYPES = {
    "Seats__c": "double",
    "API_Calls_per_Month__c": "string",
    "Payment_Method__c": "picklist",
    "Payment_Terms__c": "picklist",
    "Data_Retention__c": "picklist",
    "SF_Bridge_Error__c": "textarea",
    "SF_Bridge_Provisioned_At__c": "datetime",
    "Contract_Start_Date__c": "date",
    "Contract_Term_Months__c": "double",
}

PAYMENTS = (
    Payment(
        "self_serve",
        "card",
        "Initech enters a card on the invoice's payment page; Stripe reports invoice.paid",
    ),
    Payment(
        "enterprise",
        "wire",
        "Acme Robotics pays by bank transfer; finance runs `sf-bridge invoices mark-paid`",
    ),
)

SCENARIO = Scenario(products=PRODUCTS, accounts=ACCOUNTS, deals=DEALS, fix=FIX, payments=PAYMENTS)
