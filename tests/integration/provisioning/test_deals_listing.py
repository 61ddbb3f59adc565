"""`sf-bridge deals` names the opportunity and account and gives the error code (and why a
deal was skipped); `deals show` gives the invoice amount and says each error once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import get_settings
from sf_bridge.db.models import Deal

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "opportunities"


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_deals_list_names_and_error_codes_and_show_says_each_error_once(
    cli_stripe: Any, tmp_path: Path
) -> None:
    _run("provision", "--file", str(EXAMPLES / "unknown-product.json"))
    _run("provision", "--file", str(EXAMPLES / "team-self-serve.json"))
    old = json.loads((EXAMPLES / "team-self-serve.json").read_text())
    old.update(Id="006Hs00001OldeTQIA", Name="Oldtimer AG - Team", CloseDate="2020-01-02")
    (tmp_path / "old.json").write_text(json.dumps(old))
    engine = create_engine(get_settings().database_url)
    _run("provision", "--file", str(tmp_path / "old.json"))
    with Session(engine) as session, session.begin():  # as the floor would have judged it
        session.execute(
            update(Deal)
            .where(Deal.opportunity_id == "006Hs00001OldeTQIA")
            .values(status="skipped", last_error_code="before_floor",
                    last_error="Won before the provisioning floor: its Close Date 2020-01-02")
        )  # fmt: skip
    engine.dispose()

    listing = _run("deals")
    assert listing.exit_code == 0, listing.output
    text = listing.stdout
    for expected in (
        "Echo Labs -",  # opportunity name
        "Bluebird GmbH",  # account name
        "unknown_product",  # the mapping error's code
        "SB-SUPPORT-PREMIUM",  # what differs, not the words every mapping error starts with
        "before_floor",
        "Won before the provisioning",
    ):
        assert expected in text, expected
    assert "The deal does not map onto the catalog" not in text

    parked = _run("deals", "show", "006Hs00001EchoUQIA")
    assert parked.exit_code == 0, parked.output
    assert "unknown_product" in parked.stdout
    assert parked.stdout.count("is not in the mapping") == 1
    assert "the same error as above" in parked.stdout

    done = _run("deals", "show", "006Hs00001BlueTQIA")
    assert done.exit_code == 0, done.output
    # 12 seats x 14.00 + 1 sandbox x 230.00, as the Opportunity's lines say.
    assert "amount due    398.00 EUR" in done.stdout
    assert "Bluebird GmbH (001Hs00002BlueGAAQ)" in done.stdout
