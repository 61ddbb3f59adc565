"""The sandbox org's Pub/Sub API, spoken to with the generated gRPC stubs: authentication
metadata, replay presets and refused replay ids, flow control, keepalives, schemas by id."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from sf_bridge.intake.pubsub.proto import pubsub_api_pb2 as pb
from sf_bridge.intake.pubsub.proto import pubsub_api_pb2_grpc as pb_grpc
from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from sf_bridge.sandbox.salesforce_org.pubsub.server import decode_replay_id, encode_replay_id

AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
REPLAY_ERROR = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"


@pytest.fixture
def org() -> Iterator[SalesforceSandbox]:
    with SalesforceSandbox(port=0, long_poll_seconds=0.3) as sandbox:
        sandbox.create_product("PRO-M", "Pro", unit_price=100)
        yield sandbox


def metadata(org: SalesforceSandbox, token: str | None = None) -> tuple[tuple[str, str], ...]:
    return (
        ("accesstoken", token or org.sessions.issue()),
        ("instanceurl", org.url),
        ("tenantid", org.org_id),
    )


def deal(org: SalesforceSandbox, name: str) -> str:
    account = org.create_account(f"{name} Inc")
    return org.create_opportunity(account, name, [{"product_code": "PRO-M", "quantity": 1}])


class Client:
    def __init__(self, org: SalesforceSandbox, md: tuple[tuple[str, str], ...] | None = None):
        self.channel = grpc.aio.insecure_channel(org.pubsub_endpoint.removeprefix("http://"))
        self.stub = pb_grpc.PubSubStub(self.channel)
        self.metadata = md or metadata(org)

    async def subscribe(self, **first: Any) -> Any:
        call = self.stub.Subscribe(metadata=self.metadata)
        request = pb.FetchRequest(topic_name=first.pop("topic", CDC_CHANNEL), **first)
        with contextlib.suppress(grpc.aio.AioRpcError):  # refused at once: `read` says why
            await call.write(request)
        return call

    async def events(self, call: Any, count: int, timeout: float = 5.0) -> list[Any]:
        found: list[Any] = []
        while len(found) < count:
            response = await asyncio.wait_for(call.read(), timeout)
            found.extend(response.events)
        return found

    async def schema(self, schema_id: str) -> dict[str, Any]:
        info = await self.stub.GetSchema(
            pb.SchemaRequest(schema_id=schema_id), metadata=self.metadata
        )
        return json.loads(info.schema_json)

    async def close(self) -> None:
        await self.channel.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _error(call: Any) -> grpc.aio.AioRpcError:
    """The error that ends `call` (reading past its keepalives); fails if it ends cleanly."""
    while True:
        try:
            response = await asyncio.wait_for(call.read(), 5)
        except grpc.aio.AioRpcError as exc:
            return exc
        assert response is not grpc.aio.EOF, "the call ended without an error"


def _error_code(exc: grpc.aio.AioRpcError) -> str | None:
    return dict(exc.trailing_metadata() or ()).get("error-code")


def test_a_call_without_a_live_session_is_refused_with_the_auth_error_code(org):
    async def scenario() -> None:
        for md in (
            metadata(org, token="00D!not-a-session"),
            (("accesstoken", org.sessions.issue()), ("instanceurl", org.url)),  # no tenant
        ):
            client = Client(org, md)
            exc = await _error(await client.subscribe(num_requested=1))
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _error_code(exc) == AUTH_ERROR
            await client.close()

    run(scenario())


def test_earliest_replays_retained_events_as_avro_with_bitmaps(org):
    opp = deal(org, "Replayed")
    org.close_won(opp)

    async def scenario() -> None:
        client = Client(org)
        call = await client.subscribe(replay_preset=pb.EARLIEST, num_requested=10)
        created, closed = await client.events(call, 2)
        schema = await client.schema(closed.event.schema_id)
        assert schema["fields"][0]["name"] == "ChangeEventHeader"
        from sf_bridge.intake.pubsub.decoding import SchemaCache, decode_record

        decoded = decode_record(
            SchemaCache().add(closed.event.schema_id, json.dumps(schema)),
            closed.event.payload,
        )
        header = decoded["ChangeEventHeader"]
        assert header["changeType"] == "UPDATE"
        assert header["recordIds"] == [opp]
        assert all(f.startswith("0x") for f in header["changedFields"])
        assert decoded["StageName"] == "Closed Won"
        assert decoded["IsWon"] is True
        assert decoded["Name"] is None  # unchanged fields are null
        assert decode_replay_id(created.replay_id) < decode_replay_id(closed.replay_id)
        call.cancel()
        await client.close()

    run(scenario())


def test_a_replay_id_past_retention_or_never_issued_is_refused(org):
    org.close_won(deal(org, "Old"))
    expired = org.events.last_replay_id
    org.expire_events_before(expired + 1)

    async def scenario() -> None:
        client = Client(org)
        for replay_id in (encode_replay_id(expired - 1), b"\x01\x02", encode_replay_id(10**12)):
            call = await client.subscribe(
                replay_preset=pb.CUSTOM, replay_id=replay_id, num_requested=1
            )
            exc = await _error(call)
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _error_code(exc) == REPLAY_ERROR
        await client.close()

    run(scenario())


def test_events_come_only_as_fast_as_they_are_asked_for(org):
    for i in range(5):
        org.close_won(deal(org, f"Flow {i}"))  # 10 events: creations and closings

    async def scenario() -> None:
        client = Client(org)
        call = await client.subscribe(replay_preset=pb.EARLIEST, num_requested=3)
        first = await client.events(call, 3)
        assert len(first) == 3
        # Nothing more until more are asked for: only keepalives, owing nothing.
        keepalive = await asyncio.wait_for(call.read(), 5)
        assert list(keepalive.events) == []
        assert keepalive.pending_num_requested == 0
        await call.write(pb.FetchRequest(num_requested=7))
        rest = await client.events(call, 7)
        ids = [decode_replay_id(e.replay_id) for e in first + rest]
        assert ids == sorted(ids)
        assert len(set(ids)) == 10
        call.cancel()
        await client.close()

    run(scenario())


def test_keepalives_carry_the_latest_replay_id_and_live_events_follow(org):
    async def scenario() -> None:
        client = Client(org)
        call = await client.subscribe(replay_preset=pb.LATEST, num_requested=5)
        await asyncio.wait_for(call.initial_metadata(), 5)
        keepalive = await asyncio.wait_for(call.read(), 5)
        assert list(keepalive.events) == []
        assert decode_replay_id(keepalive.latest_replay_id) == org.events.last_replay_id
        assert keepalive.pending_num_requested == 5
        opp = await asyncio.to_thread(deal, org, "Live")
        [created] = await client.events(call, 1)
        assert decode_replay_id(created.replay_id) == org.events.last_replay_id
        await asyncio.to_thread(org.expire_sessions)
        exc = await _error(call)
        assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
        assert opp
        await client.close()

    run(scenario())


def test_a_new_field_gives_a_new_schema_id_and_push_topics_do_not_exist(org):
    opp = deal(org, "Schemas")

    async def scenario(topic: str | None = None) -> Any:
        client = Client(org)
        call = await client.subscribe(
            topic=topic or CDC_CHANNEL, replay_preset=pb.EARLIEST, num_requested=50
        )
        if topic is not None:
            exc = await _error(call)
            await client.close()
            return exc
        events = await client.events(call, len(org.events.retained(CDC_CHANNEL)))
        call.cancel()
        unknown = None
        try:
            await client.schema("no-such-schema")
        except grpc.aio.AioRpcError as error:
            unknown = error.code()
        await client.close()
        return events[-1].event.schema_id, unknown

    before, unknown = run(scenario())
    assert unknown == grpc.StatusCode.NOT_FOUND
    org.define_field("Opportunity", "Region__c")
    org.update_opportunity(opp, Region__c="EMEA")
    after, _ = run(scenario())
    assert after != before
    topic = org.define_push_topic("Won", "SELECT Id, StageName FROM Opportunity")
    assert run(scenario(topic)).code() == grpc.StatusCode.INVALID_ARGUMENT
