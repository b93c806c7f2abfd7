"""Benchmark: README command 1 from a fresh clone with a cold package cache, until the
prediction API answers `/ready` and the Dagster UI answers on its port.

    python3 benchmarks/bench_install.py [--rounds 2] [--variants uv,pip] [--out FILE]

Each run: `git clone` of this repository's HEAD into a temporary directory, fresh
UV_CACHE_DIR and PIP_CACHE_DIR, then exactly README command 1 with free ports
(`scripts/install.sh && .venv/bin/ml-platform up`, ML_UI_PORT / ML_API_PORT):

* uv   the default: uv from the lock, installed by the venv's pip, then `uv pip install`;
* pip  the documented fallback (ML_INSTALL_WITH=pip) as a newcomer's laptop runs it:
       PyPI only (PIP_CONFIG_FILE=/dev/null, no find-links), so it does not use this
       machine's local wheel mirror;
* pip-mirror  pip with this machine's pip configuration (its local wheel mirror).

Times are from the start of the command: install finished, `/ready` answered 200, the
UI answered 200. After the install, the venv's versions are compared with the lock
(`uv pip freeze` or `pip freeze` against requirements.lock). Variants alternate within
each round (the machine is shared); the summary gives medians and the ratio to uv.
`up` is stopped with SIGINT (its Ctrl-C path) and the clone removed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from lock import pins  # noqa: E402 - the lock's own parser

LIMIT = 900  # seconds: a run that has not reached the UI by then has failed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def environment(variant: str, tmp: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PIP_", "UV_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(UV_CACHE_DIR=str(tmp / "uv-cache"), PIP_CACHE_DIR=str(tmp / "pip-cache"),
               PIP_DISABLE_PIP_VERSION_CHECK="1", MLFLOW_DISABLE_TELEMETRY="true",
               ML_UI_PORT=str(free_port()), ML_API_PORT=str(free_port()))
    if variant.startswith("pip"):
        env["ML_INSTALL_WITH"] = "pip"
    if variant != "pip-mirror":
        env["PIP_CONFIG_FILE"] = "/dev/null"  # PyPI only, as on a laptop
    else:
        env.update({key: value for key, value in os.environ.items() if key.startswith("PIP_")})
    return env


def freeze_matches_lock(clone: Path, variant: str) -> str:
    venv = clone / ".venv"
    command = ([str(venv / "bin/uv"), "pip", "freeze", "--python", str(venv / "bin/python")]
               if variant == "uv" else [str(venv / "bin/pip"), "freeze"])
    frozen = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    installed = pins("\n".join(line for line in frozen.splitlines()
                               if "==" in line and not line.startswith("-e")))
    for name in ("ml-assets", "pip", "setuptools"):  # the project, the venv's own tools
        installed.pop(name, None)
    locked = pins((clone / "requirements.lock").read_text())
    wrong = [f"{name}=={version} (lock: {locked.get(name, 'absent')})"
             for name, version in installed.items() if locked.get(name) != version]
    return "yes" if not wrong else "NO: " + ", ".join(wrong)


def one_run(variant: str, log) -> dict[str, float | str]:
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-install-{variant}-"))
    try:
        clone = tmp / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        env = environment(variant, tmp)
        api = f"http://127.0.0.1:{env['ML_API_PORT']}/ready"
        ui = f"http://127.0.0.1:{env['ML_UI_PORT']}/"
        marker = tmp / "installed"
        command = f"scripts/install.sh && touch {marker} && .venv/bin/ml-platform up"
        with open(tmp / "output.log", "w") as output:
            start = time.monotonic()
            process = subprocess.Popen(["bash", "-c", command], cwd=clone, env=env,
                                       stdin=subprocess.DEVNULL, stdout=output,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            times: dict[str, float | str] = {}
            try:
                while time.monotonic() - start < LIMIT and process.poll() is None:
                    now = time.monotonic() - start
                    if "install" not in times and marker.exists():
                        times["install"] = now
                        times["same versions as the lock"] = freeze_matches_lock(clone, variant)
                    if "install" in times and "ready" not in times and answers(api):
                        times["ready"] = time.monotonic() - start
                    if "install" in times and "ui" not in times and answers(ui):
                        times["ui"] = time.monotonic() - start
                    if "ready" in times and "ui" in times:
                        break
                    time.sleep(0.5)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGINT)
                    try:
                        process.wait(60)
                    except subprocess.TimeoutExpired:
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
        if "ui" not in times or "ready" not in times:
            tail = (tmp / "output.log").read_text()[-3000:]
            times["failed"] = f"exit {process.returncode}; output tail:\n{tail}"
        log(f"{variant}: " + ", ".join(f"{key} {value:.1f} s" if isinstance(value, float)
                                       else f"{key}: {value}" for key, value in times.items()))
        return times
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default="uv,pip")
    parser.add_argument("--out", type=Path, help="also append the log to this file")
    args = parser.parse_args()
    variants = args.variants.split(",")

    def log(line: str) -> None:
        print(line, flush=True)
        if args.out:
            with args.out.open("a") as out:
                out.write(line + "\n")

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    log(f"# bench_install {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"commit {commit}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    for round_ in range(args.rounds):
        order = variants if round_ % 2 == 0 else variants[::-1]
        for variant in order:
            results[variant].append(one_run(variant, log))
    log("\n| variant | install (s) | /ready (s) | UI (s) | UI vs uv | runs |")
    log("|---|---:|---:|---:|---:|---:|")
    medians = {}
    for variant, runs in results.items():
        good = [run for run in runs if "failed" not in run]
        medians[variant] = {key: statistics.median(run[key] for run in good)
                            for key in ("install", "ready", "ui")} if good else None
    for variant, median in medians.items():
        if median is None:
            log(f"| {variant} | failed | | | | 0 |")
            continue
        base = medians.get("uv")
        ratio = f"{median['ui'] / base['ui']:.2f}x" if base else ""
        good = len([run for run in results[variant] if "failed" not in run])
        log(f"| {variant} | {median['install']:.0f} | {median['ready']:.0f} | "
            f"{median['ui']:.0f} | {ratio} | {good} |")
    return 0 if all(medians.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
