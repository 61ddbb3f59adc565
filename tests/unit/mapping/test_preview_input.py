"""What `mappings preview --file` accepts: one record, a list, or a whole query response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sf_bridge.cli_mappings import _records_from_file
from sf_bridge.errors import ConfigurationError
from tests.fixtures.mapping import read_example_opportunity


@pytest.mark.parametrize("shape", ["record", "list", "query"])
def test_accepted_shapes(tmp_path: Path, shape: str) -> None:
    records = [
        read_example_opportunity("team-self-serve"),
        read_example_opportunity("custom-contract"),
    ]
    body = {
        "record": records[0],
        "list": records,
        "query": {"totalSize": 2, "done": True, "records": records},
    }[shape]
    path = tmp_path / "opp.json"
    path.write_text(json.dumps(body))
    found = _records_from_file(path)
    assert found == (records[:1] if shape == "record" else records)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "holds no opportunity record"),
        ("[1]", "holds no"),
    ],
)
def test_refused_files_say_what_to_do(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "opp.json"
    path.write_text(content)
    with pytest.raises(ConfigurationError) as raised:
        _records_from_file(path)
    assert fragment in raised.value.user_message()
    assert "Fix:" in raised.value.user_message()
