"""The deployment files, checked without a Docker engine (none runs on the dev machine).

docker/Dockerfile.code, docker/Dockerfile.api, docker/entrypoint-code.sh,
docker/dagster.yaml, compose.yaml, .dockerignore, .github/workflows/ci.yml and
deploy/prometheus/*.yml are parsed, and every command in them is exercised another way:

- every CMD, ENTRYPOINT, HEALTHCHECK and compose command/health check names an entry
  point installed here, and its arguments parse with that program's own CLI (click);
- the instance config builds a real DagsterInstance on PostgreSQL;
- the images' default commands run for real (the code server, the API), through the
  entrypoint script, with the compose environment, and their HEALTHCHECKs pass against
  them; a Celery worker starts as compose starts it, answers its health check and shuts
  down warm on SIGTERM; the database-init script runs against PostgreSQL;
- environment variables, ports, host names and database names agree across files, and
  the code reads every variable compose sets;
- alert rules use only metrics and labels the API really exports.

PostgreSQL and Redis on 127.0.0.1 are needed for the live checks: without them those
tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path

import click
import pytest
import yaml

from ml_assets_tests.support import services
from ml_assets_tests.support.api_process import start_api
from ml_assets_tests.support.processes import LoggedProcess
from ml_assets_tests.support.services import free_port, reachable

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
CODE_DOCKERFILE = DOCKER / "Dockerfile.code"
API_DOCKERFILE = DOCKER / "Dockerfile.api"
ENTRYPOINT = DOCKER / "entrypoint-code.sh"
INSTANCE_YAML = DOCKER / "dagster.yaml"
COMPOSE = ROOT / "compose.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
VENV_BIN = Path(sys.executable).parent

# What compose needs from .env to interpolate at all (the required secrets).
DOT_ENV = {"POSTGRES_PASSWORD": "test-password", "ML_API_KEY": "test-api-key"}
OUR_IMAGES = {"docker/Dockerfile.code": CODE_DOCKERFILE, "docker/Dockerfile.api": API_DOCKERFILE}
DAGSTER_SERVICES = ["user_code", "webserver", "daemon", "celery_worker"]
LONG_RUNNING = ["postgres", "redis", "rabbitmq", "mlflow", *DAGSTER_SERVICES, "api"]
# Variables consumed by something other than our code: the module whose source must
# contain the name, or None for programs outside Python (named in the comment).
THIRD_PARTY_ENV = {
    "MLFLOW_BACKEND_STORE_URI": "mlflow.cli",  # `mlflow server --backend-store-uri`
    "TINI_KILL_PROCESS_GROUP": None,  # tini (compose `init: true`): signal the group
}
LIBPQ_ENV = {"PGHOST", "PGUSER", "PGPASSWORD", "PGPORT", "PGDATABASE"}


# --- parsing ---------------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str
    value: str
    stage: str


@dataclass
class Dockerfile:
    path: Path
    instructions: list[Instruction]
    args: dict[str, str] = field(default_factory=dict)

    def final(self, keyword: str) -> list[Instruction]:
        last = self.instructions[-1].stage
        return [i for i in self.instructions if i.stage == last and i.keyword == keyword]

    @property
    def stages(self) -> list[str]:
        return list(dict.fromkeys(i.stage for i in self.instructions if i.stage))

    def env(self) -> dict[str, str]:
        """The final stage's ENV, expanded like Docker does ($VAR, ${VAR})."""
        env: dict[str, str] = {"PATH": os.environ.get("PATH", "")}
        for instruction in self.final("ENV"):
            for token in shlex.split(instruction.value):
                name, _, value = token.partition("=")
                env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
        return env

    def exec_form(self, keyword: str) -> list[str]:
        (instruction,) = self.final(keyword)
        return exec_form(instruction.value)

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        (instruction,) = self.final("HEALTHCHECK")
        options, _, command = instruction.value.partition(" CMD ")
        flags = dict(flag.removeprefix("--").split("=", 1) for flag in options.split())
        return flags, exec_form(command)

    def copies(self) -> list[tuple[list[str], str, dict[str, str]]]:
        result = []
        for instruction in self.instructions:
            if instruction.keyword != "COPY":
                continue
            tokens = shlex.split(instruction.value)
            flags = dict(t.removeprefix("--").split("=", 1) for t in tokens if t.startswith("--"))
            paths = [t for t in tokens if not t.startswith("--")]
            result.append((paths[:-1], paths[-1], flags))
        return result


def exec_form(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        return json.loads(value)
    return ["/bin/sh", "-c", value]


def parse_dockerfile(path: Path) -> Dockerfile:
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment inside a continuation
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, f"{path.name}: dangling line continuation"
    parsed, stage, args = [], "", {}
    for line in lines:
        keyword, _, value = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ARG" and not stage and "=" in value:
            name, _, default = value.partition("=")
            args[name] = default
        if keyword == "FROM":
            stage = value.split(" AS ")[-1].strip() if " AS " in value else value
        parsed.append(Instruction(keyword, value.strip(), stage))
    return Dockerfile(path, parsed, args)


_INTERPOLATION = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|(\w+))")


