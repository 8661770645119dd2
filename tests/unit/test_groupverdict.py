"""The torchrun verdict as a table: phase and rank records in, answer and blame out (no clock)."""

from __future__ import annotations

import pytest

from elastic_healthcheck._torchrun.record import FLAG_EXITED, RankSnapshot
from elastic_healthcheck._torchrun.verdict import Peers, group_status, rank_state
from elastic_healthcheck.status import Verdict

NOW = 1_700_000_100.0
START = NOW - 100.0  # the group was spawned 100 s ago
TIMEOUT = 5.0
STARTUP = 60.0


def rank(
    progress_ago: float | None = None,
    *,
    entered: int = 0,
    inside: str | None = None,
    inside_for: float = 0.0,
    exited: bool = False,
    spawned_ago: float = 100.0,
) -> RankSnapshot:
    """A record: last progress that long ago (None: never), collectives entered, inside one."""
    return RankSnapshot(
        spawn_time=NOW - spawned_ago,
        pid=4242,
        global_rank=None,
        progress_time=0.0 if progress_ago is None else NOW - progress_ago,
        steps=0 if progress_ago is None else 10,
        entered=entered,
        depth=1 if inside else 0,
        collective=inside,
        collective_since=NOW - inside_for if inside else 0.0,
        flags=FLAG_EXITED if exited else 0,
    )


def verdict(ranks, *, started_ago: float = 100.0, phase: str = "running", **kwargs):
    return group_status(
        phase=phase,
        now=NOW,
        timeout=TIMEOUT,
        startup_timeout=STARTUP,
        group_start=NOW - started_ago,
        ranks=ranks,
        **kwargs,
    )


