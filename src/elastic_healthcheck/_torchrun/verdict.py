"""The torchrun verdict: the agent's phase and its local ranks' records in, one verdict out.

Pure: no clock, no files, no signals. The integration reads the records and passes the
time in (an :class:`Observation`), so every case is tested with plain numbers.

==============  =============================================  ======================
agent phase     local ranks                                    answer
==============  =============================================  ======================
not running     any                                            alive: the agent works
running         some rank has made no progress yet, before     alive: the group is
                the startup deadline                           starting
running         a rank made no progress by the deadline        dead, that rank blamed
running         every rank progressed within ``timeout``, is   alive
                busy in a phase (evaluation, checkpoint)
                within its deadline, or waits in a collective
                a live peer has not passed
running         some rank stalled longer than ``timeout``      dead, blamed when it
                (outside a phase, or past its deadline)        can be told
==============  =============================================  ======================

The answer is the first of :data:`CASES` that applies; who is blamed when ranks stall is
the first of :data:`BLAME_RULES` that names someone. The result is a :class:`GroupVerdict`:
a frozen value whose :meth:`~GroupVerdict.to_detail` is the JSON body's ``detail`` and
whose :meth:`~GroupVerdict.metric_families` are the ``/metrics`` families it adds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .._http.prometheus import MetricFamily
from ..status import HealthStatus, Verdict, evaluate
from .metrics import families
from .record import RankSnapshot

__all__ = [
    "BLAME_RULES",
    "CASES",
    "DEFAULT_PHASE_TIMEOUT",
    "RANK_STATES",
    "AgentPhase",
    "Blame",
    "GroupVerdict",
    "Observation",
    "Peers",
    "RankState",
    "RankVerdict",
    "activity",
    "decide",
    "group_status",
    "rank_state",
    "startup_blame",
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

# torch's agent callback returns whole epoch seconds (int(time.time())): allow it one
# second of rounding, so that a sub-second timeout follows the ranks, not the clock's tick.
AGENT_CALLBACK_ROUNDING = 1.0

# How long a rank may stay in a phase (evaluation, a checkpoint, a named phase) without a
# sign of life, unless the phase sets its own deadline: torch's default timeout for its
# collectives, the longest its peers can wait for it in one (a barrier after a checkpoint
# rank 0 writes alone) before torch itself fails the job. It fits writing a large model's
# checkpoint (1 TB at 1 GB/s is 17 minutes).
DEFAULT_PHASE_TIMEOUT = 1800.0
TRAINING = "training"  # a rank's phase when it is in none


# --- the input ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class Observation:
    """Everything the verdict is decided from, read at one instant.

    Attributes:
        phase: What the agent is doing.
        now: The current time, in epoch seconds.
        timeout: Seconds without progress after which a rank is stalled.
        startup_timeout: Seconds from the worker group's spawn within which ranks that
            have made no progress yet count as starting.
        group_start: When the current worker group was spawned (epoch seconds).
        ranks: Local rank (as a string) -> its record, for every local rank.
        exited: Local ranks whose process is known to be gone.
        agent_last: What torch's own alive callback returned, if it was asked.
        counters: The agent's counters for the body (restarts, hang_restarts, run_id,
            last_hang_restart), in that order.
        phase_timeout: Seconds a rank may stay inside a phase without a sign of life when
            the phase sets no deadline of its own.
        world_size: Ranks in the whole job (``None``: unknown); more than the local ranks
            means the job has other nodes.
        peers: What the other nodes' agents say (see :class:`Peers`).
    """

    phase: AgentPhase
    now: float
    timeout: float
    startup_timeout: float
    group_start: float | None = None
    ranks: Mapping[str, RankSnapshot] = field(default_factory=dict)
    exited: frozenset[str] = frozenset()
    agent_last: float | None = None
    counters: Mapping[str, object] = field(default_factory=dict)
    phase_timeout: float = DEFAULT_PHASE_TIMEOUT
    world_size: int | None = None
    peers: Peers = field(default_factory=Peers)

    @property
    def multi_node(self) -> bool | None:
        """Whether the job has ranks on other nodes (``None``: not known)."""
        if self.world_size is None:
            return None
        return self.world_size > len(self.ranks)


# --- the output --------------------------------------------------------------------------


@dataclass(frozen=True)
class RankVerdict:
    """One local rank as the verdict sees it (one entry of the body's ``ranks``)."""

    state: RankState
    age: float
    rank: int | None
    pid: int | None
    steps: int
    collectives: int
    in_collective: str | None
    collective_age: float | None
    phase: str = TRAINING
    phase_age: float | None = None

    def to_detail(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "age": self.age,
            "rank": self.rank,
            "pid": self.pid,
            "steps": self.steps,
            "collectives": self.collectives,
            "in_collective": self.in_collective,
            "collective_age": self.collective_age,
            "phase": self.phase,
            "phase_age": self.phase_age,
        }


@dataclass(frozen=True, eq=False)
class GroupVerdict(Mapping[str, object]):
    """The agent's verdict: a frozen value, and (as a mapping) the body's ``detail``.

    ``suspects``, ``summary`` and ``ranks`` are set while the agent runs a worker group;
    in the other phases the detail holds the phase and the counters only.
    """

    verdict: Verdict
    timeout: float
    last_progress: float | None
    age: float | None
    phase: AgentPhase
    counters: Mapping[str, object] = field(default_factory=dict)
    reason: str | None = None
    ranks: Mapping[str, RankVerdict] | None = None
    slowest_rank: str | None = None
    suspects: tuple[str, ...] | None = None
    summary: str | None = None
    stalled_together: bool = False

    def to_detail(self) -> dict[str, object]:
        """The JSON body's ``detail``, its keys in the documented order."""
        detail: dict[str, object] = {"phase": self.phase.value}
        detail.update(self.counters)
        if self.ranks is not None:
            detail["ranks"] = {local: r.to_detail() for local, r in self.ranks.items()}
        if self.slowest_rank is not None:
            detail["slowest_rank"] = self.slowest_rank
        if self.suspects is not None:
            detail["suspect_ranks"] = list(self.suspects)
        if self.summary is not None:
            detail["summary"] = self.summary
        if self.stalled_together:
            detail["stalled_together"] = True
        return detail

    def to_status(self) -> HealthStatus:
        """The :class:`HealthStatus` servers answer with; its detail is this verdict."""
        return HealthStatus(
            self.verdict, self.timeout, self.last_progress, self.age, self.reason, self
        )

    def metric_families(self) -> list[MetricFamily]:
        """The ``/metrics`` families this verdict adds (phase, counters, every rank)."""
        return list(families(self))

    # As a mapping, the verdict is its detail: what HealthStatus.to_dict() and JSON see.
    def _detail(self) -> dict[str, object]:
        cached: dict[str, object] | None = self.__dict__.get("_cached_detail")
        if cached is None:
            cached = self.to_detail()
            object.__setattr__(self, "_cached_detail", cached)
        return cached

    def __getitem__(self, key: str) -> object:
        return self._detail()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._detail())

    def __len__(self) -> int:
        return len(self._detail())


