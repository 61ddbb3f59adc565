"""What every route needs, built once by `create_app` and kept on `app.state.ctx`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.api.auth import ApiKeys
from sf_bridge.config import Settings

if TYPE_CHECKING:
    from sf_bridge.billing.port import BillingGateway


@dataclass
class ApiContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    engine: Engine
    read_engine: Engine  # entitlement reads (see read_engine.py)
    read_session_factory: sessionmaker[Session]  # metrics, over read_engine
    inline_reads: bool  # SQLite: entitlement reads run on the event loop (no thread hand-off)
    api_keys: ApiKeys
    clock: Callable[[], datetime]
    billing: BillingGateway | None
    webhook_tolerance_seconds: int
    schema_head: str | None
