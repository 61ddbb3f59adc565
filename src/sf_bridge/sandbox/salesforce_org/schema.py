"""The objects and fields of the sandbox org: the standard fields sf-bridge reads and writes,
their types, which are read-only, and the parent / child relationships SOQL can follow.

Custom fields (`__c`) are declared per object: at record creation, when written through the
REST API (Opportunity), or explicitly with `OrgSchema.define_field`."""

from __future__ import annotations

from dataclasses import dataclass, field

# Field types as Salesforce's describe names them; they decide how values are rendered.
ID, STRING, BOOLEAN, DOUBLE, CURRENCY, PERCENT, INT = (
    "id",
    "string",
    "boolean",
    "double",
    "currency",
    "percent",
    "int",
)
DATE, DATETIME, REFERENCE, PICKLIST, TEXTAREA = (
    "date",
    "datetime",
    "reference",
    "picklist",
    "textarea",
)


@dataclass(frozen=True)
class FieldDef:
    name: str
    type: str = STRING
    updateable: bool = True
    createable: bool | None = None  # None: same as updateable

    @property
    def can_create(self) -> bool:
        return self.updateable if self.createable is None else self.createable


@dataclass(frozen=True)
class ParentRelationship:
    name: str  # e.g. "Account"
    foreign_key: str  # e.g. "AccountId"
    target: str  # e.g. "Account"


@dataclass(frozen=True)
class ChildRelationship:
    name: str  # e.g. "OpportunityLineItems"
    child: str  # e.g. "OpportunityLineItem"
    foreign_key: str  # e.g. "OpportunityId"


@dataclass
class ObjectDef:
    name: str
    fields: dict[str, FieldDef] = field(default_factory=dict)
    parents: dict[str, ParentRelationship] = field(default_factory=dict)
    children: dict[str, ChildRelationship] = field(default_factory=dict)
    _lower: dict[str, FieldDef] = field(default_factory=dict, repr=False)

    def field_named(self, name: str) -> FieldDef | None:
        """Case-insensitive lookup, as SOQL and the REST API resolve names."""
        found = self.fields.get(name)
        if found is None:
            if len(self._lower) != len(self.fields):
                self._lower = {n.lower(): f for n, f in self.fields.items()}
            found = self._lower.get(name.lower())
        return found

    def parent_named(self, name: str) -> ParentRelationship | None:
        found = self.parents.get(name)
        if found is None:
            found = next((r for n, r in self.parents.items() if n.lower() == name.lower()), None)
        return found

    def child_named(self, name: str) -> ChildRelationship | None:
        found = self.children.get(name)
        if found is None:
            found = next((r for n, r in self.children.items() if n.lower() == name.lower()), None)
        return found


_AUDIT = [
    FieldDef("Id", ID, updateable=False),
    FieldDef("CreatedDate", DATETIME, updateable=False),
    FieldDef("CreatedById", REFERENCE, updateable=False),
    FieldDef("LastModifiedDate", DATETIME, updateable=False),
    FieldDef("LastModifiedById", REFERENCE, updateable=False),
    FieldDef("SystemModstamp", DATETIME, updateable=False),
    FieldDef("IsDeleted", BOOLEAN, updateable=False),
]
_AUDIT_PARENTS = [
    ParentRelationship("CreatedBy", "CreatedById", "User"),
    ParentRelationship("LastModifiedBy", "LastModifiedById", "User"),
]
_ADDRESS = ["Street", "City", "State", "PostalCode", "Country"]


def _object(
    name: str,
    fields: list[FieldDef],
    parents: list[ParentRelationship] = (),  # type: ignore[assignment]
    children: list[ChildRelationship] = (),  # type: ignore[assignment]
) -> ObjectDef:
    return ObjectDef(
        name,
        {f.name: f for f in [*_AUDIT, *fields]},
        {p.name: p for p in [*_AUDIT_PARENTS, *parents]},
        {c.name: c for c in children},
    )


CURRENCY_FIELD = "CurrencyIsoCode"


