"""sf-bridge mappings check / preview (placeholder until its issue lands)."""

from sf_bridge.cli import mappings_app, not_yet_available


@mappings_app.command("check")
def check(directory: str = "mappings") -> None:
    """Validates mapping files; exit 1 on any error."""
    not_yet_available("mappings check")


@mappings_app.command("preview")
def preview() -> None:
    """What a deal would provision, changing nothing."""
    not_yet_available("mappings preview")
