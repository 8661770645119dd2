"""Making room for new connections: which one is closed, and running out of descriptors.

:func:`shed` picks the connection that costs least to close (the longest idle, else the
one slowest to send its request; never one being answered). :class:`Shortage` keeps the
story of one out-of-descriptors episode, so that it is logged once, with a count, however
long it lasts. The engine (``.engine``) does the accepting and asks both.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Hashable

from ..logging import get_logger
from .loop import Timers, safe_log
from .transport import SocketTransport

log = get_logger("elastic_healthcheck.server")  # the public name operators filter on

__all__ = [
    "ACCEPTS_PER_TURN",
    "ACCEPT_RETRY",
    "CONNECTION_ERRNOS",
    "EPISODE_QUIET",
    "RESOURCE_ERRNOS",
    "Shortage",
    "shed",
]

# Accepts per wake-up, so a flood of connections cannot starve the ones already open.
ACCEPTS_PER_TURN = 64

# Seconds between tries to accept while out of file descriptors with nothing to close. A
# descriptor freed by one of our own connections resumes accepting at once; one freed
# elsewhere in the process is noticed within this time.
ACCEPT_RETRY = 0.05

# Seconds without running out of descriptors after which an accept ends the episode (and
# logs its end once): a descriptor freed now and then while near the limit does not.
EPISODE_QUIET = 10.0

RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Errors of one pending connection that accept() reports, to be retried as EAGAIN would be
# (Linux accept(2), "Error handling"; EPERM: a firewall rule refused it).
CONNECTION_ERRNOS = {
    getattr(errno, name)
    for name in (
        "EPROTO",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
}


def shed(
    open_: dict[SocketTransport, None], timers: Timers, client_timeout: float, idle_first: bool
) -> bool:
    """Close a connection that waits for its client, so that idle clients can never lock a
    prober out: the one idle the longest (with ``idle_first``: else the one slow the
    longest), or the first of either. A connection being answered is kept.

    Args:
        open_: The open connections.
        timers: The loop's deadlines; a connection waiting for its client's request has
            one of ``client_timeout``, and they come longest armed first.
        client_timeout: See above.
        idle_first: Look for an idle one among all (out of descriptors), not only the first.

    Returns:
        ``False`` if there was none to close.
    """
    slow: SocketTransport | None = None
    key: Hashable
    for key in timers.keys(client_timeout):
        if not isinstance(key, SocketTransport) or key not in open_:
            continue
        order = key.shed_order()
        if order is None:
            continue
        if order == 0 or not idle_first:
            key.abort()
            return True
        slow = slow or key
    if slow is not None:
        slow.abort()
        return True
    return False


class Shortage:
    """One out-of-descriptors episode: logged when it begins and when it ends, once each.

    It begins when ``accept()`` fails for want of a descriptor. It ends at an accept that
    succeeds after a pause (nothing could be closed, so a descriptor really is free), or
    ``EPISODE_QUIET`` seconds after the last failure: a connection closed to make room,
    or a descriptor freed now and then near the limit, does not end it.

    Args:
        kind: The server's kind, for the log lines.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.active = False
        self.closed = 0  # connections closed to make room in this episode
        self.resumed = False  # accepting again after a pause
        self._last = 0.0  # when accept() last failed for want of descriptors

    def failed(self, exc: OSError) -> None:
        """``accept()`` failed with ``exc`` for want of descriptors."""
        self._last = time.monotonic()
        self.resumed = False
        if not self.active:
            self.active, self.closed = True, 0
            safe_log(
                logging.WARNING,
                "Cannot accept %s health check connections (%s): idle (else slow) ones are "
                "closed to make room; while none is, new ones wait for a free descriptor",
                self.kind,
                exc.strerror or exc,
                logger=log,
            )

    def accepted(self, made_room: bool) -> None:
        """An accept succeeded; ``made_room``: right after a connection was closed for it."""
        if not self.active or made_room:
            return
        if self.resumed or time.monotonic() - self._last >= EPISODE_QUIET:
            self.active = False
            safe_log(
                logging.INFO,
                "Accepting %s health check connections again (%d closed to make room)",
                self.kind,
                self.closed,
                logger=log,
            )
