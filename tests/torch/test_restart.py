"""Restarts that really restart training, with a script as users write it.

tests/torch/scripts/ddp_loop.py calls a plain ``init_process_group("gloo")`` (env://, no
store prefix of its own): with torch's default one worker store for every rendezvous round,
a restarted group can read its dead predecessors' gloo addresses and fail to connect. Each
test launches real torchrun through `elastic-healthcheck torchrun` and checks that the
restarted group trains to the end, and what torchrun and the agent say about it.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import pytest

from .launch import Launch, dead, running

pytestmark = pytest.mark.torch

TIMEOUT = 2.0
SLACK = 1.5


def _restarting(*health: str, max_restarts: int = 1, **env: Any) -> Launch:
    return Launch(
        "--max-restarts",
        str(max_restarts),
        script="ddp_loop.py",
        timeout=TIMEOUT,
        health=health,
        STEPS="20",
        **env,
    )


def _trains_on_attempt_1(launch: Launch, timeout: float = 240) -> str:
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, out, err = launch.wait(timeout=timeout)
    assert code == 0, err[-5000:]
    assert "DONE rank=0 attempt=1" in out and "DONE rank=1 attempt=1" in out, out
    return err


def test_a_hang_restart_trains_again_on_attempt_1():
    err = _trains_on_attempt_1(
        _restarting("--health-on-hang", "restart", HANG_RANK="1", HANG_STEP="5")
    )
    assert err.count("Ending the hung worker group") == 1
    assert "connectFullMesh failed" not in err


def test_a_crash_restart_trains_again_on_attempt_1():
    """An ordinary torchrun restart (a rank exits with an error) under the integration."""
    err = _trains_on_attempt_1(_restarting(CRASH_RANK="1", CRASH_STEP="5"))
    assert "connectFullMesh failed" not in err


def test_a_stopped_rank_is_ended_and_training_resumes():
    """A frozen rank (SIGSTOP, as a process stuck in uninterruptible I/O looks): its stack
    cannot be taken, and the log says why; the group is still ended and restarted."""
    err = _trains_on_attempt_1(
        _restarting(
            "--health-on-hang", "restart", HANG_RANK="1", HANG_STEP="5", HANG_WHERE="stop"
        )  # fmt: skip
    )
    assert "(no stack: the process is stopped (state T" in err, err[-5000:]
    assert err.count("Ending the hung worker group") == 1


def test_torchruns_failure_summary_names_the_hung_rank_and_why():
    launch = _restarting(
        "--health-on-hang", "restart", max_restarts=0, HANG_RANK="1", HANG_STEP="5"
    )
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, _, err = launch.wait(timeout=240)
    assert code != 0
    root = err.split("Root Cause (first observed failure):", 1)[1]
    block = root.split("Failures:", 1)[0] if "Failures:" in root else root[:3000]
    assert re.search(r"rank\s+: 1 \(local_rank: 1\)", block), block
    assert "Hung: local rank 1 (rank 1) made no progress for" in block
    assert "stalled outside a collective while local rank 0 waits in" in block
    assert "top of its stack: File" in block and "in stuck_forever" in block
    others = err.split("Root Cause (first observed failure):", 1)[0]
    assert "Signal 15 (SIGTERM)" in others  # the healthy rank ended with it is listed first


def test_a_restarted_group_that_cannot_start_is_reported_by_the_adapted_deadline():
    """Attempt 0 hangs and is restarted; on attempt 1 rank 1 never gets to its first step.
    The restarted group's startup deadline follows the first start (3x it, at least twice
    the timeout), not the 1800 s a first start of an unknown job gets."""
    launch = Launch(
        "--max-restarts", "1", script="ddp_loop.py", timeout=TIMEOUT,
        health=("--health-on-hang", "restart"),
        HANG_RANK="1", HANG_STEP="5", LOAD_RANK="1", LOAD_ATTEMPT="1", LOAD_SECONDS="1000",
        STEPS="1000000",
    )  # fmt: skip
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        second = launch.wait_for(lambda o: running(o) and o.detail["restarts"] == 1, timeout=120)
        first_dead = launch.wait_for(lambda o: dead(o) and o.detail["restarts"] == 1, timeout=120)
    finally:
        launch.stop()
        launch.wait()
    spawned = second.at - second.detail["ranks"]["1"]["age"]
    summary = first_dead.detail["summary"]
    match = re.search(r"within the startup timeout of ([\d.]+) s", summary)
    assert match, summary
    deadline = float(match[1])
    assert 2 * TIMEOUT <= deadline < 120, summary  # adapted, far below 1800
    assert first_dead.at <= spawned + deadline + SLACK
    assert first_dead.detail["suspect_ranks"] == ["1"]


def _free_port() -> int:
    # torch's c10d rendezvous needs its port before it listens; the kernel picks a free one.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_two_nodes_recover_from_a_hang_on_one_of_them():
    """Two agents on loopback (c10d), one rank each. Rank 1 hangs: its node ends its group,
    the other node's group follows through torch's rendezvous, and both train again."""
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [
        Launch(
            "--nnodes",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            "hang-two-nodes",
            "--max-restarts",
            "1",
            script="ddp_loop.py",
            timeout=TIMEOUT,
            nproc=1,
            standalone=False,
            health=("--health-on-hang", "restart"),
            HANG_RANK="1",
            HANG_STEP="8",
            STEPS="20",
        )  # fmt: skip
        for _ in range(2)
    ]
    for node in nodes:
        assert node.port, node.first_line
        node.probe_until_exit()
    results = [node.wait(timeout=300) for node in nodes]
    assert [code for code, _, _ in results] == [0, 0], [err[-4000:] for _, _, err in results]
    out = "".join(out for _, out, _ in results)
    # Rank 1's node restarted it (attempt 1); rank 0's followed by re-rendezvous.
    assert "DONE rank=1 attempt=1" in out and "DONE rank=0" in out, out
    assert out.count("DONE") == 2
    # The culprit's node ends its group, at once; the waiting node does not act first.
    culprit = next(n for n, (_, out, _) in zip(nodes, results, strict=True) if "rank=1" in out)
    other = next(n for n in nodes if n is not culprit)
    ended = [t for t, line in culprit.err_lines if "Ending the hung worker group" in line]
    assert len(ended) == 1, culprit.stderr()[-4000:]
    assert "local rank 0 stalled outside a collective" in culprit.stderr()
    also = [t for t, line in other.err_lines if "Ending the hung worker group" in line]
    assert all(t > ended[0] for t in also), (ended, also)
    assert max(o.detail.get("restarts", 0) for o in other.observations) >= 1
