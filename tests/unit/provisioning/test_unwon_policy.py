"""The `when_unwon` policy as the mapping files give it."""

from __future__ import annotations

import shutil
from pathlib import Path

from sf_bridge.mapping import load_mappings
from sf_bridge.provisioning.unwon import policy_of, review_fix


def _with(tmp_path: Path, source: Path, line: str | None) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(source, target)
    sf = target / "salesforce.yaml"
    text = "\n".join(
        row for row in sf.read_text().splitlines() if not row.startswith("when_unwon:")
    )
    sf.write_text(text + (f"\n{line}\n" if line else "\n"))
    return target


def test_review_is_the_default_and_cancel_is_read(tmp_path: Path, example_mappings_dir: Path):
    assert policy_of(load_mappings(_with(tmp_path / "a", example_mappings_dir, None))) == "review"
    cancel = load_mappings(_with(tmp_path / "b", example_mappings_dir, "when_unwon: cancel"))
    assert cancel.when_unwon == "cancel"
    assert policy_of(cancel) == "cancel"


def test_anything_but_cancel_parks_for_review():
    class Old:  # mappings loaded before the key existed
        pass

    assert policy_of(Old()) == "review"


def test_the_fix_names_both_commands():
    fix = review_fix(7)
    assert "sf-bridge deals cancel 7" in fix
    assert "sf-bridge deals keep 7" in fix
