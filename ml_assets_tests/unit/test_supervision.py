"""`ml-platform up`'s restart policy and the words it uses for a death."""

import pytest

from ml_assets.supervision import RestartPolicy, dagster_death, exit_words


def test_pauses_double_up_to_the_cap_then_the_policy_gives_up():
    policy = RestartPolicy(max_restarts=5, first_delay=1.0, max_delay=5.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, None]
    assert RestartPolicy(max_restarts=0).delay(1) is None
    with pytest.raises(ValueError, match="recent_deaths must be 1 or more"):
        policy.delay(0)


def test_the_restart_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("ML_UP_MAX_RESTARTS", raising=False)
    assert RestartPolicy.from_env().max_restarts == 3
    monkeypatch.setenv("ML_UP_MAX_RESTARTS", "0")
    assert RestartPolicy.from_env().max_restarts == 0
    monkeypatch.setenv("ML_UP_MAX_RESTARTS", "-1")
    with pytest.raises(ValueError, match=r"ML_UP_MAX_RESTARTS='-1' is not a whole number"):
        RestartPolicy.from_env()


def test_a_death_is_named_from_dagster_devs_own_line():
    log = ("2026-12-07 07:44:30 +0000 - dagster - ERROR - An unexpected exception has "
           "occurred\nException: dagster-daemon process shut down unexpectedly with return "
           "code -9\n")
    assert dagster_death(log, 0) == ("the Dagster daemon (dagster-daemon) was killed by "
                                     "SIGKILL (dg dev stopped with it)")
    assert dagster_death(log.replace("dagster-daemon", "dagster-webserver")
                         .replace("-9", "1"), 0) == (
        "the Dagster webserver (dagster-webserver) exited with code 1 (dg dev stopped with it)")
    assert dagster_death("Error: Invalid value for '--port'", 2) == \
        "Dagster (dg dev) exited with code 2"
    assert exit_words(-15) == "was killed by SIGTERM"
    assert exit_words(-200) == "was killed by signal 200"
