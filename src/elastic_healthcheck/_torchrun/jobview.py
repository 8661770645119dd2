"""What the other nodes' ranks are doing, shared through the agents' rendezvous store.

A node sees only its own ranks. When rank 0 on one node writes a checkpoint while the ranks
of every other node wait for it in a ``barrier``, those nodes would see their ranks stalled
together; when one node's only rank hangs in compute while the others wait for it in DDP's
all-reduce, no node could tell who is to blame. So each agent says, in the store its
rendezvous round shares with every other agent, three things about its own ranks, each a
counter of nodes (and, for two of them, a line about the latest):

- **busy**: a rank is in a phase (evaluation, a checkpoint, a named phase), not stalled;
- **waiting**: a rank has waited inside a collective for at least half the timeout;
- **stalled outside**: a rank stalled outside any collective, in no phase.

An agent whose ranks have been quiet for half the timeout reads them: its ranks waiting in
a collective wait while another node's rank is busy; its rank stalled outside a collective
is to blame while other nodes' ranks wait in one; its waiting ranks say whom they wait for.

The store is the agent's own (``SimpleElasticAgent._store``, prefixed per rendezvous
round), used on the agent's monitor tick: a write only when one of this node's three
answers changes, one read a second at most while a local rank is quiet. A store that fails
is logged once; the view is then off and each node judges its own ranks.
"""

from __future__ import annotations

import time

from ..logging import get_logger
from .agentstate import AgentState
from .ranks import TRAINING, Peers, RankState
from .verdict import GroupVerdict, RankVerdict

__all__ = ["KEYS", "JobView"]

log = get_logger("elastic_healthcheck.torchelastic")  # the public name

_PREFIX = "elastic-healthcheck/"
# Each answer: its counter of nodes, and the key of the line about the latest node (or None).
KEYS = {
    "busy": (_PREFIX + "busy", _PREFIX + "busy-latest"),
    "waiting": (_PREFIX + "waiting", None),
    "stalled_outside": (_PREFIX + "stalled-outside", _PREFIX + "stalled-outside-latest"),
}
READ_INTERVAL = 1.0  # seconds between reads, at most


def _who(rank: RankVerdict, local: str, node_rank: object) -> str:
    where = f" on node {node_rank}" if node_rank is not None else ""
    return f"rank {rank.rank if rank.rank is not None else local}{where}"


def answers(verdict: GroupVerdict, node_rank: object) -> dict[str, str | None]:
    """This node's three answers: a line for each that holds (``""`` if it has none)."""
    assert verdict.ranks is not None
    half = verdict.timeout / 2
    found: dict[str, str | None] = {}
    for local, rank in verdict.ranks.items():
        who = _who(rank, local, node_rank)
        if rank.phase != TRAINING and rank.state in (RankState.PROGRESSING, RankState.BUSY):
            found.setdefault("busy", f"{who} is in {rank.phase}")
        if rank.in_collective is not None and (rank.collective_age or 0.0) >= half:
            found.setdefault("waiting", "")
        if rank.state is RankState.STALLED and rank.in_collective is None:
            if rank.phase == TRAINING:
                found.setdefault("stalled_outside", f"{who}, stalled outside a collective")
    return found


class JobView:
    """This node's part of the job-wide view: say what its ranks do, read the others'."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._store: object | None = None
        self._published: set[str] = set()
        self._read_at = 0.0
        self._broken = False

    def new_round(self, store: object | None) -> None:
        """A new worker group: its rendezvous round's store (keys start afresh there)."""
        self._store = store
        self._published = set()
        self._state.peers = Peers()

    def tick(self, verdict: GroupVerdict, node_rank: object = None) -> None:
        """On the agent's monitor tick: publish this node's answers, read the others'."""
        store = self._store
        if store is None or self._broken or not verdict.ranks:
            return
        try:
            self._publish(store, answers(verdict, node_rank))
            self._read(store, verdict)
        except Exception as exc:  # the view is a help, never a reason to fail
            self._broken = True
            self._state.peers = Peers()
            log.warning(
                "Cannot share what the ranks do with the other nodes through the rendezvous "
                "store (%s: %s); each node judges its own ranks",
                type(exc).__name__,
                exc,
            )

    def _publish(self, store: object, found: dict[str, str | None]) -> None:
        for name, (count, latest) in KEYS.items():
            holds = name in found
            if holds == (name in self._published):
                continue
            if holds:
                if latest is not None:
                    store.set(latest, found[name] or "")  # type: ignore[attr-defined]
                store.add(count, 1)  # type: ignore[attr-defined]
                self._published.add(name)
            else:
                store.add(count, -1)  # type: ignore[attr-defined]
                self._published.discard(name)

    def _read(self, store: object, verdict: GroupVerdict) -> None:
        assert verdict.ranks is not None
        now = time.monotonic()
        half = verdict.timeout / 2
        quiet = any(rank.age >= half for rank in verdict.ranks.values())
        if not quiet:
            self._state.peers = Peers()
            return
        if now - self._read_at < min(READ_INTERVAL, max(half, 0.05)):
            return
        self._read_at = now
        others = {}
        lines = {}
        for name, (count, latest) in KEYS.items():
            value = int(store.add(count, 0))  # type: ignore[attr-defined]
            others[name] = value - (1 if name in self._published else 0)
            if others[name] > 0 and latest is not None:
                raw = store.get(latest)  # type: ignore[attr-defined]
                lines[name] = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        self._state.peers = Peers(
            busy=_line(lines.get("busy"), others["busy"]),
            waiting=max(0, others["waiting"]),
            stalled_outside=_line(lines.get("stalled_outside"), others["stalled_outside"]),
        )


def _line(latest: str | None, nodes: int) -> str | None:
    if nodes <= 0 or latest is None:
        return None
    return latest if nodes == 1 else f"{latest} (and {nodes - 1} more nodes)"
