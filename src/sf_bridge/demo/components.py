"""What the demo starts and stops: the pieces of sf-bridge it composes, and its child processes.

The worker (`sf-bridge run`) and the API (`sf-bridge serve`) run as child processes with an
environment that points them at the sandbox org, the Stripe emulator and a fresh SQLite
database, exactly as a user would start them. Their logs go to files in the demo's folder.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import httpx

from sf_bridge.config import Settings
from sf_bridge.errors import SfBridgeError


class DemoFailed(SfBridgeError):
    """The demo could not show the product working."""

    code = "demo_failed"


class MissingPiece(DemoFailed):
    """A part of sf-bridge the demo composes is not in this build."""

    code = "demo_missing_piece"


class DemoTimeout(DemoFailed):
    """Something the demo waited for did not happen in time."""

    code = "demo_timeout"


@dataclass(frozen=True)
class Piece:
    """One part of sf-bridge the demo needs, named for the person reading the error."""

    module: str
    attribute: str
    what: str


PIECES: dict[str, Piece] = {
    "mappings": Piece("sf_bridge.mapping", "load_mappings", "the mapping loader"),
    "engine": Piece("sf_bridge.mapping.engine", "map_opportunity", "the mapping engine"),
    "stripe": Piece("sf_bridge.sandbox.stripe_emulator", "StripeEmulator", "the Stripe emulator"),
    "org": Piece(
        "sf_bridge.sandbox.salesforce_org", "SalesforceSandbox", "the sandbox Salesforce org"
    ),
}


def require(name: str) -> Any:
    """The attribute a piece provides, or `MissingPiece` saying which part is missing."""
    piece = PIECES[name]
    try:
        module: ModuleType = importlib.import_module(piece.module)
        return getattr(module, piece.attribute)
    except (ImportError, AttributeError) as exc:
        raise MissingPiece(
            f"The demo needs {piece.what} (`{piece.module}.{piece.attribute}`), "
            f"which this build of sf-bridge does not have ({exc})."
        ) from exc


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.1, what: str
) -> Any:
    """Polls `condition` until it returns something truthy; `DemoFailed` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise DemoTimeout(f"Timed out after {timeout:.0f} s waiting for {what}.")
        time.sleep(interval)


@dataclass(eq=False)
class ManagedProcess:
    """A `sf-bridge` child process with its log in a file; stopped with SIGTERM."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def command_line(self) -> str:
        return "sf-bridge " + " ".join(self.args)

    def start(self) -> ManagedProcess:
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "sf_bridge", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def check_alive(self) -> None:
        """Raises `DemoFailed` when the process has exited."""
        if self.process is None:
            raise DemoFailed(f"`{self.command_line}` was never started.")
        code = self.process.poll()
        if code is None:
            return
        tail = self.log_tail()
        raise DemoFailed(f"`{self.command_line}` exited with code {code}. Its last lines:\n{tail}")

    def has_logged(self, event: str, **fields: object) -> bool:
        """True once the process wrote a JSON log record `event` with these field values."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        for line in text.splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == event and all(
                record.get(key) == value for key, value in fields.items()
            ):
                return True
        return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode


def run_command(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Runs one `sf-bridge` command to completion (e.g. `replay`), capturing its output."""
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "sf_bridge", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The current environment without any sf-bridge or Salesforce/Stripe settings, plus ours.

    A user's own `.env` or exported credentials must never leak into the demo (nor the demo's
    into a real org), so every variable sf-bridge reads is replaced, not inherited.
    """
    prefixes = ("SF_", "STRIPE_", "SF_BRIDGE_")
    names = {variable for variable, _ in Settings.variables()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in names}
    env.update(overrides)
    return env
