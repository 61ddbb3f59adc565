"""The stream against the sandbox org through the real aiosfstream-ng and simple-salesforce
clients: every won deal enqueued exactly once, replay ids committed, recovery from faults."""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.intake.replay import load_marker
from sf_bridge.intake.status import read_stream_status
from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from tests.integration.intake.conftest import (
    deal_count,
    deals_by_source,
    fast_options,
    open_deal,
    wait_until,
)


def stored_replay_id(session_factory: sessionmaker[Session], channel: str = CDC_CHANNEL) -> Any:
    with session_factory() as session:
        marker = load_marker(session, channel)
    return marker.replay_id if marker else None


def test_closed_deal_is_enqueued_once_and_its_replay_id_committed(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness()
    intake = h.start()
    opp = open_deal(intake_org, "Acme")
    assert deal_count(session_factory) == 0  # an open deal is not enqueued
    closed_at = time.monotonic()
    intake_org.close_won(opp)
    wait_until(lambda: opp in h.enqueued_at, 5, "the deal enqueued")
    delay = h.enqueued_at[opp] - closed_at
    assert delay < 3.0, f"close to enqueued took {delay:.3f} s"  # ~20 ms unless starved of CPU
    assert deals_by_source(session_factory) == {opp: "stream"}
    last_replay_id = intake_org.events.last_replay_id
    wait_until(lambda: stored_replay_id(session_factory) == last_replay_id, 5, "replay id")
    with session_factory() as session:
        status = read_stream_status(session, CDC_CHANNEL)
    assert status is not None
    assert status.healthy
    assert intake.stats.malformed == 0


def test_a_restart_resumes_after_the_stored_replay_id(
    intake_org: SalesforceSandbox, session_factory, harness
):
    first = harness()
    first.start()
    opp = open_deal(intake_org, "Before")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "first deal")
    first.stop()
    stored = stored_replay_id(session_factory)
    assert stored is not None

    missed = [open_deal(intake_org, f"Missed {i}") for i in range(10)]
    for opp_id in missed:
        intake_org.close_won(opp_id)

    second = harness()
    intake = second.start()
    wait_until(lambda: deal_count(session_factory) == 11, 10, "the ten deals closed meanwhile")
    # The stream itself replayed every missed event from the stored id.
    wait_until(lambda: intake.stats.won_ids >= 10, 5, "replayed events")
    assert set(missed) <= set(deals_by_source(session_factory))
    assert intake.stats.replay_fallbacks == 0


def test_refused_replay_id_falls_back_to_all_events_and_sweeps(
    intake_org: SalesforceSandbox, session_factory, harness
):
    first = harness()
    first.start()
    opp = open_deal(intake_org, "Before")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "first deal")
    first.stop()

    missed = [open_deal(intake_org, f"Missed {i}") for i in range(5)]
    for opp_id in missed:
        intake_org.close_won(opp_id)
    # Retention passes: every event so far is gone and the stored replay id is refused.
    intake_org.expire_events_before(intake_org.events.last_replay_id + 1)

    with structlog.testing.capture_logs() as logs:
        second = harness()
        intake = second.start()
        wait_until(lambda: deal_count(session_factory) == 6, 10, "swept deals")
    assert intake.stats.replay_fallbacks == 1
    sources = deals_by_source(session_factory)
    assert {sources[o] for o in missed} == {"sweep"}
    warnings = {e["event"] for e in logs if e["log_level"] == "warning"}
    assert {"stream_replay_id_refused", "stream_replay_fallback_subscribed"} <= warnings
    # Streaming goes on after the fallback: the stream itself sees the next won deal.
    later = open_deal(intake_org, "Later")
    seen_before = intake.stats.won_ids
    intake_org.close_won(later)
    wait_until(lambda: intake.stats.won_ids > seen_before, 5, "the next deal on the stream")
    wait_until(lambda: later in deals_by_source(session_factory), 5, "the next deal enqueued")


def test_unknown_client_and_expired_session_mid_stream(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness()
    intake = h.start()
    a, b, c = (open_deal(intake_org, n) for n in ("A", "B", "C"))
    intake_org.close_won(a)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "deal A")

    intake_org.forget_clients()  # 403::Unknown client on the next connect
    intake_org.close_won(b)
    wait_until(lambda: deal_count(session_factory) == 2, 10, "deal B after 403::Unknown client")

    intake_org.expire_sessions()  # 401 on the stream and on REST
    intake_org.close_won(c)
    wait_until(lambda: deal_count(session_factory) == 3, 10, "deal C after the session expired")
    assert set(deals_by_source(session_factory)) == {a, b, c}
    # REST logs in again once and retries.
    assert h.crm is not None
    assert h.crm.won_among([a, b, c]) == {a, b, c}
    assert intake.stats.malformed == 0


