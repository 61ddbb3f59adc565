"""`sf-bridge deals cancel` and `deals keep` as RevOps run them on a deal no longer won."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker
from typer.testing import CliRunner

from sf_bridge.cli import app
from sf_bridge.config import get_settings
from sf_bridge.db.models import Deal, DealEvent, EntitlementGrant
from sf_bridge.provisioning.store import mark_unwon

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "opportunities" / "enterprise-negotiated.json"
OPP = "006Hs00001AcmeYQIA"


def _run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def _factory() -> sessionmaker[Any]:
    return sessionmaker(create_engine(get_settings().database_url))


def test_deals_cancel_voids_cancels_revokes_and_records_who(cli_stripe: Any) -> None:
    emu = cli_stripe
    assert _run("provision", "--file", str(EXAMPLE)).exit_code == 0
    factory = _factory()
    with factory() as session, session.begin():
        assert mark_unwon(session, [OPP], reason="Moved to Closed Lost.", source="test") == [OPP]

    refused = _run("deals", "keep", OPP)  # not parked yet: the policy has not run
    assert refused.exit_code == 0, refused.output  # `unwon` can be kept directly
    assert "kept as provisioned" in refused.output
    with factory() as session, session.begin():
        mark_unwon(session, [OPP], reason="Moved to Closed Lost.", source="test")

    result = _run("deals", "cancel", OPP, "--reason", "lost to a competitor", "--by", "ana")
    assert result.exit_code == 0, result.output
    assert "cancelled" in result.output
    assert "step None" not in result.output  # a cancelled deal has no step left to name
    assert "step None" not in _run("deals", "show", OPP).output
    [invoice] = emu.objects("invoice")
    [subscription] = emu.objects("subscription")
    assert invoice["status"] == "void"
    assert subscription["status"] == "canceled"
    with factory() as session:
        deal = session.scalars(select(Deal).where(Deal.opportunity_id == OPP)).one()
        assert deal.status == "cancelled"
        grants = session.scalars(
            select(EntitlementGrant).where(EntitlementGrant.deal_id == deal.id)
        ).all()
        assert grants
        assert not any(g.active for g in grants)
        messages = session.scalars(
            select(DealEvent.message).where(DealEvent.deal_id == deal.id)
        ).all()
    assert any("requested by ana: lost to a competitor" in m for m in messages)
    assert any(m.startswith("Kept as provisioned by") for m in messages)

    again = _run("deals", "cancel", OPP)
    assert again.exit_code == 0, again.output
    assert "nothing to cancel" in again.output
    keep = _run("deals", "keep", OPP)
    assert keep.exit_code != 0
    assert "not parked as no longer won" in keep.output
