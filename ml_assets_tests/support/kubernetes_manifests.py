"""The Kubernetes manifests of deploy/kubernetes/, read as a cluster would read them.

Loading every document, the environment a container ends up with (envFrom, env in order,
Kubernetes' `$(VAR)` expansion) and the Job the K8sRunLauncher of the instance ConfigMap
creates for a run, built by dagster-k8s itself. No cluster is needed.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
INSTANCE_CONFIG_MAP = "ml-platform-dagster-instance"
# What the Secrets hold in these checks (the real ones are created by the operator).
SAMPLE_SECRETS = {"ml-platform-postgres": {"postgresql-password": "s3cret-pw"},
                  "ml-platform-api": {"api-key": "sample-api-key"}}
WORKLOADS = ("Deployment", "Job", "ServingRuntime")


@dataclass
class Doc:
    path: str  # relative to deploy/kubernetes
    body: dict

    @property
    def kind(self) -> str:
        return self.body["kind"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    def __str__(self) -> str:
        return f"{self.path}: {self.kind}/{self.name}"


def load_manifests(root: Path = KUBERNETES) -> list[Doc]:
    """Every YAML document under root, kustomizations included."""
    docs = []
    for path in sorted(root.glob("*/*.yaml")):
        for body in yaml.safe_load_all(path.read_text()):
            if body:
                docs.append(Doc(str(path.relative_to(root)), body))
    return docs


def find(docs: list[Doc], kind: str, name: str) -> dict:
    found = [d.body for d in docs if d.kind == kind and d.kind != "Kustomization"
             and d.name == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(body: dict) -> dict:
    return body["spec"] if body["kind"] == "ServingRuntime" else body["spec"]["template"]["spec"]


def containers(docs: list[Doc]) -> Iterator[tuple[Doc, dict, dict]]:
    """(document, pod spec, container) of every workload."""
    for doc in docs:
        if doc.kind in WORKLOADS:
            spec = pod_spec(doc.body)
            for container in spec["containers"]:
                yield doc, spec, container


def config_map(docs: list[Doc], name: str) -> dict[str, str]:
    return find(docs, "ConfigMap", name)["data"]


def instance_config(docs: list[Doc]) -> dict:
    return yaml.safe_load(config_map(docs, INSTANCE_CONFIG_MAP)["dagster.yaml"])


_REFERENCE = re.compile(r"\$(\$|\(([^()]*)\))")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of command, args and env values: `$$` is `$`, `$(NAME)` the
    value of a variable defined before it, and an unknown reference is left as it is."""
    def replace(match: re.Match) -> str:
        if match.group(1) == "$":
            return "$"
        return env.get(match.group(2), match.group(0))

    return _REFERENCE.sub(replace, value)


def resolved_env(docs: list[Doc], container: dict,
                 secrets: dict[str, dict[str, str]] = SAMPLE_SECRETS) -> dict[str, str]:
    """The container's environment as the kubelet builds it: envFrom first, then env in
    order, each value expanded against what is defined before it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(docs, source["configMapRef"]["name"]))
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(item["value"], env)
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = config_map(docs, ref["name"])
            assert ref["key"] in data, (
                f"{item['name']}: ConfigMap {ref['name']} has no {ref['key']}")
            env[item["name"]] = data[ref["key"]]
        else:
            ref = source["secretKeyRef"]
            assert ref["key"] in secrets.get(ref["name"], {}), (
                f"{item['name']}: Secret {ref['name']} key {ref['key']} is not documented")
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


@functools.cache
def _validator(version: str, kind: str, api_version: str):
    """kubernetes-validate's strict validator for one kind, built once (its validate()
    reloads the schema definitions on every call)."""
    import jsonschema
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    # as kubernetes_validate.utils.validate: the newest schemas not newer than `version`
    schemas = [v for v in utils.all_versions()
               if Version(utils.major_minor(v)) <= Version(version)][-1]
    group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"kubernetes-json-schema/v{schemas}-local-strict"
    schema = utils.schema_contents(f"{folder}/{kind.lower()}-{group}.json", version)
    definitions = utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (
        Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def validate(body: dict, version: str) -> None:
    """Validate a manifest against the Kubernetes `version` API schemas (strict: no
    unknown field); raises jsonschema.ValidationError."""
    _validator(version, body["kind"], body["apiVersion"]).validate(body)


def run_launcher_config(docs: list[Doc]) -> dict:
    launcher = instance_config(docs)["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher"), launcher
    return launcher["config"]


def run_job(docs: list[Doc], tmp_path: Path) -> dict:
    """The Job manifest the instance's K8sRunLauncher creates for a run of the code
    location (as K8sRunLauncher._launch_k8s_job_with_args builds it), as JSON-ready
    camelCase. The launcher reads a kubeconfig naming a server it never calls."""
    import kubernetes
    from dagster._config import process_config
    from dagster._core.code_pointer import ModuleCodePointer
    from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
    from dagster._core.storage.dagster_run import DagsterRun
    from dagster._core.test_utils import instance_for_test
    from dagster._grpc.types import ExecuteRunArgs
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_job_name_from_run_id

    processed = process_config(K8sRunLauncher.config_type(), run_launcher_config(docs))
    assert processed.success, f"K8sRunLauncher config: {processed.errors}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "unused"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    config: dict[str, Any] = copy.deepcopy(dict(processed.value or {}))
    config.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    launcher = K8sRunLauncher(**config)
    # The code image's interpreter (/opt/venv, Dockerfile.code) and the code location.
    origin = JobPythonOrigin("__ASSET_JOB", RepositoryPythonOrigin(
        "/opt/venv/bin/python", ModuleCodePointer("ml_assets.definitions", "defs", None)))
    run = DagsterRun(job_name="__ASSET_JOB", run_id="0b5e3a4c-6f1e-4a0e-9d7e-2f0c4b8e1a11",
                     job_code_origin=origin)
    with instance_for_test() as instance:
        args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id,
                              instance_ref=instance.get_ref(),
                              set_exit_code_on_failure=launcher.fail_pod_on_run_failure
                              ).get_command_args()
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    name = get_job_name_from_run_id(run.run_id)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=None, run_launcher=launcher),
        args=args, job_name=name, pod_name=name, component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": origin.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": origin.job_name}])
    return kubernetes.client.ApiClient().sanitize_for_serialization(job)
