"""deploy/kubernetes/, checked without a cluster, as test_deploy_files.py checks compose.

- every manifest validates against the Kubernetes API schemas of KUBERNETES_VERSIONS
  (kubernetes-validate, strict: an unknown field fails), the Job the K8sRunLauncher
  creates for a run included (built by dagster-k8s from the instance ConfigMap);
- the KServe resources have the structure of KServe's API types (see check_kserve);
- images, commands, ports, probe paths, variable names and database names agree with
  the Dockerfiles, compose.yaml, docker/dagster.yaml and the code that reads them;
- passwords and keys come only from Secrets.

Each check is a function over the loaded documents; test_kubernetes_mutations.py shows
that each one fails on a manifest changed the way a real mistake would change it.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ml_assets_tests.production.test_deploy_files import (
    API,
    CODE,
    INSTANCE_YAML,
    SERVICES,
    argv_of,
    environment,
    health_argv,
    module_text,
    option,
    parse_cli,
    source_text,
)
from ml_assets_tests.support.kubernetes_manifests import (
    KUBERNETES,
    SAMPLE_SECRETS,
    Doc,
    config_map,
    containers,
    expand,
    find,
    instance_config,
    load_manifests,
    pod_spec,
    resolved_env,
    run_job,
    run_launcher_config,
    validate,
)

# The oldest Kubernetes release still commonly run and the newest kubernetes-validate
# 1.37.0 carries.
KUBERNETES_VERSIONS = ("1.31", "1.37")
NAMESPACE = "ml-platform"
CODE_IMAGE = SERVICES["user_code"]["image"]  # ml-platform-code:local, as compose builds it
API_IMAGE = SERVICES["api"]["image"]
DB_INIT_IMAGE = SERVICES["db_init"]["image"]
LIBPQ_ENV = {"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"}
SECRET_NAMES = re.compile(r"PASSWORD|API_KEY|SECRET|TOKEN")
DAGSTER_HOME = CODE.env()["DAGSTER_HOME"]
Docs = list[Doc]


def code_containers(docs: Docs, image: str = CODE_IMAGE):
    return [(d, s, c) for d, s, c in containers(docs) if c["image"] == image]


def deployment_container(docs: Docs, name: str) -> dict:
    (container,) = pod_spec(find(docs, "Deployment", name))["containers"]
    return container


def service_ports(docs: Docs, name: str) -> list[tuple[int, int]]:
    return [(p["port"], p["targetPort"]) for p in find(docs, "Service", name)["spec"]["ports"]]


@functools.cache
def source_words() -> frozenset[str]:
    """Every word of ml_assets/, serving/, docker/dagster.yaml and the entrypoint."""
    return frozenset(re.findall(r"\w+", source_text()))


# --- the checks ---------------------------------------------------------------------------

def check_schemas(docs: Docs) -> None:
    """Every core manifest against the Kubernetes schemas (KServe: check_kserve;
    Kustomization: check_kustomizations)."""
    for doc in docs:
        if doc.kind in ("Kustomization", "ServingRuntime", "InferenceService"):
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                validate(doc.body, version)
            except jsonschema.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                raise AssertionError(f"{doc} is invalid on Kubernetes {version}: {path}: "
                                     f"{exc.message}") from None


def validate_pod(spec: dict, what: str) -> None:
    """Core types inside a custom resource, against the core schemas: as a Pod."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": spec}
    for version in KUBERNETES_VERSIONS:
        try:
            validate(pod, version)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"{what} on Kubernetes {version}: "
                                 f"{'.'.join(map(str, exc.path))}: {exc.message}") from None


# KServe's CRDs are not in the core schemas, and KServe's generated CRD schema (megabytes
# of YAML in its release) is not vendored here. So the structure is checked explicitly,
# against KServe 0.15's Go API types: ServingRuntimeSpec (serving/v1alpha1/
# servingruntime_types.go), PredictorSpec = ComponentExtensionSpec + PodSpec + model
# (serving/v1beta1/predictor.go, component.go, predictor_model.go); the core types they
# embed (containers, volumes, pod fields) go through the core schemas (validate_pod).
RUNTIME_FIELDS = {"supportedModelFormats", "multiModel", "disabled", "protocolVersions",
                  "containers", "volumes", "nodeSelector", "affinity", "tolerations",
                  "labels", "annotations", "imagePullSecrets"}
MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
EXTENSION_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric",
                    "containerConcurrency", "timeout", "canaryTrafficPercent", "logger",
                    "batcher", "labels", "annotations", "deploymentStrategy"}
MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "runtimeVersion", "protocolVersion",
                "storage"}
RAW_SCALE_METRICS = {"cpu", "memory"}  # HPA metrics; concurrency/rps need Knative


def check_kserve(docs: Docs) -> None:
    runtime = find(docs, "ServingRuntime", "ml-platform-api")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1", runtime["apiVersion"]
    spec = runtime["spec"]
    assert set(spec) <= RUNTIME_FIELDS, f"ServingRuntime: unknown {set(spec) - RUNTIME_FIELDS}"
    formats = spec["supportedModelFormats"]
    for entry in formats:
        assert set(entry) <= MODEL_FORMAT_FIELDS and isinstance(entry["name"], str), entry
    assert set(spec["protocolVersions"]) <= PROTOCOLS, spec["protocolVersions"]
    assert "v2" in spec["protocolVersions"], "the runtime must speak the Open Inference Protocol"
    assert spec.get("multiModel") is False
    assert [c["name"] for c in spec["containers"]] == ["kserve-container"], spec["containers"]
    validate_pod({"containers": spec["containers"], "volumes": spec.get("volumes", [])},
                 "ServingRuntime containers")

    service = find(docs, "InferenceService", "ml-platform-model")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1", service["apiVersion"]
    annotations = service["metadata"].get("annotations", {})
    assert annotations.get("serving.kserve.io/deploymentMode") == "RawDeployment", annotations
    assert annotations.get("serving.kserve.io/autoscalerClass") == "hpa", annotations
    assert set(service["spec"]) == {"predictor"}, service["spec"]
    predictor = copy.deepcopy(service["spec"]["predictor"])
    model = predictor.pop("model")
    extension = {k: predictor.pop(k) for k in list(predictor) if k in EXTENSION_FIELDS}
    # what remains is the inline PodSpec, checked with the runtime's containers
    validate_pod({**predictor, "containers": spec["containers"]}, "InferenceService predictor")
    assert 1 <= extension["minReplicas"] <= extension["maxReplicas"], extension
    assert extension["scaleMetric"] in RAW_SCALE_METRICS, extension["scaleMetric"]
    assert isinstance(extension["scaleTarget"], int) and 0 < extension["scaleTarget"] <= 100
    assert set(model) <= MODEL_FIELDS, f"predictor.model: unknown {set(model) - MODEL_FIELDS}"
    assert model["runtime"] == runtime["metadata"]["name"], model["runtime"]
    assert model["protocolVersion"] == "v2" and model["protocolVersion"] in spec["protocolVersions"]
    wanted = {k: model["modelFormat"].get(k) for k in ("name", "version")}
    assert any({k: f.get(k) for k in ("name", "version")} == wanted for f in formats), (
        f"the runtime supports no model format {wanted}")
    (container,) = spec["containers"]
    assert "cpu" in container["resources"]["requests"], "a CPU target needs a CPU request"
    # protocol v2 is a promise about the container: the API image must serve it (its port
    # is checked by check_ports)
    from serving.protocols.v2.routes import open_routes, protected_routes

    served = {r.path for r in [*open_routes.routes, *protected_routes.routes]}
    v2 = {"/v2/health/live", "/v2/health/ready", "/v2/models/{name}/ready",
          "/v2/models/{name}", "/v2/models/{name}/infer"}
    assert container["image"] == API_IMAGE and v2 <= served, f"not served: {v2 - served}"


def check_kustomizations(docs: Docs) -> None:
    folders = sorted({Path(d.path).parent for d in docs})
    for folder in folders:
        (kustomization,) = [d.body for d in docs if d.path == f"{folder}/kustomization.yaml"]
        assert set(kustomization) <= {"apiVersion", "kind", "namespace", "resources"}
        assert kustomization["namespace"] == NAMESPACE, folder
        files = {Path(d.path).name for d in docs if Path(d.path).parent == folder}
        assert set(kustomization["resources"]) == files - {"kustomization.yaml"}, (
            f"{folder}/kustomization.yaml lists {kustomization['resources']}, "
            f"the folder holds {sorted(files)}")
    assert find(docs, "Namespace", NAMESPACE)
    assert run_launcher_config(docs)["job_namespace"] == NAMESPACE


