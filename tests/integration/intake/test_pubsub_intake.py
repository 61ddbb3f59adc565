"""The Pub/Sub API transport against the sandbox org's gRPC server: the same guarantees as the
CometD stream (every won deal enqueued once, replay ids committed after the enqueue, recovery
from refused replay ids, expired sessions and outages), plus flow control and cached schemas."""

from __future__ import annotations

import time

import pytest
import structlog
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.intake.pubsub.replay import load_pubsub_marker
from sf_bridge.intake.replay import load_marker
from sf_bridge.intake.service import StreamIntake
from sf_bridge.intake.status import read_stream_status
from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from sf_bridge.sandbox.salesforce_org.pubsub.server import decode_replay_id
from tests.integration.intake.conftest import (
    credentials_for,
    deal_count,
    deals_by_source,
    fast_options,
    open_deal,
    wait_until,
)


def stored_replay_id(
    session_factory: sessionmaker[Session], topic: str = CDC_CHANNEL
) -> int | None:
    with session_factory() as session:
        raw = load_pubsub_marker(session, topic)
    return decode_replay_id(raw) if raw is not None else None


def test_closed_deal_is_enqueued_once_and_its_replay_id_committed_as_bytes(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness(transport="pubsub")
    intake = h.start()
    opp = open_deal(intake_org, "Acme")
    closed_at = time.monotonic()
    intake_org.close_won(opp)
    wait_until(lambda: opp in h.enqueued_at, 5, "the deal enqueued")
    delay = h.enqueued_at[opp] - closed_at
    assert delay < 3.0, f"close to enqueued took {delay:.3f} s"
    assert deals_by_source(session_factory) == {opp: "stream"}
    last = intake_org.events.last_replay_id
    wait_until(lambda: stored_replay_id(session_factory) == last, 5, "replay id committed")
    with session_factory() as session:
        assert load_marker(session, CDC_CHANNEL) is None  # CometD's marker is untouched
        status = read_stream_status(session, CDC_CHANNEL)
    assert status is not None
    assert status.healthy
    assert intake.stats.malformed == 0


def test_an_open_deal_and_an_unrelated_update_enqueue_nothing(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness(transport="pubsub")
    intake = h.start()
    opp = open_deal(intake_org, "Still open")
    intake_org.update_opportunity(opp, Description="talked to procurement")
    wait_until(lambda: intake.stats.events >= 2, 5, "the create and update events")
    assert deal_count(session_factory) == 0
    assert intake.stats.malformed == 0


def test_platform_event_topic(intake_org: SalesforceSandbox, session_factory, harness):
    channel = intake_org.define_platform_event("Deal_Won__e")
    h = harness(transport="pubsub", channel=channel)
    h.start()
    opp = open_deal(intake_org, "Evented")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "the deal from the platform event")
    assert deals_by_source(session_factory) == {opp: "stream"}
    last = intake_org.events.retained(channel)[-1].replay_id
    wait_until(lambda: stored_replay_id(session_factory, channel) == last, 5, "replay id")


def test_a_restart_resumes_after_the_stored_replay_id(
    intake_org: SalesforceSandbox, session_factory, harness
):
    first = harness(transport="pubsub")
    first.start()
    opp = open_deal(intake_org, "Before")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "first deal")
    first.stop()
    assert stored_replay_id(session_factory) is not None

    missed = [open_deal(intake_org, f"Missed {i}") for i in range(10)]
    for opp_id in missed:
        intake_org.close_won(opp_id)
    second = harness(transport="pubsub")
    intake = second.start()
    wait_until(lambda: deal_count(session_factory) == 11, 10, "the ten deals closed meanwhile")
    wait_until(lambda: intake.stats.won_ids >= 10, 5, "replayed events")
    assert intake.stats.replay_fallbacks == 0
    assert intake_org.pubsub.subscribe_calls == 2