# --- rank states -------------------------------------------------------------------------


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
_ON_ITS_WAY = (RankState.STARTING, RankState.PROGRESSING, RankState.BUSY)


def _excused(rank: str, ranks: Mapping[str, RankSnapshot], states: Mapping[str, RankState]) -> bool:
    """A stalled rank waits, not hangs: it is inside its n-th collective and a local peer
    that is starting, progressing or busy in a phase has not passed it: it has entered
    fewer than n (it is still on its way, like the slow rank of a skewed start that has
    just taken its first step, or rank 0 writing a checkpoint before the barrier), or is
    inside the n-th too (the collective is about to release them both)."""
    snapshot = ranks[rank]
    if not snapshot.in_collective:
        return False
    return any(
        states[peer] in _ON_ITS_WAY
        and (
            ranks[peer].entered < snapshot.entered
            or (ranks[peer].entered == snapshot.entered and ranks[peer].in_collective)
        )
        for peer in ranks
        if peer != rank
    )


def _age(snapshot: RankSnapshot, now: float) -> float:
    """Seconds since its last sign of life, or since its spawn while it is starting."""
    since = activity(snapshot) if snapshot.progress_time else snapshot.spawn_time
    return round(max(0.0, now - since), 3)


def _describe(snapshot: RankSnapshot, state: RankState, now: float) -> RankVerdict:
    inside = snapshot.collective if snapshot.in_collective else None
    phase = snapshot.phase
    return RankVerdict(
        state=state,
        age=_age(snapshot, now),
        rank=snapshot.global_rank,
        pid=snapshot.pid or None,
        steps=snapshot.steps,
        collectives=snapshot.entered,
        in_collective=inside,
        collective_age=round(max(0.0, now - snapshot.collective_since), 3)
        if inside is not None
        else None,
        phase=phase or TRAINING,
        phase_age=round(max(0.0, now - snapshot.phase_since), 3) if phase else None,
    )


