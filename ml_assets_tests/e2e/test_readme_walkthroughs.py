"""The README's walk-throughs, run as written, in order, in one home: the quick start
(`ml-platform up`), the loop closing by itself, a canary rollout, batch scoring (the
sensor, then `dg launch`), your own data, a regressor. The commands are read from
README.md's bash blocks, so a README that stops working fails here.

What the test adds to the text: free ports instead of 8000/8001/3000 (the variables the
README names), the waits the README describes in words (until `up` says it), and the
installation, which `.ci/run` and the README's second command already exercise. Each
section's wall time is printed (`-s`)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ml_assets_tests.support.processes import LoggedProcess
from ml_assets_tests.support.services import free_port, wait_http

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
UP = ".venv/bin/ml-platform up"


def bash_block(heading: str, index: int = 0) -> str:
    """The `index`-th ```bash block of the README section `heading`."""
    section = README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)[index]


def _run(script: str, env: dict[str, str], cwd: Path, ports: dict[int, int],
         timeout: float = 600) -> tuple[str, dict[str, str]]:
    """`script` in bash (-e, pipefail), with the README's ports replaced; its output and
    the environment it leaves (its exports carry on to the next block, as in a shell).
    What it leaves running in the background (`python -m serving &`) is stopped after."""
    for old, new in ports.items():
        script = script.replace(f"localhost:{old}", f"localhost:{new}").replace(
            f"ML_API_PORT={old}", f"ML_API_PORT={new}")
    env_file, out_file = cwd / ".walkthrough.env", cwd / ".walkthrough.out"
    with open(out_file, "w") as out:  # a file, not a pipe: a background job keeps pipes
        block = subprocess.Popen(
            ["bash", "-c", f"set -eo pipefail\n{script}\nenv -0 > {env_file}"], cwd=cwd,
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = block.wait(timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(block.pid, signal.SIGTERM)
    output = out_file.read_text()
    assert code == 0, f"{script}\nexited {code}:\n{output[-4000:]}"
    carried = dict(item.split("=", 1) for item in env_file.read_text().split("\0")
                   if "=" in item)
    return output, carried


def _until_printed(up: LoggedProcess, text: str, timeout: float, after: str = "") -> str:
    """Until `up` prints `text` (after the first `after`, when given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert up.running, up.log(4000)
        printed = up.log()
        if after in printed and text in printed[printed.index(after) + len(after):]:
            return printed
        time.sleep(1)
    raise AssertionError(f"`ml-platform up` did not print {text!r} in {timeout} s:\n"
                         f"{up.log(4000)}")


def test_the_readme_walkthroughs_run_as_written(tmp_path):
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "requirements.lock").symlink_to(REPO / "requirements.lock")
    ui, api, second = free_port(), free_port(), free_port()
    ports = {8000: api, 8001: second}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_", "MLFLOW_",
                                                                     "DAGSTER_"))}
    env.update({"ML_UI_PORT": str(ui), "ML_API_PORT": str(api)})
    timings: dict[str, float] = {}

    quick_start = bash_block("Quick start")
    assert f"&& {UP}\n" in quick_start  # command 1 ends by starting the platform
    start = time.monotonic()
    up = LoggedProcess(["bash", "-c", UP], env, tmp_path / "up.log", cwd=tmp_path)
    try:
        wait_http(f"http://127.0.0.1:{api}/ready", up.process, 600, lambda: up.log(4000))
        wait_http(f"http://127.0.0.1:{ui}/server_info", up.process, 300,
                  lambda: up.log(4000))
        timings["quick start: up, first model, API and UI ready"] = time.monotonic() - start

        start = time.monotonic()
        output, env = _run(bash_block("Watch the loop close by itself"), env, tmp_path, ports)
        assert "sent 400 requests" in output, output
        # Labels arrive with the traffic: the realised drop may decide before drift does.
        _until_printed(up, "retrain launched by ", 420)
        _until_printed(up, "training run ", 420, after="retrain launched by ")
        timings["the loop: simulate, drift, retrain"] = time.monotonic() - start

        rollout = bash_block("Roll out a challenger gradually (canary or shadow)")
        assert UP in rollout
        before, after = rollout.replace(UP, "").split("# the API follows on its next poll")
        start = time.monotonic()
        _run(before, env, tmp_path, ports)
        deadline = time.monotonic() + 120  # "the API follows on its next poll (30 s)"
        while not httpx.get(f"http://127.0.0.1:{api}/model", timeout=5).json().get("rollout"):
            assert time.monotonic() < deadline, up.log(4000)
            time.sleep(1)
        output, env = _run("# the API follows on its next poll" + after, env, tmp_path, ports)
        assert "rollout" in output.lower(), output
        # "no verdict yet" (after the loop the two versions are close): as the README
        # says, the same traffic once more, then `rollout stop`.
        (again,) = [line for line in after.splitlines() if "ml-platform simulate" in line]
        try:
            _until_printed(up, "rollout decided", 90)
        except AssertionError:
            assert "no verdict yet" in up.log(), up.log(4000)
            _run(again, env, tmp_path, ports)
            try:
                _until_printed(up, "rollout decided", 90)
            except AssertionError:
                assert "ml-platform rollout stop" in README
                output, env = _run(".venv/bin/ml-platform rollout stop", env, tmp_path,
                                   ports)
                deadline = time.monotonic() + 90  # the API's next poll (30 s)
                while httpx.get(f"http://127.0.0.1:{api}/model", timeout=5).json().get(
                        "rollout"):
                    assert time.monotonic() < deadline, output + up.log(4000)
                    time.sleep(1)
        timings["canary rollout: challenger, start, traffic, verdict or stop"] = (
            time.monotonic() - start)

        start = time.monotonic()
        output, env = _run(bash_block("Score a day in batch"), env, tmp_path, ports)
        _until_printed(up, "batch scored for ", 300)
        assert "2000 rows in 1 shard by ml_platform_model" in up.log(), up.log(4000)
        timings["batch scoring: a day's file, the sensor"] = time.monotonic() - start
        start = time.monotonic()
        output, env = _run(bash_block("Score a day in batch", 1), env, tmp_path, ports)
        assert "2000 rows in 2 parts" in output, output
        timings["batch scoring: the same day by hand (dg launch)"] = time.monotonic() - start

        start = time.monotonic()
        output, env = _run(bash_block("Your own data"), env, tmp_path, ports)
        assert "registered penguins version 1" in output, output
        timings["your own data: penguins"] = time.monotonic() - start

        (regression,) = [block for block in re.findall(r"```bash\n(.*?)```", README, re.S)
                         if "load_diabetes" in block]
        start = time.monotonic()
        output, env = _run(regression, env, tmp_path, ports)
        assert '"model_name":"diabetes"' in output.replace(" ", ""), output
        timings["regression: diabetes, served, one answer"] = time.monotonic() - start
    finally:
        code, log = up.stop(timeout=120)
    print("\n".join(f"{seconds:7.1f} s  {what}" for what, seconds in timings.items()))
    assert code == 0, log[-3000:]

