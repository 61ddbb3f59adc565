"""The client keys customers exactly as sf-bridge does, with its own copy of the id rule."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sf_bridge.crm.ids import maybe_record_id as server_form
from sf_bridge_client.record_ids import maybe_record_id as client_form

ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def test_known_account_id_in_both_forms() -> None:
    assert client_form("001Hs00001AcmeY") == "001Hs00001AcmeYIAR"
    assert client_form(" 001hs00001acmeyiar ") == "001Hs00001AcmeYIAR"
    assert client_form("42") == "42"  # sf-bridge's own customer number stays as given


@given(st.text(ALNUM, min_size=15, max_size=15))
def test_fifteen_character_ids_match_the_server(id15: str) -> None:
    assert client_form(id15) == server_form(id15)
    assert client_form(client_form(id15).lower()) == server_form(server_form(id15).lower())


@given(st.text(ALNUM + " -_", min_size=0, max_size=20))
def test_any_reference_matches_the_server(value: str) -> None:
    assert client_form(value) == server_form(value)
