"""Progress helpers: the in-process tracker, the heartbeat file and its reader.

Real files in tmp_path, fake clocks, no sleep. A file counts as touched when its mtime
no longer equals a sentinel time set just before.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import pytest

from elastic_healthcheck import MAX_FUTURE_SKEW, HealthStatus, Verdict, check_liveness
from elastic_healthcheck.progress import HeartbeatFile, HeartbeatFileReader, ProgressTracker

NOW = 1_700_000_000.0
# An mtime no real touch can produce (2001-09-09), set before a beat to see if it touches.
SENTINEL_NS = 1_000_000_000 * 10**9
LOGGER = "elastic_healthcheck.progress"

ALIVE, DEAD, UNKNOWN = Verdict.ALIVE, Verdict.DEAD, Verdict.UNKNOWN


class FakeClock:
    """A clock that reads `now` and moves only when a test says so."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingClock:
    """A thread-safe clock returning 1, 2, 3, ...: each value says which read it was."""

    def __init__(self) -> None:
        self.reads = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.reads += 1
            return float(self.reads)


def mark(path) -> None:
    os.utime(path, ns=(SENTINEL_NS, SENTINEL_NS))


def touched(path) -> bool:
    return os.stat(path).st_mtime_ns != SENTINEL_NS


# --- ProgressTracker ---------------------------------------------------------------


def test_tracker_starts_at_construction_time():
    clock = FakeClock(NOW)
    tracker = ProgressTracker(clock)
    clock.now = NOW + 30
    assert tracker() == NOW
    assert tracker.last_progress == NOW


def test_beat_records_the_clock_now():
    clock = FakeClock(NOW)
    tracker = ProgressTracker(clock)
    clock.now = NOW + 30
    tracker.beat()
    assert tracker() == NOW + 30
    assert tracker.last_progress == NOW + 30


def test_last_progress_is_read_only():
    tracker = ProgressTracker(FakeClock())
    with pytest.raises(AttributeError):
        tracker.last_progress = 0.0  # type: ignore[misc]


def test_default_clock_is_wall_time():
    before = time.time()
    tracker = ProgressTracker()
    after = time.time()
    assert before <= tracker() <= after


# (seconds since the last beat, verdict with timeout=60)
TRACKER_AGES = [
    pytest.param(0.0, ALIVE, id="just-beaten"),
    pytest.param(60.0, ALIVE, id="age-equals-timeout"),
    pytest.param(61.0, DEAD, id="past-timeout"),
]


@pytest.mark.parametrize(("elapsed", "verdict"), TRACKER_AGES)
def test_tracker_is_an_alive_callback(elapsed, verdict):
    clock = FakeClock(NOW)
    tracker = ProgressTracker(clock)
    clock.now = NOW + 100
    tracker.beat()
    clock.now += elapsed
    status = check_liveness(tracker, 60, clock=clock)
    assert status == HealthStatus(verdict, 60.0, last_progress=NOW + 100, age=elapsed)


def test_beat_revives_a_dead_tracker():
    clock = FakeClock(NOW)
    tracker = ProgressTracker(clock)
    clock.now = NOW + 61
    assert check_liveness(tracker, 60, clock=clock).verdict is DEAD
    tracker.beat()
    assert check_liveness(tracker, 60, clock=clock).verdict is ALIVE


def test_concurrent_beats_leave_a_value_the_clock_returned():
    """8 threads x 10_000 beats, no lock: the value is one clock read, none is skipped."""
    threads_count, beats = 8, 10_000
    clock = CountingClock()
    tracker = ProgressTracker(clock)  # read 1
    start = threading.Barrier(threads_count, timeout=10)

    def run() -> None:
        start.wait()
        for _ in range(beats):
            tracker.beat()

    threads = [threading.Thread(target=run) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)

    total = 1 + threads_count * beats
    assert clock.reads == total  # every beat read the clock exactly once
    last = tracker()
    assert type(last) is float and last.is_integer()
    assert 2 <= last <= total  # a beat's time, not the construction time nor garbage
    tracker.beat()
    assert tracker() == total + 1


def test_tracker_repr_shows_last_progress():
    assert repr(ProgressTracker(FakeClock(NOW))) == f"ProgressTracker(last_progress={NOW!r})"


# --- HeartbeatFile -----------------------------------------------------------------


def test_construction_creates_a_missing_file(tmp_path):
    path = tmp_path / "heartbeat"
    before = time.time()
    HeartbeatFile(path, clock=FakeClock(0.0)).close()
    assert path.stat().st_size == 0
    # Coarse file-system timestamps may lag time.time() by a tick: allow one second.
    assert path.stat().st_mtime >= before - 1


