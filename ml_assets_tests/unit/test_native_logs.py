"""LightGBM's native messages are summarised in one line, never printed line by line."""
import lightgbm
import numpy as np

from ml_assets.core.modeling.native_logs import NativeMessages, summarised_native_logs


def _chatty_fit() -> None:
    # min_child_samples above the rows a leaf can hold: every round warns.
    rng = np.random.default_rng(0)
    X = rng.random((200, 3))
    # verbose=1 explicitly: LightGBM's log level is global to the process, and another
    # test may have fitted with verbose=-1 before.
    lightgbm.LGBMClassifier(n_estimators=40, min_child_samples=150, verbose=1).fit(
        X, (X[:, 0] > 0.5).astype(int))


def test_native_lines_are_counted_not_printed(capfd):
    with summarised_native_logs() as said:
        _chatty_fit()
    out, err = capfd.readouterr()
    assert "[LightGBM]" not in out + err
    assert said.by_level["Warning"] >= 40
    summary = said.summary()
    assert summary is not None and f"printed {said.total} messages" in summary
    assert "'lightgbm' at DEBUG" in summary


def test_outside_the_block_nothing_prints_either(capfd):
    with summarised_native_logs():
        pass
    _chatty_fit()
    out, err = capfd.readouterr()
    assert "[LightGBM]" not in out + err


def test_a_quiet_library_has_no_summary():
    assert NativeMessages().summary() is None
