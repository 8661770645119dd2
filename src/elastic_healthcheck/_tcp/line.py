"""The TCP status line: a verdict in, one ASCII line out (and HAProxy's agent-check words).

Pure: no I/O. :mod:`.protocol` writes these lines; ``elastic-healthcheck probe`` reads them.
"""

from __future__ import annotations

from ..status import HealthStatus, Verdict

__all__ = ["MAX_REASON", "agent_check_line", "status_line"]

# Characters of an ``unknown`` reason at most, so the line stays one small segment
# (kubelet reads 10 KiB, Consul and Docker keep 4 KB of output; ours are a few dozen).
MAX_REASON = 200

# C0 controls and DEL become spaces: the reason must never end or split the line.
_CONTROLS = {code: " " for code in [*range(32), 127]}


def status_line(status: HealthStatus) -> bytes:
    """The line :class:`TCPHealthCheckServer` writes for ``status``.

    >>> status_line(HealthStatus(Verdict.ALIVE, 60.0, last_progress=0.0, age=3.04))
    b'alive age=3.0 timeout=60\\n'
    >>> status_line(HealthStatus.unknown(60.0, "callback raised KeyError"))
    b'unknown timeout=60 reason=callback raised KeyError\\n'

    Args:
        status: The verdict to render.

    Returns:
        One ASCII line ending in ``\\n``; see :class:`TCPHealthCheckServer` for the grammar.
    """
    if status.verdict is Verdict.UNKNOWN:
        reason = (status.reason or "no reason given").translate(_CONTROLS)
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 3] + "..."
        line = f"unknown timeout={status.timeout:g} reason={reason}\n"
    else:
        age = status.age if status.age is not None else 0.0
        line = f"{status.verdict.value} age={age:.1f} timeout={status.timeout:g}\n"
    return line.encode("ascii", errors="replace")


def agent_check_line(status: HealthStatus) -> bytes:
    """The line :class:`TCPHealthCheckServer` writes for ``status`` with ``agent_check=True``.

    HAProxy's agent-check acts on the words ``up`` and ``down`` and shows what follows a
    ``#`` as the description, so our whole line goes there, where no word of a reason can
    be taken for a command (https://docs.haproxy.org/2.6/configuration.html#5.2-agent-check).

    >>> agent_check_line(HealthStatus(Verdict.ALIVE, 60.0, last_progress=0.0, age=3.04))
    b'up #alive age=3.0 timeout=60\\n'
    >>> agent_check_line(HealthStatus.unknown(60.0, "callback raised KeyError"))
    b'down #unknown timeout=60 reason=callback raised KeyError\\n'

    Args:
        status: The verdict to render.

    Returns:
        ``up #<line>`` while alive, ``down #<line>`` otherwise, where ``<line>`` is
        :func:`status_line`'s.
    """
    return (b"up #" if status.alive else b"down #") + status_line(status)
