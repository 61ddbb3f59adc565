"""`sf-bridge demo`: the whole product on sample deals, with no credentials and no network."""

from __future__ import annotations

from pathlib import Path

import typer

from sf_bridge.cli import app, handle_errors


@app.command("demo")
@handle_errors
def demo(
    mappings: Path = typer.Option(
        Path("mappings"),
        "--mappings",
        help="Example mapping folder the demo copies and uses (the repository's `mappings/`).",
    ),
    keep_running: bool = typer.Option(
        False,
        "--keep-running",
        help="Leave the sandbox org, Stripe emulator, worker and API up to explore; Ctrl-C stops.",
    ),
    timeout: float = typer.Option(
        45.0, "--timeout", help="Seconds to wait for the deals to settle before failing."
    ),
    transport: str = typer.Option(
        "cometd",
        "--transport",
        help="How the worker receives Salesforce events: cometd (Streaming API) or pubsub "
        "(Pub/Sub API, gRPC); the sandbox org serves both.",
    ),
) -> None:
    """Runs the whole product locally on sample deals; no credentials needed.

    Starts the sandbox Salesforce org and the Stripe emulator on loopback, a fresh SQLite
    database in a temporary folder, the worker (`sf-bridge run`) and the API (`sf-bridge
    serve`); closes sample deals in the org, shows them being provisioned, checks the result
    in the database, Stripe, the entitlement API and Salesforce, then fixes the mapping of the
    parked deal and replays it. Exit 0 when every expectation held, 1 otherwise. Reads none of
    the usual environment variables: everything it talks to is started by the demo itself.
    """
    from sf_bridge.cli_sandbox_install import require_sandbox
    from sf_bridge.errors import ConfigurationError

    require_sandbox("demo")
    from sf_bridge.demo import DemoOptions, run_demo

    if not mappings.is_dir() or not any(mappings.glob("*.yaml")):
        raise ConfigurationError(
            f"No mapping files in {mappings.resolve()}.",
            hint="run the demo from the repository root, or pass --mappings PATH/TO/mappings.",
        )
    if transport not in ("cometd", "pubsub"):
        raise ConfigurationError(
            f"--transport {transport!r} is not a transport.", hint="use cometd or pubsub."
        )
    code = run_demo(
        DemoOptions(mappings, keep_running=keep_running, timeout=timeout, transport=transport)
    )
    raise typer.Exit(code)