def test_refused_replay_id_falls_back_to_earliest_and_sweeps(
    intake_org: SalesforceSandbox, session_factory, harness
):
    first = harness(transport="pubsub")
    first.start()
    opp = open_deal(intake_org, "Before")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "first deal")
    first.stop()
    missed = [open_deal(intake_org, f"Missed {i}") for i in range(5)]
    for opp_id in missed:
        intake_org.close_won(opp_id)
    intake_org.expire_events_before(intake_org.events.last_replay_id + 1)

    with structlog.testing.capture_logs() as logs:
        second = harness(transport="pubsub")
        intake = second.start()
        wait_until(lambda: deal_count(session_factory) == 6, 10, "swept deals")
    assert intake.stats.replay_fallbacks == 1
    sources = deals_by_source(session_factory)
    assert {sources[o] for o in missed} == {"sweep"}
    assert "stream_replay_id_refused" in {e["event"] for e in logs if e["log_level"] == "warning"}
    later = open_deal(intake_org, "Later")
    seen = intake.stats.won_ids
    intake_org.close_won(later)
    wait_until(lambda: intake.stats.won_ids > seen, 5, "the next deal on the stream")
    wait_until(lambda: later in deals_by_source(session_factory), 5, "the next deal enqueued")


def test_expired_session_mid_stream_logs_in_again(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness(transport="pubsub")
    intake = h.start()
    a, b = open_deal(intake_org, "A"), open_deal(intake_org, "B")
    intake_org.close_won(a)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "deal A")
    with structlog.testing.capture_logs() as logs:
        intake_org.expire_sessions()  # UNAUTHENTICATED on the open subscription
        intake_org.close_won(b)
        wait_until(lambda: deal_count(session_factory) == 2, 10, "deal B after the expiry")
    assert intake.stats.sessions >= 2
    reasons = " ".join(str(e.get("reason")) for e in logs if e["event"] == "stream_restart")
    assert "UNAUTHENTICATED" in reasons
    assert "sfdc.platform.eventbus.grpc.service.auth.error" in reasons


def test_outage_reconnects_with_backoff_and_replays(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness(transport="pubsub")
    intake = h.start()
    opp = open_deal(intake_org, "Outage")
    intake_org.stop_stream()  # UNAVAILABLE
    intake_org.close_won(opp)
    wait_until(lambda: intake.stats.restarts >= 2, 10, "reconnect attempts")
    assert deal_count(session_factory) == 0
    intake_org.start_stream()
    wait_until(lambda: deal_count(session_factory) == 1, 10, "the deal after the outage")
    wait_until(lambda: intake.status.current.state == "connected", 5, "connected again")


def test_watchdog_restarts_a_silent_subscription(
    intake_org: SalesforceSandbox, session_factory, harness
):
    # Keepalives come every second; a shorter watchdog sees silence.
    h = harness(transport="pubsub", options=fast_options(pubsub_watchdog_seconds=0.3))
    intake = h.start()
    wait_until(lambda: intake.stats.restarts >= 1, 10, "a watchdog restart")
    opp = open_deal(intake_org, "Watched")
    intake_org.close_won(opp)
    wait_until(lambda: deal_count(session_factory) == 1, 10, "the deal despite restarts")


def test_flow_control_asks_for_bounded_batches_and_schemas_are_fetched_once(
    intake_org: SalesforceSandbox, session_factory, harness
):
    first = harness(transport="pubsub")
    first.start()
    warm = open_deal(intake_org, "Warm")
    intake_org.close_won(warm)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "first deal")
    first.stop()
    deals = [open_deal(intake_org, f"Batch {i}") for i in range(12)]
    for opp_id in deals:
        intake_org.close_won(opp_id)

    before = len(intake_org.pubsub.fetch_requests)
    h = harness(transport="pubsub", options=fast_options(pubsub_batch=3))
    intake = h.start()
    wait_until(lambda: deal_count(session_factory) == 13, 10, "every deal")
    # 12 creations and 12 closings replayed by the stream itself (the start sweep may be first)
    wait_until(lambda: intake.stats.events >= 24, 10, "every event replayed")
    assert intake.pubsub is not None
    requested = intake_org.pubsub.fetch_requests[before:]
    assert len(requested) >= 8
    assert max(requested) <= 3
    assert intake.pubsub.max_outstanding <= 3
    assert intake.pubsub.schemas.fetches == 1  # one schema for every change event


def test_push_topics_do_not_exist_on_pub_sub(intake_org: SalesforceSandbox, session_factory):
    channel = intake_org.define_push_topic("Won", "SELECT Id, StageName FROM Opportunity")
    with pytest.raises(ValueError, match="no PushTopics"):
        StreamIntake(
            channel=channel,
            credentials=credentials_for(intake_org),
            api_version="62.0",
            session_factory=session_factory,
            crm=None,  # type: ignore[arg-type]
            enqueue=lambda s, ids, source: [],
            transport="pubsub",
        )


