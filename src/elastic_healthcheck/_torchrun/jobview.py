"""What the other nodes' ranks are busy with, shared through the agents' rendezvous store.

A node sees only its own ranks. When rank 0 on one node writes a checkpoint while the
ranks of every other node wait for it in a ``barrier``, those nodes would see their ranks
stalled together. So each agent says, in the store its rendezvous round shares with the
others, whether one of its ranks is in a phase (evaluation, a checkpoint, a named phase)
and not stalled: a counter of such nodes, and a description of the latest. An agent whose
ranks wait inside a collective reads them, and its waiting ranks wait, not stall, while
another node's rank is busy; a rank stuck in a phase past its deadline is stalled, and
its node stops counting, so the others see their ranks stalled again.

The store is the agent's own (``SimpleElasticAgent._store``, prefixed per rendezvous
round), used on the agent's monitor tick: at most one write when this node's state
changes, one read a second while a local rank has waited in a collective for half the
timeout. A store that fails is logged once; the view is then off and the verdict is the
node's own.
"""

from __future__ import annotations

import time

from ..logging import get_logger
from .agentstate import AgentState
from .verdict import TRAINING, GroupVerdict, RankState

__all__ = ["COUNT_KEY", "LATEST_KEY", "JobView"]

log = get_logger(__name__)

COUNT_KEY = "elastic-healthcheck/nodes-busy"  # nodes with a rank busy in a phase
LATEST_KEY = "elastic-healthcheck/latest-busy"  # what the latest of them said
READ_INTERVAL = 1.0  # seconds between reads, at most


class JobView:
    """This node's part of the job-wide view: publish when busy, read when waiting."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._store: object | None = None
        self._published = False
        self._read_at = 0.0
        self._broken = False

    def new_round(self, store: object | None) -> None:
        """A new worker group: its rendezvous round's store (keys start afresh there)."""
        self._store = store
        self._published = False
        self._state.peers_busy = None

    def tick(self, verdict: GroupVerdict, node_rank: object = None) -> None:
        """On the agent's monitor tick: publish this node's state, read the others'."""
        store = self._store
        if store is None or self._broken or not verdict.ranks:
            return
        try:
            self._publish(store, verdict, node_rank)
            self._read(store, verdict)
        except Exception as exc:  # the view is a help, never a reason to fail
            self._broken = True
            self._state.peers_busy = None
            log.warning(
                "Cannot share phases with the other nodes through the rendezvous store (%s: "
                "%s); each node judges its own ranks",
                type(exc).__name__,
                exc,
            )

    def _publish(self, store: object, verdict: GroupVerdict, node_rank: object) -> None:
        assert verdict.ranks is not None
        busy = [
            (local, rank)
            for local, rank in verdict.ranks.items()
            if rank.phase != TRAINING and rank.state in (RankState.PROGRESSING, RankState.BUSY)
        ]
        if bool(busy) == self._published:
            return
        if busy:
            local, rank = busy[0]
            where = f" on node {node_rank}" if node_rank is not None else ""
            what = f"rank {rank.rank if rank.rank is not None else local}{where} is in {rank.phase}"
            store.set(LATEST_KEY, what)  # type: ignore[attr-defined]
            store.add(COUNT_KEY, 1)  # type: ignore[attr-defined]
        else:
            store.add(COUNT_KEY, -1)  # type: ignore[attr-defined]
        self._published = bool(busy)

    def _read(self, store: object, verdict: GroupVerdict) -> None:
        assert verdict.ranks is not None
        now = time.monotonic()
        half = verdict.timeout / 2
        waiting = any(
            rank.in_collective is not None and (rank.collective_age or 0.0) >= half
            for rank in verdict.ranks.values()
        )
        if not waiting:
            self._state.peers_busy = None
            return
        if now - self._read_at < min(READ_INTERVAL, max(half, 0.05)):
            return
        self._read_at = now
        others = int(store.add(COUNT_KEY, 0)) - (1 if self._published else 0)  # type: ignore[attr-defined]
        if others <= 0:
            self._state.peers_busy = None
            return
        latest = store.get(LATEST_KEY)  # type: ignore[attr-defined]
        text = latest.decode("utf-8", "replace") if isinstance(latest, bytes) else str(latest)
        self._state.peers_busy = text if others == 1 else f"{text} (and {others - 1} more nodes)"
