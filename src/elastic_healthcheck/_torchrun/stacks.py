"""Ask a worker for its Python stacks: a signal in, the text its ``faulthandler`` wrote out.

The worker's bootstrap registers ``faulthandler`` for :data:`STACK_SIGNAL`, writing every
thread's stack to its stack file (opened for append). That handler runs in C, so it
answers while the worker's main thread is blocked in C code, in a collective or on a lock.
The agent notes the file's size, sends the signal, and reads what was appended.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["STACK_SIGNAL", "capture_stack"]

# A real-time signal where there are some, so that no signal a training script may use
# for itself (SIGUSR1 is SLURM's requeue signal) is taken; SIGUSR2 elsewhere. Only sent
# to workers whose bootstrap registered the handler: its default action ends a process.
_SIGRTMIN = getattr(signal, "SIGRTMIN", None)
STACK_SIGNAL: int = int(_SIGRTMIN) + 5 if _SIGRTMIN is not None else int(signal.SIGUSR2)

# faulthandler writes in a burst of small writes; the dump is complete once the file has
# stopped growing for this long.
_SETTLE = 0.05
_POLL = 0.01


def capture_stack(pid: int, path: str, deadline: float, signum: int = STACK_SIGNAL) -> str | None:
    """Signal ``pid`` and return the stacks it appended to ``path`` by ``deadline``.

    Args:
        pid: The worker process.
        path: Its stack file.
        deadline: A ``time.monotonic()`` value to give up at.
        signum: The signal its ``faulthandler`` listens on.

    Returns:
        The text (possibly cut short at the deadline), or ``None`` when the process is
        gone or wrote nothing in time.
    """
    try:
        before = os.path.getsize(path)
    except OSError:
        return None
    try:
        os.kill(pid, signum)
    except OSError:
        return None
    size, changed = before, time.monotonic()
    while True:
        now = time.monotonic()
        try:
            current = os.path.getsize(path)
        except OSError:
            return None
        if current != size:
            size, changed = current, now
        elif size > before and now - changed >= _SETTLE:
            break
        if now >= deadline:
            break
        time.sleep(_POLL)
    if size <= before:
        return None
    with open(path, "rb") as file:
        file.seek(before)
        return file.read(size - before).decode("utf-8", "replace")
