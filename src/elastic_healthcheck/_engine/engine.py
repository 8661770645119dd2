"""One running server's parts, put together: listeners, loop, evaluator, connections, threads.

An :class:`Engine` is made by ``start()`` and closed by ``stop()``; every part is recorded
on it the moment it exists, so :meth:`Engine.close` (idempotent) releases whatever a
start interrupted half-way had made. On the I/O thread it accepts connections, gives each
a transport and a protocol, sheds the longest idle when full, and rides out running out
of file descriptors: existing connections are served, accepting resumes as soon as a
descriptor is free, and the episode is logged once.
"""

from __future__ import annotations

import errno
import functools
import logging
import selectors
import socket
import threading
from collections.abc import Callable

from ..logging import get_logger
from .evaluator import JOIN_TIMEOUT, Evaluator
from .listeners import Listeners, display
from .loop import Loop, report, safe_log
from .protocol import BaseProtocol, Services
from .transport import SocketTransport
from .verdicts import Verdicts

log = get_logger(__name__)

__all__ = ["ACCEPTS_PER_TURN", "ACCEPT_RETRY", "Engine"]

# Accepts per wake-up, so a flood of connections cannot starve the ones already open.
ACCEPTS_PER_TURN = 64

# Seconds between tries to accept while out of file descriptors. A descriptor freed by
# one of our own connections resumes accepting at once; one freed elsewhere in the
# process is noticed within this time.
ACCEPT_RETRY = 0.05

