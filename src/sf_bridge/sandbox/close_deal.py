"""`sf-bridge sandbox close-deal OPP.json`: a trial deal created and closed in a running
sandbox org through its REST API, as a user would in Salesforce: the Account, the
Opportunity at an open stage, its line items, then the stage set to Closed Won (which emits
the change events `sf-bridge run` listens to).

The file is an Opportunity as Salesforce's REST API returns it (the shape of
examples/opportunities/*.json); its ids are ignored, new records get new ids. The deal closes
today (its Close Date), as a deal a rep closes now, unless another close date is asked for: a
file's own Close Date is in the past, before the provisioning floor of a worker started on a
new database, which would skip it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceError

from sf_bridge.crm.auth import SalesforceCredentials, login
from sf_bridge.crm.transport import is_plain_http_loopback, make_http_session
from sf_bridge.errors import ConfigurationError

OPEN_STAGE = "Proposal/Price Quote"
WON_STAGE = "Closed Won"
# Set by Salesforce itself, or replaced by the new records' own.
NOT_COPIED = frozenset(
    {"Id", "AccountId", "IsWon", "IsClosed", "LastModifiedDate", "Amount", "StageName",
     "HasOpportunityLineItem", "CreatedDate", "SystemModstamp", "CloseDate"}
)  # fmt: skip
# What a line item is created with besides its product: the negotiated price and discount,
# and the start date of a ramp's phase.
LINE_FIELDS = ("Quantity", "UnitPrice", "Discount", "ServiceDate")
PRODUCT_CODE = re.compile(r"^[A-Za-z0-9_.\- ]{1,255}$")


@dataclass(frozen=True)
class ClosedDeal:
    opportunity_id: str
    account_id: str
    name: str
    lines: int
    close_date: str


def connect(credentials: SalesforceCredentials, api_version: str) -> Salesforce:
    """A REST client logged in to the org (OAuth, as `sf-bridge run` logs in)."""
    http = make_http_session(is_plain_http_loopback(credentials.login_url))
    token = login(http, credentials, 30.0)
    return Salesforce(
        session_id=token.access_token.get_secret_value(),
        instance_url=token.instance_url,
        version=api_version,
        session=http,
    )


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in record.items()
        if name not in NOT_COPIED
        and name != "attributes"
        and not name.startswith("sf_bridge:")
        and not isinstance(value, dict)
        and value is not None
    }


def _create(sf: Salesforce, sobject: str, values: dict[str, Any]) -> str:
    """`POST /sobjects/<type>`: the new record's id."""
    answer = sf.restful(f"sobjects/{sobject}", method="POST", json=values)
    if not isinstance(answer, dict) or not answer.get("id"):
        raise ConfigurationError(f"The sandbox org created no {sobject}: it answered {answer!r}.")
    return str(answer["id"])


def _product_code(line: dict[str, Any]) -> str:
    entry = line.get("PricebookEntry") or {}
    code = (entry.get("Product2") or {}).get("ProductCode") or line.get("ProductCode")
    if not isinstance(code, str) or not PRODUCT_CODE.match(code):
        raise ConfigurationError(
            f"Line item {line.get('Id') or '(no id)'} has no usable product code ({code!r}).",
            hint="give each line PricebookEntry.Product2.ProductCode (or ProductCode), as in "
            "examples/opportunities/*.json.",
        )
    return code


def _products(sf: Salesforce, codes: list[str]) -> dict[str, str]:
    quoted = ", ".join("'" + c.replace("\\", "\\\\").replace("'", "\\'") + "'" for c in codes)
    found = sf.query(f"SELECT Id, ProductCode FROM Product2 WHERE ProductCode IN ({quoted})")
    return {r["ProductCode"]: r["Id"] for r in found["records"]}


def close_deal(
    sf: Salesforce, record: dict[str, Any], *, close_date: date | None = None
) -> ClosedDeal:
    """Creates the deal in the org and closes it won on `close_date` (default today, UTC);
    returns the new ids."""
    lines = ((record.get("OpportunityLineItems") or {}).get("records")) or []
    codes = [_product_code(line) for line in lines]
    products = _products(sf, sorted(set(codes))) if codes else {}
    missing = sorted(set(codes) - set(products))
    if missing:
        raise ConfigurationError(
            f"The sandbox org has no product with code {', '.join(missing)}.",
            hint="start `sf-bridge sandbox --mappings DIR` with mappings that name these "
            "products (the org gets their products), or correct the lines in the file.",
        )
    try:
        account = _fields(record.get("Account") or {})
        account.setdefault("Name", f"{record.get('Name') or 'Trial'} (account)")
        account_id = _create(sf, "Account", account)
        opportunity = _fields(record)
        opportunity.setdefault("Name", "Trial deal")
        opportunity["CloseDate"] = (close_date or datetime.now(UTC).date()).isoformat()
        opportunity |= {"AccountId": account_id, "StageName": OPEN_STAGE}
        opportunity_id = _create(sf, "Opportunity", opportunity)
        for line, code in zip(lines, codes, strict=True):
            values = {"OpportunityId": opportunity_id, "Product2Id": products[code]}
            values |= {k: line[k] for k in LINE_FIELDS if line.get(k) is not None}
            _create(sf, "OpportunityLineItem", values)
        sf.restful(
            f"sobjects/Opportunity/{opportunity_id}", method="PATCH", json={"StageName": WON_STAGE}
        )
    except SalesforceError as exc:
        detail = exc.content[0] if isinstance(exc.content, list) and exc.content else exc.content
        raise ConfigurationError(
            f"The sandbox org refused the deal: {detail!s}.",
            hint="correct that field in the file (custom fields exist in the org when the "
            "mappings name them), then run the command again.",
        ) from None
    return ClosedDeal(
        opportunity_id, account_id, str(opportunity["Name"]), len(lines), opportunity["CloseDate"]
    )
