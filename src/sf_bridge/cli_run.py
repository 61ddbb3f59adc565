"""sf-bridge run: the long-running worker (stream + sweep + provision + overdue policy)."""

from __future__ import annotations

from pathlib import Path

import typer

from sf_bridge.cli import app, handle_errors


@app.command("run")
@handle_errors
def run(
    database_url: str = typer.Option(
        None, "--database-url", envvar="DATABASE_URL", help="SQLAlchemy URL"
    ),
    mappings: Path = typer.Option(
        None,
        "--mappings",
        envvar="SF_BRIDGE_MAPPINGS",
        help="Mappings folder",
    ),
    login_url: str = typer.Option(
        None,
        "--login-url",
        envvar="SF_LOGIN_URL",
        help="Salesforce login endpoint",
    ),
    channel: str = typer.Option(
        None,
        "--channel",
        envvar="SF_CHANNEL",
        help="/data/OpportunityChangeEvent, /event/<Name>__e or /topic/<Name>",
    ),
    api_version: str = typer.Option(
        None,
        "--api-version",
        envvar="SF_API_VERSION",
        help="Salesforce API version",
    ),
    sweep_interval: float = typer.Option(
        None,
        "--sweep-interval",
        envvar="SF_BRIDGE_SWEEP_INTERVAL",
        help="Seconds between catch-up sweeps",
    ),
    concurrency: int = typer.Option(
        None,
        "--concurrency",
        envvar="SF_BRIDGE_WORKER_CONCURRENCY",
        help="Deals provisioned at once",
    ),
) -> None:
    """The long-running worker: stream + sweep + provision + overdue policy.

    Also reads SF_USERNAME, SF_PASSWORD, SF_SECURITY_TOKEN, SF_CLIENT_ID, SF_CLIENT_SECRET,
    STRIPE_API_KEY, STRIPE_API_BASE, SF_BRIDGE_WORKER_POLL, SF_BRIDGE_OVERDUE_INTERVAL and
    the SF_BRIDGE_STREAM_* / SF_BRIDGE_SWEEP_* / SF_BRIDGE_SF_* tuning variables.
    Refuses an out-of-date schema (run `sf-bridge db upgrade`). SIGTERM drains in-flight
    work and exits within 30 s.
    """
    from sf_bridge.config import get_settings
    from sf_bridge.runner import WorkerProcess

    overrides = {
        "database_url": database_url,
        "mappings_dir": mappings,
        "sf_login_url": login_url,
        "sf_channel": channel,
        "sf_api_version": api_version,
        "sweep_interval_seconds": sweep_interval,
        "worker_concurrency": concurrency,
    }
    settings = get_settings().model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    if not WorkerProcess(settings).run_until_signalled():
        raise typer.Exit(1)