def check_images_and_commands(docs: Docs) -> None:
    known = {CODE_IMAGE, API_IMAGE, DB_INIT_IMAGE}
    for doc, _, container in containers(docs):
        assert container["image"] in known, f"{doc}: image {container['image']} is not built here"
        if container["image"] == API_IMAGE:
            # the image's CMD, `python -m serving`
            assert "command" not in container and "args" not in container, doc
        if container["image"] == CODE_IMAGE:
            assert "command" not in container, f"{doc}: command replaces the entrypoint"
    commands = {
        "ml-platform-user-code": CODE.exec_form("CMD"),
        "dagster-webserver": argv_of(SERVICES["webserver"]["command"]),
        "dagster-daemon": argv_of(SERVICES["daemon"]["command"]),
    }
    for name, argv in commands.items():
        assert deployment_container(docs, name)["args"] == argv, f"{name}: {argv} expected"
    mlflow = deployment_container(docs, "mlflow")["args"]
    parse_cli(mlflow)
    compose_mlflow = argv_of(SERVICES["mlflow"]["command"])
    for flag in ("--host", "--port", "--workers"):
        assert option(mlflow, flag) == option(compose_mlflow, flag), flag
    assert "--serve-artifacts" in mlflow
    user_code = deployment_container(docs, "ml-platform-user-code")
    assert run_launcher_config(docs)["job_image"] == user_code["image"], (
        "run pods must run the code location's image")
    assert option(user_code["args"], "-m") == "ml_assets.definitions"
    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert option(user_code["args"], "--location-name") == project["tool"]["dagster"][
        "code_location_name"]