def interpolate(value, variables: dict[str, str]):
    """Compose's variable interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, $VAR."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match.group(1):
            return "$"
        name = match.group(2) or match.group(5)
        operator, argument = match.group(3), match.group(4)
        present = name in variables
        current = variables.get(name, "")
        if operator in (":-", "-"):
            use_default = not current if operator == ":-" else not present
            return interpolate(argument, variables) if use_default else current
        if operator in (":?", "?"):
            if (not current) if operator == ":?" else (not present):
                raise ValueError(f"required variable {name} is missing: {argument}")
            return current
        return current

    return _INTERPOLATION.sub(replace, value)


def load_compose(variables: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE.read_text()),
                       DOT_ENV if variables is None else variables)


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def image_of(service: dict) -> Path | None:
    build = service.get("build")
    if not build:
        return None
    return OUR_IMAGES.get(build["dockerfile"])


def argv_of(command) -> list[str]:
    return command if isinstance(command, list) else shlex.split(command)


def health_argv(test: list[str]) -> list[str]:
    kind, *rest = test
    if kind == "CMD":
        return rest
    assert kind == "CMD-SHELL", test
    return ["/bin/sh", "-c", rest[0]]


def option(argv: list[str], *names: str) -> str:
    for i, token in enumerate(argv):
        if token in names:
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and token.startswith(name + "="):
                return token.split("=", 1)[1]
    raise AssertionError(f"none of {names} in {argv}")


def code_location_name() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"][
        "code_location_name"]


CODE = parse_dockerfile(CODE_DOCKERFILE)
API = parse_dockerfile(API_DOCKERFILE)
COMPOSED = load_compose()
SERVICES = COMPOSED["services"]


# --- CLIs: entry points and argument parsing -----------------------------------------

CLICK_OVERRIDES = {"celery": "celery.bin.celery:celery"}


def click_command(executable: str) -> click.Command:
    target = CLICK_OVERRIDES.get(executable)
    if target is None:
        scripts = [ep for ep in metadata.entry_points(group="console_scripts")
                   if ep.name == executable]
        assert scripts, f"{executable!r} is not an installed console script"
        target = scripts[0].value
    module_name, _, attribute = target.partition(":")
    module = __import__(module_name, fromlist=[attribute])
    obj = getattr(module, attribute)
    if not isinstance(obj, click.Command):  # main() wrappers around module.cli
        obj = getattr(module, "cli", None)
    assert isinstance(obj, click.Command), f"{executable}: no click command behind {target}"
    return obj


def parse_cli(argv: list[str]) -> tuple[click.Command, dict]:
    """Parse argv with the program's own click CLI, down to the leaf subcommand; raises
    click's error for an unknown command, option or a bad value."""
    executable, *args = argv
    command = click_command(Path(executable).name)
    ctx = command.make_context(executable, list(args))
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, sub, sub_args = command.resolve_command(ctx, rest)
        assert sub is not None, f"{argv}: no subcommand {name}"
        ctx = sub.make_context(name or "", list(sub_args), parent=ctx)
        command = sub
    return command, ctx.params


def check_program(argv: list[str], local_paths: dict[str, str]) -> str:
    """Whether argv runs here: python -m/-c, the entry-point script, or a click CLI whose
    arguments parse. Container paths are mapped to local ones first. Returns a note."""
    argv = [_localize_path(a, local_paths) for a in argv]
    executable = argv[0]
    if executable == "/usr/local/bin/entrypoint-code.sh":
        return "entrypoint"
    if executable in ("python", "python3"):
        if argv[1] == "-m":
            module = argv[2]
            spec = util.find_spec(module)
            assert spec is not None, f"python -m {module}: no such module"
            if spec.submodule_search_locations:
                assert util.find_spec(f"{module}.__main__"), f"{module} has no __main__"
            return f"module {module}"
        assert argv[1] == "-c", argv
        compile(argv[2], "<healthcheck>", "exec")
        return "python -c"
    assert (VENV_BIN / executable).exists(), f"{executable} is not installed in {VENV_BIN}"
    command, _ = parse_cli(argv)
    return f"click {command.name}"


def _localize_path(token: str, local_paths: dict[str, str]) -> str:
    for container, local in local_paths.items():
        if token.startswith(container):
            return local + token[len(container):]
    return token


def run_entrypoint(dagster_home: Path, env: dict[str, str], *command: str,
                   timeout: float = 60) -> subprocess.CompletedProcess:
    full = {**env, "DAGSTER_HOME": str(dagster_home)}
    return subprocess.run(["/bin/sh", str(ENTRYPOINT), *command], env=full, text=True,
                          capture_output=True, timeout=timeout)


# --- live services: started early, in parallel, waited on by the tests -----------------

def require(host: str, port: int, what: str) -> None:
    services.require((host, port, what))


def base_env() -> dict[str, str]:
    """This environment without the developer's platform settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ML_", "DAGSTER_", "MLFLOW_", "CELERY_"))}
    env.update({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
                "DAGSTER_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1"})
    return env


def container_env(dockerfile: Dockerfile, service: str, overrides: dict[str, str],
                  home: Path) -> dict[str, str]:
    """Image ENV + compose environment, with service host names, ports and stores
    pointed at this machine (`overrides` may only replace what compose sets)."""
    composed = environment(SERVICES[service])
    unknown = set(overrides) - set(composed)
    assert not unknown, f"{service}: overriding variables compose does not set: {unknown}"
    env = {**base_env(), **dockerfile.env(), **composed, **overrides}
    env["PATH"] = env["PATH"].replace("/opt/venv/bin", str(VENV_BIN))
    env["ML_PLATFORM_HOME"] = str(home / "ml_platform")
    return env


@dataclass
class Live:
    home: Path
    dagster_home: Path
    code_port: int
    api_port: int
    code_env: dict[str, str]
    api_env: dict[str, str]
    worker_env: dict[str, str]
    log_db: str  # the prediction log's database
    processes: dict[str, LoggedProcess] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.processes[name] = LoggedProcess(argv, env, self.home / f"{name}.log",
                                             cwd=self.home)

    def start_api(self) -> None:
        """The API image's CMD with its container environment, through the one launcher."""
        self.processes["api"] = start_api({}, self.home, command=API.exec_form("CMD"),
                                          environ=self.api_env, cwd=self.home)

    def log(self, name: str) -> str:
        return self.processes[name].log(3000)

    def wait_for(self, name: str, check, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name].process
            if process.poll() is not None:
                pytest.fail(f"{name} exited {process.returncode}:\n{self.log(name)}")
            if check():
                return
            time.sleep(0.2)
        pytest.fail(f"{name} not ready after {timeout:.0f} s:\n{self.log(name)}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.running:
                process.send(signal.SIGTERM, group=True)
        for process in self.processes.values():
            # a worker still importing ignores SIGTERM (see entrypoint-code.sh): 5 s
            process.stop(None, timeout=5)


PG = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)


