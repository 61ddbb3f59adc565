"""The deal lifecycle in the console over HTTP, on both backends: Cancel and Keep (confirmed,
recorded with the signed-in user, refused with the reason in a state where they do not
apply, refused without the CSRF token), partial wire payments, and the list and page showing
statuses, payment states, intents and the deal an amendment changed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy import update

from sf_bridge.db.models import Deal, EntitlementGrant
from sf_bridge.provisioning.queue import enqueue_snapshot
from sf_bridge.provisioning.store import mark_changed_after_provisioning, mark_unwon
from tests.fixtures.console import (
    OPS_USER,
    ConsoleSite,
    sign_in,
    stripe_client_for,
)
from tests.fixtures.mapping import make_opportunity

INVOICED = "enterprise-negotiated"  # paid by invoice: done with its first invoice open


def _deal(site: ConsoleSite, deal_id: int) -> Deal:
    with site.session_factory() as session:
        deal = session.get_one(Deal, deal_id)
        session.expunge(deal)
        return deal


def _unwon(site: ConsoleSite, deal_id: int) -> None:
    """The opportunity left its won stage; the worker applies the `review` policy."""
    opp = _deal(site, deal_id).opportunity_id
    with site.session_factory() as session, session.begin():
        assert mark_unwon(session, [opp], reason="Moved to Closed Lost.", source="test") == [opp]
    site.run_until(lambda: _deal(site, deal_id).status == "needs_attention")
    assert _deal(site, deal_id).last_error_code == "unwon_after_provisioning"


def _ops_actions(site: ConsoleSite, deal_id: int) -> list[dict[str, Any]]:
    return [e[2] or {} for e in site.deal_events(deal_id) if e[0] == "ops_action"]


def _actions_shown(html: str) -> set[str]:
    section = html[html.index('id="actions"') :]
    section = section[: section.index("</section>")]
    return {a for a in ("replay", "mark-paid", "cancel", "keep") if f'id="{a}"' in section}


def test_cancel_a_provisioned_deal_from_the_console(site: ConsoleSite) -> None:
    deal_id = site.provision(INVOICED)
    before = _deal(site, deal_id)
    assert (before.status, before.invoice_status) == ("done", "open")
    base = f"{site.url}/console/deals/{deal_id}"
    with httpx.Client() as http:
        token = sign_in(http, site.url)
        assert _actions_shown(http.get(base).text) == {"mark-paid", "cancel"}  # not keep
        confirm = http.get(f"{base}/cancel")
        assert confirm.status_code == 200
        assert f"Cancel deal {deal_id}?" in confirm.text
        assert f"sf-bridge deals cancel {deal_id}" in confirm.text
        assert before.stripe_subscription_id in confirm.text
        assert site.status(deal_id) == "done"  # the confirmation page changes nothing

        for data in ({"reason": "x"}, {"csrf_token": "forged", "reason": "x"}):
            refused = http.post(f"{base}/cancel", data=data, follow_redirects=False)
            assert refused.status_code == 403
            assert "security token" in refused.text
        assert site.status(deal_id) == "done"
        assert _ops_actions(site, deal_id) == []

        done = http.post(
            f"{base}/cancel",
            data={"csrf_token": token, "reason": "lost to a competitor"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"] == f"/console/deals/{deal_id}?notice=cancel_queued"
        assert site.status(deal_id) == "cancelling"
        page = http.get(f"{site.url}{done.headers['location']}").text
        assert "Cancellation queued" in page
        assert "cancelling: lost to a competitor" in page
        # Being cancelled: no replay, and no payment on an invoice about to be voided.
        assert _actions_shown(page) == set()
        for action, said in (("replay", "nothing to replay"), ("mark-paid", "may be voided")):
            refused = http.post(f"{base}/{action}", data={"csrf_token": token})
            assert refused.status_code == 409, action
            assert f"Deal {deal_id} is cancelling" in refused.text
            assert said in refused.text
        assert http.get(f"{base}/replay").status_code == 409

        site.run_until(lambda: site.status(deal_id) == "cancelled")
        stripe = stripe_client_for(site.settings)
        assert stripe.v1.invoices.retrieve(before.stripe_invoice_id).status == "void"
        assert stripe.v1.subscriptions.retrieve(before.stripe_subscription_id).status == "canceled"
        with site.session_factory() as session:
            grants = session.query(EntitlementGrant).filter_by(deal_id=deal_id).all()
            assert grants
            assert not any(g.active for g in grants)
        events = site.deal_events(deal_id)
        assert any(
            kind == "cancel_requested" and (detail or {}).get("actor") == OPS_USER
            for kind, _, detail in events
        )
        [action] = _ops_actions(site, deal_id)
        assert (action["by"], action["via"], action["action"]) == (OPS_USER, "console", "cancel")
        page = http.get(base).text
        assert f"{OPS_USER} asked to cancel this deal (lost to a competitor)" in page
        assert "cancel" not in _actions_shown(page)

        # Cancelled: the console says why it does not cancel again, and does nothing.
        again = http.get(f"{base}/cancel")
        assert again.status_code == 409
        assert f"Deal {deal_id} is cancelled already." in again.text
        posted = http.post(f"{base}/cancel", data={"csrf_token": token}, follow_redirects=False)
        assert posted.status_code == 409
        assert "is cancelled already" in posted.text
        kept = http.post(f"{base}/keep", data={"csrf_token": token}, follow_redirects=False)
        assert kept.status_code == 409
        assert "Keep settles only a deal parked as no longer won" in kept.text
    assert len(_ops_actions(site, deal_id)) == 1
    assert site.status(deal_id) == "cancelled"


def test_keep_a_deal_no_longer_won_from_the_console(site: ConsoleSite) -> None:
    deal_id = site.provision(INVOICED)
    base = f"{site.url}/console/deals/{deal_id}"
    with httpx.Client() as http:
        token = sign_in(http, site.url)
        refused = http.get(f"{base}/keep")  # a provisioned deal has nothing to keep
        assert refused.status_code == 409
        assert "Keep settles only" in refused.text
        _unwon(site, deal_id)
        page = http.get(base).text
        assert _actions_shown(page) == {"cancel", "keep", "mark-paid"}  # no replay
        replayed = http.post(f"{base}/replay", data={"csrf_token": token})
        assert replayed.status_code == 409
        assert "a replay does not settle it" in replayed.text
        listed = http.get(f"{site.url}/console/deals").text
        assert "no longer won: cancel or keep each" in listed  # no "Replay all" for them
        confirm = http.get(f"{base}/keep")
        assert confirm.status_code == 200
        assert "unwon_after_provisioning" in confirm.text
        assert f"sf-bridge deals keep {deal_id}" in confirm.text

        missing = http.post(f"{base}/keep", data={"note": "x"}, follow_redirects=False)
        assert missing.status_code == 403
        assert site.status(deal_id) == "needs_attention"

        done = http.post(
            f"{base}/keep",
            data={"csrf_token": token, "note": "stage set by mistake"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"].endswith("notice=kept")
        deal = _deal(site, deal_id)
        # kept: back to its write-back step, which tells the Opportunity "Provisioned" again
        assert (deal.status, deal.current_step, deal.last_error_code) == (
            "entitled",
            "write_back",
            None,
        )
        stripe = stripe_client_for(site.settings)
        assert stripe.v1.subscriptions.retrieve(deal.stripe_subscription_id).status == "active"
        events = site.deal_events(deal_id)
        [kept] = [e for e in events if e[0] == "kept"]
        assert kept[1] == (
            f"Kept as provisioned by {OPS_USER} although no longer won: stage set by mistake"
        )
        [action] = _ops_actions(site, deal_id)
        assert (action["by"], action["action"], action["note"]) == (
            OPS_USER,
            "keep",
            "stage set by mistake",
        )
        page = http.get(f"{site.url}{done.headers['location']}").text
        assert "Kept as provisioned: billing and entitlements go on" in page
        assert "keep" not in _actions_shown(page)

        again = http.post(f"{base}/keep", data={"csrf_token": token}, follow_redirects=False)
        assert again.status_code == 409
        assert f"Deal {deal_id} is entitled: Keep settles only" in again.text
    assert len(_ops_actions(site, deal_id)) == 1


def test_a_deal_changed_after_provisioning_offers_keep_and_cancel(site: ConsoleSite) -> None:
    deal_id = site.provision(INVOICED)
    _unwon(site, deal_id)
    opp = _deal(site, deal_id).opportunity_id
    with site.session_factory() as session, session.begin():
        assert mark_changed_after_provisioning(session, [opp], source="test") == [opp]
    with httpx.Client() as http:
        token = sign_in(http, site.url)
        listed = http.get(f"{site.url}/console/deals?code=changed_after_provisioning").text
        assert f'data-deal="{deal_id}"' in listed
        assert '<option value="changed_after_provisioning">' in listed  # the code filter
        page = http.get(f"{site.url}/console/deals/{deal_id}").text
        assert {"replay", "cancel", "keep"} <= _actions_shown(page)
        assert http.get(f"{site.url}/console/deals/{deal_id}/cancel").status_code == 200
        done = http.post(
            f"{site.url}/console/deals/{deal_id}/cancel",
            data={"csrf_token": token},
            follow_redirects=False,
        )
        assert done.status_code == 303
    deal = _deal(site, deal_id)
    assert (deal.status, deal.last_error) == ("cancelling", "cancelled by RevOps")


def test_a_deal_in_progress_is_neither_cancelled_nor_kept(site: ConsoleSite) -> None:
    with site.session_factory() as session, session.begin():
        deal_id = enqueue_snapshot(session, make_opportunity([]), source="file").id
    status = site.status(deal_id)  # not provisioned yet: the worker has not run
    assert status not in ("done", "needs_attention")
    with httpx.Client() as http:
        token = sign_in(http, site.url)
        page = http.get(f"{site.url}/console/deals/{deal_id}").text
        assert not {"cancel", "keep"} & _actions_shown(page)
        for action in ("cancel", "keep"):
            url = f"{site.url}/console/deals/{deal_id}/{action}"
            shown = http.get(url)
            assert shown.status_code == 409
            assert f"Deal {deal_id} is {status}" in shown.text
            posted = http.post(url, data={"csrf_token": token}, follow_redirects=False)
            assert posted.status_code == 409
            assert "reload the deal&#39;s page" in posted.text
        assert http.get(f"{site.url}/console/deals/999999/cancel").status_code == 404
    assert site.status(deal_id) == status
    assert _ops_actions(site, deal_id) == []


def test_record_part_payments_then_the_rest(site: ConsoleSite) -> None:
    deal_id = site.provision(INVOICED)
    deal = _deal(site, deal_id)
    stripe = stripe_client_for(site.settings)
    invoice = stripe.v1.invoices.retrieve(deal.stripe_invoice_id)
    total = int(invoice.amount_due)
    assert total > 10000
    base = f"{site.url}/console/deals/{deal_id}"
    with httpx.Client() as http:
        token = sign_in(http, site.url)
        page = http.get(base).text
        assert "the whole invoice (no payment recorded)" in page
        confirm = http.get(f"{base}/mark-paid")
        assert confirm.status_code == 200
        assert f"{total / 100:,.2f} USD</strong> still due" in confirm.text

        part = http.post(
            f"{base}/mark-paid",
            data={"csrf_token": token, "amount": "100.00", "reference": "WIRE-1"},
            follow_redirects=False,
        )
        assert part.status_code == 303
        assert part.headers["location"].endswith("notice=part_paid")
        left = total - 10000
        assert stripe.v1.invoices.retrieve(deal.stripe_invoice_id).amount_remaining == left
        page = http.get(f"{site.url}{part.headers['location']}").text
        assert "the rest of the invoice is still due" in page
        payments = page[page.index('id="payments"') :]
        assert "100.00 USD" in payments
        assert f"{left / 100:,.2f} USD" in payments
        assert f'id="left-due">{left / 100:,.2f} USD' in page
        assert "mark-paid" in _actions_shown(page)

        for amount, said in (
            ("a lot", "&#39;a lot&#39; is not an amount"),
            ("0", "must be more than 0"),
            (f"{total}", "is more than the"),
        ):
            refused = http.post(f"{base}/mark-paid", data={"csrf_token": token, "amount": amount})
            assert refused.status_code == 409, amount
            assert said in refused.text
        forged = http.post(f"{base}/mark-paid", data={"amount": "1.00"}, follow_redirects=False)
        assert forged.status_code == 403

        rest = http.post(
            f"{base}/mark-paid",
            data={"csrf_token": token, "amount": "", "reference": "WIRE-2"},
            follow_redirects=False,
        )
        assert rest.headers["location"].endswith("notice=paid")
        assert stripe.v1.invoices.retrieve(deal.stripe_invoice_id).status == "paid"
        page = http.get(base).text
        assert 'id="left-due">nothing: the invoice is paid' in page
        assert page.count('class="payment-row"') == 2
        assert "mark-paid" not in _actions_shown(page)
        assert http.get(f"{base}/mark-paid").status_code == 200  # the page; the POST refuses
    actions = _ops_actions(site, deal_id)
    assert [a["action"] for a in actions] == ["mark_paid"] * 2
    assert {a["by"] for a in actions} == {OPS_USER}
    assert [(a["amount"], a["reference"], a["status"]) for a in actions] == [
        (10000, "WIRE-1", "open"),
        (left, "WIRE-2", "paid"),
    ]
    assert _deal(site, deal_id).invoice_status == "paid"


def _seed_lifecycle(site: ConsoleSite) -> dict[str, int]:
    """Deals in the lifecycle's states, written directly: the page only reads them."""
    specs: dict[str, dict[str, Any]] = {
        "first": {
            "status": "done",
            "stripe_subscription_id": "sub_first",
            "plan": {"intent": "new_business", "plan_name": "Team", "plan_kind": "paid"},
        },
        "amend": {
            "status": "done",
            "stripe_subscription_id": "sub_first",
            "plan": {"intent": "amendment", "plan_name": "Team", "plan_kind": "paid"},
        },
        "later": {
            "status": "scheduled",
            "stripe_schedule_id": "sub_sched_later",
            "contract_start_at": datetime(2027, 3, 1, tzinfo=UTC),
        },
        "card": {"status": "done", "payment_state": "awaiting_payment"},
        "going": {
            "status": "cancelling",
            "current_step": "cancel",
            "last_error_code": "cancelling",
            "last_error": "lost",
        },
        "lost": {"status": "unwon", "current_step": "unwon", "last_error_code": "unwon"},
    }
    found: dict[str, int] = {}
    with site.session_factory() as session, session.begin():
        for n, (key, values) in enumerate(specs.items()):
            record = make_opportunity([], opportunity_id=f"006Hs0000{n}Life{n}", Name=f"Deal {key}")
            deal = enqueue_snapshot(session, record, source="file")
            session.execute(update(Deal).where(Deal.id == deal.id).values(**values))
            found[key] = deal.id
    return found


