"""sf-bridge run (placeholder until its issue lands)."""

from sf_bridge.cli import app, not_yet_available


@app.command("run")
def run() -> None:
    """The long-running worker: stream + sweep + provision + overdue policy."""
    not_yet_available("run")