@pytest.fixture(scope="module", autouse=True)
def live(request, tmp_path_factory) -> Iterator[Live | None]:
    """Starts the code server, the API and a Celery worker as the images and compose
    start them, before the first test, so they boot while the static checks run (only
    when a selected test uses them)."""
    wanted = any("live" in getattr(item, "fixturenames", ()) and
                 item.path == request.path for item in request.session.items)
    if not (wanted and reachable(*PG) and reachable(*REDIS)):
        yield None
        return
    home = tmp_path_factory.mktemp("deploy")
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(INSTANCE_YAML, dagster_home / "dagster.yaml")
    (home / "ml_platform").mkdir()
    code_port, api_port = free_port(), free_port()
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    stores = {"MLFLOW_TRACKING_URI": tracking,
              "ML_MLFLOW_ARTIFACT_LOCATION": (home / "artifacts").as_uri()}
    instance = {"DAGSTER_PG_HOST": PG[0], "DAGSTER_PG_USER": "postgres",
                "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "test"}
    # Redis databases 13/14: never the default 0/1 other tests' Celery runs may use.
    celery = {"ML_CELERY_BROKER": "redis://127.0.0.1:6379/13",
              "ML_CELERY_BACKEND": "redis://127.0.0.1:6379/14"}
    # Both containers' entrypoints write workspace.yaml into the same DAGSTER_HOME here.
    code_server = {"DAGSTER_CODE_HOST": "127.0.0.1", "DAGSTER_CODE_PORT": str(code_port)}
    # The prediction log in a database of its own, as db_init creates `predictions`.
    log_db = f"deploy_test_{uuid.uuid4().hex[:8]}_predictions"
    _admin_sql(f'CREATE DATABASE "{log_db}"')
    log_url = {"ML_PREDICTION_LOG_URL": f"postgresql://postgres@{PG[0]}:{PG[1]}/{log_db}"}
    code_env = container_env(CODE, "user_code", {**instance, **celery, **stores,
                                                 **code_server, **log_url}, home)
    worker_env = container_env(CODE, "celery_worker", {**instance, **celery, **stores,
                                                       **code_server, **log_url}, home)
    worker_env["HOSTNAME"] = socket.gethostname()
    api_env = container_env(API, "api", {
        "MLFLOW_TRACKING_URI": tracking, **log_url,
        "ML_API_HOST": "127.0.0.1", "ML_API_PORT": str(api_port)}, home)
    for env in (code_env, worker_env):
        env["DAGSTER_HOME"] = str(dagster_home)
    state = Live(home, dagster_home, code_port, api_port, code_env, api_env, worker_env,
                 log_db)
    local = {"/opt/dagster/dagster_home": str(dagster_home)}
    code_cmd = _with_port(_with_port(CODE.exec_form("CMD"), "-p", code_port), "-h", "127.0.0.1")
    state.start("code_server", ["/bin/sh", str(ENTRYPOINT), *code_cmd], code_env)
    state.start_api()
    worker_cmd = [_localize_path(a, local) for a in argv_of(SERVICES["celery_worker"]["command"])]
    state.start("celery_worker", ["/bin/sh", str(ENTRYPOINT), *worker_cmd], worker_env)
    try:
        yield state
    finally:
        state.stop()
        _admin_sql(f'DROP DATABASE IF EXISTS "{log_db}" WITH (FORCE)')


def _admin_sql(statement: str, database: str = "postgres") -> list[tuple]:
    """Run one statement on the local PostgreSQL as its superuser (autocommit)."""
    import psycopg2

    conn = psycopg2.connect(host=PG[0], port=PG[1], user="postgres", dbname=database,
                            connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def _with_port(argv: list[str], flag: str, value: int | str) -> list[str]:
    """argv with the value of `flag` replaced (a free port, a local bind address)."""
    argv = list(argv)
    argv[argv.index(flag) + 1] = str(value)
    return argv


def need_live(live: Live | None) -> Live:
    require(*PG, "PostgreSQL")
    require(*REDIS, "Redis")
    assert live is not None
    return live


# --- docker/dagster.yaml -----------------------------------------------------------------

def instance_env(monkeypatch, **extra: str) -> None:
    for name, value in {**CODE.env(), "DAGSTER_PG_HOST": PG[0], "DAGSTER_PG_USER": "postgres",
                        "DAGSTER_PG_PASSWORD": "", "DAGSTER_PG_DB": "test", **extra}.items():
        if name != "PATH":
            monkeypatch.setenv(name, value)


def test_instance_config_builds_a_postgres_instance(tmp_path, monkeypatch):
    require(*PG, "PostgreSQL")
    from dagster import DagsterInstance
    from dagster._core.launcher import DefaultRunLauncher
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    instance_env(monkeypatch)  # the image's ENV supplies the port and the run limit
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert isinstance(instance.run_launcher, DefaultRunLauncher)
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        queue = coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs == 4 == int(CODE.env()["DAGSTER_MAX_CONCURRENT_RUNS"])
        assert {"key": "ml/trigger", "value": "drift", "limit": 1} in \
            queue.tag_concurrency_limits
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds == 6 * 3600  # lost workers
        assert not instance.telemetry_enabled
        # A real round trip through the PostgreSQL run storage.
        key, value = f"deploy-test-{uuid.uuid4().hex}", uuid.uuid4().hex
        instance.run_storage.set_cursor_values({key: value})
        assert instance.run_storage.get_cursor_values({key}) == {key: value}
    finally:
        instance.dispose()

    monkeypatch.setenv("DAGSTER_MAX_CONCURRENT_RUNS", "7")
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 7
    finally:
        instance.dispose()


@pytest.mark.parametrize("missing", ["DAGSTER_PG_HOST", "DAGSTER_PG_PASSWORD",
                                     "DAGSTER_MAX_CONCURRENT_RUNS"])
def test_instance_config_names_a_missing_variable(tmp_path, monkeypatch, missing):
    from dagster import DagsterInstance
    from dagster._core.errors import DagsterInvalidConfigError

    shutil.copy(INSTANCE_YAML, tmp_path / "dagster.yaml")
    instance_env(monkeypatch)
    monkeypatch.delenv(missing)
    if missing == "DAGSTER_MAX_CONCURRENT_RUNS":
        require(*PG, "PostgreSQL")  # storage connects first; the coordinator is lazy
    instance = None
    with pytest.raises(DagsterInvalidConfigError, match=missing):
        instance = DagsterInstance.from_config(str(tmp_path))
        instance.run_coordinator  # noqa: B018 - built on first use
    if instance is not None:
        instance.dispose()


def test_instance_config_is_the_image_and_compose_default():
    composed = {env["DAGSTER_MAX_CONCURRENT_RUNS"] for env in
                (environment(SERVICES[s]) for s in DAGSTER_SERVICES)}
    assert composed == {CODE.env()["DAGSTER_MAX_CONCURRENT_RUNS"]} == {"4"}
    assert ("docker/dagster.yaml", "/opt/dagster/dagster_home/dagster.yaml") in \
        [(src[0], dest) for src, dest, _ in CODE.copies() if len(src) == 1]
    assert CODE.env()["DAGSTER_HOME"] == "/opt/dagster/dagster_home"


# --- Dockerfiles ---------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", [CODE, API], ids=["code", "api"])
def test_image_is_slim_non_root_and_built_from_the_lock(dockerfile):
    assert dockerfile.args["PYTHON_IMAGE"] == "python:3.11-slim"
    froms = [i.value for i in dockerfile.instructions if i.keyword == "FROM"]
    assert all(f.startswith("${PYTHON_IMAGE}") for f in froms), froms
    assert len(dockerfile.stages) == 2, "a build stage and a runtime stage"
    (user,) = dockerfile.final("USER")
    assert user.value not in ("root", "0"), user
    runtime_runs = " ".join(i.value for i in dockerfile.final("RUN"))
    for tool in ("apt-get", "gcc", "build-essential", "pip install"):
        assert tool not in runtime_runs, f"the runtime stage runs {tool}"
    copied_from_build = [(s, d) for s, d, flags in dockerfile.copies() if flags.get("from")]
    assert copied_from_build == [(["/opt/venv"], "/opt/venv")]
    assert dockerfile.env()["PATH"].startswith("/opt/venv/bin:")
    installs = [cmd for i in dockerfile.instructions if i.keyword == "RUN"
                for cmd in i.value.split("&&") if "pip install" in cmd]
    assert installs
    for install in installs:  # resolving installs are constrained by the lock
        assert "--no-deps" in install or "-c requirements.lock" in install, install
    # The dependency layer installs stub packages; they and setuptools' build/ must be
    # gone before the real install, or a stale stub could end up in the wheel.
    (stub_layer,) = [i.value for i in dockerfile.instructions
                     if i.keyword == "RUN" and "pip uninstall -y ml-assets" in i.value]
    assert re.search(r"rm -rf build ml_assets\.egg-info ml_assets serving$", stub_layer)
    # pyproject.toml's readme and the lock are in the context before the first install
    first_install = next(n for n, i in enumerate(dockerfile.instructions)
                         if "pip install" in i.value)
    copied_before = {Path(s).name for n, i in enumerate(dockerfile.instructions)
                     if i.keyword == "COPY" and n < first_install
                     for s in shlex.split(i.value)[:-1]}
    assert {"pyproject.toml", "README.md", "requirements.lock", "setup.py"} <= copied_before


def test_lock_pins_every_package_the_images_install():
    """The images install ml-assets[production] with requirements.lock as constraints: a
    package missing from the lock would be resolved freshly at every build."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.strip().partition("==")
            lock[canonicalize_name(name)] = version.split(";")[0].strip()
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # pyproject.toml itself, not the installed metadata (an editable install's can be stale)
    roots = [*project["dependencies"], *project["optional-dependencies"]["production"]]
    needed: dict[str, set[str]] = {}
    todo: list[tuple[str | None, set[str]]] = [(None, set())]
    while todo:
        name, extras = todo.pop()
        requires = roots if name is None else metadata.distribution(name).requires or []
        for requirement in requires:
            req = Requirement(requirement)
            assert canonicalize_name(req.name) != "ml-assets", "expand self-references"
            if req.marker and not any(req.marker.evaluate({"extra": e})
                                      for e in {*extras, ""}):
                continue
            key = canonicalize_name(req.name)
            if key not in needed or not set(req.extras) <= needed[key]:
                needed[key] = needed.get(key, set()) | set(req.extras)
                todo.append((req.name, set(req.extras)))
    missing = sorted(k for k in needed if k not in lock)
    assert not missing, ("requirements.lock does not pin packages the images install "
                         f"(regenerate it, README 'Maintaining the lock file'): {missing}")
    drift = {k: (lock[k], metadata.version(k)) for k in needed
             if metadata.version(k) != lock[k]}
    assert not drift, f"installed versions differ from the lock: {drift}"


def test_dockerignore_keeps_the_context_to_the_sources():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for dockerfile in (CODE, API):
        for sources, _, flags in dockerfile.copies():
            if flags.get("from"):
                continue
            for source in sources:
                path = ROOT / source
                assert path.exists(), f"{dockerfile.path.name} copies missing {source}"
                files = [path] if path.is_file() else [
                    p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
                assert files, source
                for file in files:
                    relative = file.relative_to(ROOT).as_posix()
                    assert not docker_ignored(relative, patterns), f"{relative} is ignored"
    for secret_or_bulk in (".env", ".git/HEAD", ".venv/bin/python", "mlruns/0/meta.yaml",
                           ".ml_platform/mlflow.db", "ml_assets/x.db",
                           "ml_assets/__pycache__/cli.cpython-311.pyc",
                           "ml_assets_tests/production/test_deploy_files.py",
                           "benchmarks/results/a.json",
                           "ml_assets.egg-info/PKG-INFO", "docs/operations.md"):
        assert docker_ignored(secret_or_bulk, patterns), f"{secret_or_bulk} reaches the build"


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negate
    return ignored


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def test_entrypoint_script_is_copied_and_executable():
    assert os.access(ENTRYPOINT, os.X_OK), "chmod +x docker/entrypoint-code.sh"
    (entry,) = CODE.final("ENTRYPOINT")
    target = exec_form(entry.value)[0]
    assert any(src == ["docker/entrypoint-code.sh"] and dest == target and
               flags.get("chmod") == "0755" for src, dest, flags in CODE.copies())
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    assert API.final("ENTRYPOINT") == []  # the API image runs its CMD directly


# --- every command names an installed program whose CLI accepts the arguments ------------

def all_commands() -> list[tuple[str, list[str]]]:
    commands = []
    for name, dockerfile in (("Dockerfile.code", CODE), ("Dockerfile.api", API)):
        commands.append((f"{name} CMD", dockerfile.exec_form("CMD")))
        commands.append((f"{name} HEALTHCHECK", dockerfile.healthcheck()[1]))
        if dockerfile.final("ENTRYPOINT"):
            commands.append((f"{name} ENTRYPOINT", dockerfile.exec_form("ENTRYPOINT")))
    for name, service in SERVICES.items():
        if image_of(service) is None:
            continue
        if "command" in service:
            commands.append((f"compose {name} command", argv_of(service["command"])))
        if "healthcheck" in service:
            commands.append((f"compose {name} healthcheck",
                             health_argv(service["healthcheck"]["test"])))
    return commands


@pytest.mark.parametrize("where,argv", all_commands(), ids=[c[0] for c in all_commands()])
def test_command_runs_here(where, argv, tmp_path):
    # The files the commands point at are the ones the entrypoint generates.
    env = {**base_env(), **CODE.env(), "DAGSTER_CODE_PORT": "4000"}
    env["PATH"] = env["PATH"].replace("/opt/venv/bin", str(VENV_BIN))
    result = run_entrypoint(tmp_path, env, "true")
    assert result.returncode == 0, result.stderr
    if argv[:2] == ["/bin/sh", "-c"]:  # a shell health check: its first program
        argv = shlex.split(argv[2].split(">")[0].replace("$", ""))
    check_program(argv, {"/opt/dagster/dagster_home": str(tmp_path)})


def test_compose_commands_of_the_code_image_match_its_defaults():
    image_cmd = CODE.exec_form("CMD")
    assert argv_of(SERVICES["user_code"]["command"]) == image_cmd
    assert health_argv(SERVICES["user_code"]["healthcheck"]["test"]) == \
        CODE.healthcheck()[1]
    assert option(image_cmd, "--location-name") == code_location_name()
    assert option(image_cmd, "-m") == "ml_assets.definitions"
    for service in ("webserver", "daemon"):
        assert option(argv_of(SERVICES[service]["command"]), "-w") == \
            "/opt/dagster/dagster_home/workspace.yaml"
    worker = argv_of(SERVICES["celery_worker"]["command"])
    assert worker[:5] == ["dagster-celery", "worker", "start", "-A", "dagster_celery.app"]
    assert option(worker, "-y") == "/opt/dagster/dagster_home/celery.yaml"
    healthcheck = health_argv(SERVICES["celery_worker"]["healthcheck"]["test"])[2]
    assert f"-d \"{option(worker, '-n')}@$HOSTNAME\"" in healthcheck
    assert "dagster_celery.app" in healthcheck and "$ML_CELERY_BROKER" in healthcheck


# --- the entrypoint script -------------------------------------------------------------------

def test_entrypoint_generates_a_valid_workspace_and_celery_config(tmp_path):
    from dagster._core.workspace.config_schema import ensure_workspace_config
    from dagster_celery.cli import get_validated_config

    env = {**base_env(), "DAGSTER_CODE_HOST": "code.example", "DAGSTER_CODE_PORT": "4123",
           "ML_CELERY_BROKER": "redis://broker.example:6379/0",
           "ML_CELERY_BACKEND": "redis://broker.example:6379/1"}
    result = run_entrypoint(tmp_path, env, sys.executable, "-c", "print('ran')")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"
    workspace_path = tmp_path / "workspace.yaml"
    workspace = yaml.safe_load(workspace_path.read_text())
    ensure_workspace_config(workspace, str(workspace_path))
    assert workspace["load_from"] == [{"grpc_server": {
        "host": "code.example", "port": 4123, "location_name": code_location_name()}}]
    for name, value in env.items():
        os.environ[name] = value  # get_validated_config resolves {env: ...} here
    try:
        config = get_validated_config(str(tmp_path / "celery.yaml"))
    finally:
        for name in ("ML_CELERY_BROKER", "ML_CELERY_BACKEND"):
            os.environ.pop(name, None)
    assert config["broker"] == "redis://broker.example:6379/0"
    assert config["backend"] == "redis://broker.example:6379/1"
    from ml_assets.execution import celery_config  # workers and executor agree

    assert config["config_source"] == celery_config()


def test_entrypoint_refuses_without_a_home_or_a_command(tmp_path):
    env = {k: v for k, v in base_env().items() if k != "DAGSTER_HOME"}
    result = subprocess.run(["/bin/sh", str(ENTRYPOINT), "true"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "DAGSTER_HOME" in result.stderr
    result = run_entrypoint(tmp_path, base_env())
    assert result.returncode == 64 and "no command" in result.stderr


def test_entrypoint_ignores_sigterm_only_for_dagster_celery(tmp_path):
    """So that `docker stop` reaches the Celery worker (warm shutdown) and not the
    dagster-celery launcher that would die at once and take the worker with it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    probe = ("import signal, sys; print(sys.argv[1:], "
             "signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)")
    fake = bin_dir / "dagster-celery"
    fake.write_text(f"#!{sys.executable}\n{probe}\n")
    fake.chmod(0o755)
    env = {**base_env(), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    home = tmp_path / "home"
    result = run_entrypoint(home, env, "dagster-celery", "worker", "start")
    assert result.stdout.strip() == "['worker', 'start'] True", result.stderr
    result = run_entrypoint(home, env, sys.executable, "-c", probe, "x")
    assert result.stdout.strip() == "['x'] False", result.stderr


# --- compose.yaml ------------------------------------------------------------------------------

def test_compose_requires_its_secrets_and_commits_none():
    for secret in DOT_ENV:
        with pytest.raises(ValueError, match=secret):
            load_compose({k: v for k, v in DOT_ENV.items() if k != secret})
    text = COMPOSE.read_text()
    for secret in DOT_ENV:
        assert re.search(r"\$\{" + secret + r":\?", text), f"{secret} must be required"
        assert not re.search(r"\$\{" + secret + ":-", text), f"{secret} has a default"
    assert "test-password" in json.dumps(SERVICES["postgres"])  # it did come from .env


def test_compose_services_and_dependencies():
    assert set(LONG_RUNNING) | {"db_init", "prometheus"} == set(SERVICES)
    assert SERVICES["rabbitmq"]["profiles"] == ["rabbitmq"]
    assert SERVICES["prometheus"]["profiles"] == ["monitoring"]
    for name, service in SERVICES.items():
        for dependency, spec in (service.get("depends_on") or {}).items():
            assert dependency in SERVICES, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            if condition == "service_healthy":
                assert has_healthcheck(SERVICES[dependency]), f"{dependency} has no check"
            elif condition == "service_completed_successfully":
                assert SERVICES[dependency].get("restart") == "no", dependency
            else:
                assert condition == "service_started", condition
            if "profiles" in SERVICES[dependency]:
                assert spec.get("required") is False, f"{name} needs optional {dependency}"
    for name in LONG_RUNNING:
        assert has_healthcheck(SERVICES[name]), f"{name} has no health check"
        assert SERVICES[name].get("restart") == "unless-stopped", name
    for name, service in SERVICES.items():
        if image_of(service) is not None:
            assert service.get("init") is True, f"{name}: init reaps run-worker processes"


def has_healthcheck(service: dict) -> bool:
    if "healthcheck" in service:
        return not service["healthcheck"].get("disable", False)
    image = image_of(service)
    return image is not None and bool(parse_dockerfile(image).final("HEALTHCHECK"))


def source_text() -> str:
    files = [*ROOT.joinpath("ml_assets").rglob("*.py"), *ROOT.joinpath("serving").rglob("*.py"),
             INSTANCE_YAML, ENTRYPOINT]
    return "\n".join(f.read_text() for f in files)


def module_text(module: str) -> str:
    spec = util.find_spec(module)
    assert spec and spec.origin, module
    return Path(spec.origin).read_text(errors="ignore")


def test_compose_sets_only_variables_something_reads():
    ours = source_text()
    unread: dict[str, list[str]] = {}
    for service, spec in SERVICES.items():
        if image_of(spec) is None:
            continue
        for name in environment(spec):
            if re.search(rf"\b{name}\b", ours):
                continue
            if name in THIRD_PARTY_ENV:
                module = THIRD_PARTY_ENV[name]
                if module is None or name in module_text(module):
                    continue
            unread.setdefault(name, []).append(service)
    assert not unread, ("compose sets variables that nothing reads (wire them in the code "
                        f"or drop them from compose.yaml): {unread}")


def test_db_init_sets_only_variables_it_uses():
    service = SERVICES["db_init"]
    script = "\n".join(service["command"])
    for name in environment(service):
        assert name in LIBPQ_ENV or f"${name}" in script, name


def test_dagster_processes_get_every_variable_their_config_reads():
    instance_vars = set(re.findall(r"^\s+env: (\w+)$", INSTANCE_YAML.read_text(), re.M))
    assert instance_vars == {"DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER",
                             "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB",
                             "DAGSTER_MAX_CONCURRENT_RUNS"}
    celery_vars = set(re.findall(r"^\s+env: (\w+)$", ENTRYPOINT.read_text(), re.M))
    assert celery_vars == {"ML_CELERY_BROKER", "ML_CELERY_BACKEND"}
    for service in DAGSTER_SERVICES:
        available = set(environment(SERVICES[service])) | set(CODE.env())
        assert instance_vars | celery_vars <= available, service
        assert environment(SERVICES[service])["ML_EXECUTOR"] == "celery"
    execution = (ROOT / "ml_assets" / "execution.py").read_text()
    assert all(name in execution for name in celery_vars)


def test_ports_hosts_and_databases_agree():
    code_cmd, (_, code_health) = CODE.exec_form("CMD"), CODE.healthcheck()
    code_port = option(code_cmd, "-p")
    assert option(code_health, "-p") == code_port == CODE.env()["DAGSTER_CODE_PORT"]
    exposed = set(CODE.final("EXPOSE")[0].value.split())
    for service in ("webserver", "daemon", "user_code", "celery_worker"):
        env = environment(SERVICES[service])
        assert env["DAGSTER_CODE_HOST"] == "user_code" and env["DAGSTER_CODE_PORT"] == code_port

    web = argv_of(SERVICES["webserver"]["command"])
    assert container_ports(SERVICES["webserver"]) == [option(web, "-p")]
    assert f":{option(web, '-p')}/" in " ".join(health_argv(
        SERVICES["webserver"]["healthcheck"]["test"]))

    mlflow = argv_of(SERVICES["mlflow"]["command"])
    mlflow_port = option(mlflow, "--port")
    assert container_ports(SERVICES["mlflow"]) == [mlflow_port]
    assert f":{mlflow_port}/health" in " ".join(health_argv(
        SERVICES["mlflow"]["healthcheck"]["test"]))
    allowed = option(mlflow, "--allowed-hosts").split(",")
    for service in [*DAGSTER_SERVICES, "api"]:
        uri = environment(SERVICES[service])["MLFLOW_TRACKING_URI"]
        host_port = uri.removeprefix("http://").rstrip("/")
        assert host_port == f"mlflow:{mlflow_port}" and host_port in allowed, (service, uri)
    assert {code_port, option(web, "-p"), mlflow_port} <= exposed

    api_port = API.env()["ML_API_PORT"]
    assert environment(SERVICES["api"])["ML_API_PORT"] == api_port
    assert container_ports(SERVICES["api"]) == [api_port]
    assert API.final("EXPOSE")[0].value.split() == [api_port]
    assert API.env()["ML_API_HOST"] == "0.0.0.0" == environment(SERVICES["api"])["ML_API_HOST"]
    targets = [t for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
               if job["job_name"] == "ml-api" for c in job["static_configs"]
               for t in c["targets"]]
    assert targets == [f"api:{api_port}"]

    databases = environment(SERVICES["db_init"])["ML_DATABASES"].split()
    for service in DAGSTER_SERVICES:
        env = environment(SERVICES[service])
        assert env["DAGSTER_PG_HOST"] == "postgres" and env["DAGSTER_PG_DB"] in databases
        assert env["DAGSTER_PG_PORT"] == "5432"
    log_urls = {environment(SERVICES[s])["ML_PREDICTION_LOG_URL"]
                for s in [*DAGSTER_SERVICES, "api"]}
    assert len(log_urls) == 1, "the API and the Dagster services must share one log"
    (log_url,) = log_urls
    assert log_url.endswith("/predictions")
    urls = [environment(SERVICES["mlflow"])["MLFLOW_BACKEND_STORE_URI"], log_url]
    for url in urls:
        match = re.fullmatch(r"postgresql://(\w+):(.+)@postgres:5432/(\w+)", url)
        assert match and match.group(3) in databases, url
        assert match.group(2) == DOT_ENV["POSTGRES_PASSWORD"]
    from ml_assets.core.prediction_log import resolve_log_location

    assert resolve_log_location(log_url) == ("postgres", log_url)  # the API's backend
    for service in DAGSTER_SERVICES:
        broker = environment(SERVICES[service])["ML_CELERY_BROKER"]
        assert re.fullmatch(r"redis://redis:6379/\d+", broker), broker


def container_ports(service: dict) -> list[str]:
    return [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]


def test_http_healthchecks_target_real_routes():
    from serving.protocols.native import open_routes

    checks = {"webserver": ("dagster_webserver.webserver", '"/server_info"'),
              "mlflow": ("mlflow.server", '"/health"')}
    for service, (module, route) in checks.items():
        command = " ".join(health_argv(SERVICES[service]["healthcheck"]["test"]))
        assert route.strip('"') in command, service
        assert route in module_text(module), f"{module} serves no {route}"
    assert "/health'" in " ".join(API.healthcheck()[1])
    assert "/health" in {r.path for r in open_routes.routes}


def test_published_ports_listen_on_localhost_by_default():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    opened = load_compose({**DOT_ENV, "BIND_ADDRESS": "0.0.0.0", "ML_API_PUBLISHED_PORT": "80"})
    assert opened["services"]["api"]["ports"] == ["0.0.0.0:80:8000"]


def test_volumes_are_shared_where_steps_meet():
    storage = "dagster_storage:/opt/dagster/dagster_home/storage"
    home = "ml_platform_home:/var/lib/ml_platform"
    for service in DAGSTER_SERVICES:
        assert {storage, home} <= set(SERVICES[service]["volumes"]), service
    assert home in SERVICES["api"]["volumes"]
    artifacts = option(argv_of(SERVICES["mlflow"]["command"]), "--artifacts-destination")
    assert f"mlflow_artifacts:{artifacts}" in SERVICES["mlflow"]["volumes"]
    assert {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", [])
            if not v.startswith(".")} <= set(COMPOSED["volumes"])


def test_db_init_script_creates_the_databases_idempotently():
    require(*PG, "PostgreSQL")
    if shutil.which("psql") is None:
        services.skip_or_fail("psql is needed to run compose's db_init script")
    service = SERVICES["db_init"]
    script = service["command"][0]
    names = [f"deploy_test_{uuid.uuid4().hex[:8]}_{i}" for i in range(2)]
    env = {**base_env(), **environment(service), "PGHOST": PG[0], "PGUSER": "postgres",
           "PGPASSWORD": "", "ML_DATABASES": " ".join(names)}
    argv = [*service["entrypoint"], script]
    assert argv[:2] == ["sh", "-c"]
    try:
        for _ in range(2):  # the second run finds them and creates nothing
            result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
        listed = subprocess.run(["psql", "-d", "postgres", "-tAc",
                                 "SELECT datname FROM pg_database"], env=env,
                                capture_output=True, text=True, timeout=30).stdout.split()
        assert set(names) <= set(listed)
    finally:
        for name in names:
            subprocess.run(["psql", "-d", "postgres", "-c", f'DROP DATABASE IF EXISTS "{name}"'],
                           env=env, capture_output=True, timeout=30)


# --- the images' commands, for real -----------------------------------------------------------

def test_code_server_starts_and_passes_its_healthcheck(live, monkeypatch):
    state = need_live(live)
    health = _with_port(CODE.healthcheck()[1], "-p", state.code_port)
    assert health[0] == "dagster"
    health = [str(VENV_BIN / health[0]), *health[1:]]

    def healthy() -> bool:
        return subprocess.run(health, env=state.code_env, capture_output=True,
                              timeout=30).returncode == 0

    state.wait_for("code_server", healthy, timeout=120)
    # The workspace file the entrypoint wrote (as for the webserver and the daemon)
    # loads the location from this server, under the project's location name.
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget

    workspace = state.dagster_home / "workspace.yaml"
    for name, value in state.code_env.items():  # the webserver's instance: same variables
        if name.startswith("DAGSTER_"):
            monkeypatch.setenv(name, value)
    with DagsterInstance.from_config(str(state.dagster_home)) as instance, \
            WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace)])) \
            as context:
        request = context.create_request_context()
        assert request.code_location_names == [code_location_name()]
        location = request.get_code_location(code_location_name())
        (repository,) = location.get_repositories().values()
        assert {"train_model", "score_drift"} <= {job.name for job in
                                                  repository.get_all_jobs()}


