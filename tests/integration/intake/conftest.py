"""Fixtures for intake tests: the sandbox org over HTTP with a short long-poll, credentials
for the real clients, and a harness running `StreamIntake` on its own thread and event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.config import IntakeOptions
from sf_bridge.crm.auth import SalesforceCredentials
from sf_bridge.crm.salesforce import SalesforceCrm
from sf_bridge.db.models import Deal
from sf_bridge.intake.leader import LeaderLock
from sf_bridge.intake.service import StreamIntake
from sf_bridge.provisioning.queue import enqueue_opportunities
from sf_bridge.sandbox.salesforce_org import CDC_CHANNEL, SalesforceSandbox
from tests.fixtures.waiting import wait_until

API_VERSION = "62.0"


def fast_options(**overrides: Any) -> IntakeOptions:
    values: dict[str, Any] = {
        "watchdog_seconds": 5.0,
        "pubsub_watchdog_seconds": 5.0,
        "connection_timeout": 2.0,
        "backoff_min": 0.05,
        "backoff_max": 0.5,
        "leader_poll_seconds": 0.2,
        "status_interval": 0.5,
        "close_timeout": 2.0,
        "sweep_retry_seconds": 0.5,
    }
    values.update(overrides)
    return IntakeOptions(**values)


@pytest.fixture
def intake_org() -> Iterator[SalesforceSandbox]:
    org = SalesforceSandbox(port=0, long_poll_seconds=1.0).start()
    org.create_product("PRO-M", "Pro", unit_price=100)
    yield org
    org.stop()


def credentials_for(org: SalesforceSandbox, flow: str = "password") -> SalesforceCredentials:
    if flow == "client_credentials":
        return SalesforceCredentials(
            login_url=org.url,
            client_id=org.client_id,
            client_secret=SecretStr(org.client_secret),
        )
    return SalesforceCredentials(
        login_url=org.url,
        username=org.username,
        password=SecretStr(org.password),
        security_token=SecretStr(org.security_token),
        client_id=org.client_id,
        client_secret=SecretStr(org.client_secret),
    )


def open_deal(org: SalesforceSandbox, name: str = "Deal", account: str | None = None) -> str:
    account_id = account or org.create_account(f"{name} Inc")
    return org.create_opportunity(
        account_id,
        name,
        [{"product_code": "PRO-M", "quantity": 1, "unit_price": 100, "discount": 0}],
    )


def deal_count(session_factory: sessionmaker[Session]) -> int:
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(Deal)) or 0)


def deals_by_source(session_factory: sessionmaker[Session]) -> dict[str, str]:
    with session_factory() as session:
        return dict(session.execute(select(Deal.opportunity_id, Deal.source)).all())


@dataclass
class IntakeHarness:
    """Runs one StreamIntake on a thread; `start()` waits until it is subscribed."""

    org: SalesforceSandbox
    session_factory: sessionmaker[Session]
    channel: str = CDC_CHANNEL
    options: IntakeOptions = field(default_factory=fast_options)
    sweep_interval: float = 3600.0
    flow: str = "password"
    leader_lock: LeaderLock | None = None
    transport: str = "cometd"
    intake: StreamIntake | None = None
    crm: SalesforceCrm | None = None
    thread: threading.Thread | None = None
    enqueued_at: dict[str, float] = field(default_factory=dict)

    def build(self) -> StreamIntake:
        creds = credentials_for(self.org, self.flow)
        self.crm = SalesforceCrm(creds, api_version=API_VERSION)
        self.intake = StreamIntake(
            channel=self.channel,
            credentials=creds,
            api_version=API_VERSION,
            session_factory=self.session_factory,
            crm=self.crm,
            enqueue=lambda s, ids, source: enqueue_opportunities(s, ids, source=source),
            options=self.options,
            sweep_interval=self.sweep_interval,
            leader_lock=self.leader_lock,
            transport=self.transport,
            pubsub_endpoint=self.org.pubsub_endpoint if self.transport == "pubsub" else None,
        )
        self.intake.on_enqueued = self._record
        return self.intake

    def _record(self, ids: list[str]) -> None:
        now = time.monotonic()
        for opportunity_id in ids:
            self.enqueued_at.setdefault(opportunity_id, now)

    def start(self, wait_connected: bool = True) -> StreamIntake:
        intake = self.build()
        self.thread = threading.Thread(target=lambda: asyncio.run(intake.run()), daemon=True)
        self.thread.start()
        if wait_connected:
            self.wait_connected()
        return intake

    def wait_connected(self, timeout: float = 10.0) -> None:
        assert self.intake is not None
        intake = self.intake
        wait_until(lambda: intake.status.current.state == "connected", timeout, "subscription")
        # the start sweep has run (or failed) before the test goes on
        wait_until(lambda: intake.sweeper.runs >= 1, timeout, "the start sweep")

    def stop(self, timeout: float = 10.0) -> None:
        if self.intake is not None and self.thread is not None:
            self.intake.request_stop()
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "intake did not stop"
        self.thread = None


@pytest.fixture
def harness(
    intake_org: SalesforceSandbox, session_factory: sessionmaker[Session]
) -> Iterator[Callable[..., IntakeHarness]]:
    made: list[IntakeHarness] = []

    def make(**kwargs: Any) -> IntakeHarness:
        h = IntakeHarness(kwargs.pop("org", intake_org), session_factory, **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()