def _names(ranks: list[str] | tuple[str, ...]) -> str:
    label = "local rank" if len(ranks) == 1 else "local ranks"
    return f"{label} {', '.join(ranks)}"


def _verb(ranks: list[str] | tuple[str, ...], singular: str, plural: str) -> str:
    return singular if len(ranks) == 1 else plural


def _places(ranks: Mapping[str, RankSnapshot], which: list[str] | tuple[str, ...]) -> str:
    """Where ``which`` ranks are: the collectives they are in, or outside any."""
    where = sorted({ranks[r].collective or "" for r in which})
    if where == [""]:
        return "outside any collective"
    if "" in where:
        return "in and out of collectives"
    return f"in {', '.join(where)}"


# --- who is blamed -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """What the blame rules look at: the ranks still running and those that stalled."""

    active: Mapping[str, RankSnapshot]  # local ranks that have not exited, in order
    stalled: tuple[str, ...]
    timeout: float
    finished: int  # local peers that have exited
    multi_node: bool | None = None
    moving: tuple[str, ...] = ()  # local peers still progressing (or busy in a phase)
    peers: Peers = field(default_factory=Peers)

    def inside(self, rank: str) -> bool:
        return self.active[rank].in_collective


@dataclass(frozen=True)
class Blame:
    """The ranks a rule blames, and the sentence that says why."""

    suspects: tuple[str, ...]
    summary: str


def _outside_while_a_peer_waits(s: Stall) -> Blame | None:
    outside = tuple(r for r in s.stalled if not s.inside(r))
    # Peers waiting in a collective, stalled or not yet (the one that stalled first is
    # often the culprit, and its peers reach the timeout a moment later).
    waiting = [r for r in s.active if r not in outside and s.inside(r)]
    if not (waiting and outside):
        return None
    waits = sorted({s.active[r].collective or "a collective" for r in waiting})
    return Blame(
        outside,
        f"{_names(outside)} stalled outside a collective while "
        f"{_names(waiting)} {_verb(waiting, 'waits', 'wait')} in {', '.join(waits)}",
    )


def _entered_fewer(s: Stall) -> Blame | None:
    counts = {r: s.active[r].entered for r in s.stalled}
    if len(s.stalled) < 2 or min(counts.values()) == max(counts.values()):
        return None
    fewest = min(counts.values())
    behind = tuple(r for r in s.stalled if counts[r] == fewest)
    return Blame(
        behind,
        f"{_names(behind)} entered {fewest} collectives, its stalled peers up to "
        f"{max(counts.values())}: they wait in a collective it has not reached",
    )


def _lags_its_peers(s: Stall) -> Blame | None:
    newest = max(activity(snapshot) for snapshot in s.active.values())
    lagging = tuple(r for r in s.stalled if newest - activity(s.active[r]) > s.timeout)
    if not lagging or len(lagging) == len(s.active):
        return None
    verb = _verb(lagging, "lags its", "lag their")
    return Blame(lagging, f"{_names(lagging)} {verb} peers' progress by more than {s.timeout:g} s")


