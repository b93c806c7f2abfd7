"""A run refused by a blocking check is told from a broken one (`ml-platform reexecute`
says the first as a decision, exit 3)."""

from dagster import AssetCheckResult, asset, asset_check, materialize

from ml_assets.status import refused_checks


@asset
def challenger() -> int:
    return 1


@asset_check(asset=challenger, blocking=True)
def beats_champion() -> AssetCheckResult:
    return AssetCheckResult(passed=False, description="gain +0.0000 below the margin 0.005")


@asset(deps=[challenger])
def champion() -> int:
    return 1


@asset
def broken() -> int:
    raise ValueError("Input X contains NaN")


def test_a_blocking_check_is_a_refusal_and_an_exception_is_not():
    refused = materialize([challenger, beats_champion, champion], raise_on_error=False)
    assert not refused.success
    assert refused_checks(refused.all_events) == [
        "check beats_champion on challenger: gain +0.0000 below the margin 0.005"]

    failed = materialize([challenger, beats_champion, champion, broken],
                         raise_on_error=False)
    assert not failed.success and refused_checks(failed.all_events) == []
    passed = materialize([challenger, champion], raise_on_error=False)
    assert passed.success and refused_checks(passed.all_events) == []
