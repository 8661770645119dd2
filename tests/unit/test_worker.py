"""worker.beat() without the bootstrap (``--no-python`` launches, the bootstrap switched off).

Each case runs a small script in a fresh interpreter, because beat() keeps per-process state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from elastic_healthcheck import worker
from elastic_healthcheck._torchrun.record import (
    ENV_DIR,
    ENV_LOCAL_RANK,
    FLAG_EXITED,
    RankRecord,
    create_record,
    read_record,
    record_path,
)

SRC = str(Path(worker.__file__).resolve().parents[1])


def run_script(source: str, directory: Path, *, local_rank: str = "1", **extra: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIC_HEALTHCHECK_")}
    env.update(
        {
            "PYTHONPATH": SRC,
            ENV_DIR: str(directory),
            ENV_LOCAL_RANK: local_rank,
            "LOCAL_RANK": "0",  # torch's virtual local rank: not what names the record
            "RANK": "9",
            **extra,
        }
    )
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def record_file(tmp_path):
    path = record_path(str(tmp_path), 1)
    create_record(path, time.time())
    return path


BEATS = """
    import os
    from elastic_healthcheck.worker import beat
    for _ in range(3):
        beat()
    print(os.getpid())
"""


def test_beat_starts_the_record_counts_and_marks_exited(tmp_path, record_file):
    out = run_script(BEATS, tmp_path)
    assert out.returncode == 0 and out.stderr == ""
    record = read_record(record_file)
    assert record is not None
    assert (record.pid, record.global_rank, record.steps) == (int(out.stdout), 9, 3)
    assert record.flags == FLAG_EXITED


def test_a_crash_is_not_an_exit(tmp_path, record_file):
    out = run_script("from elastic_healthcheck.worker import beat\nbeat()\n1 / 0\n", tmp_path)
    assert out.returncode == 1 and "ZeroDivisionError" in out.stderr
    record = read_record(record_file)
    assert record is not None and record.steps == 1 and record.flags == 0


def test_system_exit_is_an_exit(tmp_path, record_file):
    out = run_script(
        "import sys\nfrom elastic_healthcheck.worker import beat\nbeat()\nsys.exit(4)\n", tmp_path
    )
    assert out.returncode == 4
    record = read_record(record_file)
    assert record is not None and record.flags == FLAG_EXITED


def test_a_record_owned_by_another_process_is_left_alone(tmp_path, record_file):
    owner = RankRecord(record_file)
    owner.start(os.getpid(), 9)
    owner.close()
    out = run_script(BEATS, tmp_path)
    assert out.returncode == 0 and out.stderr == ""
    record = read_record(record_file)
    assert record is not None
    assert (record.pid, record.steps, record.flags) == (os.getpid(), 0, 0)


def test_a_forked_child_never_beats(tmp_path, record_file):
    out = run_script(
        """
        import os
        from elastic_healthcheck.worker import beat
        from elastic_healthcheck._torchrun.record import read_record, record_path
        beat()
        pid = os.fork()
        if pid == 0:
            for _ in range(5):
                beat()
            os._exit(0)
        os.waitpid(pid, 0)
        print(read_record(record_path(os.environ["ELASTIC_HEALTHCHECK_WORKER_DIR"], 1)).steps)
        """,
        tmp_path,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "1\n", "")


def test_a_child_forked_before_the_first_beat_never_claims_the_rank(tmp_path, record_file):
    out = run_script(
        """
        import multiprocessing, os
        from elastic_healthcheck.worker import beat

        def child():
            beat()

        if __name__ == "__main__":
            process = multiprocessing.get_context("fork").Process(target=child)
            process.start()
            process.join()
            print(process.exitcode)
        """,
        tmp_path,
    )
    assert (out.returncode, out.stdout, out.stderr) == (0, "0\n", "")
    record = read_record(record_file)
    assert record is not None and (record.pid, record.steps) == (0, 0)


def test_a_missing_record_is_one_warning_and_beat_goes_on(tmp_path):
    out = run_script(BEATS, tmp_path, local_rank="7")
    assert out.returncode == 0
    assert len(out.stderr.splitlines()) == 1
    assert "Cannot report progress for local rank 7" in out.stderr


def test_a_bad_loglevel_does_not_make_beat_raise(tmp_path):
    out = run_script(BEATS, tmp_path, local_rank="7", LOGLEVEL="LOUD")
    assert out.returncode == 0 and "Cannot report progress for local rank 7" in out.stderr


def test_beat_outside_the_integration_does_nothing(monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)
    monkeypatch.setattr(worker, "_progress", None)
    worker.beat()
    worker.beat()
    assert worker._progress is worker._nothing


def test_heartbeat_path_is_the_record_path():
    assert worker.heartbeat_path("/run/eh", 3) == record_path("/run/eh", 3)


def test_a_detached_record_writes_nothing_to_the_file(tmp_path, record_file):
    record = RankRecord(record_file)
    try:
        record.progress()
        record._detach()  # what a forked child's records get
        record.progress()
        record.enter("all_reduce")
        record.exited()
    finally:
        record.close()
    snapshot = read_record(record_file)
    assert snapshot is not None
    assert (snapshot.steps, snapshot.entered, snapshot.flags) == (1, 0, 0)