def test_the_list_and_the_page_show_the_lifecycle(site: ConsoleSite) -> None:
    d = _seed_lifecycle(site)
    with httpx.Client() as http:
        sign_in(http, site.url)
        listed = http.get(f"{site.url}/console/deals").text
        for status in ("scheduled", "unwon", "cancelling", "cancelled"):
            assert f'<option value="{status}" ' in listed  # the status filter offers them
        for code in ("unwon_after_provisioning", "changed_after_provisioning", "cancel_failed"):
            assert f'<option value="{code}">' in listed

        def row(html: str, deal_id: int) -> str:
            start = html.index(f'data-deal="{deal_id}"')
            return html[start : html.index("</tr>", start)]

        assert "amendment" in row(listed, d["amend"])
        assert f'href="/console/deals/{d["first"]}">of #{d["first"]}' in row(listed, d["amend"])
        assert "new" in row(listed, d["first"])
        assert "starts 2027-03-01" in row(listed, d["later"])
        assert "card: awaiting_payment" in row(listed, d["card"])
        for status in ("scheduled", "unwon", "cancelling"):
            filtered = http.get(f"{site.url}/console/deals", params={"status": status}).text
            shown = {k for k, v in d.items() if f'data-deal="{v}"' in filtered}
            assert (
                shown
                == {"scheduled": {"later"}, "unwon": {"lost"}, "cancelling": {"going"}}[status]
            )
        coded = http.get(f"{site.url}/console/deals", params={"code": "cancelling"}).text
        assert {k for k, v in d.items() if f'data-deal="{v}"' in coded} == {"going"}

        amend = http.get(f"{site.url}/console/deals/{d['amend']}").text
        assert f'<a href="/console/deals/{d["first"]}" id="amends">deal {d["first"]}</a>' in amend
        later = http.get(f"{site.url}/console/deals/{d['later']}").text
        assert 'id="contract-start">2027-03-01' in later
        card = http.get(f"{site.url}/console/deals/{d['card']}").text
        assert "awaiting the first card payment" in card
        going = http.get(f"{site.url}/console/deals/{d['going']}").text
        assert "cancelling: lost" in going
        assert not {"cancel", "keep"} & _actions_shown(going)
        # The scheduled deal has not started: cancelling it cancels its subscription schedule.
        assert "cancel" in _actions_shown(later)
        assert "cancel" in _actions_shown(card)
