"""The three distributions built from this repository hold what they promise.

- `sf-bridge` (the worker, the API, the CLI, the migrations) has no sandbox, demo or client
  module, declares every package its modules import, and `sf-bridge demo` / `sf-bridge
  sandbox` in such an install exit 2 naming what to install.
- `sf-bridge-client` requires httpx alone and works in a virtualenv holding nothing but httpx
  and what httpx needs.
- `sf-bridge-sandbox` holds the sandbox org, the Stripe emulator and the demo.

The wheels are built from a copy of the repository's files with the installed setuptools
(`pip wheel --no-deps --no-build-isolation`), so nothing is downloaded; virtualenvs are made
`--without-pip` and filled by this interpreter's pip (`pip --python`) or by copying installed
distributions file by file (their RECORD), which is what an installer does.
"""

from __future__ import annotations

import ast
import email
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = REPO_ROOT / "src"
SANDBOX_PACKAGES = ("sf_bridge/sandbox/", "sf_bridge/demo/")

PIP_WHEEL = [
    *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
    *("--no-build-isolation", "--no-index"),
]

PIP_INSTALL = [sys.executable, "-m", "pip", "--python"]

pytestmark = pytest.mark.slow


def _repository_copy(target: Path) -> None:
    """The files a clone would have (tracked or new), without build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    )
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    setuptools = pytest.importorskip("setuptools", minversion="77")
    del setuptools
    copy = tmp_path_factory.mktemp("repository")
    _repository_copy(copy)
    dist = tmp_path_factory.mktemp("dist")
    for project in (copy, copy / "packages" / "client", copy / "packages" / "sandbox"):
        built = subprocess.run(
            [*PIP_WHEEL, "--wheel-dir", str(dist), str(project)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert built.returncode == 0, built.stdout + built.stderr
    found = {path.name.split("-")[0]: path for path in dist.glob("*.whl")}
    assert sorted(found) == ["sf_bridge", "sf_bridge_client", "sf_bridge_sandbox"], found
    return found


def _names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return [name for name in archive.namelist() if ".dist-info/" not in name]


def _requirements(wheel: Path) -> list[Requirement]:
    """Requires-Dist without the extras' (test and dev tools)."""
    with zipfile.ZipFile(wheel) as archive:
        info = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.message_from_bytes(archive.read(info))
    requirements = [Requirement(line) for line in message.get_all("Requires-Dist") or []]
    return [r for r in requirements if r.marker is None or "extra" not in str(r.marker)]


def _imported_top_levels(wheel: Path) -> dict[str, set[str]]:
    """Third-party top-level modules each module of the wheel imports."""
    imported: dict[str, set[str]] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not name.endswith(".py"):
                continue
            tree = ast.parse(archive.read(name))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    tops = {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    tops = {node.module.split(".")[0]}
                else:
                    continue
                for top in tops - set(sys.stdlib_module_names) - {"__future__"}:
                    imported.setdefault(top, set()).add(name)
    return imported


def _undeclared(wheel: Path, allowed: set[str]) -> dict[str, set[str]]:
    """Imported third-party modules that no declared (or `allowed`) distribution provides."""
    declared = {canonicalize_name(r.name) for r in _requirements(wheel)} | allowed
    providers = metadata.packages_distributions()
    return {
        top: files
        for top, files in _imported_top_levels(wheel).items()
        if not {canonicalize_name(d) for d in providers.get(top, [top])} & declared
    }


def test_client_wheel_requires_httpx_alone(wheels: dict[str, Path]) -> None:
    assert [r.name for r in _requirements(wheels["sf_bridge_client"])] == ["httpx"]
    names = _names(wheels["sf_bridge_client"])
    assert names
    assert all(name.startswith("sf_bridge_client/") for name in names), names
    assert "sf_bridge_client/py.typed" in names
    assert _undeclared(wheels["sf_bridge_client"], {"sf-bridge-client"}) == {}


def test_main_wheel_has_no_sandbox_demo_or_client_and_declares_its_imports(
    wheels: dict[str, Path],
) -> None:
    names = _names(wheels["sf_bridge"])
    assert "sf_bridge/cli.py" in names
    assert "sf_bridge/db/migrations/env.py" in names
    assert [n for n in names if n.startswith(SANDBOX_PACKAGES)] == []
    assert [n for n in names if not n.startswith("sf_bridge/")] == []
    requirements = {canonicalize_name(r.name) for r in _requirements(wheels["sf_bridge"])}
    assert "sf-bridge-client" in requirements  # `sf_bridge.client` re-exports it
    sandbox_only = {"httpx", "typing-extensions"}  # the demo's and the emulator's, not ours
    assert requirements.isdisjoint(sandbox_only), requirements & sandbox_only
    assert _undeclared(wheels["sf_bridge"], {"sf-bridge", "sf-bridge-client"}) == {}


def test_sandbox_wheel_holds_the_sandbox_and_the_demo_and_every_module_is_shipped_once(
    wheels: dict[str, Path],
) -> None:
    sandbox = _names(wheels["sf_bridge_sandbox"])
    assert sandbox
    assert all(name.startswith(SANDBOX_PACKAGES) for name in sandbox), sandbox
    assert "sf_bridge/sandbox/data/stripe_fixtures.json" in sandbox
    requirements = {canonicalize_name(r.name) for r in _requirements(wheels["sf_bridge_sandbox"])}
    assert "sf-bridge" in requirements
    main = {canonicalize_name(r.name) for r in _requirements(wheels["sf_bridge"])}
    assert _undeclared(wheels["sf_bridge_sandbox"], requirements | main | {"sf-bridge"}) == {}

    shipped = [n for wheel in wheels.values() for n in _names(wheel) if n.endswith(".py")]
    assert len(shipped) == len(set(shipped)), "a module is in two wheels"
    sources = {str(p.relative_to(SOURCES)) for p in SOURCES.rglob("*.py")}
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "src"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    in_repository = {t.removeprefix("src/") for t in tracked if t.endswith(".py")} & sources
    assert in_repository - set(shipped) == set(), "modules no wheel ships"


def _bare_venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    assert python.exists()
    return python


def _site_packages(python: Path) -> Path:
    found = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return Path(found)


def _copy_installed(requirement: str, site: Path, done: set[str]) -> None:
    """Installs `requirement` and what it needs into `site` from this interpreter's
    environment, file by file as each distribution's RECORD lists them."""
    req = Requirement(requirement)
    key = canonicalize_name(req.name)
    if key in done or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
        return
    done.add(key)
    dist = metadata.distribution(req.name)
    root = Path(str(dist.locate_file("")))
    for file in dist.files or []:
        if file.parts[0] == ".." or "__pycache__" in file.parts:
            continue  # console scripts and byte code
        (site / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / file, site / file)
    for needed in dist.requires or []:
        _copy_installed(needed, site, done)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}


