"""`LiveMappings`: the mappings of a running process, following edits of the folder."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sf_bridge.mapping import MappingFilesInvalid, load_mappings
from sf_bridge.mapping import live as live_module
from sf_bridge.mapping.live import LiveMappings
from tests.fixtures.mapping import EXAMPLE_MAPPINGS_DIR, copy_mappings

CAT = "catalog.yaml"


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every reading of a mapping folder by `LiveMappings` (the real reader, counted)."""
    seen: list[Path] = []
    real = live_module.read_folder

    def counted(directory: Path) -> Any:
        seen.append(directory)
        return real(directory)

    monkeypatch.setattr(live_module, "read_folder", counted)
    return seen


def test_a_broken_folder_is_refused_before_any_good_load(tmp_path: Path, reads: list[Path]) -> None:
    folder = copy_mappings(tmp_path / "m", {CAT: [("    unit: users\n", "    unit users\n")]})
    loader = LiveMappings(folder)
    for _ in range(3):
        with pytest.raises(MappingFilesInvalid) as refused:
            loader()
    assert "catalog.yaml:10" in refused.value.user_message()
    assert len(reads) == 1, "an unchanged folder is not read again"


def test_an_invalid_edit_keeps_the_last_good_mappings_until_a_good_one(
    tmp_path: Path, reads: list[Path]
) -> None:
    folder = copy_mappings(tmp_path / "m")
    loader = LiveMappings(folder)
    good = loader()
    assert not loader.status.stale

    catalog = folder / CAT
    text = catalog.read_text()
    catalog.write_text(text[: len(text) // 2])  # a save cut half-way
    with capture_logs() as logs:
        for _ in range(20):
            assert loader() is good
    assert len(reads) == 2, "the refused edit is read once, not at every call"
    status = loader.status
    assert (status.stale, status.version) == (True, good.version)
    assert status.problems
    refused = [e for e in logs if e["event"] == "mappings_edit_refused"]
    assert len(refused) == 1
    assert refused[0]["mapping_version"] == good.version
    assert "last good mappings" in refused[0]["message"]

    catalog.write_text(text.replace("description: People who can sign in.", "description: Users."))
    assert loader() is good, "an edit is noted at one poll and read at the next"
    with capture_logs() as logs:
        taken = loader()
    assert taken.version not in (good.version, "")
    assert (loader.status.stale, loader.status.version) == (False, taken.version)
    assert [e["previous_version"] for e in logs if e["event"] == "mappings_reloaded"] == [
        good.version
    ]

    catalog.write_text(text)  # back to the first content: its version again
    loader()
    assert loader().version == good.version


def test_a_large_file_dropped_in_the_folder_is_not_read(tmp_path: Path, reads: list[Path]) -> None:
    folder = copy_mappings(tmp_path / "m")
    loader = LiveMappings(folder)
    good = loader()
    with (folder / "export.yaml").open("wb") as big:
        big.truncate(50 * 1024 * 1024)
    for _ in range(5):
        assert loader() is good
    assert len(reads) == 2
    [problem] = loader.status.problems
    assert problem.code == "file_too_large"
    assert problem.file == str(folder / "export.yaml")


def test_files_other_than_mappings_do_not_cause_a_reload(tmp_path: Path, reads: list[Path]) -> None:
    folder = copy_mappings(tmp_path / "m")
    loader = LiveMappings(folder)
    loader()
    (folder / "notes.txt").write_text("not a mapping")
    loader()
    assert len(reads) == 1
    assert loader().version == load_mappings(EXAMPLE_MAPPINGS_DIR).version


def cut_inside_products(text: str) -> str:
    """salesforce.yaml as a save cut inside `products:` leaves it: valid YAML, one product."""
    return text[: text.index("products:") + len("products:\n")] + "  SB-TEAM-M: {plan: team}\n"


def test_an_edit_is_taken_only_once_it_is_the_same_on_two_polls(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    loader = LiveMappings(folder)
    good = loader()
    sources = folder / "salesforce.yaml"
    text = sources.read_text()
    sources.write_text(cut_inside_products(text))
    assert loader() is good, "the first poll after a change only notes it"
    sources.write_text(text.replace("# Opportunity fields", "# The Opportunity fields"))
    assert loader() is good, "changed again since the last poll: still a save under way"
    edited = loader()
    assert edited is not good
    assert not loader.status.stale
    assert edited.version == load_mappings(folder).version


def test_an_edit_saved_a_while_ago_is_taken_at_the_first_poll(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path / "m")
    loader = LiveMappings(folder)
    good = loader()
    sources = folder / "salesforce.yaml"
    sources.write_text(sources.read_text() + "# reviewed by RevOps\n")
    saved = time.time() - 2 * live_module.SETTLED_AFTER_SECONDS
    for path in folder.iterdir():
        os.utime(path, (saved, saved))
    edited = loader()
    assert edited is not good
    assert edited.version == load_mappings(folder).version


def test_a_reading_during_which_a_file_changed_is_never_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_mappings(tmp_path / "m")
    loader = LiveMappings(folder)
    good = loader()
    sources = folder / "salesforce.yaml"
    text = sources.read_text()
    real = live_module.read_folder

    def mid_save(directory: Path) -> Any:
        result = real(directory)
        return dataclasses.replace(result, settled=False)

    sources.write_text(cut_inside_products(text))
    monkeypatch.setattr(live_module, "read_folder", mid_save)
    for _ in range(5):
        assert loader() is good
    assert not loader.status.stale, "an unsettled reading is neither taken nor refused"
    monkeypatch.setattr(live_module, "read_folder", real)
    sources.write_text(text)
    loader()
    assert loader().version == good.version
    assert not loader.status.stale


def test_a_folder_changing_at_every_read_at_start_up_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_mappings(tmp_path / "m")
    real = live_module.read_folder
    monkeypatch.setattr(
        live_module, "read_folder", lambda d: dataclasses.replace(real(d), settled=False)
    )
    with pytest.raises(MappingFilesInvalid) as refused:
        LiveMappings(folder)()
    assert [i.code for i in refused.value.issues] == ["files_changing"]