def _alone_after_its_peers_exited(s: Stall) -> Blame | None:
    # Its local peers are done; it waits in no collective, so for nobody: it is stuck in
    # its own code (compute, I/O) at the end of the job.
    if not s.finished or len(s.active) != len(s.stalled):
        return None
    if any(s.inside(r) for r in s.stalled):
        return None
    return Blame(
        s.stalled, f"{_names(s.stalled)} stalled outside a collective after its peers exited"
    )


def _outside_while_other_nodes_wait(s: Stall) -> Blame | None:
    # The job-wide view: no local peer waits, but ranks on other nodes wait in collectives.
    outside = tuple(r for r in s.stalled if not s.inside(r))
    if not outside or not s.peers.waiting:
        return None
    nodes = f"{s.peers.waiting} other node{'s' if s.peers.waiting > 1 else ''}"
    return Blame(
        outside,
        f"{_names(outside)} stalled outside a collective while ranks on {nodes} wait in one",
    )


# The blame rules, in order: the first that names someone decides. docs/torchrun.md lists
# them in this order (tests/docs/test_torchrun_doc.py compares the two).
BLAME_RULES: tuple[tuple[str, Callable[[Stall], Blame | None]], ...] = (
    ("stalled outside a collective while a peer waits inside one", _outside_while_a_peer_waits),
    ("entered fewer collectives than its stalled peers", _entered_fewer),
    ("last progress more than the timeout older than a peer's", _lags_its_peers),
    ("outside any collective once its local peers have exited", _alone_after_its_peers_exited),
    ("stalled outside a collective while ranks on other nodes wait in one",
     _outside_while_other_nodes_wait),
)  # fmt: skip


def _nobody_to_blame(s: Stall) -> Blame:
    """Why nobody is named: only what is known, "another node" only when there is one."""
    place = _places(s.active, s.stalled)
    stalled = _names(s.stalled)
    if s.peers.stalled_outside and all(s.inside(r) for r in s.stalled):
        verb = _verb(s.stalled, "waits", "wait")
        return Blame((), f"{stalled} stalled ({place}): {verb} for {s.peers.stalled_outside}")
    if len(s.stalled) == 1:
        if s.moving:
            return Blame(
                (),
                f"{stalled} stalled ({place}) while {_names(s.moving)} "
                f"{_verb(s.moving, 'goes', 'go')} on: it is blamed once it lags by more "
                f"than {s.timeout:g} s",
            )
        if s.multi_node:
            return Blame(
                (),
                f"{stalled} stalled ({place}); no stalled local peer to tell it from: "
                "it may wait for another node",
            )
        alone = "" if s.multi_node is None else "; the job has no other node"
        return Blame(
            (), f"{stalled} stalled ({place}); no stalled local peer to tell it from{alone}"
        )
    told = f"{stalled} stalled together ({place}): no local rank can be told from the others"
    if s.multi_node:
        return Blame((), f"{told}; the cause is likely on another node")
    if s.multi_node is None:
        return Blame((), told)
    if all(s.inside(r) for r in s.stalled):
        inside = "every rank is inside and the collective does not complete"
        return Blame((), f"{told}, and the job has no other node: {inside} (a network fault?)")
    return Blame((), f"{told}, and the job has no other node")


def blame(s: Stall) -> Blame:
    """The first rule of :data:`BLAME_RULES` that names someone, else nobody, and why."""
    for _name, rule in BLAME_RULES:
        found = rule(s)
        if found is not None:
            return found
    return _nobody_to_blame(s)


