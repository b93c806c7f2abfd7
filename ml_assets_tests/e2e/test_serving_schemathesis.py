"""Schemathesis against a live `python -m serving` (uvicorn on 127.0.0.1) serving a
registered breast-cancer model: every operation of /openapi.json, a fixed seed, a
bounded number of cases, every check. No server error, no answer that contradicts
the documented status codes, content types, headers or response schemas."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ml_assets_tests.support.api_process import api_process

ST = Path(sys.executable).with_name("st")
SEED = 42

# Every check runs on every operation, except one on one operation:
# positive_data_acceptance on POST /invocations. Its bodies are CSV text, Parquet bytes
# and JSON tables whose validity JSON Schema cannot express (a CSV header naming the
# features, rows as wide as `columns` in dataframe_split, equally long column lists in
# `inputs`), so "schema-valid" generated bodies are mostly not tables at all and a
# 400 for them is correct. Its negative_data_rejection and all response checks stay on.
CONFIG = """
[checks]
enabled = true

[[operations]]
include-path = "/invocations"
include-method = "POST"
checks.positive_data_acceptance.enabled = false
"""


def _checks(event) -> list[dict]:
    """Every {"name", "status"} check result inside one ndjson event."""
    found: list[dict] = []
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            checks = item.get("checks")  # {case id: [check results]}
            groups = checks.values() if isinstance(checks, dict) else [checks or []]
            found.extend(c for group in groups if isinstance(group, list)
                         for c in group if isinstance(c, dict) and "status" in c)
            stack.extend(v for k, v in item.items() if k != "checks")
        elif isinstance(item, list):
            stack.extend(item)
    return found


# One worker: with several, Hypothesis sometimes fails inside CPython's ast module while
# describing a lambda from two threads ("AST constructor recursion depth mismatch"), a
# runtime error of the tool, not of the service.
def _run_schemathesis(url: str, tmp_path: Path, max_examples: int,
                      headers: list[str]) -> tuple[subprocess.CompletedProcess, list[dict]]:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    report = tmp_path / f"report_{max_examples}"
    command = [str(ST), "--config-file", str(config), "run", f"{url}/openapi.json",
               "--seed", str(SEED), "--max-examples", str(max_examples), "--workers", "1",
               "--generation-database", "none", "--request-timeout", "10",
               "--no-color", "--report", "ndjson", "--report-dir", str(report)]
    for header in headers:
        command += ["--header", header]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=150)
    checks = []
    for path in report.glob("*.ndjson"):
        for line in path.read_text().splitlines():
            checks.extend(_checks(json.loads(line)))
    return done, checks


def _generated(output: str) -> int:
    match = re.search(r"(\d+) generated", output)
    assert match, output[-3000:]
    return int(match.group(1))


# The auth-on run also serves ML_API_INPUT_POLICY=reject, so both OpenAPI documents are
# checked: reject's enum/minimum/maximum must be enforced (negative_data_rejection), and
# accept's (the default) must claim no constraint it does not enforce.
@pytest.mark.parametrize("api_key, max_examples, policy", [(None, 60, "accept"),
                                                          ("st-key", 15, "reject")],
                         ids=["auth-off", "auth-on"])
def test_schemathesis_finds_nothing(mlflow_store, cancer_champion, tmp_path, api_key,
                                    max_examples, policy):
    if not ST.exists():
        pytest.fail(f"{ST} missing: install the dev extra (schemathesis)")
    extra = {"ML_API_INPUT_POLICY": policy, **({"ML_API_KEY": api_key} if api_key else {})}
    env = {"MLFLOW_TRACKING_URI": mlflow_store["tracking_uri"],
           "ML_REGISTERED_MODEL_NAME": cancer_champion.name, **extra}
    with api_process(env, tmp_path) as api:
        # With a key, schemathesis sends it (and its ignored_auth check drops it to see
        # the 401); without one, the endpoints are open.
        headers = [f"X-API-Key: {api_key}"] if api_key else []
        done, checks = _run_schemathesis(api.url, tmp_path, max_examples, headers)
    output = done.stdout + done.stderr
    generated = _generated(output)
    failed = [c for c in checks if c["status"] == "failure"]
    names = {c["name"] for c in checks}
    print(f"schemathesis ({'auth on' if api_key else 'auth off'}): {generated} cases, "
          f"{len(checks)} check results, {len(failed)} failed, checks {sorted(names)}")
    assert done.returncode == 0 and not failed, output[-6000:]
    assert "internal server error" not in output
    assert re.search(rf"{generated} generated, {generated} passed", output), output[-3000:]
    expected = {"not_a_server_error", "status_code_conformance", "content_type_conformance",
                "response_headers_conformance", "response_schema_conformance",
                "negative_data_rejection", "positive_data_acceptance"}
    if api_key:
        expected.add("ignored_auth")
    assert expected <= names, sorted(names)
    if api_key is None:
        assert generated >= 500, generated
