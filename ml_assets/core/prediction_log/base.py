"""What every prediction log shares: the record, the errors, and the buffering.

`PredictionLog` owns a bounded in-memory queue and one writer thread. Producers put
rows on the queue (never touching storage); the writer takes everything queued (up
to `batch_rows`, whole requests only) into ONE transaction and then resolves the
future of every request in it, so concurrent requests share one commit (group
commit). A backend implements only storage: `_write` (one transaction, all rows or
none; the rows of a commit are stored as one columnar batch per day, see `columnar`),
the reads of a day's batches (`_day_index`, `_day_batches`) and of the first format's
rows, `read_requests` (by request id, through an index), `days` and `_close_storage`.
A day is read whole (`read_day`) or a segment at a time up to a mark (`day_mark`,
`read_segments`): monitoring sketches a big day without holding it.

Three ways in:

- `append(records)` -> Future, resolved once the rows are committed. Refused with
  `PredictionLogUnavailable` (nothing queued) when the queue is full, when the last
  write failed, or when a write has been stuck for longer than `stall_seconds`.
- `offer(records)` -> bool: fire-and-forget; False (rows dropped and counted in
  `dropped_rows`) when the queue is full.
- `append_many(records)`: for batch producers (scripts, tests): waits for room in
  the queue instead of refusing, returns the Future.

`close()` stores what it can, spills the rest as JSON lines (to the spill path, else
the system temp directory) and counts in `lost_rows` what could be saved nowhere.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from datetime import date, datetime, timezone
from pathlib import Path

import orjson
import pandas as pd

from ml_assets.core.prediction_log import columnar
from ml_assets.core.prediction_log.records import (  # noqa: F401 - importers' names
    INDEX_PAGE,
    META_COLUMNS,
    SEGMENT_ROWS,
    LogMark,
    PredictionLogError,
    PredictionLogUnavailable,
    PredictionRecord,
    _day,
    _frame,
    numeric_predictions,
)

logger = logging.getLogger("ml_assets.core.prediction_log")


class _Entry:
    """One producer's rows and the future resolved when they are committed."""

    __slots__ = ("records", "future")

    def __init__(self, records: Sequence[PredictionRecord], future: Future | None):
        self.records = records
        self.future = future


def _resolve(future: Future | None, error: BaseException | None = None) -> None:
    if future is None:
        return
    try:
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
    except InvalidStateError:  # cancelled by a caller that stopped waiting
        pass


