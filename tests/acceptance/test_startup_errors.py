"""Start-up errors of `sf-bridge run`, `serve` and the other commands, as a user meets them:
exit 2 with one message naming the setting to fix and what a valid value looks like, no
traceback, no secret."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sf_bridge.db import migrate
from tests.fixtures.mapping import REPO_ROOT, copy_mappings

UNREACHABLE_PG = "postgresql://sfb:hunter2secret@127.0.0.1:1/sfb"
PUBLISHABLE_KEY = "pk_test_51Hx0PublishableOnly"


def environment(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_", "DATABASE"))}
    env.pop("PORT", None)
    env.update({"LOG_FORMAT": "json", "NO_COLOR": "1"})
    env.update(values)
    return env


def sf_bridge(*args: str, cwd: Path = REPO_ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sf_bridge", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment(**env),
        timeout=60,
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    """The error line of a start refused with exit 2; checks what every such error shares."""
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors, output
    for text in expected:
        assert text in done.stderr, output
    return errors[0]


@pytest.fixture
def ready_database(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'sf_bridge.db'}"
    migrate.upgrade(url)
    return url


@pytest.mark.parametrize("command", [["run"], ["serve"], ["db", "upgrade"], ["deals"]])
def test_an_unreachable_database_names_database_url_without_its_password(
    command: list[str],
) -> None:
    done = sf_bridge(*command, DATABASE_URL=UNREACHABLE_PG, SF_BRIDGE_MAPPINGS="mappings")
    line = refused(done, "DATABASE_URL=postgresql+psycopg://sfb:***@127.0.0.1:1/sfb")
    assert "Cannot connect to the database" in line
    assert "hunter2secret" not in done.stdout + done.stderr
    assert "sqlalche.me" not in done.stderr
    assert "(psycopg" not in done.stderr  # the cause in words, not the driver's exception


def test_a_sqlite_database_in_a_missing_folder_names_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'sf_bridge.db'}"
    done = sf_bridge("run", DATABASE_URL=url)
    refused(done, f"DATABASE_URL={url}", "unable to open database file")


def test_an_invalid_channel_is_named_with_the_channels_that_work(ready_database: str) -> None:
    done = sf_bridge("run", DATABASE_URL=ready_database, SF_CHANNEL="/bogus/Opportunity")
    line = refused(done, "SF_CHANNEL='/bogus/Opportunity' is not a streaming channel")
    assert "SF_CHANNEL=/data/OpportunityChangeEvent" in line
    assert "ValueError" not in done.stderr


def test_a_port_that_is_not_a_number(ready_database: str) -> None:
    done = sf_bridge("serve", DATABASE_URL=ready_database, PORT="notaport")
    line = refused(done, "PORT='notaport' is not a whole number")
    assert "e.g. PORT=8000" in line
    for raw in ("ValidationError", "pydantic", "int_parsing", "Invalid value for"):
        assert raw not in done.stderr
    given = sf_bridge("serve", "--port", "abc", DATABASE_URL=ready_database)
    refused(given, "PORT='abc' (from --port) is not a whole number")


@pytest.mark.parametrize("command", ["run", "serve"])
def test_a_publishable_stripe_key_is_refused(command: str, ready_database: str) -> None:
    done = sf_bridge(command, DATABASE_URL=ready_database, STRIPE_API_KEY=PUBLISHABLE_KEY)
    line = refused(done, "STRIPE_API_KEY is a publishable key (pk_...)")
    assert "sk_live_" in line
    assert "rk_" in line
    assert PUBLISHABLE_KEY not in done.stdout + done.stderr


def test_every_wrong_setting_is_named_at_once(ready_database: str) -> None:
    done = sf_bridge(
        "run",
        DATABASE_URL=ready_database,
        SF_BRIDGE_WORKER_CONCURRENCY="many",
        SF_BRIDGE_OVERDUE_DRY_RUN="perhaps",
    )
    refused(
        done,
        "SF_BRIDGE_WORKER_CONCURRENCY='many' is not a whole number",
        "SF_BRIDGE_OVERDUE_DRY_RUN='perhaps' is not true or false",
    )


def test_a_wrong_worker_tuning_setting_is_named(ready_database: str) -> None:
    done = sf_bridge("run", DATABASE_URL=ready_database, SF_BRIDGE_WORKER_POLL="fast")
    refused(done, "SF_BRIDGE_WORKER_POLL='fast' is not a number")


def floor_recorded(url: str) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT value FROM stream_checkpoints WHERE name = 'provision_floor'")
            ).scalar()
    finally:
        engine.dispose()


def test_a_wrong_provisioning_floor_or_line_items_wait_is_named(ready_database: str) -> None:
    done = sf_bridge("run", DATABASE_URL=ready_database, SF_BRIDGE_PROVISION_FLOOR="last year")
    refused(done, "SF_BRIDGE_PROVISION_FLOOR='last year' is not a date", "2026-12-01")
    done = sf_bridge("run", DATABASE_URL=ready_database, SF_BRIDGE_PROVISION_FLOOR="2999-01-01")
    refused(done, "SF_BRIDGE_PROVISION_FLOOR='2999-01-01' is in the future")
    done = sf_bridge("run", DATABASE_URL=ready_database, SF_BRIDGE_LINE_ITEMS_WAIT="-5")
    refused(done, "SF_BRIDGE_LINE_ITEMS_WAIT='-5' must be at least 0")
    assert floor_recorded(ready_database) is None


def test_a_refused_start_does_not_fix_the_first_start_floor(ready_database: str) -> None:
    done = sf_bridge("run", DATABASE_URL=ready_database)  # no Salesforce credentials
    refused(done, "Salesforce is not configured")
    assert floor_recorded(ready_database) is None


def test_commands_that_need_no_settings_still_run_with_a_wrong_one() -> None:
    done = sf_bridge("mappings", "check", "mappings", PORT="notaport")
    assert done.returncode == 0, done.stderr
    assert sf_bridge("--help", PORT="notaport").returncode == 0


def test_run_without_salesforce_credentials_names_them_and_the_flag(ready_database: str) -> None:
    done = sf_bridge("run", DATABASE_URL=ready_database)
    line = refused(done, "SF_USERNAME", "SF_CLIENT_ID", "SF_CLIENT_SECRET", "--no-salesforce")
    assert "Salesforce is not configured" in line


def test_run_refuses_missing_or_invalid_mappings(ready_database: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    done = sf_bridge("run", "--no-salesforce", DATABASE_URL=ready_database,
                     SF_BRIDGE_MAPPINGS=str(missing))  # fmt: skip
    refused(done, f"{missing}: [no_mapping_files]")

    folder = copy_mappings(
        tmp_path / "m", {"catalog.yaml": [("    unit: users\n", "    unit users\n")]}
    )
    done = sf_bridge("run", "--no-salesforce", DATABASE_URL=ready_database,
                     SF_BRIDGE_MAPPINGS=str(folder))  # fmt: skip
    refused(done, f"{folder / 'catalog.yaml'}:10:5: [yaml_syntax]", "sf-bridge mappings check")
    assert "missing_section" not in done.stderr


def test_run_without_salesforce_on_purpose_starts_and_stops(ready_database: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sf_bridge", "run", "--no-salesforce"],
        cwd=REPO_ROOT,
        env=environment(DATABASE_URL=ready_database, SF_BRIDGE_MAPPINGS="mappings"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("worker_process_started" in line for line in list(lines)):
            assert process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=40)
        reader.join(timeout=10)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0, "".join(lines)
    assert any("salesforce_disabled" in line for line in lines)
