"""The ports `ml-platform up` and `simulate` use come from ML_UI_PORT / ML_API_PORT
(named in the README); a value that is no port is refused in one line naming it."""

import os

import pytest

from ml_assets.cli import _port


def test_ports_from_the_environment(monkeypatch):
    monkeypatch.delenv("ML_UI_PORT", raising=False)
    assert _port("ML_UI_PORT", 3000) == 3000
    monkeypatch.setenv("ML_UI_PORT", "3100")
    assert _port("ML_UI_PORT", 3000) == 3100
    monkeypatch.setenv("ML_UI_PORT", " ")
    assert _port("ML_UI_PORT", 3000) == 3000


@pytest.mark.parametrize("value", ["abc", "0", "65536", "-1", "80.5"])
def test_a_value_that_is_no_port_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("ML_API_PORT", value)
    with pytest.raises(SystemExit) as refused:
        _port("ML_API_PORT", 8000)
    assert str(refused.value) == (f"ml-platform: ML_API_PORT={value!r} is not a port "
                                  "number (1-65535)")


def test_up_hands_its_children_absolute_paths(tmp_path, monkeypatch):
    """`dg dev` runs the code location from the project directory, not the user's: the
    home and relative path settings reach it (and the API) absolute."""
    from ml_assets.cli import prepare_environment
    from ml_assets.settings import PlatformSettings

    monkeypatch.chdir(tmp_path)
    for name in ("ML_PLATFORM_HOME", "DAGSTER_HOME", "ML_LABELS_DIR"):
        monkeypatch.setenv(name, "")  # so that the fixture's undo removes what is set
        monkeypatch.delenv(name)
    monkeypatch.setenv("ML_DATA_PATH", "penguins.csv")
    monkeypatch.setenv("ML_PREDICTION_LOG_URL", "postgresql://u@h/db")  # not a path
    prepare_environment(PlatformSettings.from_env())
    assert os.environ["ML_PLATFORM_HOME"] == str(tmp_path / ".ml_platform")
    assert os.environ["ML_DATA_PATH"] == str(tmp_path / "penguins.csv")
    assert os.environ["DAGSTER_HOME"] == str(tmp_path / ".ml_platform" / "dagster_home")
    assert "ML_LABELS_DIR" not in os.environ  # unset stays unset: derived from the home
    assert os.environ["ML_PREDICTION_LOG_URL"] == "postgresql://u@h/db"
