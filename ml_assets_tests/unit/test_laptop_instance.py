"""The laptop's Dagster instance (`ml-platform` writes $DAGSTER_HOME/dagster.yaml): run
monitoring on, an earlier default upgraded, a person's own file left alone."""

from dagster import DagsterInstance

from ml_assets.cli import prepare_environment
from ml_assets.laptop_instance import _OLD_DAGSTER_YAMLS, DAGSTER_YAML
from ml_assets.settings import PlatformSettings


def test_the_laptop_instance_monitors_runs_and_old_defaults_are_upgraded(tmp_path,
                                                                         monkeypatch):
    homes = {name: tmp_path / name for name in ("fresh", "old", "older", "own")}
    for name, text in (("older", _OLD_DAGSTER_YAMLS[0]), ("old", _OLD_DAGSTER_YAMLS[1])):
        homes[name].mkdir()
        (homes[name] / "dagster.yaml").write_text(text)
    (homes["own"]).mkdir()
    (homes["own"] / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path / "platform"))
    for home in homes.values():
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        prepare_environment(PlatformSettings.from_env())
    assert (homes["fresh"] / "dagster.yaml").read_text() == DAGSTER_YAML
    assert (homes["old"] / "dagster.yaml").read_text() == DAGSTER_YAML
    assert (homes["older"] / "dagster.yaml").read_text() == DAGSTER_YAML
    assert (homes["own"] / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"

    with DagsterInstance.from_config(str(homes["fresh"])) as instance:
        assert instance.run_monitoring_enabled
        assert not instance.nux_enabled  # no "Join the community" dialog on the first page
        assert "MONITORING" in instance.get_required_daemon_types()
        assert (instance.run_monitoring_start_timeout_seconds,
                instance.run_monitoring_poll_interval_seconds) == (180, 30)
