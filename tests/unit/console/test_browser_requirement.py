"""Without Chromium the browser tests skip saying what to install, except under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.console import require_browser


def test_missing_chromium_skips_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception) as info:
        require_browser(tmp_path / "chromium", Path("/bin/sh"))
    assert "apt-get install -y chromium chromium-driver" in str(info.value)
    assert str(tmp_path / "chromium") in str(info.value)


def test_missing_chromium_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception) as info:
        require_browser(Path("/bin/sh"), tmp_path / "chromedriver")
    assert "chromium-driver" in str(info.value)


def test_present_browser_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "1")
    require_browser(Path("/bin/sh"), Path("/bin/sh"))
