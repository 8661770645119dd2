"""The job-wide view through a real torch store: a node whose rank is busy in a phase tells
the others, whose ranks waiting in a collective then wait instead of stalling."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from elastic_healthcheck._torchrun.agentstate import AgentState
from elastic_healthcheck._torchrun.jobview import JobView
from elastic_healthcheck._torchrun.verdict import (
    AgentPhase,
    GroupVerdict,
    Peers,
    RankState,
    RankVerdict,
)
from elastic_healthcheck.status import Verdict

pytestmark = pytest.mark.torch


def _verdict(
    state: RankState,
    phase: str = "training",
    inside: float | None = None,
    age: float = 3.0,
    rank_number: int = 0,
):
    where = "barrier" if inside else None
    rank = RankVerdict(state, age, rank_number, 1, 10, 20, where, inside, phase, 3.0)
    return GroupVerdict(Verdict.ALIVE, 2.0, 0.0, 0.0, AgentPhase.RUNNING, ranks={"0": rank})


def _node(store, tmp_path, name):
    state = AgentState(str(tmp_path / name), 2.0, 60.0)
    view = JobView(state)
    view.new_round(dist.PrefixStore("torch.rendezvous.job.1", store))
    return state, view


def test_a_busy_node_is_seen_by_a_node_whose_ranks_wait(tmp_path):
    store = dist.HashStore()
    saving_state, saving = _node(store, tmp_path, "a")
    waiting_state, waiting = _node(store, tmp_path, "b")
    saving.tick(_verdict(RankState.BUSY, "checkpoint"), node_rank=0)
    waiting.tick(_verdict(RankState.STALLED, inside=1.5), node_rank=1)
    assert waiting_state.peers.busy == "rank 0 on node 0 is in checkpoint"
    assert saving_state.peers.busy is None  # it does not count itself
    # The save is over: the other node's ranks are judged on their own again.
    saving.tick(_verdict(RankState.PROGRESSING), node_rank=0)
    waiting._read_at = 0.0  # reads are at most once a second
    waiting.tick(_verdict(RankState.STALLED, inside=1.5), node_rank=1)
    assert waiting_state.peers.busy is None


def test_nothing_is_read_until_a_rank_has_waited_half_the_timeout(tmp_path):
    store = dist.HashStore()
    _, saving = _node(store, tmp_path, "a")
    waiting_state, waiting = _node(store, tmp_path, "b")
    saving.tick(_verdict(RankState.BUSY, "checkpoint"), node_rank=0)
    waiting.tick(_verdict(RankState.PROGRESSING, inside=0.5, age=0.5), node_rank=1)
    assert waiting_state.peers.busy is None


def test_a_store_that_fails_turns_the_view_off_with_one_warning(tmp_path, caplog):
    class Broken:
        def set(self, key, value):
            raise RuntimeError("store is gone")

        add = get = set

    state = AgentState(str(tmp_path / "a"), 2.0, 60.0)
    view = JobView(state)
    view.new_round(Broken())
    for _ in range(3):
        view.tick(_verdict(RankState.BUSY, "checkpoint"), node_rank=0)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "store is gone" in warnings[0]
    assert state.peers == Peers()


def test_a_rank_stalled_outside_is_blamed_when_another_node_waits_for_it(tmp_path):
    """One rank per node: rank 1 hangs in compute, rank 0 waits in DDP's all-reduce."""
    store = dist.HashStore()
    hung_state, hung = _node(store, tmp_path, "a")
    waiting_state, waiting = _node(store, tmp_path, "b")
    waiting.tick(_verdict(RankState.PROGRESSING, inside=1.5, age=1.5), node_rank=0)
    hung.tick(_verdict(RankState.STALLED, age=2.5, rank_number=1), node_rank=1)
    assert hung_state.peers == Peers(waiting=1)
    waiting._read_at = 0.0
    waiting.tick(_verdict(RankState.STALLED, inside=2.4, age=2.4), node_rank=0)
    assert waiting_state.peers == Peers(
        stalled_outside="rank 1 on node 1, stalled outside a collective"
    )
