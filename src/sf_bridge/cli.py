"""The `sf-bridge` command line. Commands live in `cli_*.py` modules, one area each.

Every command reads its configuration from the environment (see `sf_bridge.config`); options
mirror the variables and `--help` names them. Failures print the cause chain, not a traceback,
and exit non-zero.
"""

from __future__ import annotations

import functools
import inspect
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


def _flowed(paragraph: str) -> str:
    """One paragraph of a docstring as one line: `--help` wraps it to the terminal."""
    if paragraph.startswith("\b"):  # click's mark for a paragraph kept as written
        return paragraph
    return " ".join(line.strip() for line in paragraph.splitlines())


def _help_paragraphs_flow() -> None:
    """Command docstrings are wrapped at the source's line length. Typer joins the lines of a
    command's first paragraph but keeps the line breaks of the paragraphs after it, and of the
    summary in a group's list of commands, so `--help` broke sentences in the middle ("Reads"
    at the end of one line, "DATABASE_URL." alone on the next): join them as well."""
    from typer import rich_utils

    original_fix = rich_utils._fix_linebreaks
    if getattr(original_fix, "sf_bridge_flow", False):
        return
    original_command_help = rich_utils._make_command_help

    def fix_linebreaks(paragraphs: list[str], markup_mode: Any) -> str:
        return original_fix([_flowed(p) for p in paragraphs], markup_mode)

    def make_command_help(*, help_text: str, markup_mode: Any) -> Any:
        first, *rest = inspect.cleandoc(help_text).split("\n\n")
        text = "\n\n".join([_flowed(first), *rest])
        return original_command_help(help_text=text, markup_mode=markup_mode)

    fix_linebreaks.sf_bridge_flow = True  # type: ignore[attr-defined]
    rich_utils._fix_linebreaks = fix_linebreaks
    rich_utils._make_command_help = make_command_help


_flags_take_no_value()
_help_paragraphs_flow()

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
