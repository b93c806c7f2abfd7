"""Screenshots of the Dagster UI a newcomer looks at, taken by headless Chromium.

    pip install -c requirements.lock -e ".[screenshots]"   # Playwright, no browser
    python scripts/screenshots.py                          # writes docs/screenshots/*.png
    python scripts/screenshots.py --chromium /path/to/chrome --out /tmp/shots

What it does, as a newcomer would, in a throw-away platform home (ML_PLATFORM_HOME,
DAGSTER_HOME inside it, free ports in ML_UI_PORT and ML_API_PORT):

1. `ml-platform up`: trains the first model (the champion) and starts the prediction
   API and the Dagster UI (webserver + daemon); Chromium (Playwright driving an
   installed browser; nothing is downloaded) then shoots Lineage with every group
   expanded and `model_metrics` at the champion's confusion matrix;
2. `ml-platform train` with a one-split tree: a challenger that is refused (the run
   succeeds, `challenger_beats_champion` warns, tag `ml/promotion=refused`);
3. `ml-platform simulate`: 300 requests, the last 200 shifted by two standard
   deviations, no labels; the daemon's sensors then materialize today's
   `production_data` and `drift_scores` partitions (README, "Watch the loop close");
4. Chromium shoots `drift_scores` at its per-feature table and the refused
   challenger's run, its log filtered to the refusal.

Each page is waited for by the text it must show (bounded), never by a fixed sleep
alone. Every process started here is stopped, on failure too; the exit status is 1
with the step that failed named, 2 when Playwright or the browser is missing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
GROUPS = ("training", "registry", "monitoring", "rollout", "batch")
# A challenger that cannot beat the random-forest champion (README, rollout walk-through).
WEAK_CHALLENGER = {"ML_ESTIMATOR": "sklearn.tree.DecisionTreeClassifier",
                   "ML_ESTIMATOR_PARAMS": '{"max_depth": 1}'}


class StepFailed(Exception):
    """A named step of the script failed."""


@contextmanager
def step(name: str) -> Iterator[None]:
    """Run a block as the named step: any error becomes StepFailed naming it."""
    print(f"- {name}", flush=True)
    try:
        yield
    except StepFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - re-raised with the step's name
        raise StepFailed(f"{name}: {type(exc).__name__}: {exc}") from exc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lineage_path() -> str:
    """Lineage with every group expanded (the nav link opens them collapsed)."""
    return "/asset-groups?expanded=" + ",".join(f"global@global:{g}" for g in GROUPS)


def wait_until(what: str, ready, timeout: float, process: subprocess.Popen | None = None,
               log: Path | None = None) -> Any:
    """Poll `ready()` until it returns something truthy; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log else ""
            raise RuntimeError(f"ml-platform up exited with {process.returncode} while "
                               f"waiting for {what}:\n{tail}")
        try:
            value = ready()
        except Exception:  # noqa: BLE001 - not ready yet
            value = None
        if value:
            return value
        time.sleep(2)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - 127.0.0.1
        return response.status == 200


