"""A reconciliation from settings, for `sf-bridge reconcile` and the worker's schedule."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy.orm import Session, sessionmaker

from sf_bridge.config import Settings
from sf_bridge.provisioning.floor import parse_floor, read_floor
from sf_bridge.reconcile.findings import Report
from sf_bridge.reconcile.service import reconcile
from sf_bridge.reconcile.sources import ReconcileBilling, ReconcileCrm


def resolve_since(
    session_factory: sessionmaker[Session], settings: Settings, since: str | None
) -> datetime | None:
    """`--since` when given, else the provisioning floor in force (None: no floor yet)."""
    if since:
        return parse_floor(since)
    with session_factory() as session:
        return read_floor(session, settings.provision_floor)


def reconcile_from_settings(
    settings: Settings,
    session_factory: sessionmaker[Session],
    *,
    since: str | None = None,
    trigger: str = "command",
    crm: Any = None,
    billing: Any = None,
) -> Report:
    from sf_bridge.provisioning.wiring import MappingsLoader, build_billing, build_crm

    if crm is None:
        crm = build_crm(settings, MappingsLoader(settings.mappings_dir))
    if billing is None:
        billing = build_billing(settings)
    return reconcile(
        session_factory,
        crm=cast(ReconcileCrm | None, crm),
        billing=cast(ReconcileBilling | None, billing),
        since=resolve_since(session_factory, settings, since),
        trigger=trigger,
    )
