"""`sf-bridge demo` as a new user runs it: a subprocess, its exit code and its summary.

The demo reads every figure it prints back from the database, the Stripe emulator, the
entitlement API and the sandbox org, so these tests also check that a broken expectation
makes it fail loudly instead of printing a canned success.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from sf_bridge.demo import lifecycle
from sf_bridge.demo.scenario import SCENARIO

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def demo_env() -> dict[str, str]:
    """The user's environment without any sf-bridge, Salesforce or Stripe setting."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SF_", "STRIPE_")) and k not in {"DATABASE_URL", "PORT"}
    }
    env["COLUMNS"] = "200"
    return env


def run_demo(*args: str, cwd: Path = REPO_ROOT) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "sf_bridge", "demo", *args],
        cwd=cwd,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    return result, time.monotonic() - started


def _env_file(out: str) -> dict[str, str]:
    match = re.search(r"set -a; \. (\S+demo\.env); set \+a", out)
    assert match, "the demo says where its settings are"
    settings = {}
    for line in Path(match.group(1)).read_text().splitlines():
        key, _, value = line.partition("=")
        settings[key] = value
    return settings


def _explore_then_stop(proc: subprocess.Popen[str], started: float) -> tuple[int, str]:
    """Waits for the demo's summary, explores what it left running as a user would, then
    stops it with SIGTERM. Returns its exit code and its whole output."""
    lines: list[str] = []
    ready = threading.Event()

    def collect() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "# logs:" in line or "DEMO FAILED" in line:
                ready.set()
        ready.set()

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        assert ready.wait(200), "the demo did not finish its run"
        print(f"sf-bridge demo wall time (to the summary): {time.monotonic() - started:.1f} s")
        out = "".join(lines)
        assert "DEMO OK" in out, out

        # What a user does next: the printed setup line and `deals`, pasted into a shell in
        # another directory.
        settings = _env_file(out)
        setup = re.search(r"^  (set -a; .*?)\s+# the settings", out, re.M)
        shown = re.search(r"^  ((?:sf-bridge|python -m sf_bridge) deals)$", out, re.M)
        assert setup, out
        assert shown, out
        deals = subprocess.run(
            ["/bin/sh", "-c", f"{setup.group(1)}\n{shown.group(1)}"],
            cwd="/",
            env=demo_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert deals.returncode == 0, deals.stderr
        # the sample deals but the one lost after provisioning (cancelled), and the upsell and
        # renewal closed after the first deals
        done = len(SCENARIO.deals) - 1 + len(lifecycle.LATER)
        assert deals.stdout.count(" done ") == done, deals.stdout
        assert " cancelled " in deals.stdout, deals.stdout
        # The printed commands run as shown, and no log line mixes into their output.
        assert (settings["LOG_FORMAT"], settings["LOG_LEVEL"]) == ("console", "WARNING")
        assert '"event"' not in deals.stdout + deals.stderr, deals.stderr
        api = re.search(r"curl -H .*? (http://127\.0\.0\.1:\d+/v1/customers/\w+/entitlements)", out)
        assert api, out
        answer = httpx.get(
            api.group(1),
            headers={"Authorization": f"Bearer {settings['SF_BRIDGE_API_KEYS']}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["entitlements"]["seats"]["limit"] == 155  # Acme: 150 + 5 seats
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        reader.join(10)
    return code, "".join(lines)


def test_demo_provisions_every_sample_deal_and_replays_the_parked_one(tmp_path: Path) -> None:
    """One run with --keep-running: the summary, then the user's exploring commands against
    what it left running, then SIGTERM stops everything and the exit code says it all held."""
    errors_path = tmp_path / "stderr.txt"
    with (
        errors_path.open("w") as errors,
        subprocess.Popen(
            [sys.executable, "-m", "sf_bridge", "demo", "--keep-running"],
            cwd=REPO_ROOT,
            env=demo_env(),
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        ) as proc,
    ):
        code, out = _explore_then_stop(proc, time.monotonic())
    assert code == 0, out + errors_path.read_text()
    removed = re.search(r"stopping; removing (\S+)", out)
    assert removed, out
    assert not Path(removed.group(1)).exists(), "the demo leaves nothing behind"

    assert "FAIL" not in out
    for deal in SCENARIO.deals:
        assert deal.name in out, deal.name
    # Real objects, read back from the emulator and the org.
    assert re.search(r"\bcus_[A-Za-z0-9]+", out)
    assert re.search(r"\bsub_[A-Za-z0-9]+", out)
    assert re.search(r"\bin_[A-Za-z0-9]+\s+open", out)
    assert re.search(r"payment link\s+http://127\.0\.0\.1:\d+/\S+", out)
    assert "SF_Bridge_Status__c" in out
    assert "Stripe_Invoice_URL__c" in out
    assert "none: custom plan, billed outside Stripe" in out
    # Payments after provisioning.
    assert len(re.findall(r"records invoice in_\w+ as paid; Stripe shows it paid", out)) == 2
    assert re.search(r"\$ sf-bridge invoices mark-paid 006\w+\s+->\s+exit 0", out)
    # The parked deal: its reason, the fix and the replay.
    assert "needs_attention" in out
    assert "SB-SANDBOX-PLUS-Y" in out
    assert re.search(r"then\s+sf-bridge replay 006[A-Za-z0-9]{12,15}", out), "the replay command"
    assert re.search(r"\$ sf-bridge mappings check\s+->\s+exit 0", out)
    assert re.search(r"\$ sf-bridge replay 006[A-Za-z0-9]{12,15}\s+->\s+exit 0", out)
    assert "After the replay" in out
    # Each deal's close-to-done time is measured from the database.
    assert re.search(r"closed → done in \d+ ms", out)


def test_demo_fails_with_a_clear_message_when_an_expectation_does_not_hold(
    tmp_path: Path,
) -> None:
    """With negotiated prices switched off, the enterprise deal is billed at catalog price:
    the demo must notice it in Stripe and exit 1 naming the failed expectation."""
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO_ROOT / "mappings", mappings)
    sf = mappings / "salesforce.yaml"
    text = sf.read_text()
    assert "price_overrides: negotiated" in text
    sf.write_text(text.replace("price_overrides: negotiated", "price_overrides: catalog"))

    result, _ = run_demo("--mappings", str(mappings))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "DEMO FAILED" in out
    assert "FAIL Acme Robotics - Enterprise 2026: 2 negotiated prices on the subscription" in out
    assert "plan overrides []" in out, "the message says what was seen"


def test_demo_without_mapping_files_says_where_to_run_it(tmp_path: Path) -> None:
    result, _ = run_demo("--mappings", str(tmp_path))
    assert result.returncode == 2
    assert "No mapping files" in result.stderr
    assert "--mappings" in result.stderr


def test_demo_over_the_pub_sub_api_provisions_every_sample_deal() -> None:
    result, _ = run_demo("--transport", "pubsub")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "subscribed to the Salesforce stream over the Pub/Sub API" in out
    assert re.search(r"DEMO OK: \d+ deals, \d+ expectations held", out), out


def test_demo_refuses_an_unknown_transport() -> None:
    result, _ = run_demo("--transport", "carrier-pigeon")
    assert result.returncode == 2
    assert "cometd or pubsub" in result.stderr
