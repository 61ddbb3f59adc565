"""The demo's plumbing fails loudly and says which piece is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sf_bridge.demo import components
from sf_bridge.demo.components import (
    DemoFailed,
    ManagedProcess,
    MissingPiece,
    Piece,
    child_environment,
    wait_until,
)


def test_a_missing_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        components.PIECES, "nothing", Piece("sf_bridge.no_such_module", "Thing", "the thing")
    )
    with pytest.raises(MissingPiece, match=r"the thing \(`sf_bridge\.no_such_module\.Thing`\)"):
        components.require("nothing")


def test_every_piece_the_demo_composes_is_present() -> None:
    for name in components.PIECES:
        assert components.require(name) is not None


def test_wait_until_gives_up_with_what_it_waited_for() -> None:
    with pytest.raises(DemoFailed, match="Timed out after 0 s waiting for the moon"):
        wait_until(lambda: False, timeout=0.05, interval=0.01, what="the moon")
    assert wait_until(lambda: 42, timeout=1, what="an answer") == 42


def test_children_never_inherit_the_users_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SF_PASSWORD", "not-for-the-demo")
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_EXAMPLE")
    monkeypatch.setenv("DATABASE_URL", "postgresql://example/prod")
    env = child_environment({"DATABASE_URL": "sqlite:///demo.db"})
    assert "SF_PASSWORD" not in env
    assert "STRIPE_API_KEY" not in env
    assert env["DATABASE_URL"] == "sqlite:///demo.db"
    assert env["PATH"] == os.environ["PATH"]


def test_a_child_that_never_gets_ready_fails_with_its_log(tmp_path: Path) -> None:
    from sf_bridge.demo.driver import _wait_for

    log = tmp_path / "worker.log"
    log.write_text('{"event": "salesforce_login_failed", "level": "warning"}\n')
    process = ManagedProcess("worker", ["run"], {}, log, tmp_path)
    with pytest.raises(DemoFailed) as failure:
        _wait_for(process, lambda: False, "the worker to subscribe", timeout=0.05)
    message = str(failure.value)
    assert "Timed out after 0 s waiting for the worker to subscribe" in message
    assert "salesforce_login_failed" in message