def startup_blame(
    starting: tuple[str, ...], ranks: Mapping[str, RankSnapshot], multi_node: bool | None
) -> tuple[tuple[str, ...], str]:
    """At the startup deadline: whom to blame among the ranks that never progressed, and why.

    A rank that waits inside a collective for a peer that never started is never blamed:
    the ranks outside any collective are, while some peer waits inside one; when every
    rank that never progressed waits inside one, the rank they wait for is elsewhere (or,
    on a single node, the collective does not complete).

    Returns:
        The suspects, and what follows "made no progress within the startup timeout".
    """
    outside = tuple(r for r in starting if not ranks[r].in_collective)
    waiting = [r for r in ranks if ranks[r].in_collective]
    if outside and waiting:
        verb = _verb(waiting, "waits", "wait")
        return outside, (
            f", outside any collective, while {_names(waiting)} {verb} {_places(ranks, waiting)}"
        )
    if outside:
        return outside, ""
    where = _places(ranks, starting)
    if multi_node:
        return (), f", waiting {where} for a rank on another node"
    alone = "" if multi_node is None else " and the job has no other node"
    return (), f", each waiting {where}{alone}"


# --- the cases ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """A running worker group at one instant: each rank's record and state."""

    seen: Observation
    order: tuple[str, ...]
    states: Mapping[str, RankState]
    ranks: Mapping[str, RankVerdict]

    @property
    def active(self) -> dict[str, RankSnapshot]:
        return {r: self.seen.ranks[r] for r in self.order if self.states[r] != RankState.EXITED}

    def in_state(self, *states: RankState) -> list[str]:
        return [r for r in self.order if self.states[r] in states]


def _group(seen: Observation) -> Group:
    order = tuple(sorted(seen.ranks, key=int))
    states = {
        r: rank_state(seen.ranks[r], r in seen.exited, seen.timeout, seen.now, seen.phase_timeout)
        for r in order
    }
    states.update(
        {
            r: RankState.WAITING
            for r in order
            if states[r] is RankState.STALLED
            and (
                _excused(r, seen.ranks, states)
                or (seen.peers.busy is not None and seen.ranks[r].in_collective)
            )
        }
    )
    ranks = {r: _describe(seen.ranks[r], states[r], seen.now) for r in order}
    return Group(seen, order, states, ranks)


def _slowest(group: Group) -> str | None:
    progress = {
        r: activity(group.seen.ranks[r]) if group.seen.ranks[r].progress_time else 0.0
        for r in group.order
        if group.states[r] is not RankState.EXITED
    }
    if not progress:
        return None
    return min(progress, key=lambda r: (progress[r], int(r)))


def _verdict(
    group: Group,
    status: HealthStatus,
    suspects: tuple[str, ...],
    summary: str,
    stalled_together: bool = False,
) -> GroupVerdict:
    seen = group.seen
    return GroupVerdict(
        verdict=status.verdict,
        timeout=status.timeout,
        last_progress=status.last_progress,
        age=status.age,
        reason=status.reason,
        phase=seen.phase,
        counters=seen.counters,
        ranks=group.ranks,
        slowest_rank=_slowest(group),
        suspects=suspects,
        summary=summary,
        stalled_together=stalled_together,
    )


def _starting(group: Group) -> GroupVerdict | None:
    seen = group.seen
    starting = tuple(group.in_state(RankState.STARTING))
    if not starting:
        return None
    start = seen.group_start if seen.group_start is not None else seen.now
    waited = seen.now - start
    if waited <= seen.startup_timeout:
        alive = HealthStatus(Verdict.ALIVE, seen.timeout, seen.now, 0.0)
        return _verdict(
            group,
            alive,
            (),
            f"starting: {_names(starting)} made no progress yet "
            f"({waited:.1f} s of the {seen.startup_timeout:g} s startup timeout)",
        )
    dead = HealthStatus(Verdict.DEAD, seen.timeout, start, round(waited, 3))
    suspects, why = startup_blame(starting, group.active, seen.multi_node)
    return _verdict(
        group,
        dead,
        suspects,
        f"{_names(suspects or starting)} made no progress within the startup timeout "
        f"of {seen.startup_timeout:g} s{why}",
    )


def _all_exited(group: Group) -> GroupVerdict | None:
    if group.active:
        return None
    seen = group.seen
    return _verdict(
        group, evaluate(seen.now, seen.timeout, seen.now), (), "every local rank has exited"
    )


