"""Who is blamed when ranks stall, and why: an ordered table of small rules.

Pure. The first rule of :data:`BLAME_RULES` that names someone decides; docs/torchrun.md
lists them in this order (tests/docs/test_torchrun_doc.py compares the two). When none
does, :func:`blame` says only what is known ("another node" only when the job has one).
At the startup deadline, :func:`startup_blame` never blames a rank that waits inside a
collective for a peer that never started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .ranks import Peers, activity, agreeing, names, places
from .record import RankSnapshot

__all__ = ["BLAME_RULES", "Blame", "Stall", "blame", "startup_blame"]


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
        f"{names(outside)} stalled outside a collective while "
        f"{names(waiting)} {agreeing(waiting, 'waits', 'wait')} in {', '.join(waits)}",
    )


def _entered_fewer(s: Stall) -> Blame | None:
    counts = {r: s.active[r].entered for r in s.stalled}
    if len(s.stalled) < 2 or min(counts.values()) == max(counts.values()):
        return None
    fewest = min(counts.values())
    behind = tuple(r for r in s.stalled if counts[r] == fewest)
    return Blame(
        behind,
        f"{names(behind)} entered {fewest} collectives, its stalled peers up to "
        f"{max(counts.values())}: they wait in a collective it has not reached",
    )


def _lags_its_peers(s: Stall) -> Blame | None:
    newest = max(activity(snapshot) for snapshot in s.active.values())
    lagging = tuple(r for r in s.stalled if newest - activity(s.active[r]) > s.timeout)
    if not lagging or len(lagging) == len(s.active):
        return None
    verb = agreeing(lagging, "lags its", "lag their")
    return Blame(lagging, f"{names(lagging)} {verb} peers' progress by more than {s.timeout:g} s")


def _alone_after_its_peers_exited(s: Stall) -> Blame | None:
    # Its local peers are done; it waits in no collective, so for nobody: it is stuck in
    # its own code (compute, I/O) at the end of the job.
    if not s.finished or len(s.active) != len(s.stalled):
        return None
    if any(s.inside(r) for r in s.stalled):
        return None
    return Blame(
        s.stalled, f"{names(s.stalled)} stalled outside a collective after its peers exited"
    )


def _outside_while_other_nodes_wait(s: Stall) -> Blame | None:
    # The job-wide view: no local peer waits, but ranks on other nodes wait in collectives.
    outside = tuple(r for r in s.stalled if not s.inside(r))
    if not outside or not s.peers.waiting:
        return None
    nodes = f"{s.peers.waiting} other node{'s' if s.peers.waiting > 1 else ''}"
    return Blame(
        outside,
        f"{names(outside)} stalled outside a collective while ranks on {nodes} wait in one",
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
    place = places(s.active, s.stalled)
    stalled = names(s.stalled)
    if s.peers.stalled_outside and all(s.inside(r) for r in s.stalled):
        verb = agreeing(s.stalled, "waits", "wait")
        return Blame((), f"{stalled} stalled ({place}): {verb} for {s.peers.stalled_outside}")
    if len(s.stalled) == 1:
        if s.moving:
            return Blame(
                (),
                f"{stalled} stalled ({place}) while {names(s.moving)} "
                f"{agreeing(s.moving, 'goes', 'go')} on: it is blamed once it lags by more "
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
        verb = agreeing(waiting, "waits", "wait")
        return outside, (
            f", outside any collective, while {names(waiting)} {verb} {places(ranks, waiting)}"
        )
    if outside:
        return outside, ""
    where = places(ranks, starting)
    if multi_node:
        return (), f", waiting {where} for a rank on another node"
    alone = "" if multi_node is None else " and the job has no other node"
    return (), f", each waiting {where}{alone}"
