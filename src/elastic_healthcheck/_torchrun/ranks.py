"""One local rank in the torchrun verdict: its state, what marks it alive, how to name it.

Pure: records and times in, states out. :mod:`.blame` and :mod:`.verdict` build on it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from .record import RankSnapshot

__all__ = [
    "DEFAULT_PHASE_TIMEOUT",
    "ON_ITS_WAY",
    "RANK_STATES",
    "TRAINING",
    "AgentPhase",
    "Peers",
    "RankState",
    "activity",
    "excused",
    "names",
    "places",
    "rank_state",
    "agreeing",
]


class AgentPhase(str, enum.Enum):
    """What the elastic agent is doing, in the order it does it."""

    STARTING = "starting"
    RENDEZVOUS = "rendezvous"
    RUNNING = "running"
    RESTARTING = "restarting"
    EXIT_BARRIER = "exit_barrier"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


class RankState(str, enum.Enum):
    """A local rank's state in the verdict."""

    STARTING = "starting"  # no progress yet since its worker was spawned
    PROGRESSING = "progressing"  # a sign of life (a step, leaving a collective) within timeout
    BUSY = "busy"  # quiet for longer than the timeout inside a phase, within its deadline
    WAITING = "waiting"  # inside a collective that a live peer has not passed yet
    STALLED = "stalled"  # no sign of life for longer than the timeout (or the phase deadline)
    EXITED = "exited"  # its worker has ended

    def __str__(self) -> str:
        return self.value


RANK_STATES = tuple(state.value for state in RankState)


# How long a rank may stay in a phase (evaluation, a checkpoint, a named phase) without a
# sign of life, unless the phase sets its own deadline: torch's default timeout for its
# collectives, the longest its peers can wait for it in one (a barrier after a checkpoint
# rank 0 writes alone) before torch itself fails the job. It fits writing a large model's
# checkpoint (1 TB at 1 GB/s is 17 minutes).
DEFAULT_PHASE_TIMEOUT = 1800.0


TRAINING = "training"  # a rank's phase when it is in none


@dataclass(frozen=True)
class Peers:
    """What the other nodes' agents say of their ranks (the job-wide view); empty if unknown.


    Attributes:
        busy: What a rank on another node is busy with, if one is in a phase
            (``rank 0 on node 0 is in checkpoint``): local ranks waiting in a collective
            wait for it.
        waiting: Other nodes with a rank waiting inside a collective.
        stalled_outside: A rank on another node that stalled outside any collective
            (``rank 3 on node 1 stalled outside a collective``), if any.
    """

    busy: str | None = None
    waiting: int = 0
    stalled_outside: str | None = None


def activity(snapshot: RankSnapshot) -> float:
    """A rank's last sign of life: progress, or after it leaving a collective or a phase's.


    Leaving a collective is not progress (a rank released from a ``barrier`` during its
    startup has not started training), but a rank that has made progress and has just
    been released from a collective is not hung: between the release and its next
    optimizer step it must not be taken for a stalled rank. Entering a phase (a
    checkpoint) and an evaluation forward inside one are signs of life too.
    """
    return max(
        snapshot.progress_time,
        snapshot.left_time,
        snapshot.phase_since,
        snapshot.phase_activity,
    )


def rank_state(
    snapshot: RankSnapshot,
    exited: bool,
    timeout: float,
    now: float,
    phase_timeout: float = DEFAULT_PHASE_TIMEOUT,
) -> RankState:
    """One local rank's own state: starting, progressing, busy, stalled or exited.


    (``waiting`` needs its peers: see :func:`_excused`.)
    """
    if exited or snapshot.exited:
        return RankState.EXITED
    if not snapshot.progress_time:
        return RankState.STARTING
    quiet = now - activity(snapshot)
    if quiet <= timeout:
        return RankState.PROGRESSING
    if snapshot.phase is not None and quiet <= (snapshot.phase_deadline or phase_timeout):
        return RankState.BUSY
    return RankState.STALLED


# The states of a peer that may still come: one waiting for it in a collective waits.
ON_ITS_WAY = (RankState.STARTING, RankState.PROGRESSING, RankState.BUSY)


def excused(rank: str, ranks: Mapping[str, RankSnapshot], states: Mapping[str, RankState]) -> bool:
    """A stalled rank waits, not hangs: it is inside its n-th collective and a local peer
    that is starting, progressing or busy in a phase has not passed it: it has entered
    fewer than n (it is still on its way, like the slow rank of a skewed start that has
    just taken its first step, or rank 0 writing a checkpoint before the barrier), or is
    inside the n-th too (the collective is about to release them both)."""
    snapshot = ranks[rank]
    if not snapshot.in_collective:
        return False
    return any(
        states[peer] in ON_ITS_WAY
        and (
            ranks[peer].entered < snapshot.entered
            or (ranks[peer].entered == snapshot.entered and ranks[peer].in_collective)
        )
        for peer in ranks
        if peer != rank
    )


def names(ranks: list[str] | tuple[str, ...]) -> str:
    label = "local rank" if len(ranks) == 1 else "local ranks"
    return f"{label} {', '.join(ranks)}"


def agreeing(ranks: list[str] | tuple[str, ...], singular: str, plural: str) -> str:
    return singular if len(ranks) == 1 else plural


def places(ranks: Mapping[str, RankSnapshot], which: list[str] | tuple[str, ...]) -> str:
    """Where ``which`` ranks are: the collectives they are in, or outside any."""
    where = sorted({ranks[r].collective or "" for r in which})
    if where == [""]:
        return "outside any collective"
    if "" in where:
        return "in and out of collectives"
    return f"in {', '.join(where)}"