def _progressing_part(group: Group, progressing: list[str]) -> str:
    """``local rank 0 progressing in evaluation``: the phase said when it is not training."""
    by_phase: dict[str, list[str]] = {}
    for r in progressing:
        by_phase.setdefault(group.ranks[r].phase, []).append(r)
    return "; ".join(
        f"{_names(ranks)} progressing" + ("" if phase == TRAINING else f" in {phase}")
        for phase, ranks in by_phase.items()
    )


def _busy_part(group: Group, busy: list[str]) -> str:
    """``local rank 0 in checkpoint (8.1 s; its deadline 1800 s)``, for each busy rank."""
    seen, parts = group.seen, []
    for r in busy:
        snapshot = seen.ranks[r]
        deadline = snapshot.phase_deadline or seen.phase_timeout
        parts.append(
            f"{_names([r])} in {snapshot.phase} "
            f"({group.ranks[r].age:.1f} s quiet; its deadline {deadline:g} s)"
        )
    return "; ".join(parts)


def _moving(group: Group) -> GroupVerdict | None:
    if group.in_state(RankState.STALLED):
        return None
    seen, active = group.seen, group.active
    progressing = group.in_state(RankState.PROGRESSING)
    busy = group.in_state(RankState.BUSY)
    waiting = group.in_state(RankState.WAITING)
    if not busy and not waiting:
        oldest = min(activity(s) for s in active.values())
        status = evaluate(oldest, seen.timeout, seen.now)
        return _verdict(group, status, (), f"{_names(progressing)} progressing")
    parts = [_progressing_part(group, progressing)] if progressing else []
    if busy:
        parts.append(_busy_part(group, busy))
    if waiting:
        live = progressing + busy
        verb = _verb(waiting, "waits", "wait")
        where = _places(seen.ranks, waiting)
        # Released by a live local peer or, if none, by another node's rank in a phase.
        by = _names(live) if live else seen.peers.busy
        parts.append(f"{_names(waiting)} {verb} {where} for {by}" if live else
                     f"{_names(waiting)} {verb} {where} while {by}")  # fmt: skip
    # The group moves, or is busy: its age is that of its most recent sign of life.
    newest = max(activity(active[r]) for r in (progressing + busy or waiting))
    age = round(max(0.0, seen.now - newest), 3)
    alive = HealthStatus(Verdict.ALIVE, seen.timeout, newest, age)
    return _verdict(group, alive, (), "; ".join(parts))


def _stalled(group: Group) -> GroupVerdict:
    seen = group.seen
    active = group.active
    stalled = tuple(group.in_state(RankState.STALLED))
    moving = tuple(group.in_state(RankState.PROGRESSING, RankState.BUSY))
    stall = Stall(
        active,
        stalled,
        seen.timeout,
        len(group.order) - len(active),
        seen.multi_node,
        moving,
        seen.peers,
    )
    found = blame(stall)
    summary = found.summary + _past_deadline(group, found.suspects)
    oldest = evaluate(min(activity(active[r]) for r in stalled), seen.timeout, seen.now)
    dead = HealthStatus(Verdict.DEAD, seen.timeout, oldest.last_progress, oldest.age)
    together = not found.suspects and len(stalled) > 1
    return _verdict(group, dead, found.suspects, summary, stalled_together=together)


def _past_deadline(group: Group, suspects: tuple[str, ...]) -> str:
    """`` (local rank 0 in checkpoint for 31 s, past its 30 s deadline)`` for suspects in one."""
    seen, notes = group.seen, []
    for r in suspects:
        snapshot = seen.ranks[r]
        if snapshot.phase is not None:
            deadline = snapshot.phase_deadline or seen.phase_timeout
            notes.append(
                f"{_names([r])} in {snapshot.phase} for {group.ranks[r].phase_age or 0.0:.0f} s, "
                f"past its {deadline:g} s deadline"
            )
    return f" ({'; '.join(notes)})" if notes else ""


