"""Large child subqueries page like a query: `done: false` and a `nextRecordsUrl` of their own,
served by the query-more resource, and invalidated by the parent query's next page (Salesforce:
"A queryMore() call on a parent object invalidates all child cursors in the previous result
set"). Through the real simple-salesforce client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from simple_salesforce import Salesforce, SalesforceMalformedRequest

from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.salesforce_org.clients import oauth_login, sandbox_session

QUERY = (
    "SELECT Id, Name, (SELECT Id, SortOrder FROM OpportunityLineItems ORDER BY SortOrder) "
    "FROM Opportunity ORDER BY Name"
)


@pytest.fixture
def paging_org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(
        port=0, long_poll_seconds=1.0, query_batch_size=2, subquery_batch_size=3
    ) as org:
        org.create_product("PLAN-PRO", "Pro plan", unit_price=100)
        yield org


@pytest.fixture
def sf(paging_org: SalesforceSandbox) -> Iterator[Salesforce]:
    http = sandbox_session(paging_org)
    token = oauth_login(paging_org, http)
    yield Salesforce(
        instance_url=token["instance_url"],
        session_id=token["access_token"],
        session=http,
        version=paging_org.api_version,
    )
    http.close()


def deal(org: SalesforceSandbox, name: str, lines: int) -> str:
    account = org.create_account(f"{name} Inc")
    return org.create_opportunity(account, name, [{"product_code": "PLAN-PRO"}] * lines)


def test_a_child_subquery_above_the_batch_size_pages_with_its_own_next_records_url(
    paging_org: SalesforceSandbox, sf: Salesforce
) -> None:
    deal(paging_org, "A", lines=7)
    deal(paging_org, "B", lines=3)  # exactly one batch: not paged
    result = sf.query(QUERY)
    first, second = result["records"]
    children = first["OpportunityLineItems"]
    assert (children["totalSize"], children["done"], len(children["records"])) == (7, False, 3)
    assert children["nextRecordsUrl"].startswith("/services/data/v62.0/query/01g")
    assert second["OpportunityLineItems"]["done"] is True
    assert "nextRecordsUrl" not in second["OpportunityLineItems"]
    orders = [r["SortOrder"] for r in children["records"]]
    url = children["nextRecordsUrl"]
    pages = 1
    while url:
        page = sf.query_more(url, identifier_is_url=True)
        assert page["totalSize"] == 7
        assert page["records"][0]["attributes"]["type"] == "OpportunityLineItem"
        orders += [r["SortOrder"] for r in page["records"]]
        url = page.get("nextRecordsUrl")
        assert page["done"] is (url is None)
        pages += 1
    assert orders == list(range(1, 8))
    assert pages == 3


def test_the_parent_query_next_page_invalidates_the_previous_page_child_cursors(
    paging_org: SalesforceSandbox, sf: Salesforce
) -> None:
    for name in ("A", "B", "C"):
        deal(paging_org, name, lines=5)
    first_page = sf.query(QUERY)
    assert first_page["done"] is False
    stale = first_page["records"][0]["OpportunityLineItems"]["nextRecordsUrl"]
    second_page = sf.query_more(first_page["nextRecordsUrl"], identifier_is_url=True)
    assert [r["Name"] for r in second_page["records"]] == ["C"]
    with pytest.raises(SalesforceMalformedRequest) as refused:
        sf.query_more(stale, identifier_is_url=True)
    assert refused.value.content[0]["errorCode"] == "INVALID_QUERY_LOCATOR"
    # The last page's child cursor is still good.
    fresh = second_page["records"][0]["OpportunityLineItems"]["nextRecordsUrl"]
    assert len(sf.query_more(fresh, identifier_is_url=True)["records"]) == 2
