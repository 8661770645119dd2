"""The torchrun verdict, end to end: real torchrun, 2 real gloo workers, real waits.

Each test launches `elastic-healthcheck torchrun` on tests/torch/scripts/steps.py (a real
data-parallel loop: all_reduce of the gradients, then optimizer.step()) and probes
/healthz every 50 ms. What an operator sees is checked three ways: the status code, the
JSON body (states, blame, summary) and the agent's log (the hung rank's stacks).
"""

from __future__ import annotations

import sys

import pytest

from ..servers.client import request
from .launch import Launch, dead, running

pytestmark = pytest.mark.torch

TIMEOUT = 2.0
SLACK = 1.5  # allowed past a deadline: the probe period, the monitor tick, load


def test_a_rank_that_never_starts_is_blamed_once_the_startup_timeout_passes():
    startup = 15.0  # long enough for rank 0 to import torch and reach all_reduce on a busy CI
    launch = Launch(
        script="steps.py",
        timeout=TIMEOUT,
        health=("--health-startup-timeout", str(startup)),
        NEVER_START_RANK="1",  # rank 0 waits for it in its first all_reduce, as a user's would
        STEPS="1000000",
    )
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        inside = launch.wait_for(
            lambda o: running(o) and o.detail["ranks"]["0"]["in_collective"] == "all_reduce",
            timeout=startup + 30,
        )
        first_dead = launch.wait_for(dead, timeout=startup + 60)
        launch.wait_for(lambda o: o.at > first_dead.at + 0.5, timeout=10)
    finally:
        launch.stop()
        launch.wait()
    # When the group was spawned: a starting rank's age counts from its spawn.
    starting = [o for o in launch.observations if running(o) and o.at < first_dead.at]
    assert starting, launch.phases()
    spawned = min(o.at - o.detail["ranks"]["1"]["age"] for o in starting)
    assert inside.at < spawned + startup, "rank 0 reached no all_reduce before the deadline"
    assert all(o.detail["ranks"]["1"]["state"] == "starting" for o in starting), [
        o.detail for o in starting if o.detail["ranks"]["1"]["state"] != "starting"
    ][:2]
    # 200 until the startup deadline, 503 within SLACK after it, and only rank 1 blamed.
    assert first_dead.at - spawned <= startup + SLACK, first_dead.at - spawned
    assert all(o.status == 200 for o in launch.observations if o.at < spawned + startup - 0.2)
    blamed = [o.detail["suspect_ranks"] for o in launch.before_stop() if dead(o)]
    assert blamed and all(b == ["1"] for b in blamed), blamed
    assert "made no progress within the startup timeout of 15 s" in first_dead.detail["summary"]
    log = launch.stderr()
    assert "Local rank 1 (rank 1, pid" in log and "is starting: no progress for" in log
    assert "Its Python stacks" in log and "steps.py" in log


def test_a_skewed_start_never_answers_503():
    """Rank 1 loads data for 3x the timeout while rank 0 waits for it in all_reduce."""
    launch = Launch(
        script="steps.py",
        timeout=TIMEOUT,
        health=("--health-startup-timeout", "60"),
        LOAD_RANK="1",
        LOAD_SECONDS=str(3 * TIMEOUT),
        STEPS="30",
    )
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, out, err = launch.wait()
    assert code == 0, err[-3000:]
    assert out.count("DONE") == 2
    answered = [o for o in launch.observations if o.status is not None]
    assert answered and all(o.status == 200 for o in answered), [
        (o.status, o.detail) for o in answered if o.status != 200
    ][:2]
    waiting = [
        o
        for o in answered
        if running(o)
        and o.detail["ranks"]["1"]["state"] == "starting"
        and o.detail["ranks"]["0"]["in_collective"] == "all_reduce"
        and o.detail["ranks"]["0"]["age"] > TIMEOUT
    ]
    assert waiting, "rank 0 was never seen waiting in all_reduce past the timeout"
    # Neither has finished a step: rank 0 waits inside its first all_reduce, rank 1 loads.
    assert waiting[-1].detail["summary"].startswith("starting: local ranks 0, 1 made no progress")
    assert all(o.detail["ranks"]["0"]["state"] == "starting" for o in waiting)


