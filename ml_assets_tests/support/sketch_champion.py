"""A small breast-cancer champion for the sketch tests (batch parts, log segments): its
reference profile and calibrator stored with its run as reference_profile stores them,
and the checks those tests share."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from dagster import Output, asset, materialize

from ml_assets.core.data.datasets import BREAST_CANCER_TARGET, load_breast_cancer_frame
from ml_assets.core.drift.sketch import NumericSketch
from ml_assets.core.drift.sketch_store import PROFILE_ARTIFACT
from ml_assets.core.estimation.store import calibrate_model, log_estimation
from ml_assets.core.registry.lineage import DATASET_TAG
from ml_assets.monitoring import _profile_for
from ml_assets.resources import DataSourceResource, MlflowTracking
from ml_assets.resources.production import ProductionDataResource
from ml_assets_tests.support.models import experiment_id, register, train_breast_cancer


def sketch_champion(root: Path, mlflow_store: dict, day: str) -> SimpleNamespace:
    """A small breast-cancer forest registered as its own champion (of the breast-cancer
    lineage), its reference profile stored with its run as reference_profile stores it;
    resources reading production under `root`."""
    trained = train_breast_cancer(n_estimators=5)
    name = f"batch_sketch_{uuid.uuid4().hex[:8]}"
    version, info = register(trained, name, experiment_id(name, mlflow_store["artifact_root"]))
    tracking = MlflowTracking(tracking_uri=mlflow_store["tracking_uri"], experiment_name=name,
                              registered_model_name=name)
    tracking.client.set_model_version_tag(name, version, DATASET_TAG, "breast_cancer")
    profile = _profile_for(trained.pipeline, SimpleNamespace(X_train=trained.X_train,
                                                             X_test=trained.X_test))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(PROFILE_ARTIFACT).name
        path.write_bytes(profile.to_bytes())
        tracking.client.log_artifact(info.run_id, str(path),
                                     str(Path(PROFILE_ARTIFACT).parent))
    labels = load_breast_cancer_frame()[BREAST_CANCER_TARGET].loc[trained.X_test.index]
    log_estimation(tracking.client, info.run_id, calibrate_model(
        trained.pipeline, trained.X_test, labels, "binary"))
    resources = {
        "production": ProductionDataResource(
            prediction_log_path=str(root / "log.db"), landing_dir=str(root / "landing"),
            labels_dir=str(root / "labels"), batch_input_dir=str(root / "in"),
            batch_output_dir=str(root / "out")),
        "data_source": DataSourceResource(kind="breast_cancer"),
        "mlflow_tracking": tracking,
    }
    return SimpleNamespace(root=root, profile=profile, version=version, run_id=info.run_id,
                           model=trained.pipeline,
                           resources=resources, out=root / "out" / day)


def same_sketch(a, b) -> None:
    """Two sketches equal: counts, extremes exactly; distance sums to rounding."""
    assert (a.n_rows, a.n_prediction_rows) == (b.n_rows, b.n_prediction_rows)
    assert (set(a.features), set(a.predictions)) == (set(b.features), set(b.predictions))
    for role in ("features", "predictions"):
        for name, entry in getattr(a, role).items():
            other = getattr(b, role)[name]
            assert entry.present == other.present, name
            if isinstance(entry.sketch, NumericSketch):
                for part in ("at", "between", "low", "high"):
                    np.testing.assert_array_equal(getattr(entry.sketch, part),
                                                  getattr(other.sketch, part), err_msg=name)
                np.testing.assert_allclose(entry.sketch.distance, other.sketch.distance,
                                           rtol=1e-12, atol=1e-9)
            else:
                assert entry.sketch.counts == other.sketch.counts, name


def profile_asset(champion, instance):
    """reference_profile as the champion's run holds it, materialized in `instance`."""

    @asset(name="reference_profile", group_name="monitoring")
    def stored_profile() -> Output:
        return Output(champion.profile, metadata={"champion_version": champion.version,
                                                  "mlflow_run_id": champion.run_id})

    assert materialize([stored_profile], instance=instance,
                       resources=champion.resources).success
    return stored_profile


