"""`sf-bridge sandbox` as a user runs it: starts both servers, prints the environment, serves
the example mappings' products and fields, and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from simple_salesforce import Salesforce, SalesforceMalformedRequest

from tests.integration.salesforce_org.clients import LoopbackHttpsAdapter

REPO = Path(__file__).resolve().parents[3]
STARTUP_SECONDS = 30.0


def _read_lines(stream: object, lines: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)


def _run_sandbox(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SF_", "STRIPE_"))}
    env["LOG_FORMAT"] = "json"
    process = subprocess.Popen(
        [sys.executable, "-m", "sf_bridge", "sandbox", "--sf-port", "0", "--stripe-port", "0",
         "--mappings", str(REPO / "mappings"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True)
    reader.start()
    return process, lines


def _exported(lines: queue.Queue[str], output: list[str]) -> dict[str, str]:
    """The variables the sandbox prints, once it printed the last of them."""
    exported: dict[str, str] = {}
    deadline = time.monotonic() + STARTUP_SECONDS
    while "STRIPE_API_KEY" not in exported:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        output.append(line)
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exported[name] = value
    return exported


def _client(exported: dict[str, str]) -> tuple[Salesforce, requests.Session]:
    token = requests.post(
        f"{exported['SF_LOGIN_URL']}/services/oauth2/token",
        data={
            "grant_type": "password",
            "client_id": exported["SF_CLIENT_ID"],
            "client_secret": exported["SF_CLIENT_SECRET"],
            "username": exported["SF_USERNAME"],
            "password": exported["SF_PASSWORD"] + exported["SF_SECURITY_TOKEN"],
        },
        timeout=10,
    ).json()
    session = requests.Session()
    session.mount("https://", LoopbackHttpsAdapter())
    sf = Salesforce(
        instance_url=token["instance_url"], session_id=token["access_token"], session=session
    )
    return sf, session


def _stop(process: subprocess.Popen[str], output: list[str]) -> None:
    process.send_signal(signal.SIGTERM)
    exit_code = process.wait(timeout=15)
    assert process.stdout is not None
    process.stdout.close()
    assert exit_code == 0, "".join(output)


def test_sandbox_command_serves_the_org_and_the_emulator_until_sigterm(tmp_path: Path) -> None:
    process, lines = _run_sandbox(tmp_path)
    output: list[str] = []
    try:
        exported = _exported(lines, output)
        assert {
            "SF_LOGIN_URL",
            "SF_USERNAME",
            "SF_PASSWORD",
            "SF_SECURITY_TOKEN",
            "SF_CLIENT_ID",
            "SF_CLIENT_SECRET",
            "STRIPE_API_BASE",
        } <= set(exported)
        sf, session = _client(exported)
        codes = {r["ProductCode"] for r in sf.query("SELECT ProductCode FROM Product2")["records"]}
        assert {"SB-TEAM-M", "SB-ENT-Y", "SB-SEATS-M"} <= codes
        # The custom fields the example mappings read and write exist on the org.
        sf.query("SELECT Seats__c, Payment_Terms__c, SF_Bridge_Status__c FROM Opportunity")
        sf.query("SELECT CurrencyIsoCode FROM Opportunity")  # multi-currency by default

        prices = requests.get(
            f"{exported['STRIPE_API_BASE']}/v1/prices",
            headers={"Authorization": f"Bearer {exported['STRIPE_API_KEY']}"},
            timeout=10,
        )
        assert prices.status_code == 200
        assert prices.json()["data"], "the catalog prices of the mappings are seeded"
        session.close()
    finally:
        _stop(process, output)


def test_sandbox_command_single_currency_org(tmp_path: Path) -> None:
    process, lines = _run_sandbox(tmp_path, "--single-currency", "--corporate-currency", "EUR")
    output: list[str] = []
    try:
        exported = _exported(lines, output)
        sf, session = _client(exported)
        with pytest.raises(SalesforceMalformedRequest) as refused:
            sf.query("SELECT Id, CurrencyIsoCode FROM Opportunity")
        assert refused.value.content[0]["errorCode"] == "INVALID_FIELD"
        [organization] = sf.query("SELECT DefaultCurrencyIsoCode FROM Organization")["records"]
        assert organization["DefaultCurrencyIsoCode"] == "EUR"
        session.close()
    finally:
        _stop(process, output)
    assert any("single currency EUR" in line for line in output), "".join(output)


def test_sandbox_command_sends_change_events_without_changed_fields_when_asked(
    tmp_path: Path,
) -> None:
    process, lines = _run_sandbox(tmp_path, "--without-changed-fields")
    output: list[str] = []
    try:
        _exported(lines, output)
    finally:
        _stop(process, output)
    assert any("without changedFields" in line for line in output), "".join(output)
