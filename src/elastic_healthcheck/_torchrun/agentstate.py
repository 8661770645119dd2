"""What the torch agent is doing and how its local ranks progress: the server's status source.

The agent's main thread writes it (phase, the current worker group, counters); the
server's evaluator thread reads it. Every field is replaced whole, never mutated, so a
reader sees one value or the next. The verdict itself is :mod:`.verdict`'s.

An :class:`AgentState` is the server's ``alive_callback``, and more: a *status source*.
Servers ask its :meth:`~AgentState.health_status` for the whole verdict, and
:meth:`~AgentState.debug_text` for ``/debug/<name>``; called as a plain callback, it
returns the combined last progress time, so any server kind can serve it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from ..status import HealthStatus, Verdict, evaluate
from .ranks import DEFAULT_PHASE_TIMEOUT, AgentPhase, Peers, RankState
from .record import RankSnapshot, read_record, record_path
from .verdict import GroupVerdict, Observation, decide

__all__ = [
    "RESTART_STARTUP_FACTOR",
    "TORCH_TIMEOUT",
    "AgentState",
    "GroupView",
    "process_gone",
    "process_state",
]

TORCH_TIMEOUT = 60.0  # what LocalElasticAgent passes to create_healthcheck_server

# A restarted worker group has this many times what the first took to start (from its
# spawn to every rank's first progress), and at least twice the timeout, to start: it does
# the same work again (import, process group, model, data), warmer. A group stuck in
# init_process_group after a restart is then reported in minutes, not at the 30-minute
# startup timeout that a first start of an unknown job needs.
RESTART_STARTUP_FACTOR = 3.0


class GroupView:
    """The current worker group as the agent spawned it (replaced whole, never mutated)."""

    __slots__ = ("error_files", "local_ranks", "pids", "start", "world_size")

    def __init__(
        self,
        start: float,
        local_ranks: tuple[str, ...],
        pids: Mapping[str, int] | None = None,
        world_size: int | None = None,
        error_files: Mapping[str, str] | None = None,
    ) -> None:
        self.start = start
        self.local_ranks = local_ranks
        self.pids: Mapping[str, int] = pids or {}
        self.world_size = world_size  # ranks in the whole job (WORLD_SIZE), if known
        # Local rank -> the file torchrun reads a worker's error from (TORCHELASTIC_ERROR_FILE).
        self.error_files: Mapping[str, str] = error_files or {}


class AgentState:
    """What the agent is doing and how its ranks progress; the server's status source.

    Read on the server's evaluator thread, written by the agent's main thread: every field
    is replaced whole, never mutated, so a reader sees one value or the next.
    """

    def __init__(
        self,
        rank_dir: str,
        timeout: float | None,
        startup_timeout: float,
        phase_timeout: float = DEFAULT_PHASE_TIMEOUT,
    ) -> None:
        self.rank_dir = rank_dir
        self.phase_timeout = phase_timeout
        self.phase = AgentPhase.STARTING
        self.callback: Callable[[], object] | None = None
        self.override_timeout = timeout
        self.torch_timeout = TORCH_TIMEOUT
        self.startup_timeout = startup_timeout
        self.group: GroupView | None = None
        self.run_id: str | None = None
        self.restarts = 0
        self.hang_restarts = 0
        self.last_hang_restart: Mapping[str, object] | None = None
        # What the other nodes' agents say of their ranks (the job-wide view).
        self.peers = Peers()
        # Seconds the first worker group took from its spawn to every rank's first progress.
        self.first_startup: float | None = None
        # What /debug/<name> serves: name -> a function of the current verdict.
        self.debug_pages: Mapping[str, Callable[[GroupVerdict], str]] = {}

    @property
    def timeout(self) -> float:
        return self.override_timeout if self.override_timeout is not None else self.torch_timeout

    def startup_deadline(self) -> float:
        """The current group's startup timeout: the configured one, or for a restarted
        group what the first start has shown it needs (see RESTART_STARTUP_FACTOR)."""
        first = self.first_startup
        if self.restarts == 0 or first is None:
            return self.startup_timeout
        adapted = max(RESTART_STARTUP_FACTOR * first, 2 * self.timeout)
        return min(self.startup_timeout, adapted)

    def note_startup(self, verdict: GroupVerdict, now: float) -> None:
        """Measure the first group's startup, once every rank has made progress."""
        group = self.group
        if self.first_startup is not None or self.restarts or group is None or not verdict.ranks:
            return
        if all(rank.state is not RankState.STARTING for rank in verdict.ranks.values()):
            self.first_startup = round(now - group.start, 3)

    def snapshots(self) -> dict[str, RankSnapshot]:
        """Local rank -> its record, for every rank of the current group."""
        group = self.group
        if group is None:
            return {}
        found: dict[str, RankSnapshot] = {}
        for rank in group.local_ranks:
            snapshot = read_record(record_path(self.rank_dir, rank))
            found[rank] = snapshot if snapshot is not None else RankSnapshot(spawn_time=group.start)
        return found

    def exited(self) -> frozenset[str]:
        """Local ranks whose worker process is gone."""
        group = self.group
        if group is None:
            return frozenset()
        return frozenset(rank for rank, pid in group.pids.items() if process_gone(pid))

    def clear_ranks(self) -> None:
        """Forget the previous worker group's records and stacks."""
        try:
            entries = list(os.scandir(self.rank_dir))
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(("rank-", "stack-")):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def counters(self) -> dict[str, object]:
        """The agent's counters, as the body shows them."""
        counters: dict[str, object] = {
            "restarts": self.restarts,
            "hang_restarts": self.hang_restarts,
        }
        if self.run_id is not None:
            counters["run_id"] = self.run_id
        if self.last_hang_restart is not None:
            counters["last_hang_restart"] = dict(self.last_hang_restart)
        return counters

    # -- what a server asks -----------------------------------------------------------

    def __call__(self) -> float:
        """The combined last progress time: a plain alive_callback for any server kind."""
        status = self.health_status()
        if status.last_progress is None:
            raise RuntimeError(status.reason or "no progress time")
        if not status.alive:
            # A plain callback can only say "this long ago": make it old enough to be dead.
            return min(status.last_progress, time.time() - status.timeout - 1.0)
        return status.last_progress

    def health_status(self) -> HealthStatus:
        """The verdict, as servers serve it (its detail is the :class:`GroupVerdict`)."""
        return self.verdict().to_status()

    def debug_text(self, name: str) -> str | None:
        """``/debug/<name>``: a page of :attr:`debug_pages`, or ``None`` (404)."""
        page = self.debug_pages.get(name)
        return None if page is None else page(self.verdict())

    def verdict(self, now: float | None = None) -> GroupVerdict:
        """The verdict: the phase's, or while running the ranks' (see :mod:`.verdict`)."""
        phase, callback, timeout, group = self.phase, self.callback, self.timeout, self.group
        if now is None:
            now = time.time()
        running = phase is AgentPhase.RUNNING
        agent_last, problem = None, None
        if running and callback is not None:
            # No callback: the agent did not ask for a server (no TORCHELASTIC_HEALTH_CHECK_PORT
            # in its environment); the ranks still count.
            agent_last, problem = _agent_progress(callback, timeout, now)
        counters = self.counters()
        if problem is not None:
            return GroupVerdict(
                Verdict.UNKNOWN, timeout, None, None, phase, counters, reason=problem
            )
        return decide(
            Observation(
                phase=phase,
                now=now,
                timeout=timeout,
                startup_timeout=self.startup_deadline(),
                group_start=group.start if group is not None else None,
                ranks=self.snapshots() if running else {},
                exited=self.exited() if running else frozenset(),
                agent_last=agent_last,
                counters=counters,
                phase_timeout=self.phase_timeout,
                world_size=group.world_size if group is not None else None,
                peers=self.peers,
            )
        )


def _agent_progress(
    callback: Callable[[], object], timeout: float, now: float
) -> tuple[float | None, str | None]:
    """What torch's own callback says: its last progress time, or why there is none."""
    try:
        value = callback()
    except Exception as exc:
        return None, f"agent callback raised {type(exc).__name__}"
    checked = evaluate(value, timeout, now)
    if checked.verdict is Verdict.UNKNOWN or checked.last_progress is None:
        return None, checked.reason
    return checked.last_progress, None


def process_state(pid: int) -> str | None:
    """The one-letter state of a process in /proc (R, S, D, T, Z, ...), or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) S ...": the state follows the last parenthesis.
            return stat.read().rsplit(b")", 1)[1][1:2].decode("ascii", "replace") or None
    except (OSError, IndexError):
        return None


def process_gone(pid: int) -> bool:
    """Whether a worker process has ended (a zombie counts: torch has not reaped it yet)."""
    state = process_state(pid)
    if state is not None:
        return state in ("Z", "X")
    if not os.path.exists(f"/proc/{pid}") and os.path.isdir("/proc/self"):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
