"""requirements.lock holds for every Python the README supports, not only the one CI
runs: on each interpreter found here (Debian's 3.11, and 3.12 / 3.13 where installed),
pip resolves `-c requirements.lock -e ".[dev]"` (a dry run, nothing installed) and
every package it would install is pinned in the lock at that version. The check is
scripts/lock.py's, the command that regenerates the lock."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _lock_script():
    spec = importlib.util.spec_from_file_location("lock_script", REPO / "scripts/lock.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock_script()


@pytest.mark.parametrize("label", list(LOCK.INTERPRETERS))
def test_the_lock_resolves_on_every_supported_python(label):
    python = LOCK.find(LOCK.INTERPRETERS[label])
    if python is None:
        pytest.skip(f"no Python {label} with pip on this machine")
    assert LOCK.problems(python, LOCK.LOCK) == [], f"Python {label} ({python})"


def test_a_package_missing_from_the_lock_is_named(tmp_path):
    """The check can fail: a lock without one of the packages is caught, by name (one
    small requirement resolved, so the proof costs seconds, not a full resolution)."""
    text = LOCK.LOCK.read_text()
    partial = tmp_path / "requirements.lock"
    partial.write_text("\n".join(line for line in text.splitlines()
                                 if not line.startswith("orjson==")) + "\n")
    assert LOCK.problems(sys.executable, LOCK.LOCK, ("orjson",)) == []
    found = LOCK.problems(sys.executable, partial, ("orjson",))
    assert len(found) == 1 and found[0].startswith("orjson==") and found[0].endswith(
        "is not pinned"), found


def test_the_running_python_is_one_the_readme_supports():
    assert (3, 11) <= sys.version_info[:2] <= (3, 13), sys.version