def test_a_quiet_topic_commits_the_keepalives_latest_replay_id(
    intake_org: SalesforceSandbox, session_factory, harness
):
    # Events on another topic move the org's replay ids on; the CDC topic stays quiet.
    channel = intake_org.define_platform_event("Other__e")
    for _ in range(3):
        intake_org.emit(channel, {"payload": {"Opportunity_Id__c": None}})
    h = harness(transport="pubsub")
    intake = h.start()
    assert intake.pubsub is not None
    transport = intake.pubsub
    wait_until(lambda: transport.keepalives >= 1, 5, "a keepalive")
    latest = intake_org.events.last_replay_id
    wait_until(lambda: stored_replay_id(session_factory) == latest, 5, "the latest id committed")
    assert intake.stats.events == 0
    # The stored id is one the server accepts: the next session resumes from it.
    h.stop()
    again = harness(transport="pubsub")
    resumed = again.start()
    opp = open_deal(intake_org, "After the quiet")
    intake_org.close_won(opp)
    wait_until(lambda: opp in deals_by_source(session_factory), 5, "the next deal")
    assert resumed.stats.replay_fallbacks == 0


def test_stream_gauges_report_the_pub_sub_stream_connected(
    intake_org: SalesforceSandbox, session_factory, harness
):
    from sf_bridge.alerts.gauges import condition_metrics
    from sf_bridge.db.models import utcnow

    h = harness(transport="pubsub")
    h.start()
    with session_factory() as session:
        families = {f.name: f for f in condition_metrics(session, utcnow())}
    [sample] = families["sf_bridge_stream_connected"].samples
    assert sample.labels == {"channel": CDC_CHANNEL}
    assert sample.value == 1


def test_only_the_lock_holder_subscribes_and_a_standby_takes_over(
    engine, intake_org: SalesforceSandbox, session_factory, harness
):
    from sf_bridge.db.engine import is_sqlite
    from sf_bridge.intake.leader import AdvisoryLock

    if is_sqlite(engine):
        pytest.skip("several replicas need PostgreSQL")
    leader = harness(transport="pubsub", leader_lock=AdvisoryLock(engine, "stream:cdc"))
    leader.start()
    standby = harness(transport="pubsub", leader_lock=AdvisoryLock(engine, "stream:cdc"))
    standby.start(wait_connected=False)
    assert standby.intake is not None
    standby_intake = standby.intake
    wait_until(lambda: standby_intake.status.current.state == "standby", 5, "standby")
    assert intake_org.pubsub.subscriptions() == 1
    leader.stop()
    later = open_deal(intake_org, "Later")
    intake_org.close_won(later)
    wait_until(lambda: standby_intake.status.current.state == "connected", 5, "takeover")
    wait_until(lambda: deal_count(session_factory) == 1, 5, "deal after the takeover")
    wait_until(lambda: intake_org.pubsub.subscriptions() == 1, 5, "one subscription")


def test_an_undecodable_event_is_counted_skipped_and_swept_and_the_stream_goes_on(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness(transport="pubsub")
    intake = h.start()
    sweeps = intake.sweeper.runs
    with structlog.testing.capture_logs() as logs:
        intake_org.emit(CDC_CHANNEL, {"payload": "not a change event"})  # no schema encodes it
        wait_until(lambda: intake.stats.malformed == 1, 5, "the event counted malformed")
    assert "pubsub_event_undecodable" in {e["event"] for e in logs}
    wait_until(lambda: intake.sweeper.runs > sweeps, 5, "the sweep it asked for")
    won = open_deal(intake_org, "After garbage")
    intake_org.close_won(won)
    wait_until(lambda: won in deals_by_source(session_factory), 5, "the next deal")
    assert intake.stats.restarts == 0


def test_a_stream_the_server_closes_is_resubscribed_from_the_stored_replay_id(
    intake_org: SalesforceSandbox, session_factory, harness
):
    h = harness(transport="pubsub")
    intake = h.start()
    first = open_deal(intake_org, "Before the close")
    intake_org.close_won(first)
    wait_until(lambda: deal_count(session_factory) == 1, 5, "the first deal")
    intake_org.close_pubsub_streams()
    wait_until(lambda: intake.stats.restarts >= 1, 5, "a resubscription")
    later = open_deal(intake_org, "After the close")
    intake_org.close_won(later)
    wait_until(lambda: later in deals_by_source(session_factory), 5, "the next deal")
    assert intake.stats.replay_fallbacks == 0
    assert intake_org.pubsub.subscribe_calls >= 2