class PredictionLog(ABC):
    """Append-only log of predictions, buffered in memory and written by one thread."""

    read_only = False

    def __init__(self, max_queue_rows: int = 50_000, batch_rows: int = 5_000,
                 retry_seconds: float = 0.5, spill_path: str | Path | None = None,
                 stall_seconds: float = 5.0):
        """`spill_path`: where rows that still cannot be stored at close go, as
        `<spill_path minus suffix>.unwritten-<UTC time>.jsonl` (default: beside a file
        log, else ./prediction_log.unwritten-*.jsonl; the system temp directory when
        that fails). `stall_seconds`: a write running longer than this makes `append`
        refuse new rows until it ends."""
        self.spill_path = Path(spill_path) if spill_path else None
        self.max_queue_rows = max_queue_rows
        self.batch_rows = batch_rows
        self.retry_seconds = retry_seconds
        self.stall_seconds = stall_seconds
        self.write_failures = 0
        self.commits = 0
        self.producer_waits = 0  # append_many calls that waited for room
        self.dropped_rows = 0  # offer() rows refused because the queue was full
        self.spilled_rows = 0
        self.lost_rows = 0  # rows neither stored nor spilled at close
        self.spilled_to: list[Path] = []
        self.last_error: str | None = None
        # Hooks (metrics): on_commit(rows, seconds) after each commit; on_write_failure().
        self.on_commit: Callable[[int, float], None] | None = None
        self.on_write_failure: Callable[[], None] | None = None
        self._queue: deque[_Entry] = deque()
        self._queued_rows = 0
        self._in_writer = 0  # rows taken by the writer and not yet committed
        self._current: list[_Entry] = []  # the entries of the write in progress
        self._write_started: float | None = None
        self._failing = False
        self._cond = threading.Condition()
        self._closed = False
        self._stopping = False
        self._writer: threading.Thread | None = None  # started by the first append

    # -- storage, implemented per backend -----------------------------------------
    @abstractmethod
    def _write(self, records: Sequence[PredictionRecord]) -> None:
        """Store `records` durably in one transaction (or raise, storing none)."""

    @property
    @abstractmethod
    def _named(self) -> str:
        """Where the log is, as errors name it (a file, a table)."""

    @abstractmethod
    def _old_day_rows(self, day: str) -> list[tuple]:
        """The day's rows of the first format's table, in order (see `_frame`)."""

    @abstractmethod
    def _old_day_count(self, day: str) -> int:
        """How many rows of the day the first format's table holds."""

    @abstractmethod
    def _day_total(self, day: str, through: int | None) -> tuple[int, int]:
        """The day's newest batch id (0: none) and the rows of its batches (up to id
        `through` when given), counted in the store."""

    @abstractmethod
    def _day_index(self, day: str, after: int, through: int,
                   limit: int) -> list[tuple[int, int]]:
        """(batch id, rows) of the day's batches with after < id <= through, by id, at
        most `limit` of them."""

    @abstractmethod
    def _day_batches(self, day: str, span: tuple[int, int] | None) -> list[tuple]:
        """(batch id, format, data) of the day's batches with ids in `span` (inclusive;
        None: all), by id."""

    @abstractmethod
    def read_requests(self, request_ids: Iterable[str], features: bool = True,
                      day: str | None = None, through: int | None = None) -> pd.DataFrame:
        """Every logged row of these requests, whatever their day (only `day`'s, in
        batches up to id `through`, when given), as read_day reads them (days in order,
        each in log order); found through the request-id index, so only the batches
        holding them are decoded."""

    def read_day(self, day: date | str, features: bool = True) -> pd.DataFrame:
        """Every prediction of one UTC day: META_COLUMNS then one column per feature
        (only META_COLUMNS when not `features`: the feature columns are not decoded)."""
        day = _day(day)
        old = _frame(self._old_day_rows(day), features)
        return columnar.concat_frames([old, columnar.frame(
            self._decoded(day, self._day_batches(day, None)), features)])

    def day_mark(self, day: date | str, through: int | None = None) -> LogMark:
        """How far the day's log reaches now: its newest batch id and the rows up to it
        (up to `through` when given), counted without decoding."""
        day = _day(day)
        last, rows = self._day_total(day, through)
        return LogMark(last if through is None else through,
                       self._old_day_count(day) + rows)

    def read_segments(self, day: date | str, through: int,
                      segment_rows: int = SEGMENT_ROWS,
                      features: bool = True) -> Iterator[pd.DataFrame]:
        """The day's rows up to batch `through` (a `day_mark`), as read_day reads them,
        in frames of about `segment_rows` rows (whole batches, their index read a page
        at a time): a day is read without holding it. The first format's rows (logs
        written before the columnar format) come first, as one frame."""
        day = _day(day)
        old = self._old_day_rows(day)
        if old:
            first, old = _frame(old, features), []
            yield first
            del first
        segment: list[int] = []
        filled, after = 0, 0
        while True:
            page = self._day_index(day, after, through, INDEX_PAGE)
            for batch_id, rows in page:
                segment.append(batch_id)
                filled += rows
                if filled >= segment_rows:
                    yield self._segment(day, segment, features)
                    segment, filled = [], 0
            if len(page) < INDEX_PAGE:
                break
            after = page[-1][0]
        if segment:
            yield self._segment(day, segment, features)

    def _segment(self, day: str, ids: list[int], features: bool) -> pd.DataFrame:
        """The batches `ids` (in order) as one frame; a batch committed late inside
        their span (not in `ids`) is not read."""
        wanted = set(ids)
        stored = [b for b in self._day_batches(day, (ids[0], ids[-1])) if b[0] in wanted]
        if len(stored) != len(wanted):
            raise PredictionLogError(f"prediction log: batches {ids[0]}-{ids[-1]} of {day} "
                                     f"in {self._named} went missing while being read")
        return columnar.frame(self._decoded(day, stored), features)

    def _decoded(self, day: str, stored: list[tuple]) -> list:
        return [columnar.decode(data, f"batch {batch_id} of {day} in {self._named}", fmt)
                for batch_id, fmt, data in stored]

    @abstractmethod
    def days(self) -> list[date]:
        """The UTC days that hold predictions, oldest first."""

    @abstractmethod
    def _close_storage(self) -> None:
        """Release connections."""

    def row_count(self, day: date | str) -> int:
        """How many predictions `day` holds (counted without decoding rows)."""
        return self.day_mark(day).rows

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------
    @property
    def backlog(self) -> int:
        """Rows accepted but not yet stored."""
        return self._queued_rows + self._in_writer

    def unavailable_reason(self) -> str | None:
        """Why `append` would refuse rows now (None: it would take them)."""
        with self._cond:
            return self._refusal(0)

    def _refusal(self, rows: int) -> str | None:
        if self._closed or self._stopping:
            return "the prediction log is closing"
        if self._failing:
            return f"the prediction log cannot store rows: {self.last_error}"
        started = self._write_started
        if started is not None and time.monotonic() - started > self.stall_seconds:
            return (f"a prediction log write has been running for "
                    f"{time.monotonic() - started:.1f}s (storage stalled or locked)")
        if self._queued_rows + rows > self.max_queue_rows:
            return (f"the prediction log queue is full ({self._queued_rows} of "
                    f"{self.max_queue_rows} rows waiting)")
        return None

    # -- producers ----------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.read_only:
            raise RuntimeError("prediction log opened read-only")
        if self._closed:
            raise RuntimeError("prediction log is closed")

    def _enqueue(self, entry: _Entry) -> None:  # holding self._cond
        if self._writer is None:
            self._writer = threading.Thread(target=self._run, daemon=True,
                                            name="prediction-log-writer")
            self._writer.start()
        self._queue.append(entry)
        self._queued_rows += len(entry.records)
        self._cond.notify_all()

    def append(self, records: Sequence[PredictionRecord]) -> Future:
        """Queue `records`; the Future resolves (None) once they are committed, or
        fails with PredictionLogUnavailable when the write fails. Refuses at once
        (PredictionLogUnavailable, nothing queued) when the log cannot take them."""
        future: Future = Future()
        if not records:
            future.set_result(None)
            return future
        with self._cond:
            self._check_writable()
            reason = self._refusal(len(records))
            if reason is not None:
                raise PredictionLogUnavailable(reason, self.retry_seconds)
            self._enqueue(_Entry(records, future))
        return future

    def offer(self, records: Sequence[PredictionRecord]) -> bool:
        """Fire-and-forget: queue `records` if there is room, else drop them (counted in
        `dropped_rows`) and return False. Never waits."""
        if not records:
            return True
        with self._cond:
            self._check_writable()
            if self._queued_rows + len(records) > self.max_queue_rows or self._stopping:
                self.dropped_rows += len(records)
                return False
            self._enqueue(_Entry(records, None))
        return True

    def append_many(self, records: Sequence[PredictionRecord],
                    timeout: float | None = None) -> Future:
        """Queue `records`, waiting (up to `timeout`) for room when the queue is full;
        returns the commit Future. For batch producers, not for request handlers."""
        future: Future = Future()
        if not records:
            future.set_result(None)
            return future
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._check_writable()
            waited = False
            while (self._queued_rows and
                   self._queued_rows + len(records) > self.max_queue_rows):
                waited = True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise PredictionLogUnavailable("the prediction log queue stayed full")
                self._cond.wait(min(remaining, 1.0) if remaining is not None else 1.0)
                self._check_writable()
            self.producer_waits += waited
            self._enqueue(_Entry(records, future))
        return future

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted row is stored; False if `timeout` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self.backlog:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 1.0) if remaining is not None else 1.0)
        return True

    def close(self, timeout: float = 30.0) -> int:
        """Store everything accepted (for up to `timeout`), stop the writer, spill what
        is left and close storage. Returns `lost_rows`: rows neither stored nor spilled
        (0 unless the spill files could not be written either)."""
        with self._cond:
            if self._closed:
                return self.lost_rows
            self._stopping = True  # refuse new rows; the writer drains the queue
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        writer = self._writer
        if writer is not None:
            writer.join(timeout=max(1.0, timeout))
        with self._cond:
            leftover = list(self._queue)
            if writer is not None and writer.is_alive() and self._in_writer:
                # Stuck in a write: it may still land; spill it too (a duplicate is
                # better than a loss).
                logger.error("prediction log: a write of %d rows is still running after "
                             "%.0fs; spilling them as well", self._in_writer, timeout)
                leftover = [*self._current, *leftover]
            self._queue.clear()
            self._queued_rows = 0
        if leftover:
            error = PredictionLogUnavailable("the prediction log closed before these rows "
                                             "were stored")
            for entry in leftover:
                _resolve(entry.future, error)
            self._spill([r for entry in leftover for r in entry.records])
        try:
            self._close_storage()
        except Exception:  # noqa: BLE001 - closing must finish
            logger.exception("prediction log: closing storage failed")
        return self.lost_rows

    # -- the writer ------------------------------------------------------------------
    def _take(self) -> list[_Entry]:  # holding self._cond
        taken = [self._queue.popleft()]
        rows = len(taken[0].records)
        while self._queue and rows + len(self._queue[0].records) <= self.batch_rows:
            entry = self._queue.popleft()
            rows += len(entry.records)
            taken.append(entry)
        self._queued_rows -= rows
        self._in_writer = rows
        self._current = taken
        self._write_started = time.monotonic()
        return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait(1.0)
                if not self._queue:
                    return  # closed and drained
                batch = self._take()
            records = [r for entry in batch for r in entry.records]
            started = time.perf_counter()
            try:
                self._write(records)
            except Exception as exc:  # noqa: BLE001 - keep the rows and retry
                self._failed(batch, exc)
                with self._cond:
                    if self._closed:
                        return
                    # Sleep, but wake at once for close().
                    self._cond.wait_for(lambda: self._closed, self.retry_seconds)
                continue
            seconds = time.perf_counter() - started
            with self._cond:
                self._in_writer = 0
                self._current = []
                self._write_started = None
                self._failing = False
                self.commits += 1
                self._cond.notify_all()
            for entry in batch:
                _resolve(entry.future)
            if self.on_commit is not None:
                self.on_commit(len(records), seconds)

    def _failed(self, batch: list[_Entry], exc: Exception) -> None:
        """A write failed: the rows go back to the head of the queue (kept, retried);
        every waiting producer is told now, since storage is failing."""
        self.write_failures += 1
        text = " ".join(str(exc).split()) or type(exc).__name__
        logger.error("prediction log write of %d rows failed (%s); keeping them and "
                     "retrying in %.1fs", sum(len(e.records) for e in batch), text,
                     self.retry_seconds)
        error = PredictionLogUnavailable(f"the prediction log cannot store rows: {text}",
                                         self.retry_seconds)
        with self._cond:
            self.last_error = text
            self._failing = True
            waiting = [e.future for e in (*batch, *self._queue) if e.future is not None]
            self._queue.extendleft(_Entry(e.records, None) for e in reversed(batch))
            for entry in self._queue:
                entry.future = None
            self._queued_rows += self._in_writer
            self._in_writer = 0
            self._current = []
            self._write_started = None
            self._cond.notify_all()
        for future in waiting:
            _resolve(future, error)
        if self.on_write_failure is not None:
            self.on_write_failure()

    # -- spilling --------------------------------------------------------------------
    def _spill_targets(self) -> list[Path]:
        base = self.spill_path or Path(getattr(self, "path", "prediction_log"))
        stamp = f".unwritten-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}.jsonl"
        first = base.with_suffix(stamp)
        return [first, Path(tempfile.gettempdir()) / first.name]

    def _spill(self, records: list[PredictionRecord]) -> None:
        payload = b"".join(orjson.dumps(_as_row(r)) + b"\n" for r in records)
        for path in self._spill_targets():
            try:
                with open(path, "ab") as out:
                    out.write(payload)
                    out.flush()
                    os.fsync(out.fileno())
            except OSError as exc:
                logger.error("prediction log: cannot spill %d rows to %s: %s",
                             len(records), path, exc)
                continue
            self.spilled_rows += len(records)
            self.spilled_to.append(path)
            logger.error("prediction log: %d rows could not be stored; saved to %s",
                         len(records), path)
            return
        self.lost_rows += len(records)
        logger.error("prediction log: %d rows LOST: neither stored nor spilled",
                     len(records))


def _as_row(record: PredictionRecord) -> dict:
    return {"day": record.timestamp.date().isoformat(),
            "logged_at": record.timestamp.isoformat(),
            "request_id": record.request_id, "row_index": record.row_index,
            "model_name": record.model_name, "model_version": record.model_version,
            "prediction": record.prediction, "confidence": record.confidence,
            "probabilities": record.probabilities, "features": record.features,
            "input_flags": record.input_flags, "variant": record.variant,
            "latency_ms": _finite_or_none(record.latency_ms), "error": record.error}


def _finite_or_none(value: float) -> float | None:
    """NaN (and infinities) as None: stored as NULL, which both backends read as NaN."""
    value = float(value)
    return value if math.isfinite(value) else None
