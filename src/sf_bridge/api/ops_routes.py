"""/healthz, /readyz, /metrics."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, text
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sf_bridge import metrics
from sf_bridge.api.context import ApiContext
from sf_bridge.api.responses import json_response
from sf_bridge.db import migrate
from sf_bridge.db.models import StreamCheckpoint

STREAM_STATUS_PREFIX = "status:"


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


def readiness(ctx: ApiContext) -> dict[str, Any]:
    """Database reachable, schema at the head revision, and stream connected if one runs."""
    checks: dict[str, Any] = {}
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True}
    except Exception as exc:
        checks["database"] = {"ok": False, "error": str(exc).splitlines()[0]}
        return checks
    current = migrate.current_revision(ctx.engine)
    schema_ok = current == ctx.schema_head
    checks["schema"] = {"ok": schema_ok, "revision": current, "head": ctx.schema_head}
    if not schema_ok:
        checks["schema"]["hint"] = "run `sf-bridge db upgrade`"
    now = ctx.clock()
    with ctx.session_factory() as session:
        rows = session.scalars(
            select(StreamCheckpoint).where(
                StreamCheckpoint.name.startswith(STREAM_STATUS_PREFIX, autoescape=True)
            )
        ).all()
    streams = [
        {
            "channel": row.name[len(STREAM_STATUS_PREFIX) :],
            "status": row.value,
            "ok": row.value.startswith("connected"),
            "updated_at": row.updated_at.isoformat(),
            "age_seconds": round((now - row.updated_at).total_seconds(), 1),
        }
        for row in rows
    ]
    if streams:
        checks["stream"] = {"ok": all(s["ok"] for s in streams), "channels": streams}
    return checks


async def readyz(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    checks = await run_in_threadpool(readiness, ctx)
    ready = all(c.get("ok") for c in checks.values())
    return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)


async def metrics_endpoint(request: Request) -> Response:
    ctx: ApiContext = request.app.state.ctx
    body = await run_in_threadpool(metrics.render, ctx.read_session_factory)
    return Response(body, headers={"Content-Type": metrics.CONTENT_TYPE})


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
]
