"""torchrun's failure summary names the hung rank when a hang restart ends its group.

torchrun reads, for every worker that failed, the JSON file named by the worker's
``TORCHELASTIC_ERROR_FILE`` (what ``@record`` writes on an uncaught exception), and calls
the failure with the earliest timestamp the root cause. A hung worker ended by a signal
writes nothing: every rank of the group would show ``Signal 15 (SIGTERM)``, and the root
cause would be whichever was noticed first, often a healthy rank. So before the group is
ended, the agent writes the hung ranks' files itself: why (no progress for N s, the
verdict's summary), where (the top frame of the captured stack) and the stack, timestamped
at the rank's last sign of life, earlier than the moment its peers are ended.
"""

from __future__ import annotations

import json
import os

from ..logging import get_logger
from .agentstate import GroupView
from .ranks import RankState
from .verdict import GroupVerdict

__all__ = ["root_cause_message", "top_frame", "write_root_causes"]

log = get_logger("elastic_healthcheck.torchelastic")  # the public name


def top_frame(stack: str) -> str | None:
    """The innermost frame of the thread that ran the dump (the main thread), if any.

    faulthandler writes ``Current thread 0x... (most recent call first):`` and then that
    thread's frames as ``  File "x.py", line N in f``; other threads come first or after.
    """
    lines = stack.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Current thread"):
            for frame in lines[index + 1 :]:
                if frame.strip().startswith("File "):
                    return frame.strip()
            return None
    frames = [line.strip() for line in lines if line.strip().startswith("File ")]
    return frames[0] if frames else None


def root_cause_message(local_rank: str, verdict: GroupVerdict, stack: str | None) -> str:
    """One line for torchrun's summary: who, how long, why, and where."""
    assert verdict.ranks is not None
    rank = verdict.ranks[local_rank]
    who = f"local rank {local_rank}" + (f" (rank {rank.rank})" if rank.rank is not None else "")
    frame = top_frame(stack) if stack else None
    where = f"; top of its stack: {frame}" if frame else ""
    if frame is None and stack:
        where = f"; {stack.strip().splitlines()[0].strip('()')}"
    return (
        f"Hung: {who} made no progress for {rank.age:.1f} s and its worker group was ended "
        f"for a restart ({verdict.summary}){where}"
    )


def _blamed(verdict: GroupVerdict) -> list[str]:
    """The suspects, or every stalled rank when none can be told from the others."""
    if verdict.suspects:
        return list(verdict.suspects)
    assert verdict.ranks is not None
    return [
        local
        for local, rank in verdict.ranks.items()
        if rank.state in (RankState.STALLED, RankState.STARTING)
    ]


def write_root_causes(
    verdict: GroupVerdict, group: GroupView, stacks: dict[str, str], now: float
) -> None:
    """Write each blamed rank's error file, unless the worker wrote one (never raises)."""
    if not verdict.ranks:
        return
    for local in _blamed(verdict):
        path = group.error_files.get(local)
        if not path or os.path.exists(path):
            continue
        rank = verdict.ranks[local]
        message = root_cause_message(local, verdict, stacks.get(local))
        stack = stacks.get(local, "").rstrip("\n")
        last_sign_of_life = int(now - rank.age)  # before its peers were ended: the first
        data = {
            "message": {
                "message": message,
                "extraInfo": {
                    "py_callstack": f"{message}\n{stack}" if stack else message,
                    "timestamp": str(last_sign_of_life),
                },
            }
        }
        try:
            _write_atomically(path, json.dumps(data))
        except OSError as exc:
            log.warning("Cannot write the error file of hung local rank %s: %s", local, exc)


def _write_atomically(path: str, text: str) -> None:
    # torchrun parses the file when it notices the failure: never let it see half of one.
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.elastic-healthcheck"
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)
