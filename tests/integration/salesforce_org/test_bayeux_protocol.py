"""The CometD endpoint at the message level: the shapes Salesforce sends, checked with plain
HTTP so that nothing in a client library hides them."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from tests.integration.salesforce_org.clients import oauth_login


class Bayeux:
    """A minimal long-polling Bayeux client over requests."""

    def __init__(self, org: SalesforceSandbox, version: str = "45.0") -> None:
        self.http = requests.Session()
        self.url = f"{org.url}/cometd/{version}"
        self.token = oauth_login(org, self.http)["access_token"]
        self.client_id: str | None = None
        self.next_id = 0

    def send(self, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        for message in messages:
            self.next_id += 1
            message.setdefault("id", str(self.next_id))
            if self.client_id and message["channel"] != "/meta/handshake":
                message.setdefault("clientId", self.client_id)
        response = self.http.post(
            self.url, json=list(messages), headers={"Authorization": f"Bearer {self.token}"}
        )
        assert response.status_code == 200, response.text
        return list(response.json())

    def handshake(self) -> dict[str, Any]:
        [reply] = self.send(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
            }
        )
        self.client_id = reply.get("clientId")
        return reply

    def connect(self) -> list[dict[str, Any]]:
        return self.send({"channel": "/meta/connect", "connectionType": "long-polling"})

    def subscribe(self, channel: str, replay_id: int | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"channel": "/meta/subscribe", "subscription": channel}
        if replay_id is not None:
            message["ext"] = {"replay": {channel: replay_id}}
        [reply] = self.send(message)
        return reply


@pytest.fixture
def quick_org() -> Iterator[SalesforceSandbox]:
    """Long polls of half a second, so idle connects come back quickly."""
    with SalesforceSandbox(long_poll_seconds=0.5, client_timeout_seconds=30) as org:
        yield org


def test_handshake_first_connect_and_subscribe_replies() -> None:
    with SalesforceSandbox(long_poll_seconds=6) as org:
        _check_handshake_first_connect_and_subscribe(Bayeux(org))


def _check_handshake_first_connect_and_subscribe(client: Bayeux) -> None:
    handshake = client.handshake()
    assert handshake["successful"] is True
    assert handshake["channel"] == "/meta/handshake"
    assert handshake["supportedConnectionTypes"] == ["long-polling"]
    assert handshake["version"] == "1.0"
    assert handshake["ext"]["replay"] is True
    assert handshake["advice"] == {"interval": 0, "timeout": 6000, "reconnect": "retry"}
    assert len(handshake["clientId"]) > 20

    started = time.monotonic()
    [first_connect] = client.connect()
    assert time.monotonic() - started < 3, "the first connect is answered at once, not held"
    assert first_connect["successful"] is True
    assert first_connect["advice"]["reconnect"] == "retry"

    reply = client.subscribe(CDC_CHANNEL, -1)
    assert reply == {
        "clientId": client.client_id,
        "channel": "/meta/subscribe",
        "id": reply["id"],
        "subscription": CDC_CHANNEL,
        "successful": True,
    }


def test_an_idle_connect_is_held_for_the_long_poll_then_answered_empty(
    quick_org: SalesforceSandbox,
) -> None:
    client = Bayeux(quick_org)
    client.handshake()
    client.connect()
    started = time.monotonic()
    assert [m["channel"] for m in client.connect()] == ["/meta/connect"]
    assert time.monotonic() - started >= 0.45


def test_events_come_with_the_connect_reply_in_replay_order(quick_org: SalesforceSandbox) -> None:
    quick_org.create_product("PLAN", "Plan")
    account = quick_org.create_account("Acme")
    ids = [quick_org.create_opportunity(account, f"Deal {i}", []) for i in range(3)]
    client = Bayeux(quick_org)
    client.handshake()
    client.connect()
    assert client.subscribe(CDC_CHANNEL, -2)["successful"] is True
    replies = client.connect()
    events, connect = replies[:-1], replies[-1]
    assert connect["channel"] == "/meta/connect"
    assert [e["data"]["payload"]["ChangeEventHeader"]["recordIds"][0] for e in events] == ids
    replay_ids = [e["data"]["event"]["replayId"] for e in events]
    assert replay_ids == sorted(replay_ids)
    assert any(b - a > 1 for a, b in itertools.pairwise(replay_ids)), (
        "replay ids are not contiguous"
    )


def test_errors_have_salesforce_shapes(quick_org: SalesforceSandbox) -> None:
    client = Bayeux(quick_org)
    client.handshake()
    refused = client.subscribe(CDC_CHANNEL, 5)
    assert refused["successful"] is False
    assert refused["error"].startswith("400::The replayId {5} you provided was invalid.")
    assert refused["subscription"] == CDC_CHANNEL

    quick_org.forget_clients()
    [unknown] = client.connect()
    assert unknown["error"] == "403::Unknown client"
    assert unknown["advice"] == {"interval": 0, "reconnect": "handshake"}
    assert unknown["successful"] is False

    quick_org.expire_sessions()
    [denied] = client.send(
        {
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        }
    )
    assert denied["error"] == "403::Handshake denied"
    assert denied["ext"] == {"sfdc": {"failureReason": "401::Authentication invalid"}}
    assert denied["advice"] == {"reconnect": "none"}


def test_expired_session_ends_a_pending_connect_with_401(quick_org: SalesforceSandbox) -> None:
    client = Bayeux(quick_org)
    client.handshake()
    client.connect()
    quick_org.expire_sessions()
    [reply] = client.connect()
    assert reply["error"] == "401::Authentication invalid"
    assert reply["advice"] == {"reconnect": "none", "interval": 0}


def test_stopped_stream_answers_503_and_forgets_clients(quick_org: SalesforceSandbox) -> None:
    client = Bayeux(quick_org)
    client.handshake()
    quick_org.stop_stream()
    response = client.http.post(client.url, json=[{"channel": "/meta/connect"}])
    assert response.status_code == 503
    quick_org.start_stream()
    [reply] = client.connect()
    assert reply["error"] == "403::Unknown client"


def test_a_client_that_stops_reconnecting_is_dropped() -> None:
    with SalesforceSandbox(long_poll_seconds=0.5, client_timeout_seconds=0.2) as org:
        client = Bayeux(org)
        client.handshake()
        client.connect()
        assert org.stream_clients() == 1
        deadline = time.monotonic() + 5
        while org.stream_clients() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert org.stream_clients() == 0
        [reply] = client.connect()
        assert reply["error"] == "403::Unknown client"


def test_a_restarted_org_keeps_its_address_and_data_but_not_its_clients() -> None:
    org = SalesforceSandbox(long_poll_seconds=0.5)
    with org:
        url = org.url
        account = org.create_account("Acme")
        client = Bayeux(org)
        client.handshake()
    with org:
        assert org.url == url
        assert org.store.get("Account", account) is not None
        client.token = oauth_login(org, client.http)["access_token"]
        [reply] = client.connect()
        assert reply["error"] == "403::Unknown client"


def test_a_port_in_use_fails_start_cleanly() -> None:
    with SalesforceSandbox() as running:
        taken = SalesforceSandbox(port=running.port)
        with pytest.raises(OSError, match="address already in use"):
            taken.start()
        taken.stop()  # nothing to stop: no error
        with pytest.raises(RuntimeError):
            _ = taken.url
