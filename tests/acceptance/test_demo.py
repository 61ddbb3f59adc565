"""`sf-bridge demo` as a new user runs it: a subprocess, its exit code and its summary.

The demo reads every figure it prints back from the database, the Stripe emulator, the
entitlement API and the sandbox org, so these tests also check that a broken expectation
makes it fail loudly instead of printing a canned success.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_demo_provisions_every_sample_deal_and_replays_the_parked_one() -> None:
    result, wall = run_demo()
    out = result.stdout
    assert result.returncode == 0, f"demo failed after {wall:.1f} s:\n{out}\n{result.stderr}"
    print(f"sf-bridge demo wall time: {wall:.1f} s")

    assert "DEMO OK" in out
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
    # The parked deal: its reason, the fix and the replay.
    assert "needs_attention" in out
    assert "SB-SANDBOX-PLUS-Y" in out
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