# (case, ranks, started_ago, verdict, suspects)
CASES = [
    ("every rank progressing", {"0": rank(0.1), "1": rank(0.3)}, 100, Verdict.ALIVE, []),
    ("a rank never started, within the startup timeout", {"0": rank(0.1), "1": rank(None)}, 30,
     Verdict.ALIVE, []),
    ("skewed start: rank 0 waits in all_reduce for a loading rank 1", {
        "0": rank(20, entered=1, inside="all_reduce", inside_for=20), "1": rank(None)},
     30, Verdict.ALIVE, []),
    ("a rank never started, past the startup timeout", {"0": rank(0.1), "1": rank(None)}, 61,
     Verdict.DEAD, ["1"]),
    ("every rank never started, past the startup timeout", {"0": rank(None), "1": rank(None)},
     61, Verdict.DEAD, ["0", "1"]),
    ("stalled in compute while the peer waits in all_reduce", {
        "0": rank(8, entered=4, inside="all_reduce", inside_for=7.9),
        "1": rank(8.1, entered=3)}, 100, Verdict.DEAD, ["1"]),
    ("both inside the same collective: the culprit is elsewhere", {
        "0": rank(8, entered=4, inside="all_reduce", inside_for=7.9),
        "1": rank(8, entered=4, inside="all_reduce", inside_for=7.9)}, 100, Verdict.DEAD, []),
    ("NCCL-like: both outside, rank 1 entered fewer collectives", {
        "0": rank(8, entered=9), "1": rank(8.2, entered=7)}, 100, Verdict.DEAD, ["1"]),
    ("both outside with equal counts: cannot be told", {
        "0": rank(8, entered=7), "1": rank(8.2, entered=7)}, 100, Verdict.DEAD, []),
    ("a rank lags its progressing peer by more than the timeout", {
        "0": rank(0.2), "1": rank(6)}, 100, Verdict.DEAD, ["1"]),
    ("a rank stalled but not yet lagging a progressing peer by the timeout", {
        "0": rank(1.0), "1": rank(5.5)}, 100, Verdict.DEAD, []),
    ("an exited rank is not stalled", {"0": rank(0.2), "1": rank(50, exited=True)}, 100,
     Verdict.ALIVE, []),
    ("every rank exited", {"0": rank(50, exited=True), "1": rank(60, exited=True)}, 100,
     Verdict.ALIVE, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ranks", "started_ago", "expected", "suspects"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_verdict_table(ranks, started_ago, expected, suspects):
    status = verdict(ranks, started_ago=started_ago)
    assert status.verdict is expected, status.detail
    assert status.detail is not None
    assert status.detail["suspect_ranks"] == suspects
    assert set(status.detail["ranks"]) == set(ranks)  # every local rank is in the body
    assert isinstance(status.detail["summary"], str) and status.detail["summary"]


@pytest.mark.parametrize("phase", ["starting", "rendezvous", "restarting", "exit_barrier"])
def test_the_agent_at_work_is_alive_whatever_the_ranks(phase):
    status = verdict({"0": rank(None), "1": rank(500)}, phase=phase, started_ago=5000)
    assert status.verdict is Verdict.ALIVE
    assert status.detail == {"phase": phase}


TOGETHER = {
    "0": rank(8, entered=4, inside="all_reduce", inside_for=7.9),
    "1": rank(8, entered=4, inside="all_reduce", inside_for=7.9),
}


def test_stalled_together_is_said_and_nobody_blamed():
    status = verdict(TOGETHER, world_size=8)
    assert status.detail["stalled_together"] is True
    assert "stalled together (in all_reduce)" in status.detail["summary"]
    assert status.detail["summary"].endswith("the cause is likely on another node")


def test_on_a_single_node_another_node_is_never_said():
    """The job's ranks are all here: say what is known, not a node that does not exist."""
    status = verdict(TOGETHER, world_size=2)
    assert status.detail["suspect_ranks"] == []
    summary = status.detail["summary"]
    assert "another node" not in summary
    assert "the job has no other node" in summary and "does not complete" in summary


def test_when_the_world_size_is_not_known_no_node_is_guessed():
    summary = verdict(TOGETHER).detail["summary"]
    assert "node" not in summary


def test_rank_detail_shape():
    status = verdict({"0": rank(8, entered=4, inside="broadcast", inside_for=2.5), "1": rank(9)})
    assert status.detail["ranks"]["0"] == {
        "state": "stalled",
        "age": 8.0,
        "rank": None,
        "pid": 4242,
        "steps": 10,
        "collectives": 4,
        "in_collective": "broadcast",
        "collective_age": 2.5,
        "phase": "training",
        "phase_age": None,
    }
    assert status.detail["ranks"]["1"]["in_collective"] is None
    assert status.detail["ranks"]["1"]["collective_age"] is None


def test_a_starting_rank_has_its_age_since_spawn():
    status = verdict({"0": rank(None, spawned_ago=12.5)}, started_ago=12.5)
    assert status.detail["ranks"]["0"]["state"] == "starting"
    assert status.detail["ranks"]["0"]["age"] == 12.5


def test_age_and_last_progress_follow_the_slowest_active_rank():
    status = verdict({"0": rank(0.5), "1": rank(2.0)})
    assert status.alive
    assert status.age == pytest.approx(2.0)
    assert status.detail["slowest_rank"] == "1"


def test_past_the_startup_deadline_the_age_is_since_the_spawn():
    status = verdict({"0": rank(None)}, started_ago=61)
    assert status.verdict is Verdict.DEAD
    assert status.age == pytest.approx(61)
    assert "startup timeout of 60 s" in status.detail["summary"]


def test_a_process_known_gone_counts_as_exited():
    status = verdict({"0": rank(0.2), "1": rank(50)}, exited=frozenset({"1"}))
    assert status.alive
    assert status.detail["ranks"]["1"]["state"] == "exited"


@pytest.mark.parametrize(
    ("agent_ago", "expected"),
    [(0.0, Verdict.ALIVE), (TIMEOUT + 0.9, Verdict.ALIVE), (TIMEOUT + 1.5, Verdict.DEAD)],
)
def test_the_agents_whole_second_callback_gets_one_second_of_rounding(agent_ago, expected):
    status = verdict({"0": rank(0.1)}, agent_last=NOW - agent_ago)
    assert status.verdict is expected


def test_sub_second_timeout_follows_the_ranks_not_the_agents_clock_tick():
    """torch's callback returns int(time.time()): up to 1 s old even when all is well."""
    status = group_status(
        phase="running",
        now=NOW + 0.95,
        timeout=0.5,
        startup_timeout=STARTUP,
        group_start=START,
        ranks={"0": rank(-0.85), "1": rank(-0.9)},  # beat 0.1 and 0.05 s ago
        agent_last=NOW,  # the whole second
    )
    assert status.alive, status.detail


def test_extra_detail_is_merged():
    status = verdict({"0": rank(0.1)}, extra={"restarts": 2, "run_id": "job"})
    assert status.detail["restarts"] == 2 and status.detail["run_id"] == "job"


@pytest.mark.parametrize(
    ("ago", "exited", "expected"),
    [(None, False, "starting"), (1.0, False, "progressing"), (5.0, False, "progressing"),
     (5.01, False, "stalled"), (1.0, True, "exited")],
)  # fmt: skip
def test_rank_state(ago, exited, expected):
    assert rank_state(rank(ago), exited, TIMEOUT, NOW) == expected


def test_a_rank_waiting_for_a_peer_that_just_started_is_waiting_not_stalled():
    """Skewed start, the moment the slow rank takes its first step: its peer has waited
    in collective #1 for longer than the timeout, and is about to be released."""
    status = verdict(
        {"0": rank(7, entered=1, inside="all_reduce", inside_for=7), "1": rank(0.01, entered=0)}
    )
    assert status.alive, status.detail
    assert status.detail["ranks"]["0"]["state"] == "waiting"
    assert status.detail["ranks"]["1"]["state"] == "progressing"
    assert "local rank 0 waits in all_reduce for local rank 1" in status.detail["summary"]
    assert status.age == pytest.approx(0.01)


def test_waiting_during_startup_is_said():
    status = verdict(
        {"0": rank(7, entered=1, inside="all_reduce", inside_for=7), "1": rank(None)},
        started_ago=8,
    )
    assert status.alive
    assert status.detail["ranks"]["0"]["state"] == "waiting"


def test_a_rank_stuck_in_a_collective_its_progressing_peer_has_passed_is_stalled():
    status = verdict(
        {"0": rank(9, entered=3, inside="all_reduce", inside_for=9), "1": rank(0.1, entered=5)}
    )
    assert status.verdict is Verdict.DEAD
    assert status.detail["ranks"]["0"]["state"] == "stalled"
    assert status.detail["suspect_ranks"] == ["0"]  # lags its peer by more than the timeout


def test_a_rank_inside_the_collective_its_progressing_peer_has_just_entered_is_waiting():
    """The moment the slow rank reaches the collective its peer has waited in: both are
    inside the n-th collective, about to be released together."""
    status = verdict(
        {
            "0": rank(7, entered=1, inside="all_reduce", inside_for=7),
            "1": rank(0.01, entered=1, inside="all_reduce", inside_for=0.001),
        }
    )
    assert status.alive, status.detail
    assert status.detail["ranks"]["0"]["state"] == "waiting"


def test_a_rank_just_released_from_a_collective_is_not_stalled():
    """Between leaving a collective and its next optimizer step, a rank whose last step is
    older than the timeout is alive: leaving the collective is a sign of life."""
    released = rank(7, entered=2)
    released.left_time = NOW - 0.002
    status = verdict({"0": released, "1": rank(0.01, entered=2)})
    assert status.alive, status.detail
    assert status.detail["ranks"]["0"]["state"] == "progressing"
    assert status.detail["ranks"]["0"]["age"] == pytest.approx(0.002)


def test_leaving_a_collective_is_not_progress_for_a_starting_rank():
    """A rank released from a barrier during its startup has still not started training."""
    starting = rank(None, entered=1)
    starting.left_time = NOW - 0.5
    status = verdict({"0": starting}, started_ago=61)
    assert status.verdict is Verdict.DEAD
    assert status.detail["ranks"]["0"]["state"] == "starting"
    assert status.detail["suspect_ranks"] == ["0"]


def test_a_peer_that_left_the_collective_does_not_excuse_a_rank_still_inside_it():
    """Both entered collective n, the peer has left it and goes on: the rank still inside
    after the timeout is stuck, not waiting."""
    stuck = rank(9, entered=3, inside="all_reduce", inside_for=9)
    status = verdict({"0": stuck, "1": rank(0.1, entered=3)})
    assert status.verdict is Verdict.DEAD
    assert status.detail["ranks"]["0"]["state"] == "stalled"


def test_a_rank_stuck_outside_collectives_after_its_peers_finished_is_blamed():
    status = verdict({"0": rank(50, exited=True), "1": rank(7)})
    assert status.verdict is Verdict.DEAD
    assert status.detail["suspect_ranks"] == ["1"]
    assert "after its peers exited" in status.detail["summary"]


def test_a_rank_waiting_in_a_collective_after_its_peers_finished_is_not_blamed():
    """It waits for someone: another node's rank, most likely."""
    status = verdict({"0": rank(50, exited=True), "1": rank(7, entered=3, inside="barrier")})
    assert status.verdict is Verdict.DEAD
    assert status.detail["suspect_ranks"] == []
    assert "stalled_together" not in status.detail
    assert "no stalled local peer to tell it from" in status.detail["summary"]


def test_the_first_rank_to_stall_is_blamed_while_its_peer_waits_in_a_collective():
    """The moment the hung rank passes the timeout, its peer (which entered the collective
    a little later) is not stalled yet: it still waits for the hung rank."""
    status = verdict(
        {
            "0": rank(4.99, entered=31, inside="all_reduce", inside_for=4.98),
            "1": rank(5.01, entered=30),
        }
    )
    assert status.verdict is Verdict.DEAD
    assert status.detail["suspect_ranks"] == ["1"]
    assert status.detail["ranks"]["0"]["state"] == "progressing"


# -- phases: evaluation, checkpoints, named phases -----------------------------------------


def in_phase(progress_ago: float, phase: str, since_ago: float, *, deadline: float = 0.0,
             activity_ago: float | None = None, entered: int = 0,
             inside: str | None = None) -> RankSnapshot:  # fmt: skip
    """A rank that progressed ``progress_ago`` s ago and entered ``phase`` ``since_ago`` s ago."""
    snapshot = rank(progress_ago, entered=entered, inside=inside, inside_for=since_ago)
    snapshot.phase = phase
    snapshot.phase_since = NOW - since_ago
    snapshot.phase_deadline = deadline
    snapshot.phase_activity = NOW - (since_ago if activity_ago is None else activity_ago)
    return snapshot


def test_a_rank_quiet_inside_a_checkpoint_is_busy_within_its_deadline():
    """torch.save on rank 0 for 8 s (timeout 5) while rank 1 waits for it in barrier."""
    status = verdict(
        {
            "0": in_phase(9, "checkpoint", 8, entered=10),
            "1": rank(8.5, entered=11, inside="barrier", inside_for=8.4),
        },
        phase_timeout=1800,
    )
    assert status.alive, status.detail
    ranks = status.detail["ranks"]
    assert (ranks["0"]["state"], ranks["0"]["phase"], ranks["0"]["phase_age"]) == (
        "busy",
        "checkpoint",
        8.0,
    )
    assert ranks["1"]["state"] == "waiting"
    assert status.detail["suspect_ranks"] == []
    assert (
        "local rank 0 in checkpoint (8.0 s quiet; its deadline 1800 s)"
        in (status.detail["summary"])
    )


def test_a_rank_stuck_in_a_phase_past_its_deadline_is_stalled_and_blamed():
    status = verdict(
        {
            "0": in_phase(40, "checkpoint", 35, entered=10),
            "1": rank(34, entered=11, inside="barrier", inside_for=34),
        },
        phase_timeout=30,
    )
    assert status.verdict is Verdict.DEAD
    assert status.detail["ranks"]["0"]["state"] == "stalled"
    assert status.detail["suspect_ranks"] == ["0"]


def test_a_phase_with_its_own_deadline_is_held_to_it():
    ranks = {"0": in_phase(20, "upload", 15, deadline=10), "1": in_phase(20, "upload", 15)}
    status = verdict(ranks, phase_timeout=1800)
    assert status.detail["ranks"]["0"]["state"] == "stalled"
    assert status.detail["ranks"]["1"]["state"] == "busy"


def test_evaluation_forwards_are_signs_of_life():
    """Evaluation on rank 0 alone, a forward every 0.3 s, rank 1 waits in barrier."""
    status = verdict(
        {
            "0": in_phase(9, "evaluation", 9, activity_ago=0.3, entered=4),
            "1": rank(8.9, entered=5, inside="barrier", inside_for=8.9),
        }
    )
    assert status.alive, status.detail
    assert status.detail["ranks"]["0"]["state"] == "progressing"
    assert status.detail["ranks"]["0"]["age"] == 0.3
    assert status.detail["ranks"]["1"]["state"] == "waiting"


def test_a_rank_stalled_outside_a_collective_is_not_blamed_for_a_busy_peer_before_it_lags():
    status = verdict({"0": in_phase(9, "checkpoint", 8), "1": rank(8)})
    assert status.verdict is Verdict.DEAD
    assert status.detail["suspect_ranks"] == []  # rank 1 is not waiting for anyone: lag first
    assert "local rank 1 stalled" in status.detail["summary"]


def test_ranks_waiting_for_a_busy_rank_on_another_node_wait():
    status = verdict(TOGETHER, world_size=8, peers=Peers(busy="rank 0 is in checkpoint"))
    assert status.alive, status.detail
    assert {r["state"] for r in status.detail["ranks"].values()} == {"waiting"}
    assert status.detail["summary"] == (
        "local ranks 0, 1 wait in all_reduce while rank 0 is in checkpoint"
    )


# -- startup: only the rank that never started is blamed -----------------------------------


def test_at_the_startup_deadline_a_rank_waiting_in_a_collective_is_not_blamed():
    """Rank 1 loads data forever; rank 0 entered its first all_reduce and waits for it."""
    status = verdict(
        {"0": rank(None, entered=1, inside="all_reduce", inside_for=55), "1": rank(None)},
        started_ago=61,
    )
    assert status.verdict is Verdict.DEAD
    assert status.detail["suspect_ranks"] == ["1"]
    assert status.detail["summary"] == (
        "local rank 1 made no progress within the startup timeout of 60 s, outside any "
        "collective, while local rank 0 waits in all_reduce"
    )


@pytest.mark.parametrize(
    ("world_size", "said"),
    [
        (8, "waiting in init_process_group for a rank on another node"),
        (2, "each waiting in init_process_group and the job has no other node"),
    ],
)
def test_when_every_starting_rank_waits_nobody_local_is_blamed(world_size, said):
    status = verdict(
        {
            "0": rank(None, entered=1, inside="init_process_group", inside_for=60),
            "1": rank(None, entered=1, inside="init_process_group", inside_for=60),
        },
        started_ago=61,
        world_size=world_size,
    )
    assert status.verdict is Verdict.DEAD
    assert status.detail["suspect_ranks"] == []
    assert said in status.detail["summary"]


def test_a_lone_rank_stalled_outside_is_blamed_when_other_nodes_wait_in_a_collective():
    status = verdict({"0": rank(8, entered=40)}, world_size=2, peers=Peers(waiting=1))
    assert status.detail["suspect_ranks"] == ["0"]
    assert status.detail["summary"] == (
        "local rank 0 stalled outside a collective while ranks on 1 other node wait in one"
    )


def test_a_lone_rank_waiting_says_whom_it_waits_for():
    who = "rank 1 on node 1, stalled outside a collective"
    status = verdict(
        {"0": rank(8, entered=41, inside="ddp_all_reduce", inside_for=7.9)},
        world_size=2,
        peers=Peers(stalled_outside=who),
    )
    assert status.verdict is Verdict.DEAD
    assert status.detail["suspect_ranks"] == []
    assert status.detail["summary"] == f"local rank 0 stalled (in ddp_all_reduce): waits for {who}"
