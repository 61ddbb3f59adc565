"""`sf-bridge serve` as the platform runs it: refuses an old schema, serves on PORT, stops on
SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import get_settings
from sf_bridge.db import migrate
from tests.fixtures.api import API_KEY


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_refuses_an_old_schema_then_serves_after_upgrade(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path / 'serve.db'}"
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PORT": str(port),
        "SF_BRIDGE_API_KEYS": API_KEY,
        "LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "sf_bridge", "serve", "--host", "127.0.0.1"]
    get_settings.cache_clear()
    try:
        refused = CliRunner().invoke(app, ["serve", "--host", "127.0.0.1"], env=env)
    finally:
        get_settings.cache_clear()
    assert refused.exit_code == 2
    assert "sf-bridge db upgrade" in refused.output
    assert "Traceback" not in refused.output

    migrate.upgrade(database_url)
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health is not None, "serve did not answer within 30 s"
        assert health.json() == {"status": "ok"}
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 200
        unknown = httpx.get(
            f"http://127.0.0.1:{port}/v1/customers/001000000000001AAA/entitlements",
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=5,
        )
        assert unknown.status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert API_KEY not in stderr
