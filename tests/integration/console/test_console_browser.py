"""The console in a real browser: headless Chromium signs in, filters the deals, reads a
timeline and replays a parked deal after its mapping was fixed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By

from tests.fixtures.console import (
    OPS_SECRET,
    OPS_USER,
    ConsoleSite,
    screenshot,
    sign_in,
    stripe_client_for,
    wait_for,
)

pytestmark = pytest.mark.slow


def _sign_in(
    driver: Any, site: ConsoleSite, secret: str = OPS_SECRET, user: str = OPS_USER
) -> None:
    driver.get(f"{site.url}/console/deals")
    wait_for(driver, lambda d: d.find_elements(By.ID, "username"))
    driver.find_element(By.ID, "username").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(secret)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(
        driver,
        lambda d: d.find_elements(By.ID, "signed-in-as") or d.find_elements(By.ID, "login-failed"),
    )


def _rows(driver: Any) -> list[str]:
    """The deal numbers listed, read in one go (the live list may be swapped meanwhile)."""
    script = "return Array.from(document.querySelectorAll('tr.deal')).map(r => r.dataset.deal)"
    return list(driver.execute_script(script))


def test_sign_in_refuses_a_wrong_secret_then_accepts_the_right_one(
    console_site: ConsoleSite, browser: Any
) -> None:
    browser.get(f"{console_site.url}/console/deals")
    wait_for(browser, lambda d: d.find_elements(By.ID, "sign-in"))
    assert "/console/login" in browser.current_url
    screenshot(browser, "console-login")
    _sign_in(browser, console_site, secret="not-the-secret")
    failed = wait_for(browser, lambda d: d.find_elements(By.ID, "login-failed"))
    assert "the name or the secret is not right" in failed[0].text
    assert not browser.find_elements(By.ID, "signed-in-as")
    # An unknown name gets the very same answer: nothing tells which part was wrong.
    _sign_in(browser, console_site, user="mallory", secret=OPS_SECRET)
    again = wait_for(browser, lambda d: d.find_elements(By.ID, "login-failed"))
    assert again[0].text == failed_text(browser)
    _sign_in(browser, console_site)
    who = wait_for(browser, lambda d: d.find_elements(By.ID, "signed-in-as"))
    assert who[0].text == OPS_USER
    assert browser.current_url.endswith("/console/deals")
    cookie = browser.get_cookie("sfb_console")
    assert cookie is not None
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Lax"


def failed_text(driver: Any) -> str:
    return str(driver.find_element(By.ID, "login-failed").text)


def test_the_list_puts_parked_deals_first_and_its_filters_narrow_it(
    console_site: ConsoleSite, browser: Any
) -> None:
    done = console_site.provision("team-self-serve")
    parked = console_site.provision("unknown-product")
    late = console_site.provision(
        "enterprise-negotiated", CloseDate="2026-12-15", Id="006Hs00000LateAAAQ"
    )
    assert console_site.status(parked) == "needs_attention"
    assert {console_site.status(done), console_site.status(late)} == {"done"}
    _sign_in(browser, console_site)
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.deal"))
    assert _rows(browser)[0] == str(parked)  # parked first, then newest first
    assert set(_rows(browser)) == {str(done), str(parked), str(late)}
    group = browser.find_element(By.CSS_SELECTOR, "tr.group")
    assert group.get_attribute("data-code") == "mapping"
    assert group.find_element(By.CSS_SELECTOR, "td.count").text == "1"
    screenshot(browser, "console-deals")

    browser.find_element(By.ID, "q").send_keys("echo labs")  # the account's name, any case
    browser.find_element(By.ID, "apply").click()
    wait_for(browser, lambda d: _rows(d) == [str(parked)])

    browser.get(f"{console_site.url}/console/deals")
    status = browser.find_element(By.ID, "status")
    status.find_element(By.CSS_SELECTOR, "option[value='done']").click()
    browser.find_element(By.ID, "closed_from").send_keys("12012026")
    browser.find_element(By.ID, "apply").click()
    wait_for(browser, lambda d: "closed_from=2026-12-01" in d.current_url)
    assert _rows(browser) == [str(late)]

    browser.get(f"{console_site.url}/console/deals?code=mapping")
    assert _rows(browser) == [str(parked)]
    browser.get(f"{console_site.url}/console/deals?closed_to=2025-01-01&status=nonsense")
    assert _rows(browser) == []
    problems = [p.text for p in browser.find_elements(By.CSS_SELECTOR, ".filter-problem")]
    assert problems
    assert "unknown status 'nonsense'" in problems[0]


def test_a_timeline_shows_steps_errors_with_their_fix_and_links(
    console_site: ConsoleSite, browser: Any
) -> None:
    done = console_site.provision("team-self-serve")
    parked = console_site.provision("unknown-product")
    _sign_in(browser, console_site)
    browser.get(f"{console_site.url}/console/deals/{done}")
    steps = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#steps tbody tr"))
    assert [s.find_elements(By.TAG_NAME, "td")[0].text for s in steps][:2] == ["map", "customer"]
    customer = browser.find_element(By.ID, "link-customer").get_attribute("href")
    assert customer.startswith("https://dashboard.stripe.com/test/customers/cus_")
    for kind in ("subscription", "invoice"):
        assert "/test/" in browser.find_element(By.ID, f"link-{kind}").get_attribute("href")
    opportunity = browser.find_element(By.ID, "link-opportunity").get_attribute("href")
    with console_site.session_factory() as session:
        from sf_bridge.db.models import Deal

        opp_id = session.get_one(Deal, done).opportunity_id
    assert opportunity == (
        f"https://example.my.salesforce.com/lightning/r/Opportunity/{opp_id}/view"
    )
    assert browser.find_elements(By.ID, "mark-paid")  # an open invoice can be marked paid

    browser.get(f"{console_site.url}/console/deals/{parked}")
    fixes = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#fixes li"))
    assert "unknown_product" in fixes[0].text
    assert "SB-SUPPORT-PREMIUM" in fixes[0].text
    assert "Fix:" in fixes[0].text
    failed = browser.find_elements(By.CSS_SELECTOR, "#timeline .outcome-failed")
    assert failed, "the failed map attempt is on the timeline"
    screenshot(browser, "console-timeline")


def test_replay_from_the_console_completes_a_parked_deal_once_the_mapping_is_fixed(
    console_site: ConsoleSite, browser: Any
) -> None:
    parked = console_site.provision("unknown-product")
    assert console_site.status(parked) == "needs_attention"
    console_site.fix_unknown_product()
    _sign_in(browser, console_site)
    browser.get(f"{console_site.url}/console/mappings")
    check = wait_for(browser, lambda d: d.find_elements(By.ID, "mapping-check"))
    assert "OK" in check[0].text
    screenshot(browser, "console-mappings")

    browser.get(f"{console_site.url}/console/deals/{parked}")
    wait_for(browser, lambda d: d.find_elements(By.ID, "replay"))[0].click()
    confirm = wait_for(browser, lambda d: d.find_elements(By.ID, "confirm"))
    assert console_site.status(parked) == "needs_attention"  # nothing before the confirmation
    confirm[0].click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert console_site.status(parked) != "needs_attention"

    # The worker (`sf-bridge run`) carries it on; the open page follows without a reload.
    console_site.run_until(lambda: console_site.status(parked) == "done")
    wait_for(browser, lambda d: d.find_element(By.ID, "deal-status").text == "done")
    assert browser.find_element(By.ID, "notice")  # still the same page: it was not reloaded
    events = console_site.deal_events(parked)
    by_alice = [e for e in events if e[0] == "ops_action"]
    assert len(by_alice) == 1
    assert by_alice[0][2] is not None
    assert by_alice[0][2]["by"] == OPS_USER
    assert by_alice[0][2]["action"] == "replay"
    assert by_alice[0][1].startswith(f"{OPS_USER} replayed this deal")
    history = browser.find_element(By.ID, "timeline").text
    assert f"{OPS_USER} replayed this deal" in history
    screenshot(browser, "console-timeline-replayed")


def test_the_reconciliation_page_lists_what_a_reconcile_found(
    console_site: ConsoleSite, browser: Any
) -> None:
    from sf_bridge.db.models import Deal
    from sf_bridge.provisioning.wiring import build_billing
    from sf_bridge.reconcile.findings import SUBSCRIPTION_CHANGED
    from sf_bridge.reconcile.service import reconcile

    done = console_site.provision("team-self-serve")
    with console_site.session_factory() as session:
        sub_id = session.get_one(Deal, done).stripe_subscription_id
    assert sub_id
    stripe_client_for(console_site.settings).v1.subscriptions.cancel(sub_id)
    reconcile(
        console_site.session_factory,
        crm=None,
        billing=build_billing(console_site.settings),
        since=None,
    )
    _sign_in(browser, console_site)
    browser.find_element(By.ID, "nav-reconcile").click()
    section = wait_for(browser, lambda d: d.find_elements(By.ID, f"kind-{SUBSCRIPTION_CHANGED}"))
    assert "cancelled in Stripe" in section[0].text
    assert "Fix" in section[0].text
    stripe_link = section[0].find_element(By.CSS_SELECTOR, "a.link-stripe").get_attribute("href")
    assert stripe_link == f"https://dashboard.stripe.com/test/subscriptions/{sub_id}"
    assert "mismatches" in browser.find_element(By.ID, "report-result").text
    screenshot(browser, "console-reconcile")
    section[0].find_element(By.CSS_SELECTOR, "a.link-deal").click()
    wait_for(browser, lambda d: d.current_url.endswith(f"/console/deals/{done}"))


def test_replay_every_parked_deal_of_an_error_code_from_the_list(
    console_site: ConsoleSite, browser: Any
) -> None:
    first = console_site.provision("unknown-product")
    second = console_site.provision("unknown-product", Id="006Hs00000Scnd1")
    console_site.fix_unknown_product()
    _sign_in(browser, console_site)
    group = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr.group"))
    assert group[0].find_element(By.CSS_SELECTOR, "td.count").text == "2"
    group[0].find_element(By.CSS_SELECTOR, "a.button").click()
    listed = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".confirm-list li"))
    assert len(listed) == 2
    browser.find_element(By.ID, "confirm").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "notice"))
    console_site.run_until(
        lambda: {console_site.status(first), console_site.status(second)} == {"done"}
    )
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "tr.group"))
    for deal in (first, second):
        kinds = [e[0] for e in console_site.deal_events(deal)]
        assert kinds.count("ops_action") == 1


def test_preview_page_shows_what_an_opportunity_would_provision(
    console_site: ConsoleSite, browser: Any
) -> None:
    parked = console_site.provision("unknown-product")
    console_site.fix_unknown_product()
    with console_site.session_factory() as session:
        from sf_bridge.db.models import Deal

        opp_id = session.get_one(Deal, parked).opportunity_id
    _sign_in(browser, console_site)
    browser.get(f"{console_site.url}/console/preview")
    field = wait_for(browser, lambda d: d.find_elements(By.ID, "opportunity_id"))[0]
    field.send_keys(f"  {opp_id} ")  # blanks around a pasted Id are ignored
    browser.find_element(By.ID, "run-preview").click()
    verdict = wait_for(browser, lambda d: d.find_elements(By.ID, "preview-verdict"))
    assert verdict[0].text.startswith("Maps"), verdict[0].text
    items = browser.find_element(By.ID, "preview-items").text
    assert "SB-SUPPORT-PREMIUM" in items
    assert "POST /v1/subscriptions" in browser.page_source
    screenshot(browser, "console-preview")
    assert console_site.status(parked) == "needs_attention"  # a preview changes nothing


def test_an_action_without_the_csrf_token_is_refused(console_site: ConsoleSite) -> None:
    parked = console_site.provision("unknown-product")
    console_site.fix_unknown_product()
    with httpx.Client() as client:
        token = sign_in(client, console_site.url)
        for data in ({}, {"csrf_token": "forged" + token[6:]}):
            refused = client.post(
                f"{console_site.url}/console/deals/{parked}/replay",
                data=data,
                follow_redirects=False,
            )
            assert refused.status_code == 403
            assert "security token" in refused.text
    with httpx.Client() as stranger:  # no session at all
        refused = stranger.post(
            f"{console_site.url}/console/deals/replay-parked",
            data={"code": "mapping"},
            follow_redirects=False,
        )
        assert refused.status_code == 403
    assert console_site.status(parked) == "needs_attention"
    assert [e for e in console_site.deal_events(parked) if e[0] in ("replayed", "ops_action")] == []
    # With the token the same request is done.
    with httpx.Client() as client:
        token = sign_in(client, console_site.url)
        done = client.post(
            f"{console_site.url}/console/deals/{parked}/replay",
            data={"csrf_token": token},
            follow_redirects=False,
        )
        assert done.status_code == 303
    assert console_site.status(parked) != "needs_attention"


def test_mark_an_invoice_paid_from_the_console(console_site: ConsoleSite, browser: Any) -> None:
    from sf_bridge.db.models import Deal

    done = console_site.provision("team-self-serve")
    with console_site.session_factory() as session:
        assert session.get_one(Deal, done).invoice_status == "open"
    _sign_in(browser, console_site)
    browser.get(f"{console_site.url}/console/deals/{done}")
    wait_for(browser, lambda d: d.find_elements(By.ID, "mark-paid"))[0].click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "confirm"))[0].click()
    notice = wait_for(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert "recorded as paid" in notice[0].text
    with console_site.session_factory() as session:
        assert session.get_one(Deal, done).invoice_status == "paid"
    actions = [e for e in console_site.deal_events(done) if e[0] == "ops_action"]
    assert len(actions) == 1
    assert actions[0][2] is not None
    assert actions[0][2]["by"] == OPS_USER
    assert actions[0][2]["action"] == "mark_paid"
    assert not browser.find_elements(By.ID, "mark-paid")  # a paid invoice offers it no more


def test_cancel_a_deal_from_the_console(site: ConsoleSite, browser: Any) -> None:
    """On each backend (the `site` fixture of this folder's conftest)."""
    from sf_bridge.db.models import Deal

    done = site.provision("enterprise-negotiated")  # invoiced: its invoice is open
    with site.session_factory() as session:
        deal = session.get_one(Deal, done)
        invoice_id, sub_id = deal.stripe_invoice_id, deal.stripe_subscription_id
    _sign_in(browser, site)
    browser.get(f"{site.url}/console/deals/{done}")
    assert not browser.find_elements(By.ID, "keep")  # a provisioned deal: nothing to keep
    wait_for(browser, lambda d: d.find_elements(By.ID, "cancel"))[0].click()
    reason = wait_for(browser, lambda d: d.find_elements(By.ID, "reason"))[0]
    assert site.status(done) == "done"  # nothing before the confirmation
    reason.send_keys("lost to a competitor")
    screenshot(browser, "console-cancel")
    browser.find_element(By.ID, "confirm").click()
    notice = wait_for(browser, lambda d: d.find_elements(By.ID, "notice"))
    assert "Cancellation queued" in notice[0].text
    assert site.status(done) == "cancelling"

    # The worker voids, cancels and revokes; the open page follows without a reload.
    site.run_until(lambda: site.status(done) == "cancelled")
    wait_for(browser, lambda d: d.find_element(By.ID, "deal-status").text == "cancelled")
    assert browser.find_element(By.ID, "notice")  # the same page: it was not reloaded
    assert not browser.find_elements(By.ID, "cancel")
    stripe = stripe_client_for(site.settings)
    assert stripe.v1.invoices.retrieve(invoice_id).status == "void"
    assert stripe.v1.subscriptions.retrieve(sub_id).status == "canceled"
    actions = [e for e in site.deal_events(done) if e[0] == "ops_action"]
    assert len(actions) == 1
    assert actions[0][2] is not None
    assert (actions[0][2]["by"], actions[0][2]["action"]) == (OPS_USER, "cancel")
    history = browser.find_element(By.ID, "timeline").text
    assert f"{OPS_USER} asked to cancel this deal (lost to a competitor)" in history
    assert f"Cancellation requested by {OPS_USER}: lost to a competitor" in history
