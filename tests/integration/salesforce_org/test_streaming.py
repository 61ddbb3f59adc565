"""The streaming endpoint of the sandbox org through the real aiosfstream-ng client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosfstream_ng import ReplayMarker, ReplayMarkerStoragePolicy, ReplayOption
from aiosfstream_ng.exceptions import ReplayError, ServerError

from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from tests.integration.salesforce_org.clients import StreamClient, stream_client
from tests.integration.salesforce_org.conftest import Deal, make_deal

WAIT = 8.0  # seconds; events arrive in milliseconds, this only bounds a failing test


async def next_message(client: StreamClient) -> dict[str, Any]:
    return dict(await asyncio.wait_for(client.receive(), WAIT))


async def next_won_event(client: StreamClient) -> dict[str, Any]:
    """Skips change events that are not a won-stage transition (creations, write-backs)."""
    while True:
        message = await next_message(client)
        header = message["data"]["payload"]["ChangeEventHeader"]
        if "StageName" in header["changedFields"]:
            return message


async def test_close_won_reaches_a_cdc_subscriber_promptly(
    salesforce_org: SalesforceSandbox, deal: Deal
) -> None:
    async with stream_client(salesforce_org, ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(CDC_CHANNEL)
        # The first connect was answered at once; this one is a pending long poll (10 s).
        salesforce_org.close_won(deal.opportunity_id, Amount=1234.5)
        message = await next_message(client)

    assert message["channel"] == CDC_CHANNEL
    data = message["data"]
    assert isinstance(data["schema"], str)
    assert isinstance(data["event"]["replayId"], int)
    payload = data["payload"]
    header = payload["ChangeEventHeader"]
    assert header["entityName"] == "Opportunity"
    assert header["recordIds"] == [deal.opportunity_id]
    assert header["changeType"] == "UPDATE"
    assert {"StageName", "IsWon", "IsClosed", "LastModifiedDate", "Amount"} <= set(
        header["changedFields"]
    )
    for key in ("changeOrigin", "transactionKey", "sequenceNumber", "commitNumber", "commitUser"):
        assert key in header
    assert isinstance(header["commitTimestamp"], int)
    assert payload["StageName"] == "Closed Won"
    assert payload["IsWon"] is True
    assert payload["Amount"] == 1234.5
    assert payload["LastModifiedDate"].endswith("Z")
    assert "Name" not in payload  # only changed fields come with an UPDATE
    stored = salesforce_org.get_opportunity(deal.opportunity_id)
    assert stored["IsWon"] is True
    assert stored["IsClosed"] is True


async def test_replay_from_a_stored_id_delivers_only_later_events(
    salesforce_org: SalesforceSandbox,
) -> None:
    first, second, third = (make_deal(salesforce_org, n) for n in ("One", "Two", "Three"))
    salesforce_org.close_won(first.opportunity_id)
    async with stream_client(salesforce_org, ReplayOption.ALL_EVENTS) as client:
        await client.subscribe(CDC_CHANNEL)
        won = await next_won_event(client)
    stored_id = won["data"]["event"]["replayId"]
    salesforce_org.close_won(second.opportunity_id)
    salesforce_org.close_won(third.opportunity_id)

    storage = {CDC_CHANNEL: ReplayMarker(date="0", replay_id=stored_id)}
    async with stream_client(salesforce_org, storage) as client:
        await client.subscribe(CDC_CHANNEL)
        replayed = [await next_won_event(client), await next_won_event(client)]

    ids = [m["data"]["payload"]["ChangeEventHeader"]["recordIds"][0] for m in replayed]
    assert ids == [second.opportunity_id, third.opportunity_id]
    replay_ids = [m["data"]["event"]["replayId"] for m in replayed]
    assert stored_id < replay_ids[0] < replay_ids[1]
    # The client stored the newest marker as it received them (automatic policy).
    assert storage[CDC_CHANNEL].replay_id == replay_ids[1]


async def test_an_expired_replay_id_is_refused_and_a_fallback_replays_retained_events(
    salesforce_org: SalesforceSandbox,
) -> None:
    old, recent = make_deal(salesforce_org, "Old"), make_deal(salesforce_org, "Recent")
    salesforce_org.close_won(old.opportunity_id)
    stored_id = salesforce_org.events.last_replay_id
    salesforce_org.advance_clock(73 * 3600)  # past the 72 h retention window
    salesforce_org.close_won(recent.opportunity_id)

    storage = {CDC_CHANNEL: ReplayMarker(date="0", replay_id=stored_id)}
    async with stream_client(salesforce_org, storage) as client:
        with pytest.raises(ServerError) as refused:
            await client.subscribe(CDC_CHANNEL)
    assert refused.value.error_code == 400
    assert refused.value.error_message == (
        f"The replayId {{{stored_id}}} you provided was invalid. Please provide a valid ID, -2 "
        "to replay all events, or -1 to replay only new events."
    )

    async with stream_client(
        salesforce_org, storage, replay_fallback=ReplayOption.ALL_EVENTS
    ) as client:
        await client.subscribe(CDC_CHANNEL)
        event = await next_won_event(client)
    assert event["data"]["payload"]["ChangeEventHeader"]["recordIds"] == [recent.opportunity_id]


async def test_expire_events_before_refuses_older_ids(salesforce_org: SalesforceSandbox) -> None:
    deal = make_deal(salesforce_org)
    salesforce_org.close_won(deal.opportunity_id)
    newest = salesforce_org.events.last_replay_id
    salesforce_org.expire_events_before(newest)
    storage = {CDC_CHANNEL: ReplayMarker(date="0", replay_id=newest - 1)}
    async with stream_client(salesforce_org, storage) as client:
        with pytest.raises(ServerError):
            await client.subscribe(CDC_CHANNEL)
    # An id the org never issued (another org's) is refused too.
    storage = {CDC_CHANNEL: ReplayMarker(date="0", replay_id=newest + 99)}
    async with stream_client(salesforce_org, storage) as client:
        with pytest.raises(ServerError):
            await client.subscribe(CDC_CHANNEL)


async def test_unknown_client_rehandshakes_and_resubscribes_without_loss(
    salesforce_org: SalesforceSandbox, deal: Deal
) -> None:
    storage: dict[str, ReplayMarker] = {}
    async with stream_client(salesforce_org, storage) as client:
        await client.subscribe(CDC_CHANNEL)
        salesforce_org.update_opportunity(deal.opportunity_id, NextStep="call the buyer")
        await next_message(client)  # a marker is stored: resubscription replays after it
        salesforce_org.forget_clients()
        salesforce_org.close_won(deal.opportunity_id)
        event = await next_won_event(client)

    assert event["data"]["payload"]["ChangeEventHeader"]["recordIds"] == [deal.opportunity_id]
    assert salesforce_org.calls["handshake"] == 2
    assert salesforce_org.calls["subscribe"] >= 2


async def test_expired_session_mid_stream_reauthenticates(
    salesforce_org: SalesforceSandbox, deal: Deal
) -> None:
    async with stream_client(salesforce_org, ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(CDC_CHANNEL)
        salesforce_org.expire_sessions()
        salesforce_org.close_won(deal.opportunity_id)
        event = await next_won_event(client)
    assert event["data"]["payload"]["StageName"] == "Closed Won"
    assert salesforce_org.calls["auth"] == 2


async def test_stream_down_and_up_resumes_from_the_stored_replay_id(
    salesforce_org: SalesforceSandbox,
) -> None:
    first, second = make_deal(salesforce_org, "First"), make_deal(salesforce_org, "Second")
    storage: dict[str, ReplayMarker] = {}
    async with stream_client(salesforce_org, storage, connection_timeout=30) as client:
        await client.subscribe(CDC_CHANNEL)
        salesforce_org.close_won(first.opportunity_id)
        await next_won_event(client)
        salesforce_org.stop_stream()
        salesforce_org.close_won(second.opportunity_id)  # published while the stream is down
        salesforce_org.start_stream()
        event = await next_won_event(client)
    assert event["data"]["payload"]["ChangeEventHeader"]["recordIds"] == [second.opportunity_id]


async def test_subscribing_to_an_unknown_channel_fails(salesforce_org: SalesforceSandbox) -> None:
    async with stream_client(salesforce_org, ReplayOption.NEW_EVENTS) as client:
        with pytest.raises(ServerError) as failure:
            await client.subscribe("/topic/NoSuchTopic")
    assert failure.value.error_code == 400


async def test_push_topic_events_follow_notify_for_fields_referenced(
    salesforce_org: SalesforceSandbox, deal: Deal
) -> None:
    channel = salesforce_org.define_push_topic(
        "WonDeals", "SELECT Id, Name, StageName, Amount FROM Opportunity WHERE IsWon = true"
    )
    async with stream_client(salesforce_org, ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(channel)
        salesforce_org.close_won(deal.opportunity_id)
        salesforce_org.update_opportunity(deal.opportunity_id, NextStep="x")  # not referenced
        salesforce_org.update_opportunity(deal.opportunity_id, Name="Renamed")
        won, renamed = await next_message(client), await next_message(client)

    assert channel == "/topic/WonDeals"
    assert won["channel"] == channel
    assert won["data"]["event"]["type"] == "updated"
    assert won["data"]["event"]["createdDate"].endswith("Z")
    assert isinstance(won["data"]["event"]["replayId"], int)
    assert won["data"]["sobject"] == {
        "Id": deal.opportunity_id,
        "Name": "Acme - new business",
        "StageName": "Closed Won",
        "Amount": 910.0,
    }
    assert renamed["data"]["sobject"]["Name"] == "Renamed"


async def test_platform_event_is_published_when_a_deal_is_won(
    salesforce_org: SalesforceSandbox, deal: Deal
) -> None:
    channel = salesforce_org.define_platform_event("Deal_Won__e")
    async with stream_client(salesforce_org, ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(channel)
        salesforce_org.close_won(deal.opportunity_id)
        message = await next_message(client)
    assert message["channel"] == "/event/Deal_Won__e"
    payload = message["data"]["payload"]
    assert payload["Opportunity_Id__c"] == deal.opportunity_id
    assert payload["CreatedById"] == salesforce_org.user_id
    assert payload["CreatedDate"].endswith("Z")
    assert isinstance(message["data"]["schema"], str)
    assert isinstance(message["data"]["event"]["replayId"], int)


async def test_gap_events_carry_ids_but_no_values(
    salesforce_org: SalesforceSandbox, deal: Deal
) -> None:
    async with stream_client(salesforce_org, ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(CDC_CHANNEL)
        replay_id = salesforce_org.emit_gap([deal.opportunity_id])
        message = await next_message(client)
    payload = message["data"]["payload"]
    assert set(payload) == {"ChangeEventHeader"}
    assert payload["ChangeEventHeader"]["changeType"] == "GAP_UPDATE"
    assert payload["ChangeEventHeader"]["recordIds"] == [deal.opportunity_id]
    assert message["data"]["event"]["replayId"] == replay_id


async def test_raw_event_without_a_creation_date_trips_the_client_replay_storage(
    salesforce_org: SalesforceSandbox,
) -> None:
    async with stream_client(
        salesforce_org,
        {},
        replay_storage_policy=ReplayMarkerStoragePolicy.MANUAL,
    ) as manual:
        await manual.subscribe(CDC_CHANNEL)
        replay_id = salesforce_org.emit(CDC_CHANNEL, {"payload": {"Opportunity_Id": 42}})
        raw = await next_message(manual)
    assert raw["data"] == {"payload": {"Opportunity_Id": 42}, "event": {"replayId": replay_id}}

    async with stream_client(salesforce_org, {}) as automatic:
        await automatic.subscribe(CDC_CHANNEL)
        salesforce_org.emit(CDC_CHANNEL, {"payload": {}})
        with pytest.raises(ReplayError):
            await next_message(automatic)


async def test_a_mass_update_shares_one_cdc_event_across_records(
    salesforce_org: SalesforceSandbox,
) -> None:
    deals = [make_deal(salesforce_org, n).opportunity_id for n in ("A", "B", "C")]
    salesforce_org.define_platform_event("Deal_Won__e")
    async with stream_client(salesforce_org, ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(CDC_CHANNEL)
        await client.subscribe("/event/Deal_Won__e")
        salesforce_org.close_won_together(deals)
        messages = [await next_message(client) for _ in range(4)]
    [cdc] = [m for m in messages if m["channel"] == CDC_CHANNEL]
    assert cdc["data"]["payload"]["ChangeEventHeader"]["recordIds"] == deals
    assert cdc["data"]["payload"]["StageName"] == "Closed Won"
    platform = [m["data"]["payload"]["Opportunity_Id__c"] for m in messages if m is not cdc]
    assert sorted(platform) == sorted(deals)
