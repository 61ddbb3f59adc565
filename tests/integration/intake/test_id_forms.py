"""The stream and the sweep key a deal by the 18-character form of its Opportunity Id, whichever
form an event or a query carried: one deal per opportunity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.crm.port import InMemoryCrm
from sf_bridge.crm.soql import to_18
from sf_bridge.intake.sweep import Sweeper
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from sf_bridge.sandbox.salesforce_org.events import change_event_data
from tests.integration.intake.conftest import deals_by_source, open_deal, wait_until


def _won_event(record_id: str) -> dict[str, Any]:
    """An UPDATE change event naming the opportunity by `record_id`, as another org process
    (a flow, an integration) might publish it."""
    data = change_event_data(
        entity="Opportunity",
        record_ids=[record_id],
        change_type="UPDATE",
        changed_values={"StageName": "Closed Won", "IsWon": True},
        changed_fields=["StageName", "IsWon"],
        commit_time=datetime.now(UTC),
        commit_user="005000000000001AAA",
        commit_number=1,
        change_origin="com/salesforce/api/rest/62.0",
    )
    data.pop("event", None)
    return data


def test_the_stream_keys_a_15_character_id_by_its_18_character_form(
    intake_org: SalesforceSandbox, session_factory: sessionmaker[Session], harness: Any
) -> None:
    h = harness()
    intake = h.start()
    won = open_deal(intake_org, "Known")
    intake_org.close_won(won)
    wait_until(lambda: deals_by_source(session_factory) == {won: "stream"}, 5, "the won deal")
    seen = intake.stats.won_ids

    intake_org.emit(CDC_CHANNEL, _won_event(won[:15]))
    wait_until(lambda: intake.stats.won_ids > seen, 5, "the event with the 15-character id")
    assert deals_by_source(session_factory) == {won: "stream"}

    fresh = open_deal(intake_org, "Fresh")
    intake_org.emit(CDC_CHANNEL, _won_event(fresh[:15]))
    wait_until(lambda: fresh in deals_by_source(session_factory), 5, "the fresh deal")
    assert deals_by_source(session_factory) == {won: "stream", fresh: "stream"}
    assert to_18(fresh[:15]) == fresh


def test_the_sweep_keys_a_15_character_id_by_its_18_character_form(
    session_factory: sessionmaker[Session],
) -> None:
    done_15, missed_15 = "006Hs00001AcmeY", "006Hs00001BlueT"
    modified = "2026-11-20T15:04:05+00:00"
    crm = InMemoryCrm(
        opportunities={
            done_15: {"Id": done_15, "IsWon": True, "LastModifiedDate": modified},
            missed_15: {"Id": missed_15, "IsWon": True, "LastModifiedDate": modified},
        }
    )
    with session_factory() as session, session.begin():
        enqueue_opportunities(session, [to_18(done_15)], source="stream")
    sweeper = Sweeper(
        crm,
        session_factory,
        lambda session, ids: enqueue_opportunities(session, ids, source="sweep"),
        initial_lookback=timedelta(days=3650),
    )
    assert sweeper.run_once() == [to_18(missed_15)]
    assert deals_by_source(session_factory) == {
        to_18(done_15): "stream",
        to_18(missed_15): "sweep",
    }
