"""requirements.lock holds for every Python the README supports, not only the one CI
runs: on each interpreter found here (Debian's 3.11.2, pyenv's 3.11, and 3.12 / 3.13
where installed), pip (a dry run) and uv (`uv pip compile`, what scripts/install.sh
installs with) resolve `-c requirements.lock -e ".[dev]"`, and every package either
would install is pinned in the lock at that version. The check is scripts/lock.py's,
the command that regenerates the lock."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]


def _lock_script():
    spec = importlib.util.spec_from_file_location("lock_script", REPO / "scripts/lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_script()


@pytest.mark.parametrize("resolver", LOCK.RESOLVERS)
@pytest.mark.parametrize("label", list(LOCK.INTERPRETERS))
def test_the_lock_resolves_on_every_supported_python(label, resolver):
    python = LOCK.find(LOCK.INTERPRETERS[label])
    if python is None:
        pytest.skip(f"no Python {label} with pip on this machine")
    if resolver == "uv" and LOCK.find_uv() is None:
        pytest.skip("uv is not installed in this venv (scripts/install.sh installs it)")
    assert LOCK.problems(python, LOCK.LOCK, resolver=resolver) == [], (
        f"Python {label} ({python}), {resolver}")


@pytest.mark.parametrize("resolver", LOCK.RESOLVERS)
def test_a_package_missing_from_the_lock_is_named(tmp_path, resolver):
    """The check can fail: a lock without one of the packages is caught, by name (one
    small requirement resolved, so the proof costs seconds, not a full resolution)."""
    if resolver == "uv" and LOCK.find_uv() is None:
        pytest.skip("uv is not installed in this venv (scripts/install.sh installs it)")
    text = LOCK.LOCK.read_text()
    partial = tmp_path / "requirements.lock"
    partial.write_text("\n".join(line for line in text.splitlines()
                                 if not line.startswith("orjson==")) + "\n")
    assert LOCK.problems(sys.executable, LOCK.LOCK, ("orjson",), resolver) == []
    found = LOCK.problems(sys.executable, partial, ("orjson",), resolver)
    assert len(found) == 1 and found[0].startswith("orjson==") and found[0].endswith(
        "is not pinned"), found


SUPPORTED = [(3, 11), (3, 12), (3, 13)]


def test_the_running_python_is_one_the_readme_supports():
    """README, pyproject (requires-python, classifiers) and scripts/install.sh name the
    same Pythons, and this one is among them."""
    assert sys.version_info[:2] in SUPPORTED, sys.version
    assert "Python 3.11, 3.12 or 3.13" in (REPO / "README.md").read_text()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    classified = {tuple(map(int, found)) for found in re.findall(
        r"Python :: (\d+)\.(\d+)$", "\n".join(project["classifiers"]), re.M)}
    assert classified == set(SUPPORTED)
    assert "(3, 11) <= sys.version_info[:2] <= (3, 13)" in (
        REPO / "scripts/install.sh").read_text()


def test_install_refuses_an_unsupported_python_by_name(tmp_path):
    """Python 3.10 gets one line naming the supported versions (not pip's resolver error
    about numpy), and no venv is made."""
    python = LOCK.find(sorted(map(str, Path.home().glob(".pyenv/versions/3.10*/bin/python"))))
    if python is None:
        pytest.skip("no Python 3.10 on this machine to refuse")
    done = subprocess.run(["bash", str(REPO / "scripts/install.sh")], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": python,
                                          "VENV": str(tmp_path / "venv")}, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Python 3.10" in done.stderr and "needs Python 3.11, 3.12 or 3.13" in done.stderr
    assert not (tmp_path / "venv").exists()
