"""The PostgreSQL prediction log: what SQLite stores, it stores and reads back the same;
it survives a server that drops its connections without losing or duplicating a row;
the factory, the settings, the production-data resource and the API all reach it.

Each test that needs the server gets a database of its own (dropped afterwards) on the
PostgreSQL at 127.0.0.1:5432 (user postgres, no password, as in CI). Without that
server these tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from ml_assets.core.prediction_log import (
    META_COLUMNS,
    PostgresPredictionLog,
    PredictionLogError,
    PredictionRecord,
    SQLitePredictionLog,
    open_prediction_log,
)
from ml_assets.core.prediction_log.columnar import CorruptBatch
from ml_assets.resources.production import ProductionDataResource
from ml_assets_tests.api.test_serving_prediction_log import NAMES, _record
from ml_assets_tests.support.first_format_log import write_postgres, write_sqlite
from ml_assets_tests.support.services import PG_SERVER
from ml_assets_tests.support.services import pg_admin as _admin

SERVER = PG_SERVER
DAY_ONE = datetime(2026, 3, 1, 23, 59, 58, tzinfo=timezone.utc)


def _records() -> list[PredictionRecord]:
    """Two UTC days of rows: missing values, a feature named like a meta column, a row
    without probabilities (NaN confidence), a timestamp in another time zone."""
    rows = [_record(0, DAY_ONE)]
    rows += [_record(i, DAY_ONE + timedelta(seconds=i)) for i in range(1, 5)]
    rows.append(PredictionRecord(
        timestamp=DAY_ONE + timedelta(seconds=9), request_id="req-odd", row_index=3,
        model_name="m", model_version="4", feature_names=("prediction", "x"),
        feature_values=[7, "text"], prediction="malignant", probabilities={}))
    rows.append(_record(6, (DAY_ONE + timedelta(seconds=10)).astimezone(
        timezone(timedelta(hours=5)))))
    return rows


def _table_exists(database: str, table: str = "predictions") -> bool:
    return _admin("SELECT to_regclass(%s) IS NOT NULL", (table,), database) == [(True,)]


def _writer_pid(log: PostgresPredictionLog) -> int:
    return log._writer_conn.get_backend_pid()


def _kill(*pids: int) -> None:
    """What a server restart or failover does to a client: its backends end."""
    assert _admin("SELECT bool_and(pg_terminate_backend(pid)) FROM unnest(%s) AS pid",
                  (list(pids),)) == [(True,)]
    deadline = time.monotonic() + 10
    while _admin("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)",
                 (list(pids),)) != [(0,)]:
        assert time.monotonic() < deadline, "the backends did not end"
        time.sleep(0.02)


# --- storage: the same as SQLite --------------------------------------------------------

def test_roundtrip_reads_back_exactly_what_sqlite_does(pg_url, database, tmp_path):
    records = _records()
    with PostgresPredictionLog(pg_url) as pg, SQLitePredictionLog(tmp_path / "log.db") as lite:
        for log in (pg, lite):
            log.append_many(records[:1])
            log.append_many(records[1:])
            assert log.flush(timeout=10) and log.backlog == 0
        assert pg.days() == lite.days() == [date(2026, 3, 1), date(2026, 3, 2)]
        for day in [*lite.days(), "2026-03-02", date(2020, 1, 1), "not a day"]:
            expected, got = lite.read_day(day), pg.read_day(day)
            pd.testing.assert_frame_equal(got, expected)
            assert got.attrs == expected.attrs
            assert pg.row_count(day) == lite.row_count(day) == len(expected)
        frame = pg.read_day("2026-03-02")
        assert list(frame.columns) == META_COLUMNS + list(NAMES) + ["feature.prediction", "x"]
        assert frame["request_id"].tolist() == ["req-2", "req-3", "req-4", "req-odd", "req-6"]
        assert math.isnan(frame.loc[frame.request_id == "req-odd", "confidence"].item())
        assert str(frame["timestamp"].dt.tz) == "UTC"
        assert frame["timestamp"].iloc[-1] == pd.Timestamp(DAY_ONE + timedelta(seconds=10))
        assert pg.row_count(date(2026, 3, 1)) == 2
    # One batch per commit and day, indexed by day; one index entry per request.
    indexes = _admin("SELECT indexdef FROM pg_indexes WHERE tablename = 'predictions_batches'",
                     database=database)
    assert any("(day)" in definition for (definition,) in indexes)
    assert _admin("SELECT day::text, sum(rows) FROM predictions_batches GROUP BY day"
                  " ORDER BY day", database=database) == [("2026-03-01", 2),
                                                           ("2026-03-02", 5)]
    assert _admin("SELECT count(*) FROM predictions_requests", database=database) == [(7,)]


def test_a_reopened_log_keeps_its_rows_and_a_second_table_is_separate(pg_url):
    with PostgresPredictionLog(pg_url) as log:
        log.append_many([_record(i, DAY_ONE) for i in range(3)])
    with PostgresPredictionLog(pg_url) as again, \
            PostgresPredictionLog(pg_url, table="shadow_log") as shadow:
        assert again.row_count(DAY_ONE.date()) == 3  # close stored what it had accepted
        shadow.append_many([_record(9, DAY_ONE)])
        shadow.flush(timeout=10)
        assert shadow.read_day(DAY_ONE.date())["request_id"].tolist() == ["req-9"]
        assert again.row_count(DAY_ONE.date()) == 3


def test_read_only_log_creates_nothing_and_reads_empty_until_written(pg_url, database):
    reader = PostgresPredictionLog(pg_url, read_only=True)
    assert reader.days() == [] and reader.row_count("2026-03-01") == 0
    empty = reader.read_day("2026-03-01")
    assert empty.empty and list(empty.columns) == META_COLUMNS
    assert not _table_exists(database, "predictions_batches")
    with pytest.raises(RuntimeError, match="read-only"):
        reader.append_many([_record(1)])
    with PostgresPredictionLog(pg_url) as writer:
        assert _table_exists(database, "predictions_batches")
        writer.append_many([_record(1, DAY_ONE)])
        writer.flush(timeout=10)
        # The same reader, while the writer is open.
        assert reader.days() == [DAY_ONE.date()]
        assert reader.read_day(DAY_ONE.date())["request_id"].tolist() == ["req-1"]
    reader.close()


def test_concurrent_appends_from_threads_lose_nothing(pg_url):
    log = PostgresPredictionLog(pg_url, max_queue_rows=60, batch_rows=25)
    errors: list[BaseException] = []

    def append(t: int) -> None:
        try:
            for i in range(40):
                log.append_many([_record(i, DAY_ONE, request_id=f"t{t}-{i}-{j}")
                                 for j in range(5)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    log.close()
    assert not errors
    assert log.producer_waits > 0  # the queue did fill up
    with PostgresPredictionLog(pg_url, read_only=True) as reader:
        frame = reader.read_day(DAY_ONE.date())
        assert len(frame) == reader.row_count(DAY_ONE.date()) == 8 * 40 * 5
        assert frame["request_id"].is_unique


# --- a server that drops connections -----------------------------------------------------

def test_reconnects_after_the_server_kills_its_connections(pg_url):
    log = PostgresPredictionLog(pg_url, retry_seconds=0.05)
    log.append_many([_record(i, DAY_ONE) for i in range(5)])
    assert log.flush(timeout=10)
    assert log.row_count(DAY_ONE.date()) == 5
    writer_pid = _writer_pid(log)
    _kill(writer_pid, log._reader_conn.get_backend_pid())
    log.append_many([_record(i, DAY_ONE) for i in range(5, 12)])
    assert log.flush(timeout=10)
    assert _writer_pid(log) != writer_pid  # a new connection wrote the second batch
    assert log.write_failures == 0  # at once, without waiting for the retry
    frame = log.read_day(DAY_ONE.date())  # and reads reconnect too
    assert frame["request_id"].tolist() == [f"req-{i}" for i in range(12)]
    log.close()


def test_rows_wait_out_an_outage_and_land_once_the_database_is_back(pg_url, database):
    log = PostgresPredictionLog(pg_url, retry_seconds=0.05)
    log.append_many([_record(0, DAY_ONE)])
    assert log.flush(timeout=10)
    _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        _kill(_writer_pid(log))
        log.append_many([_record(i, DAY_ONE) for i in range(1, 30)])
        assert not log.flush(timeout=0.5)  # nowhere to write: kept, retried
        assert log.backlog == 29 and log.write_failures >= 2
    finally:
        _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    assert log.flush(timeout=20)
    frame = log.read_day(DAY_ONE.date())
    assert frame["request_id"].tolist() == [f"req-{i}" for i in range(30)]
    log.close()


class CutOffCommitLog(PostgresPredictionLog):
    """The connection breaks around the first COMMIT: after it landed, or before; with
    `outage`, the database then refuses connections for a moment."""

    def __init__(self, url: str, database: str, committed: bool, outage: bool, **kwargs):
        self.database, self.committed, self.outage = database, committed, outage
        self.cut = False
        self.reopen: threading.Timer | None = None
        super().__init__(url, **kwargs)

    def _commit(self, conn) -> None:
        import psycopg2

        if self.cut:
            return super()._commit(conn)
        self.cut = True
        if self.committed:
            conn.commit()
        conn.close()  # an uncommitted transaction dies with the connection
        if self.outage:
            _admin(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
            self.reopen = threading.Timer(0.5, _admin, [
                f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true'])
            self.reopen.start()
        raise psycopg2.OperationalError("server closed the connection unexpectedly")


@pytest.mark.parametrize("outage", [False, True], ids=["back-at-once", "after-an-outage"])
@pytest.mark.parametrize("committed", [True, False], ids=["commit-landed", "commit-lost"])
def test_an_interrupted_commit_is_neither_lost_nor_written_twice(pg_url, database,
                                                                  committed, outage):
    log = CutOffCommitLog(pg_url, database, committed, outage, retry_seconds=0.05)
    try:
        log.append_many([_record(i, DAY_ONE) for i in range(6)])
        assert log.flush(timeout=10)
        assert log.cut
        # Back at once: settled by the immediate reconnect. After an outage: by the
        # first write that reaches the database again.
        assert (log.write_failures > 0) == outage
        log.append_many([_record(6, DAY_ONE)])
        log.close()
    finally:
        if log.reopen is not None:
            log.reopen.join()
    with PostgresPredictionLog(pg_url, read_only=True) as reader:
        assert reader.read_day(DAY_ONE.date())["request_id"].tolist() == \
            [f"req-{i}" for i in range(7)]


# --- the factory and the errors -------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "postgresql://u:secret@db.example:6543/logs",
    "postgres://u:secret@db.example:6543/logs",
    "postgresql+psycopg2://u:secret@db.example:6543/logs",
    " POSTGRESQL+psycopg://u:secret@db.example:6543/logs ",
])
def test_factory_opens_postgres_for_postgres_urls(url):
    log = open_prediction_log(url, read_only=True)  # read-only: connects on first read
    assert isinstance(log, PostgresPredictionLog)
    assert log.url == "postgresql://u:***@db.example:6543/logs"
    assert "secret" not in repr(log) and "secret" not in log.where
    assert "'logs' on db.example:6543" in log.where


def test_factory_opens_sqlite_for_paths_and_sqlite_urls(tmp_path):
    path = tmp_path / "log.db"
    for location in (path, str(path), f"sqlite:///{path}"):
        log = open_prediction_log(location, max_queue_rows=10)
        assert isinstance(log, SQLitePredictionLog)
        assert log.path == path and log.max_queue_rows == 10
        log.close()
    reader = open_prediction_log(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)
    assert isinstance(reader, SQLitePredictionLog) and reader.read_only
    assert reader.days() == [] and reader.row_count("2026-01-01") == 0
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("location", [
    "mysql://u:secret@db.example/logs", "http://example.com/log", "sqlite://host/log.db",
    "sqlite:///", "postgresql+://u:secret@h/db", "   "])
def test_factory_rejects_other_locations_by_name(location):
    with pytest.raises(ValueError) as error:
        open_prediction_log(location)
    message = str(error.value)
    assert "secret" not in message
    if location.strip():
        assert location.replace("secret", "***") in message
    assert "postgresql://" in message  # says what would work


def test_unreachable_database_is_named_without_its_password():
    with pytest.raises(PredictionLogError) as error:
        open_prediction_log("postgresql://loguser:s3cret-pw@127.0.0.1:1/mydb",
                            connect_timeout=2)
    message = str(error.value)
    assert "'mydb' on 127.0.0.1:1" in message and "'loguser'" in message
    assert "s3cret" not in message and "refused" in message


def test_missing_database_is_named(database):
    with pytest.raises(PredictionLogError, match=f"{database}_nope.*does not exist"):
        open_prediction_log(f"{SERVER}/{database}_nope")
    reader = open_prediction_log(f"{SERVER}/{database}_nope", read_only=True)
    with pytest.raises(PredictionLogError, match="cannot connect"):
        reader.days()


def test_bad_table_names_are_refused():
    for table in ("drop table x;--", 'a"b', "a.b.c", ""):
        with pytest.raises(ValueError, match="table"):
            PostgresPredictionLog(f"{SERVER}/x", read_only=True, table=table)


# --- settings, the production-data resource and the API ------------------------------------

def test_serving_settings_read_ml_prediction_log_url(monkeypatch):
    from serving.settings import ServingSettings, SettingsError

    monkeypatch.delenv("ML_PREDICTION_LOG_URL", raising=False)
    assert ServingSettings.from_env().prediction_log_url is None
    url = "postgresql://api:pw-123@db.example:5432/predictions"
    monkeypatch.setenv("ML_PREDICTION_LOG_URL", f" {url} ")
    settings = ServingSettings.from_env()
    assert settings.prediction_log_url == url
    assert "pw-123" not in repr(settings)
    monkeypatch.setenv("ML_PREDICTION_LOG_URL", "mysql://api:pw-123@db.example/predictions")
    with pytest.raises(SettingsError, match="ML_PREDICTION_LOG_URL") as error:
        ServingSettings.from_env()
    assert "pw-123" not in str(error.value)


def test_platform_settings_and_resources_carry_the_url(monkeypatch, tmp_path):
    from dagster import EnvVar

    from ml_assets.resources.factory import build_resources
    from ml_assets.settings import PlatformSettings

    monkeypatch.setenv("ML_PLATFORM_HOME", str(tmp_path))
    monkeypatch.delenv("ML_PREDICTION_LOG_URL", raising=False)
    assert PlatformSettings.from_env().prediction_log_url == ""
    assert build_resources()["production"].prediction_log_url == ""
    url = "postgresql://dagster:pw-123@db.example:5432/predictions"
    monkeypatch.setenv("ML_PREDICTION_LOG_URL", url)
    settings = PlatformSettings.from_env()
    assert settings.prediction_log_url == url
    production = build_resources(settings)["production"]
    # The UI shows the variable, not the password; Dagster resolves it when used.
    assert isinstance(production.prediction_log_url, EnvVar)
    assert production.prediction_log_url.env_var_name == "ML_PREDICTION_LOG_URL"
    assert production.process_config_and_initialize().prediction_log_url == url
    assert production._log_url() == url  # also when used outside Dagster


def _production(tmp_path: Path, url: str) -> ProductionDataResource:
    return ProductionDataResource(prediction_log_path=str(tmp_path / "none.db"),
                                  prediction_log_url=url, landing_dir=str(tmp_path / "l"),
                                  labels_dir=str(tmp_path / "labels"))


def test_production_data_resource_reads_the_postgres_log(pg_url, tmp_path):
    production = _production(tmp_path, pg_url)
    assert production.prediction_days() == [] and production.row_count("2026-03-01") == 0
    assert production.predictions("2026-03-01").empty  # no table yet: nothing, no error
    records = _records()
    with PostgresPredictionLog(pg_url) as log:
        log.append_many(records)
        log.flush(timeout=10)
        assert production.prediction_days() == [date(2026, 3, 1), date(2026, 3, 2)]
        assert production.row_count("2026-03-02") == 5
        pd.testing.assert_frame_equal(production.predictions("2026-03-02"),
                                      log.read_day("2026-03-02"))
    assert not (tmp_path / "none.db").exists()  # the SQLite path is not used
    # A path-only resource still reads SQLite, counting without decoding rows.
    with SQLitePredictionLog(tmp_path / "log.db") as lite:
        lite.append_many(records)
    sqlite_only = ProductionDataResource(prediction_log_path=str(tmp_path / "log.db"),
                                         landing_dir=str(tmp_path / "l"),
                                         labels_dir=str(tmp_path / "labels"))
    assert sqlite_only.prediction_days() == production.prediction_days()
    assert sqlite_only.row_count("2026-03-02") == 5
    pd.testing.assert_frame_equal(sqlite_only.predictions("2026-03-02"),
                                  production.predictions("2026-03-02"))


def test_api_logs_its_predictions_to_postgres(mlflow_store, pg_url, cancer_champion, tmp_path):
    from serving.app import create_app
    from serving.settings import ServingSettings

    with warnings.catch_warnings():  # starlette prefers httpx2 over the pinned httpx
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    trained, name = cancer_champion.trained, cancer_champion.name
    settings = ServingSettings(tracking_uri=mlflow_store["tracking_uri"],
                               model_name=name, poll_seconds=0,
                               prediction_log_path=tmp_path / "prediction_log.db",
                               prediction_log_url=pg_url)
    records = trained.X_test.head(4).to_dict(orient="records")
    with TestClient(create_app(settings)) as client:
        one = client.post("/predict", json=records[0], headers={"X-Request-ID": "one"})
        batch = client.post("/predict/batch", json={"records": records[1:]},
                            headers={"X-Request-ID": "batch"})
        assert one.status_code == batch.status_code == 200
    # Shutdown flushed the log; nothing went to the SQLite file.
    assert not (tmp_path / "prediction_log.db").exists()
    with PostgresPredictionLog(pg_url, read_only=True) as reader:
        days = reader.days()  # today's, or two across midnight UTC
        assert sum(reader.row_count(day) for day in days) == 4
        frame = pd.concat([reader.read_day(day) for day in days], ignore_index=True)
    assert frame["request_id"].tolist() == ["one", "batch", "batch", "batch"]
    assert frame["row_index"].tolist() == [0, 0, 1, 2]
    assert frame["prediction"].tolist() == [one.json()["prediction"]] + [
        p["prediction"] for p in batch.json()["predictions"]]
    assert (frame["model_name"] == name).all() and (frame["model_version"] == "1").all()
    assert frame["mean radius"].tolist() == pytest.approx(
        [r["mean radius"] for r in records])


def test_close_does_not_wait_for_a_write_hung_on_the_network(pg_url, tmp_path, monkeypatch):
    log = PostgresPredictionLog(pg_url, spill_path=tmp_path / "log.db")
    release = threading.Event()
    monkeypatch.setattr(log, "_insert_batch", lambda conn, records: release.wait(30))
    log.append(_records())
    time.sleep(0.2)  # the writer is inside the hung write now
    started = time.monotonic()
    try:
        assert log.close(timeout=1.0) == 0  # the stuck rows are spilled, not lost
        assert time.monotonic() - started < 10  # 1 s flush + 1 s join + 5 s lock wait
        assert log.spilled_rows == len(_records())
    finally:
        release.set()


def test_a_first_format_log_is_read_beside_new_batches(pg_url, database, tmp_path):
    old = _records()
    write_postgres(pg_url, old)  # the table the first format wrote, by its own SQL
    _admin("ALTER TABLE predictions DROP COLUMN input_flags", database=database)  # older
    reader = PostgresPredictionLog(pg_url, read_only=True)
    assert reader.days() == [date(2026, 3, 1), date(2026, 3, 2)]
    assert reader.read_day(DAY_ONE.date())["input_flags"].tolist() == ["", ""]
    reader.close()
    flagged = PredictionRecord(DAY_ONE, "new", 0, "m", "1", list(NAMES), [1.0] * len(NAMES),
                               "malignant", {"malignant": 0.6, "benign": 0.4},
                               "x:out_of_range")
    with PostgresPredictionLog(pg_url) as log, \
            SQLitePredictionLog(tmp_path / "log.db") as lite:
        write_sqlite(lite.path, old)
        for each in (log, lite):
            each.append_many([flagged]).result(10)
        frame = log.read_day(DAY_ONE.date())
        assert frame["request_id"].tolist() == ["req-0", "req-1", "new"]
        assert frame["input_flags"].tolist() == ["", "", "x:out_of_range"]
        assert log.row_count(DAY_ONE.date()) == 3
        for day in log.days():  # the same as SQLite's reading of the same two formats
            pd.testing.assert_frame_equal(log.read_day(day), lite.read_day(day),
                                          check_dtype=True)
        found = log.read_requests(["new", "req-odd", "req-0", "absent"])
        assert found["request_id"].tolist() == ["req-0", "new", "req-odd"]
        pd.testing.assert_frame_equal(found, lite.read_requests(["new", "req-odd", "req-0"]))
        assert log.read_requests(["absent"]).empty


def test_a_crafted_batch_is_refused_by_name(pg_url, database):
    with PostgresPredictionLog(pg_url) as log:
        log.append_many([_record(1, DAY_ONE)]).result(10)
        _admin("UPDATE predictions_batches SET data = %s", (b"\xff" * 64,), database)
        with pytest.raises(CorruptBatch, match="batch 1 of 2026-03-01 in predictions"):
            log.read_day(DAY_ONE.date())
        assert log.row_count(DAY_ONE.date()) == 1


def test_segments_of_a_postgres_day(pg_url):
    """A day read a segment at a time, up to a mark (unit/test_log_segments' checks)."""
    from ml_assets_tests.unit.test_log_segments import check_segments

    with (PostgresPredictionLog(pg_url) as writer,
          PostgresPredictionLog(pg_url, read_only=True) as reader):
        check_segments(writer, reader)
