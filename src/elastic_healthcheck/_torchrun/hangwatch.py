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
from collections.abc import Mapping

from ..logging import get_logger
from ..status import HealthStatus, Verdict
from .agentstate import AgentState, process_gone
from .record import FLAG_STACKS, read_record, record_path, stack_path
from .stacks import capture_stack

__all__ = ["HANG_GRACE", "STACK_DEADLINE", "HangWatch", "end_processes"]

log = get_logger(__name__)

HANG_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for a hung worker group
STACK_DEADLINE = 2.0  # seconds to collect every stalled rank's stacks


def end_processes(pids: list[int], grace: float) -> None:
    """SIGTERM now, SIGKILL after ``grace`` seconds to those still there (in a thread).

    torch starts each worker in a session of its own and ends it with ``killpg``, so that
    its children (DataLoader workers) go too; so do we.
    """
    for pid in pids:
        _signal(pid, signal.SIGTERM)

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
    """Sees the verdict turn dead while running, once per hang; captures and logs stacks."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._dead = False
        self._stacks: dict[str, str] = {}
        self._captured_at: float | None = None

    def new_group(self) -> None:
        self._dead = False

    def observe(self, status: HealthStatus) -> bool:
        """True once when the running verdict turns dead (stacks captured and logged)."""
        dead = status.verdict is Verdict.DEAD
        turned = dead and not self._dead
        self._dead = dead
        if turned:
            self._capture(status)
        return turned

    def _capture(self, status: HealthStatus) -> None:
        detail = status.detail or {}
        ranks = detail.get("ranks")
        if not isinstance(ranks, Mapping):
            return
        deadline = time.monotonic() + STACK_DEADLINE
        stacks: dict[str, str] = {}
        for rank, info in ranks.items():
            if not isinstance(info, Mapping) or info.get("state") not in ("stalled", "starting"):
                continue
            snapshot = read_record(record_path(self._state.rank_dir, rank))
            if (
                snapshot is None
                or not snapshot.flags & FLAG_STACKS  # no handler: the signal would kill it
                or snapshot.exited
                or not snapshot.pid
            ):
                stacks[rank] = "(no stack: the worker did not start through the bootstrap)\n"
                continue
            text = capture_stack(snapshot.pid, stack_path(self._state.rank_dir, rank), deadline)
            stacks[rank] = text if text else "(no stack: the worker did not answer in time)\n"
        self._stacks, self._captured_at = stacks, time.time()
        for rank, text in stacks.items():
            info = ranks[rank]
            assert isinstance(info, Mapping)
            log.warning(
                "Local rank %s (rank %s, pid %s) is %s: no progress for %.1f s%s; %s. "
                "Its Python stacks:\n%s",
                rank,
                info.get("rank"),
                info.get("pid"),
                info.get("state"),
                info.get("age") or 0.0,
                f", inside {info['in_collective']}" if info.get("in_collective") else "",
                detail.get("summary", ""),
                text.rstrip("\n"),
            )

    def report(self, status: HealthStatus) -> str:
        """Plain text: the verdict's summary, each rank's line, the latest stacks."""
        detail = status.detail or {}
        lines = [f"verdict: {status.verdict.value}", f"phase: {detail.get('phase')}"]
        if "summary" in detail:
            lines.append(f"summary: {detail['summary']}")
        ranks = detail.get("ranks")
        if isinstance(ranks, Mapping):
            for rank, info in ranks.items():
                lines.append(f"local rank {rank}: {json.dumps(info, sort_keys=True)}")
        if self._captured_at is None:
            lines.append("stacks: none captured yet (they are taken when the verdict turns dead)")
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._captured_at))
            lines.append(f"stacks captured at {stamp}:")
            for rank, text in self._stacks.items():
                lines.append(f"--- local rank {rank} ---")
                lines.append(text.rstrip("\n"))
        return "\n".join(lines) + "\n"