def _pip_into(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PIP_INSTALL, str(python), "install", "--quiet", "--no-index", *args],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=False,
    )


CLIENT_CHECK = """
import importlib.util, sys
for absent in ("sf_bridge", "sqlalchemy", "starlette", "structlog", "pydantic", "stripe"):
    assert importlib.util.find_spec(absent) is None, absent + " is installed"
from sf_bridge_client import EntitlementClient
client = EntitlementClient("http://127.0.0.1:9", "key", fallback={"sso": True}, timeout=2)
answer = client.check("001Hs00001AcmeY", "sso")
assert (answer.access, answer.source) == (True, "fallback"), answer
print("customer", answer.customer)
"""


def test_client_wheel_works_with_httpx_alone(wheels: dict[str, Path], tmp_path: Path) -> None:
    python = _bare_venv(tmp_path / "app")
    _copy_installed("httpx", _site_packages(python), set())
    installed = _pip_into(python, str(wheels["sf_bridge_client"]))
    assert installed.returncode == 0, installed.stderr  # its requirement met by httpx alone
    run = subprocess.run(
        [str(python), "-I", "-c", CLIENT_CHECK],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=tmp_path,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "customer 001Hs00001AcmeYIAR" in run.stdout


def test_production_install_says_what_to_install_for_demo_and_sandbox(
    wheels: dict[str, Path], tmp_path: Path
) -> None:
    """sf-bridge and its client from their wheels; their dependencies visible from this
    environment's site-packages (a plain path: its .pth files, such as an editable install of
    the sandbox, are not run)."""
    python = _bare_venv(tmp_path / "prod")
    site = _site_packages(python)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _pip_into(
        python, "--no-deps", str(wheels["sf_bridge"]), str(wheels["sf_bridge_client"])
    )
    assert installed.returncode == 0, installed.stderr
    cli = python.parent / "sf-bridge"
    env = {**_clean_env(), "COLUMNS": "200"}
    where = subprocess.run(
        [str(python), "-I", "-c", "import sf_bridge, sf_bridge.client; print(sf_bridge.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(site)), where.stdout

    helped = subprocess.run(
        [str(cli), "--help"], capture_output=True, text=True, env=env, cwd=REPO_ROOT, check=False
    )
    assert helped.returncode == 0, helped.stdout + helped.stderr
    for command in (["demo"], ["sandbox"], ["sandbox", "close-deal", "examples/x.json"]):
        result = subprocess.run(
            [str(cli), *command], capture_output=True, text=True, env=env, cwd=REPO_ROOT
        )
        assert result.returncode == 2, (command, result.stdout + result.stderr)
        assert "Traceback" not in result.stderr
        assert "sf-bridge-sandbox" in result.stderr, result.stderr
        assert "pip install ./packages/sandbox" in result.stderr
