"""The console over HTTP on both backends: off without ops users, the deals query's filters
and groups, sign-in, and what the pages refuse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.api import create_app
from sf_bridge.console import queries
from sf_bridge.db.models import Deal
from sf_bridge.errors import ConfigurationError
from sf_bridge.provisioning.queue import enqueue_snapshot
from sf_bridge.provisioning.wiring import build_billing
from sf_bridge.reconcile import findings
from sf_bridge.reconcile.service import reconcile
from tests.fixtures.api import serve_in_thread
from tests.fixtures.console import (
    OPS_SECRET,
    ConsoleSite,
    console_settings,
    csrf_token,
    sign_in,
    stripe_client_for,
)
from tests.fixtures.mapping import EXAMPLE_MAPPINGS_DIR, make_opportunity


def _seed(factory: sessionmaker[Session]) -> dict[str, int]:
    """Four deals: two parked (two codes), one done, one retrying, with names and dates."""
    specs = {
        "acme": ("006Hs00000Acme1", "001Hs00000AcmeA", "Acme - Team", "Acme Corp", "2026-10-05"),
        "blue": ("006Hs00000Blue1", "001Hs00000BlueA", "Blue 100% deal", "Blue_Sky", "2026-11-10"),
        "cyan": ("006Hs00000Cyan1", "001Hs00000AcmeA", "Cyan renewal", "Acme Corp", "2026-11-20"),
        "dune": ("006Hs00000Dune1", "001Hs00000DuneA", "Dune", "Dune Ltd", "2026-12-01"),
    }
    states = {
        "acme": ("needs_attention", "mapping"),
        "blue": ("needs_attention", "stripe_invalid_request"),
        "cyan": ("done", None),
        "dune": ("retrying", "stripe_rate_limited"),
    }
    found: dict[str, int] = {}
    with factory() as session, session.begin():
        for key, (opp, account, name, account_name, close) in specs.items():
            record = make_opportunity([], opportunity_id=opp, Name=name, CloseDate=close)
            record["AccountId"] = account
            record["Account"] = {**record["Account"], "Id": account, "Name": account_name}
            deal = enqueue_snapshot(session, record, source="file")
            status, code = states[key]
            session.execute(
                update(Deal)
                .where(Deal.id == deal.id)
                .values(status=status, last_error_code=code, last_error=code and f"{code} happened")
            )
            found[key] = deal.id
    return found


def _ids(factory: sessionmaker[Session], **params: str) -> list[int]:
    with factory() as session:
        page = queries.deal_page(session, queries.DealFilter.from_params(params))
        return [d.id for d in page.deals]


def test_deals_query_filters_searches_and_puts_parked_first(
    session_factory: sessionmaker[Session],
) -> None:
    d = _seed(session_factory)
    assert _ids(session_factory) == [d["blue"], d["acme"], d["dune"], d["cyan"]]
    assert _ids(session_factory, status="done") == [d["cyan"]]
    assert _ids(session_factory, code="mapping") == [d["acme"]]
    assert _ids(session_factory, account="001Hs00000AcmeA") == [d["acme"], d["cyan"]]
    assert _ids(session_factory, closed_from="2026-11-01", closed_to="2026-11-30") == [
        d["blue"],
        d["cyan"],
    ]
    assert _ids(session_factory, q="ACME CORP") == [d["acme"], d["cyan"]]  # account name
    assert _ids(session_factory, q="renewal") == [d["cyan"]]  # opportunity name
    assert _ids(session_factory, q="100%") == [d["blue"]]  # % and _ are literal
    assert _ids(session_factory, q="blue_sky") == [d["blue"]]
    assert _ids(session_factory, q="c_e") == []  # would match "Acme" were _ a wildcard
    assert _ids(session_factory, q="006Hs00000Dune1") == [d["dune"]]  # 15-character id
    assert _ids(session_factory, q=str(d["cyan"])) == [d["cyan"]]
    with session_factory() as session:
        groups = queries.parked_groups(session)
        assert [(g.error_code, g.count) for g in groups] == [
            ("mapping", 1),
            ("stripe_invalid_request", 1),
        ]
        assert queries.parked_deal_ids(session, "mapping") == [d["acme"]]
        page = queries.deal_page(session, queries.DealFilter.from_params({}), page_size=3)
        assert (page.total, page.pages, len(page.deals)) == (4, 2, 3)
        second = queries.deal_page(
            session, queries.DealFilter.from_params({"page": "2"}), page_size=3
        )
        assert [x.id for x in second.deals] == [d["cyan"]]


def test_bad_filters_are_named_and_ignored() -> None:
    wanted = queries.DealFilter.from_params(
        {"status": "lost", "account": "nope", "closed_from": "2026-02-30", "page": "-3"}
    )
    assert wanted.status is None
    assert wanted.account is None
    assert wanted.closed_from is None
    assert wanted.page == 1
    said = " ".join(wanted.problems)
    assert "unknown status 'lost'" in said
    assert "'nope' is not an Account Id" in said
    assert "'2026-02-30' is not a date" in said


def test_console_is_off_without_ops_users(session_factory: sessionmaker[Session]) -> None:
    settings = console_settings("sqlite://", EXAMPLE_MAPPINGS_DIR, SF_BRIDGE_OPS_USERS="")
    with serve_in_thread(create_app(settings, session_factory)) as url, httpx.Client() as http:
        answer = http.get(f"{url}/console/deals")
        assert answer.status_code == 404
        assert "The ops console is off" in answer.text
        assert "SF_BRIDGE_OPS_USERS" in answer.text
        assert http.get(f"{url}/healthz").status_code == 200
    unsigned = console_settings("sqlite://", EXAMPLE_MAPPINGS_DIR, SF_BRIDGE_CONSOLE_SECRET="")
    with serve_in_thread(create_app(unsigned, session_factory)) as url, httpx.Client() as http:
        answer = http.post(f"{url}/console/login", data={"username": "alice"})
        assert answer.status_code == 404
        assert "SF_BRIDGE_CONSOLE_SECRET" in answer.text
        assert "SF_BRIDGE_OPS_USERS</code> and" not in answer.text  # only what is missing


def test_a_short_signing_secret_is_refused_at_start(session_factory: sessionmaker[Session]) -> None:
    settings = console_settings("sqlite://", EXAMPLE_MAPPINGS_DIR, SF_BRIDGE_CONSOLE_SECRET="short")
    with pytest.raises(ConfigurationError) as info:
        create_app(settings, session_factory)
    assert "SF_BRIDGE_CONSOLE_SECRET is too short" in info.value.user_message()
    assert "short" not in info.value.user_message().replace("too short", "")


def test_pages_need_a_session_and_the_api_keys_do_not_open_them(
    session_factory: sessionmaker[Session], tmp_path: Path, caplog: Any
) -> None:
    _seed(session_factory)
    settings = console_settings(
        "sqlite://", EXAMPLE_MAPPINGS_DIR, SF_BRIDGE_API_KEYS="sfb-api-key-1"
    )
    with serve_in_thread(create_app(settings, session_factory)) as url, httpx.Client() as http:
        page = http.get(f"{url}/console/deals", follow_redirects=False)
        assert page.status_code == 303
        assert "/console/login" in page.headers["location"]
        keyed = http.get(
            f"{url}/console/deals",
            headers={"Authorization": "Bearer sfb-api-key-1"},
            follow_redirects=False,
        )
        assert keyed.status_code == 303
        assert http.get(f"{url}/console/deals/live").status_code == 401
        cookie = httpx.get(f"{url}/console/login").headers["set-cookie"].lower()
        login = http.get(f"{url}/console/login")
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        assert "path=/console" in cookie
        assert "secure" not in cookie  # plain HTTP on loopback
        wrong = http.post(
            f"{url}/console/login",
            data={"csrf_token": csrf_token(login.text), "username": "alice", "password": "x"},
        )
        unknown = http.post(
            f"{url}/console/login",
            data={"csrf_token": csrf_token(login.text), "username": "zed", "password": OPS_SECRET},
        )
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.text == unknown.text  # the same page: nothing says which part was wrong
        assert "the name or the secret is not right" in wrong.text
        token = sign_in(http, url)
        listed = http.get(f"{url}/console/deals")
        assert listed.status_code == 200
        assert "Acme - Team" in listed.text
        assert listed.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in listed.headers["content-security-policy"]
        assert http.get(f"{url}/console/deals/999999").status_code == 404
        assert http.get(f"{url}/console/static/console.js").status_code == 200
        assert http.get(f"{url}/console/mappings").status_code == 200
        # Signing out ends the session: its token no longer works either.
        out = http.post(f"{url}/console/logout", data={"csrf_token": token}, follow_redirects=False)
        assert out.status_code == 303
        assert http.get(f"{url}/console/deals", follow_redirects=False).status_code == 303
    assert OPS_SECRET not in caplog.text
    assert "another-secret" not in caplog.text


def test_the_reconciliation_page_shows_the_last_report_grouped_by_kind(
    console_site: ConsoleSite,
) -> None:
    with httpx.Client() as http:
        sign_in(http, console_site.url)
        empty = http.get(f"{console_site.url}/console/reconcile")
        assert empty.status_code == 200
        assert "No report yet" in empty.text
        assert "<code>sf-bridge reconcile</code>" in empty.text
        assert 'href="/console/reconcile"' in empty.text  # in the navigation

        # A deal provisioned by the worker (invoiced: its grants are in effect at once), then
        # changed by hand in Stripe.
        done = console_site.provision("team-self-serve", Payment_Method__c="Invoice")
        with console_site.session_factory() as session:
            deal = session.get_one(Deal, done)
            opp_id, sub_id = deal.opportunity_id, deal.stripe_subscription_id
        assert sub_id
        stripe = stripe_client_for(console_site.settings)
        stripe.v1.subscriptions.cancel(sub_id)
        stray = stripe.v1.customers.create(
            {"name": "Made by hand", "metadata": {"sf_opportunity_id": "006Hs00009ZZZZZZZZ"}}
        )
        report = reconcile(
            console_site.session_factory,
            crm=None,
            billing=build_billing(console_site.settings),
            since=None,
        )
        kinds = {m.kind for m in report.mismatches}
        assert kinds == {
            findings.SUBSCRIPTION_CHANGED,
            findings.ENTITLEMENTS_WITHOUT_SUBSCRIPTION,
            findings.UNKNOWN_STRIPE_OBJECT,
        }

        page = http.get(f"{console_site.url}/console/reconcile")
        assert page.status_code == 200
        html = page.text
        assert "No report yet" not in html
        assert f"{len(report.mismatches)} mismatches" in html
        assert "by hand (<code>sf-bridge reconcile</code>)" in html
        assert "every deal (no provisioning floor)" in html
        assert report.started_at.strftime("%Y-%m-%d %H:%M:%S") in html
        # One section per kind, in the order of the kinds, each mismatch with its fix.
        sections = [html.index(f'id="kind-{k}"') for k in findings.KINDS if k in kinds]
        assert sections == sorted(sections)
        for m in report.mismatches:
            section = html[html.index(f'id="kind-{m.kind}"') :]
            section = section[: section.index("</section>")]
            assert str(m.problem) in section.replace("&#39;", "'")
            assert str(m.fix).replace("`", "") in section.replace("&#39;", "'").replace("`", "")
        cancelled = html[html.index(f'id="kind-{findings.SUBSCRIPTION_CHANGED}"') :]
        cancelled = cancelled[: cancelled.index("</section>")]
        assert f"https://dashboard.stripe.com/test/subscriptions/{sub_id}" in cancelled
        assert (
            f"https://example.my.salesforce.com/lightning/r/Opportunity/{opp_id}/view" in cancelled
        )
        assert f'href="/console/deals/{done}"' in cancelled
        unknown = html[html.index(f'id="kind-{findings.UNKNOWN_STRIPE_OBJECT}"') :]
        assert f"https://dashboard.stripe.com/test/customers/{stray['id']}" in unknown
