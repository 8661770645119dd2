"""Sees a running worker group turn dead, once per hang: captures, logs and serves stacks.

Also ends a hung worker group for ``--health-on-hang restart``: SIGTERM to every worker,
SIGKILL to those still there after a grace period, from a thread so that the agent's
monitor loop goes on (and sees the failure, and restarts the group, as for any other).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

from ..logging import get_logger
from ..status import Verdict
from .agentstate import AgentState, GroupView, process_gone, process_state
from .ranks import AgentPhase, RankState
from .record import FLAG_STACKS, read_record, record_path, stack_path
from .rootcause import write_root_causes
from .stacks import capture_stack
from .verdict import GroupVerdict

__all__ = ["HANG_GRACE", "ON_HANG", "STACK_DEADLINE", "HangWatch", "end_processes"]

log = get_logger("elastic_healthcheck.torchelastic")  # the public name

HANG_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a hung worker group
STACK_DEADLINE = 2.0  # seconds to collect every stalled rank's stacks
ON_HANG = ("report", "restart")


def end_processes(pids: list[int], grace: float) -> None:
    """SIGTERM now, SIGKILL after ``grace`` seconds to those still there (in a thread).

    torch starts each worker in a session of its own and ends it with ``killpg``, so that
    its children (DataLoader workers) go too; so do we.
    """
    for pid in pids:
        _signal(pid, signal.SIGTERM)
        _signal(pid, signal.SIGCONT)  # a stopped worker acts on its SIGTERM only once resumed

    def finish() -> None:
        deadline = time.monotonic() + grace
        left = list(pids)
        while left and time.monotonic() < deadline:
            left = [pid for pid in left if not process_gone(pid)]
            time.sleep(0.05)
        for pid in left:
            _signal(pid, signal.SIGKILL)

    threading.Thread(target=finish, name="elastic-healthcheck-end-group", daemon=True).start()


def _signal(pid: int, signum: int) -> None:
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except OSError:
        pass  # gone already


class HangWatch:
    """Sees the verdict turn dead while running, once per hang; captures and logs stacks.

    With ``on_hang="restart"`` it also ends the hung worker group, once per group.
    """

    def __init__(self, state: AgentState, on_hang: str = "report") -> None:
        self._state = state
        self._on_hang = on_hang
        self._dead = False
        self._stacks: dict[str, str] = {}
        self._captured_at: float | None = None
        self._ended: GroupView | None = None  # the worker group ended for a hang, if any

    def new_group(self) -> None:
        self._dead = False

    def tick(self, remaining_restarts: object) -> None:
        """On the agent's monitor tick: see a hang, capture its stacks, act on it."""
        if self._state.phase is not AgentPhase.RUNNING:
            return
        verdict = self._state.verdict()
        self._state.note_startup(verdict, time.time())
        self.observe(verdict)
        if self._dead and self._on_hang == "restart" and self._ready_to_end(verdict):
            self._end_group(verdict, remaining_restarts)

    def _ready_to_end(self, verdict: GroupVerdict) -> bool:
        """End the group at once when a local rank is to blame; when none is (the ranks
        wait for another node's), first give that node one more timeout to end its own:
        torch then restarts this node's group for the membership change, without using
        up its restarts. A hang nobody can be told from is still ended after that."""
        if verdict.suspects:
            return True
        return (verdict.age or 0.0) > 2 * verdict.timeout

    def observe(self, verdict: GroupVerdict) -> bool:
        """True once when the running verdict turns dead (stacks captured and logged)."""
        dead = verdict.verdict is Verdict.DEAD
        turned = dead and not self._dead
        self._dead = dead
        if turned:
            self._capture(verdict)
        return turned

    def _capture(self, verdict: GroupVerdict) -> None:
        if not verdict.ranks:
            return
        deadline = time.monotonic() + STACK_DEADLINE
        stacks: dict[str, str] = {}
        for rank, info in verdict.ranks.items():
            if info.state in (RankState.STALLED, RankState.STARTING):
                stacks[rank] = self._stack_of(rank, deadline)
        self._stacks, self._captured_at = stacks, time.time()
        for rank, text in stacks.items():
            info = verdict.ranks[rank]
            log.warning(
                "Local rank %s (rank %s, pid %s) is %s: no progress for %.1f s%s; %s. "
                "Its Python stacks:\n%s",
                rank,
                info.rank,
                info.pid,
                info.state.value,
                info.age,
                f", inside {info.in_collective}" if info.in_collective else "",
                verdict.summary or "",
                text.rstrip("\n"),
            )

    def _stack_of(self, rank: str, deadline: float) -> str:
        snapshot = read_record(record_path(self._state.rank_dir, rank))
        if (
            snapshot is None
            or not snapshot.flags & FLAG_STACKS  # no handler: the signal would kill it
            or snapshot.exited
            or not snapshot.pid
        ):
            return "(no stack: the worker did not start through the bootstrap)\n"
        state = process_state(snapshot.pid)
        if state in ("T", "t"):
            return (
                f"(no stack: the process is stopped (state {state}, as after SIGSTOP), so it "
                "runs no signal handler)\n"
            )
        text = capture_stack(snapshot.pid, stack_path(self._state.rank_dir, rank), deadline)
        if text:
            return text
        why = " (in uninterruptible sleep, state D)" if state == "D" else ""
        return f"(no stack: the worker did not answer in time{why})\n"

    def _end_group(self, verdict: GroupVerdict, remaining_restarts: object) -> None:
        state = self._state
        group = state.group
        if group is None or not group.pids or self._ended is group:
            return  # exactly once per hang: this group is being torn down already
        self._ended = group
        log.warning(
            "Ending the hung worker group (%s; no progress for %.1f s) so that torchrun %s",
            verdict.summary or "stalled",
            verdict.age or 0.0,
            "restarts it" if remaining_restarts else "ends the job: no restarts are left",
        )
        write_root_causes(verdict, group, self._stacks, time.time())
        state.hang_restarts += 1
        state.last_hang_restart = {
            "at": round(time.time(), 3),
            "suspect_ranks": list(verdict.suspects or ()),
            "stalled_for": verdict.age,
            "summary": verdict.summary,
        }
        end_processes(list(group.pids.values()), HANG_GRACE)

    def report(self, verdict: GroupVerdict) -> str:
        """Plain text: the verdict's summary, each rank's line, the latest stacks."""
        lines = [f"verdict: {verdict.verdict.value}", f"phase: {verdict.phase.value}"]
        if verdict.summary is not None:
            lines.append(f"summary: {verdict.summary}")
        for rank, info in (verdict.ranks or {}).items():
            lines.append(f"local rank {rank}: {json.dumps(info.to_detail(), sort_keys=True)}")
        if self._captured_at is None:
            lines.append("stacks: none captured yet (they are taken when the verdict turns dead)")
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._captured_at))
            lines.append(f"stacks captured at {stamp}:")
            for rank, text in self._stacks.items():
                lines.append(f"--- local rank {rank} ---")
                lines.append(text.rstrip("\n"))
        return "\n".join(lines) + "\n"
