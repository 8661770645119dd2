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

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from .._http.prometheus import MetricFamily
from ..status import HealthStatus, Verdict, evaluate
from .blame import BLAME_RULES as BLAME_RULES
from .blame import Blame as Blame
from .blame import Stall, blame, startup_blame
from .metrics import families
from .ranks import DEFAULT_PHASE_TIMEOUT as DEFAULT_PHASE_TIMEOUT
from .ranks import RANK_STATES as RANK_STATES
from .ranks import TRAINING as TRAINING
from .ranks import AgentPhase as AgentPhase
from .ranks import Peers as Peers
from .ranks import RankState as RankState
from .ranks import activity as activity
from .ranks import agreeing, excused, names, places
from .ranks import rank_state as rank_state
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
    "TRAINING",
]


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


# --- who is blamed -----------------------------------------------------------------------


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
                excused(r, seen.ranks, states)
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
            f"starting: {names(starting)} made no progress yet "
            f"({waited:.1f} s of the {seen.startup_timeout:g} s startup timeout)",
        )
    dead = HealthStatus(Verdict.DEAD, seen.timeout, start, round(waited, 3))
    suspects, why = startup_blame(starting, group.active, seen.multi_node)
    return _verdict(
        group,
        dead,
        suspects,
        f"{names(suspects or starting)} made no progress within the startup timeout "
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
        f"{names(ranks)} progressing" + ("" if phase == TRAINING else f" in {phase}")
        for phase, ranks in by_phase.items()
    )


def _busy_part(group: Group, busy: list[str]) -> str:
    """``local rank 0 in checkpoint (8.1 s; its deadline 1800 s)``, for each busy rank."""
    seen, parts = group.seen, []
    for r in busy:
        snapshot = seen.ranks[r]
        deadline = snapshot.phase_deadline or seen.phase_timeout
        parts.append(
            f"{names([r])} in {snapshot.phase} "
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
        return _verdict(group, status, (), f"{names(progressing)} progressing")
    parts = [_progressing_part(group, progressing)] if progressing else []
    if busy:
        parts.append(_busy_part(group, busy))
    if waiting:
        live = progressing + busy
        verb = agreeing(waiting, "waits", "wait")
        where = places(seen.ranks, waiting)
        # Released by a live local peer or, if none, by another node's rank in a phase.
        by = names(live) if live else seen.peers.busy
        parts.append(f"{names(waiting)} {verb} {where} for {by}" if live else
                     f"{names(waiting)} {verb} {where} while {by}")  # fmt: skip
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
                f"{names([r])} in {snapshot.phase} for {group.ranks[r].phase_age or 0.0:.0f} s, "
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


def _outside_a_group(
    seen: Observation, status: HealthStatus, summary: str | None = None
) -> GroupVerdict:
    """A verdict about no worker group: the phase and the counters, no ranks."""
    return GroupVerdict(
        status.verdict,
        seen.timeout,
        status.last_progress,
        status.age,
        seen.phase,
        seen.counters,
        reason=status.reason,
        summary=summary,
    )


def _not_running(seen: Observation) -> GroupVerdict:
    return _outside_a_group(seen, evaluate(seen.now, seen.timeout, seen.now))


def _agent_not_alive(seen: Observation) -> GroupVerdict | None:
    if seen.agent_last is None:
        return None
    agent = evaluate(seen.agent_last, seen.timeout + AGENT_CALLBACK_ROUNDING, seen.now)
    if agent.alive:
        return None
    return _outside_a_group(seen, agent, "the agent's own progress callback says it is not alive")


def _no_ranks(seen: Observation) -> GroupVerdict:
    last = seen.now if seen.agent_last is None else seen.agent_last
    status = evaluate(last, seen.timeout, seen.now)
    return _outside_a_group(
        seen, status, "no local rank is known: the agent's own callback decides"
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
