"""Choosing the intake transport: SF_TRANSPORT, or a scheme in SF_CHANNEL; CometD by default."""

from __future__ import annotations

import pytest

from sf_bridge.config import Settings, split_transport
from sf_bridge.settings_errors import SettingsInvalid

CDC = "/data/OpportunityChangeEvent"


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("SF_TRANSPORT", "SF_CHANNEL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_cometd_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    found = settings(monkeypatch)
    assert (found.stream_transport, found.stream_channel) == ("cometd", CDC)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SF_TRANSPORT": "pubsub"}, ("pubsub", CDC)),
        ({"SF_CHANNEL": f"pubsub:{CDC}"}, ("pubsub", CDC)),
        ({"SF_CHANNEL": "pubsub:/event/Deal_Won__e"}, ("pubsub", "/event/Deal_Won__e")),
        ({"SF_CHANNEL": "cometd:/topic/WonDeals"}, ("cometd", "/topic/WonDeals")),
        ({"SF_TRANSPORT": "pubsub", "SF_CHANNEL": f"pubsub:{CDC}"}, ("pubsub", CDC)),
    ],
)
def test_transport_from_the_variable_or_the_scheme(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: tuple[str, str]
) -> None:
    found = settings(monkeypatch, **env)
    assert (found.stream_transport, found.stream_channel) == expected


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"SF_TRANSPORT": "pubsub", "SF_CHANNEL": "/topic/WonDeals"}, "PushTopic"),
        ({"SF_CHANNEL": "pubsub:/topic/WonDeals"}, "PushTopic"),
        ({"SF_TRANSPORT": "cometd", "SF_CHANNEL": f"pubsub:{CDC}"}, "SF_TRANSPORT is cometd"),
        ({"SF_CHANNEL": "pubsub:/bogus"}, "not a streaming channel"),
        ({"SF_TRANSPORT": "grpc"}, "SF_TRANSPORT"),
    ],
)
def test_impossible_combinations_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], words: str
) -> None:
    with pytest.raises(SettingsInvalid) as raised:
        settings(monkeypatch, **env)
    assert words in str(raised.value)


def test_split_transport_leaves_other_text_alone() -> None:
    assert split_transport(CDC) == (None, CDC)
    assert split_transport("PubSub:/event/X__e") == ("pubsub", "/event/X__e")
    assert split_transport("mqtt:/data/X") == (None, "mqtt:/data/X")