def test_network_loss_reconnects_and_replays(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness()
    intake = h.start()
    opp = open_deal(intake_org, "Outage")
    intake_org.stop_stream()
    intake_org.close_won(opp)
    wait_until(lambda: intake.stats.restarts >= 1, 10, "a reconnect attempt")
    assert deal_count(session_factory) == 0
    intake_org.start_stream()
    wait_until(lambda: deal_count(session_factory) == 1, 10, "the deal after the outage")
    wait_until(lambda: intake.status.current.state == "connected", 5, "connected again")


def test_watchdog_restarts_a_silent_connection(
    intake_org: SalesforceSandbox, session_factory, harness
):
    # The server answers long polls every second; a watchdog shorter than that sees silence.
    h = harness(options=fast_options(watchdog_seconds=0.3))
    intake = h.start()
    wait_until(lambda: intake.stats.restarts >= 1, 10, "a watchdog restart")
    opp = open_deal(intake_org, "Watched")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 10, "the deal despite restarts")


def test_same_deal_twice_and_on_two_channel_kinds_is_enqueued_once(
    intake_org: SalesforceSandbox, session_factory, harness
):
    event_channel = intake_org.define_platform_event("Deal_Won")
    topic_channel = intake_org.define_push_topic(
        "WonDeals", "SELECT Id, StageName, IsWon FROM Opportunity WHERE IsWon = true"
    )
    cdc, pe, topic = harness(), harness(channel=event_channel), harness(channel=topic_channel)
    for h in (cdc, pe, topic):
        h.start()
    opp = open_deal(intake_org, "Twice")
    intake_org.close_won(opp)
    wait_until(lambda: opp in cdc.enqueued_at or opp in pe.enqueued_at or opp in topic.enqueued_at)
    # The very same CDC event again, as a re-delivery after a re-handshake would bring it.
    original = next(
        e
        for e in intake_org.events.retained(CDC_CHANNEL)
        if opp in str(e.message) and "Closed Won" in str(e.message)
    )
    data = dict(original.message["data"])
    data.pop("event", None)
    intake_org.emit(CDC_CHANNEL, data)
    for h in (cdc, pe, topic):
        assert h.intake is not None
        intake = h.intake
        wait_until(lambda intake=intake: intake.stats.won_ids >= 1, 5, f"{h.channel} saw it")
    wait_until(lambda: cdc.intake is not None and cdc.intake.stats.won_ids >= 2, 5, "the repeat")
    assert deal_count(session_factory) == 1
    assert sum(h.intake.stats.enqueued for h in (cdc, pe, topic) if h.intake) == 1


def test_malformed_events_are_logged_counted_and_skipped(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness()
    intake = h.start()
    won = open_deal(intake_org, "Good")
    header = {
        "entityName": "Opportunity",
        "changeType": "UPDATE",
        "changedFields": ["StageName"],
        "commitTimestamp": int(time.time() * 1000),
    }
    bad_payloads = [
        {"payload": {"StageName": "Closed Won"}},  # no header
        {"payload": {"ChangeEventHeader": {**header, "recordIds": "0068d0000000001AAA"}}},
        {
            "payload": {
                "ChangeEventHeader": {**header, "recordIds": ["' OR Id != '"]},
                "StageName": "Closed Won",
            }
        },
        {"payload": {"ChangeEventHeader": {**header, "recordIds": [42]}, "StageName": 7}},
        {"payload": "not an object"},
        {"schema": "x"},
    ]
    with structlog.testing.capture_logs() as logs:
        for payload in bad_payloads:
            intake_org.emit(CDC_CHANNEL, payload)
        intake_org.close_won(won)
        wait_until(lambda: deal_count(session_factory) == 1, 5, "the good deal")
        wait_until(lambda: intake.stats.malformed == len(bad_payloads), 5, "malformed counted")
    # One deal, whoever saw it first: the sweep the malformed events asked for may run
    # between the click and the stream's event.
    assert set(deals_by_source(session_factory)) == {won}
    assert intake.status.current.state == "connected"
    assert intake.stats.restarts == 0
    malformed_logs = [e for e in logs if e["event"] == "stream_event_malformed"]
    assert len(malformed_logs) == len(bad_payloads)
    assert all(e["log_level"] == "warning" for e in malformed_logs)
    # Each malformed event asked for a sweep, which ran.
    wait_until(lambda: intake.sweeper.runs >= 2, 5, "the requested sweep")


def test_gap_events_are_re_read_by_id(intake_org: SalesforceSandbox, session_factory, harness):
    h = harness()
    intake = h.start()
    won, still_open = open_deal(intake_org, "Won"), open_deal(intake_org, "Open")
    intake_org.update_opportunity(won, StageName="Closed Won")
    wait_until(lambda: deal_count(session_factory) == 1, 5, "the won deal")
    intake_org.emit_gap([won, still_open])
    wait_until(lambda: intake.stats.rechecked == 2, 5, "the gap event")
    assert set(deals_by_source(session_factory)) == {won}


def test_client_credentials_flow(intake_org: SalesforceSandbox, session_factory, harness):
    h = harness(flow="client_credentials")
    h.start()
    opp = open_deal(intake_org, "Machine")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "deal via client-credentials login")