def check_ports(docs: Docs) -> None:
    from serving.settings import ServingSettings

    api_port = int(API.env()["ML_API_PORT"])
    settings = (Path(__file__).parents[2] / "serving" / "settings.py").read_text()
    default = re.search(r'_number\("ML_API_PORT", (\d+)', settings)
    assert default and int(default.group(1)) == api_port == ServingSettings().port, (
        "the API image's port must be the service's default")
    for doc, _, container in containers(docs):
        if container["image"] != API_IMAGE:
            continue
        env = resolved_env(docs, container)
        port = int(env.get("ML_API_PORT", api_port))
        assert env.get("ML_API_HOST") == "0.0.0.0", f"{doc}: ML_API_HOST must be 0.0.0.0"
        ports = [p["containerPort"] for p in container["ports"]]
        assert ports == [port] == [api_port], (
            f"{doc}: ports {ports}, ML_API_PORT {port}, the image's {api_port}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == port, f"{doc}: {probe} port"
    assert service_ports(docs, "ml-platform-api") == [(80, api_port)]

    env = config_map(docs, "ml-platform-env")
    code = deployment_container(docs, "ml-platform-user-code")
    code_port = int(option(code["args"], "-p"))
    assert [p["containerPort"] for p in code["ports"]] == [code_port]
    assert service_ports(docs, env["DAGSTER_CODE_HOST"]) == [(code_port, code_port)]
    assert int(env["DAGSTER_CODE_PORT"]) == code_port == int(CODE.env()["DAGSTER_CODE_PORT"])
    assert option(code["livenessProbe"]["exec"]["command"], "-p") == str(code_port)

    for name, flag in (("dagster-webserver", "-p"), ("mlflow", "--port")):
        container = deployment_container(docs, name)
        port = int(option(container["args"], flag))
        assert [p["containerPort"] for p in container["ports"]] == [port], name
        assert service_ports(docs, name) == [(port, port)], name
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["port"] == port, (name, probe)
    mlflow = deployment_container(docs, "mlflow")
    port = option(mlflow["args"], "--port")
    assert env["MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}", env["MLFLOW_TRACKING_URI"]
    assert f"mlflow:{port}" in option(mlflow["args"], "--allowed-hosts").split(",")


def check_probes(docs: Docs) -> None:
    from serving.protocols.native import open_routes

    routes = {route.path for route in open_routes.routes}
    for doc, _, container in containers(docs):
        if container["image"] == API_IMAGE:
            paths = {p: container[p]["httpGet"]["path"]
                     for p in ("startupProbe", "livenessProbe", "readinessProbe")}
            assert paths == {"startupProbe": "/health", "livenessProbe": "/health",
                             "readinessProbe": "/ready"}, f"{doc}: probes {paths}"
            assert set(paths.values()) <= routes, f"{doc}: no such route {paths}"
    checks = {"dagster-webserver": ("dagster_webserver.webserver", '"/server_info"'),
              "mlflow": ("mlflow.server", '"/health"')}
    for name, (module, route) in checks.items():
        container = deployment_container(docs, name)
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"]["path"] == route.strip('"'), (name, probe)
        assert route in module_text(module), f"{module} serves no {route}"
    code = deployment_container(docs, "ml-platform-user-code")
    assert code["livenessProbe"]["exec"]["command"] == CODE.healthcheck()[1]
    daemon = deployment_container(docs, "dagster-daemon")
    assert daemon["livenessProbe"]["exec"]["command"] == health_argv(
        SERVICES["daemon"]["healthcheck"]["test"])


def check_environment(docs: Docs) -> None:
    """Every variable a container gets is read: by our code, the instance config or the
    entrypoint, or as an option's envvar by the program the container runs (click)."""
    ours = source_words()
    unread: dict[str, str] = {}
    for doc, _, container in containers(docs):
        if container["image"] == DB_INIT_IMAGE:
            continue
        names = {item["name"] for item in container.get("env", [])}
        for source in container.get("envFrom", []):
            names |= set(config_map(docs, source["configMapRef"]["name"]))
        program: set[str] = set()
        if container.get("args", [""])[0] == "mlflow":
            command, _ = parse_cli(container["args"])
            program = {p.envvar for p in command.params if isinstance(p.envvar, str)}
        unread |= {n: str(doc) for n in names
                   if n not in ours and n not in program}
    assert not unread, f"variables nothing reads: {unread}"
    env = config_map(docs, "ml-platform-env")
    instance_vars = set(re.findall(r"env: (\w+)", config_map(
        docs, "ml-platform-dagster-instance")["dagster.yaml"]))
    for name in ("ml-platform-user-code", "dagster-webserver", "dagster-daemon"):
        available = set(resolved_env(docs, deployment_container(docs, name))) | set(CODE.env())
        assert instance_vars <= available, f"{name} lacks {instance_vars - available}"
    from dagster import in_process_executor

    from ml_assets.execution import build_executor

    assert build_executor(env["ML_EXECUTOR"]) is in_process_executor, (
        "runs are one pod each: steps run in process")
    db_init = pod_spec(find(docs, "Job", "ml-platform-db-init"))["containers"][0]
    script = "\n".join(db_init["args"])
    for item in db_init["env"]:
        assert item["name"] in LIBPQ_ENV or f"${item['name']}" in script, item["name"]


def check_secrets(docs: Docs) -> None:
    assert not [d for d in docs if d.kind == "Secret"], "Secrets are created, never committed"
    for doc, _, container in [*containers(docs)]:
        for item in container.get("env", []):
            if SECRET_NAMES.search(item["name"]):
                assert "secretKeyRef" in item.get("valueFrom", {}), (
                    f"{doc}: {item['name']} must come from a Secret")
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:  # only the Secrets docs/kubernetes.md creates
                assert ref["key"] in SAMPLE_SECRETS.get(ref["name"], {}), (
                    f"{doc}: {item['name']} reads Secret {ref['name']} key {ref['key']}")
            value = item.get("value", "")
            for credentials in re.findall(r"://([^/@]*)@", value):
                assert credentials.endswith(":$(DAGSTER_PG_PASSWORD)"), (
                    f"{doc}: {item['name']} holds credentials {credentials!r}")
    for doc in docs:
        if doc.kind == "ConfigMap":
            for key, value in doc.body["data"].items():
                assert not SECRET_NAMES.search(key) and "@" not in value.split("\n")[0], (
                    f"{doc}: {key} looks like a secret")
    guide = (Path(__file__).parents[2] / "docs" / "kubernetes.md").read_text()
    for secret, keys in SAMPLE_SECRETS.items():
        for key in keys:
            assert re.search(rf"create secret generic {secret} \\\n\s+--from-literal={key}=",
                             guide), f"docs/kubernetes.md must say how to create {secret}/{key}"
    from dagster_k8s.job import DAGSTER_PG_PASSWORD_SECRET_KEY

    launcher = run_launcher_config(docs)
    assert DAGSTER_PG_PASSWORD_SECRET_KEY in SAMPLE_SECRETS[launcher["postgres_password_secret"]]


def check_connection_urls(docs: Docs, tmp_path: Path) -> None:
    from ml_assets.core.prediction_log import resolve_log_location

    db_init = pod_spec(find(docs, "Job", "ml-platform-db-init"))["containers"][0]
    init_env = resolved_env(docs, db_init)
    databases = init_env["ML_DATABASES"].split()
    env = config_map(docs, "ml-platform-env")
    assert env["DAGSTER_PG_DB"] in databases
    password = SAMPLE_SECRETS["ml-platform-postgres"]["postgresql-password"]
    server = (env["DAGSTER_PG_USER"], password, env["DAGSTER_PG_HOST"], env["DAGSTER_PG_PORT"])
    assert (init_env["PGUSER"], init_env["PGPASSWORD"], init_env["PGHOST"],
            init_env["PGPORT"]) == server, "db-init must reach the server Dagster uses"
    job = run_job(docs, tmp_path)
    pods = [c for _, _, c in containers(docs)] + job["spec"]["template"]["spec"]["containers"]
    urls = {}
    for container in pods:
        for name, value in resolved_env(docs, container).items():
            if name in ("ML_PREDICTION_LOG_URL", "MLFLOW_BACKEND_STORE_URI"):
                urls.setdefault(name, set()).add(value)
    assert len(urls["ML_PREDICTION_LOG_URL"]) == 1, urls["ML_PREDICTION_LOG_URL"]
    for name, database in (("ML_PREDICTION_LOG_URL", "predictions"),
                           ("MLFLOW_BACKEND_STORE_URI", "mlflow")):
        (url,) = urls[name]
        assert "$(" not in url, f"{name} references a variable defined after it: {url}"
        match = re.fullmatch(r"postgresql://([^:]+):([^@]+)@([^:/]+):(\d+)/(\w+)", url)
        assert match and match.groups()[:4] == server, (name, url)
        assert match.group(5) == database and database in databases, (name, url)
    log_url = next(iter(urls["ML_PREDICTION_LOG_URL"]))
    assert resolve_log_location(log_url) == ("postgres", log_url)


def check_db_init(docs: Docs) -> None:
    container = pod_spec(find(docs, "Job", "ml-platform-db-init"))["containers"][0]
    env = resolved_env(docs, container)
    script = expand("\n".join(container["args"]), env)
    compose = SERVICES["db_init"]
    assert container["command"] == ["sh", "-c"] and compose["entrypoint"] == ["sh", "-c"]
    assert script == "\n".join(compose["command"]), "db-init must run compose's db_init script"
    assert env["ML_DATABASES"] == environment(compose)["ML_DATABASES"]


def check_instance(docs: Docs, tmp_path: Path) -> None:
    instance = instance_config(docs)
    image_instance = yaml.safe_load(INSTANCE_YAML.read_text())
    assert ({k: v for k, v in instance.items() if k != "run_launcher"}
            == {k: v for k, v in image_instance.items() if k != "run_launcher"}), (
        "the instance must be docker/dagster.yaml but for its run launcher")
    launcher = run_launcher_config(docs)
    assert launcher["instance_config_map"] == "ml-platform-dagster-instance"
    assert launcher["dagster_home"] == DAGSTER_HOME
    find(docs, "ServiceAccount", launcher["service_account_name"])
    for name in ("ml-platform-user-code", "dagster-webserver", "dagster-daemon"):
        container = deployment_container(docs, name)
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts[f"{DAGSTER_HOME}/dagster.yaml"]["subPath"] == "dagster.yaml", name
        run_mounts = {m["mountPath"]: m.get("subPath") for m in launcher["volume_mounts"]}
        assert {p: mounts[p].get("subPath") for p in run_mounts} == run_mounts, (
            f"{name} and the run pods must share the storage volume")
    # A run pod has no Kubernetes API token (automount off, ml-platform-run has no role):
    # its instance must come up without building the launcher, which needs the in-cluster
    # config (absent here too: building it fails, so the check can tell).
    from dagster._core.test_utils import instance_for_test
    from kubernetes.config import ConfigException

    job = run_job(docs, tmp_path)  # first: it checks the launcher's config
    overrides = {k: instance[k] for k in ("run_launcher", "run_monitoring")}
    with instance_for_test(overrides=overrides) as run_instance:
        assert run_instance.run_monitoring_enabled
        with pytest.raises(ConfigException):
            run_instance.run_launcher  # noqa: B018
    for version in KUBERNETES_VERSIONS:
        try:
            validate(job, version)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"the run Job on Kubernetes {version}: {exc.message}") from None
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["image"] == CODE_IMAGE and "command" not in container
    executable, *args = container["args"]
    assert executable == "/opt/venv/bin/python" and args[:2] == ["-m", "dagster"], args
    parse_cli(["dagster", *args[2:]])  # dagster api execute_run <run>
    assert args[2:4] == ["api", "execute_run"], args
    env = resolved_env(docs, container)
    assert env["ML_EXECUTOR"] == "in_process" and env["DAGSTER_HOME"] == DAGSTER_HOME
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    storage = [s for s in SERVICES["user_code"]["volumes"] if s.startswith("dagster_storage:")]
    missing = {storage[0].split(":")[1], "/var/lib/ml_platform"} - {
        m["mountPath"] for m in container["volumeMounts"]}
    assert not missing, f"run pods do not mount {missing}"


def check_rbac(docs: Docs) -> None:
    role = find(docs, "Role", "ml-platform-run-launcher")
    binding = find(docs, "RoleBinding", "ml-platform-run-launcher")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    bound = {s["name"] for s in binding["subjects"] if s["kind"] == "ServiceAccount"}
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    # what the K8sRunLauncher and run monitoring call (dagster_k8s/client.py)
    needed = {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")} | {
        ("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    assert needed <= granted, f"the run launcher's role lacks {needed - granted}"
    for name in ("dagster-webserver", "dagster-daemon"):
        account = pod_spec(find(docs, "Deployment", name))["serviceAccountName"]
        assert account in bound, f"{name} runs as {account}, which may not launch runs"


def check_autoscaling(docs: Docs) -> None:
    hpa = find(docs, "HorizontalPodAutoscaler", "ml-platform-api")
    target = hpa["spec"]["scaleTargetRef"]
    deployment = find(docs, target["kind"], target["name"])
    assert target["apiVersion"] == deployment["apiVersion"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for metric in hpa["spec"]["metrics"]:
        resource = metric["resource"]["name"]
        for container in pod_spec(deployment)["containers"]:
            assert resource in container["resources"]["requests"], (
                f"a {resource} target needs a {resource} request")
    selector = find(docs, "PodDisruptionBudget", "ml-platform-api")["spec"]["selector"]
    assert selector == deployment["spec"]["selector"]


CHECKS: dict[str, Callable] = {f.__name__: f for f in (
    check_schemas, check_kserve, check_kustomizations, check_images_and_commands,
    check_ports, check_probes, check_environment, check_secrets, check_connection_urls,
    check_db_init, check_instance, check_rbac, check_autoscaling)}


def run_check(name: str, docs: Docs, tmp_path: Path) -> None:
    check = CHECKS[name]
    if "tmp_path" in check.__code__.co_varnames[:check.__code__.co_argcount]:
        check(docs, tmp_path)
    else:
        check(docs)


@pytest.mark.parametrize("name", list(CHECKS))
def test_manifests_pass(name, tmp_path):
    run_check(name, load_manifests(), tmp_path)


def test_kubectl_renders_the_kustomizations_to_these_documents():
    """`kubectl kustomize` (offline) renders each folder to exactly its files' documents,
    in the namespace."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is not installed")
        pytest.skip("kubectl is not installed")
    docs = load_manifests()
    for folder in sorted({Path(d.path).parent for d in docs}):
        rendered = subprocess.run([kubectl, "kustomize", str(KUBERNETES / folder)],
                                  capture_output=True, text=True, timeout=60, check=True).stdout
        got = sorted((d["kind"], d["metadata"]["name"], d["metadata"].get("namespace"))
                     for d in yaml.safe_load_all(rendered) if d)
        want = sorted((d.kind, d.name, None if d.kind == "Namespace" else NAMESPACE)
                      for d in docs if Path(d.path).parent == folder
                      and d.kind != "Kustomization")
        assert got == want, folder


def test_validator_is_kubernetes_validates():
    """validate() is kubernetes-validate's strict validation, with the schemas loaded once:
    both accept every core manifest and both refuse a broken one."""
    docs = [d for d in load_manifests()
            if d.kind not in ("Kustomization", "ServingRuntime", "InferenceService")]
    for doc in docs:
        for version in KUBERNETES_VERSIONS:
            validate(doc.body, version)
            assert kubernetes_validate.validate(doc.body, version, strict=True) == version
    broken = copy.deepcopy(find(docs, "Deployment", "ml-platform-api"))
    pod_spec(broken)["containers"][0]["ports"][0]["containerPort"] = "8000"
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(jsonschema.ValidationError):
            validate(broken, version)
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, version, strict=True)