def test_api_starts_and_passes_its_healthcheck(live):
    state = need_live(live)
    flags, health = API.healthcheck()
    assert health[0] == "python"
    health = [sys.executable, *health[1:]]

    def healthy() -> bool:
        return subprocess.run(health, env=state.api_env, capture_output=True,
                              timeout=10).returncode == 0

    state.wait_for("api", healthy, timeout=90)
    assert float(flags["timeout"].rstrip("s")) > 4  # urlopen's own timeout fits in it
    import httpx

    base = f"http://127.0.0.1:{state.api_port}"
    assert httpx.get(f"{base}/metrics").status_code == 401  # the key is on
    # Prometheus' scrape: Authorization: Bearer <ML_API_KEY>
    scraped = httpx.get(f"{base}/metrics",
                        headers={"Authorization": f"Bearer {DOT_ENV['ML_API_KEY']}"})
    assert scraped.status_code == 200 and "ml_api_requests_total" in scraped.text
    assert httpx.get(f"{base}/ready").status_code == 503  # no champion in a new store
    # It opened its prediction log from compose's ML_PREDICTION_LOG_URL: its tables exist
    # (the columnar batches and their request-id index).
    assert _admin_sql("SELECT to_regclass('predictions_batches') IS NOT NULL AND "
                      "to_regclass('predictions_requests') IS NOT NULL",
                      state.log_db) == [(True,)]


