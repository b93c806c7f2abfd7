"""Regenerate requirements.lock: one command, every supported Python checked.

    python3 scripts/lock.py            # regenerate, then check 3.11 / 3.12 / 3.13
    python3 scripts/lock.py --check    # only check the current lock

1. A fresh venv on this interpreter installs `-e ".[dev]"` (pyproject's pins, newest
   allowed transitive versions) and `pip freeze` becomes the lock's body.
2. Lines with an environment marker (`pkg==1.0 ; python_full_version < "3.11.3"`) are
   the per-interpreter pins: kept from the current lock, since no single freeze sees them.
3. On every interpreter found (Debian's /usr/bin/python3.11, python3.12, python3.13),
   pip resolves `-c requirements.lock -e ".[dev]"` as a dry run; a package resolved
   there that the lock does not pin at that version is reported, and the command exits
   1 naming it (add it as a marker line and run again).
ml_assets_tests/e2e/test_lock_resolution.py runs the same check in the suite."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
HEADER = ("# Full pinned dependency tree (pip freeze of a fresh venv with .[dev]), plus\n"
          "# per-interpreter pins with markers. Install with:\n"
          "#   pip install -c requirements.lock -e \".[dev]\"\n"
          "# Regenerate and check every supported Python: python3 scripts/lock.py\n")
INTERPRETERS = {
    "3.11 (Debian)": ["/usr/bin/python3.11"],
    "3.12": ["python3.12", *sorted(map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python")))],
    "3.13": ["python3.13", *sorted(map(str, Path.home().glob(".pyenv/versions/3.13*/bin/python")))],
}


def normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pins(text: str) -> dict[str, str]:
    found = {}
    for line in text.splitlines():
        spec = line.split("#", 1)[0].split(";", 1)[0].strip()
        if spec:
            name, version = spec.split("==")
            found[normal(name)] = version
    return found


def find(names: list[str]) -> str | None:
    for name in names:
        path = shutil.which(name) or (name if Path(name).is_file() else None)
        if path and subprocess.run([path, "-m", "pip", "--version"],
                                   capture_output=True).returncode == 0:
            return path
    return None


REPO_WITH_DEV = ("-e", ".[dev]")


def resolve(python: str, lock: Path, requirements: tuple[str, ...] = REPO_WITH_DEV
            ) -> list[tuple[str, str]]:
    """(name, version) pip would install for `requirements` (default: the repo with its
    dev extra) with the lock as constraints."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run(
            [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
             "--report", str(report), "-c", str(lock), *requirements],
            cwd=REPO, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{python}: pip could not resolve with the lock:\n"
                             + done.stderr[-3000:])
        return [(item["metadata"]["name"], item["metadata"]["version"])
                for item in json.loads(report.read_text())["install"]]


def problems(python: str, lock: Path, requirements: tuple[str, ...] = REPO_WITH_DEV
             ) -> list[str]:
    """What `requirements` resolve to on `python` that `lock` does not pin (or pins at
    another version)."""
    pinned = pins(lock.read_text())
    out = []
    for name, version in resolve(python, lock, requirements):
        key = normal(name)
        if key == "ml-assets":
            continue
        if key not in pinned:
            out.append(f"{name}=={version} is not pinned")
        elif pinned[key] != version:
            out.append(f"{name} resolves to {version}, the lock pins {pinned[key]}")
    return out


def regenerate() -> None:
    markers = [line for line in LOCK.read_text().splitlines()
               if ";" in line.split("#", 1)[0]]
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip"]
        subprocess.run([*pip, "install", "--quiet", "-e", ".[dev]"], cwd=REPO, check=True)
        frozen = subprocess.run([*pip, "freeze", "--exclude-editable"], cwd=REPO,
                                check=True, capture_output=True, text=True).stdout
    body = [line for line in frozen.splitlines() if line and not line.startswith("#")]
    kept = {normal(line.split("==")[0]) for line in markers}
    body = [line for line in body if normal(line.split("==")[0]) not in kept]
    lines = sorted(body + markers, key=lambda line: normal(line.split("==")[0]))
    LOCK.write_text(HEADER + "\n".join(lines) + "\n")
    print(f"wrote {LOCK.name}: {len(lines)} pins ({len(markers)} with markers)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the current lock")
    args = parser.parse_args()
    if not args.check:
        regenerate()
    failed = False
    for label, names in INTERPRETERS.items():
        python = find(names)
        if python is None:
            print(f"Python {label}: not found here, not checked")
            continue
        found = problems(python, LOCK)
        failed |= bool(found)
        print(f"Python {label} ({python}): " + ("resolves to the lock's pins" if not found
                                                 else "; ".join(found)))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