def standard_objects(*, multi_currency: bool = True) -> dict[str, ObjectDef]:
    """A fresh copy of the standard schema (custom fields get added to the copy).

    `multi_currency=False` is an org without multi-currency: no object has `CurrencyIsoCode`,
    and the Organization record names the org's single currency in `DefaultCurrencyIsoCode`."""
    objects = [
        _object(
            "Organization",
            [
                FieldDef("Name", STRING, updateable=False),
                FieldDef("DefaultLocaleSidKey", PICKLIST, updateable=False),
                FieldDef("IsSandbox", BOOLEAN, updateable=False),
            ]
            + ([] if multi_currency else [FieldDef("DefaultCurrencyIsoCode", PICKLIST, False)]),
        ),
        _object(
            "User",
            [
                FieldDef("Name", STRING, updateable=False),
                FieldDef("FirstName"),
                FieldDef("LastName"),
                FieldDef("Email"),
                FieldDef("Username"),
                FieldDef("Alias"),
                FieldDef("IsActive", BOOLEAN),
            ],
        ),
        _object(
            "Account",
            [
                FieldDef("Name"),
                FieldDef("Type", PICKLIST),
                FieldDef("Industry", PICKLIST),
                FieldDef("AccountNumber"),
                FieldDef("Description", TEXTAREA),
                FieldDef("Phone"),
                FieldDef("Website"),
                FieldDef("NumberOfEmployees", INT),
                FieldDef("CurrencyIsoCode", PICKLIST),
                FieldDef("OwnerId", REFERENCE),
                *[FieldDef(f"Billing{part}") for part in _ADDRESS],
                *[FieldDef(f"Shipping{part}") for part in _ADDRESS],
            ],
            [ParentRelationship("Owner", "OwnerId", "User")],
            [
                ChildRelationship("Contacts", "Contact", "AccountId"),
                ChildRelationship("Opportunities", "Opportunity", "AccountId"),
            ],
        ),
        _object(
            "Contact",
            [
                FieldDef("AccountId", REFERENCE),
                FieldDef("FirstName"),
                FieldDef("LastName"),
                FieldDef("Name", STRING, updateable=False),
                FieldDef("Email"),
                FieldDef("Phone"),
                FieldDef("Title"),
                FieldDef("OwnerId", REFERENCE),
                *[FieldDef(f"Mailing{part}") for part in _ADDRESS],
            ],
            [
                ParentRelationship("Account", "AccountId", "Account"),
                ParentRelationship("Owner", "OwnerId", "User"),
            ],
        ),
        _object(
            "Pricebook2",
            [
                FieldDef("Name"),
                FieldDef("IsActive", BOOLEAN),
                FieldDef("IsStandard", BOOLEAN, updateable=False),
            ],
        ),
        _object(
            "Product2",
            [
                FieldDef("Name"),
                FieldDef("ProductCode"),
                FieldDef("Family", PICKLIST),
                FieldDef("Description", TEXTAREA),
                FieldDef("IsActive", BOOLEAN),
            ],
        ),
        _object(
            "PricebookEntry",
            [
                FieldDef("Name", STRING, updateable=False),
                FieldDef("Pricebook2Id", REFERENCE, updateable=False, createable=True),
                FieldDef("Product2Id", REFERENCE, updateable=False, createable=True),
                FieldDef("ProductCode", STRING, updateable=False),
                FieldDef("UnitPrice", CURRENCY),
                FieldDef("IsActive", BOOLEAN),
                FieldDef("UseStandardPrice", BOOLEAN),
                FieldDef("CurrencyIsoCode", PICKLIST, updateable=False, createable=True),
            ],
            [
                ParentRelationship("Pricebook2", "Pricebook2Id", "Pricebook2"),
                ParentRelationship("Product2", "Product2Id", "Product2"),
            ],
        ),
        _object(
            "Opportunity",
            [
                FieldDef("Name"),
                FieldDef("AccountId", REFERENCE),
                FieldDef("ContactId", REFERENCE),
                FieldDef("OwnerId", REFERENCE),
                FieldDef("StageName", PICKLIST),
                FieldDef("IsWon", BOOLEAN, updateable=False),
                FieldDef("IsClosed", BOOLEAN, updateable=False),
                FieldDef("Probability", PERCENT),
                FieldDef("ForecastCategoryName", PICKLIST),
                FieldDef("Amount", CURRENCY),
                FieldDef("CloseDate", DATE),
                FieldDef("CurrencyIsoCode", PICKLIST),
                FieldDef("Type", PICKLIST),
                FieldDef("LeadSource", PICKLIST),
                FieldDef("Description", TEXTAREA),
                FieldDef("NextStep"),
                FieldDef("Pricebook2Id", REFERENCE),
                FieldDef("HasOpportunityLineItem", BOOLEAN, updateable=False),
            ],
            [
                ParentRelationship("Account", "AccountId", "Account"),
                ParentRelationship("Contact", "ContactId", "Contact"),
                ParentRelationship("Owner", "OwnerId", "User"),
                ParentRelationship("Pricebook2", "Pricebook2Id", "Pricebook2"),
            ],
            [
                ChildRelationship("OpportunityLineItems", "OpportunityLineItem", "OpportunityId"),
                ChildRelationship(
                    "OpportunityContactRoles", "OpportunityContactRole", "OpportunityId"
                ),
            ],
        ),
        _object(
            "OpportunityLineItem",
            [
                FieldDef("OpportunityId", REFERENCE, updateable=False, createable=True),
                FieldDef("PricebookEntryId", REFERENCE, updateable=False, createable=True),
                FieldDef("Product2Id", REFERENCE, updateable=False, createable=True),
                FieldDef("ProductCode", STRING, updateable=False),
                FieldDef("Name", STRING, updateable=False),
                FieldDef("Quantity", DOUBLE),
                FieldDef("UnitPrice", CURRENCY),
                FieldDef("ListPrice", CURRENCY, updateable=False),
                FieldDef("TotalPrice", CURRENCY),
                FieldDef("Discount", PERCENT),
                FieldDef("Description"),
                FieldDef("ServiceDate", DATE),
                FieldDef("SortOrder", INT),
                FieldDef("CurrencyIsoCode", PICKLIST, updateable=False, createable=True),
            ],
            [
                ParentRelationship("Opportunity", "OpportunityId", "Opportunity"),
                ParentRelationship("PricebookEntry", "PricebookEntryId", "PricebookEntry"),
                ParentRelationship("Product2", "Product2Id", "Product2"),
            ],
        ),
        _object(
            "OpportunityContactRole",
            [
                FieldDef("OpportunityId", REFERENCE, updateable=False, createable=True),
                FieldDef("ContactId", REFERENCE),
                FieldDef("Role", PICKLIST),
                FieldDef("IsPrimary", BOOLEAN),
            ],
            [
                ParentRelationship("Opportunity", "OpportunityId", "Opportunity"),
                ParentRelationship("Contact", "ContactId", "Contact"),
            ],
        ),
    ]
    if not multi_currency:
        for obj in objects:
            obj.fields.pop(CURRENCY_FIELD, None)
    return {o.name: o for o in objects}


def custom_field_type(value: object) -> str:
    """The type a custom field gets when it is declared by its first value."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int | float):
        return DOUBLE
    return STRING


def is_custom_name(name: str) -> bool:
    return name.endswith("__c") and len(name) > 3