def test_celery_worker_starts_answers_its_healthcheck_and_shuts_down_warm(live):
    state = need_live(live)
    test = SERVICES["celery_worker"]["healthcheck"]["test"]
    health = health_argv(test)

    def healthy() -> bool:
        return subprocess.run(health, env=state.worker_env, capture_output=True,
                              timeout=30).returncode == 0

    state.wait_for("celery_worker", healthy, timeout=120)
    log = state.log("celery_worker")
    assert "redis://127.0.0.1:6379/13" in log.replace(":**@", "")  # broker from celery.yaml
    worker = state.processes["celery_worker"].process
    os.killpg(worker.pid, signal.SIGTERM)  # what tini -g does on `docker stop`
    assert worker.wait(timeout=60) == 0, state.log("celery_worker")
    assert "Warm shutdown" in state.log("celery_worker")


# --- Prometheus ------------------------------------------------------------------------------

def exported_samples() -> dict[str, set[str]]:
    """Sample name -> label names, as the API's /metrics renders them once every metric
    has a value."""
    from prometheus_client.parser import text_string_to_metric_families

    from serving.http.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    metrics.observe_request("/predict", "POST", 200, time.perf_counter())
    metrics.count_predictions("1", ["a", "b"])
    metrics.set_model("m", "1", time.time())
    metrics.model_swaps.inc()
    metrics.batch_rows.observe(3)
    metrics.log_backlog.set(0)
    metrics.log_write_failures.inc(0)
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"]
            for rule in group["rules"]]


