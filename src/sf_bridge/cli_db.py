"""`sf-bridge db upgrade`."""

from __future__ import annotations

import typer

from sf_bridge.cli import db_app, handle_errors
from sf_bridge.config import get_settings


@db_app.command("upgrade")
@handle_errors
def upgrade(
    database_url: str = typer.Option(
        None, envvar="DATABASE_URL", help="SQLAlchemy URL", show_default=False
    ),
) -> None:
    """Applies pending schema migrations (safe to run on every release)."""
    from sf_bridge.db import migrate

    url = (
        get_settings()
        .with_overrides(flags={"database_url": "--database-url"}, database_url=database_url or None)
        .database_url
    )
    migrate.upgrade(url)
    typer.echo(f"database schema is at revision {migrate.head_revision()}")
