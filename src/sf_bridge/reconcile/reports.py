"""The stored reports: `save_report` after each run, `last_report` for the console."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from sf_bridge.db.models import ReconcileReport
from sf_bridge.reconcile.findings import Report


def save_report(session: Session, report: Report, *, trigger: str) -> None:
    session.add(
        ReconcileReport(
            started_at=report.started_at,
            finished_at=report.finished_at,
            since=report.since,
            mismatches=len(report.mismatches),
            trigger=trigger,
            report=report.to_dict(),
        )
    )


@dataclass(frozen=True)
class StoredReport:
    report: Report
    trigger: str  # "command" (`sf-bridge reconcile`) or "schedule" (the worker)


def last_stored_report(session: Session) -> StoredReport | None:
    """The newest reconciliation report with what started it, or None when none has run."""
    row = session.execute(
        select(ReconcileReport).order_by(ReconcileReport.id.desc()).limit(1)
    ).scalar()
    return None if row is None else StoredReport(Report.from_dict(row.report), row.trigger)


def last_report(session: Session) -> Report | None:
    """The newest reconciliation report, or None when none has run yet."""
    stored = last_stored_report(session)
    return None if stored is None else stored.report
