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
running         every rank progressed within ``timeout``, or   alive
                waits in a collective a progressing peer has
                not reached yet
running         some rank stalled longer than ``timeout``      dead, blamed when it
                                                               can be told
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
    "RANK_STATES",
    "AgentPhase",
    "Blame",
    "GroupVerdict",
    "Observation",
    "RankState",
    "RankVerdict",
    "activity",
    "decide",
    "group_status",
    "rank_state",
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
    PROGRESSING = "progressing"  # progress (or, after it, leaving a collective) within timeout
    WAITING = "waiting"  # stalled inside a collective a live local peer has not passed
    STALLED = "stalled"  # no progress for longer than the timeout
    EXITED = "exited"  # its worker has ended

    def __str__(self) -> str:
        return self.value


RANK_STATES = tuple(state.value for state in RankState)

# torch's agent callback returns whole epoch seconds (int(time.time())): allow it one
# second of rounding, so that a sub-second timeout follows the ranks, not the clock's tick.
AGENT_CALLBACK_ROUNDING = 1.0


# --- the input ---------------------------------------------------------------------------


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
    """A rank's last sign of life: its last progress, or leaving a collective after it.

    Leaving a collective is not progress (a rank released from a ``barrier`` during its
    startup has not started training), but a rank that has made progress and has just
    been released from a collective is not hung: between the release and its next
    optimizer step it must not be taken for a stalled rank.
    """
    return max(snapshot.progress_time, snapshot.left_time)


def rank_state(snapshot: RankSnapshot, exited: bool, timeout: float, now: float) -> RankState:
    """One local rank's own state: starting, progressing, stalled or exited.

    (``waiting`` needs its peers: see :func:`_excused`.)
    """
    if exited or snapshot.exited:
        return RankState.EXITED
    if not snapshot.progress_time:
        return RankState.STARTING
    if now - activity(snapshot) <= timeout:
        return RankState.PROGRESSING
    return RankState.STALLED


def _excused(rank: str, ranks: Mapping[str, RankSnapshot], states: Mapping[str, RankState]) -> bool:
    """A stalled rank waits, not hangs: it is inside its n-th collective and a local peer
    that is starting or progressing has not passed it: it has entered fewer than n (it is
    still on its way, like the slow rank of a skewed start that has just taken its first
    step), or is inside the n-th too (the collective is about to release them both)."""
    snapshot = ranks[rank]
    if not snapshot.in_collective:
        return False
    return any(
        states[peer] in (RankState.STARTING, RankState.PROGRESSING)
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
    )


def _names(ranks: list[str] | tuple[str, ...]) -> str:
    label = "local rank" if len(ranks) == 1 else "local ranks"
    return f"{label} {', '.join(ranks)}"


# --- who is blamed -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stall:
    """What the blame rules look at: the ranks still running and those that stalled."""

    active: Mapping[str, RankSnapshot]  # local ranks that have not exited, in order
    stalled: tuple[str, ...]
    timeout: float
    finished: int  # local peers that have exited

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
    verb = "waits" if len(waiting) == 1 else "wait"
    return Blame(
        outside,
        f"{_names(outside)} stalled outside a collective while "
        f"{_names(waiting)} {verb} in {', '.join(waits)}",
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
    verb = "lags its" if len(lagging) == 1 else "lag their"
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


# The blame rules, in order: the first that names someone decides. docs/torchrun.md lists
# them in this order (tests/docs/test_torchrun_doc.py compares the two).
BLAME_RULES: tuple[tuple[str, Callable[[Stall], Blame | None]], ...] = (
    ("stalled outside a collective while a peer waits inside one", _outside_while_a_peer_waits),
    ("entered fewer collectives than its stalled peers", _entered_fewer),
    ("last progress more than the timeout older than a peer's", _lags_its_peers),
    ("outside any collective once its local peers have exited", _alone_after_its_peers_exited),
)


def _nobody_to_blame(s: Stall) -> Blame:
    where = sorted({s.active[r].collective or "" for r in s.stalled})
    if where == [""]:
        place = "outside any collective"
    elif "" in where:
        place = "in and out of collectives"
    else:
        place = f"in {', '.join(where)}"
    if len(s.stalled) == 1:
        return Blame(
            (),
            f"{_names(s.stalled)} stalled ({place}); no stalled local peer to tell it "
            "from: it may wait for another node",
        )
    return Blame(
        (),
        f"{_names(s.stalled)} stalled together ({place}): no local rank can be told from "
        "the others; the cause is likely on another node",
    )


def blame(s: Stall) -> Blame:
    """The first rule of :data:`BLAME_RULES` that names someone, else nobody, and why."""
    for _name, rule in BLAME_RULES:
        found = rule(s)
        if found is not None:
            return found
    return _nobody_to_blame(s)


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

    def with_state(self, states: set[RankState]) -> set[str]:
        return {r for r in self.order if self.states[r] in states}


def _group(seen: Observation) -> Group:
    order = tuple(sorted(seen.ranks, key=int))
    states = {r: rank_state(seen.ranks[r], r in seen.exited, seen.timeout, seen.now) for r in order}
    states.update(
        {
            r: RankState.WAITING
            for r in order
            if states[r] is RankState.STALLED and _excused(r, seen.ranks, states)
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
    starting = tuple(r for r in group.order if group.states[r] is RankState.STARTING)
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
    return _verdict(
        group,
        dead,
        starting,
        f"{_names(starting)} made no progress within the startup timeout "
        f"of {seen.startup_timeout:g} s",
    )


def _all_exited(group: Group) -> GroupVerdict | None:
    if group.active:
        return None
    seen = group.seen
    return _verdict(
        group, evaluate(seen.now, seen.timeout, seen.now), (), "every local rank has exited"
    )


def _moving(group: Group) -> GroupVerdict | None:
    active = group.active
    if group.with_state({RankState.STALLED}):
        return None
    seen = group.seen
    waiting = [r for r in active if group.states[r] is RankState.WAITING]
    if not waiting:
        oldest = min(activity(s) for s in active.values())
        status = evaluate(oldest, seen.timeout, seen.now)
        return _verdict(group, status, (), f"{_names(list(active))} progressing")
    moving = [r for r in active if group.states[r] is RankState.PROGRESSING]
    # The group moves: its age is that of its most recent progress.
    newest = max(activity(active[r]) for r in moving)
    verb = "waits" if len(waiting) == 1 else "wait"
    return _verdict(
        group,
        evaluate(newest, seen.timeout, seen.now),
        (),
        f"{_names(moving)} progressing; {_names(waiting)} {verb} in a collective "
        f"{'it has' if len(moving) == 1 else 'they have'} not reached yet",
    )


def _stalled(group: Group) -> GroupVerdict:
    seen = group.seen
    active = group.active
    stalled = tuple(r for r in active if group.states[r] is RankState.STALLED)
    found = blame(Stall(active, stalled, seen.timeout, len(group.order) - len(active)))
    oldest = evaluate(min(activity(s) for s in active.values()), seen.timeout, seen.now)
    dead = HealthStatus(Verdict.DEAD, seen.timeout, oldest.last_progress, oldest.age)
    together = not found.suspects and len(stalled) > 1
    return _verdict(group, dead, found.suspects, found.summary, stalled_together=together)


# The running cases, in order: the first that applies answers. The last always does.
CASES: tuple[tuple[str, Callable[[Group], GroupVerdict | None]], ...] = (
    ("some rank has made no progress yet: starting, or past the startup deadline", _starting),
    ("every local rank has exited", _all_exited),
    ("every rank progressing, or waiting for a progressing peer", _moving),
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
    )
    return decide(seen).to_status()
