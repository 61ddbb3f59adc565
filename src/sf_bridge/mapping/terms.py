"""What the mapping says about a deal's place in the account's life: its intent (new business,
amendment, renewal), how amendments apply, the contract dates and the deal-level discount.

Every part is optional; without them every deal is new business, starts when provisioned and
has no discount. Built by `sf_bridge.mapping.terms_schema`, read by
`sf_bridge.mapping.terms_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sf_bridge.mapping.model import FieldRef, ValueSource
from sf_bridge.plan import AmendmentLines, PastStart, Proration


@dataclass(frozen=True)
class AmendmentRules:
    lines: AmendmentLines = "additions"
    proration: Proration = "create_prorations"


@dataclass(frozen=True)
class ContractRules:
    start_date: FieldRef | None = None  # an Opportunity date field
    term_months: ValueSource | None = None  # a field, or a fixed number as the default
    line_start_date: FieldRef | None = None  # an OpportunityLineItem date field (ramps)
    past_start: PastStart = "start_now"


@dataclass(frozen=True)
class DiscountRules:
    percent: ValueSource | None = None
    amount: ValueSource | None = None
    duration: ValueSource = field(default_factory=lambda: ValueSource((), (), "once"))
    months: ValueSource | None = None


@dataclass(frozen=True)
class DealTerms:
    deal_type: ValueSource | None = None  # picklist value -> intent
    amendments: AmendmentRules = field(default_factory=AmendmentRules)
    contract: ContractRules = field(default_factory=ContractRules)
    discount: DiscountRules | None = None

    def fields(self) -> list[FieldRef]:
        """Every Salesforce field these rules read (the fetch selects them)."""
        refs: list[FieldRef] = []
        sources: list[ValueSource | None] = [self.deal_type, self.contract.term_months]
        if self.discount is not None:
            d = self.discount
            sources += [d.percent, d.amount, d.duration, d.months]
        for source in sources:
            if source is not None:
                refs.extend(source.fields)
        for ref in (self.contract.start_date, self.contract.line_start_date):
            if ref is not None:
                refs.append(ref)
        return refs
