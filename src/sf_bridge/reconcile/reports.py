"""The stored reports: `save_report` after each run, `last_report` for the console."""

from __future__ import annotations

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


def last_report(session: Session) -> Report | None:
    """The newest reconciliation report, or None when none has run yet."""
    row = session.execute(
        select(ReconcileReport).order_by(ReconcileReport.id.desc()).limit(1)
    ).scalar()
    return None if row is None else Report.from_dict(row.report)
