"""sf-bridge deals / deals show / replay / provision (placeholder until its issue lands)."""

from sf_bridge.cli import app, deals_app, not_yet_available


@deals_app.callback()
def deals() -> None:
    """State of every deal."""
    not_yet_available("deals")


@app.command("replay")
def replay() -> None:
    """Re-runs failed deals from where they stopped."""
    not_yet_available("replay")