class Platform:
    """`ml-platform up` in a throw-away home, and the CLI run against it."""

    def __init__(self, home: Path, timeout: float):
        self.home, self.timeout = home, timeout
        self.ui_port, self.api_port = free_port(), free_port()
        self.ui = f"http://127.0.0.1:{self.ui_port}"
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.env = {**os.environ, "ML_PLATFORM_HOME": str(home),
                    "DAGSTER_HOME": str(home / "dagster_home"),
                    "ML_UI_PORT": str(self.ui_port), "ML_API_PORT": str(self.api_port),
                    "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(
                        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        for key in ("MLFLOW_TRACKING_URI", "ML_REGISTERED_MODEL_NAME", "ML_DATA_PATH"):
            self.env.pop(key, None)  # the default demo, whatever this shell points at
        self.log = home / "up.log"
        self.up: subprocess.Popen | None = None

    def cli(self, *args: str) -> list[str]:
        script = Path(sys.executable).with_name("ml-platform")
        return [str(script), *args] if script.exists() else [
            sys.executable, "-m", "ml_assets.cli", *args]

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.up = subprocess.Popen(self.cli("up"), cwd=REPO, env=self.env,
                                       stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        wait_until("the prediction API (/ready)", lambda: http_ok(f"{self.api}/ready"),
                   self.timeout, self.up, self.log)
        wait_until("the Dagster UI (/server_info)", lambda: http_ok(f"{self.ui}/server_info"),
                   self.timeout, self.up, self.log)

    def run(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        """An `ml-platform` command against this home; its output, or an error with it."""
        done = subprocess.run(self.cli(*args), cwd=REPO, env={**self.env, **(extra_env or {})},
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=self.timeout)
        output = done.stdout + done.stderr
        if done.returncode:
            raise RuntimeError(f"`ml-platform {' '.join(args)}` exited {done.returncode}:\n"
                               f"{output[-2000:]}")
        return output

    def stop(self) -> None:
        """SIGINT to the whole `up` session (as Ctrl-C), then SIGKILL after 60 s."""
        if self.up is None or self.up.poll() is not None:
            return
        for sig, grace in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.up.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.up.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # children `up` left behind (webserver, daemon, run workers)
            os.killpg(self.up.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def instance_facts(platform: Platform, day: str) -> dict[str, str] | None:
    """The refused run's id and today's drift verdict, once both are in the instance."""
    os.environ["DAGSTER_HOME"] = platform.env["DAGSTER_HOME"]
    from dagster import AssetKey, DagsterInstance, RunsFilter

    with DagsterInstance.get() as instance:
        refused = instance.get_runs(RunsFilter(tags={"ml/promotion": "refused"}), limit=1)
        drift = instance.get_latest_materialization_event(AssetKey("drift_scores"))
    materialization = drift.asset_materialization if drift else None
    if not refused or materialization is None or materialization.partition != day:
        return None
    return {"refused_run": refused[0].run_id}


def launch_browser(playwright: Any, chromium: str, profile: Path) -> Any:
    return playwright.chromium.launch_persistent_context(
        str(profile), executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
        viewport=VIEWPORT, device_scale_factor=1)


def open_page(context: Any, url: str, text: str, timeout_ms: int) -> Any:
    """A page at `url` once `text` shows; Dagster's community modal skipped if it opens."""
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.get_by_text(text, exact=False).first.wait_for(state="visible", timeout=timeout_ms)
    page.wait_for_load_state("networkidle", timeout=timeout_ms)
    modal = page.get_by_text("Join the Dagster community")
    if modal.count():  # once per DAGSTER_HOME; Skip records it there
        page.get_by_role("button", name="Skip").first.click()
        modal.first.wait_for(state="hidden", timeout=timeout_ms)
    return page


# Scroll the page's scrolling pane so that `node` sits `offset` pixels below its top.
SCROLL_TO = """(node, offset) => {
    let pane = node.parentElement;
    while (pane && !(pane.scrollHeight > pane.clientHeight
                     && /(auto|scroll)/.test(getComputedStyle(pane).overflowY))) {
        pane = pane.parentElement;
    }
    if (!pane) return false;
    pane.scrollTop += node.getBoundingClientRect().top - pane.getBoundingClientRect().top - offset;
    return true;
}"""


def scroll_to(page: Any, text: str, offset: int, timeout_ms: int) -> None:
    """Scroll until the first element reading exactly `text` is `offset` px below the top."""
    node = page.get_by_text(text, exact=True).first
    node.wait_for(state="visible", timeout=timeout_ms)
    node.evaluate(SCROLL_TO, offset)


def shoot(page: Any, path: Path) -> None:
    page.wait_for_timeout(1000)  # let the graph's zoom-to-fit and fonts settle
    page.screenshot(path=str(path))
    print(f"  wrote {path} ({path.stat().st_size // 1024} KiB)", flush=True)


@contextmanager
def browser(chromium: str, profile: Path) -> Iterator[Any]:
    """Headless Chromium with a new, empty profile (Playwright drives it; closed after)."""
    sync_playwright = importlib.import_module("playwright.sync_api").sync_playwright
    with sync_playwright() as playwright:
        with step(f"start {chromium} (headless, a new profile)"):
            context = launch_browser(playwright, chromium, profile)
        try:
            yield context
        finally:
            context.close()


def shoot_lineage(context: Any, ui: str, out: Path, timeout_ms: int) -> Path:
    with step("screenshot: Lineage, every group expanded"):
        page = open_page(context, ui + lineage_path(), "model_metrics", timeout_ms)
        shoot(page, out / "lineage.png")
    return out / "lineage.png"


def shoot_model_metrics(context: Any, ui: str, out: Path, timeout_ms: int) -> Path:
    with step("screenshot: model_metrics (the champion's) with its confusion matrix"):
        page = open_page(context, f"{ui}/assets/model_metrics", "confusion_matrix",
                         timeout_ms)
        page.get_by_text("pred malignant").first.wait_for(state="visible", timeout=timeout_ms)
        scroll_to(page, "accuracy", 80, timeout_ms)
        shoot(page, out / "model_metrics.png")
    return out / "model_metrics.png"


def shoot_drift_scores(context: Any, ui: str, out: Path, timeout_ms: int) -> Path:
    with step("screenshot: drift_scores with its per-feature table"):
        page = open_page(context, f"{ui}/assets/drift_scores", "per_feature", timeout_ms)
        page.get_by_text("Show schema").first.wait_for(state="visible", timeout=timeout_ms)
        scroll_to(page, "per_feature", 20, timeout_ms)
        shoot(page, out / "drift_scores.png")
    return out / "drift_scores.png"


def shoot_refused_run(context: Any, ui: str, out: Path, timeout_ms: int, run_id: str,
                      phrase: str) -> Path:
    """The run's page, its log filtered to the words of the refusal (the check's
    evaluation and champion_model's line both carry them)."""
    with step("screenshot: the refused challenger's run"):
        page = open_page(context, f"{ui}/runs/{run_id}?logs={urllib.parse.quote(phrase)}",
                         "not promoted", timeout_ms)
        shoot(page, out / "refused_run.png")
    return out / "refused_run.png"


def check_browser(chromium: str) -> str | None:
    """Why the screenshots cannot be taken here, or None."""
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError:
        return ("Playwright is not installed: pip install -c requirements.lock -e "
                "\".[screenshots]\" (no browser download; an installed Chromium is used)")
    if not (Path(chromium).is_file() and os.access(chromium, os.X_OK)):
        return (f"no Chromium at {chromium}: install one (Debian: apt-get install chromium) "
                "or name it with --chromium or ML_SCREENSHOTS_CHROMIUM")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots",
                        help="where the PNGs go (default: docs/screenshots)")
    parser.add_argument("--chromium", default=os.environ.get("ML_SCREENSHOTS_CHROMIUM",
                                                             "/usr/bin/chromium"),
                        help="the Chromium executable (default: ML_SCREENSHOTS_CHROMIUM or "
                        "/usr/bin/chromium)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds any one step may take (default 900: a loaded 2-core "
                        "machine trains slowly)")
    parser.add_argument("--keep-home", action="store_true",
                        help="keep the throw-away platform home (its path is printed)")
    args = parser.parse_args(argv)
    problem = check_browser(args.chromium)
    if problem:
        print(f"screenshots: {problem}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="ml-screenshots-"))
    platform = Platform(home, args.timeout)
    started = time.monotonic()
    timeout_ms = int(args.timeout * 1000 / 3)
    written: list[Path] = []
    try:
        with browser(args.chromium, home / "chromium-profile") as context:
            with step(f"ml-platform up in {home} (UI {platform.ui}, API {platform.api})"):
                platform.start()
            # Before the challenger: model_metrics shows the champion's matrix.
            written.append(shoot_lineage(context, platform.ui, args.out, timeout_ms))
            written.append(shoot_model_metrics(context, platform.ui, args.out, timeout_ms))
            with step("ml-platform train with a one-split tree (a challenger to refuse)"):
                output = platform.run("train", extra_env=WEAK_CHALLENGER)
                if "not promoted" not in output:
                    raise RuntimeError(f"the challenger was not refused:\n{output[-2000:]}")
            phrase = "worse than champion" if "worse than champion" in output else "promot"
            day = dt.datetime.now(dt.timezone.utc).date().isoformat()
            with step("ml-platform simulate: 300 requests, the last 200 shifted"):
                platform.run("simulate", "--requests", "300", "--shift-after", "100",
                             "--shift", "2", "--no-labels", "--url", platform.api)
            with step(f"the daemon scores drift for {day} (production_data_sensor, "
                      "monitoring_automation)"):
                facts = wait_until(f"drift_scores {day}", lambda: instance_facts(platform, day),
                                   args.timeout, platform.up, platform.log)
            written.append(shoot_drift_scores(context, platform.ui, args.out, timeout_ms))
            written.append(shoot_refused_run(context, platform.ui, args.out, timeout_ms,
                                             facts["refused_run"], phrase))
    except StepFailed as exc:
        print(f"screenshots failed at {exc} (ml-platform up's log: {platform.log}; kept)",
              file=sys.stderr)
        args.keep_home = True
        return 1
    except KeyboardInterrupt:
        print("screenshots: interrupted", file=sys.stderr)
        return 130
    finally:
        platform.stop()
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)
    print(f"{len(written)} screenshots in {time.monotonic() - started:.0f} s:")
    for path in written:
        print(f"  {path}")
    if args.keep_home:
        print(f"platform home kept: {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
