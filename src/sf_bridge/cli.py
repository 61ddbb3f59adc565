"""The `sf-bridge` command line. Commands live in `cli_*.py` modules, one area each.

Every command reads its configuration from the environment (see `sf_bridge.config`); options
mirror the variables and `--help` names them. Failures print the cause chain, not a traceback,
and exit non-zero.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from sf_bridge.errors import SfBridgeError

F = TypeVar("F", bound=Callable[..., Any])


def _flags_take_no_value() -> None:
    """Typer labels on/off flags `<bool>` in --help, as if they took a value: show no type
    for them (options that take a value keep theirs, such as `<int>`)."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "sf_bridge_flags", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if self.is_flag and not self.count:
            return None
        return original(self, ctx)

    display_type_rich.sf_bridge_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()

app = typer.Typer(
    name="sf-bridge",
    help="Turns Salesforce Closed-Won deals into Stripe billing and product entitlements.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
mappings_app = typer.Typer(help="Check mapping files and preview what a deal would provision.")
deals_app = typer.Typer(
    help="State of every deal; `deals show ID` for one deal's history.",
    invoke_without_command=True,
)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
invoices_app = typer.Typer(help="Invoice actions.", no_args_is_help=True)
app.add_typer(mappings_app, name="mappings")
app.add_typer(deals_app, name="deals")
app.add_typer(db_app, name="db")
app.add_typer(invoices_app, name="invoices")


def describe_error(exc: BaseException) -> str:
    """The cause chain as lines a person can read: outermost first."""
    lines: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = current.user_message() if isinstance(current, SfBridgeError) else str(current)
        lines.append(f"{type(current).__name__}: {text}" if not lines else f"  caused by {text}")
        # `raise ... from None` means the cause was already said in the message
        context = None if current.__suppress_context__ else current.__context__
        current = current.__cause__ or context
    return "\n".join(lines)


def handle_errors(func: F) -> F:
    """Turns exceptions into a readable message and exit code 1 (2 for configuration)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:
            from sf_bridge.errors import ConfigurationError

            typer.secho(f"error: {describe_error(exc)}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2 if isinstance(exc, ConfigurationError) else 1) from None

    return wrapper  # type: ignore[return-value]


def _register_commands() -> None:
    # Each module adds its commands to the apps above when imported.
    from sf_bridge import (  # noqa: F401
        cli_db,
        cli_deals,
        cli_demo,
        cli_invoices,
        cli_mappings,
        cli_reconcile,
        cli_run,
        cli_sandbox,
        cli_serve,
    )


_register_commands()


def main() -> None:
    from sf_bridge.config import get_settings
    from sf_bridge.errors import ConfigurationError
    from sf_bridge.logging import configure_logging

    try:
        settings = get_settings()
        configure_logging(settings.log_format, settings.log_level)
    except ConfigurationError:
        # A wrong setting is reported (exit 2, naming the variable) by the command that reads
        # the settings; `--help` and commands that need none still work.
        configure_logging()
    except Exception as exc:  # a malformed environment must still give a readable error
        typer.secho(f"error: {describe_error(exc)}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    app()
