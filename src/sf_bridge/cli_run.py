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
    transport: str = typer.Option(
        None,
        "--transport",
        envvar="SF_TRANSPORT",
        help="cometd (Streaming API, the default) or pubsub (Pub/Sub API)",
    ),
    api_version: str = typer.Option(
        None,
        "--api-version",
        envvar="SF_API_VERSION",
        help="Salesforce API version",
    ),
    sweep_interval: str = typer.Option(
        None,
        "--sweep-interval",
        envvar="SF_BRIDGE_SWEEP_INTERVAL",
        metavar="SECONDS",
        help="Seconds between catch-up sweeps",
    ),
    concurrency: str = typer.Option(
        None,
        "--concurrency",
        envvar="SF_BRIDGE_WORKER_CONCURRENCY",
        metavar="N",
        help="Deals provisioned at once",
    ),
    no_salesforce: bool = typer.Option(
        False,
        "--no-salesforce",
        help="Run without Salesforce on purpose: no stream, sweep, fetch or write-back; only "
        "deals enqueued by `sf-bridge provision --file` are provisioned. Without it, missing "
        "Salesforce credentials refuse the start.",
    ),
) -> None:
    """The long-running worker: stream + sweep + provision + overdue policy.

    Also reads SF_USERNAME, SF_PASSWORD, SF_SECURITY_TOKEN, SF_CLIENT_ID, SF_CLIENT_SECRET,
    STRIPE_API_KEY, STRIPE_API_BASE, SF_BRIDGE_WORKER_POLL, SF_BRIDGE_OVERDUE_INTERVAL and
    the SF_BRIDGE_STREAM_* / SF_BRIDGE_SWEEP_* / SF_BRIDGE_SF_* tuning variables.
    Refuses to start (exit 2, saying what to fix) on a setting with a wrong value, an
    unreachable database, an out-of-date schema (run `sf-bridge db upgrade`), mapping files
    that do not check clean, or missing Salesforce credentials (unless --no-salesforce).
    Mapping edits are taken while it runs; one that does not check clean is refused and the
    last good mappings stay in use. SIGTERM drains in-flight work and exits within 30 s.
    """
    from sf_bridge.config import get_settings
    from sf_bridge.worker_process import RunOptions, WorkerProcess

    settings = get_settings().with_overrides(
        flags=FLAGS,
        database_url=database_url,
        mappings_dir=mappings,
        sf_login_url=login_url,
        sf_transport=transport,
        sf_channel=channel,
        sf_api_version=api_version,
        sweep_interval_seconds=sweep_interval,
        worker_concurrency=concurrency,
    )
    options = RunOptions.from_settings(settings, salesforce=not no_salesforce)
    if not WorkerProcess(settings, options).run_until_signalled():
        raise typer.Exit(1)


FLAGS = {
    "database_url": "--database-url",
    "mappings_dir": "--mappings",
    "sf_login_url": "--login-url",
    "sf_transport": "--transport",
    "sf_channel": "--channel",
    "sf_api_version": "--api-version",
    "sweep_interval_seconds": "--sweep-interval",
    "worker_concurrency": "--concurrency",
}
