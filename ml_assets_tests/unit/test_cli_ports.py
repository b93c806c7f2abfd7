"""The ports `ml-platform up` and `simulate` use come from ML_UI_PORT / ML_API_PORT
(named in the README); a value that is no port is refused in one line naming it."""

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
