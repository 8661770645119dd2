"""--health-on-hang: recover from a hang inside the job, end to end with real torchrun.

Rank 1 of 2 real gloo workers hangs in compute while rank 0 waits for it in all_reduce.
With ``restart`` the agent ends the hung group and torchrun's own failure path restarts
it (counting against --max-restarts); with ``report`` it stays hung and says so.
"""

from __future__ import annotations

import pytest

from .launch import Launch, dead

pytestmark = pytest.mark.torch

TIMEOUT = 2.0


def test_restart_ends_the_hung_group_and_training_resumes():
    launch = Launch(
        "--max-restarts",
        "1",
        script="steps.py",
        timeout=TIMEOUT,
        health=("--health-on-hang", "restart"),
        HANG_RANK="1",
        HANG_STEP="10",
        HANG_ATTEMPTS="first",
        STEPS="40",
    )
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, out, err = launch.wait(timeout=180)
    assert code == 0, err[-4000:]
    assert "DONE rank=0 attempt=1" in out and "DONE rank=1 attempt=1" in out
    hung = launch.stdout_time("HANG")
    assert hung is not None
    # The second worker group runs within timeout + 10 s of the hang.
    second = next(
        o for o in launch.observations if o.phase == "running" and o.detail["restarts"] == 1
    )
    assert second.at - hung <= TIMEOUT + 10, second.at - hung
    assert second.detail["hang_restarts"] == 1
    last = second.detail["last_hang_restart"]
    assert last["suspect_ranks"] == ["1"] and last["stalled_for"] > TIMEOUT
    # Exactly once: one hang, one group ended, one restart.
    assert err.count("Ending the hung worker group") == 1, err[-4000:]
    assert "so that torchrun restarts it" in err
    assert max(o.detail.get("hang_restarts", 0) for o in launch.observations) == 1


def test_report_leaves_the_hung_job_alone():
    launch = Launch(
        "--max-restarts",
        "1",
        script="steps.py",
        timeout=TIMEOUT,
        HANG_RANK="1",
        HANG_STEP="10",
        HANG_ATTEMPTS="first",
        STEPS="40",
    )
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        first_dead = launch.wait_for(dead, timeout=90)
        # Well past the point where `restart` would have acted: still hung, still 503.
        later = launch.wait_for(lambda o: o.at > first_dead.at + TIMEOUT + 5, timeout=30)
    finally:
        launch.stop()
        launch.wait()
    assert later.status == 503 and later.detail["restarts"] == 0
    assert later.detail["hang_restarts"] == 0
    assert "Ending the hung worker group" not in launch.stderr()


def test_a_hang_on_the_last_attempt_fails_the_job_naming_the_rank():
    launch = Launch(
        "--max-restarts",
        "0",
        script="steps.py",
        timeout=TIMEOUT,
        health=("--health-on-hang", "restart"),
        HANG_RANK="1",
        HANG_STEP="10",
        STEPS="40",
    )
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, _, err = launch.wait(timeout=180)
    assert code != 0
    line = next(line for line in err.splitlines() if "Ending the hung worker group" in line)
    assert "local rank 1 stalled outside a collective" in line
    assert "no progress for" in line and "no restarts are left" in line
    assert "ChildFailedError" in err  # torchrun's own failure report follows