_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Errors of one pending connection that accept() reports, to be retried as EAGAIN would be
# (Linux accept(2), "Error handling"; EPERM: a firewall rule refused it).
_CONNECTION_ERRNOS = {
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
_ACCEPT = "accept"


class Engine:
    """The parts of one running server and the I/O thread's connection handling.

    Args:
        kind: The server's kind, for log lines (``http``, ``tcp``).
        make_protocol: Builds the protocol of a new connection.
        client_timeout: Seconds a client has to take what is written (and the idle
            deadline that shedding looks at).
        max_connections: Open client connections at most.
        keep_port: Listeners keep the port while refusing (see ``Listeners``).
    """

    def __init__(
        self,
        kind: str,
        make_protocol: Callable[[Services], BaseProtocol],
        client_timeout: float,
        max_connections: int,
        keep_port: bool,
    ) -> None:
        self.kind = kind
        self.loop = Loop()
        self.listeners = Listeners(keep_port)
        self.evaluator = Evaluator(self.loop.call_soon)
        self.verdicts: Verdicts | None = None
        self.transports: dict[SocketTransport, None] = {}
        self.thread: threading.Thread | None = None
        self._make_protocol = make_protocol
        self._client_timeout = client_timeout
        self._max_connections = max_connections
        self._accept_paused = False
        self._out_of_fds = False  # an episode is under way (logged once)
        self._rebind_failing = False

    @property
    def failed(self) -> bool:
        """The loop gave up: the listeners are closed and nothing is served."""
        return self.loop.failed

    def start(self, port: int, on_start: Callable[[], None]) -> None:
        """Watch the listeners, then start the evaluator and the I/O threads."""
        self._watch_listeners()
        self.evaluator.start(f"elastic-healthcheck-callback:{port}")
        name = f"elastic-healthcheck-{self.kind}:{port}"
        self.thread = threading.Thread(target=self._serve, args=(on_start,), name=name, daemon=True)
        self.thread.start()

    def close(self) -> None:
        """Stop the threads and close every socket. Idempotent; safe at any point of start."""
        self.loop.stop()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            try:
                thread.join(JOIN_TIMEOUT)
            except RuntimeError:
                pass  # interrupted inside start(): the thread never started
            if thread.is_alive():  # pragma: no cover - the loop exits within a turn
                safe_log(
                    logging.ERROR, "Health check server thread did not stop in time", logger=log
                )
        self.evaluator.close()
        for transport in list(self.transports):
            transport.forget()  # the loop is over: close the socket, run no protocol code
        self.transports.clear()
        self.listeners.close()
        self.loop.close()

    def forget_in_child(self) -> None:
        """In a forked child: close our copies of the connections; the parent serves them."""
        for transport in list(self.transports):
            transport.forget()
        self.transports.clear()
        self.listeners.close()
        self.loop.close()

    # -- the I/O thread -----------------------------------------------------------------

    def _serve(self, on_start: Callable[[], None]) -> None:
        try:
            try:
                on_start()
            except Exception as exc:
                report(exc, "_on_start")
            self.loop.run()
        except BaseException as exc:  # a hook raised SystemExit, say: refuse, never hang
            report(exc, "loop")
            self.loop.failed = True
        if self.loop.failed:
            # Probes are refused at once from now on, instead of hanging until timeout.
            self.listeners.close()
            for transport in list(self.transports):
                transport.abort()

    def _watch_listeners(self) -> None:
        for sock in self.listeners.sockets:
            self.loop.register(sock, selectors.EVENT_READ, functools.partial(self._accept, sock))

    def _unwatch_listeners(self) -> None:
        for sock in self.listeners.sockets:
            self.loop.unregister(sock)

    def _accept(self, listener: socket.socket, events: int) -> None:
        if self._accept_paused or self.listeners.refusing:
            return  # paused earlier in this turn (another listener ran out of descriptors)
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in _CONNECTION_ERRNOS:
                    continue  # that one connection is gone; the next may be fine
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                # Out of descriptors: the open connections are served on (none is shed,
                # a prober on one of them is as much ours), the new ones wait in the
                # backlog until a descriptor is free.
                self._pause_accepting(exc)
                return
            if self._out_of_fds:
                self._out_of_fds = False
                safe_log(
                    logging.INFO,
                    "Accepting %s health check connections again",
                    self.kind,
                    logger=log,
                )
            if len(self.transports) >= self._max_connections:
                self._shed()
            self._open(sock)

    def _open(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not TCP (tests may use other families); Nagle only costs latency
        assert self.verdicts is not None
        try:
            protocol = self._make_protocol(self.verdicts)
        except Exception as exc:
            sock.close()  # this client is not served; the next one may be
            report(exc, "_make_protocol")
            return
        transport = SocketTransport(self.loop, sock, protocol, self._client_timeout, self._closed)
        self.transports[transport] = None
        transport.start()

    def _closed(self, transport: SocketTransport) -> None:
        self.transports.pop(transport, None)
        if self.verdicts is not None:
            self.verdicts.forget(transport.protocol)
        if self._accept_paused:
            self._resume_accepting()  # a descriptor was just freed

    def _shed(self) -> None:
        """Close the connection idle the longest (waiting for a client's request), else the
        oldest, so that a burst of idle clients can never lock a prober out."""
        for key in self.loop.timers.keys(self._client_timeout):
            if isinstance(key, SocketTransport) and key in self.transports:
                key.abort()
                return
        next(iter(self.transports)).abort()

    def _pause_accepting(self, exc: OSError) -> None:
        if not self._out_of_fds:
            self._out_of_fds = True
            safe_log(
                logging.WARNING,
                "Cannot accept %s health check connections (%s); open ones are served, "
                "accepting resumes as soon as a descriptor is free",
                self.kind,
                exc.strerror or exc,
                logger=log,
            )
        self._accept_paused = True
        self._unwatch_listeners()
        self.loop.timers.arm(_ACCEPT, ACCEPT_RETRY, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._accept_paused = False
        self.loop.timers.cancel(_ACCEPT)
        if not self.listeners.refusing:
            self._watch_listeners()

    # -- refusing, for probers that only connect ----------------------------------------------

    def refuse(self) -> None:
        """Refuse new connections (the port is kept where the platform allows)."""
        if self.listeners.refusing:
            return
        described = self.describe()
        if not self._accept_paused:
            self._unwatch_listeners()
        self.listeners.refuse()
        safe_log(
            logging.INFO,
            "Stopped listening for %s health checks on %s",
            self.kind,
            described,
            logger=log,
        )

    def resume(self) -> bool:
        """Accept again after :meth:`refuse`; ``False`` if the port cannot be had (logged once)."""
        if not self.listeners.refusing:
            return True
        try:
            self.listeners.resume()
        except OSError as exc:
            if not self._rebind_failing:
                self._rebind_failing = True
                safe_log(
                    logging.ERROR,
                    "Cannot listen again for %s health checks: %s",
                    self.kind,
                    exc.strerror or exc,
                    logger=log,
                )
            return False
        self._rebind_failing = False
        if not self._accept_paused:
            self._watch_listeners()
        described = self.describe()
        safe_log(
            logging.INFO,
            "Listening again for %s health checks on %s",
            self.kind,
            described,
            logger=log,
        )
        return True

    def describe(self) -> str:
        """``host:port`` of every listener, comma-separated."""
        return ", ".join(display(host, port) for host, port in self.listeners.addresses())
