"""SalesforceCrm (simple-salesforce over HTTP) against the sandbox org."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from sf_bridge.crm.limits import ApiBudget
from sf_bridge.crm.port import ORG_CURRENCY_KEY, OpportunityUpdate
from sf_bridge.crm.salesforce import OrgCurrencies, SalesforceCrm
from sf_bridge.errors import CrmRejected, RateLimitedError
from sf_bridge.sandbox.salesforce_org import SalesforceSandbox
from tests.integration.intake.conftest import API_VERSION, credentials_for, open_deal


@dataclass
class Fields:
    opportunity: tuple[str, ...] = ("Name", "Account.Name", "CloseDate")
    lines: tuple[str, ...] = ("Quantity", "UnitPrice", "PricebookEntry.Product2.ProductCode")

    def query_fields(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return self.opportunity, self.lines


@pytest.fixture
def org():
    sandbox = SalesforceSandbox(port=0, long_poll_seconds=1.0, query_batch_size=50).start()
    sandbox.create_product("PRO-M", "Pro", unit_price=100)
    yield sandbox
    sandbox.stop()


def crm_for(org: SalesforceSandbox, **kwargs) -> SalesforceCrm:
    return SalesforceCrm(
        credentials_for(org),
        api_version=API_VERSION,
        fields=kwargs.pop("fields", Fields()),
        **kwargs,
    )


def test_batch_fetch_one_query_per_200_ids_with_lines_and_pagination(org: SalesforceSandbox):
    account = org.create_account("Acme")
    ids = [open_deal(org, f"Deal {i}", account=account) for i in range(210)]
    crm = crm_for(org)
    crm.fetch_opportunities(ids[:1])  # logs in
    org.reset_counters()
    records = crm.fetch_opportunities([*ids, "not-an-id", ids[0], "006000000000000' OR Id != '"])
    assert sorted(r["Id"] for r in records) == sorted(ids)
    # 210 ids: two queries (200 + 10); the sandbox pages by 50, so 4 + 1 more calls follow
    # nextRecordsUrl. Every call is counted by the org.
    assert org.rest_calls() == 2 + 3
    first = next(r for r in records if r["Id"] == ids[0])
    assert first["Account"]["Name"] == "Acme"
    lines = first["OpportunityLineItems"]["records"]
    assert lines[0]["PricebookEntry"]["Product2"]["ProductCode"] == "PRO-M"


def test_won_queries(org: SalesforceSandbox):
    crm = crm_for(org)
    won, lost = open_deal(org, "Won"), open_deal(org, "Open")
    org.close_won(won)
    assert crm.won_among([won, lost, "bogus"]) == {won}
    found = crm.find_won_since(None)
    assert [w.opportunity_id for w in found] == [won]
    assert crm.find_won_since(found[0].last_modified) == []
    assert [
        w.opportunity_id for w in crm.find_won_since(found[0].last_modified - timedelta(seconds=1))
    ] == [won]


def test_write_back_batches_of_200_with_per_record_results(org: SalesforceSandbox):
    account = org.create_account("Acme")
    ids = [open_deal(org, f"Deal {i}", account=account) for i in range(205)]
    crm = crm_for(org)
    crm.won_among(ids[:1])
    org.fail_updates(ids[3])  # UNABLE_TO_LOCK_ROW once: retryable
    org.reset_counters()
    updates = [OpportunityUpdate(i, {"SF_Bridge_Status__c": "done"}) for i in ids]
    updates.append(OpportunityUpdate("nope", {"SF_Bridge_Status__c": "done"}))
    results = crm.write_back(updates)
    assert org.rest_calls() == 2
    assert [r.opportunity_id for r in results] == [u.opportunity_id for u in updates]
    failed = {r.opportunity_id: r for r in results if not r.ok}
    assert set(failed) == {ids[3], "nope"}
    assert failed[ids[3]].retryable
    assert "UNABLE_TO_LOCK_ROW" in (failed[ids[3]].error or "")
    assert not failed["nope"].retryable
    assert org.get_opportunity(ids[0])["SF_Bridge_Status__c"] == "done"
    assert crm.write_back([OpportunityUpdate(ids[3], {"SF_Bridge_Status__c": "done"})])[0].ok


def test_expired_session_logs_in_again_once(org: SalesforceSandbox):
    crm = crm_for(org)
    opp = open_deal(org, "Deal")
    crm.fetch_opportunities([opp])
    logins = crm.calls
    org.expire_sessions()
    assert [r["Id"] for r in crm.fetch_opportunities([opp])] == [opp]
    assert crm.calls == logins + 3  # refused call, login, retried call


def test_request_limit_exceeded_pauses_calls_instead_of_failing(org: SalesforceSandbox):
    crm = crm_for(org, budget=ApiBudget(exceeded_backoff=60, probe_interval=60))
    opp = open_deal(org, "Deal")
    crm.fetch_opportunities([opp])
    org.request_limit_exceeded = True
    with pytest.raises(RateLimitedError) as info:
        crm.fetch_opportunities([opp])
    assert info.value.retry_after == 60
    org.request_limit_exceeded = False
    org.reset_counters()
    with pytest.raises(RateLimitedError):  # paused locally: no call goes out
        crm.fetch_opportunities([opp])
    assert org.rest_calls() == 0


def test_low_api_budget_slows_down_before_the_limit(org: SalesforceSandbox):
    crm = crm_for(org, budget=ApiBudget(reserve_fraction=0.1, probe_interval=60))
    opp = open_deal(org, "Deal")
    org.api_limit = (950, 1000)
    crm.fetch_opportunities([opp])  # this answer says 951/1000: under the 10 % reserve
    org.reset_counters()
    with pytest.raises(RateLimitedError):
        crm.fetch_opportunities([opp])
    assert org.rest_calls() == 0


def test_unknown_field_is_a_permanent_rejection(org: SalesforceSandbox):
    crm = crm_for(org, fields=Fields(opportunity=("No_Such_Field__x",)))
    with pytest.raises(CrmRejected, match="INVALID_FIELD"):
        crm.fetch_opportunities([open_deal(org, "Deal")])


# -- line-item subqueries that page -------------------------------------------------------


def test_an_opportunity_with_more_lines_than_the_subquery_batch_is_fetched_completely():
    """Salesforce pages a large child subquery (its own nextRecordsUrl) and the parent query's
    next page invalidates the previous page's child cursors: the gateway completes each page's
    line items before asking for the next page."""
    with SalesforceSandbox(port=0, long_poll_seconds=1.0, query_batch_size=2) as org:
        assert org.subquery_batch_size == 200  # the sandbox default
        org.create_product("PRO-M", "Pro", unit_price=100)
        account = org.create_account("Acme")
        sizes = {"Large": 450, "Medium": 201, "Small": 1}
        ids = {
            name: org.create_opportunity(
                account,
                name,
                [{"product_code": "PRO-M", "quantity": i + 1} for i in range(count)],
            )
            for name, count in sizes.items()
        }
        crm = crm_for(org)
        org.reset_counters()
        records = crm.fetch_opportunities(list(ids.values()))
        calls = dict(org.calls)
    by_id = {r["Id"]: r for r in records}
    for name, count in sizes.items():
        lines = by_id[ids[name]]["OpportunityLineItems"]
        assert lines["done"] is True
        assert "nextRecordsUrl" not in lines
        assert [r["Quantity"] for r in lines["records"]] == [float(i + 1) for i in range(count)]
    # one parent page more (the page size is 2), then 2 more child pages of Large, 1 of Medium
    assert calls.get("query") == 1
    assert calls.get("query_more") == 1 + 2 + 1


# -- single-currency orgs -------------------------------------------------------------------


def currency_fields() -> Fields:
    return Fields(opportunity=("Name", "CurrencyIsoCode"), lines=("Quantity", "CurrencyIsoCode"))


def test_a_single_currency_org_is_fetched_without_currency_iso_code_and_says_its_currency():
    with SalesforceSandbox(
        port=0, long_poll_seconds=1.0, multi_currency=False, corporate_currency="EUR"
    ) as org:
        org.create_product("PRO-M", "Pro", unit_price=100)
        first, second = open_deal(org, "First"), open_deal(org, "Second")
        crm = crm_for(org, fields=currency_fields())
        [record] = crm.fetch_opportunities([first])
        [again] = crm.fetch_opportunities([second])
        calls = dict(org.calls)
    assert "CurrencyIsoCode" not in record
    assert record[ORG_CURRENCY_KEY] == "EUR"
    assert again[ORG_CURRENCY_KEY] == "EUR"
    assert "CurrencyIsoCode" not in record["OpportunityLineItems"]["records"][0]
    assert crm.org_currencies() == OrgCurrencies(multi_currency=False, corporate_currency="EUR")
    assert calls["describe"] == 1  # learned once
    assert calls["query"] == 3  # the Organization, then one per fetch


def test_a_multi_currency_org_keeps_currency_iso_code_and_describes_once(org: SalesforceSandbox):
    crm = crm_for(org, fields=currency_fields())
    account = org.create_account("Acme")
    deal = org.create_opportunity(account, "Euro deal", [{"product_code": "PRO-M"}], currency="EUR")
    org.reset_counters()
    [record] = crm.fetch_opportunities([deal])
    crm.fetch_opportunities([deal])
    assert record["CurrencyIsoCode"] == "EUR"
    assert ORG_CURRENCY_KEY not in record
    assert (org.calls["describe"], org.calls["query"]) == (1, 2)  # no Organization query


def test_a_single_currency_org_whose_currency_cannot_be_read_parks_with_a_fix_then_recovers():
    with SalesforceSandbox(
        port=0, long_poll_seconds=1.0, multi_currency=False, corporate_currency="EUR"
    ) as org:
        org.create_product("PRO-M", "Pro", unit_price=100)
        deal = open_deal(org, "Deal")
        crm = crm_for(org, fields=currency_fields())
        org.fail_requests(
            "query",
            http_status=403,
            error_code="INSUFFICIENT_ACCESS",
            message="insufficient access rights on object id",
        )
        with pytest.raises(CrmRejected) as refused:
            crm.fetch_opportunities([deal])
        [record] = crm.fetch_opportunities([deal])  # nothing cached from the failure
    text = refused.value.user_message()
    assert "no CurrencyIsoCode" in text
    assert "Organization.DefaultCurrencyIsoCode" in text
    assert "View Setup and Configuration" in text
    assert record[ORG_CURRENCY_KEY] == "EUR"


def test_threads_fetch_and_write_back_at_once_each_on_its_own_http_session(
    org: SalesforceSandbox, monkeypatch: pytest.MonkeyPatch
):
    """requests documents no thread safety for a Session (one Session per thread is the
    maintainers' advice, psf/requests#2766 and #1871): each worker thread talks to Salesforce
    on its own session, and all share one login; when the session expires in the middle, one
    thread logs in again and every thread goes on with the new token."""
    import threading

    import requests

    account = org.create_account("Acme")
    threads = 4
    ids = [open_deal(org, f"Deal {i}", account=account) for i in range(threads)]
    crm = crm_for(org)
    used: list[tuple[int, int, str]] = []  # (thread, requests session, url)
    used_lock = threading.Lock()
    send = requests.Session.send

    def spy(self: requests.Session, request: requests.PreparedRequest, **kwargs):
        with used_lock:
            used.append((threading.get_ident(), id(self), request.url or ""))
        return send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", spy)
    fetched = threading.Barrier(threads, action=org.expire_sessions)
    errors: list[BaseException] = []
    statuses: dict[str, str] = {}

    def work(opp_id: str) -> None:
        try:
            assert [r["Id"] for r in crm.fetch_opportunities([opp_id])] == [opp_id]
            fetched.wait(timeout=30)  # the last to arrive expires every session
            update = OpportunityUpdate(opp_id, {"SF_Bridge_Status__c": f"done {opp_id}"})
            assert crm.write_back([update])[0].ok
            statuses[opp_id] = crm.fetch_opportunities([opp_id])[0]["Id"]
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(opp_id,)) for opp_id in ids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert not errors, errors
    assert statuses == {opp_id: opp_id for opp_id in ids}
    for opp_id in ids:
        assert org.get_opportunity(opp_id)["SF_Bridge_Status__c"] == f"done {opp_id}"
    threads_of_session: dict[int, set[int]] = {}
    for thread, session, _ in used:
        threads_of_session.setdefault(session, set()).add(thread)
    assert all(len(t) == 1 for t in threads_of_session.values()), "a session shared by threads"
    assert len({thread for thread, _, _ in used}) == threads
    logins = [url for _, _, url in used if url.endswith("/services/oauth2/token")]
    assert len(logins) == 2  # the first login, and one after the expiry for every thread
