"""Ops users from SF_BRIDGE_OPS_USERS and the signed session cookie."""

from __future__ import annotations

import pytest

from sf_bridge.console.sessions import ConsoleSession, SessionSigner, cookie_is_secure
from sf_bridge.console.users import OpsUsers, hash_secret
from sf_bridge.errors import ConfigurationError


def test_users_sign_in_with_clear_or_hashed_secrets() -> None:
    hashed = hash_secret("bob-secret", iterations=1000)
    users = OpsUsers.parse(f" alice:alice-secret , bob:{hashed}")
    assert users.authenticate("alice", "alice-secret")
    assert users.authenticate("bob", "bob-secret")
    assert not users.authenticate("alice", "bob-secret")
    assert not users.authenticate("bob", hashed)  # the hash itself is no password
    assert not users.authenticate("mallory", "alice-secret")
    assert not users.authenticate("", "")
    assert "alice" in users
    assert "mallory" not in users


def test_a_secret_may_hold_colons_and_no_user_means_the_console_is_off() -> None:
    assert OpsUsers.parse("alice:a:b:c").authenticate("alice", "a:b:c")
    assert not OpsUsers.parse("")
    assert not OpsUsers.parse(None)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("alice", "entry 1 is not `name:secret`"),
        ("alice:x,:y", "entry 2 is not `name:secret`"),
        ("alice:x,alice:y", "'alice' is listed twice"),
        ("alice:pbkdf2_sha256$notanumber$x$y", "hashed secret of ops user 'alice' is malformed"),
    ],
)
def test_malformed_users_are_refused_without_echoing_a_secret(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        OpsUsers.parse(text)
    message = info.value.user_message()
    assert says in message
    for secret in ("x", "y", "notanumber"):
        assert f":{secret}" not in message


def test_session_cookie_round_trips_and_refuses_tampering_and_age() -> None:
    signer = SessionSigner("s" * 40)
    session = ConsoleSession.new("alice")
    cookie = signer.dumps(session)
    assert signer.loads(cookie) == session
    payload, _, mac = cookie.partition(".")
    other = SessionSigner("t" * 40).dumps(
        ConsoleSession("mallory", session.csrf_token, session.issued_at)
    )
    assert signer.loads(other) is None  # signed with another secret
    forged = other.partition(".")[0] + "." + mac
    assert signer.loads(forged) is None
    assert signer.loads(payload) is None
    assert signer.loads("") is None
    old = ConsoleSession("alice", "token", session.issued_at - signer.max_age - 1)
    assert signer.loads(signer.dumps(old)) is None


def test_csrf_token_is_checked_in_full() -> None:
    session = ConsoleSession.new("alice")
    assert session.token_matches(session.csrf_token)
    assert not session.token_matches(session.csrf_token[:-1])
    assert not session.token_matches("")
    assert not session.token_matches(None)
    assert ConsoleSession.new("alice").csrf_token != session.csrf_token


def test_cookies_are_secure_except_over_plain_http_on_loopback() -> None:
    assert not cookie_is_secure("127.0.0.1", "http")
    assert not cookie_is_secure("localhost", "http")
    assert cookie_is_secure("console.example.com", "http")
    assert cookie_is_secure("127.0.0.1", "https")
