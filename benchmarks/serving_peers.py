"""The peers of benchmarks/bench_serving.py: MLServer 1.7.1 with its scikit-learn runtime
and adaptive batching, and BentoML 1.4.40 (optional), serving the same fitted Pipeline.

MLServer runs from a virtualenv of its own (~/.cache/ml-assets-bench/mlserver-venv,
made on first use with `python3 -m venv` and pip; rebuilt when its pins change):
mlserver, mlserver-sklearn, uvloop 0.21.0 (MLServer 1.7.1 does not start with a newer
one) and the versions of scikit-learn, numpy, scipy, pandas, joblib and threadpoolctl
this interpreter has, so the pickled Pipeline loads as it was fitted. The default
model (the platform's preprocessing and a forest) pickles to scikit-learn classes only;
this repository is on MLServer's PYTHONPATH all the same (as `pip install --no-deps
-e .` would put it) for a Pipeline holding the platform's own steps.

Each adaptive-batching setting (`max_batch_size:max_batch_time`, seconds) is one
server, in a folder of its own: settings.json (debug off, 1 parallel worker, the
default) and the model's model-settings.json beside model.joblib. MLServer 1.7.1 has
no /invocations for a scikit-learn model (only its MLflow runtime has one): it is
timed on /v2 infer alone.

BentoML 1.4.40 runs from ~/.cache/ml-assets-bench/bentoml-venv the same way (skipped,
with the reason printed, when it does not install): a service of one worker, access
log off, whose batchable `predict_proba` API takes {"rows": [[...], ...]} (a
DataFrame-typed batchable API fails in 1.4.40's dispatcher: "unsupported operand
type(s) for +: 'int' and 'tuple'"), builds the named-column DataFrame the Pipeline
needs and answers the probabilities; adaptive batching up to 4,000 rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

VENV = Path(os.environ.get("ML_BENCH_CACHE", Path.home() / ".cache" / "ml-assets-bench"))
MLSERVER_PINS = ("mlserver==1.7.1", "mlserver-sklearn==1.7.1", "uvloop==0.21.0")
MODEL_LIBRARIES = ("scikit-learn", "numpy", "scipy", "pandas", "joblib", "threadpoolctl")
DEFAULT_BATCHING = "8:0.001,32:0.005,64:0.02"
BENTOML_PINS = ("bentoml==1.4.40",)
BENTOML_SERVICE = """
import json
import os

import bentoml
import joblib
import numpy as np
import pandas as pd

COLUMNS = json.loads(os.environ["BENCH_COLUMNS"])


@bentoml.service(workers=1, logging={"access": {"enabled": False}})
class Pipeline:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL"])

    @bentoml.api(batchable=True, max_batch_size=4000, max_latency_ms=60000)
    def predict_proba(self, rows: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(pd.DataFrame(rows, columns=COLUMNS))
"""


def mlserver_pins() -> list[str]:
    return [*MLSERVER_PINS, *(f"{name}=={version(name)}" for name in MODEL_LIBRARIES)]


def bentoml_pins() -> list[str]:
    return [*BENTOML_PINS, *(f"{name}=={version(name)}" for name in MODEL_LIBRARIES)]


def _child_env(python: Path, root: Path) -> dict:
    """A peer's environment: its venv first on PATH, this repository importable, the
    OpenBLAS settings the service runs with."""
    env = {"PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HOME": os.environ.get("HOME", "/root"), "PYTHONPATH": str(root),
           "PYTHONUNBUFFERED": "1"}
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def ensure_venv(path: Path, pins: list[str]) -> Path:
    """The venv's python, the venv made (or remade, when `pins` changed) first."""
    marker = path / "bench-pins.txt"
    python = path / "bin" / "python"
    wanted = "\n".join(pins) + "\n"
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    print(f"installing {' '.join(pins)} into {path} (first use)", flush=True)
    subprocess.run(["python3", "-m", "venv", "--clear", str(path)], check=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    *pins], check=True, timeout=1800)
    marker.write_text(wanted)
    return python


def parse_batching(text: str) -> list[tuple[int, float]]:
    """"8:0.001,32:0.005" -> [(8, 0.001), (32, 0.005)]."""
    settings = []
    for item in filter(None, text.split(",")):
        size, _, seconds = item.partition(":")
        settings.append((int(size), float(seconds or 0)))
    return settings


def mlserver_servers(server, pipeline, name: str, batching: str, workdir: Path,
                     root: Path) -> list:
    """One MLServer per batching setting (`server` is serving_load.Server), each
    serving `pipeline` as model `name`."""
    import joblib

    from ml_assets_tests.support.services import free_port

    python = ensure_venv(VENV / "mlserver-venv", mlserver_pins())
    servers = []
    for size, seconds in parse_batching(batching):
        folder = workdir / f"mlserver-{size}-{seconds:g}"
        (folder / name).mkdir(parents=True)
        joblib.dump(pipeline, folder / name / "model.joblib")
        (folder / "settings.json").write_text(json.dumps({
            "debug": False, "host": "127.0.0.1", "parallel_workers": 1}))
        (folder / name / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
            "max_batch_size": size, "max_batch_time": seconds,
            "parameters": {"uri": "./model.joblib", "version": "1"}}))
        env = {**_child_env(python, root), "MLSERVER_HTTP_PORT": "{port}",
               "MLSERVER_GRPC_PORT": str(free_port()),
               "MLSERVER_METRICS_PORT": str(free_port())}
        label = f"MLServer 1.7.1, batch {size} / {seconds * 1000:g} ms"
        servers.append(server(label, [str(python), "-m", "mlserver.cli.main", "start",
                                      str(folder)],
                              env, f"/v2/models/{name}/ready",
                              workdir / f"mlserver-{size}-{seconds:g}.log", timeout=300))
    return servers


def bentoml_servers(server, pipeline, columns: list[str], workdir: Path, root: Path
                    ) -> list:
    """BentoML serving `pipeline`, or nothing (the reason printed) when its venv
    cannot be made."""
    import joblib

    try:
        python = ensure_venv(VENV / "bentoml-venv", bentoml_pins())
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"BentoML skipped: its venv could not be made ({exc})", flush=True)
        return []
    folder = workdir / "bentoml"
    folder.mkdir()
    joblib.dump(pipeline, folder / "model.joblib")
    (folder / "service.py").write_text(BENTOML_SERVICE)
    env = {**_child_env(python, root), "BENCH_MODEL": str(folder / "model.joblib"),
           "BENCH_COLUMNS": json.dumps(columns), "BENTOML_HOME": str(folder / "home"),
           "BENTOML_DO_NOT_TRACK": "True"}
    return [server("BentoML 1.4.40, adaptive batching", [
        str(python.parent / "bentoml"), "serve", "service:Pipeline", "--host", "127.0.0.1",
        "--port", "{port}"], env, "/readyz", workdir / "bentoml.log", cwd=folder,
        timeout=300)]


if __name__ == "__main__":  # make the venvs ahead of a run
    print(ensure_venv(VENV / "mlserver-venv", mlserver_pins()))
    print(ensure_venv(VENV / "bentoml-venv", bentoml_pins()))
    sys.exit(0)
