"""Fix hints point the right way: a wrong invoice id is about the id, not the mapping; a
negative grace period is refused as a usage error naming the option; on/off flags do not
look as if they took a value in --help."""

from __future__ import annotations

from typing import Any

from typer.testing import CliRunner

from sf_bridge.cli import app


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_mark_paid_of_an_unknown_invoice_says_to_check_the_id(cli_stripe: Any) -> None:
    result = _run("invoices", "mark-paid", "in_doesnotexist")
    assert result.exit_code == 1
    assert "in_doesnotexist" in result.output
    assert "check the invoice id" in result.output
    assert "mapping" not in result.output


def test_a_negative_grace_period_is_a_usage_error_not_a_traceback(cli_stripe: Any) -> None:
    result = _run("invoices", "overdue", "--grace-days", "-40")
    assert result.exit_code == 2
    assert "--grace-days" in result.output
    assert "greater than or equal to 0" in result.output
    assert "ValueError" not in result.output


def test_flags_show_no_value_in_help() -> None:
    for command in (["invoices", "overdue"], ["replay"], ["reconcile"], ["deals"]):
        result = _run(*command, "--help")
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, command
    assert "<int" in _run("invoices", "overdue", "--help").output  # a value still shows its type


def test_help_keeps_sentences_whole() -> None:
    """Docstrings are wrapped in the source; --help wraps them to the terminal instead, in a
    command's own help and in its group's list of commands."""
    runner = CliRunner(env={"COLUMNS": "250"})
    cancel = runner.invoke(app, ["deals", "cancel", "--help"]).output
    assert (
        "Reads DATABASE_URL, SF_BRIDGE_MAPPINGS, STRIPE_API_KEY, STRIPE_API_BASE and the SF_*"
        in cancel
    )
    deals = runner.invoke(app, ["deals", "--help"]).output
    assert "Stripe ids and links. Reads DATABASE_URL." in deals
    sandbox = runner.invoke(app, ["sandbox", "--help"]).output
    assert (
        "Opportunity, line items with their prices, discounts and service dates) and moves"
        in sandbox
    )


def _commands(command: Any, path: tuple[str, ...] = ()) -> Any:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_no_help_text_is_taken_for_markup() -> None:
    """--help renders help texts as Rich markup: a `[env: X]` in one is a tag, and vanishes."""
    import re

    import typer.main

    swallowed = [
        (" ".join(path), param.name)
        for path, command in _commands(typer.main.get_command(app))
        for param in command.params
        if re.search(r"\[[A-Za-z]", getattr(param, "help", None) or "")
    ]
    assert swallowed == []
    runner = CliRunner(env={"COLUMNS": "250"})
    assert (
        "(default: SF_LOGIN_URL)" in runner.invoke(app, ["sandbox", "close-deal", "--help"]).output
    )
    assert "Default: SF_BRIDGE_MAPPINGS" in runner.invoke(app, ["sandbox", "--help"]).output
