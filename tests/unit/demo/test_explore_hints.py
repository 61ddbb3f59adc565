"""The commands `sf-bridge demo --keep-running` prints to explore what it left running can be
pasted into any shell (another terminal, another directory): they name `sf-bridge`, and the
first line sets what they need (the demo's settings, and PATH when the shell would not find
this sf-bridge), never an absolute path to a Python in each command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sf_bridge.demo.driver import explore_lines


def _fake_venv(root: Path, *, script: bool = True) -> Path:
    """A venv's bin with a `python` and (unless `script` is False) an `sf-bridge` that say
    what they were asked and with which settings."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", *(["sf-bridge"] if script else [])):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "{name} $* db=$DATABASE_URL"\n')
        path.chmod(0o755)
    return bin_dir


def _lines(tmp_path: Path) -> list[str]:
    env_file = tmp_path / "work" / "demo.env"
    env_file.parent.mkdir()
    env_file.write_text("DATABASE_URL=sqlite:///demo.db\n")
    return explore_lines(
        env_file=env_file,
        workdir=env_file.parent,
        api_url="http://127.0.0.1:8123",
        deal_id="006000000000001AAA",
        account_id="001000000000001AAA",
        preview_id="006000000000002AAA",
    )


def _paste(lines: list[str], cwd: Path, path: str) -> str:
    """Runs the setup line and the `deals` line in a fresh shell, as a user pasting them."""
    deals = next(line for line in lines if line.endswith(" deals"))
    result = subprocess.run(
        ["/bin/sh", "-c", f"{lines[0]}\n{deals}"],
        cwd=cwd,
        env={"PATH": path, "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("script", [True, False])
def test_the_commands_run_from_another_directory_without_the_venv_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: bool
) -> None:
    bin_dir = _fake_venv(tmp_path / "checkout", script=script)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.chdir(tmp_path / "checkout")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    lines = _lines(tmp_path)
    commands = [line for line in lines[1:] if not line.startswith("#")]
    assert all(str(bin_dir) not in line for line in commands), commands
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    expected = "sf-bridge deals" if script else "python -m sf_bridge deals"
    assert _paste(lines, elsewhere, "/usr/bin:/bin") == f"{expected} db=sqlite:///demo.db"


def test_plain_sf_bridge_when_the_shell_finds_this_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = _fake_venv(tmp_path / "checkout")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    lines = _lines(tmp_path)
    assert "PATH" not in lines[0]
    assert "  sf-bridge deals" not in lines  # the driver indents; the lines themselves do not
    assert "sf-bridge deals" in lines
    assert all(str(bin_dir) not in line for line in lines)
