"""The error written back onto a parked deal's Opportunity starts with its code and is
shortened at a word boundary within the field's 255 characters."""

from __future__ import annotations

from sf_bridge.plan import MappingError
from sf_bridge.provisioning.queue import enqueue_opportunities
from tests.fixtures.provisioning import Harness, drain, opportunity, settled

OPP = "006000000000001AAA"


def test_the_code_comes_first_and_the_text_is_cut_between_words(harness: Harness) -> None:
    h = harness
    h.crm.opportunities[OPP] = opportunity(OPP, "001000000000001AAA")
    words = " ".join(f"word{i}" for i in range(80))
    h.mappings.plans[OPP] = [
        MappingError("unknown_product", f"the product code 'SB-X' is not mapped {words}",
                     "add 'SB-X' under products", "line item 00k (product SB-X)")
    ]  # fmt: skip
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="test")
    drain(h.worker(), settled(h, OPP))
    deal = h.deal(OPP)
    assert deal.status == "needs_attention"
    assert "[unknown_product]" in (deal.last_error or "")

    written = h.crm.written[OPP]["Provisioning_Error__c"]
    assert written.startswith("unknown_product: ")
    assert len(written) <= 255
    assert written.endswith("…")
    last_word = written[:-1].split()[-1]
    assert last_word in deal.last_error.split()  # a whole word, not a piece of one
