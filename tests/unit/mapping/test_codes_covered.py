"""Every stable code has a test that triggers it, and docs/mappings.md explains it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sf_bridge.mapping import MappingIssue
from sf_bridge.mapping.codes import CHECK_CODES, ENGINE_CODES, mapping_error
from tests.fixtures.mapping import REPO_ROOT

TESTS = Path(__file__).parent


def quoted_in(*names: str) -> str:
    return "\n".join((TESTS / name).read_text() for name in names)


def test_every_check_code_is_triggered_in_a_test() -> None:
    text = quoted_in("test_check.py", "test_live.py", "test_terms_check.py")
    assert sorted(c for c in CHECK_CODES if f'"{c}"' not in text) == []


def test_every_engine_code_is_triggered_in_a_test() -> None:
    text = quoted_in("test_engine.py", "test_terms_engine.py")
    assert sorted(c for c in ENGINE_CODES if f'"{c}"' not in text) == []


def test_every_code_is_documented() -> None:
    docs = (REPO_ROOT / "docs" / "mappings.md").read_text()
    missing = sorted(c for c in {**CHECK_CODES, **ENGINE_CODES} if f"`{c}`" not in docs)
    assert missing == []


def test_unknown_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown mapping check code"):
        MappingIssue("f.yaml", 1, 1, "made_up", "m")
    with pytest.raises(ValueError, match="unknown mapping error code"):
        mapping_error("made_up", "m", "h")
