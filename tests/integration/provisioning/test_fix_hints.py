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