def test_prometheus_config_scrapes_the_api_with_its_key():
    config = yaml.safe_load(PROMETHEUS.read_text())
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS.parent / rule_file).exists(), rule_file
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ml-api"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    prometheus = SERVICES["prometheus"]
    (secret,) = prometheus["secrets"]
    assert job["authorization"]["credentials_file"] == f"/run/secrets/{secret}"
    assert COMPOSED["secrets"][secret] == {"environment": "ML_API_KEY"}
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_alert_rules_use_exported_metrics_and_labels():
    from serving.http.metrics import FAILURE_REASONS
    from serving.protocols.native import open_routes, protected_routes

    samples = exported_samples()
    routes = {r.path for r in [*open_routes.routes, *protected_routes.routes]}
    jobs = {j["job_name"] for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), names
    for rule in rules:
        expr = rule["expr"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert expr.count("(") == expr.count(")"), rule["alert"]
        used = set(re.findall(r"\bml_api_\w+", expr))
        assert used <= set(samples), f"{rule['alert']}: not exported: {used - set(samples)}"
        labels_in_expr = set().union(*(samples[m] for m in used)) | {"job", "instance"}
        for metric, matchers in re.findall(r"(\w+)\{([^}]*)\}", expr):
            for label, _op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                if metric == "up":
                    assert label == "job" and value in jobs, rule["alert"]
                    continue
                assert label in samples[metric] | {"job", "instance"}, (metric, label)
                alternatives = value.split("|")
                if label == "endpoint":
                    assert set(alternatives) <= routes, (rule["alert"], alternatives)
                if label == "reason":
                    assert set(alternatives) <= set(FAILURE_REASONS), alternatives
        for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in (x.strip() for x in clause.split(",")):
                assert label in labels_in_expr, (rule["alert"], label)
        for quantile in re.findall(r"histogram_quantile\(([^,]+),", expr):
            assert 0 < float(quantile) < 1
            assert "_bucket" in expr and re.search(r"by \([^)]*\ble\b", expr), rule["alert"]


def test_alert_rules_cover_the_operational_risks():
    exprs = {r["alert"]: " ".join(r["expr"].split()) for r in alert_rules()}

    def covered(pattern: str) -> bool:
        return any(re.search(pattern, e) for e in exprs.values())

    assert covered(r'ml_api_requests_total\{[^}]*status=~"5\.\."')  # error rate
    assert covered(r"histogram_quantile\(0\.99, .*ml_api_request_duration_seconds_bucket")
    assert covered(r"ml_api_model_load_failures_total\{[^}]*load_error")
    assert covered(r"deriv\(ml_api_prediction_log_backlog")  # backlog growth
    assert covered(r"ml_api_model_version\) == 0")  # no champion loaded
    assert covered(r"ml_api_predictions_total")  # serving-side prediction drift hint
    assert covered(r'up\{job="ml-api"\} == 0')


# --- CI workflow and docs ----------------------------------------------------------------

def test_ci_workflow_runs_every_stage_from_the_lock():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    jobs = workflow["jobs"]
    layers = sorted(p.name for p in (ROOT / "ml_assets_tests").iterdir()
                    if p.is_dir() and p.name not in {"support", "__pycache__"}
                    and any(p.glob("test_*.py")))
    assert layers == ["api", "assets", "e2e", "production", "simulations", "unit"]
    assert {"lint", "typecheck", "model-validation", "images", *layers} <= set(jobs)
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    for name, script in runs.items():
        for install in re.findall(r"pip install[^\n]*", script):
            assert "-c requirements.lock" in install, (name, install)
    assert "ruff check" in runs["lint"] and "mypy" in runs["typecheck"]
    # one job per layer, each running exactly its folder: together, the whole suite
    for layer in layers:
        assert re.findall(r"pytest[^\n]*", runs[layer]) == [f"pytest ml_assets_tests/{layer}"]
    for layer in ("e2e", "production"):  # the production profile's servers
        services = jobs[layer]["services"]
        assert {s: services[s]["ports"] for s in ("postgres", "redis", "rabbitmq")} == {
            "postgres": ["5432:5432"], "redis": ["6379:6379"], "rabbitmq": ["5672:5672"]}
        assert services["postgres"]["env"]["POSTGRES_DB"] == "test"
        assert services["postgres"]["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
        # guest is loopback-only in RabbitMQ: the tests get the service's own user.
        rabbit = services["rabbitmq"]["env"]
        step = next(s for s in jobs[layer]["steps"] if "pytest" in s.get("run", ""))
        assert step["env"]["ML_TEST_RABBITMQ_URL"] == \
            f"amqp://{rabbit['RABBITMQ_DEFAULT_USER']}:{rabbit['RABBITMQ_DEFAULT_PASS']}" \
            "@127.0.0.1:5672//"

    validate = re.search(r"python scripts/validate_model.py([^\n]*(?:\n  [^\n]*)*)",
                         runs["model-validation"])
    assert validate
    spec = util.spec_from_file_location("validate_model", ROOT / "scripts" / "validate_model.py")
    assert spec and spec.loader
    module = util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    args = module.parse_args(shlex.split(validate.group(1)))  # the CI's arguments parse
    assert args.min_roc_auc == 0.95 and not args.skip_train
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(["--min-accuracy", "1.5"])
    assert exit_info.value.code == 2

    images = jobs["images"]
    assert "refs/heads/main" in images["if"]
    assert set(images["needs"]) == set(jobs) - {"images"}
    for dockerfile in ("docker/Dockerfile.code", "docker/Dockerfile.api"):
        assert f"docker build -f {dockerfile}" in runs["images"].replace("\n", " ")


def test_operations_guide_documents_metrics_alerts_and_variables():
    text = OPERATIONS.read_text()
    families = {re.sub(r"_(bucket|sum|count)$", "", s) for s in exported_samples()}
    undocumented = sorted(f for f in families if f"`{f}`" not in text)
    assert not undocumented, f"metrics missing from docs/operations.md: {undocumented}"
    missing_alerts = [r["alert"] for r in alert_rules() if r["alert"] not in text]
    assert not missing_alerts, missing_alerts
    variables = set().union(*(environment(SERVICES[s]) for s in SERVICES
                              if image_of(SERVICES[s]))) | {"DAGSTER_MAX_CONCURRENT_RUNS"}
    missing_vars = sorted(v for v in variables if v not in text)
    assert not missing_vars, f"variables missing from docs/operations.md: {missing_vars}"
    for command in ("dagster instance migrate", "mlflow db upgrade", "ml-platform rollback",
                    "/admin/reload", "pg_dump"):
        assert command in text, command
