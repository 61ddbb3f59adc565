"""sf-bridge serve: the HTTP service (entitlement API, Stripe webhooks, health, metrics)."""

from __future__ import annotations

import signal

import typer

from sf_bridge.cli import app, handle_errors


@app.command("serve")
@handle_errors
def serve(
    port: str = typer.Option(
        None, "--port", envvar="PORT", metavar="PORT", help="Port to listen on [8000]"
    ),
    host: str = typer.Option("0.0.0.0", "--host", help="Address to listen on"),
    database_url: str = typer.Option(
        None, "--database-url", envvar="DATABASE_URL", help="SQLAlchemy URL"
    ),
) -> None:
    """The HTTP service: entitlement API, Stripe webhooks, /healthz, /readyz, /metrics.

    Also reads SF_BRIDGE_API_KEYS: the keys the API accepts (none set: every request refused).

    STRIPE_WEBHOOK_SECRET: verifies Stripe-Signature (none set: webhooks refused).

    STRIPE_API_KEY, STRIPE_API_BASE: read an object's current state when a webhook arrives.

    SF_BRIDGE_OPS_USERS, SF_BRIDGE_CONSOLE_SECRET: turn on the ops console at /console.

    Refuses to start (exit 2, naming the setting) on a setting with a wrong value, an
    unreachable database or an out-of-date schema (run `sf-bridge db upgrade`).
    """
    import uvicorn

    from sf_bridge.api import create_app
    from sf_bridge.config import get_settings
    from sf_bridge.db.engine import make_engine, make_session_factory
    from sf_bridge.db.migrate import ensure_current
    from sf_bridge.logging import get_logger
    from sf_bridge.provisioning.wiring import build_billing

    log = get_logger("sf_bridge.serve")
    settings = get_settings().with_overrides(
        flags={"database_url": "--database-url", "port": "--port"},
        database_url=database_url,
        port=port,
    )
    engine = make_engine(settings.database_url)
    try:
        ensure_current(engine)
        if not settings.api_key_list():
            log.warning(
                "api_keys_missing",
                message="SF_BRIDGE_API_KEYS is not set: every entitlement API request gets 401.",
            )
        if settings.stripe_webhook_secret is None:
            log.warning(
                "webhook_secret_missing",
                message="STRIPE_WEBHOOK_SECRET is not set: Stripe webhooks get 503.",
            )
        application = create_app(
            settings, make_session_factory(engine), billing=build_billing(settings)
        )
        log.info("serve_starting", host=host, port=settings.port)
        # uvicorn drains on SIGTERM, then raises the signal again once it has restored the
        # handler found here: a no-op, so a graceful stop exits 0.
        signal.signal(signal.SIGTERM, lambda *_: None)
        uvicorn.run(
            application,
            host=host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="none",
            proxy_headers=True,
            timeout_graceful_shutdown=25,
        )
        log.info("serve_stopped")
    finally:
        engine.dispose()
