"""Regenerate requirements.lock: one command, every supported Python checked.

    python3 scripts/lock.py            # regenerate, then check 3.11 / 3.12 / 3.13
    python3 scripts/lock.py --check    # only check the current lock

1. A fresh venv on this interpreter installs `-e ".[dev]"` (pyproject's pins, newest
   allowed transitive versions) and uv (the installer scripts/install.sh uses, pinned
   like the rest); `pip freeze` becomes the lock's body.
2. Lines with an environment marker (`pkg==1.0 ; python_full_version < "3.11.3"`) are
   the per-interpreter pins: kept from the current lock, since no single freeze sees them.
3. On every interpreter found (Debian's /usr/bin/python3.11, pyenv's 3.11, python3.12,
   python3.13), pip (a dry run) and uv (`uv pip compile`, when uv is installed) resolve
   `-c requirements.lock -e ".[dev]"`; a package resolved there that the lock does not
   pin at that version is reported, and the command exits 1 naming it (add it as a
   marker line and run again).
Python 3.10 is not supported (README, Quick start): scikit-learn 1.9, numpy 2.4, scipy
1.17, matplotlib 3.11, fastapi 0.165, schemathesis 4.32 and onnxruntime 1.31 need 3.11.
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
HEADER = ("# Full pinned dependency tree (pip freeze of a fresh venv with .[dev] and uv),\n"
          "# plus per-interpreter pins with markers. Install with scripts/install.sh dev\n"
          "# (uv), or: pip install -c requirements.lock -e \".[dev]\"\n"
          "# Regenerate and check every supported Python: python3 scripts/lock.py\n")
INTERPRETERS = {
    "3.11 (Debian)": ["/usr/bin/python3.11"],
    "3.11 (pyenv)": sorted(map(str, Path.home().glob(".pyenv/versions/3.11*/bin/python"))),
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
RESOLVERS = ("pip", "uv")


def find_uv() -> str | None:
    """uv beside this interpreter (a venv scripts/install.sh made) or on PATH."""
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.is_file() else shutil.which("uv")


def resolve(python: str, lock: Path, requirements: tuple[str, ...] = REPO_WITH_DEV,
            resolver: str = "pip") -> list[tuple[str, str]]:
    """(name, version) pip (or uv) would install on `python` for `requirements`
    (default: the repo with its dev extra) with the lock as constraints."""
    if resolver == "uv":
        return resolve_uv(python, lock, requirements)
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


def resolve_uv(python: str, lock: Path, requirements: tuple[str, ...]
               ) -> list[tuple[str, str]]:
    uv = find_uv()
    if uv is None:
        raise SystemExit("uv is not installed here (scripts/install.sh installs it)")
    lines: list[str] = []
    for item in requirements:  # ("-e", ".[dev]") is one requirement line
        if lines and lines[-1] == "-e":
            lines[-1] = f"-e {item}"
        else:
            lines.append(item)
    done = subprocess.run(
        [uv, "pip", "compile", "-", "--python", python, "-c", str(lock), "--quiet",
         "--no-header", "--no-annotate"],
        cwd=REPO, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{python}: uv could not resolve with the lock:\n"
                         + done.stderr[-3000:])
    return [tuple(line.split(";", 1)[0].strip().split("==", 1))  # type: ignore[misc]
            for line in done.stdout.splitlines() if "==" in line and line[:1].isalnum()]


def problems(python: str, lock: Path, requirements: tuple[str, ...] = REPO_WITH_DEV,
             resolver: str = "pip") -> list[str]:
    """What `requirements` resolve to on `python` (by pip or uv) that `lock` does not
    pin (or pins at another version)."""
    pinned = pins(lock.read_text())
    out = []
    for name, version in resolve(python, lock, requirements, resolver):
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
        subprocess.run([*pip, "install", "--quiet", "-e", ".[dev]", "uv"], cwd=REPO,
                       check=True)
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
        for resolver in RESOLVERS:
            if resolver == "uv" and find_uv() is None:
                print(f"Python {label}, uv: uv not installed here, not checked")
                continue
            found = problems(python, LOCK, resolver=resolver)
            failed |= bool(found)
            print(f"Python {label} ({python}), {resolver}: "
                  + ("resolves to the lock's pins" if not found else "; ".join(found)))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