@pytest.mark.parametrize("trial", [1, 2])
def test_a_hang_in_compute_is_seen_in_time_and_blamed_on_that_rank_alone(trial):
    """No beat() in the script: optimizer.step() is the only progress. Rank 1 hangs in
    compute at step 15; rank 0 then really waits inside gloo's all_reduce for it."""
    debug = trial == 1  # the debug endpoint is on in one trial, off in the other
    launch = Launch(
        script="steps.py",
        timeout=TIMEOUT,
        health=("--health-debug",) if debug else (),
        HANG_RANK="1",
        HANG_STEP="15",
        STEPS="1000000",
    )
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        first_dead = launch.wait_for(dead, timeout=90)
        launch.wait_for(lambda o: o.at > first_dead.at + 1.0, timeout=10)
        log_deadline = first_dead.at + 2.0 + SLACK
        launch.wait_for(lambda o: "stuck_in_compute" in launch.stderr(), timeout=10)
        stacks_logged = next(t for t, line in launch.err_lines if "stuck_in_compute" in line)
        page = request(launch.port, "/debug/ranks")
    finally:
        launch.stop()
        launch.wait()
    hung = launch.stdout_time("HANG")
    assert hung is not None, launch.stdout()
    # Alive until the timeout has passed since the hang, dead within SLACK after it.
    assert all(o.status == 200 for o in launch.observations if o.at < hung + TIMEOUT - 0.3)
    assert first_dead.at <= hung + TIMEOUT + SLACK, first_dead.at - hung
    for o in (o for o in launch.before_stop() if dead(o)):
        assert o.detail["suspect_ranks"] == ["1"], o.detail
        assert o.detail["ranks"]["0"]["in_collective"] == "all_reduce", o.detail
        assert o.detail["ranks"]["1"]["in_collective"] is None
        assert o.detail["ranks"]["1"]["steps"] == 15  # it never stepped again
        assert "local rank 1 stalled outside a collective" in o.detail["summary"]
        assert o.body["status"] == "dead"
    # The hung rank's stacks are in the agent's log, once, within 2 s of the verdict.
    assert stacks_logged <= log_deadline
    log = launch.stderr()
    assert log.count("Local rank 1 (rank 1, pid") == 1, log[-4000:]
    assert "inside all_reduce" in log  # rank 0's line says where it waits
    if debug:  # the same stacks on the network, as text
        assert page.status == 200, page
        assert page.header("content-type") == "text/plain; charset=utf-8"
        text = page.body.decode()
        assert "verdict: dead" in text and "--- local rank 1 ---" in text
        assert "stuck_in_compute" in text and '"suspect_ranks"' not in text
    else:  # stacks name code paths: off the network unless asked for
        assert page.status == 404


def test_a_sub_second_timeout_follows_the_ranks():
    """--health-timeout 0.5 with steps every 50 ms: no flapping; then a hang is seen."""
    timeout = 0.5
    launch = Launch(
        script="steps.py",
        timeout=timeout,
        HANG_RANK="1",
        HANG_STEP="60",
        STEPS="1000000",
    )
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        first_dead = launch.wait_for(dead, timeout=90)
    finally:
        launch.stop()
        launch.wait()
    hung = launch.stdout_time("HANG")
    assert hung is not None
    before = [o for o in launch.observations if running(o) and o.at < hung]
    progressing = [o for o in before if o.detail["ranks"]["1"]["state"] == "progressing"]
    assert len(progressing) >= 10, len(progressing)  # steps were seen, for 1 s or more
    assert all(o.status == 200 for o in before), [
        o.detail.get("summary") for o in before if o.status != 200
    ]
    assert first_dead.at <= hung + timeout + SLACK
    assert first_dead.detail["suspect_ranks"] == ["1"]


def test_no_python_workers_are_accounted_for_and_report_with_beat():
    """--no-python: the entrypoint is not Python, so it starts as plain torchrun starts it;
    its ranks still count from their spawn, and beat() reports their progress."""
    launch = Launch(
        "--no-python",
        script="beats.sh",
        timeout=TIMEOUT,
        TEST_PYTHON=sys.executable,
        TRAIN_SECONDS="3",
    )
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, _, err = launch.wait()
    assert code == 0, err[-3000:]
    seen = [o for o in launch.observations if running(o)]
    assert any({r["state"] for r in o.detail["ranks"].values()} == {"progressing"} for o in seen), [
        o.detail for o in seen
    ][:3]
    assert all(o.status == 200 for o in launch.observations if o.status is not None)
