"""`make` installs every part of the repository at the versions constraints.txt pins, and
installs again when a pyproject file or the constraints change."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECTS = ("pyproject.toml", "packages/client/pyproject.toml", "packages/sandbox/pyproject.toml")
OURS = {"sf-bridge", "sf-bridge-client", "sf-bridge-sandbox"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line.strip())
        assert match, f"constraints.txt: {line!r} is not name==version"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_constraints_pin_every_declared_dependency_and_tool() -> None:
    pins = _pins()
    declared: set[str] = set()
    for path in PYPROJECTS:
        project = tomllib.loads((REPO_ROOT / path).read_text())["project"]
        requirements = list(project["dependencies"])
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        declared |= {canonicalize_name(Requirement(r).name) for r in requirements}
    unpinned = sorted(declared - OURS - set(pins))
    assert not unpinned, f"run `make lock`: constraints.txt does not pin {unpinned}"
    assert {"pip", "setuptools"} <= set(pins)
    assert not OURS & set(pins), "the repository's own distributions are installed editable"


def test_the_three_distributions_share_one_version() -> None:
    versions = {
        tomllib.loads((REPO_ROOT / path).read_text())["project"]["version"] for path in PYPROJECTS
    }
    assert len(versions) == 1, f"the three distributions disagree on their version: {versions}"
    main = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    sandbox = tomllib.loads((REPO_ROOT / PYPROJECTS[2]).read_text())["project"]
    (version,) = versions
    assert f"sf-bridge-client=={version}" in main["dependencies"]
    assert f"sf-bridge=={version}" in sandbox["dependencies"]


def _dry_run(copy: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
    dry = subprocess.run(
        ["make", "-n", "test"], cwd=copy, env=env, capture_output=True, text=True, check=False
    )
    assert dry.returncode == 0, dry.stderr
    return dry.stdout


def test_make_installs_all_parts_pinned_and_again_when_an_input_changes(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    copy = tmp_path / "sf-bridge"
    for name in ["Makefile", *PYPROJECTS, "constraints.txt"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, copy / name)

    fresh = _dry_run(copy)
    install = [line for line in fresh.splitlines() if "pip install" in line]
    assert any("--upgrade pip" in line for line in install), fresh
    (parts,) = [line for line in install if "--upgrade pip" not in line]
    assert "-c constraints.txt" in parts
    for part in ("-e ./packages/client", "-e '.[dev]'", "-e ./packages/sandbox"):
        assert part in parts, parts

    stamp = copy / ".venv" / ".installed"
    stamp.parent.mkdir()
    stamp.touch()
    inputs_time = stamp.stat().st_mtime - 60
    for name in [*PYPROJECTS, "constraints.txt"]:
        os.utime(copy / name, (inputs_time, inputs_time))
    assert "pip install" not in _dry_run(copy)
    for name in [*PYPROJECTS, "constraints.txt"]:
        os.utime(copy / name, (inputs_time + 120, inputs_time + 120))
        assert "pip install" in _dry_run(copy), f"a newer {name} does not reinstall"
        os.utime(copy / name, (inputs_time, inputs_time))
