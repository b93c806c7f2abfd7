"""requirements.lock holds for every Python the README supports, not only the one CI
runs: on each interpreter found here (Debian's 3.11, and 3.12 / 3.13 where installed),
pip resolves `-c requirements.lock -e ".[dev]"` (a dry run, nothing installed) and
every package it would install is pinned in the lock at that version."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CANDIDATES = {
    "3.11 (Debian)": ["/usr/bin/python3.11"],
    "3.12": ["python3.12", *sorted(map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python")))],
    "3.13": ["python3.13", *sorted(map(str, Path.home().glob(".pyenv/versions/3.13*/bin/python")))],
}


def _interpreter(names: list[str]) -> str | None:
    for name in names:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path and subprocess.run([path, "-m", "pip", "--version"], capture_output=True,
                                   timeout=60).returncode == 0:
            return path
    return None


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        spec = line.split("#", 1)[0].split(";", 1)[0].strip()
        if spec:
            name, version = spec.split("==")
            pins[_normal(name)] = version
    return pins


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


@pytest.mark.parametrize("label", list(CANDIDATES))
def test_the_lock_resolves_on_every_supported_python(label, tmp_path):
    python = _interpreter(CANDIDATES[label])
    if python is None:
        pytest.skip(f"no Python {label} with pip on this machine")
    report = tmp_path / "report.json"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", str(report), "-c", "requirements.lock", "-e", ".[dev]"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in done.stderr.splitlines() if "ignored: it is neither" not in line]
    assert done.returncode == 0, f"{label} ({python}):\n" + "\n".join(errors[-30:])
    installed = json.loads(report.read_text())["install"]
    pins = _lock()
    own = _normal("ml-assets")
    unpinned = sorted(f"{item['metadata']['name']}=={item['metadata']['version']}"
                      for item in installed
                      if _normal(item["metadata"]["name"]) not in pins
                      and _normal(item["metadata"]["name"]) != own)
    drifted = sorted(f"{item['metadata']['name']} {item['metadata']['version']} (lock: "
                     f"{pins[_normal(item['metadata']['name'])]})" for item in installed
                     if _normal(item["metadata"]["name"]) in pins
                     and pins[_normal(item["metadata"]["name"])] != item["metadata"]["version"])
    assert not unpinned and not drifted, (
        f"Python {label}: not pinned in requirements.lock: {unpinned}; resolved to another "
        f"version than the lock's: {drifted} (regenerate: README, 'Maintaining the lock file')")
    assert len(installed) > 100


def test_the_running_python_is_one_the_readme_supports():
    assert (3, 11) <= sys.version_info[:2] <= (3, 13), sys.version