def test_construction_touches_an_existing_stale_file(tmp_path):
    """A file left by an earlier run is refreshed at once, not seen as dead."""
    path = tmp_path / "heartbeat"
    path.write_bytes(b"")
    mark(path)
    HeartbeatFile(path, clock=FakeClock(0.0)).close()
    assert touched(path)


def test_construction_raises_naming_the_path_when_the_directory_is_missing(tmp_path):
    path = tmp_path / "missing-dir" / "heartbeat"
    with pytest.raises(FileNotFoundError) as info:
        HeartbeatFile(path)
    assert info.value.filename == str(path)
    assert f"no directory {tmp_path / 'missing-dir'}" in str(info.value)
    assert info.value.__suppress_context__  # one error in a traceback, not a chain of two


def test_a_directory_is_never_a_heartbeat_file(tmp_path):
    """utime() on a directory succeeds, and its mtime says nothing about training."""
    with pytest.raises(IsADirectoryError):
        HeartbeatFile(tmp_path)
    status = check_liveness(HeartbeatFileReader(tmp_path), timeout=60)
    assert status.verdict is Verdict.UNKNOWN
    assert status.reason == f"callback raised IsADirectoryError for {tmp_path}"


# (seconds since the last touch, whether beat() touches) with interval=10
RATE_LIMIT = [
    pytest.param(0.0, False, id="same-instant"),
    pytest.param(9.999, False, id="just-inside-interval"),
    pytest.param(10.0, True, id="interval-elapsed"),
    pytest.param(3600.0, True, id="long-after"),
]


@pytest.mark.parametrize(("elapsed", "expect_touch"), RATE_LIMIT)
def test_beat_touches_only_once_interval_has_elapsed(tmp_path, elapsed, expect_touch):
    path = tmp_path / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=10, clock=clock)
    mark(path)
    clock.now = elapsed
    heartbeat.beat()
    assert touched(path) is expect_touch


def test_many_beats_within_an_interval_touch_once(tmp_path):
    path = tmp_path / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=10, clock=clock)
    clock.now = 10.0
    heartbeat.beat()  # touches; the next touch is due at 20
    mark(path)
    for step in range(1000):
        clock.now = 10.0 + step * 0.00999
        heartbeat.beat()
    assert not touched(path)
    clock.now = 20.0
    heartbeat.beat()
    assert touched(path)


def test_zero_interval_touches_on_every_beat(tmp_path):
    path = tmp_path / "heartbeat"
    heartbeat = HeartbeatFile(path, interval=0, clock=FakeClock(0.0))
    for _ in range(3):
        mark(path)
        heartbeat.beat()
        assert touched(path)


def test_beat_recreates_a_deleted_file(tmp_path):
    path = tmp_path / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=1, clock=clock)
    path.unlink()
    clock.now = 1.0
    heartbeat.beat()
    assert path.exists()


@pytest.mark.parametrize(
    ("interval", "error"),
    [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("1", TypeError),
     (None, TypeError), (True, TypeError)],
)  # fmt: skip
def test_bad_interval_is_rejected_before_touching(tmp_path, interval, error):
    path = tmp_path / "heartbeat"
    with pytest.raises(error, match="interval"):
        HeartbeatFile(path, interval=interval)
    assert not path.exists()


def test_beat_error_is_logged_once_and_not_raised(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=1, clock=clock)
    path.unlink()
    directory.rmdir()
    for second in range(1, 6):
        clock.now = float(second)
        heartbeat.beat()  # each one tries, fails and must not raise
    assert [(r.name, r.levelno) for r in caplog.records] == [(LOGGER, logging.WARNING)]
    message = caplog.records[0].getMessage()
    assert str(path) in message
    assert "Errno 2 ENOENT" in message


def test_beat_recovers_when_the_directory_comes_back(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=1, clock=clock)
    path.unlink()
    directory.rmdir()
    clock.now = 1.0
    heartbeat.beat()
    directory.mkdir()
    clock.now = 2.0
    heartbeat.beat()
    assert path.exists()
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert caplog.records[1].getMessage() == f"Heartbeat file {path} is updated again"


def test_a_new_failure_after_recovery_warns_again(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=1, clock=clock)
    for _ in range(3):
        path.unlink(missing_ok=True)
        directory.rmdir()
        clock.now += 1
        heartbeat.beat()  # fails
        directory.mkdir()
        clock.now += 1
        heartbeat.beat()  # succeeds
    assert [r.levelno for r in caplog.records] == [logging.WARNING] * 3


