"""/healthz, /readyz, /metrics."""

from __future__ import annotations

from datetime import datetime
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
from sf_bridge.db.engine import reading
from sf_bridge.db.models import StreamCheckpoint
from sf_bridge.provisioning.mappings_status import live_worker_mappings

STREAM_STATUS_PREFIX = "status:"
# The stream holder refreshes its row every SF_BRIDGE_STREAM_STATUS_INTERVAL (15 s): a row this
# old means no worker holds the stream, which is not this process's readiness problem.
STREAM_STATUS_STALE_SECONDS = 120.0


def _stream_check(name: str, value: str, updated_at: datetime, now: datetime) -> dict[str, Any]:
    """A worker's stream status row: not ready only when a live holder reports it unhealthy."""
    state = value.partition(":")[0].strip()
    age = (now - updated_at).total_seconds()
    stale = age > STREAM_STATUS_STALE_SECONDS
    return {
        "channel": name[len(STREAM_STATUS_PREFIX) :],
        "status": value,
        "ok": state in ("connected", "stopped") or stale,
        "stale": stale,
        "updated_at": updated_at.isoformat(),
        "age_seconds": round(age, 1),
    }


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


def readiness(ctx: ApiContext) -> dict[str, Any]:
    """Database reachable, schema at the head revision, and stream connected if one runs."""
    checks: dict[str, Any] = {}
    try:
        with reading(ctx.engine).connect() as conn:  # never waits behind the worker's writes
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
    streams = [_stream_check(row.name, row.value, row.updated_at, now) for row in rows]
    if streams:
        checks["stream"] = {"ok": all(s["ok"] for s in streams), "channels": streams}
    workers = live_worker_mappings(ctx.session_factory, now)
    if workers:
        # Stale mappings do not make this process unready: the workers go on provisioning,
        # with their last good mappings. The check says so; alert on the metric.
        checks["mappings"] = {
            "ok": True,
            "stale": any(w.stale for w in workers),
            "workers": [w.to_dict(now) for w in workers],
        }
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
