"""One record, one key: the 15- and 18-character forms of a Salesforce id name the same deal
and the same customer at every command that takes an id (`provision --file`, `deals show`,
`replay`, `invoices mark-paid`, `mappings preview`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.crm.soql import to_18
from sf_bridge.db.engine import make_engine, make_session_factory
from sf_bridge.db.models import Customer, Deal
from sf_bridge.provisioning.queue import enqueue_opportunities, enqueue_snapshot
from sf_bridge.provisioning.replay import find_deal

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "opportunities" / "enterprise-negotiated.json"
OPP_15 = "006Hs00001AcmeY"
ACCOUNT_15 = "001Hs00002AcmeC"
OPP_18 = to_18(OPP_15)
ACCOUNT_18 = to_18(ACCOUNT_15)


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _opportunity_file(tmp_path: Path, name: str, opp_id: str, account_id: str) -> Path:
    """The example deal under the given ids (as a report or a URL would show them)."""
    record = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    record["Id"] = opp_id
    record["AccountId"] = account_id
    record["Account"]["Id"] = account_id
    path = tmp_path / name
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def _rows(db_url: str) -> tuple[list[Deal], list[Customer]]:
    engine = make_engine(db_url)
    try:
        with make_session_factory(engine)() as session:
            deals = list(session.scalars(select(Deal)))
            customers = list(session.scalars(select(Customer)))
            session.expunge_all()
            return deals, customers
    finally:
        engine.dispose()


def test_the_queue_keys_both_forms_by_the_18_character_id(
    session_factory: sessionmaker[Session],
) -> None:
    record = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    with session_factory() as session, session.begin():
        first = enqueue_snapshot(session, {**record, "Id": OPP_18}, source="file")
    with session_factory() as session, session.begin():
        again = enqueue_snapshot(
            session, {**record, "Id": OPP_15, "AccountId": ACCOUNT_15}, source="file"
        )
        assert again.id == first.id
        assert enqueue_opportunities(session, [OPP_15, OPP_18.lower()], source="stream") == []
        assert find_deal(session, OPP_15).id == first.id
        assert find_deal(session, f" {OPP_18.lower()} ").id == first.id
    with session_factory() as session:
        assert session.scalars(select(Deal.opportunity_id)).all() == [OPP_18]


def test_a_15_character_id_names_the_deal_provisioned_under_its_18_character_form(
    cli_stripe: Any, sqlite_url: str, tmp_path: Path
) -> None:
    emu = cli_stripe
    long_form = _opportunity_file(tmp_path, "long.json", OPP_18, ACCOUNT_18)
    short_form = _opportunity_file(tmp_path, "short.json", OPP_15, ACCOUNT_15)

    first = _run("provision", "--file", str(long_form))
    assert first.exit_code == 0, first.output
    assert f"({OPP_18}): done" in first.output

    again = _run("provision", "--file", str(short_form))
    assert again.exit_code == 0, again.output
    assert f"({OPP_18}): done" in again.output

    assert emu.count("customer") == 1
    assert emu.count("subscription") == 1
    assert emu.count("invoice") == 1
    deals, customers = _rows(sqlite_url)
    assert [d.opportunity_id for d in deals] == [OPP_18]
    assert [d.account_id for d in deals] == [ACCOUNT_18]
    assert [c.sf_account_id for c in customers] == [ACCOUNT_18]

    story = _run("deals", "show", OPP_15)
    assert story.exit_code == 0, story.output
    assert OPP_18 in story.output

    replayed = _run("replay", OPP_15)
    assert replayed.exit_code == 0, replayed.output
    assert "already done; nothing to replay" in replayed.output

    paid = _run("invoices", "mark-paid", OPP_15)
    assert paid.exit_code == 0, paid.output
    assert OPP_18 in paid.output


def test_a_first_deal_given_with_15_character_ids_is_stored_under_the_18_character_form(
    cli_stripe: Any, sqlite_url: str, tmp_path: Path
) -> None:
    emu = cli_stripe
    short_form = _opportunity_file(tmp_path, "short.json", OPP_15, ACCOUNT_15)
    result = _run("provision", "--file", str(short_form))
    assert result.exit_code == 0, result.output
    assert f"({OPP_18}): done" in result.output
    deals, customers = _rows(sqlite_url)
    assert [d.opportunity_id for d in deals] == [OPP_18]
    assert [c.sf_account_id for c in customers] == [ACCOUNT_18]
    [customer] = emu.objects("customer")
    assert customer["metadata"]["sf_account_id"] == ACCOUNT_18
    [subscription] = emu.objects("subscription")
    assert subscription["metadata"]["sf_opportunity_id"] == OPP_18


@pytest.mark.parametrize(
    ("command", "bad_id"),
    [
        (("deals", "show"), "006Hs00001Acme"),
        (("replay",), "006Hs00001AcmeY-x"),
        (("invoices", "mark-paid"), "006Hs00001AcmeYQIAX"),
    ],
)
def test_a_malformed_id_is_refused_saying_what_an_id_looks_like(
    cli_stripe: Any, command: tuple[str, ...], bad_id: str
) -> None:
    result = _run(*command, bad_id)
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert repr(bad_id) in text
    assert "15 or 18 letters and digits" in text


def test_a_file_with_a_malformed_id_is_refused_saying_what_an_id_looks_like(
    cli_stripe: Any, tmp_path: Path
) -> None:
    bad = _opportunity_file(tmp_path, "bad.json", "006Hs00001Acme!", ACCOUNT_18)
    result = _run("provision", "--file", str(bad))
    assert result.exit_code != 0
    text = " ".join(result.output.split())
    assert "'006Hs00001Acme!'" in text
    assert "15 or 18 letters and digits" in text
    bad_account = _opportunity_file(tmp_path, "bad-account.json", OPP_18, "001-Acme")
    result = _run("provision", "--file", str(bad_account))
    assert result.exit_code != 0
    assert "'001-Acme'" in " ".join(result.output.split())
    assert cli_stripe.count("customer") == 0
