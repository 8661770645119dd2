"""The verdict on the loop people run: DDP, a DataLoader, evaluation, checkpoints, startup.

Each test launches `elastic-healthcheck torchrun` (2 real gloo workers) on
tests/torch/scripts/ddp_loop.py, a script written as a user writes it: a plain
init_process_group("gloo"), a model in DistributedDataParallel (or fully_shard), no import
of this package. /healthz is probed every 50 ms; what an operator sees is checked three
ways: the status code, the JSON body (states, phases, blame, summary) and the agent's log.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from .launch import Launch, Observation, dead, running

pytestmark = pytest.mark.torch

TIMEOUT = 2.0
SLACK = 1.5  # allowed past a deadline: the probe period, the monitor tick, load


def _hang(where: str, **env: Any) -> Launch:
    launch = Launch(
        script="ddp_loop.py",
        timeout=TIMEOUT,
        HANG_RANK="1",
        HANG_STEP="5",
        HANG_WHERE=where,
        STEPS="1000000",
        **env,
    )
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        first_dead = launch.wait_for(dead, timeout=90)
        launch.wait_for(lambda o: o.at > first_dead.at + 1.0, timeout=10)
        launch.wait_for(lambda o: "Its Python stacks" in launch.stderr(), timeout=10)
    finally:
        launch.stop()
        launch.wait()
    return launch


# Where rank 0 waits for rank 1, by where rank 1 hangs.
WAITS_IN = {
    "forward": "ddp_all_reduce",
    "backward": "ddp_all_reduce",
    "loader": "broadcast_coalesced",  # DDP syncs the BatchNorm buffers in each forward
}
# What the hung rank's stack in the agent's log shows.
STACK_SHOWS = {
    "forward": "in stuck_forever",
    "backward": "in stuck_forever",
    "loader": "in _next_data",  # its main thread, waiting for the DataLoader's worker
}


@pytest.mark.parametrize(
    ("where", "trial"), [("forward", 1), ("forward", 2), ("backward", 1), ("loader", 1)]
)
def test_a_rank_hung_under_ddp_is_named_in_every_503_and_its_waiting_peer_never(where, trial):
    """Rank 1 hangs in its forward, in its backward's compute, or waiting for a DataLoader
    worker; rank 0 then really waits for it in DDP's gradient all-reduce, or (rank 1 never
    reached its forward) in the buffer broadcast of its next forward: both in C++."""
    launch = _hang(where)
    hung = launch.stdout_time("HANG")
    assert hung is not None, launch.stdout()
    first_dead = next(o for o in launch.observations if dead(o))
    assert first_dead.at <= hung + TIMEOUT + SLACK, first_dead.at - hung
    assert all(o.status == 200 for o in launch.observations if o.at < hung + TIMEOUT - 0.3)
    answers = [o for o in launch.before_stop() if dead(o)]
    assert answers
    for o in answers:
        assert o.detail["suspect_ranks"] == ["1"], o.detail
        ranks = o.detail["ranks"]
        assert ranks["0"]["in_collective"] == WAITS_IN[where], ranks["0"]
        assert ranks["1"]["in_collective"] is None
        assert o.detail["summary"].startswith("local rank 1 stalled outside a collective while")
        assert "another node" not in o.detail["summary"]
    log = launch.stderr()
    assert log.count("Local rank 1 (rank 1, pid") == 1, log[-4000:]
    assert STACK_SHOWS[where] in log  # its stack, in the agent's log


def test_a_rank_hung_under_fully_shard_is_named():
    """FSDP2 on CPU: rank 1 hangs before its forward; rank 0 waits in the all-gather."""
    launch = _hang("forward", FSDP="1")
    answers = [o for o in launch.before_stop() if dead(o)]
    assert answers
    for o in answers:
        assert o.detail["suspect_ranks"] == ["1"], o.detail
        assert o.detail["ranks"]["0"]["in_collective"] is not None


def _seen(observations: list[Observation], rank: str, key: str) -> set[object]:
    return {o.detail["ranks"][rank][key] for o in observations if running(o)}


def test_evaluation_and_checkpoints_longer_than_the_timeout_are_never_503(tmp_path):
    """Evaluation on every rank, on rank 0 alone while rank 1 waits in barrier(), with an
    all_reduce; torch.save on rank 0 and torch.distributed.checkpoint on both: each takes
    longer than the timeout, and --health-on-hang restart never acts."""
    phase = 2.5 * TIMEOUT
    launch = Launch(
        script="ddp_loop.py",
        timeout=TIMEOUT,
        health=("--health-on-hang", "restart"),
        STEPS="19",
        EVAL_EVERY="4",
        EVAL_SECONDS=str(phase),
        EVAL_WHO="cycle",
        SAVE_EVERY="5",
        SAVE_SECONDS=str(phase),
        SAVE_HOW="cycle",
        PARAMS_OUT=str(tmp_path / "params.pt"),
    )
    assert launch.port, launch.first_line
    launch.probe_until_exit()
    code, out, err = launch.wait(timeout=240)
    assert code == 0, err[-4000:]
    assert out.count("DONE") == 2 and out.count("EVAL") == 8 and out.count("SAVE") == 6
    answered = [o for o in launch.observations if o.status is not None]
    assert answered and all(o.status == 200 for o in answered), [
        (o.status, o.detail.get("summary")) for o in answered if o.status != 200
    ][:3]
    assert "Ending the hung worker group" not in err
    assert max(o.detail.get("hang_restarts", 0) for o in answered) == 0
    # The shapes really happened, longer than the timeout, and were seen for what they are.
    phases = _seen(launch.observations, "0", "phase")
    assert {"training", "evaluation", "checkpoint"} <= phases, phases
    states = _seen(launch.observations, "0", "state") | _seen(launch.observations, "1", "state")
    assert {"busy", "waiting"} <= states, states
    waiting_for_a_save = [
        o
        for o in launch.observations
        if running(o)
        and o.detail["ranks"]["0"]["phase"] == "checkpoint"
        and o.detail["ranks"]["1"]["in_collective"] == "barrier"
        and o.detail["ranks"]["1"]["age"] > TIMEOUT
    ]
    assert waiting_for_a_save, "rank 1 was never seen waiting past the timeout for a save"


def test_a_rank_stuck_inside_torch_save_is_reported_after_the_phase_deadline():
    phase_timeout = 6.0
    launch = Launch(
        script="ddp_loop.py",
        timeout=TIMEOUT,
        STUCK_SAVE_STEP="5",
        STEPS="1000000",
        ELASTIC_HEALTHCHECK_TORCHRUN_PHASE_TIMEOUT=str(phase_timeout),
    )
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        first_dead = launch.wait_for(dead, timeout=90)
        launch.wait_for(lambda o: o.at > first_dead.at + 1.0, timeout=10)
    finally:
        launch.stop()
        launch.wait()
    stuck = launch.stdout_time("HANG")
    assert stuck is not None, launch.stdout()
    # Busy, not stalled, until the phase deadline; then 503 naming rank 0 alone.
    before = [o for o in launch.observations if running(o) and o.at < stuck + phase_timeout - 0.5]
    assert before and all(o.status == 200 for o in before), [
        o.detail.get("summary") for o in before if o.status != 200
    ][:2]
    assert any(o.detail["ranks"]["0"]["state"] == "busy" for o in before)
    assert first_dead.at <= stuck + phase_timeout + SLACK, first_dead.at - stuck
    for o in (o for o in launch.before_stop() if dead(o)):
        assert o.detail["suspect_ranks"] == ["0"], o.detail
        assert o.detail["ranks"]["0"]["phase"] == "checkpoint"
        assert "past its 6 s deadline" in o.detail["summary"]


def test_at_the_startup_deadline_only_the_rank_that_never_started_is_named():
    """Rank 1 loads data forever before its first step; rank 0 waits for it inside DDP's
    first collective. At the startup deadline rank 1 is named, rank 0 never."""
    startup = 15.0
    launch = Launch(
        script="ddp_loop.py",
        timeout=TIMEOUT,
        health=("--health-startup-timeout", str(startup)),
        LOAD_RANK="1",
        LOAD_SECONDS="1000",
        STEPS="1000000",
    )
    try:
        assert launch.port, launch.first_line
        launch.probe_until_exit()
        inside = launch.wait_for(
            lambda o: running(o) and o.detail["ranks"]["0"]["in_collective"] is not None,
            timeout=startup + 30,
        )
        first_dead = launch.wait_for(dead, timeout=startup + 60)
        launch.wait_for(lambda o: o.at > first_dead.at + 1.0, timeout=10)
    finally:
        launch.stop()
        launch.wait()
    spawned = inside.at - inside.detail["ranks"]["1"]["age"]
    assert inside.at < spawned + startup, "rank 0 reached no collective before the deadline"
    assert first_dead.at <= spawned + startup + SLACK
    for o in (o for o in launch.before_stop() if dead(o)):
        assert o.detail["suspect_ranks"] == ["1"], o.detail
        assert o.detail["ranks"]["0"]["state"] == "starting"
        summary = o.detail["summary"]
        assert summary.startswith("local rank 1 made no progress within the startup timeout")
        assert "while local rank 0 waits in" in summary and "another node" not in summary


def _free_port() -> int:
    # torch's c10d rendezvous needs its port before it listens; the kernel picks a free one.
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_a_node_whose_rank_waits_for_a_checkpoint_on_another_node_stays_alive():
    """Two nodes (two agents on loopback, one rank each, c10d rendezvous): rank 0 writes
    checkpoints for longer than the timeout while rank 1, on the other node, waits for it
    in barrier(). Neither node answers 503: rank 1's waits for rank 0's phase."""
    endpoint = f"127.0.0.1:{_free_port()}"
    phase = 2.5 * TIMEOUT
    nodes = [
        Launch(
            "--nnodes",
            "2",
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            endpoint,
            "--rdzv-id",
            "two-nodes",
            script="ddp_loop.py",
            timeout=TIMEOUT,
            nproc=1,
            standalone=False,
            STEPS="12",
            SAVE_EVERY="4",
            SAVE_SECONDS=str(phase),
        )  # fmt: skip
        for _ in range(2)
    ]
    for node in nodes:
        assert node.port, node.first_line
        node.probe_until_exit()
    results = [node.wait(timeout=240) for node in nodes]
    assert all(code == 0 for code, _, _ in results), [err[-3000:] for _, _, err in results]
    for node in nodes:
        answered = [o for o in node.observations if o.status is not None]
        assert answered and all(o.status == 200 for o in answered), [
            (o.status, o.detail.get("summary")) for o in answered if o.status != 200
        ][:3]
    waited = [
        o
        for node in nodes
        for o in node.observations
        if running(o)
        and o.detail["ranks"]["0"]["rank"] == 1
        and o.detail["ranks"]["0"]["state"] == "waiting"
    ]
    assert waited, "rank 1 was never seen waiting past the timeout"
    assert any("while rank 0 on node" in o.detail["summary"] for o in waited), waited[-1].detail