def test_failed_touch_is_retried_an_interval_later_not_every_step(tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=10, clock=clock)
    path.unlink()
    directory.rmdir()
    clock.now = 10.0
    heartbeat.beat()  # fails; the retry is due at 20
    directory.mkdir()
    clock.now = 19.0
    heartbeat.beat()
    assert not path.exists()
    clock.now = 20.0
    heartbeat.beat()
    assert path.exists()


@pytest.mark.parametrize(("remove_on_close", "exists"), [(True, False), (False, True)])
def test_close_removes_the_file_only_when_asked(tmp_path, remove_on_close, exists):
    path = tmp_path / "heartbeat"
    HeartbeatFile(path, remove_on_close=remove_on_close).close()
    assert path.exists() is exists


def test_context_manager_closes_and_removes(tmp_path):
    path = tmp_path / "heartbeat"
    with HeartbeatFile(path, remove_on_close=True) as heartbeat:
        assert path.exists()
    assert not path.exists()
    assert "closed=True" in repr(heartbeat)


def test_close_is_idempotent_and_tolerates_a_file_already_gone(tmp_path):
    path = tmp_path / "heartbeat"
    heartbeat = HeartbeatFile(path, remove_on_close=True)
    path.unlink()
    heartbeat.close()
    heartbeat.close()
    assert not path.exists()


def test_beat_after_close_does_not_recreate_the_file(tmp_path):
    path = tmp_path / "heartbeat"
    clock = FakeClock(0.0)
    heartbeat = HeartbeatFile(path, interval=0, clock=clock, remove_on_close=True)
    heartbeat.close()
    clock.now = 100.0
    heartbeat.beat()
    assert not path.exists()


def test_heartbeat_file_repr_and_path(tmp_path):
    path = tmp_path / "heartbeat"
    heartbeat = HeartbeatFile(path, interval=2.5)
    assert heartbeat.path == str(path)
    assert repr(heartbeat) == (
        f"HeartbeatFile({str(path)!r}, interval=2.5, remove_on_close=False, closed=False)"
    )


# --- HeartbeatFileReader -----------------------------------------------------------


def test_reader_returns_the_file_mtime_in_epoch_seconds(tmp_path):
    path = tmp_path / "heartbeat"
    path.write_bytes(b"")
    os.utime(path, (NOW - 5, NOW - 5))
    assert HeartbeatFileReader(path)() == NOW - 5


def test_missing_file_is_unknown_not_a_crash_and_names_the_path(tmp_path):
    """A typo in the path shows in every answer: the reason names the file it looked for."""
    path = tmp_path / "never-written"
    status = check_liveness(HeartbeatFileReader(path), 60, clock=lambda: NOW)
    reason = f"callback raised FileNotFoundError for {path}"
    assert status == HealthStatus(UNKNOWN, 60.0, reason=reason)


# (mtime relative to the local clock, expected verdict, expected age) with timeout=60
READER_VERDICTS = [
    pytest.param(-5.0, ALIVE, 5.0, id="recent"),
    pytest.param(-61.0, DEAD, 61.0, id="stale"),
    pytest.param(+100.0, ALIVE, 0.0, id="future-within-skew-is-age-zero"),
    pytest.param(MAX_FUTURE_SKEW, ALIVE, 0.0, id="future-at-skew-limit"),
    pytest.param(MAX_FUTURE_SKEW + 1, UNKNOWN, None, id="far-future-is-unknown"),
]


@pytest.mark.parametrize(("offset", "verdict", "age"), READER_VERDICTS)
def test_reader_verdict_from_the_file_mtime(tmp_path, offset, verdict, age):
    path = tmp_path / "heartbeat"
    path.write_bytes(b"")
    os.utime(path, (NOW + offset, NOW + offset))
    status = check_liveness(HeartbeatFileReader(path), 60, clock=lambda: NOW)
    assert status.verdict is verdict
    assert status.age == age
    if verdict is UNKNOWN:
        assert "ahead of the clock" in (status.reason or "")


def test_reader_follows_a_writer_end_to_end(tmp_path):
    """A real writer and reader with the real clocks: fresh file alive, sentinel dead."""
    path = tmp_path / "heartbeat"
    reader = HeartbeatFileReader(path)
    with HeartbeatFile(path, interval=0) as heartbeat:
        assert check_liveness(reader, 60).verdict is ALIVE
        mark(path)
        assert check_liveness(reader, 60).verdict is DEAD
        heartbeat.beat()
        assert check_liveness(reader, 60).verdict is ALIVE


def test_reader_repr_and_path(tmp_path):
    reader = HeartbeatFileReader(tmp_path / "heartbeat")
    assert reader.path == str(tmp_path / "heartbeat")
    assert repr(reader) == f"HeartbeatFileReader({str(tmp_path / 'heartbeat')!r})"
