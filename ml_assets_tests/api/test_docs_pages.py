"""/docs and /redoc work without internet: every script, style sheet and icon the pages
load is served by the app itself, and each operation is listed once."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import ServingSettings


def _client(mlflow_store, tmp_path) -> TestClient:
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"],
                               model_name="no-such-model", api_key="secret",
                               prediction_log_path=tmp_path / "log.db", poll_seconds=0)
    return TestClient(create_app(settings))


def test_docs_pages_load_only_local_assets(mlflow_store, tmp_path):
    with _client(mlflow_store, tmp_path) as api:
        for page in ("/docs", "/redoc"):
            html = api.get(page)  # open even when an API key is required
            assert html.status_code == 200, page
            urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
            assert urls, page
            remote = [u for u in urls if re.match(r"(?:https?:)?//", u)]
            assert not remote, f"{page} loads from the network: {remote}"
            for url in urls:
                asset = api.get(url)
                assert asset.status_code == 200, (page, url)
                if url.endswith(".js"):
                    assert len(asset.content) > 100_000, url
        spec = api.get("/openapi.json").json()
        assert spec["openapi"].startswith("3.1")  # Swagger UI 5 renders 3.1; 4 does not
        bundle = api.get("/docs-static/swagger-ui-bundle.js").text
        assert re.search(r'"5\.\d+\.\d+"', bundle)
        assert api.get("/docs/oauth2-redirect").status_code == 200


def test_each_operation_is_listed_under_one_tag(mlflow_store, tmp_path):
    with _client(mlflow_store, tmp_path) as api:
        spec = api.get("/openapi.json").json()
    listed = {(path, method): op.get("tags", []) for path, ops in spec["paths"].items()
              for method, op in ops.items()}
    assert listed[("/ping", "get")] == ["mlflow"]
    assert all(len(tags) == 1 for tags in listed.values()), {
        k: v for k, v in listed.items() if len(v) != 1}
