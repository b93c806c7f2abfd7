"""Each check of test_kubernetes_manifests.py fails on a manifest changed the way a real
mistake would change it (the checks pass on the committed manifests there)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import yaml

from ml_assets_tests.support.kubernetes_manifests import find, load_manifests, pod_spec
from ml_assets_tests.unit.test_kubernetes_manifests import CODE_IMAGE, Docs, run_check


def _container(docs: Docs, kind: str, name: str) -> dict:
    return pod_spec(find(docs, kind, name))["containers"][0]


def _env(container: dict, name: str) -> dict:
    return next(item for item in container["env"] if item["name"] == name)


def _instance(docs: Docs, change: Callable[[dict], None]) -> None:
    data = find(docs, "ConfigMap", "ml-platform-dagster-instance")["data"]
    instance = yaml.safe_load(data["dagster.yaml"])
    change(instance)
    data["dagster.yaml"] = yaml.safe_dump(instance)


MUTATIONS: list[tuple[str, str, Callable[[Docs], None]]] = [
    ("check_schemas", "a port given as a string",
     lambda d: _container(d, "Deployment", "mlflow")["ports"][0].update(containerPort="5000")),
    ("check_schemas", "a misspelt field",
     lambda d: _container(d, "Deployment", "mlflow").update(livenesProbe={})),
    ("check_kserve", "no RawDeployment annotation",
     lambda d: find(d, "InferenceService", "ml-platform-model")["metadata"]["annotations"].pop(
         "serving.kserve.io/deploymentMode")),
    ("check_kserve", "a runtime without v2",
     lambda d: find(d, "ServingRuntime", "ml-platform-api")["spec"].update(
         protocolVersions=["v1"])),
    ("check_kserve", "a runtime of another image",
     lambda d: _container(d, "ServingRuntime", "ml-platform-api").update(
         image=CODE_IMAGE)),
    ("check_kserve", "another runtime's name",
     lambda d: find(d, "InferenceService", "ml-platform-model")["spec"]["predictor"]["model"]
     .update(runtime="kserve-sklearnserver")),
    ("check_kserve", "a misspelt predictor field",
     lambda d: find(d, "InferenceService", "ml-platform-model")["spec"]["predictor"].update(
         minReplica=2)),
    ("check_kustomizations", "a file left out",
     lambda d: next(x.body for x in d if x.path == "platform/kustomization.yaml")[
         "resources"].remove("daemon.yaml")),
    ("check_images_and_commands", "an image nobody builds",
     lambda d: _container(d, "Deployment", "ml-platform-api").update(image="ml-api:latest")),
    ("check_images_and_commands", "a command that replaces the entrypoint",
     lambda d: _container(d, "Deployment", "dagster-daemon").update(command=["dagster-daemon"])),
    ("check_images_and_commands", "another code module",
     lambda d: _container(d, "Deployment", "ml-platform-user-code")["args"].__setitem__(
         8, "ml_assets.defs")),
    ("check_images_and_commands", "a run image other than the code location's",
     lambda d: _instance(d, lambda i: i["run_launcher"]["config"].update(job_image="old:1"))),
    ("check_ports", "the API on another port",
     lambda d: _env(_container(d, "Deployment", "ml-platform-api"), "ML_API_PORT").update(
         value="8080")),
    ("check_ports", "a Service to the wrong port",
     lambda d: find(d, "Service", "dagster-webserver")["spec"]["ports"][0].update(
         targetPort=3001)),
    ("check_ports", "MLflow at another port",
     lambda d: find(d, "ConfigMap", "ml-platform-env")["data"].update(
         MLFLOW_TRACKING_URI="http://mlflow:80")),
    ("check_probes", "a readiness path the API does not serve",
     lambda d: _container(d, "ServingRuntime", "ml-platform-api")["readinessProbe"]["httpGet"]
     .update(path="/readyz")),
    ("check_probes", "liveness on readiness",
     lambda d: _container(d, "Deployment", "ml-platform-api")["livenessProbe"]["httpGet"]
     .update(path="/ready")),
    ("check_environment", "a misspelt variable",
     lambda d: find(d, "ConfigMap", "ml-platform-env")["data"].update(ML_API_WORKER="2")),
    ("check_environment", "a variable mlflow server does not read",
     lambda d: find(d, "ConfigMap", "mlflow-env")["data"].update(
         MLFLOW_ARTIFACT_DESTINATION="s3://bucket")),
    ("check_environment", "the Celery executor in run pods",
     lambda d: find(d, "ConfigMap", "ml-platform-env")["data"].update(ML_EXECUTOR="celery")),
    ("check_secrets", "a literal password",
     lambda d: _container(d, "Deployment", "mlflow")["env"].__setitem__(
         0, {"name": "DAGSTER_PG_PASSWORD", "value": "hunter2"})),
    ("check_secrets", "a Secret key nobody creates",
     lambda d: _env(_container(d, "ServingRuntime", "ml-platform-api"), "ML_API_KEY")[
         "valueFrom"]["secretKeyRef"].update(key="apikey")),
    ("check_secrets", "a password in a URL",
     lambda d: _env(_container(d, "Deployment", "mlflow"), "MLFLOW_BACKEND_STORE_URI").update(
         value="postgresql://mlplatform:hunter2@db:5432/mlflow")),
    ("check_connection_urls", "a database db-init does not create",
     lambda d: _env(_container(d, "Deployment", "ml-platform-api"), "ML_PREDICTION_LOG_URL")
     .update(value="postgresql://$(DAGSTER_PG_USER):$(DAGSTER_PG_PASSWORD)"
                   "@$(DAGSTER_PG_HOST):$(DAGSTER_PG_PORT)/prediction")),
    ("check_connection_urls", "a URL before the password it uses",
     lambda d: _container(d, "Deployment", "mlflow")["env"].reverse()),
    ("check_db_init", "a database dropped",
     lambda d: _env(_container(d, "Job", "ml-platform-db-init"), "ML_DATABASES").update(
         value="dagster predictions")),
    ("check_instance", "storage that differs from the image's",
     lambda d: _instance(d, lambda i: i["storage"]["postgres"]["postgres_db"].update(
         scheme="postgresql"))),
    ("check_instance", "a run launcher option that does not exist",
     lambda d: _instance(d, lambda i: i["run_launcher"]["config"].update(job_namespaces="x"))),
    ("check_instance", "run pods without the storage volume",
     lambda d: _instance(d, lambda i: i["run_launcher"]["config"]["volume_mounts"].pop(0))),
    ("check_rbac", "a role that cannot create Jobs",
     lambda d: find(d, "Role", "ml-platform-run-launcher")["rules"][0]["verbs"].remove(
         "create")),
    ("check_autoscaling", "a CPU target without a CPU request",
     lambda d: _container(d, "Deployment", "ml-platform-api")["resources"]["requests"].pop(
         "cpu")),
]


@pytest.mark.parametrize("name,mistake,mutate", MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_check_catches_a_mutation(name, mistake, mutate, tmp_path):
    """The same check passes on the committed manifests (test_manifests_pass)."""
    docs = load_manifests()
    mutate(docs)
    with pytest.raises(AssertionError) as raised:
        run_check(name, docs, tmp_path)
    print(f"{mistake}: {str(raised.value).splitlines()[0]}")
