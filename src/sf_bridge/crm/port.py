"""The Salesforce side as the rest of sf-bridge sees it. The domain never imports
`simple_salesforce` or `aiosfstream_ng`; it talks to a `CrmGateway`.

Implementations: `sf_bridge.crm.salesforce.SalesforceCrm` (real org or the sandbox org over
HTTP) and `InMemoryCrm` below for pure unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

Opportunity = dict[str, Any]  # a record exactly as the Salesforce REST query returns it

# Fetched opportunities of an org without multi-currency (which has no `CurrencyIsoCode`
# field) carry the org's one currency (`Organization.DefaultCurrencyIsoCode`) under this key,
# so that the record alone says which currency the deal is in. Not a Salesforce field name.
ORG_CURRENCY_KEY = "sf_bridge:OrgCurrencyIsoCode"


@dataclass(frozen=True)
class OpportunityUpdate:
    """Field values to write onto one Opportunity (API names -> values)."""

    opportunity_id: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class WriteBackResult:
    opportunity_id: str
    ok: bool
    error: str | None = None
    retryable: bool = False


@dataclass(frozen=True)
class WonOpportunity:
    opportunity_id: str
    last_modified: datetime


class CrmGateway(Protocol):
    def fetch_opportunities(self, opportunity_ids: list[str]) -> list[Opportunity]:
        """Opportunities with their line items, account and contact fields the mappings name.
        At most one query per 200 ids; ids not found are simply absent from the result."""
        ...

    def find_won_since(self, since: datetime | None, limit: int = 2000) -> list[WonOpportunity]:
        """Won opportunities modified after `since` (all won ones when None), oldest first."""
        ...

    def write_back(self, updates: list[OpportunityUpdate]) -> list[WriteBackResult]:
        """Writes field values onto opportunities, up to 200 per call, not all-or-none."""
        ...


@dataclass
class InMemoryCrm:
    """A CrmGateway over a dict, for unit tests that need no HTTP."""

    opportunities: dict[str, Opportunity] = field(default_factory=dict)
    written: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: int = 0

    def fetch_opportunities(self, opportunity_ids: list[str]) -> list[Opportunity]:
        self.calls += 1
        return [self.opportunities[i] for i in opportunity_ids if i in self.opportunities]

    def find_won_since(self, since: datetime | None, limit: int = 2000) -> list[WonOpportunity]:
        self.calls += 1
        found = []
        for opp_id, opp in self.opportunities.items():
            if not opp.get("IsWon"):
                continue
            modified = datetime.fromisoformat(
                str(opp.get("LastModifiedDate", "1970-01-01T00:00:00+00:00")).replace(
                    "+0000", "+00:00"
                )
            )
            if since is None or modified > since:
                found.append(WonOpportunity(opp_id, modified))
        return sorted(found, key=lambda w: w.last_modified)[:limit]

    def write_back(self, updates: list[OpportunityUpdate]) -> list[WriteBackResult]:
        self.calls += 1
        for update in updates:
            self.written.setdefault(update.opportunity_id, {}).update(update.fields)
        return [WriteBackResult(u.opportunity_id, True) for u in updates]
