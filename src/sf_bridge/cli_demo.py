"""sf-bridge demo (placeholder until its issue lands)."""

from sf_bridge.cli import app, not_yet_available


@app.command("demo")
def demo() -> None:
    """Runs the whole product locally on sample deals; no credentials needed."""
    not_yet_available("demo")
