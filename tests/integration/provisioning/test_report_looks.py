"""The worker's loop reads the rare states it reports (deals parked, cancelled or paid whose
opportunity is still to be told, schedules to start, deals waiting for the write-back) only
when a commit can have made them appear, or at the safety poll: a round with nothing new
sends none of those reads, and what another process changed is still told."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, event, update

from sf_bridge.db.models import Deal
from sf_bridge.plan import MappingError
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.provisioning.store import record_first_payment
from sf_bridge.provisioning.wakeup import PAYMENTS, REPORTS
from tests.fixtures.provisioning import Harness, drain, opportunity, settled

OPP = "006000000000001AAA"
ACCOUNT = "001000000000001AAA"
NEVER = 3600.0

# What each report read names in its SQL (and no per-deal statement does).
_READS = (
    "writeback_pending IS",
    "writeback_pending = ",
    "min(deals.contract_start_at)",
    "min(deals.updated_at)",
)


class Reads:
    def __init__(self, engine: Engine) -> None:
        self.statements: list[str] = []
        self._engine = engine
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, _c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and any(
            r.lower() in statement.lower() for r in _READS
        ):
            self.statements.append(statement)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._count)


def _provisioned_card_deal(h: Harness) -> None:
    with h.session_factory() as session, session.begin():
        session.add(
            Deal(
                opportunity_id=OPP,
                account_id=ACCOUNT,
                status="done",
                source="stream",
                opportunity=opportunity(OPP, ACCOUNT),
                stripe_subscription_id="sub_card_1",
                payment_state="awaiting_payment",
                payment_reported="awaiting_payment",  # what the write-back told it
                writeback_pending=False,
            )
        )


def test_a_round_with_nothing_new_sends_no_report_read(harness: Harness) -> None:
    worker = harness.worker()
    worker.safety_poll = NEVER
    worker.run_once()  # a fresh worker looks once at everything
    reads = Reads(harness.session_factory.kw["bind"])
    try:
        worker.run_once()
        worker.run_once()
    finally:
        reads.close()
    assert reads.statements == []


def test_a_deal_parked_in_a_later_round_is_told(harness: Harness) -> None:
    h = harness
    worker = h.worker()
    worker.safety_poll = NEVER
    worker.run_once()
    h.crm.opportunities[OPP] = opportunity(OPP, ACCOUNT)
    h.mappings.plans[OPP] = [
        MappingError("unknown_product", "the product code 'SB-X' is not mapped", "map it", "")
    ]
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="test")
    drain(worker, settled(h, OPP))
    assert h.deal(OPP).status == "needs_attention"
    assert h.crm.written[OPP]["Provisioning_Status__c"] == "Needs attention"
    assert h.deal(OPP).writeback_pending is False


def test_a_first_payment_recorded_by_the_webhook_is_told_at_the_next_round(
    harness: Harness,
) -> None:
    h = harness
    _provisioned_card_deal(h)
    worker = h.worker()
    worker.safety_poll = NEVER
    worker.run_once()
    assert OPP not in h.crm.written
    before = REPORTS.generation(PAYMENTS)
    with h.session_factory.kw["bind"].begin() as conn:
        assert record_first_payment(conn, "sub_card_1", "test", datetime.now(UTC))
    assert REPORTS.generation(PAYMENTS) > before  # told once committed
    worker.run_once()
    assert h.crm.written[OPP]["Provisioning_Status__c"] == "Provisioned"
    assert h.deal(OPP).writeback_pending is False


def test_a_change_no_commit_here_tells_of_is_seen_at_the_safety_poll(harness: Harness) -> None:
    """As a webhook in another process on SQLite: nothing in this process moves a counter."""
    h = harness
    _provisioned_card_deal(h)
    worker = h.worker()
    worker.safety_poll = NEVER
    worker.run_once()
    with h.session_factory() as session, session.begin():
        session.execute(
            update(Deal)
            .where(Deal.opportunity_id == OPP)
            .values(payment_state="paid", writeback_pending=True)
        )
    worker.run_once()
    assert OPP not in h.crm.written  # not looked for yet
    worker.safety_poll = 0.0  # the safety poll comes round
    worker.run_once()
    assert h.crm.written[OPP]["Provisioning_Status__c"] == "Provisioned"


def test_a_round_with_nothing_new_claims_only_the_deal_steps(harness: Harness) -> None:
    """The fetch and un-won/cancel claims wait for work added, a retry come due or the
    safety poll; the claim of the per-deal steps is the one statement of an empty round."""
    worker = harness.worker()
    worker.safety_poll = NEVER
    worker.run_once()
    sent: list[str] = []

    def count(_c: Any, _cur: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith("BEGIN"):
            sent.append(statement)

    engine = harness.session_factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        worker.run_once()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(sent) == 1, sent
    assert sent[0].lstrip().upper().startswith("UPDATE DEALS")


def test_a_deal_enqueued_after_an_empty_round_is_fetched(harness: Harness) -> None:
    h = harness
    worker = h.worker()
    worker.safety_poll = NEVER
    worker.run_once()
    worker.run_once()  # nothing: the fetch claim is not sent
    h.crm.opportunities[OPP] = opportunity(OPP, ACCOUNT)
    h.mappings.plans[OPP] = [MappingError("unknown_product", "not mapped", "map it", "")]
    with h.session_factory() as session, session.begin():
        enqueue_opportunities(session, [OPP], source="test")  # work added: fetched next round
    drain(worker, settled(h, OPP), timeout=10.0)
    assert h.deal(OPP).status == "needs_attention"


def test_a_payment_recorded_by_another_process_is_told_through_its_notification(
    harness: Harness, db_url: str
) -> None:
    """On PostgreSQL the webhook's transaction (another process) sends `NOTIFY` with the
    payload `reports`: the listening worker tells the opportunity without its safety poll."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite is one process: other processes are seen by the safety poll")
    h = harness
    _provisioned_card_deal(h)
    worker = h.worker()
    worker.safety_poll = NEVER
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: worker.listener is not None and worker.listener.connected.is_set(),
            "the LISTEN connection",
        )
        script = (
            "import sys\n"
            "from datetime import UTC, datetime\n"
            "from sf_bridge.db.engine import make_engine\n"
            "from sf_bridge.provisioning.store import record_first_payment\n"
            "with make_engine(sys.argv[1]).begin() as conn:\n"
            "    assert record_first_payment(conn, 'sub_card_1', 'test', datetime.now(UTC))\n"
        )
        subprocess.run([sys.executable, "-c", script, db_url], check=True, timeout=60)
        wait_for(
            lambda: h.crm.written.get(OPP, {}).get("Provisioning_Status__c") == "Provisioned",
            "the opportunity told",
        )
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pause.wait(0.02)