# The running cases, in order: the first that applies answers. The last always does.
CASES: tuple[tuple[str, Callable[[Group], GroupVerdict | None]], ...] = (
    ("some rank has made no progress yet: starting, or past the startup deadline", _starting),
    ("every local rank has exited", _all_exited),
    ("every rank progressing, busy in a phase, or waiting for a live peer", _moving),
    ("some rank stalled: dead, blamed when it can be told", _stalled),
)


def _not_running(seen: Observation) -> GroupVerdict:
    alive = evaluate(seen.now, seen.timeout, seen.now)
    return GroupVerdict(
        alive.verdict, alive.timeout, alive.last_progress, alive.age, seen.phase, seen.counters
    )


def _agent_not_alive(seen: Observation) -> GroupVerdict | None:
    if seen.agent_last is None:
        return None
    agent = evaluate(seen.agent_last, seen.timeout + AGENT_CALLBACK_ROUNDING, seen.now)
    if agent.alive:
        return None
    return GroupVerdict(
        agent.verdict,
        seen.timeout,
        agent.last_progress,
        agent.age,
        seen.phase,
        seen.counters,
        reason=agent.reason,
        summary="the agent's own progress callback says it is not alive",
    )


def _no_ranks(seen: Observation) -> GroupVerdict:
    last = seen.now if seen.agent_last is None else seen.agent_last
    status = evaluate(last, seen.timeout, seen.now)
    return GroupVerdict(
        status.verdict,
        status.timeout,
        status.last_progress,
        status.age,
        seen.phase,
        seen.counters,
        reason=status.reason,
        summary="no local rank is known: the agent's own callback decides",
    )


def decide(seen: Observation) -> GroupVerdict:
    """The agent's verdict for one observation (see the module's table)."""
    if seen.phase is not AgentPhase.RUNNING:
        return _not_running(seen)
    agent = _agent_not_alive(seen)
    if agent is not None:
        return agent
    if not seen.ranks:
        return _no_ranks(seen)
    group = _group(seen)
    for _name, case in CASES:
        found = case(group)
        if found is not None:
            return found
    raise AssertionError("the last case always answers")  # pragma: no cover


def group_status(
    *,
    phase: str,
    now: float,
    timeout: float,
    startup_timeout: float,
    group_start: float | None,
    ranks: Mapping[str, RankSnapshot],
    exited: frozenset[str] = frozenset(),
    agent_last: float | None = None,
    extra: Mapping[str, object] | None = None,
    phase_timeout: float = DEFAULT_PHASE_TIMEOUT,
    world_size: int | None = None,
    peers: Peers | None = None,
) -> HealthStatus:
    """The agent's verdict as a :class:`HealthStatus` (see :func:`decide`).

    Args:
        phase: What the agent is doing (``running`` or another phase).
        now: The current time, in epoch seconds.
        timeout: Seconds without progress after which a rank is stalled.
        startup_timeout: Seconds from the worker group's spawn within which ranks that
            have made no progress yet count as starting.
        group_start: When the current worker group was spawned (epoch seconds).
        ranks: Local rank (as a string) -> its record, for every local rank.
        exited: Local ranks whose process is known to be gone.
        agent_last: What torch's own alive callback returned, if it was asked.
        extra: The agent's counters to merge into the body (restarts, run id).
        phase_timeout: Seconds a rank may stay quiet inside a phase with no deadline.
        world_size: Ranks in the whole job, if known.
        peers: What the other nodes' agents say, if the job-wide view knows.

    Returns:
        The verdict; its ``detail`` is the :class:`GroupVerdict`, holding ``phase``,
        ``ranks``, ``suspect_ranks`` and a one-line ``summary`` while running.
    """
    seen = Observation(
        phase=AgentPhase(phase),
        now=now,
        timeout=timeout,
        startup_timeout=startup_timeout,
        group_start=group_start,
        ranks=ranks,
        exited=exited,
        agent_last=agent_last,
        counters=dict(extra or {}),
        phase_timeout=phase_timeout,
        world_size=world_size,
        peers=peers or Peers(),
    )
    return decide(seen).to_status()
