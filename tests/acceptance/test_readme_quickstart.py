"""The README's quickstart, taken from the README itself, works in a fresh copy of the
repository; and the README documents every setting and links only to files that exist.

`make demo` runs for real in the copy. To keep the suite fast the copy gets a `.venv` whose
contents are those of the already-installed environment, with a fresh install stamp; the test
first asks make (`-n`) to prove it would not reinstall. `make test` is not run from inside the
suite (it would run this test again): the test checks that the Makefile target exists, runs
pytest, and is what CI runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sf_bridge.config import Settings, section_of

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"


def quickstart_commands() -> list[str]:
    """The commands of the README's first code block, which must come before any section."""
    text = README.read_text()
    match = re.search(r"```[a-z]*\n(.*?)```", text, re.S)
    assert match, "README.md has no code block"
    before = text[: match.start()]
    assert "\n## " not in before, "the quickstart must be at the very top of README.md"
    commands = []
    for line in match.group(1).splitlines():
        command = line.split("#", 1)[0].strip()
        if command:
            commands.append(command)
    return commands


def test_quickstart_is_the_two_make_commands() -> None:
    assert quickstart_commands() == ["make demo", "make test"]


def test_make_test_is_what_ci_runs_and_runs_pytest() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip()]
    assert commands[-1] == "make test", "CI's last command must be the README's `make test`"
    dry = subprocess.run(
        ["make", "-n", "test", "VENV=.venv"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert re.search(r"python -m pytest\b", dry.stdout), dry.stdout


def _repository_files() -> list[str]:
    """Files a fresh clone would have, as they are in the work tree now (tracked or new)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def _fresh_copy(target: Path) -> None:
    for name in _repository_files():
        source = REPO_ROOT / name
        if not source.is_file():
            continue  # listed but deleted in the work tree
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def _installed_venv(copy: Path) -> Path:
    """`.venv` in the copy with the installed environment's contents and a fresh stamp."""
    real = Path(sys.prefix)
    venv = copy / ".venv"
    venv.mkdir()
    for entry in real.iterdir():
        if entry.name != ".installed":
            (venv / entry.name).symlink_to(entry)
    (venv / ".installed").touch()
    return venv


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quickstart_demo_runs_in_a_fresh_copy(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if not (Path(sys.prefix) / "bin" / "sf-bridge").exists():
        pytest.skip("the suite is not running from an installed virtualenv")
    copy = tmp_path / "sf-bridge"
    _fresh_copy(copy)
    assert not (copy / ".venv").exists(), "a fresh copy has no virtualenv"
    _installed_venv(copy)

    demo = [c for c in quickstart_commands() if "demo" in c]
    assert demo == ["make demo"]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SF_", "STRIPE_", "MAKE")) and k not in {"DATABASE_URL", "PORT"}
    }
    # The copy's own sources come first, ahead of the installed (editable) checkout.
    env["PYTHONPATH"] = str(copy / "src")
    env["COLUMNS"] = "200"

    dry = subprocess.run(
        [*demo[0].split(), "-n"], cwd=copy, env=env, capture_output=True, text=True, check=False
    )
    assert dry.returncode == 0, dry.stderr
    assert "pip install" not in dry.stdout, f"make would reinstall:\n{dry.stdout}"
    assert "sf-bridge demo" in dry.stdout

    result = subprocess.run(
        demo[0].split(), cwd=copy, env=env, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pip install" not in result.stdout + result.stderr
    assert "DEMO OK" in result.stdout
    assert str(copy / "mappings") in result.stdout, "the demo used the copy's mappings"


def _documented_variables() -> set[str]:
    """Names in the first column of the README's configuration table."""
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    first_cells = re.findall(r"^\|([^|]+)\|", section, re.M)
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", cell)}


def _operations_guide_variables() -> set[str]:
    """Settings named in docs/operations.md: sf-bridge's own variables and the README's."""
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    named = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", guide))
    return {n for n in named if n.startswith(SETTING_PREFIXES) or n in _documented_variables()}


SETTING_PREFIXES = ("SF_BRIDGE_", "SF_", "STRIPE_")
NOT_SETTINGS = {"SF_BRIDGE_TEST_DATABASE_URL"}  # the test suite's, not sf-bridge's


def test_readme_documents_every_setting() -> None:
    read = {variable for variable, _ in Settings.variables()} - _tuning_variables()
    missing = read - _documented_variables()
    assert not missing, f"README.md's configuration table misses {sorted(missing)}"


def _tuning_variables() -> set[str]:
    return {
        str(field.alias)
        for info in Settings.model_fields.values()
        if (section := section_of(info)) is not None
        for field in section.model_fields.values()
    }


def test_operations_guide_documents_every_tuning_variable() -> None:
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    tuning = guide.split("## Tuning", 1)[1]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", tuning))
    missing = _tuning_variables() - documented
    assert not missing, f"docs/operations.md's tuning table misses {sorted(missing)}"


def test_every_documented_variable_is_a_setting_and_every_setting_is_documented() -> None:
    """The one settings class and the docs name the same variables: none documented that
    nothing reads, none read that no page explains."""
    read = {variable for variable, _ in Settings.variables()}
    documented = (_documented_variables() | _operations_guide_variables()) - NOT_SETTINGS
    assert documented - read == set(), "documented but not read"
    assert read - documented == set(), "read but not documented"


def _relative_links(path: Path) -> list[tuple[str, Path]]:
    links = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target:
            links.append((target, (path.parent / target).resolve()))
    return links


@pytest.mark.parametrize(
    "doc",
    [
        "README.md",
        "docs/setup-salesforce.md",
        "docs/setup-stripe.md",
        "docs/operations.md",
        "docs/architecture.md",
        "docs/install.md",
        "docs/entitlements.md",
        "CHANGELOG.md",
    ],
)
def test_links_point_to_files_that_exist(doc: str) -> None:
    broken = [text for text, target in _relative_links(REPO_ROOT / doc) if not target.exists()]
    assert not broken, f"{doc} links to missing files: {broken}"


def test_procfile_runs_the_three_processes() -> None:
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    assert lines == [
        "release: sf-bridge db upgrade",
        "worker: sf-bridge run",
        "web: sf-bridge serve",
    ]
