"""The torchrun verdict: the agent's phase and its local ranks' records in, one HealthStatus out.

Pure: no clock, no files, no signals. The integration reads the records and passes the
time in, so every case of the table below is tested with plain numbers.

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

Who is blamed when ranks stall (the first rule that names someone):

1. a stalled rank outside a collective while a peer waits inside one (stalled already or
   not yet): the peer waits for it;
2. a stalled rank that entered fewer collectives than its stalled peers: they wait in a
   collective it has not reached (this also covers NCCL, whose collectives return at
   once and block later);
3. a stalled rank whose last progress is more than ``timeout`` older than a peer's;
4. a stalled rank outside any collective once its local peers have exited.

Otherwise every local rank waits alike (typically in the same collective): the culprit is
likely on another node, and no local rank is blamed.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..status import HealthStatus, Verdict, evaluate
from .record import RankSnapshot

__all__ = ["RANK_STATES", "activity", "group_status", "rank_state"]

RANK_STATES = ("starting", "progressing", "waiting", "stalled", "exited")

# torch's agent callback returns whole epoch seconds (int(time.time())): allow it one
# second of rounding, so that a sub-second timeout follows the ranks, not the clock's tick.
AGENT_CALLBACK_ROUNDING = 1.0


def activity(snapshot: RankSnapshot) -> float:
    """A rank's last sign of life: its last progress, or leaving a collective after it.

    Leaving a collective is not progress (a rank released from a ``barrier`` during its
    startup has not started training), but a rank that has made progress and has just
    been released from a collective is not hung: between the release and its next
    optimizer step it must not be taken for a stalled rank.
    """
    return max(snapshot.progress_time, snapshot.left_time)


def rank_state(snapshot: RankSnapshot, exited: bool, timeout: float, now: float) -> str:
    """One local rank's own state: starting, progressing, stalled or exited.

    (``waiting`` needs its peers: see :func:`_excused`.)
    """
    if exited or snapshot.exited:
        return "exited"
    if not snapshot.progress_time:
        return "starting"
    return "progressing" if now - activity(snapshot) <= timeout else "stalled"


def _excused(rank: str, ranks: Mapping[str, RankSnapshot], states: Mapping[str, str]) -> bool:
    """A stalled rank waits, not hangs: it is inside its n-th collective and a local peer
    that is starting or progressing has not passed it: it has entered fewer than n (it is
    still on its way, like the slow rank of a skewed start that has just taken its first
    step), or is inside the n-th too (the collective is about to release them both)."""
    snapshot = ranks[rank]
    if not snapshot.in_collective:
        return False
    return any(
        states[peer] in ("starting", "progressing")
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


def _describe(snapshot: RankSnapshot, state: str, now: float) -> dict[str, object]:
    inside = snapshot.collective if snapshot.in_collective else None
    return {
        "state": state,
        "age": _age(snapshot, now),
        "rank": snapshot.global_rank,
        "pid": snapshot.pid or None,
        "steps": snapshot.steps,
        "collectives": snapshot.entered,
        "in_collective": inside,
        "collective_age": round(max(0.0, now - snapshot.collective_since), 3)
        if inside is not None
        else None,
    }


def _names(ranks: list[str]) -> str:
    label = "local rank" if len(ranks) == 1 else "local ranks"
    return f"{label} {', '.join(ranks)}"


def _blame(
    stalled: list[str], active: Mapping[str, RankSnapshot], timeout: float, finished: int
) -> tuple[list[str], str]:
    """The stalled ranks to blame and why, or ``([], why not)``.

    ``finished`` counts the local peers that have exited.
    """
    snap = active
    inside = [r for r in stalled if snap[r].in_collective]
    outside = [r for r in stalled if not snap[r].in_collective]
    # Peers waiting in a collective, stalled or not yet (the one that stalled first is
    # often the culprit, and its peers reach the timeout a moment later).
    waiting = [r for r in active if r not in outside and snap[r].in_collective]
    if waiting and outside:
        waits = sorted({snap[r].collective or "a collective" for r in waiting})
        return outside, (
            f"{_names(outside)} stalled outside a collective while "
            f"{_names(waiting)} wait{'s' if len(waiting) == 1 else ''} in {', '.join(waits)}"
        )
    counts = {r: snap[r].entered for r in stalled}
    if len(stalled) > 1 and min(counts.values()) < max(counts.values()):
        fewest = min(counts.values())
        behind = [r for r in stalled if counts[r] == fewest]
        return behind, (
            f"{_names(behind)} entered {fewest} collectives, its stalled peers up to "
            f"{max(counts.values())}: they wait in a collective it has not reached"
        )
    newest = max(activity(s) for s in active.values())
    lagging = [r for r in stalled if newest - activity(snap[r]) > timeout]
    if lagging and len(lagging) < len(active):
        verb = "lags its" if len(lagging) == 1 else "lag their"
        return lagging, f"{_names(lagging)} {verb} peers' progress by more than {timeout:g} s"
    if finished and len(active) == len(stalled) and outside and not inside:
        # Its local peers are done; it waits in no collective, so for nobody: it is stuck
        # in its own code (compute, I/O) at the end of the job.
        return outside, f"{_names(outside)} stalled outside a collective after its peers exited"
    where = sorted({snap[r].collective or "" for r in stalled})
    if where == [""]:
        place = "outside any collective"
    elif "" in where:
        place = "in and out of collectives"
    else:
        place = f"in {', '.join(where)}"
    if len(stalled) == 1:
        return [], (
            f"{_names(stalled)} stalled ({place}); no stalled local peer to tell it from: "
            "it may wait for another node"
        )
    return [], (
        f"{_names(stalled)} stalled together ({place}): no local rank can be told from "
        "the others; the cause is likely on another node"
    )


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
    """The agent's verdict.

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
        extra: More detail to merge into the body (restart counters, run id).

    Returns:
        The verdict, with ``detail`` holding ``phase``, ``ranks``, ``suspect_ranks``
        and a one-line ``summary`` while running.
    """
    detail: dict[str, object] = {"phase": phase}
    if extra:
        detail.update(extra)
    if phase != "running":
        return evaluate(now, timeout, now).with_detail(detail)
    if agent_last is not None:
        agent = evaluate(agent_last, timeout + AGENT_CALLBACK_ROUNDING, now)
        if not agent.alive:
            detail["summary"] = "the agent's own progress callback says it is not alive"
            return HealthStatus(
                agent.verdict, timeout, agent.last_progress, agent.age, agent.reason, detail
            )
    if not ranks:
        detail["summary"] = "no local rank is known: the agent's own callback decides"
        return evaluate(now if agent_last is None else agent_last, timeout, now).with_detail(detail)
    order = sorted(ranks, key=int)
    states = {r: rank_state(ranks[r], r in exited, timeout, now) for r in order}
    states.update(
        {r: "waiting" for r in order if states[r] == "stalled" and _excused(r, ranks, states)}
    )
    detail["ranks"] = {r: _describe(ranks[r], states[r], now) for r in order}
    progress = {
        r: activity(s) if s.progress_time else 0.0
        for r, s in ranks.items()
        if states[r] != "exited"
    }
    if progress:
        detail["slowest_rank"] = min(progress, key=lambda r: (progress[r], int(r)))
    starting = [r for r in order if states[r] == "starting"]
    start = group_start if group_start is not None else now
    if starting:
        waited = now - start
        if waited <= startup_timeout:
            detail["suspect_ranks"] = []
            detail["summary"] = (
                f"starting: {_names(starting)} made no progress yet "
                f"({waited:.1f} s of the {startup_timeout:g} s startup timeout)"
            )
            return HealthStatus(Verdict.ALIVE, timeout, now, 0.0, None, detail)
        detail["suspect_ranks"] = starting
        detail["summary"] = (
            f"{_names(starting)} made no progress within the startup timeout "
            f"of {startup_timeout:g} s"
        )
        return HealthStatus(Verdict.DEAD, timeout, start, round(waited, 3), None, detail)
    active = {r: ranks[r] for r in order if states[r] != "exited"}
    if not active:
        detail["suspect_ranks"] = []
        detail["summary"] = "every local rank has exited"
        return evaluate(now, timeout, now).with_detail(detail)
    oldest = min(activity(s) for s in active.values())
    status = evaluate(oldest, timeout, now)
    stalled = [r for r in active if states[r] == "stalled"]
    if not stalled:
        detail["suspect_ranks"] = []
        waiting = [r for r in active if states[r] == "waiting"]
        moving = [r for r in active if states[r] == "progressing"]
        if waiting:
            detail["summary"] = (
                f"{_names(moving)} progressing; {_names(waiting)} "
                f"wait{'s' if len(waiting) == 1 else ''} in a collective "
                f"{'it has' if len(moving) == 1 else 'they have'} not reached yet"
            )
            # The group moves: its age is that of its most recent progress.
            newest = max(activity(active[r]) for r in moving)
            return evaluate(newest, timeout, now).with_detail(detail)
        detail["summary"] = f"{_names(list(active))} progressing"
        return status.with_detail(detail)
    suspects, why = _blame(stalled, active, timeout, len(order) - len(active))
    detail["suspect_ranks"] = suspects
    detail["summary"] = why
    if not suspects and len(stalled) > 1:
        detail["stalled_together"] = True
    return HealthStatus(Verdict.DEAD, timeout, status.last_progress, status.age, None, detail)
