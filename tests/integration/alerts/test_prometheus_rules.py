"""The Prometheus rules in docs/alerts are valid, fire when they should (promtool, when
installed), and only use metrics that /metrics serves, with the values the alerts watch."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sf_bridge import metrics
from sf_bridge.db.engine import transaction
from sf_bridge.errors import TransientError
from sf_bridge.intake.checkpoints import write_checkpoint
from sf_bridge.intake.status import status_key
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.retry import RetryPolicy
from tests.fixtures.provisioning import Harness, drain, make_plan

from .conftest import HttpReceiver, SmtpReceiver
from .test_alerts import CHANNEL, park, service

RULES_DIR = Path(__file__).resolve().parents[3] / "docs" / "alerts"
RULES = RULES_DIR / "sf-bridge-rules.yml"
RULES_TEST = RULES_DIR / "sf-bridge-rules.test.yml"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_their_unit_tests() -> None:
    for command in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        done = subprocess.run(
            ["promtool", *command], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_use_only_metrics_that_are_served(
    harness: Harness, http_receiver: HttpReceiver, smtp_receiver: SmtpReceiver
) -> None:
    h = harness
    park(h)
    retrying = "006000000000002AAA"
    h.billing.fail_next("create_customer", TransientError("Stripe answered 503"))  # type: ignore[union-attr]
    h.add_opportunity(make_plan(retrying, account_id="001000000000002AAA"))
    with transaction(h.session_factory) as session:
        enqueue_opportunities(session, [retrying], source="test")
        write_checkpoint(session, status_key(CHANNEL), "connected")
    slow = RetryPolicy(max_attempts=20, base_delay=600.0, max_delay=600.0, request_attempts=1)
    drain(h.worker(policy=slow), lambda: h.deal(retrying).status == "retrying")
    http_receiver.fail_next("/services/", 500)
    service(h, http_receiver, smtp_receiver).run_once()

    text = metrics.render(h.session_factory).decode()
    used = set(re.findall(r"\bsf_bridge_[a-z_]+\b", RULES.read_text()))
    served = set(re.findall(r"^(sf_bridge_[a-z_]+)", text, flags=re.M))
    assert used <= served, f"not on /metrics: {used - served}"

    assert 'sf_bridge_deals_needs_attention{code="billing_rejected"} 1.0' in text
    assert f'sf_bridge_stream_connected{{channel="{CHANNEL}"}} 1.0' in text
    assert 'sf_bridge_alert_deliveries{channel="slack",status="pending"} 1.0' in text
    assert 'sf_bridge_alert_deliveries{channel="email",status="sent"} 1.0' in text
    [age] = re.findall(r"^sf_bridge_deals_retrying_oldest_seconds (\S+)$", text, flags=re.M)
    assert 0.0 < float(age) < 60.0


def test_the_operations_guide_shows_the_rules_file_as_it_is() -> None:
    guide = (RULES_DIR.parent / "operations.md").read_text()
    assert RULES.read_text().rstrip("\n") in guide
